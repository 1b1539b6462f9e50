"""A TCP proxy for fault-injection tests: it sits between two nodes and can
cut a connection after a given number of bytes, hold it, pause and resume
forwarding (a blackhole: bytes are held, as a network that drops packets
holds them in the sender's retransmissions), cut every live connection,
refuse new ones for a while, delay and rate-limit what it forwards.

    proxy = Proxy(listen_host, listen_port, target_host, target_port, count=1)
    await nursery.start(proxy.serve)    # or ProxyThread(proxy) outside trio
    proxy.cut_after(c2s=1000)   # the NEXT connection forwards exactly 1000 bytes
                                # client->server, then both sides are closed
    proxy.hold_after(c2s=1000)  # the next connection forwards 1000 bytes, then
                                # stops forwarding (until proxy.resume())
    proxy.pause() / proxy.resume()   every connection stops / starts forwarding
    proxy.cut()                      close every live connection now
    proxy.down() / proxy.up()        cut, and refuse new connections until up()
    proxy.rate = 2_000_000           forward at most that many bytes/s per direction
                                     of each connection (None: as fast as it goes)
    proxy.delay = 0.02               forward each chunk 20 ms after it arrived
                                     (one-way latency; throughput is kept)

`count` consecutive ports are proxied from listen_port on to target_port on
(4: every port of a node, P..P+3).

Directions are named from the proxy's clients: c2s is client -> server
(e.g. the migration source to the destination), s2c the other way.  Byte
limits are one-shot: they apply to the next accepted connection only, so
later connections (status queries, reconnections) pass untouched.
Counters of every connection are kept in `links`.
"""
from __future__ import annotations

import socket
import struct

import threading
from functools import partial

import trio

IN_FLIGHT = 16          # chunks of up to 64 KiB read ahead per direction


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

    async def _read(self, src: trio.SocketStream, out: trio.MemorySendChannel) -> None:
        """Read src into out, each chunk with the time it arrived (b"" at
        the end); up to IN_FLIGHT chunks wait in the link, as in socket buffers."""
        async with out:
            while True:
                try:
                    data = await src.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                await out.send((trio.current_time(), data))
                if not data:
                    return

    async def _pump(self, chunks: trio.MemoryReceiveChannel, dst: trio.SocketStream,
                    direction: str) -> None:
        while True:
            arrived, data = await chunks.receive()
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
                if not await self._forward(dst, data, direction, arrived):
                    return
            if limit is not None and self.bytes[direction] >= limit:
                if self.action == "cut":
                    self.cut()
                    return
                # hold: forward nothing more in this direction until released
                self.held.set()
                self.limits[direction] = None
                await self.proxy._released_wait()
                if rest and not await self._forward(dst, rest, direction, arrived):
                    return

    async def _forward(self, dst: trio.SocketStream, data: bytes, direction: str,
                       arrived: float) -> bool:
        """Send data on, after the link's delay and at its rate; False
        (and the link cancelled) if dst is gone."""
        if self.proxy.delay:
            await trio.sleep_until(arrived + self.proxy.delay)
        try:
            await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.scope.cancel()
            return False
        self.bytes[direction] += len(data)
        if self.proxy.rate:
            await trio.sleep(len(data) / self.proxy.rate)
        return True

    async def run(self) -> None:
        try:
            with self.scope:
                async with trio.open_nursery() as nursery:
                    for src, dst, direction in ((self.client, self.server, "c2s"),
                                                (self.server, self.client, "s2c")):
                        tx, rx = trio.open_memory_channel(IN_FLIGHT)
                        nursery.start_soon(self._read, src, tx)
                        nursery.start_soon(self._pump, rx, dst, direction)
        finally:
            with trio.CancelScope(shield=True):
                for s in (self.client, self.server):
                    try:
                        await s.aclose()
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        pass
            self.closed.set()


class Proxy:
    def __init__(self, listen_host: str, listen_port: int, target_host: str, target_port: int,
                 count: int = 1):
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.target = (target_host, target_port)
        self.count = count
        self.links: list[Link] = []
        self.refused = 0
        self.rate: float | None = None
        self.delay: float = 0.0
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
        async with trio.open_nursery() as nursery:
            for i in range(self.count):
                listeners = await trio.open_tcp_listeners(self.listen_port + i,
                                                          host=self.listen_host)
                nursery.start_soon(trio.serve_listeners, partial(self._handle, i), listeners)
            task_status.started(self)

    async def _handle(self, i: int, client: trio.SocketStream) -> None:
        if self._down:
            self.refused += 1
            await client.aclose()
            return
        try:
            server = await trio.open_tcp_stream(self.target[0], self.target[1] + i)
        except OSError:
            self.refused += 1
            await client.aclose()
            return
        limits, self._next_limits = self._next_limits, {}
        link = Link(self, client, server, limits, self._next_action)
        self.links.append(link)
        self.accepted.set()
        await link.run()


class ProxyThread:
    """A Proxy served by trio in a thread of its own, for tests that are not
    trio code.  Its controls are called through call(), which runs them in
    the proxy's own event loop:

        with ProxyThread(Proxy(...)) as t:
            t.call(t.proxy.pause)
    """

    def __init__(self, proxy: Proxy):
        self.proxy = proxy
        self._token: trio.lowlevel.TrioToken | None = None
        self._ready = threading.Event()
        self._stop: trio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True,
                                        name=f"proxy {proxy.addr}")

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:          # reported by start()
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(self.proxy.serve)
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def start(self) -> "ProxyThread":
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise RuntimeError(f"proxy {self.proxy.addr} did not start: {self._error!r}")
        return self

    def call(self, fn, *args):
        """fn(*args) in the proxy's event loop; its result.  Callable from
        any thread, a trio thread included (it waits microseconds)."""
        done, box = threading.Event(), {}

        def run():
            try:
                box["value"] = fn(*args)
            except BaseException as exc:
                box["error"] = exc
            finally:
                done.set()
        self._token.run_sync_soon(run)
        if not done.wait(10):
            raise RuntimeError(f"proxy {self.proxy.addr} did not answer")
        if "error" in box:
            raise box["error"]
        return box.get("value")

    def close(self) -> None:
        if self._token is not None and self._thread.is_alive():
            try:
                self.call(self._stop.set)
            except trio.RunFinishedError:
                pass
            self._thread.join(10)

    def __enter__(self) -> "ProxyThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
