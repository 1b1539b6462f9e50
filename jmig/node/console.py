"""The node's console: user programs' output and kernel messages.

Everything goes to the node's stdout (when echo is on), into a bounded
history that `jmigctl console` shows, and to every follower.  A follower
that cannot keep up loses lines (and is told how many) rather than
slowing the node down.
"""
from __future__ import annotations

import sys
from collections import deque

import trio

HISTORY_CHUNKS = 4096
FOLLOWER_BUFFER = 1024


class ConsoleHub:
    def __init__(self, echo: bool = True, out=None):
        self.echo = echo
        self.out = out or sys.stdout
        self.history: deque[tuple[int, str]] = deque(maxlen=HISTORY_CHUNKS)
        self.followers: set[trio.MemorySendChannel] = set()
        self.dropped: dict[trio.MemorySendChannel, int] = {}

    def write(self, text: str, envid: int = 0) -> None:
        self.history.append((envid, text))
        if self.echo:
            try:
                self.out.write(text)
                self.out.flush()
            except (OSError, ValueError):
                self.echo = False          # stdout closed: keep serving
        for ch in list(self.followers):
            try:
                ch.send_nowait((envid, text))
            except trio.WouldBlock:
                self.dropped[ch] = self.dropped.get(ch, 0) + 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.followers.discard(ch)

    def recent(self, limit: int = 200) -> str:
        """The last `limit` chunks of output as one string."""
        items = list(self.history)[-limit:] if limit > 0 else []
        return "".join(t for _, t in items)

    def follow(self) -> trio.MemoryReceiveChannel:
        send, recv = trio.open_memory_channel(FOLLOWER_BUFFER)
        self.followers.add(send)
        recv._jmig_send = send           # so unfollow can find it
        return recv

    def unfollow(self, recv) -> None:
        send = getattr(recv, "_jmig_send", None)
        if send is not None:
            self.followers.discard(send)
            self.dropped.pop(send, None)
            send.close()

    def take_dropped(self, recv) -> int:
        send = getattr(recv, "_jmig_send", None)
        return self.dropped.pop(send, 0) if send is not None else 0
