"""Real jmig-node processes for the benchmarks (scale, balance, ipc).

    c = Nodes(tmp, n, net, join=True, node_ids=True)   # n nodes on 127.0.NET.2.., P 50001
    await c.wait_up()                 # each one answers (and, joined, lists all alive)
    await c.call(node, op, args)      # one control request
    await c.each(op, args)            # the same request to every node at once
    c.close()

With join, node2.. start with --join node1; with node_ids, node i+1 with
--node-id i; args_of(i) gives node i's other arguments.  A fresh secret
and data directories live in tmp; each node's log is tmp/nodeI.log.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jmig.ctl.client import ControlClient                 # noqa: E402
from jmig.node import secret as secret_file                # noqa: E402
from jmig.testing.process import die_with_parent          # noqa: E402


class Nodes:
    def __init__(self, tmp: Path, n: int, net: int, *, join: bool = False,
                 node_ids: bool = False, args_of=lambda i: []):
        self.tmp = tmp
        self.secret = secret_file.create(tmp / "secret")
        self.nodes = [f"127.0.{net}.{i + 2}:50001" for i in range(n)]
        self.procs = []
        for i, addr in enumerate(self.nodes):
            with open(tmp / f"node{i + 1}.log", "w") as log:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "jmig.node.main", "--host", addr.split(":")[0],
                     "--port", "50001", "--name", f"node{i + 1}", "--data-dir",
                     str(tmp / f"node{i + 1}"), "--secret-file", str(tmp / "secret"),
                     "--log-level", "warning", "--log-format", "json", "--no-console",
                     *(["--node-id", str(i)] if node_ids else []),
                     *(["--join", self.nodes[0]] if join and i else []), *args_of(i)],
                    stdout=subprocess.DEVNULL, stderr=log, preexec_fn=die_with_parent))

    async def call(self, node: str, op: str, args=None, timeout: float = 120):
        with trio.fail_after(timeout):
            async with await ControlClient.open(node, self.secret) as c:
                return await c.request(op, args)

    async def each(self, op: str, args=None) -> list:
        """op on every node at once; the answers in node order."""
        out: list = [None] * len(self.nodes)

        async def one(i, node):
            out[i] = await self.call(node, op, args)
        async with trio.open_nursery() as nursery:
            for i, node in enumerate(self.nodes):
                nursery.start_soon(one, i, node)
        return out

    async def wait_up(self, members: bool = False) -> None:
        """Until every node answers; with members, until each lists every
        node alive too."""
        for node in self.nodes:
            with trio.fail_after(60):
                while True:
                    try:
                        await self.call(node, "info")
                        break
                    except OSError:
                        await trio.sleep(0.05)
        with trio.fail_after(30):
            while members:
                views = await self.each("nodes")
                if all(sum(v["state"] == "alive" for v in view["nodes"]) == len(self.nodes)
                       for view in views):
                    return
                await trio.sleep(0.1)

    async def console(self, node: str, envid: int | None = None) -> str:
        args = {"lines": 100000} if envid is None else {"lines": 100000, "envid": envid}
        return (await self.call(node, "console", args))["text"]

    def close(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
