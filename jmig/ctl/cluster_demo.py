"""jmigctl demo --cluster: four local nodes, the balancer and a drain.

Starts four jmig-node processes on loopback (node2..node4 join node1; a
fresh secret and data directories in a temporary directory, as
`jmigctl demo` does), waits until each lists all four as alive members,
starts 12 CPU-bound `burn`s on node1, switches balancing on on every node
and shows the envs spread until no two nodes differ by more than one; then
shows the balancer's decisions, checks that a moved burn goes on counting
where it arrived, switches balancing off, drains node4 and shows where
everything is.  Each claim is checked, not just narrated (demo.Demo.check).
"""
from __future__ import annotations

import re
from pathlib import Path

import trio

from ..node import secret as secret_file
from ..node.balance import MIN_RESIDENCE_SECONDS
from .client import ControlClient
from .demo import Demo, DemoFailed, free_port_block, play, stop_nodes
from .render import plural

NAMES = ("node1", "node2", "node3", "node4")
BURNS = 12
# burn's line every 65,536 iterations (about 1.3 M instructions) rather than
# its default 524,288: with 12 sharing node1's core, the default prints a
# line per env every ~16 s, too rarely to see a moved one go on.
BURN_EVERY = "65536"
BURN = re.compile(r"burn ([0-9a-f]{8}): (\d+)")
BALANCE_TIMEOUT = 60.0


class ClusterDemo(Demo):
    NODE_IDS = False                  # start node K with --node-id K
    DONE = "The cluster demo is complete."

    def __init__(self, ctx, fast: bool):
        super().__init__(ctx, fast)
        self.console_lines = {n: [] for n in NAMES}
        # (node, envid) -> the first and the last line number its burn printed there
        self.first: dict[tuple[str, int], int] = {}
        self.last: dict[tuple[str, int], int] = {}
        self.watch: set[tuple[str, int]] = set()    # burns whose lines are shown

    def name_of(self, addr: str) -> str:
        return next((n for n, a in self.nodes.items() if a == addr), addr)

    async def follow(self, node: str, task_status=trio.TASK_STATUS_IGNORED) -> None:
        await self.follow_lines(node, self.on_line, task_status=task_status)

    async def follow_lines(self, node: str, on_line,
                           task_status=trio.TASK_STATUS_IGNORED) -> None:
        """on_line(node, envid, line) for every whole line of node's console,
        put together per env (chunks of several envs may interleave)."""
        async with await ControlClient.open(self.nodes[node], self.secret) as c:
            pending: dict[int, str] = {}

            def show(kind, data):
                if kind != "console":
                    return
                envid = data.get("envid") or 0
                *done, pending[envid] = (pending.get(envid, "") + data.get("text", "")
                                         ).split("\n")
                for line in done:
                    on_line(node, envid, line)
            task_status.started()
            await c.request("console", {"follow": True, "lines": 0}, on_push=show)

    def on_line(self, node: str, envid: int, line: str) -> None:
        """Record burn lines: each env's first and last line number per node;
        show those of watched envs."""
        m = BURN.search(line)
        if not m:
            return
        key = (node, int(m.group(1), 16))
        self.first.setdefault(key, int(m.group(2)))
        self.last[key] = int(m.group(2))
        if key in self.watch:
            self.say(f"  {node} | {line}")

    async def wait_line(self, key: tuple[str, int], timeout: float = 20.0) -> int:
        """The first line number env key[1] printed on node key[0]."""
        with trio.move_on_after(timeout):
            while key not in self.first:
                await trio.sleep(0.05)
            return self.first[key]
        raise DemoFailed(f"env {key[1]} on {key[0]} printed no line within {timeout:.0f}s")

    async def counts(self) -> dict[str, int]:
        """Each node's number of envs (its own `info`)."""
        out: dict[str, int] = {}

        async def one(n):
            out[n] = (await self.call(n, "info"))["envs"]
        async with trio.open_nursery() as nursery:
            for n in NAMES:
                nursery.start_soon(one, n)
        return {n: out[n] for n in NAMES}

    def show_counts(self, label: str, counts: dict[str, int]) -> None:
        self.say(f"  {label:>6}  " + "  ".join(f"{n} {c:2}" for n, c in counts.items())
                 + f"   (max-min {max(counts.values()) - min(counts.values())})")

    async def nodes_table(self, node: str) -> list[dict]:
        view = (await self.call(node, "nodes"))["nodes"]
        self.say(f"  {'NODE':22} {'NAME':6} {'STATE':6} {'ENVS':>4} {'RUNNABLE':>8} {'CPU':>5}")
        for v in view:
            load = v.get("load") or {}
            self.say(f"  {v['addr'] + (' *' if v.get('self') else ''):22} {v.get('name', ''):6} "
                     f"{v['state']:6} {load.get('envs', '-'):>4} {load.get('runnable', '-'):>8} "
                     f"{load.get('cpu', 0):>5.0%}")
        self.say(f"  (as {node} sees the cluster; * is {node} itself; the others' load is "
                 "from their last heartbeat)")
        return view

    async def set_balance(self, on: bool) -> None:
        res = {}

        async def one(n):
            res[n] = await self.call(n, "balance", {"on": on})
        async with trio.open_nursery() as nursery:
            for n in NAMES:
                nursery.start_soon(one, n)
        word = "on" if on else "off"
        self.check(all(res[n]["balance"] is on for n in NAMES),
                   f"balancing is {word} on " + ", ".join(NAMES))

    async def balance_jobs(self) -> list[tuple[str, dict]]:
        """(node, job) for every migration the balancer started, cluster-wide."""
        out = []
        for n in NAMES:
            for j in (await self.call(n, "jobs"))["jobs"]:
                if (j.get("reason") or "").startswith("balance"):
                    out.append((n, j))
        return out

    async def wait_alive(self, timeout: float = 15.0) -> None:
        """Until every node lists all four alive (or timeout); checked."""
        deadline = trio.current_time() + timeout
        while True:
            views = {n: (await self.call(n, "nodes"))["nodes"] for n in NAMES}
            alive = {n: sorted(v["name"] for v in view if v["state"] == "alive")
                     for n, view in views.items()}
            if all(a == list(NAMES) for a in alive.values()) or trio.current_time() > deadline:
                break
            await trio.sleep(0.1)
        for n in NAMES:
            self.check(alive[n] == list(NAMES),
                       f"{n} lists 4 alive members: {', '.join(alive[n])}")

    async def walkthrough(self) -> None:
        n1, n4 = "node1", "node4"
        addrs = ", ".join(f"{n} {self.nodes[n]}" for n in NAMES)
        self.step(1, f"four nodes: {addrs}; node2-4 started with --join {self.nodes[n1]}")
        await self.wait_alive()

        self.step(2, f"spawn {BURNS} x `burn {BURN_EVERY}` (CPU-bound forever, a numbered "
                     "line every ~1.3 M instructions) on node1")
        burns = []
        async with await ControlClient.open(self.nodes[n1], self.secret) as c:
            for _ in range(BURNS):
                burns.append((await c.request("spawn", {"program": "burn",
                                                        "args": [BURN_EVERY]}))["envid"])
        spawned = trio.current_time()
        self.say("  envs " + ", ".join(str(e) for e in burns))
        ps = (await self.call(n1, "ps"))["envs"]
        self.check(sorted(e["envid"] for e in ps if e["name"] == "burn") == sorted(burns),
                   f"node1 runs {BURNS} burns")
        await self.pause(1.0)

        self.step(3, "the cluster's load: every burn is on node1")
        # The others' figures come with their heartbeats: wait for one
        # that carries node1's 12.
        with trio.move_on_after(5):
            while True:
                seen = {n: {v["name"]: (v.get("load") or {}).get("envs")
                            for v in (await self.call(n, "nodes"))["nodes"]} for n in NAMES}
                if all(s.get(n1) == BURNS for s in seen.values()):
                    break
                await trio.sleep(0.1)
        view = await self.nodes_table(n1)
        envs = {v["name"]: (v.get("load") or {}).get("envs") for v in view}
        self.check(envs == {n1: BURNS, "node2": 0, "node3": 0, "node4": 0},
                   f"node1 has {BURNS} envs, node2-4 none")
        self.check(all(s.get(n1) == BURNS for s in seen.values()),
                   f"every node's heartbeats tell it node1 has {BURNS} envs")

        self.step(4, "balance on (on all four nodes)")
        await self.set_balance(True)
        self.say(f"  envs per node, once a second (an env becomes movable "
                 f"{MIN_RESIDENCE_SECONDS:.0f} s after it started or arrived; each node "
                 "moves one at a time):")
        t0 = trio.current_time()
        tick = 0
        while True:
            counts = await self.counts()
            self.show_counts(f"{tick} s", counts)
            if max(counts.values()) - min(counts.values()) <= 1 and sum(counts.values()) == BURNS:
                break
            if trio.current_time() - t0 > BALANCE_TIMEOUT:
                raise DemoFailed(f"not balanced after {BALANCE_TIMEOUT:.0f} s: {counts}")
            tick += 1
            await trio.sleep_until(max(t0 + tick, trio.current_time()))
        took = trio.current_time() - t0
        self.check(max(counts.values()) - min(counts.values()) <= 1
                   and sum(counts.values()) == BURNS,
                   f"balanced in {took:.1f} s ({took + t0 - spawned:.1f} s after the spawn): "
                   + ", ".join(f"{n} {c}" for n, c in counts.items()))

        self.step(5, "the balancer's decisions (each a migration job; its reason is the "
                     "decision's)")
        jobs = await self.balance_jobs()
        for n, j in sorted(jobs, key=lambda nj: nj[1]["started"] or 0):
            new = (j.get("result") or {}).get("new_envid")
            self.say(f"  {n} job {j['id']}: env {j['envid']} -> {self.name_of(j['target'])}"
                     + (f" (env {new} there)" if new not in (None, j["envid"]) else "")
                     + f" {j['state']}")
            self.say(f"      {j['reason']}")
        moved = [(n, j) for n, j in jobs if j["state"] == "succeeded"]
        from_n1 = [j for n, j in moved if n == n1]
        self.check(len(from_n1) >= BURNS - BURNS // len(NAMES),
                   f"{plural(len(moved), 'balance migration')} succeeded, "
                   f"{len(from_n1)} of them from node1 "
                   f"(at least {BURNS - BURNS // len(NAMES)} must leave it)")
        self.check(not any(j["state"] == "running" for _, j in jobs),
                   "no balance migration is in flight")

        # A burn node1 moved that printed a line on node1 (lines are rare
        # while 12 share node1's core) and is still where it arrived: the
        # last one moved, which ran on node1 longest.
        present = {(n, e["envid"]) for n in NAMES for e in (await self.call(n, "ps"))["envs"]}
        pick = None
        for j in sorted(from_n1, key=lambda j: j["started"] or 0, reverse=True):
            env, new = j["envid"], j["result"]["new_envid"]
            there = self.name_of(j["target"])
            if (n1, env) in self.last and (there, new) in present:
                pick = (env, there, new)
                break
        self.check(pick is not None, "a burn that node1 moved printed lines on node1")
        env, there, new = pick
        self.step(6, f"env {env} moved from node1 to {there}"
                  + (f" (env {new} there)" if new != env else "") + ": it goes on counting")
        last = self.last[(n1, env)]
        self.say(f"  node1 | burn {env:08x}: {last}   (its last line on node1)")
        self.watch.add((there, new))
        first = await self.wait_line((there, new))
        self.say(f"  {there} | burn {new:08x}: {first}   (its first line on {there})")
        self.check(first == last + 1, f"on {there} it continues from node1's count: "
                   f"{last} -> {first}")
        with trio.move_on_after(20):
            while self.last[(there, new)] <= first:
                await trio.sleep(0.05)
        self.check(self.last[(there, new)] > first,
                   f"and counts on: {self.last[(there, new)]}")
        self.watch.clear()

        self.step(7, "balance off (on all four nodes)")
        await self.set_balance(False)

        self.step(8, f"drain node4 ({self.nodes[n4]}): move its envs to the others")
        events = []

        def on_push(kind, data):
            if kind != "drain" or not isinstance(data, dict):
                return
            events.append(data)
            to = self.name_of(data.get("to") or "")
            if data.get("state") == "moving":
                self.say(f"  env {data['envid']}: moving to {to} by {data.get('method')} "
                         f"(job {data.get('job')})")
            elif data.get("state") == "moved":
                new = data.get("new_envid")
                self.say(f"  env {data['envid']}: moved to {to}"
                         + (f" as env {new}" if new not in (None, data["envid"]) else ""))
            else:
                self.say(f"  env {data['envid']}: {data.get('state')} "
                         f"{data.get('reason') or data.get('error') or ''}")
        async with await ControlClient.open(self.nodes[n4], self.secret) as c:
            res = await c.request("drain", {"method": "auto", "force": False}, on_push=on_push)
        self.say(f"  node4 drained: {plural(len(res['moved']), 'env')} moved, "
                 f"{len(res['failed'])} failed, {len(res['skipped'])} skipped, "
                 f"{len(res['left'])} left; it stays cordoned")
        self.check(not res["failed"] and not res["skipped"] and not res["left"]
                   and len(res["moved"]) == counts[n4],
                   f"all {plural(counts[n4], 'env')} of node4 moved")
        after = await self.counts()
        self.show_counts("now", after)
        self.check(after[n4] == 0, "node4 has no envs")
        self.check(sum(after[n] for n in NAMES if n != n4) == BURNS,
                   f"node1-3 have the {BURNS} burns between them: "
                   + ", ".join(f"{n} {after[n]}" for n in NAMES if n != n4))

        self.step(9, "ps, cluster-wide")
        self.say(f"  {'NODE':6} {'ENV':>6} {'STATUS':9} {'PROGRAM':8} STATE")
        total = 0
        for n in NAMES:
            for e in (await self.call(n, "ps"))["envs"]:
                total += e["name"] == "burn" and e["status"] in ("Runnable", "Running") \
                    and not e["state"]
                self.say(f"  {n:6} {e['envid']:>6} {e['status']:9} {e['name']:8} {e['state']}")
        self.check(total == BURNS, f"{BURNS} burns run in the cluster (Runnable or Running, "
                   "not paused or held)")

    async def run(self, tmp: Path) -> None:
        host = self.ctx.args.host
        port = self.ctx.args.base_port or free_port_block(host, 50001)
        self.secret = secret_file.create(tmp / "secret")
        procs = []
        try:
            for k, name in enumerate(NAMES):
                if k:
                    port = free_port_block(host, port + 10)
                args = (["--node-id", str(k)] if self.NODE_IDS else []) \
                    + (["--join", self.nodes[NAMES[0]]] if k else [])
                procs.append(self.start_node(tmp, name, host, port, *args))
                self.say(f"started {name} on {host}:{port} {' '.join(args)}".rstrip()
                         + f" (log: {tmp / name}.log)")
            for name in NAMES:
                await self._wait_up(name)
            async with trio.open_nursery() as nursery:
                for name in NAMES:
                    await nursery.start(self.follow, name)
                await self.walkthrough()
                nursery.cancel_scope.cancel()
            self.say(f"\n{self.DONE}")
        finally:
            stop_nodes(procs)


def cluster_demo(ctx) -> int:
    return play(ctx, ClusterDemo(ctx, ctx.args.fast), NAMES, "demo --cluster")
