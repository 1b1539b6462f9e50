"""Nodes inside the test's own process, for white-box tests (pytest-trio):
each a real jmig Node serving real loopback TCP sockets on an address of its
own with the original ports, whose kernel, migrations and failpoints the
test can reach directly.  Tests of what a user sees use real processes
(jmig.testing.cluster) instead."""
from __future__ import annotations

import secrets
from pathlib import Path

import trio

from ..node.node import BootSpec, Node, NodeConfig
from ..proto.control import ControlClient
from .cluster import next_host
from .process import PORT


class InProcessCluster:
    def __init__(self, nursery: trio.Nursery, tmp: Path):
        self.nursery = nursery
        self.tmp = tmp
        self.secret = secrets.token_hex(32).encode()
        self.nodes: list[Node] = []

    async def start(self, name: str = "", boot=(), **kw) -> Node:
        host = next_host()
        kw.setdefault("prefault", False)      # many short-lived nodes: commit memory lazily
        cfg = NodeConfig(data_dir=self.tmp / (name or host), host=host, port=PORT,
                         name=name or f"{host}:{PORT}", echo=False,
                         boot=tuple(BootSpec(*b) if isinstance(b, tuple) else b for b in boot),
                         **kw)
        node = Node(cfg, self.secret)
        await self.nursery.start(node.serve)
        self.nodes.append(node)
        return node

    @staticmethod
    def addr(node: Node) -> str:
        return f"{node.cfg.host}:{node.cfg.port}"

    async def call(self, node: Node, op: str, args: dict | None = None, on_push=None):
        async with await ControlClient.open(self.addr(node), self.secret) as c:
            return await c.request(op, args, on_push)


async def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02):
    """Poll until predicate() is true (or raise TooSlowError)."""
    with trio.fail_after(timeout):
        while True:
            if predicate():
                return
            await trio.sleep(interval)


def console_of(node: Node) -> str:
    return node.console.recent(100000)

