"""Scale: a cluster of 16 nodes on one machine, the most envs one node can
hold, and 100 migrations at once.

    python bench/scale.py [--json FILE] [--quick]

- 16 jmig-node processes, one loopback address each (127.0.95.x).
- One node holds JOS's NENV (1,024) envs at once (sleeping `loop`s); `ps`
  there is timed (p50/p99 of 20 calls), and they are killed again.
- 100 memtest processes (64 pages each, a pass every ~0.3 s) spread over
  the nodes, then 100 migrations started at once (methods mixed: normal,
  pgfault with and without push, precopy), each to another node; every job
  must succeed, and every memtest must verify another pass where it
  arrived, with no MISMATCH anywhere.  `ps` latency on a busy node while
  they run, the wall time, and every node's RSS idle and at its peak are
  reported.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jmig.ctl.client import ControlClient, RemoteError      # noqa: E402
from nodes import Nodes                                    # noqa: E402

MIB = 1 << 20
NENV = 1024
FULL_MEMORY = "64M"    # the last node, which holds NENV envs (a loop takes 9 pages)
PASS_RE = re.compile(r"memtest: pass (\d+) ok")


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


class Cluster(Nodes):
    """n nodes that do not join each other; the last one has FULL_MEMORY."""

    def __init__(self, tmp: Path, n: int, memory: str):
        super().__init__(tmp, n, 95, args_of=lambda i: [
            "--memory", memory if i < n - 1 else FULL_MEMORY])

    def rss_all(self) -> list[int]:
        return [rss(p.pid) for p in self.procs]


async def ps_latencies(c: Cluster, node: str, n: int = 20) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        await c.call(node, "ps")
        out.append(time.perf_counter() - t)
        await trio.sleep(0.05)
    return out


async def full_node(c: Cluster, node: str) -> dict:
    """NENV envs on one node: how many fit, and ps over all of them."""
    made = []
    async with await ControlClient.open(node, c.secret) as cl:
        while len(made) < NENV:
            try:
                made.append((await cl.request("spawn", {"program": "loop",
                                                        "args": ["100000"]}))["envid"])
            except RemoteError as exc:
                if exc.code != "no-free-env":
                    raise
                break
        lat = await ps_latencies(c, node)
        n = len((await cl.request("ps"))["envs"])
        for envid in made:
            await cl.request("kill", {"envid": envid})
    return {"envs": n, "ps_p50_ms": pct(lat, 50) * 1e3, "ps_p99_ms": pct(lat, 99) * 1e3}


async def migrations(c: Cluster, count: int) -> dict:
    rnd = random.Random(100)
    nodes = c.nodes
    where: list[tuple[int, str]] = []          # (envid, node): ids repeat across nodes
    # memtest 64 pages, rewriting 8 a pass, 300 ms apart: a light load each.
    for i in range(count):
        node = nodes[i % len(nodes)]
        env = (await c.call(node, "spawn", {"program": "memtest",
                                            "args": ["64", "8", "300"]}))["envid"]
        where.append((env, node))
    with trio.fail_after(600):
        for env, node in where:
            while not PASS_RE.search(await c.console(node, env)):
                await trio.sleep(0.2)
    idle = c.rss_all()
    methods = [{"method": "normal"}, {"method": "pgfault", "push": True},
               {"method": "pgfault", "push": False}, {"method": "precopy", "max_rounds": 4}]
    plan = []
    for i, (env, node) in enumerate(where):
        dest = rnd.choice([n for n in nodes if n != node])
        plan.append((env, node, dest, methods[i % len(methods)]))
    peak = list(idle)
    t0 = time.perf_counter()
    jobs = []
    busy_lat: list[float] = []
    done = False

    async def sample():
        while not done:
            peak[:] = [max(a, b) for a, b in zip(peak, c.rss_all())]
            await trio.sleep(0.1)

    async def ps_probe():
        while not done:
            t = time.perf_counter()
            await c.call(nodes[0], "ps")
            busy_lat.append(time.perf_counter() - t)
            await trio.sleep(0.1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample)
        nursery.start_soon(ps_probe)

        async def start(env, node, dest, extra):
            res = await c.call(node, "migrate", {"envid": env, "to": dest, "resume": True,
                                                 "detach": True, **extra})
            jobs.append((node, res["job"], env, dest, extra["method"]))
        async with trio.open_nursery() as starters:
            for p in plan:
                starters.start_soon(start, *p)
        results = []
        with trio.fail_after(900):
            for node, job, env, dest, method in jobs:
                while True:
                    js = {j["id"]: j for j in (await c.call(node, "jobs"))["jobs"]}
                    if js[job]["state"] != "running":
                        results.append((js[job], dest, method))
                        break
                    await trio.sleep(0.2)
        wall = time.perf_counter() - t0
        done = True
    failures = [(j["error"], m) for j, _, m in results if j["state"] != "succeeded"]
    # Every moved memtest verifies another pass where it arrived.
    verified, mismatches = 0, 0
    with trio.fail_after(600):
        for j, dest, _ in results:
            if j["state"] != "succeeded":
                continue
            new = j["result"]["new_envid"]
            while True:
                text = await c.console(dest, new)
                if "MISMATCH" in text:
                    mismatches += 1
                    break
                if len(PASS_RE.findall(text)) >= 2:
                    verified += 1
                    break
                await trio.sleep(0.2)
    by_method: dict[str, list[float]] = {}
    for j, _, m in results:
        if j["state"] == "succeeded":
            by_method.setdefault(m, []).append(j["result"]["total_s"])
    return {"migrations": len(results), "failures": len(failures), "failure_detail": failures,
            "wall_s": wall, "verified": verified, "mismatches": mismatches,
            "busy_ps_p50_ms": pct(busy_lat, 50) * 1e3 if busy_lat else None,
            "busy_ps_p99_ms": pct(busy_lat, 99) * 1e3 if busy_lat else None,
            "method_mean_s": {m: statistics.mean(v) for m, v in by_method.items()},
            "rss_idle_mib": [r / MIB for r in idle], "rss_peak_mib": [r / MIB for r in peak]}


async def run(nodes: int, count: int, memory: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="jmig-scale-") as d:
        c = Cluster(Path(d), nodes, memory)
        try:
            await c.wait_up()
            full = await full_node(c, c.nodes[-1])
            mig = await migrations(c, count)
        finally:
            c.close()
    return {"nodes": nodes, "full_node": full, **mig}


def show(r: dict) -> None:
    print(f"{r['nodes']} nodes on one machine")
    f = r["full_node"]
    print(f"  one node with {f['envs']} envs: ps p50 {f['ps_p50_ms']:.1f} ms, "
          f"p99 {f['ps_p99_ms']:.1f} ms")
    print(f"  {r['migrations']} migrations at once: {r['wall_s']:.1f} s, "
          f"{r['failures']} failures, {r['verified']} memtests verified where they arrived, "
          f"{r['mismatches']} mismatches")
    print("  mean time per method: " + ", ".join(
        f"{m} {s:.2f} s" for m, s in sorted(r["method_mean_s"].items())))
    if r["busy_ps_p50_ms"] is not None:
        print(f"  ps on a busy node meanwhile: p50 {r['busy_ps_p50_ms']:.1f} ms, "
              f"p99 {r['busy_ps_p99_ms']:.1f} ms")
    print(f"  node RSS idle {min(r['rss_idle_mib']):.0f}..{max(r['rss_idle_mib']):.0f} MiB, "
          f"peak {min(r['rss_peak_mib']):.0f}..{max(r['rss_peak_mib']):.0f} MiB")
    for e, m in r["failure_detail"][:10]:
        print(f"  failed ({m}): {e}")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json")
    ap.add_argument("--quick", action="store_true", help="4 nodes, 12 migrations")
    ap.add_argument("--memory", default="32M", help="each node's memory (default 32M)")
    a = ap.parse_args(argv)
    nodes, count = (4, 12) if a.quick else (16, 100)
    r = trio.run(run, nodes, count, a.memory)
    show(r)
    out = {"scale": r}
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
