"""The client side of the control protocol (port P+3), for jmigctl and for
nodes that talk to each other (membership, cluster-wide commands).

    client -> node   {t: req, id: N, op: NAME, args: {...}}
    node -> client   {t: push, id: N, kind: ..., data: ...}   (0 or more)
    node -> client   {t: resp, id: N, ok: true, result: ...}
                  or {t: resp, id: N, ok: false, error: {code, message}}
"""
from __future__ import annotations

import itertools
from contextlib import asynccontextmanager

import trio

from .wire import FramedStream, connect, parse_node

CONTROL_OFFSET = 3                 # the control port is P+3


class RemoteError(Exception):
    """The node answered with an error."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class ControlClient:
    def __init__(self, fs: FramedStream):
        self.fs = fs
        self._ids = itertools.count(1)

    @classmethod
    async def open(cls, node: str, secret: bytes, timeout: float = 10.0,
                   name: str = "jmigctl") -> "ControlClient":
        host, port = parse_node(node)
        fs = await connect(host, port + CONTROL_OFFSET, secret, "control", name,
                           timeout=timeout)
        return cls(fs)

    @property
    def server(self) -> str:
        return self.fs.peer

    async def request(self, op: str, args: dict | None = None, on_push=None):
        """Send a request and wait for its response; pushes go to on_push(kind, data)."""
        rid = next(self._ids)
        await self.fs.send({"t": "req", "id": rid, "op": op, "args": args or {}})
        while True:
            msg = await self.fs.receive()
            if msg.get("id") != rid:
                continue
            if msg.get("t") == "push":
                if on_push is not None:
                    r = on_push(msg.get("kind"), msg.get("data"))
                    if hasattr(r, "__await__"):
                        await r
                continue
            if msg.get("t") == "resp":
                if msg.get("ok"):
                    return msg.get("result")
                err = msg.get("error") or {}
                raise RemoteError(str(err.get("code", "failed")), str(err.get("message", "")))

    async def aclose(self) -> None:
        await self.fs.aclose()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.aclose()


class ControlPool:
    """Kept control connections, one per node address, opened by
    `opener(addr, timeout)` when first needed.  One request at a time on
    each (a ControlClient cannot share its stream between tasks); a
    connection is dropped when a request on it fails other than by the
    node's own error answer, and the next request reconnects."""

    def __init__(self, opener):
        self.opener = opener
        self.clients: dict[str, ControlClient] = {}
        self.locks: dict[str, trio.Lock] = {}

    @asynccontextmanager
    async def client(self, addr: str, timeout: float):
        """The connection to addr (HOST:P), held for this block alone, which
        must be over within timeout, waiting for the connection included
        (trio.TooSlowError otherwise)."""
        lock = self.locks.setdefault(addr, trio.Lock())
        with trio.fail_after(timeout):
            async with lock:
                client = self.clients.get(addr)
                try:
                    if client is None:
                        client = self.clients[addr] = await self.opener(addr, timeout)
                    yield client
                except RemoteError:
                    raise                        # answered: the connection is fine
                except BaseException:
                    if client is not None:
                        if self.clients.get(addr) is client:
                            del self.clients[addr]
                        with trio.CancelScope(shield=True):
                            await _close_quietly(client)
                    raise

    async def call(self, addr: str, op: str, args: dict | None, timeout: float):
        """One request to addr; its reply."""
        async with self.client(addr, timeout) as c:
            return await c.request(op, args)

    async def forget(self, addr: str) -> None:
        """Close the connection to addr, if there is one."""
        client = self.clients.pop(addr, None)
        self.locks.pop(addr, None)
        if client is not None:
            with trio.CancelScope(shield=True):
                await _close_quietly(client)

    async def close_all(self) -> None:
        for addr in list(self.clients):
            await self.forget(addr)


async def _close_quietly(client: ControlClient) -> None:
    try:
        await client.aclose()
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass
