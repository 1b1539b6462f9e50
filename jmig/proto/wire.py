"""Thin trio adapters over the sans-I/O frame codec and handshake."""
from __future__ import annotations

import os
import random
import select

import trio

from ..errors import Error
from . import frames
from .frames import NEED_DATA, FrameDecoder, Limits, RemoteProtocolError, encode_frame
from .handshake import DONE, AuthError, ClientHandshake, ServerHandshake

RECV_SIZE = 1 << 20
IOV_MAX = 1024                     # buffers per scatter/gather call (Linux's UIO_MAXIOV)
HANDSHAKE_TIMEOUT = 10.0           # a client's whole connect + handshake
SERVER_HANDSHAKE_TIMEOUT = 3.0     # what a node gives an unauthenticated peer
BUSY_BACKOFF = (0.02, 0.5)         # a node refused us as busy: wait (doubling), try again

# After the handshake: (what the server accepts, what the client accepts).
PORT_LIMITS = {
    "control": (frames.CONTROL_REQUEST, frames.CONTROL_REPLY),
    "normal": (frames.DATA, frames.DATA),
    "pgfault": (frames.DATA, frames.DATA),
    "pager": (frames.DATA, frames.DATA),
}


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


class ConnectionClosed(Error):
    """The peer closed the connection (or it broke) before a frame arrived."""
    code = "link-lost"


class ClosedMidFrame(ConnectionClosed, RemoteProtocolError):
    """The connection ended inside a frame: both a broken link and a
    protocol violation, whichever the caller cares about."""


def byte_views(parts) -> list:
    """Byte-addressed views of buffers, for scatter/gather writes (a frame's
    view is one already; bytes and other buffers get one)."""
    return [p if type(p) is memoryview and p.format == "B" else memoryview(p).cast("B")
            for p in parts]


def advance(views: list, n: int) -> None:
    """Drop the first n bytes of a list of buffers (after a scatter/gather
    write of n bytes), in place."""
    while n:
        k = len(views[0])
        if n >= k:
            views.pop(0)
            n -= k
        else:
            views[0] = views[0][n:]
            n = 0


class FramedStream:
    """Frames over a trio stream.  One task sends and one receives at a time.

    `recv` limits what the peer may send us, `send_max` the frames we send
    (the peer's receive limit); a new connection starts with PREAUTH for
    both, and the handshake widens them to its port's limits."""

    def __init__(self, stream: trio.abc.Stream, recv: Limits = frames.PREAUTH,
                 send_max: int | None = None):
        self.stream = stream
        self.decoder = FrameDecoder(recv)
        self.max_frame = recv.frame if send_max is None else send_max
        self.peer = ""                 # the peer's node name after the handshake
        self.bytes_sent = 0
        self.bytes_received = 0
        self._send_lock = trio.Lock()
        self._unsent = b""                  # the tail of a frame send_now began
        self._unread = None                 # a frame receive_now gave back

    async def send(self, obj: dict) -> None:
        await self.send_raw(encode_frame(obj, self.max_frame))

    def set_limits(self, recv: Limits, send_max: int) -> None:
        self.decoder.set_limits(recv)
        self.max_frame = send_max

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

    def send_blocking(self, obj: dict, timeout: float) -> bool:
        """Send a frame from a thread that has the connection to itself (no
        task sends or receives on it meanwhile), waiting for the socket in
        a blocking poll.  False if the link broke or took nothing for
        timeout seconds: the rest of the frame is then `unsent`, for the
        event loop to send (or to fail on) with its next send."""
        data = memoryview(self._unsent + encode_frame(obj, self.max_frame))
        self._unsent = b""
        fd = self.stream.socket.fileno()
        writable = select.poll()
        writable.register(fd, select.POLLOUT)
        while data:
            try:
                n = os.write(fd, data)
            except BlockingIOError:
                if writable.poll(timeout * 1000):
                    continue
                n = 0
            except OSError:
                n = 0
            if not n:
                self._unsent = bytes(data)
                return False
            self.bytes_sent += n
            data = data[n:]
        return True

    @property
    def unsent(self) -> bool:
        return bool(self._unsent)

    # -- raw streams between frames (the process stream of a migration) ----------
    async def send_parts(self, parts) -> None:
        """Write buffers as raw bytes (no frame), in order, with as few
        scatter/gather calls as the socket allows."""
        sock = self.stream.socket
        async with self._send_lock:
            if self._unsent:
                parts = [self._unsent, *parts]
                self._unsent = b""
            views = byte_views(parts)
            try:
                while views:
                    n = await sock.sendmsg(views[:IOV_MAX])
                    self.bytes_sent += n
                    advance(views, n)
            except OSError as exc:
                raise ConnectionClosed(f"connection lost while sending: {exc}") from exc

    def take_buffered(self) -> bytes:
        """Bytes received beyond the last frame (a raw stream's beginning)."""
        return self.decoder.take_buffered()

    async def receive_some(self, max_bytes: int = RECV_SIZE) -> bytes:
        """Raw bytes (no frame): whatever arrives next, at most max_bytes."""
        try:
            data = await self.stream.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ConnectionClosed("connection lost") from exc
        if not data:
            raise ConnectionClosed("connection closed by peer")
        self.bytes_received += len(data)
        return data

    async def receive_into(self, views) -> int:
        """Raw bytes straight into buffers, in order (one recvmsg_into);
        how many arrived."""
        try:
            n = (await self.stream.socket.recvmsg_into(views[:IOV_MAX]))[0]
        except OSError as exc:
            raise ConnectionClosed(f"connection lost: {exc}") from exc
        if not n:
            raise ConnectionClosed("connection closed by peer")
        self.bytes_received += n
        return n

    def _read_size(self) -> int:
        """How much to read at most while a frame is due: never far past
        what one frame may be (before the handshake: a few KiB), so a flood
        costs no memory here."""
        return min(RECV_SIZE, self.decoder.max_frame + 4)

    def receive_now(self):
        """The next frame if it is here or in the socket now, else None;
        never waits (for synchronous code that must not yield: the kernel
        task taking a fault's reply).  EOF and errors are left for
        receive() to report; a malformed frame raises RemoteProtocolError
        here and again in receive()."""
        if self._unread is not None:
            return None
        frame = self.decoder.next_frame()
        if frame is NEED_DATA:
            try:
                data = os.read(self.stream.socket.fileno(), self._read_size())
            except OSError:             # would block, or broken: receive() reports it
                return None
            if not data:
                return None
            self.bytes_received += len(data)
            self.decoder.receive_data(data)
            frame = self.decoder.next_frame()
        return None if frame is NEED_DATA else frame

    def unread(self, frame: dict) -> None:
        """Give back the frame receive_now returned: receive() returns it next."""
        self._unread = frame

    async def receive(self) -> dict:
        """The next frame.  Raises ConnectionClosed at EOF and
        RemoteProtocolError for a malformed or oversized frame."""
        if self._unread is not None:
            frame, self._unread = self._unread, None
            return frame
        while True:
            frame = self.decoder.next_frame()
            if frame is not NEED_DATA:
                return frame
            try:
                data = await self.stream.receive_some(self._read_size())
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ConnectionClosed("connection lost") from exc
            if not data:
                if self.decoder.buffered:
                    raise ClosedMidFrame("connection closed in the middle of a frame")
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
    """Authenticate to a node's port; raises AuthError (code "busy" when the
    node turned us away for now)."""
    hs = ClientHandshake(secret, kind, node)
    with trio.fail_after(timeout):
        await fs.send(hs.hello())
        while True:
            reply = hs.receive(await fs.receive())
            if reply is None:
                fs.peer = hs.server
                fs.set_limits(PORT_LIMITS[kind][1], PORT_LIMITS[kind][0].frame)
                return hs
            await fs.send(reply)


async def server_handshake(fs: FramedStream, secret: bytes, kind: str, node: str,
                           software: str = "",
                           timeout: float = SERVER_HANDSHAKE_TIMEOUT) -> ServerHandshake:
    """Authenticate a client; raises AuthError (after telling the client).
    Until it succeeds the connection reads only PREAUTH-sized frames."""
    hs = ServerHandshake(secret, kind, node, software)
    fs.set_limits(frames.PREAUTH, frames.PREAUTH.frame)
    with trio.fail_after(timeout):
        while hs.state != DONE:
            reply = hs.receive(await fs.receive())
            if hs.error is not None:
                await send_error(fs, reply["code"], reply["message"])
                raise hs.error
            await fs.send(reply)
    fs.peer = hs.peer
    fs.set_limits(PORT_LIMITS[kind][0], PORT_LIMITS[kind][1].frame)
    return hs


async def connect(host: str, port: int, secret: bytes, kind: str, node: str = "",
                  timeout: float = HANDSHAKE_TIMEOUT,
                  local_host: str | None = None) -> FramedStream:
    """An authenticated connection to a node's port, leaving from local_host
    when given.  A node that answers "busy", or closes the connection
    before it says anything, is tried again, with growing random pauses,
    until timeout.  Raises OSError when unreachable,
    AuthError when refused (code "busy" if it stayed busy), TooSlowError."""
    delay, most = BUSY_BACKOFF
    deadline = trio.current_time() + timeout
    while True:
        with trio.fail_after(max(0.0, deadline - trio.current_time())):
            stream = await trio.open_tcp_stream(host, port, local_address=local_host)
            fs = FramedStream(stream)
            try:
                await client_handshake(fs, secret, kind, node, timeout)
                return fs
            except AuthError as exc:
                await fs.aclose()
                if exc.code != "busy" or trio.current_time() + delay > deadline:
                    raise
            except ConnectionClosed:
                # Closed before a word: a busy node sheds load that way too.
                await fs.aclose()
                if fs.bytes_received or trio.current_time() + delay > deadline:
                    raise
            except BaseException:
                await fs.aclose()
                raise
        await trio.sleep(delay * (0.5 + random.random()))
        delay = min(most, delay * 2)


__all__ = ["FramedStream", "ConnectionClosed", "connect", "client_handshake",
           "server_handshake", "AuthError", "parse_node", "send_error", "PORT_LIMITS"]
