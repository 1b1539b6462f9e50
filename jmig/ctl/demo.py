"""jmigctl demo: two local nodes playing the original project's walkthrough.

Starts two jmig-node processes on loopback (a fresh secret and data
directories in a temporary directory), then: node 1 boots the test program
as env 4100; pause, ps, resume; save to an image, ls, load, resume (the
counter continues from the saved value); normal migration to node 2 and
resume there; kill it there; copy the original on node 1, kill the
original, migrate the copy to node 2 by demand paging (node 2 fetches
pages from node 1 as it faults); then jmig's own pre-copy live migration
back to node 1.  Both consoles are shown as they print, and each claim
("the counter continues") is checked, not just narrated.
"""
from __future__ import annotations

import ipaddress
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from ..errors import leaf
from ..node import secret as secret_file
from .client import ControlClient, RemoteError
from .exits import UsageError
from .render import plural

COUNTER = re.compile(r"Test Program, Env ID: (\d+), Counter: (\d+)")


class DemoFailed(Exception):
    pass


def free_port_block(host: str, start: int, count: int = 4) -> int:
    """The first P >= start with P..P+count-1 all free on host."""
    p = start
    while p < 65000:
        socks = []
        try:
            for i in range(count):
                s = socket.socket()
                socks.append(s)
                s.bind((host, p + i))
            return p
        except OSError:
            p += 10
        finally:
            for s in socks:
                s.close()
    raise DemoFailed("no free ports")


class Demo:
    def __init__(self, ctx, fast: bool):
        self.ctx = ctx
        self.fast = fast
        self.secret = b""
        self.nodes: dict[str, str] = {}
        self.counters: dict[tuple[str, int], int] = {}
        self.console_lines: dict[str, list[str]] = {"node1": [], "node2": []}

    def say(self, text: str = "") -> None:
        self.ctx.say(text)

    def step(self, n: int, text: str) -> None:
        self.say(f"\n=== {n}. {text}")

    async def pause(self, seconds: float) -> None:
        await trio.sleep(seconds * (0.5 if self.fast else 1.0))

    async def call(self, node: str, op: str, args: dict | None = None):
        async with await ControlClient.open(self.nodes[node], self.secret) as c:
            return await c.request(op, args)

    async def follow(self, node: str, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with await ControlClient.open(self.nodes[node], self.secret) as c:
            pending = [""]

            def show(kind, data):
                if kind != "console":
                    return
                pending[0] += data.get("text", "")
                *done, pending[0] = pending[0].split("\n")
                for line in done:
                    self.console_lines[node].append(line)
                    m = COUNTER.search(line)
                    if m:
                        self.counters[(node, int(m.group(1)))] = int(m.group(2))
                    self.say(f"  {node} | {line}")
            task_status.started()
            await c.request("console", {"follow": True, "lines": 0}, on_push=show)

    def counter(self, node: str, envid: int) -> int | None:
        return self.counters.get((node, envid))

    async def wait_counter(self, node: str, envid: int, above: int | None, timeout=5.0) -> int:
        with trio.move_on_after(timeout):
            while True:
                c = self.counter(node, envid)
                if c is not None and (above is None or c > above):
                    return c
                await trio.sleep(0.05)
        raise DemoFailed(f"env {envid} on {node} printed no new counter within {timeout}s")

    def check(self, ok: bool, text: str) -> None:
        if not ok:
            raise DemoFailed(text)
        self.say(f"  ok: {text}")

    async def ps(self, node: str) -> None:
        res = await self.call(node, "ps")
        self.say(f"  {'ENV':>6} {'PARENT':>6} {'STATUS':9} {'PROGRAM':8} STATE")
        for e in res["envs"]:
            self.say(f"  {e['envid']:>6} {e['parent']:>6} {e['status']:9} {e['name']:8} {e['state']}")

    async def walkthrough(self) -> None:
        n1, n2 = "node1", "node2"
        self.step(1, f"node 1 ({self.nodes[n1]}) booted the test program as env 4100")
        first = await self.wait_counter(n1, 4100, None)
        await self.pause(1.0)
        self.check(self.counter(n1, 4100) > first, "env 4100 is counting")

        self.step(2, "pause 4100")
        await self.call(n1, "pause", {"envid": 4100})
        self.say("  Process 4100 is paused.")
        at_pause = self.counter(n1, 4100)
        await self.pause(1.0)
        self.check(self.counter(n1, 4100) == at_pause, f"the counter stopped at {at_pause}")

        self.step(3, "ps")
        await self.ps(n1)

        self.step(4, "resume 4100")
        await self.call(n1, "resume", {"envid": 4100})
        self.say("  Process 4100 is resumed.")
        c = await self.wait_counter(n1, 4100, at_pause)
        self.check(c == at_pause + 1, f"the counter continues with {c}")
        await self.pause(0.6)

        self.step(5, "pause 4100; save 4100 my_image; ls")
        await self.call(n1, "pause", {"envid": 4100})
        saved = self.counter(n1, 4100)
        self.say("  Process 4100 is paused.")
        res = await self.call(n1, "save", {"envid": 4100, "name": "my_image"})
        self.say(f"  Save Image Successful: my_image ({plural(res['pages'], 'page')}, "
                 f"{res['bytes']} bytes)")
        ls = await self.call(n1, "ls")
        self.check(any(i["name"] == "my_image" for i in ls["images"]), "ls shows my_image")

        self.step(6, "load my_image; resume the new env")
        res = await self.call(n1, "load", {"name": "my_image"})
        loaded = res["envid"]
        self.say(f"  Load Image Successful, You can resume New Env: {loaded}")
        await self.call(n1, "resume", {"envid": loaded})
        c = await self.wait_counter(n1, loaded, None)
        self.check(c == saved + 1, f"env {loaded} continues from the saved counter: {saved} -> {c}")
        await self.pause(0.6)
        await self.call(n1, "pause", {"envid": loaded})
        at = self.counter(n1, loaded)
        self.say(f"  Process {loaded} is paused.")

        self.step(7, f"migrate_send_normal {loaded} to node 2 ({self.nodes[n2]}); resume it there")
        res = await self.call(n1, "migrate", {"envid": loaded, "to": self.nodes[n2],
                                              "method": "normal"})
        moved = res["new_envid"]
        self.say(f"  You have successfully moved Env {loaded} to {self.nodes[n2]}.")
        self.say(f"  Process Migration Finished, You can resume New Env: {moved}")
        self.say(f"  ({res['pages']} pages, {res['bytes']} bytes in "
                 f"{res['total_s'] * 1000:.1f} ms)")
        await self.call(n2, "resume", {"envid": moved})
        c = await self.wait_counter(n2, moved, None)
        self.check(c == at + 1, f"on node 2 the counter continues: {at} -> {c}")
        await self.pause(0.6)

        self.step(8, f"kill {moved} on node 2")
        await self.call(n2, "kill", {"envid": moved})
        self.say(f"  Process {moved} is killed.")

        self.step(9, "on node 1: copy 4100, kill 4100")
        res = await self.call(n1, "copy", {"envid": 4100})
        copy = res["new_envid"]
        self.say(f"  Copying from Env: 4100\n  New Env Created: {copy}")
        await self.call(n1, "kill", {"envid": 4100})
        self.say("  Process 4100 is killed.")

        self.step(10, f"migrate_send_pgfault {copy} to node 2; resume it there")
        res = await self.call(n1, "migrate", {"envid": copy, "to": self.nodes[n2],
                                              "method": "pgfault", "push": False})
        moved = res["new_envid"]
        self.say(f"  You have successfully moved Env {copy} to {self.nodes[n2]}.")
        self.say(f"  Process Migration Finished, You can resume New Env: {moved}")
        self.say(f"  (sent {res['pages']} page table entries and no page contents, "
                 f"runnable after {res['downtime_s'] * 1000:.1f} ms)")
        await self.call(n2, "resume", {"envid": moved})
        c = await self.wait_counter(n2, moved, None)
        self.check(c == saved + 1, f"on node 2 the copy continues: {saved} -> {c}")
        stats = (await self.call(n2, "stats"))["pager"]
        self.check(stats.get("pages_fetched", 0) > 0,
                   f"node 2 fetched {stats.get('pages_fetched')} pages from node 1 on faults")
        await self.pause(0.8)

        self.step(11, f"jmig's own: pre-copy live migration of {moved} back to node 1")
        res = await self.call(n2, "migrate", {"envid": moved, "to": self.nodes[n1],
                                              "method": "precopy", "resume": True})
        back = res["new_envid"]
        self.say(f"  Process Migration Finished, New Env {back} is running on node 1")
        self.say(f"  ({plural(res['rounds'], 'round')}, downtime {res['downtime_s'] * 1000:.1f} ms, "
                 f"total {res['total_s'] * 1000:.1f} ms)")
        last = self.counter(n2, moved)
        c = await self.wait_counter(n1, back, None)
        self.check(c == last + 1, f"back on node 1 the counter continues: {last} -> {c}")
        await self.pause(0.6)

    async def run(self, tmp: Path) -> None:
        host = self.ctx.args.host
        p1 = self.ctx.args.base_port or free_port_block(host, 50001)
        p2 = free_port_block(host, p1 + 10)
        self.secret = secret_file.create(tmp / "secret")
        procs = []
        try:
            for name, port, boot in (("node1", p1, ["--boot", "loop@4100"]), ("node2", p2, [])):
                procs.append(self.start_node(tmp, name, host, port, *boot))
                self.say(f"started {name} on {host}:{port} (log: {tmp / name}.log)")
            for name in self.nodes:
                await self._wait_up(name)
            async with trio.open_nursery() as nursery:
                for name in self.nodes:
                    await nursery.start(self.follow, name)
                await self.walkthrough()
                await trio.sleep(0.3)
                nursery.cancel_scope.cancel()
            # Said once the consoles are no longer followed: the last line.
            self.say("\nThe walkthrough is complete.")
        finally:
            stop_nodes(procs)

    def start_node(self, tmp: Path, name: str, host: str, port: int, *args: str):
        """A jmig-node process for this demo (its log in tmp/NAME.log)."""
        self.nodes[name] = f"{host}:{port}"
        with open(tmp / f"{name}.log", "w") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "jmig.node.main", "--host", host, "--port", str(port),
                 "--name", name, "--data-dir", str(tmp / name), "--secret-file",
                 str(tmp / "secret"), "--log-format", "json", "--no-console", *args],
                stdout=subprocess.DEVNULL, stderr=log)

    async def _wait_up(self, name: str) -> None:
        deadline = time.monotonic() + 15
        while True:
            try:
                await self.call(name, "info")
                return
            except (OSError, RemoteError):
                if time.monotonic() > deadline:
                    raise DemoFailed(f"{name} did not start; see its log") from None
                await trio.sleep(0.1)


def stop_nodes(procs) -> None:
    """SIGTERM every node (an orderly stop), SIGKILL those not gone in 5 s."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()


def check_host(host: str) -> None:
    """A demo's --host: an IP address this machine can bind."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise UsageError(f"--host {host!r} is not an IP address; use a loopback "
                         "address such as 127.0.0.5") from None
    try:
        with socket.socket() as s:
            s.bind((host, 0))
    except OSError as exc:
        raise UsageError(f"cannot use --host {host}: {exc.strerror}") from None


def play(ctx, dm: Demo, names, what: str) -> int:
    """Run dm in a fresh temporary directory; on a failure, say why (and
    after how long) with the last lines of each node's log.  Exit code."""
    check_host(ctx.args.host)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="jmig-demo-") as d:
        try:
            try:
                trio.run(dm.run, Path(d))
            except BaseExceptionGroup as eg:
                raise leaf(eg) from None
        except (DemoFailed, RemoteError, OSError) as exc:
            if isinstance(exc, RemoteError):
                text = f"a node refused: {exc.message} [{exc.code}]"
            else:
                text = str(exc) if isinstance(exc, DemoFailed) else exc.strerror or str(exc)
            print(f"jmigctl {what}: FAILED after {time.monotonic() - started:.1f} s: {text}",
                  file=ctx.err)
            for name in names:
                log = Path(d) / f"{name}.log"
                if log.exists():
                    tail = log.read_text().splitlines()[-5:]
                    print(f"--- {name} log (last lines):\n" + "\n".join(tail), file=ctx.err)
            return 1
    return 0


def demo(ctx) -> int:
    return play(ctx, Demo(ctx, ctx.args.fast), ("node1", "node2"), "demo")
