"""Abuse: how a node holds up under each attack a peer without the cluster
secret can make (and a few that need it), next to the same node quiet.

    python bench/abuse.py [--json FILE] [--quick]

For each attack a fresh jmig-node (running the original `loop` as env
4100) is started on loopback; `ps` is timed 100 times (a new connection,
handshake and request each time, as jmigctl does) with the node quiet, then
the attack starts in a process of its own (jmig/testing/attacks.py): `ps`
is timed 10 times from its first moment (while the node shuts out the
flooding addresses), then 100 times more (20 ms apart; the p99 of
100 calls is the second slowest), while the node's resident memory
is sampled throughout.  Reported per attack: ps latency p50/p99 quiet and
under attack, the ratio of the p99s, the node's peak RSS growth, and the
slowest ps of the attack's first half second.

Attacks: idle (500 connections from 50 addresses that send nothing,
reopened as soon as the node closes them), slowloris (hellos a byte at a
time), bigframe (16 MiB frames before authentication), hugecount (msgpack
announcing 2**32 objects, and nested 1000 deep), garbage (random bytes on
all four ports), authed-hugecount (16 MiB frames of millions of empty maps
from a peer that knows the secret), runimage (the 210-byte image whose RUN
record covers all user space, loaded again and again), stdout (40 envs
printing as fast as they can into a stdout pipe nobody reads; quiet: the
same envs printing into /dev/null).
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
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jmig.ctl.client import ControlClient                 # noqa: E402
from jmig.node import secret as secret_file                # noqa: E402
from jmig.testing.process import die_with_parent          # noqa: E402
from jmig.testing.attacks import run_record_image          # noqa: E402

MIB = 1 << 20
CALLS = 100                # ps calls per phase: p99 is then the second slowest, not the max
GAP = 0.02                 # seconds between two calls
RAMP_CALLS = 10             # ps calls from the attack's first moment (about half a second)
ATTACKS = ["idle", "slowloris", "bigframe", "hugecount", "garbage", "authed-hugecount",
           "runimage", "stdout"]


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


class Node:
    """One jmig-node process on its own loopback address."""

    def __init__(self, tmp: Path, host: str, stdout=subprocess.DEVNULL, envs: int = 0):
        self.tmp = tmp
        self.host = host
        self.addr = f"{host}:50001"
        self.secret_path = tmp / "secret"
        if not self.secret_path.exists():
            secret_file.create(self.secret_path)
        self.secret = secret_file.read_secret(self.secret_path)
        self.data = tmp / host
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jmig.node.main", "--host", host, "--port", "50001",
             "--data-dir", str(self.data), "--secret-file", str(self.secret_path),
             "--log-level", "warning", "--log-format", "json", "--boot", "loop@4100 100",
             *(["--boot", "loop 0"] * envs)],
            stdout=stdout, stderr=open(tmp / f"{host}.log", "w"), preexec_fn=die_with_parent)

    async def call(self, op: str, args=None):
        async with await ControlClient.open(self.addr, self.secret) as c:
            return await c.request(op, args)

    async def wait_up(self) -> None:
        with trio.fail_after(30):
            while True:
                try:
                    await self.call("info")
                    return
                except OSError:
                    await trio.sleep(0.05)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


async def ps_latencies(node: Node, calls: int = CALLS, background=None,
                       gap: float = GAP) -> list[float]:
    out = []
    for _ in range(calls):
        if background is not None:
            await background()
        t = time.perf_counter()
        envs = (await node.call("ps"))["envs"]
        out.append(time.perf_counter() - t)
        assert any(e["envid"] == 4100 for e in envs)
        await trio.sleep(gap)
    return out


async def measure(node: Node, during=None) -> tuple[list[float], int]:
    """ps latencies and the peak RSS seen meanwhile."""
    peak = rss(node.proc.pid)
    done = False

    async def sampler():
        nonlocal peak
        while not done:
            peak = max(peak, rss(node.proc.pid))
            await trio.sleep(0.02)

    async with trio.open_nursery() as n:
        n.start_soon(sampler)
        lat = await ps_latencies(node, background=during)
        done = True
    return lat, peak


async def one(tmp: Path, attack: str, index: int) -> dict:
    host = f"127.0.98.{index + 2}"
    if attack == "stdout":
        quiet_node = Node(tmp, host, envs=40)
        await quiet_node.wait_up()
        await trio.sleep(2)
        quiet, _ = await measure(quiet_node)
        quiet_node.stop()
        r, w = os.pipe()
        node = Node(tmp, f"127.0.98.{index + 102}", stdout=w, envs=40)
        os.close(w)
        await node.wait_up()
        await trio.sleep(2)                    # the pipe (64 KiB) is full long before
        before = rss(node.proc.pid)
        lat, peak = await measure(node)
        node.stop()
        os.close(r)
        return result(attack, quiet, lat, peak - before)
    node = Node(tmp, host)
    try:
        await node.wait_up()
        await trio.sleep(0.5)
        quiet, _ = await measure(node)
        before = rss(node.proc.pid)
        if attack == "runimage":
            (node.data / "images" / "evil.img").write_bytes(run_record_image())

            async def load_it():
                try:
                    await node.call("load", {"name": "evil"})
                except Exception as exc:         # refused: bad-image, as it must be
                    assert "announces" in str(exc), exc
            lat, peak = await measure(node, during=load_it)
            return result(attack, quiet, lat, peak - before)
        cmd = [sys.executable, "-m", "jmig.testing.attacks", attack, host, "50001",
               "--secret-file", str(node.secret_path)]
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             preexec_fn=die_with_parent)
        try:
            ramp = await ps_latencies(node, RAMP_CALLS, gap=0.05)     # while the node shuts the door
            if p.poll() is not None:
                raise RuntimeError(f"attack {attack} died: {p.stderr.read().decode()}")
            lat, peak = await measure(node)
        finally:
            p.kill()
            p.wait(10)
        info = await node.call("info")
        res = result(attack, quiet, lat, peak - before)
        res["refused"] = info["refused"] + info["busy_refused"]
        res["ramp_max_ms"] = max(ramp) * 1e3
        return res
    finally:
        node.stop()


def result(attack, quiet, lat, growth) -> dict:
    q99, a99 = pct(quiet, 99), pct(lat, 99)
    return {"attack": attack, "quiet_p50_ms": pct(quiet, 50) * 1e3, "quiet_p99_ms": q99 * 1e3,
            "p50_ms": pct(lat, 50) * 1e3, "p99_ms": a99 * 1e3, "p99_ratio": a99 / q99,
            "rss_growth_mib": growth / MIB, "mean_ms": statistics.mean(lat) * 1e3}


HEADER = (f"{'attack':18} {'quiet p50':>10} {'quiet p99':>10} {'p50':>8} {'p99':>8} "
          f"{'p99/quiet':>10} {'RSS growth':>11} {'first 0.5 s max':>16}")


def line(r: dict) -> str:
    ramp = f"{r['ramp_max_ms']:13.1f}ms" if "ramp_max_ms" in r else f"{'-':>15}"
    return (f"{r['attack']:18} {r['quiet_p50_ms']:8.2f}ms {r['quiet_p99_ms']:8.2f}ms "
            f"{r['p50_ms']:6.2f}ms {r['p99_ms']:6.2f}ms {r['p99_ratio']:9.2f}x "
            f"{r['rss_growth_mib']:8.1f} MiB {ramp}")


async def run(attacks: list[str]) -> list[dict]:
    rows = []
    print(HEADER, flush=True)
    with tempfile.TemporaryDirectory(prefix="jmig-abuse-") as d:
        for i, a in enumerate(attacks):
            rows.append(await one(Path(d), a, i))
            print(line(rows[-1]), flush=True)
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json")
    ap.add_argument("--quick", action="store_true", help="three attacks only")
    ap.add_argument("--only", help="comma-separated attacks")
    a = ap.parse_args(argv)
    attacks = a.only.split(",") if a.only else (["idle", "garbage", "runimage"] if a.quick
                                                 else ATTACKS)
    rows = trio.run(run, attacks)
    out = {"abuse": rows}
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
