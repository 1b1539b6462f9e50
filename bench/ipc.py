"""IPC: round trips between two envs on one node, and on two nodes.

    python bench/ipc.py [--json FILE] [--quick]

- 2 jmig-node processes, one loopback address each (127.0.94.x), started
  with --node-id 0 and 1 (cluster-unique env ids); node2 starts with
  --join node1, and both must list both alive.  Each first runs a short
  `ipcbench` of its own, untimed, so that its code is compiled (and no
  compile is in flight) before anything is timed.
- Same node: `ipcbench N 0 B` on node1.  The parent forks a child and does
  N IPC round trips with it (sends i, receives i + 1), printing the ms of
  every B of them and of all N (sys_time_msec: whole ms).  Figures: the
  mean us per round trip over all N, and the p50/p99 of the per-batch
  means.
- Cross node: `ipcbench N 1500 B` on node1.  During the parent's 1.5 s wait
  its child (the env whose parent is the spawned one) moves to node2 by
  pre-copy, resumed there (blocked in ipc_recv), so that every round trip
  crosses: the parent's send goes node1 -> node2, the child's answer
  node2 -> node1.  The same figures from the parent's lines (it prints on
  node1), and each node's `stats` ipc section: its remote syscalls (every
  -E_IPC_NOT_RECV retry of JOS's ipc_send loop is one more) and their
  latency p50/p99, from the syscall's stop to its answer; a round trip is
  at least two of them, one per node.
- Reference, in the same run: bench/migration.py's raw_round_trip, the
  p50/p99 of a 16-byte request answered by 4 KiB from another trio process
  over loopback TCP (its floor under a remote page fault; the nearest raw
  round trip an existing bench measures: an IPC answer is smaller).
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from jmig.ctl.client import ControlClient                 # noqa: E402

from balance import Cluster                                # noqa: E402
from migration import raw_round_trip                       # noqa: E402

WAIT_MS = 1500             # the cross-node run's wait before its first round trip
WARMUP_TRIPS = 300         # each node's untimed ipcbench
RUN_TIMEOUT = 120.0
BATCH = re.compile(r"^ipcbench: batch (\d+): (\d+) round trips in (\d+) ms$", re.M)
TOTAL = re.compile(r"^ipcbench: (\d+) round trips in (\d+) ms$", re.M)
COUNTERS = ("ipc_remote_sends", "ipc_round_trips", "ipc_delivered_here", "ipc_failed",
            "locate_broadcasts")


class Lines:
    """Every console line of each env on one node, from a follow (one kept
    connection: polling would add a connection and a handshake to the node's
    work every time, while it runs what is timed)."""

    def __init__(self):
        self.by_env: dict[int, list[str]] = {}
        self.pending: dict[int, str] = {}

    async def follow(self, c: Cluster, node: str, task_status=trio.TASK_STATUS_IGNORED):
        async with await ControlClient.open(node, c.secret) as cl:
            def on_push(kind, data):
                if kind != "console":
                    return
                envid = data.get("envid") or 0
                *done, self.pending[envid] = (self.pending.get(envid, "")
                                              + data.get("text", "")).split("\n")
                self.by_env.setdefault(envid, []).extend(done)
            task_status.started()
            await cl.request("console", {"follow": True, "lines": 0}, on_push=on_push)

    def text(self, envid: int) -> str:
        return "\n".join(self.by_env.get(envid, []))

    async def total(self, envid: int, node: str) -> tuple[list[float], int, int]:
        """Once env envid printed its total: its batch times (ms), and the
        round trips and ms of the total line."""
        with trio.move_on_after(RUN_TIMEOUT):
            while not TOTAL.search(self.text(envid)):
                if "panic" in self.text(envid):
                    raise RuntimeError(f"ipcbench {envid} panicked on {node}: "
                                       + self.text(envid)[-300:])
                await trio.sleep(0.05)
            text = self.text(envid)
            n, ms = map(int, TOTAL.search(text).groups())
            return [int(t) / int(b) for _, b, t in BATCH.findall(text)], n, ms
        raise RuntimeError(f"ipcbench {envid} printed no total on {node} within "
                           f"{RUN_TIMEOUT:.0f} s: {self.text(envid)[-300:]!r}")


def figures(batches_ms: list[float], n: int, ms: int) -> dict:
    """Mean us per round trip over all n, and over the batch means."""
    per = sorted(b * 1000 for b in batches_ms)            # us per round trip, each batch
    return {"round_trips": n, "total_ms": ms, "mean_us": ms * 1000 / n,
            "batches": len(per), "batch_p50_us": statistics.median(per),
            "batch_p99_us": per[min(len(per) - 1, int(len(per) * 0.99))],
            "batch_min_us": per[0], "batch_max_us": per[-1]}


async def ipcbench(c: Cluster, node: str, n: int, wait_ms: int, batch: int) -> int:
    return (await c.call(node, "spawn", {"program": "ipcbench",
                                         "args": [str(n), str(wait_ms), str(batch)]}))["envid"]


async def compiled(c: Cluster) -> None:
    """No compile in flight on any node (one competes for the GIL with what
    is timed)."""
    with trio.fail_after(30):
        while any(i.get("compiling") for i in await c.each("info")):
            await trio.sleep(0.05)


def ipc_delta(after: dict, before: dict) -> dict:
    out = {k: after.get(k, 0) - before.get(k, 0) for k in COUNTERS}
    out["latency_ms"] = after.get("latency_ms")
    return out


async def run(n: int, batch: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="jmig-ipc-") as d:
        c = Cluster(Path(d), 2, net=94, node_ids=True)
        try:
            await c.wait_up(members=True)
            n1, n2 = c.nodes
            lines = [Lines(), Lines()]
            async with trio.open_nursery() as nursery:
                for i, node in enumerate(c.nodes):
                    await nursery.start(lines[i].follow, c, node)
                # Untimed: each node compiles ipcbench's code (cached for later envs).
                warm = [await ipcbench(c, node, WARMUP_TRIPS, 0, WARMUP_TRIPS)
                        for i, node in enumerate(c.nodes)]
                for i, node in enumerate(c.nodes):
                    await lines[i].total(warm[i], node)
                await compiled(c)
                before = [s["ipc"] for s in await c.each("stats")]
                if any(b.get("ipc_remote_sends") or b.get("env_calls") for b in before):
                    raise RuntimeError(f"remote syscalls before the cross-node run: {before}")

                # -- same node ---------------------------------------------------------
                envid = await ipcbench(c, n1, n, 0, batch)
                same = figures(*await lines[0].total(envid, n1))
                same["envid"] = envid
                await compiled(c)

                # -- cross node: the child moves to node2 during the parent's wait -----
                parent = await ipcbench(c, n1, n, WAIT_MS, batch)
                t0 = time.perf_counter()
                with trio.fail_after(5):
                    while True:
                        kids = [e["envid"] for e in (await c.call(n1, "ps"))["envs"]
                                if e["parent"] == parent]
                        if kids:
                            break
                        await trio.sleep(0.01)
                mig = await c.call(n1, "migrate", {"envid": kids[0], "to": n2,
                                                   "method": "precopy", "resume": True})
                moved_after = time.perf_counter() - t0
                if moved_after * 1000 > WAIT_MS:
                    raise RuntimeError(f"the child moved {moved_after:.2f} s after the spawn: "
                                       f"after the parent's {WAIT_MS} ms wait")
                on2 = [e["envid"] for e in (await c.call(n2, "ps"))["envs"]]
                if mig["new_envid"] not in on2:
                    raise RuntimeError(f"the child {mig['new_envid']} is not on node2: {on2}")
                cross = figures(*await lines[0].total(parent, n1))
                cross.update(envid=parent, child=mig["new_envid"],
                             child_moved_s=moved_after, migration_downtime_s=mig["downtime_s"])
                stats = [ipc_delta(s["ipc"], b)
                         for s, b in zip(await c.each("stats"), before)]
                nursery.cancel_scope.cancel()
            panics = [i + 1 for i, ln in enumerate(lines)
                      if any("panic" in x for xs in ln.by_env.values() for x in xs)]
        finally:
            c.close()
    rtt50, rtt99 = await raw_round_trip()
    return {"round_trips": n, "batch": batch, "wait_ms": WAIT_MS, "same": same,
            "cross": cross, "node1_ipc": stats[0], "node2_ipc": stats[1],
            "raw_rtt_p50_us": rtt50 * 1e6, "raw_rtt_p99_us": rtt99 * 1e6,
            "ratio_mean": cross["mean_us"] / same["mean_us"],
            "ratio_p50": cross["batch_p50_us"] / same["batch_p50_us"],
            "panics_on": panics}


def show(r: dict) -> None:
    s, x, a, b = r["same"], r["cross"], r["node1_ipc"], r["node2_ipc"]

    def lat(st):
        la = st.get("latency_ms") or {}
        return f"{la.get('p50', 0) * 1000:.0f}/{la.get('p99', 0) * 1000:.0f}" if la else "-"
    print(f"ipcbench {r['round_trips']} round trips, in batches of {r['batch']} "
          f"({s['batches']} batches a run); us per round trip")
    rows = [
        ("same node: mean (us)", f"{s['mean_us']:.0f}",
         f"{s['round_trips']} in {s['total_ms']} ms; batch means p50/p99 "
         f"{s['batch_p50_us']:.0f}/{s['batch_p99_us']:.0f}"),
        ("cross node: mean (us)", f"{x['mean_us']:.0f}",
         f"{x['round_trips']} in {x['total_ms']} ms; batch means p50/p99 "
         f"{x['batch_p50_us']:.0f}/{x['batch_p99_us']:.0f}; child moved by precopy "
         f"{x['child_moved_s'] * 1000:.0f} ms after the spawn "
         f"(downtime {x['migration_downtime_s'] * 1000:.1f} ms)"),
        ("cross / same", f"{r['ratio_mean']:.1f}x",
         f"batch p50s {r['ratio_p50']:.1f}x"),
        ("node1 remote syscalls p50/p99 (us)", lat(a),
         f"{a['ipc_remote_sends']} remote sends ({a['ipc_round_trips']} network round trips to "
         f"node2), {a['ipc_delivered_here']} delivered here, {a['ipc_failed']} failed"),
        ("node2 remote syscalls p50/p99 (us)", lat(b),
         f"{b['ipc_remote_sends']} remote sends ({b['ipc_round_trips']} network round trips to "
         f"node1), {b['ipc_delivered_here']} delivered here, {b['ipc_failed']} failed"),
        ("raw TCP round trip p50/p99 (us)",
         f"{r['raw_rtt_p50_us']:.0f}/{r['raw_rtt_p99_us']:.0f}",
         "16 B asked, 4 KiB answered, trio to trio process over loopback "
         "(migration.raw_round_trip)"),
        ("cross mean / raw p50", f"{x['mean_us'] / r['raw_rtt_p50_us']:.0f}x",
         "a round trip of ipcbench is at least 2 remote syscalls"),
    ]
    print(f"  {'figure':36} {'value':>9}  notes")
    for label, value, note in rows:
        print(f"  {label:36} {value:>9}  {note}")
    sends = a["ipc_remote_sends"] + b["ipc_remote_sends"]
    print(f"  ({sends} remote sends for {x['round_trips']} round trips: "
          f"{sends / x['round_trips']:.2f} each, 2 without retries; the batch p99 of "
          f"{s['batches']} batches is about their maximum; the latency p50/p99 is over "
          f"each node's last 10,000 remote syscalls, all of them this run's"
          + (f"; PANIC on node {r['panics_on']}" if r["panics_on"] else "") + ")")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json")
    ap.add_argument("--quick", action="store_true",
                    help="800 round trips in batches of 50 instead of 4000 in batches of 100")
    a = ap.parse_args(argv)
    r = trio.run(run, *((800, 50) if a.quick else (4000, 100)))
    show(r)
    out = {"ipc": r}
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
