"""The node's console: user programs' output and kernel messages.

Everything goes to the node's stdout (when echo is on), into a bounded
history that `jmigctl console` shows, and to every follower.  Nothing here
ever waits: stdout is written by a spool thread (jmig/spool.py) and each
follower reads a bounded channel, so a stdout pipe nobody drains or a
follower that cannot keep up loses output, and is told how much
("[console: 12345 bytes dropped]"), rather than slowing the node down.
"""
from __future__ import annotations

import sys
from collections import deque

import trio

from ..spool import Spool

HISTORY_CHUNKS = 4096
FOLLOWER_BUFFER = 1024
ECHO_BUDGET = 256 << 10          # bytes of console output waiting for stdout at most


def dropped_notice(n: int) -> str:
    return f"[console: {n} bytes dropped]\n"


class ConsoleHub:
    def __init__(self, echo: bool = True, out=None):
        self.spool = Spool(out or sys.stdout, dropped_notice, ECHO_BUDGET,
                                       name="console") if echo else None
        self.history: deque[tuple[int, str]] = deque(maxlen=HISTORY_CHUNKS)
        self.followers: set[trio.MemorySendChannel] = set()
        self.dropped: dict[trio.MemorySendChannel, int] = {}

    def write(self, text: str, envid: int = 0) -> None:
        self.history.append((envid, text))
        if self.spool is not None:
            self.spool.write(text)
        for ch in list(self.followers):
            try:
                ch.send_nowait((envid, text))
            except trio.WouldBlock:
                self.dropped[ch] = self.dropped.get(ch, 0) + len(text)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.followers.discard(ch)

    def recent(self, limit: int = 200, envid: int | None = None) -> str:
        """The last `limit` chunks of output (of env envid only, if given)
        as one string."""
        items = [x for x in self.history if envid is None or x[0] == envid]
        return "".join(t for _, t in items[-limit:]) if limit > 0 else ""

    def follow(self) -> trio.MemoryReceiveChannel:
        send, recv = trio.open_memory_channel(FOLLOWER_BUFFER)
        self.followers.add(send)
        recv._jmig_send = send           # so unfollow can find it
        return recv

    def inject(self, recv, text: str) -> None:
        """Text for one follower only (its trace lines), never waiting."""
        send = getattr(recv, "_jmig_send", None)
        try:
            if send is not None:
                send.send_nowait((0, text))
        except trio.WouldBlock:
            self.dropped[send] = self.dropped.get(send, 0) + len(text)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def unfollow(self, recv) -> None:
        send = getattr(recv, "_jmig_send", None)
        if send is not None:
            self.followers.discard(send)
            self.dropped.pop(send, None)
            send.close()

    @property
    def dropped_bytes(self) -> int:
        """Console output the stdout echo has had to drop so far."""
        return self.spool.total_dropped if self.spool is not None else 0

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()

    def take_dropped(self, recv) -> int:
        send = getattr(recv, "_jmig_send", None)
        return self.dropped.pop(send, 0) if send is not None else 0
