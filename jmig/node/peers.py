"""Kept control connections from this node to the other nodes of its
cluster: one per peer, one request at a time on each, opened when first
needed and dropped when a request on it fails (the next one reconnects).
Membership's heartbeats and the requests about envs on other nodes
(node/remote.py) share them."""
from __future__ import annotations

from contextlib import asynccontextmanager

import trio

from ..proto.control import CONTROL_OFFSET, ControlClient
from ..proto.wire import parse_node

CALL_SECONDS = 3.0                 # one request to one node, connecting included


class Peers:
    def __init__(self, node):
        self.node = node
        self.clients: dict[str, ControlClient] = {}
        self.locks: dict[str, trio.Lock] = {}

    @asynccontextmanager
    async def client(self, addr: str, timeout: float = CALL_SECONDS):
        """The connection to addr (HOST:P), held for this block alone, which
        must be over within timeout (trio.TooSlowError otherwise); any
        exception drops the connection."""
        lock = self.locks.setdefault(addr, trio.Lock())
        with trio.fail_after(timeout):           # waiting for the connection included
            async with lock:
                client = self.clients.get(addr)
                try:
                    if client is None:
                        host, port = parse_node(addr)
                        fs = await self.node.connect(host, port + CONTROL_OFFSET, "control",
                                                     timeout=timeout)
                        client = self.clients[addr] = ControlClient(fs)
                    yield client
                except BaseException:
                    if client is not None:
                        if self.clients.get(addr) is client:
                            del self.clients[addr]
                        with trio.CancelScope(shield=True):
                            await client.aclose()
                    raise

    async def call(self, addr: str, op: str, args: dict, timeout: float = CALL_SECONDS):
        """One request to addr; its reply."""
        async with self.client(addr, timeout) as c:
            return await c.request(op, args)

    async def forget(self, addr: str) -> None:
        """Close the connection to a node that is no longer a member."""
        client = self.clients.pop(addr, None)
        self.locks.pop(addr, None)
        if client is not None:
            with trio.CancelScope(shield=True):
                await client.aclose()
