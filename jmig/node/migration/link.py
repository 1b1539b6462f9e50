"""One migration or page-server connection, in typed messages, with a
progress deadline: every send and every receive must complete within
`timeout` seconds or the link fails (a blackholed link, a stopped peer).
TCP keepalive is on, so a peer that vanished without a word is found out
even while nothing is being sent."""
from __future__ import annotations

import socket

import trio

from ...proto import migration as m
from ...proto.frames import ProtocolError
from ...proto.wire import ConnectionClosed, FramedStream
from .base import KEEPALIVE, PROGRESS_TIMEOUT, MigrationError

STREAM_READ = 64 << 10            # a raw stream's record heads are read this much at a time


def keepalive(fs: FramedStream) -> None:
    sock = getattr(fs.stream, "socket", None)
    if sock is None:
        return
    idle, interval, count = KEEPALIVE
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)
    except (OSError, AttributeError):
        pass


class Link:
    def __init__(self, fs: FramedStream, timeout: float = PROGRESS_TIMEOUT):
        self.fs = fs
        self.timeout = timeout
        keepalive(fs)

    @property
    def peer(self) -> str:
        return self.fs.peer

    @property
    def bytes_sent(self) -> int:
        return self.fs.bytes_sent

    @property
    def bytes_received(self) -> int:
        return self.fs.bytes_received

    def _lost(self, exc, doing: str) -> MigrationError:
        if isinstance(exc, trio.TooSlowError):
            return MigrationError("timeout", f"no progress for {self.timeout:g} s while {doing} "
                                  f"(link to {self.peer or 'the peer'} stalled)")
        return MigrationError("link-lost", f"lost the link to {self.peer or 'the peer'} while "
                              f"{doing}: {exc or type(exc).__name__}")

    async def send(self, msg, timeout: float | None = None) -> None:
        try:
            with trio.fail_after(self.timeout if timeout is None else timeout):
                await self.fs.send(m.encode(msg))
        except (ConnectionClosed, trio.TooSlowError) as exc:
            raise self._lost(exc, f"sending {msg.T}") from None

    async def send_raw(self, frame: dict, timeout: float | None = None) -> None:
        """A frame encoded elsewhere (the hot data path, checked there)."""
        try:
            with trio.fail_after(self.timeout if timeout is None else timeout):
                await self.fs.send(frame)
        except (ConnectionClosed, trio.TooSlowError) as exc:
            raise self._lost(exc, f"sending {frame.get('t')}") from None

    async def send_now(self, msg) -> None:
        """send() for a message whose timing is measured (the destination's
        Started): written before this task yields, so that no other task
        (the kernel's, starting the env it just made runnable) runs first."""
        await self.send_first(m.encode(msg))

    async def send_first(self, frame: dict) -> None:
        """send_raw for a reply someone waits on: written to the socket at
        once from this task when it takes it (no trip through the
        scheduler, where other tasks would run first)."""
        if not self.fs.send_now(frame):
            await self.send_raw(frame)
        elif self.fs.unsent:
            await self.flush()

    async def flush(self) -> None:
        """Send what a send_now left unsent."""
        try:
            with trio.fail_after(self.timeout):
                await self.fs.send_raw(b"")
        except (ConnectionClosed, trio.TooSlowError) as exc:
            raise self._lost(exc, "sending") from None

    async def send_stream(self, parts) -> None:
        """Process-stream bytes (heads and frames), raw on the connection."""
        try:
            with trio.fail_after(self.timeout):
                await self.fs.send_parts(parts)
        except (ConnectionClosed, trio.TooSlowError) as exc:
            raise self._lost(exc, "sending the process stream") from None

    async def receive_stream(self, restorer, progress=None) -> None:
        """Read a raw process stream into restorer until its trailer; page
        data goes straight from the socket into the restorer's frames."""
        fs = self.fs
        try:
            restorer.feed(fs.take_buffered())
            while not restorer.done:
                with trio.fail_after(self.timeout):
                    if restorer.wants_data:
                        restorer.filled(await fs.receive_into(restorer.data_views()))
                        restorer.feed(b"")
                    else:
                        restorer.feed(await fs.receive_some(STREAM_READ))
                if progress is not None:
                    progress(restorer)
        except (ConnectionClosed, trio.TooSlowError) as exc:
            raise self._lost(exc, "receiving the process stream") from None

    async def receive(self, allowed: frozenset, timeout: float | None = None):
        """The next message, one of `allowed`.  A peer's ErrorReply raises
        MigrationError with its code (unless ErrorReply is asked for alone)."""
        try:
            with trio.fail_after(self.timeout if timeout is None else timeout):
                frame = await self.fs.receive()
        except (ConnectionClosed, trio.TooSlowError) as exc:
            names = "/".join(sorted(c.T for c in allowed))
            raise self._lost(exc, f"waiting for {names}") from None
        msg = m.decode(frame, allowed | {m.ErrorReply})
        if isinstance(msg, m.ErrorReply) and m.ErrorReply not in allowed:
            raise MigrationError(msg.code, f"{self.peer or 'the peer'} refused: {msg.message}")
        return msg

    async def refuse(self, code: str, message: str) -> None:
        """Tell the peer why we stop, if it is still there (never raises)."""
        try:
            with trio.move_on_after(1):
                await self.fs.send(m.encode(m.ErrorReply(code[:64], message[:m.MAX_TEXT])))
        except (ConnectionClosed, ProtocolError):
            pass

    async def aclose(self) -> None:
        await self.fs.aclose()
