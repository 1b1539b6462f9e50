"""Output that never blocks the program that produces it.

A `Spool` hands text to a file (a node's stdout console echo, its stderr
log stream) from a thread of its own.  write() only appends to a bounded
buffer and returns at once; when the file does not keep up (a pipe nobody
reads, a slow terminal) and the buffer is full, new text is dropped and
counted, and the next thing written says how much was lost, through
`notice(count)` (e.g. "[console: 12345 bytes dropped]").  A closed or
broken file stops the spool; the program carries on.
"""
from __future__ import annotations

import threading
from collections import deque

DEFAULT_BUDGET = 1 << 20          # bytes (characters) held for the file at most


class Spool:
    def __init__(self, out, notice, budget: int = DEFAULT_BUDGET, name: str = "spool"):
        """out: a text file; notice(n) -> the text that reports n dropped
        characters."""
        self.out = out
        self.notice = notice
        self.budget = budget
        self.dropped = 0               # characters dropped since the last notice
        self.total_dropped = 0
        self.broken = False
        self._queue: deque[str] = deque()
        self._queued = 0
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def write(self, text: str) -> None:
        """Queue text for the file; never blocks (beyond a lock held for an
        append).  Drops it, counting, when the buffer is full."""
        if not text or self.broken:
            return
        with self._cond:
            if self._queued + len(text) > self.budget:
                self.dropped += len(text)
                self.total_dropped += len(text)
                return
            self._queue.append(text)
            self._queued += len(text)
            if len(self._queue) == 1:          # the writer waits only on an empty queue
                self._cond.notify()

    def flush(self) -> None:
        """Nothing to do: the spool's thread flushes (a file-like method)."""

    def _take(self) -> str | None:
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            if not self._queue:
                return None
            parts = list(self._queue)
            self._queue.clear()
            self._queued = 0
            dropped, self.dropped = self.dropped, 0
        text = "".join(parts)
        return self.notice(dropped) + text if dropped else text

    def _run(self) -> None:
        while (text := self._take()) is not None:
            try:
                self.out.write(text)
                self.out.flush()
            except (OSError, ValueError):       # closed or broken: stop writing
                self.broken = True
                return

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued (waiting at most timeout), then stop."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)
