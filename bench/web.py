"""The web view's cost to a node: the tight loop's guest instructions per
second on a node with no viewer and with three, side by side in one run.

    python bench/web.py [--json FILE] [--quick]

- 2 jmig-node processes (127.0.61.2 and .3) and one `jmigctl web` process
  watching both (--port 0).  On node1: `spin 3600000` (its child is a
  one-instruction `for (;;);` loop, the tight loop) and a paused
  `memtest 1024 1` (1 pass, then paused: 1045 pages), whose page map one
  viewer selects.
- Phases alternate, ROUNDS of each, PHASE seconds each: 0 viewers (the web
  process has no stream open, so it asks the nodes nothing), then 3 (three
  event streams, read as fast as they come; one with the memtest's page
  map selected, so the web process asks node1 for `pagemap` every poll as
  well as info, ps and jobs).  Each phase starts SETTLE s after the
  streams opened or closed.
- Also per second of node1's own CPU time (/proc): that ratio is the
  node's own extra work, free of what the other processes of this machine
  (the web process, the viewers, other work) took from it.
- Figure: node1's `info` instructions over each phase's wall time (the
  same two `info` calls in both kinds of phase), the median of each kind;
  the ratio is the median over the watched phases of each one's rate over
  the mean of the two idle phases around it (ROUNDS + 1 idle phases), since
  this machine's speed drifts from one phase to the next; the events each viewer received per second; the web
  process's CPU time per second while watched.  Target: the ratio above
  0.95 (less than 5% drop).

Everything shares this machine's cores (2 here), so the web process's own
CPU time competes with the node for them: that is part of what is measured.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nodes import Nodes                                      # noqa: E402

SETTLE = 0.5


class WebProc:
    def __init__(self, tmp: Path, nodes: list[str]):
        env = dict(os.environ, JMIG_SECRET_FILE=str(tmp / "secret"))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jmig.ctl.main", "web", "--nodes", ",".join(nodes),
             "--port", "0"], stdout=subprocess.PIPE, stderr=open(tmp / "web.log", "w"),
            env=env, text=True)
        line = self.proc.stdout.readline()
        url, self.token = line.split()[2].split("#token=")
        hostport = url.split("//")[1].rstrip("/")
        self.host, self.port = hostport.rsplit(":", 1)[0], int(hostport.rsplit(":", 1)[1])

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)

    async def http(self, head: str, body: bytes = b"") -> tuple[bytes, trio.SocketStream]:
        s = await trio.open_tcp_stream(self.host, self.port)
        await s.send_all(head.encode() + b"\r\n" + body)
        return b"", s

    async def login(self) -> str:
        body = json.dumps({"token": self.token}).encode()
        _, s = await self.http(f"POST /api/login HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                               f"Content-Type: application/json\r\nContent-Length: {len(body)}"
                               f"\r\nConnection: close\r\n", body)
        data = b""
        async with s:
            while chunk := await s.receive_some(65536):
                data += chunk
        for line in data.split(b"\r\n"):
            if line.lower().startswith(b"set-cookie: "):
                return line[12:].split(b";")[0].decode()
        raise RuntimeError(f"login failed: {data[:200]!r}")

    async def viewer(self, cookie: str, query: str, counts: list, i: int) -> None:
        """An event stream, read until cancelled; counts[i] += 1 per event."""
        _, s = await self.http(f"GET /api/events{query} HTTP/1.1\r\nHost: {self.host}:"
                               f"{self.port}\r\nCookie: {cookie}\r\n")
        async with s:
            while chunk := await s.receive_some(1 << 20):
                counts[i] += chunk.count(b"event: state")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def cpu_seconds(pid: int) -> float:
    """A process's user + system CPU time so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def rate(c: Nodes, node: str, seconds: float) -> tuple[float, float]:
    """node's guest instructions per second over `seconds`, and per second
    of the node process's own CPU time (what it did besides the loop, free
    of what other processes took from it)."""
    pid = c.procs[c.nodes.index(node)].pid
    i0 = (await c.call(node, "info"))["instructions"]
    t0, cpu0 = time.perf_counter(), cpu_seconds(pid)
    await trio.sleep(seconds)
    i1 = (await c.call(node, "info"))["instructions"]
    t1, cpu1 = time.perf_counter(), cpu_seconds(pid)
    return (i1 - i0) / (t1 - t0), (i1 - i0) / max(cpu1 - cpu0, 1e-9)


async def run(rounds: int, phase: float) -> dict:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        c = Nodes(tmp, 2, 61)
        web = None
        try:
            await c.wait_up()
            node = c.nodes[0]
            mt = (await c.call(node, "spawn", {"program": "memtest",
                                               "args": ["1024", "1024", "0", "0"]}))["envid"]
            with trio.fail_after(60):
                while (await c.call(node, "pagemap", {"envid": mt}))["pages"] < 1040:
                    await trio.sleep(0.1)
            await c.call(node, "pause", {"envid": mt})
            await c.call(node, "spawn", {"program": "spin", "args": ["3600000"]})
            web = WebProc(tmp, c.nodes)
            cookie = await web.login()
            await trio.sleep(2)                         # the loop compiled and running
            idle, watched, events, web_cpu = [], [], [], []
            for _ in range(rounds):
                await trio.sleep(SETTLE)
                idle.append(await rate(c, node, phase))
                counts = [0, 0, 0]
                async with trio.open_nursery() as nursery:
                    for i, q in enumerate((f"?node={node}&envid={mt}", "", "")):
                        nursery.start_soon(web.viewer, cookie, q, counts, i)
                    await trio.sleep(SETTLE)
                    n0, cpu0, t0 = list(counts), web.cpu_seconds(), time.perf_counter()
                    watched.append(await rate(c, node, phase))
                    dt = time.perf_counter() - t0
                    events += [(n - m) / dt for n, m in zip(counts, n0)]
                    web_cpu.append((web.cpu_seconds() - cpu0) / dt)
                    nursery.cancel_scope.cancel()
            await trio.sleep(SETTLE)
            idle.append(await rate(c, node, phase))      # each watched phase between two idle
        finally:
            if web is not None:
                web.close()
            c.close()
    # The machine's speed drifts: each watched phase against the mean of the
    # idle phases on either side of it, and the median of those ratios.
    def ratios(k):
        return [x[k] / ((idle[j][k] + idle[j + 1][k]) / 2) for j, x in enumerate(watched)]
    cpu_ratios = ratios(1)
    wall_ratios = ratios(0)
    idle_cpu = statistics.median(x[1] for x in idle)
    idle, watched = [x[0] for x in idle], [x[0] for x in watched]
    i, w = statistics.median(idle), statistics.median(watched)
    return {"rounds": rounds, "phase_s": phase, "idle_mips": i / 1e6, "watched_mips": w / 1e6,
            "ratio": statistics.median(wall_ratios), "ratios": wall_ratios,
            "cpu_ratio": statistics.median(cpu_ratios), "cpu_ratios": cpu_ratios,
            "idle_mips_per_cpu_s": idle_cpu / 1e6, "idle_each_mips": [x / 1e6 for x in idle],
            "watched_each_mips": [x / 1e6 for x in watched],
            "events_per_s_max": max(events), "events_per_s_median": statistics.median(events),
            "web_cpu_share": statistics.median(web_cpu)}


def show(r: dict) -> None:
    print(f"tight loop on a node, {r['rounds']} x {r['phase_s']:g} s phases of each, alternating")
    print(f"  0 viewers: {r['idle_mips']:8.2f} M instructions/s   "
          f"({', '.join(f'{x:.1f}' for x in r['idle_each_mips'])})")
    print(f"  3 viewers: {r['watched_mips']:8.2f} M instructions/s   "
          f"({', '.join(f'{x:.1f}' for x in r['watched_each_mips'])})")
    print(f"  ratio 3/0: {r['ratio']:.3f} ({(1 - r['ratio']) * 100:+.1f}% drop; target < 5%), "
          f"the median of each watched phase over the idle ones around it "
          f"({', '.join(f'{x:.3f}' for x in r['ratios'])})")
    print(f"  per second of the node's own CPU time: {r['idle_mips_per_cpu_s']:.2f} M "
          f"instructions idle; ratio 3/0 {r['cpu_ratio']:.3f} "
          f"({(1 - r['cpu_ratio']) * 100:+.1f}%: the node's own extra work) "
          f"({', '.join(f'{x:.3f}' for x in r['cpu_ratios'])})")
    print(f"  events per viewer: median {r['events_per_s_median']:.2f}/s, most "
          f"{r['events_per_s_max']:.2f}/s (bound 4/s); web process CPU "
          f"{r['web_cpu_share'] * 100:.1f}% of a core while watched")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json")
    ap.add_argument("--quick", action="store_true", help="2 rounds of 2 s instead of 10 of 3 s")
    a = ap.parse_args(argv)
    r = trio.run(run, *((2, 2.0) if a.quick else (10, 3.0)))
    show(r)
    out = {"web": r}
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
