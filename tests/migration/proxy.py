"""A TCP proxy for fault-injection tests: it sits between two nodes and can
cut a connection after a given number of bytes, hold it, pause and resume
forwarding, cut every live connection, or refuse new ones for a while.

    proxy = Proxy(listen_host, listen_port, target_host, target_port)
    await nursery.start(proxy.serve)
    proxy.cut_after(c2s=1000)   # the NEXT connection forwards exactly 1000 bytes
                                # client->server, then both sides are closed
    proxy.hold_after(c2s=1000)  # the next connection forwards 1000 bytes, then
                                # stops forwarding (until proxy.resume())
    proxy.pause() / proxy.resume()   every connection stops / starts forwarding
    proxy.cut()                      close every live connection now
    proxy.down() / proxy.up()        cut, and refuse new connections until up()
    proxy.rate = 2_000_000           forward at most that many bytes/s per direction
                                     of each connection (None: as fast as it goes)

Directions are named from the proxy's clients: c2s is client -> server
(e.g. the migration source to the destination), s2c the other way.  Byte
limits are one-shot: they apply to the next accepted connection only, so
later connections (status queries, reconnections) pass untouched.
Counters of every connection are kept in `links`.
"""
from __future__ import annotations

import socket
import struct

import trio


class Link:
    """One proxied connection."""

    def __init__(self, proxy: "Proxy", client: trio.SocketStream, server: trio.SocketStream,
                 limits: dict, action: str):
        self.proxy = proxy
        self.client = client
        self.server = server
        self.bytes = {"c2s": 0, "s2c": 0}
        self.limits = limits            # direction -> byte limit or None
        self.action = action            # what happens at the limit: "cut" or "hold"
        self.scope = trio.CancelScope()
        self.held = trio.Event()        # set when a hold limit was reached
        self.closed = trio.Event()
        self.cut_by_proxy = False

    @property
    def c2s(self) -> int:
        return self.bytes["c2s"]

    @property
    def s2c(self) -> int:
        return self.bytes["s2c"]

    def cut(self, reset: bool = False) -> None:
        """Close both sides now (with an RST if reset)."""
        self.cut_by_proxy = True
        if reset:
            for s in (self.client, self.server):
                try:
                    s.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        struct.pack("ii", 1, 0))
                except OSError:
                    pass
        self.scope.cancel()

    async def _pump(self, src: trio.SocketStream, dst: trio.SocketStream, direction: str) -> None:
        while True:
            try:
                data = await src.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:                       # EOF or reset: the whole link goes
                self.scope.cancel()
                return
            limit = self.limits.get(direction)
            rest = b""
            if limit is not None and self.bytes[direction] + len(data) >= limit:
                room = limit - self.bytes[direction]
                data, rest = data[:room], data[room:]
            await self.proxy._flowing_wait()
            if data:
                try:
                    await dst.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self.scope.cancel()
                    return
                self.bytes[direction] += len(data)
                if self.proxy.rate:
                    await trio.sleep(len(data) / self.proxy.rate)
            if limit is not None and self.bytes[direction] >= limit:
                if self.action == "cut":
                    self.cut()
                    return
                # hold: forward nothing more in this direction until released
                self.held.set()
                self.limits[direction] = None
                await self.proxy._released_wait()
                if rest:
                    try:
                        await dst.send_all(rest)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        self.scope.cancel()
                        return
                    self.bytes[direction] += len(rest)

    async def run(self) -> None:
        try:
            with self.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, self.client, self.server, "c2s")
                    nursery.start_soon(self._pump, self.server, self.client, "s2c")
        finally:
            with trio.CancelScope(shield=True):
                for s in (self.client, self.server):
                    try:
                        await s.aclose()
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        pass
            self.closed.set()


class Proxy:
    def __init__(self, listen_host: str, listen_port: int, target_host: str, target_port: int):
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.target = (target_host, target_port)
        self.links: list[Link] = []
        self.refused = 0
        self.rate: float | None = None
        self._down = False
        self._flowing = trio.Event()
        self._flowing.set()
        self._released = trio.Event()
        self._released.set()
        self._next_limits: dict = {}
        self._next_action = "cut"
        self.accepted = trio.Event()

    @property
    def addr(self) -> str:
        return f"{self.listen_host}:{self.listen_port}"

    # -- controls -------------------------------------------------------------------
    def cut_after(self, c2s: int | None = None, s2c: int | None = None) -> None:
        """The next connection forwards exactly c2s / s2c bytes, then is cut."""
        self._next_limits = {"c2s": c2s, "s2c": s2c}
        self._next_action = "cut"

    def hold_after(self, c2s: int | None = None, s2c: int | None = None) -> None:
        """The next connection forwards exactly c2s / s2c bytes, then holds
        the rest until resume()."""
        self._next_limits = {"c2s": c2s, "s2c": s2c}
        self._next_action = "hold"
        self._released = trio.Event()

    def pause(self) -> None:
        """Stop forwarding on every connection (data is held, not lost)."""
        if self._flowing.is_set():
            self._flowing = trio.Event()

    def resume(self) -> None:
        self._flowing.set()
        self._released.set()

    def cut(self, reset: bool = False) -> None:
        for link in self.links:
            if not link.closed.is_set():
                link.cut(reset)

    def down(self, reset: bool = False) -> None:
        """The link is broken: cut everything, refuse new connections."""
        self._down = True
        self.cut(reset)

    def up(self) -> None:
        self._down = False
        self.resume()

    @property
    def live(self) -> list[Link]:
        return [link for link in self.links if not link.closed.is_set()]

    async def _flowing_wait(self) -> None:
        while not self._flowing.is_set():
            await self._flowing.wait()

    async def _released_wait(self) -> None:
        while not self._released.is_set():
            await self._released.wait()

    # -- serving ----------------------------------------------------------------------
    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.listen_port, host=self.listen_host)
        task_status.started(self)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        if self._down:
            self.refused += 1
            await client.aclose()
            return
        try:
            server = await trio.open_tcp_stream(*self.target)
        except OSError:
            self.refused += 1
            await client.aclose()
            return
        limits, self._next_limits = self._next_limits, {}
        link = Link(self, client, server, limits, self._next_action)
        self.links.append(link)
        self.accepted.set()
        await link.run()
