"""Migration speed: save, load and the three migration methods on memtest
processes, next to the raw figures of this machine from the same run.

    python bench/migration.py [--sizes 16,64] [--json FILE] [--quick | --faults-only]

For each size S MiB: a memtest of S MiB is started on node A of a cluster
of two jmig-node processes on loopback; then
  - save / load of the paused process: MiB/s, next to writing (with fsync)
    and reading the same number of bytes as one file (the medians of three
    of each, alternating);
  - normal migration A -> B of the running process: MiB/s over the
    downtime (from the pause the migration makes to the process runnable
    on B), next to sending the same bytes over a trio TCP stream in 64 KiB
    writes;
  - pgfault migration: time from pause to runnable on the destination, the
    remote fault latency p50/p99 (next to the p50/p99 of a raw round trip:
    a 16-byte request answered by 4 KiB from another process over trio TCP
    on loopback), and the time until the origin is released, with
    background push on and off;
  - precopy (and the precopy-then-pgfault hybrid) on the running process,
    which rewrites 1/8 of its pages every pass: total time, downtime, rounds,
    and downtime as a fraction of normal migration's.
Then memtest 4096 (16 MiB) rewriting every page each pass: pre-copy's
downtime against normal migration's on the same process.  Last, remote
fault latency while background push runs, over every fault of six pgfault
migrations of a 48 MiB memtest (--faults-only: that alone).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jmig.ctl.client import ControlClient                 # noqa: E402
from jmig.node import secret as secret_file                # noqa: E402
from jmig.testing.process import die_with_parent          # noqa: E402

MIB = 1 << 20
SAVE_ROUNDS = 7                  # saves and loads per size, alternating with the raw file


class Bench:
    """Real jmig-node processes on loopback, driven over their control ports."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.secret = secret_file.create(tmp / "secret")
        self.n = 0
        self.procs: list[subprocess.Popen] = []

    def node(self, name: str, memory: int) -> str:
        self.n += 1
        host = f"127.0.99.{self.n + 1}"
        p = subprocess.Popen(
            [sys.executable, "-m", "jmig.node.main", "--host", host, "--port", "50001",
             "--name", name, "--data-dir", str(self.tmp / name), "--secret-file",
             str(self.tmp / "secret"), "--memory", str(memory), "--log-level", "warning",
             "--log-format", "json", "--no-console"],
            stdout=subprocess.DEVNULL, stderr=open(self.tmp / f"{name}.log", "w"),
            preexec_fn=die_with_parent)
        self.procs.append(p)
        return f"{host}:50001"

    async def wait_up(self, node: str) -> None:
        with trio.fail_after(30):
            while True:
                try:
                    await self.call(node, "info")
                    return
                except OSError:
                    await trio.sleep(0.05)

    def close(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait(10)

    async def call(self, node: str, op: str, args=None):
        async with await ControlClient.open(node, self.secret) as c:
            return await c.request(op, args)

    async def console(self, node: str) -> str:
        return (await self.call(node, "console", {"lines": 100000}))["text"]

    async def memtest(self, node: str, pages: int, dirty: int, sleep_ms: int) -> int:
        """Start memtest and wait until it has filled and verified its pages once."""
        res = await self.call(node, "spawn", {"program": "memtest",
                                              "args": [str(pages), str(dirty), str(sleep_ms)]})
        with trio.fail_after(900):
            while "memtest: pass 1 ok" not in await self.console(node):
                await trio.sleep(0.2)
        return res["envid"]

    async def compiled(self, node: str) -> None:
        """Wait until the node compiles no code in the background (a compile
        in its worker thread competes for the GIL with what is timed)."""
        with trio.fail_after(30):
            while (await self.call(node, "info")).get("compiling"):
                await trio.sleep(0.05)

    async def passes(self, node: str) -> int:
        return (await self.console(node)).count("memtest: pass")

    async def until_released(self, origin: str, envid: int, timeout=900) -> None:
        # Not faster than every 50 ms: each ps is a connection and a handshake
        # the origin serves between the pages it pushes (at 10 ms they
        # showed in the fault latency measured meanwhile).
        with trio.fail_after(timeout):
            while any(e["envid"] == envid for e in (await self.call(origin, "ps"))["envs"]):
                await trio.sleep(0.05)


def raw_file(tmp: Path, nbytes: int) -> tuple[float, float]:
    """Seconds to write (with fsync) and read back nbytes as one file."""
    data = os.urandom(MIB) * max(1, nbytes // MIB)
    p = tmp / "raw.bin"
    t = time.perf_counter()
    with open(p, "wb") as f:
        for i in range(0, len(data), MIB):
            f.write(data[i:i + MIB])
        f.flush()
        os.fsync(f.fileno())
    tw = time.perf_counter() - t
    t = time.perf_counter()
    with open(p, "rb") as f:
        while f.read(MIB):
            pass
    tr = time.perf_counter() - t
    p.unlink()
    return tw, tr


RTT_SERVER = """
from functools import partial
import trio
async def serve(stream):
    while await stream.receive_some(64):
        await stream.send_all(bytes(4096 + 24))
async def main():
    async with trio.open_nursery() as n:
        ls = await n.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        print(ls[0].socket.getsockname()[1], flush=True)
trio.run(main)
"""


async def raw_round_trip(n: int = 2000) -> tuple[float, float]:
    """p50, p99 seconds of a 16-byte request answered by 4 KiB (a page and
    its head) from another process over trio TCP on loopback: the floor
    under a remote fault, which adds the two nodes' own work to this."""
    p = subprocess.Popen([sys.executable, "-c", RTT_SERVER], stdout=subprocess.PIPE,
                         preexec_fn=die_with_parent)
    try:
        port = int(p.stdout.readline())
        s = await trio.open_tcp_stream("127.0.0.1", port)
        lat = []
        for _ in range(n):
            t = time.perf_counter()
            await s.send_all(b"g" * 16)
            got = 0
            while got < 4096 + 24:
                got += len(await s.receive_some(65536))
            lat.append(time.perf_counter() - t)
        await s.aclose()
    finally:
        p.kill()
        p.wait()
    lat.sort()
    return lat[n // 2], lat[min(n - 1, int(n * 0.99))]


async def raw_stream(nbytes: int) -> float:
    """Seconds to send nbytes over a trio TCP stream on loopback in 64 KiB writes."""
    chunk = os.urandom(64 * 1024)
    done = trio.Event()
    got = [0]

    async def server(stream):
        while got[0] < nbytes:
            data = await stream.receive_some(256 * 1024)
            if not data:
                break
            got[0] += len(data)
        done.set()

    async with trio.open_nursery() as n:
        listeners = await n.start(partial(trio.serve_tcp, server, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        t = time.perf_counter()
        s = await trio.open_tcp_stream("127.0.0.1", port)
        sent = 0
        while sent < nbytes:
            await s.send_all(chunk)
            sent += len(chunk)
        await done.wait()
        dt = time.perf_counter() - t
        await s.aclose()
        n.cancel_scope.cancel()
    return dt


async def bench_size(b: Bench, size_mib: int, quick: bool) -> dict:
    pages = size_mib * 256
    memory = max(64 * MIB, (size_mib * 2 + 16) * MIB)
    a = b.node(f"a{size_mib}", memory)
    c = b.node(f"c{size_mib}", memory)
    await b.wait_up(a)
    await b.wait_up(c)
    out: dict = {"size_mib": size_mib, "pages": pages}

    # memtest verifies every page each pass and rewrites 1/8 of them, so the
    # process dirties memory while pre-copy copies it.
    envid = await b.memtest(a, pages, pages // 8, 0)
    await b.call(a, "pause", {"envid": envid})
    await b.compiled(a)
    # -- save / load ---------------------------------------------------------------
    # SAVE_ROUNDS of each, alternating with the raw file's write and read of
    # the same bytes; the medians are compared (one sample of either side
    # swings by 2x on this machine).  Each save writes a new image, as the
    # raw write writes a new file (replacing an image, save --force, also
    # frees the old one's blocks: 80 ms for 64 MiB here, docs/performance.md).
    saves, loads, writes, reads = [], [], [], []
    for i in range(SAVE_ROUNDS):
        res = await b.call(a, "save", {"envid": envid, "name": f"img{i}"})
        nbytes = res["bytes"]
        saves.append(res["seconds"])
        tw, tr = raw_file(b.tmp, nbytes)
        writes.append(tw)
        reads.append(tr)
        res = await b.call(a, "load", {"name": f"img{i}"})
        loads.append(res["seconds"])
        await b.call(a, "kill", {"envid": res["envid"]})
    out["image_bytes"] = nbytes
    out["save_ms"] = [round(x * 1e3, 1) for x in saves]
    out["raw_write_ms"] = [round(x * 1e3, 1) for x in writes]
    out["load_ms"] = [round(x * 1e3, 1) for x in loads]
    out["save_mib_s"] = nbytes / MIB / statistics.median(saves)
    out["raw_write_mib_s"] = nbytes / MIB / statistics.median(writes)
    out["raw_read_mib_s"] = nbytes / MIB / statistics.median(reads)
    out["load_mib_s"] = nbytes / MIB / statistics.median(loads)
    # -- normal migration ----------------------------------------------------------------
    # Every migration below takes the running process (downtime: from the
    # pause the migration makes to the process runnable on the destination).
    await b.call(a, "resume", {"envid": envid})
    res = await b.call(a, "migrate", {"envid": envid, "to": c, "method": "normal",
                                      "resume": True})
    out["normal_mib_s"] = res["bytes"] / MIB / res["downtime_s"]
    out["normal_downtime_s"] = res["downtime_s"]
    out["raw_stream_mib_s"] = res["bytes"] / MIB / await raw_stream(res["bytes"])
    envid = res["new_envid"]
    # -- pgfault: back to a without push, then to c with push -----------------------------
    for push in (False, True):
        src, dst = (c, a) if not push else (a, c)
        before = (await b.call(dst, "stats"))["pager"]
        seen = await b.passes(dst)
        t0 = time.perf_counter()
        res = await b.call(src, "migrate", {"envid": envid, "to": dst, "method": "pgfault",
                                            "push": push, "resume": True})
        envid = res["new_envid"]
        key = "push" if push else "nopush"
        out[f"pgfault_{key}_to_runnable_s"] = res["downtime_s"]
        out[f"pgfault_{key}_steps_ms"] = res.get("steps_ms")     # where the switch went
        if push:
            await b.until_released(src, res["envid"])
            out[f"pgfault_{key}_until_release_s"] = time.perf_counter() - t0
        else:
            # Without push, pages never touched stay at the origin: measure the
            # faults of two full memtest passes (which touch every data page).
            with trio.fail_after(900):
                while await b.passes(dst) < seen + 2:
                    await trio.sleep(0.1)
            out[f"pgfault_{key}_two_passes_s"] = time.perf_counter() - t0
        st = (await b.call(dst, "stats"))["pager"]
        this = st["migrations_in"][-1]                  # this migration's own faults
        out[f"pgfault_{key}_fault_p50_ms"] = this["fault_p50_ms"]
        out[f"pgfault_{key}_fault_p99_ms"] = this["fault_p99_ms"]
        rtt50, rtt99 = await raw_round_trip()
        out[f"pgfault_{key}_raw_rtt_p50_ms"] = rtt50 * 1000
        out[f"pgfault_{key}_raw_rtt_p99_ms"] = rtt99 * 1000
        out[f"pgfault_{key}_faults"] = this["faults"]
        out[f"pgfault_{key}_fetched"] = st["pages_fetched"] - before["pages_fetched"]
        out[f"pgfault_{key}_pushed"] = st["pages_pushed"] - before["pages_pushed"]
    # Now on c, running.  Normal migration's pause-to-runnable for comparison:
    res = await b.call(c, "migrate", {"envid": envid, "to": a, "method": "normal",
                                      "resume": True})
    envid = res["new_envid"]
    out["normal_to_runnable_s"] = res["downtime_s"]
    # -- precopy and hybrid while memtest runs (it keeps verifying its pages) ------------
    for then in (None, "pgfault"):
        src, dst = (a, c) if then is None else (c, a)
        res = await b.call(src, "migrate", {"envid": envid, "to": dst, "method": "precopy",
                                            "then": then, "resume": True, "max_rounds": 8,
                                            "downtime_limit_ms": 50})
        envid = res["new_envid"]
        key = "precopy" if then is None else "hybrid"
        out[f"{key}_total_s"] = res["total_s"]
        out[f"{key}_downtime_s"] = res["downtime_s"]
        out[f"{key}_rounds"] = res["rounds"]
        out[f"{key}_postcopy_pages"] = res["postcopy_pages"]
        if then:
            await b.until_released(src, res["envid"])
    seen = await b.passes(a)
    with trio.fail_after(900):
        while await b.passes(a) < seen + 1:
            await trio.sleep(0.1)
    bad = [n for n in (a, c) if "MISMATCH" in await b.console(n)]
    out["memtest_ok"] = not bad
    await b.call(a, "kill", {"envid": envid})          # no load left for what follows
    return out


async def bench_rewrite_all(b: Bench) -> dict:
    """memtest 4096 (16 MiB) rewriting every page each pass: pre-copy's
    downtime against normal migration's, on the same process."""
    a, c = b.node("r1", 64 * MIB), b.node("r2", 64 * MIB)
    await b.wait_up(a)
    await b.wait_up(c)
    envid = await b.memtest(a, 4096, 4096, 0)
    res = await b.call(a, "migrate", {"envid": envid, "to": c, "method": "precopy",
                                      "resume": True, "max_rounds": 8,
                                      "downtime_limit_ms": 50})
    out = {"precopy_downtime_s": res["downtime_s"], "precopy_rounds": res["rounds"],
           "precopy_final_pages": res["final_pages"], "precopy_total_s": res["total_s"]}
    seen = await b.passes(c)
    with trio.fail_after(900):
        while await b.passes(c) < seen + 1:
            await trio.sleep(0.1)
    res = await b.call(c, "migrate", {"envid": res["new_envid"], "to": a, "method": "normal",
                                      "resume": True})
    out["normal_downtime_s"] = res["downtime_s"]
    seen = await b.passes(a)
    with trio.fail_after(900):
        while await b.passes(a) < seen + 1:
            await trio.sleep(0.1)
    out["memtest_ok"] = not [n for n in (a, c) if "MISMATCH" in await b.console(n)]
    await b.call(a, "kill", {"envid": res["new_envid"]})    # no load left for what follows
    return out


FAULT_SIZE_MIB = 48                # the process of the faults-under-push figure
FAULT_ROUNDS = 6                   # pgfault migrations with push, back and forth


async def bench_faults_under_push(b: Bench) -> dict:
    """Remote fault latency while background push runs: a 48 MiB memtest
    migrated pgfault with push FAULT_ROUNDS times between two fresh nodes,
    each time resumed at once; p50/p99 over every fault each node took (the
    node's own figures, so every fault counts, not only a migration's
    first ones; the worse node is shown), next to a raw round trip."""
    pages = FAULT_SIZE_MIB * 256
    a, c = b.node("f1", 128 * MIB), b.node("f2", 128 * MIB)
    await b.wait_up(a)
    await b.wait_up(c)
    envid = await b.memtest(a, pages, pages // 8, 0)
    src, dst = a, c
    faults = 0
    for _ in range(FAULT_ROUNDS):
        await b.compiled(src)
        await b.compiled(dst)
        res = await b.call(src, "migrate", {"envid": envid, "to": dst, "method": "pgfault",
                                            "push": True, "resume": True})
        envid = res["new_envid"]
        await b.until_released(src, res["envid"])
        faults += (await b.call(dst, "stats"))["pager"]["migrations_in"][-1]["faults"]
        src, dst = dst, src
    pagers = [(await b.call(n, "stats"))["pager"] for n in (a, c)]
    rtt50, rtt99 = await raw_round_trip()
    seen = await b.passes(src)
    with trio.fail_after(900):
        while await b.passes(src) < seen + 1:
            await trio.sleep(0.1)
    out = {"size_mib": FAULT_SIZE_MIB, "migrations": FAULT_ROUNDS, "faults": faults,
           "fault_p50_ms": max(p["fault_latency_p50_ms"] for p in pagers),
           "fault_p99_ms": max(p["fault_latency_p99_ms"] for p in pagers),
           "raw_rtt_p50_ms": rtt50 * 1000, "raw_rtt_p99_ms": rtt99 * 1000,
           "fault_priority": sorted({p.get("fault_priority") for p in pagers}
                                    - {None}),
           "memtest_ok": not [n for n in (a, c) if "MISMATCH" in await b.console(n)]}
    await b.call(src, "kill", {"envid": envid})
    return out


def show_faults_under_push(r: dict) -> None:
    print(f"faults while push runs, {r['size_mib']} MiB memtest, {r['migrations']} pgfault "
          f"migrations with push: {r['faults']} faults, p50 {_ms(r['fault_p50_ms'])} "
          f"p99 {_ms(r['fault_p99_ms'])} (raw rtt p50 {_ms(r['raw_rtt_p50_ms'])} "
          f"p99 {_ms(r['raw_rtt_p99_ms'])}); origin threads at "
          f"{'/'.join(r['fault_priority']) or '?'} priority; memtest verified: "
          f"{r['memtest_ok']}")


def show_rewrite_all(r: dict) -> None:
    print(f"memtest 4096 (16 MiB, every page rewritten each pass): precopy downtime "
          f"{r['precopy_downtime_s'] * 1000:.1f} ms ({r['precopy_rounds']} rounds, "
          f"{r['precopy_final_pages']} pages in the stop phase), normal "
          f"{r['normal_downtime_s'] * 1000:.1f} ms: 1/{r['normal_downtime_s'] / r['precopy_downtime_s']:.0f}"
          f"; memtest verified: {r['memtest_ok']}")


def show(results: list[dict]) -> None:
    print(f"{'size':>6} {'save':>8} {'raw write':>9} {'ratio':>6} {'load':>8} {'raw read':>9} "
          f"{'ratio':>6} {'normal':>8} {'raw tcp':>8} {'ratio':>6}   (MiB/s)")
    for r in results:
        print(f"{r['size_mib']:>4}Mi {r['save_mib_s']:>8.1f} {r['raw_write_mib_s']:>9.1f} "
              f"{r['save_mib_s'] / r['raw_write_mib_s']:>6.0%} {r['load_mib_s']:>8.1f} "
              f"{r['raw_read_mib_s']:>9.1f} {r['load_mib_s'] / r['raw_read_mib_s']:>6.0%} "
              f"{r['normal_mib_s']:>8.1f} {r['raw_stream_mib_s']:>8.1f} "
              f"{r['normal_mib_s'] / r['raw_stream_mib_s']:>6.0%}")
    print()
    print(f"{'size':>6} {'pause->runnable normal':>22} {'pgfault':>9} "
          f"{'until release (push)':>21}")
    for r in results:
        print(f"{r['size_mib']:>4}Mi {r['normal_to_runnable_s'] * 1000:>19.1f} ms "
              f"{r['pgfault_push_to_runnable_s'] * 1000:>6.1f} ms "
              f"{r['pgfault_push_until_release_s']:>19.2f} s")
    print("  (without push the origin is released only once every page was touched or pulled)")
    print()
    print(f"{'size':>6} {'remote faults':>14} {'p50':>9} {'p99':>9} {'faults':>7} "
          f"{'raw rtt p50':>11} {'p99':>9}")
    for r in results:
        for key, label in (("nopush", "without push"), ("push", "with push")):
            print(f"{r['size_mib']:>4}Mi {label:>14} {_ms(r[f'pgfault_{key}_fault_p50_ms']):>9} "
                  f"{_ms(r[f'pgfault_{key}_fault_p99_ms']):>9} {r[f'pgfault_{key}_faults']:>7} "
                  f"{_ms(r.get(f'pgfault_{key}_raw_rtt_p50_ms')):>11} "
                  f"{_ms(r.get(f'pgfault_{key}_raw_rtt_p99_ms')):>9}")
    print("  (raw rtt: a 16-byte request answered by 4 KiB from another process over trio")
    print("   TCP on loopback, measured right after: the floor under a remote fault)")
    print()
    print(f"{'size':>6} {'method':>10} {'downtime':>10} {'vs normal':>9} {'total':>9} "
          f"{'rounds':>6}")
    for r in results:
        for m, dk, tk in (("normal", "normal_downtime_s", "normal_downtime_s"),
                          ("pgfault", "pgfault_push_to_runnable_s", "pgfault_push_until_release_s"),
                          ("precopy", "precopy_downtime_s", "precopy_total_s"),
                          ("hybrid", "hybrid_downtime_s", "hybrid_total_s")):
            rounds = r.get(f"{m}_rounds", "-")
            ratio = f"1/{r['normal_downtime_s'] / r[dk]:.0f}" if r[dk] else "-"
            print(f"{r['size_mib']:>4}Mi {m:>10} {r[dk] * 1000:>7.1f} ms {ratio:>9} "
                  f"{r[tk]:>7.2f} s {rounds!s:>6}")
    print()
    print("memtest verified after every step:", all(r["memtest_ok"] for r in results))


def _ms(v):
    return "-" if v is None else f"{v:.2f}ms"


async def amain(sizes, quick, faults_only=False):
    results = []
    with tempfile.TemporaryDirectory(prefix="jmig-bench-") as d:
        b = Bench(Path(d))
        try:
            if faults_only:
                return [], None, await bench_faults_under_push(b)
            for s in sizes:
                results.append(await bench_size(b, s, quick))
            rewrite = None if quick else await bench_rewrite_all(b)
            faults = None if quick else await bench_faults_under_push(b)
        finally:
            b.close()
    return results, rewrite, faults


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="16,64", help="process sizes in MiB (default 16,64)")
    ap.add_argument("--json", help="write results to this file")
    ap.add_argument("--quick", action="store_true", help="only 4 MiB")
    ap.add_argument("--faults-only", action="store_true",
                    help="only the fault latency while push runs (48 MiB)")
    a = ap.parse_args(argv)
    sizes = [4] if a.quick else [int(s) for s in a.sizes.split(",")]
    results, rewrite, faults = trio.run(amain, sizes, a.quick, a.faults_only)
    if results:
        show(results)
    if rewrite:
        show_rewrite_all(rewrite)
    if faults:
        show_faults_under_push(faults)
    out = {"migration": results, "rewrite_all": rewrite, "faults_under_push": faults}
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
