"""Thin trio adapters over the sans-I/O frame codec and handshake."""
from __future__ import annotations

import os

import trio

from .frames import MAX_DATA_FRAME, NEED_DATA, FrameDecoder, RemoteProtocolError, encode_frame
from .handshake import AuthError, ClientHandshake, ServerHandshake

RECV_SIZE = 1 << 20
HANDSHAKE_TIMEOUT = 10.0


def parse_node(addr: str) -> tuple[str, int]:
    """'HOST:P' -> (host, P), the name of a node.  Raises ValueError."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65533:
        raise ValueError(f"bad node address {addr!r}: use HOST:PORT, e.g. 127.0.0.1:50001")
    return host.strip("[]"), int(port)


async def send_error(fs: "FramedStream", code: str, message: str) -> None:
    """Tell the peer why we stop (if it is still there to hear it)."""
    try:
        await fs.send({"t": "error", "code": code, "message": message})
    except ConnectionClosed:
        pass


class ConnectionClosed(Exception):
    """The peer closed the connection (or it broke) before a frame arrived."""


class FramedStream:
    """Frames over a trio stream.  One task sends and one receives at a time."""

    def __init__(self, stream: trio.abc.Stream, max_frame: int = MAX_DATA_FRAME):
        self.stream = stream
        self.max_frame = max_frame
        self.decoder = FrameDecoder(max_frame)
        self.peer = ""                 # the peer's node name after the handshake
        self.bytes_sent = 0
        self.bytes_received = 0
        self._send_lock = trio.Lock()
        self._unsent = b""                  # the tail of a frame send_now began

    async def send(self, obj: dict) -> None:
        await self.send_raw(encode_frame(obj, self.max_frame))

    async def send_many(self, objs) -> None:
        """Several frames in one write."""
        await self.send_raw(b"".join(encode_frame(o, self.max_frame) for o in objs))

    async def send_raw(self, data: bytes) -> None:
        async with self._send_lock:
            if self._unsent:
                data = self._unsent + data
                self._unsent = b""
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ConnectionClosed("connection lost while sending") from exc
        self.bytes_sent += len(data)

    def send_now(self, obj: dict) -> bool:
        """Send a frame without waiting, from synchronous code, when no task
        is sending; False if that is not possible now (send it normally).
        Whatever the socket did not take goes out first with the next send
        (check `unsent` and make sure one follows: send_raw(b"") will do).
        Used for latency-critical requests (a page fault)."""
        if self._unsent or self._send_lock.locked():
            return False
        data = encode_frame(obj, self.max_frame)
        try:
            n = os.write(self.stream.socket.fileno(), data)
        except OSError:             # would block, or broken: the normal path reports it
            return False
        self.bytes_sent += n
        self._unsent = data[n:]
        return True

    @property
    def unsent(self) -> bool:
        return bool(self._unsent)

    async def receive(self) -> dict:
        """The next frame.  Raises ConnectionClosed at EOF and
        RemoteProtocolError for a malformed or oversized frame."""
        while True:
            frame = self.decoder.next_frame()
            if frame is not NEED_DATA:
                return frame
            try:
                data = await self.stream.receive_some(RECV_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ConnectionClosed("connection lost") from exc
            if not data:
                if self.decoder.buffered:
                    raise RemoteProtocolError("connection closed in the middle of a frame")
                raise ConnectionClosed("connection closed by peer")
            self.bytes_received += len(data)
            self.decoder.receive_data(data)

    async def aclose(self) -> None:
        with trio.move_on_after(1) as scope:
            scope.shield = True
            try:
                await self.stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass


async def client_handshake(fs: FramedStream, secret: bytes, kind: str, node: str = "",
                           timeout: float = HANDSHAKE_TIMEOUT) -> ClientHandshake:
    hs = ClientHandshake(secret, kind, node)
    with trio.fail_after(timeout):
        await fs.send(hs.hello())
        while True:
            try:
                reply = hs.receive(await fs.receive())
            except AuthError:
                if hs.refusal is not None:     # tell the server why we leave
                    try:
                        await fs.send(hs.refusal)
                    except ConnectionClosed:
                        pass
                raise
            if reply is None:
                fs.peer = hs.server
                return hs
            await fs.send(reply)


async def server_handshake(fs: FramedStream, secret: bytes, kind: str, node: str,
                           software: str = "", timeout: float = HANDSHAKE_TIMEOUT) -> ServerHandshake:
    """Authenticate a client; raises AuthError (after telling the client)."""
    hs = ServerHandshake(secret, kind, node, software)
    with trio.fail_after(timeout):
        while hs.state != "done":
            reply = hs.receive(await fs.receive())
            if hs.error is not None:
                try:
                    await fs.send(reply)
                except ConnectionClosed:       # the client may be gone already
                    pass
                raise hs.error
            await fs.send(reply)
    fs.peer = hs.peer
    return hs


async def connect(host: str, port: int, secret: bytes, kind: str, node: str = "",
                  max_frame: int = MAX_DATA_FRAME, timeout: float = HANDSHAKE_TIMEOUT) -> FramedStream:
    """An authenticated connection to a node's port.  Raises OSError when
    unreachable, AuthError when refused."""
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream(host, port)
    fs = FramedStream(stream, max_frame)
    try:
        await client_handshake(fs, secret, kind, node, timeout)
    except BaseException:
        await fs.aclose()
        raise
    return fs


__all__ = ["FramedStream", "ConnectionClosed", "connect", "client_handshake",
           "server_handshake", "AuthError", "parse_node", "send_error"]
