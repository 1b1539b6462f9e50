"""In-process clusters for pytest-trio tests: real nodes on real loopback
TCP sockets, each on its own 127.0.x.y address with the original ports."""
from __future__ import annotations

import itertools
import secrets
from pathlib import Path

import trio

from jmig.ctl.client import ControlClient
from jmig.node.node import BootSpec, Node, NodeConfig

_addrs = itertools.count(10)
PORT = 50001


def next_host() -> str:
    n = next(_addrs)
    return f"127.0.{n // 250 + 10}.{n % 250 + 2}"


class Cluster:
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


# Several pytest processes on one machine (a developer's run beside CI, or
# parallel sessions) would otherwise all hand out the same addresses and
# collide on the original ports: give each process its own stretch of
# 127.0.0.0/8 (next_host reads _addrs when called).
import os as _os  # noqa: E402

_addrs = itertools.count(10 + (_os.getpid() % 97) * 600)
