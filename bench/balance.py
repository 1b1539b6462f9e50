"""Balance: what the balancer buys a cluster on one machine.

    python bench/balance.py [--json FILE] [--quick]

- 4 jmig-node processes, one loopback address each (127.0.96.x); node2-4
  start with --join node1, and every node must list all four alive.
- 12 `burn`s (CPU-bound forever) are spawned on node1.
- With balancing off, the cluster's guest instructions per second are
  measured over a window (5 s; 2 s with --quick, each after a second's
  warm-up): the sum over the nodes of each one's `info` "instructions"
  delta over its wall time.  The cores the node processes used meanwhile
  (their CPU time over the window) are measured too, and those the rest of
  the machine used (/proc/stat): other work takes cores from the nodes.
- Balancing is switched on on all four (no sooner than the burns are
  movable: balance.MIN_RESIDENCE_SECONDS after the spawn); the time until
  the envs are spread (max - min envs per node <= 1, all 12 counted once)
  and the migrations it took (jobs with a reason starting "balance", on
  every node) are recorded.
- The cluster's instructions per second are measured again over the same
  window.

A node runs its guests on one core, so the cluster's total can grow with
the machine's cores (os.cpu_count()), not with the number of nodes: on a
2-core machine 4 balanced nodes should approach 2x one busy node.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jmig.ctl.client import ControlClient                 # noqa: E402
from jmig.node.balance import MIN_RESIDENCE_SECONDS         # noqa: E402
from nodes import Nodes                                    # noqa: E402

NODES = 4
BURNS = 12
BALANCE_TIMEOUT = 120.0
WARMUP_SECONDS = 1.0       # before each window: code that just arrived compiles


def Cluster(tmp: Path, n: int, net: int = 96, node_ids: bool = False) -> Nodes:
    """n node processes on 127.0.NET.2.., node2.. joining node1 (with
    node_ids, node K+1 runs with --node-id K)."""
    return Nodes(tmp, n, net, join=True, node_ids=node_ids)


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU time all of the machine's cores have spent busy so far (/proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")     # less idle, iowait


async def rate(c: Cluster, window: float) -> tuple[float, list[float], float, float]:
    """The cluster's guest instructions per second over window seconds:
    the sum of each node's (instructions delta / its wall time); the cores
    the node processes used meanwhile (their CPU time / wall time); and the
    cores the rest of the machine used (other work, which takes cores from
    the nodes)."""
    samples: list = [None] * len(c.nodes)
    cpu0, t0 = sum(cpu_seconds(p.pid) for p in c.procs), time.perf_counter()
    busy0 = machine_busy_seconds()

    async def one(i, node):
        a = (await c.call(node, "info"))["instructions"]
        ta = time.perf_counter()
        await trio.sleep(window)
        b = (await c.call(node, "info"))["instructions"]
        samples[i] = (b - a) / (time.perf_counter() - ta)
    async with trio.open_nursery() as nursery:
        for i, node in enumerate(c.nodes):
            nursery.start_soon(one, i, node)
    wall = time.perf_counter() - t0
    cores = (sum(cpu_seconds(p.pid) for p in c.procs) - cpu0) / wall
    others = max(0.0, (machine_busy_seconds() - busy0) / wall - cores)
    return sum(samples), samples, cores, others


async def balance_jobs(c: Cluster) -> list[dict]:
    return [j for res in await c.each("jobs") for j in res["jobs"]
            if (j.get("reason") or "").startswith("balance")]


async def run(window: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="jmig-balance-") as d:
        c = Cluster(Path(d), NODES)
        try:
            await c.wait_up(members=True)
            async with await ControlClient.open(c.nodes[0], c.secret) as cl:
                for _ in range(BURNS):
                    await cl.request("spawn", {"program": "burn", "args": []})
            spawned = trio.current_time()
            await trio.sleep(WARMUP_SECONDS)
            before, before_nodes, before_cores, before_others = await rate(c, window)
            # No env moves before it has been where it is MIN_RESIDENCE_SECONDS:
            # the time to balance is the balancer's own (with --quick too).
            await trio.sleep_until(spawned + MIN_RESIDENCE_SECONDS)
            await c.each("balance", {"on": True})
            t0 = time.perf_counter()
            with trio.fail_after(BALANCE_TIMEOUT):
                while True:
                    counts = [i["envs"] for i in await c.each("info")]
                    if max(counts) - min(counts) <= 1 and sum(counts) == BURNS:
                        break
                    await trio.sleep(0.1)
            took = time.perf_counter() - t0
            jobs = await balance_jobs(c)
            await trio.sleep(WARMUP_SECONDS)
            after, after_nodes, after_cores, after_others = await rate(c, window)
            later = await balance_jobs(c)
            counts_after = [i["envs"] for i in await c.each("info")]
        finally:
            c.close()
    return {"nodes": NODES, "burns": BURNS, "window_s": window, "before_ips": before,
            "before_node_ips": before_nodes, "after_ips": after, "after_node_ips": after_nodes,
            "before_cores": before_cores, "after_cores": after_cores,
            "before_other_cores": before_others, "after_other_cores": after_others,
            "ratio": after / before, "balance_s": took, "migrations": len(jobs),
            "migrations_failed": sum(j["state"] != "succeeded" for j in jobs),
            "migrations_during_after": len(later) - len(jobs), "counts_balanced": counts,
            "counts_after": counts_after, "cpu_count": os.cpu_count()}


def show(r: dict) -> None:
    def per_node(xs):
        return ", ".join(f"{x / 1e6:.1f}" for x in xs)
    print(f"{r['nodes']} nodes on one machine, {r['burns']} burns started on node1, "
          f"windows of {r['window_s']:.0f} s")
    rows = [
        ("before: balancing off (M instr/s)", f"{r['before_ips'] / 1e6:.2f}",
         f"per node {per_node(r['before_node_ips'])}; the nodes used "
         f"{r['before_cores']:.2f} cores, other work {r['before_other_cores']:.2f}"),
        ("after: balanced (M instr/s)", f"{r['after_ips'] / 1e6:.2f}",
         f"per node {per_node(r['after_node_ips'])}; the nodes used "
         f"{r['after_cores']:.2f} cores, other work {r['after_other_cores']:.2f}"),
        ("after / before", f"{r['ratio']:.2f}x",
         f"cores used after / before {r['after_cores'] / r['before_cores']:.2f}x; M instr "
         f"per CPU second before {r['before_ips'] / r['before_cores'] / 1e6:.2f}, after "
         f"{r['after_ips'] / r['after_cores'] / 1e6:.2f}"),
        ("time to balance (max-min <= 1)", f"{r['balance_s']:.1f} s",
         "envs per node " + ", ".join(map(str, r["counts_balanced"]))),
        ("migrations", f"{r['migrations']}",
         f"{r['migrations_failed']} failed"
         + (f"; {r['migrations_during_after']} more during the after window"
            if r["migrations_during_after"] else "")),
        ("os.cpu_count()", f"{r['cpu_count']}", ""),
    ]
    print(f"  {'figure':34} {'value':>8}  notes")
    for label, value, note in rows:
        print(f"  {label:34} {value:>8}  {note}")
    print(f"  (each node runs its guests on one core: the cluster's total should approach "
          f"{r['cpu_count']}x one busy node's, the machine's cores, not {r['nodes']}x, "
          f"the number of nodes)")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json")
    ap.add_argument("--quick", action="store_true", help="2 s windows instead of 5 s")
    a = ap.parse_args(argv)
    r = trio.run(run, 2.0 if a.quick else 5.0)
    show(r)
    out = {"balance": r}
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
