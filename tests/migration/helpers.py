"""Helpers for the migration acceptance tests: watching memtest and loop,
comparing an env's memory, decoding images, and driving real daemons.

memtest prints `memtest: pass N ok, ...` after verifying every word of every
page; a wrong word prints `memtest: MISMATCH ...` and panics.  loop prints
`Test Program, Env ID: E, Counter: N`.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import trio

from jmig.ctl.client import ControlClient
from jmig.kernel.kernel import Kernel
from jmig import programs
from jmig.proto import pstream
from jmig.node.migration.stream import stream_bytes
from jmig.proto.pstream import StreamDecoder

PASS_RE = re.compile(r"memtest: pass (\d+) ok")
COUNTER_RE = re.compile(r"Test Program, Env ID: (\d+), Counter: (\d+)")
BAD_WORDS = ("MISMATCH", "is corrupt")

# memtest 4096 256 takes ~14 s for its first pass (fill + verify) and ~6 s for
# each later one on this machine; leave room for a loaded machine.
PASS_TIMEOUT = 240.0


# -- in-process nodes ---------------------------------------------------------------------

class Recorder:
    """Every console chunk a node writes, unbounded and in order (the node's
    own history is bounded), so tests can look at what came after a point."""

    def __init__(self, node):
        self.chunks: list[tuple[int, str]] = []
        orig = node.console.write

        def write(text: str, envid: int = 0) -> None:
            self.chunks.append((envid, text))
            orig(text, envid)
        node.console.write = write

    def mark(self) -> int:
        return len(self.chunks)

    def text(self, envid: int | None = None, since: int = 0) -> str:
        return "".join(t for e, t in self.chunks[since:] if envid is None or e == envid)


async def start(cluster, name: str, **kw):
    """cluster.start with a console recorder attached as node.rec."""
    node = await cluster.start(name, **kw)
    node.rec = Recorder(node)
    return node


def passes(text: str) -> list[int]:
    return [int(m) for m in PASS_RE.findall(text)]


def counters(text: str) -> list[tuple[int, int]]:
    return [(int(e), int(c)) for e, c in COUNTER_RE.findall(text)]


def check_no_mismatch(*texts: str) -> None:
    for t in texts:
        for w in BAD_WORDS:
            assert w not in t, f"memtest found corrupt memory:\n{t[-2000:]}"


def no_mismatch(*nodes) -> None:
    check_no_mismatch(*(n.rec.text() for n in nodes))


async def wait_pass(node, envid: int, after: int = 0, since: int = 0,
                    timeout: float = PASS_TIMEOUT) -> int:
    """Wait until env `envid` on `node` prints a memtest pass numbered above
    `after` (looking at console output from mark `since`); fail at once on a
    MISMATCH.  Returns the highest pass number seen."""
    with trio.fail_after(timeout):
        while True:
            text = node.rec.text(envid, since)
            check_no_mismatch(node.rec.text(since=since))
            ps = passes(text)
            if ps and ps[-1] > after:
                return ps[-1]
            await trio.sleep(0.05)


async def wait_until(predicate, timeout: float = 30.0, interval: float = 0.02, what: str = ""):
    with trio.move_on_after(timeout):
        while True:
            if predicate():
                return
            await trio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


def last_pass(node, envid: int, since: int = 0) -> int:
    ps = passes(node.rec.text(envid, since))
    return ps[-1] if ps else 0


def env_ids(node) -> list[int]:
    return [e["envid"] for e in node.kernel.ps()]


def ps_entry(node, envid: int) -> dict | None:
    for e in node.kernel.ps():
        if e["envid"] == envid:
            return e
    return None


def free(node) -> int:
    return node.kernel.phys.nfree


def memory(node, envid: int) -> dict[int, tuple[int, bytes]]:
    """{va: (perm, contents)} of every page of an env (all must be local)."""
    k = node.kernel
    out = {}
    for p in k.env_pages(envid):
        assert not p.remote, f"page {p.va:#x} of env {envid} is still remote"
        out[p.va] = (p.perm, bytes(k.page_data(envid, p.va)))
    return out


def registers(node, envid: int) -> dict:
    h = node.kernel.header(envid)
    return {"regs": h.regs, "eip": h.eip, "eflags": h.eflags, "runs": h.runs}


def same_memory(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b), "the env's page map changed"
    bad = [va for va in a if a[va] != b[va]]
    assert not bad, f"{len(bad)} pages differ, first at {bad[0]:#010x}"


async def call(cluster, node, op: str, args: dict | None = None, on_push=None):
    return await cluster.call(node, op, args, on_push)


# -- images -------------------------------------------------------------------------------

def decode_image(data: bytes) -> tuple[dict, dict[int, tuple[int, bytes]]]:
    """(header, {va: (perm, contents or None for remote)}) of a whole stream."""
    dec = StreamDecoder()
    dec.receive_data(data)
    header, pages = None, {}
    while (e := dec.next_event()) is not pstream.NEED_DATA:
        if isinstance(e, pstream.Header):
            header = e.fields
        elif isinstance(e, pstream.Batch):
            bufs = [bytearray(4096) for _ in e.vas]
            dec.sink(bufs)
            for va, perm, b in zip(e.vas, e.perms, bufs):
                pages[va] = (perm, bytes(b))
        elif isinstance(e, pstream.Page):
            pages[e.va] = (e.perm, e.data)
        elif isinstance(e, pstream.Remote):
            pages[e.va] = (e.perm, None)
        elif isinstance(e, pstream.RemoteRun):
            for i in range(e.count):
                pages[e.va + i * 4096] = (e.perm, None)
    assert dec.state == "done", "the image has no trailer"
    return header, pages


def image_file(node_or_daemon, name: str) -> Path:
    d = getattr(node_or_daemon, "data_dir", None) or node_or_daemon.cfg.data_dir
    return Path(d) / "images" / f"{name}.img"


def same_image(path_a: Path, path_b: Path, ignore=("node",)) -> None:
    """Two images hold the same process: header (registers, ids, ...) and
    pages.  The header's `node` (who wrote the image) is ignored."""
    ha, pa = decode_image(path_a.read_bytes())
    hb, pb = decode_image(path_b.read_bytes())
    ha = {k: v for k, v in ha.items() if k not in ignore}
    hb = {k: v for k, v in hb.items() if k not in ignore}
    assert ha == hb, f"the env's registers or metadata changed:\n{ha}\n{hb}"
    same_memory(pa, pb)


def build_image(argv: list[str], until: str | None, memory: int = 64 << 20,
                max_seconds: float = 300.0) -> bytes:
    """Run a program on a bare kernel until its console shows `until` (None:
    not at all), pause it and return its image (what `jmigctl save` writes)."""
    k = Kernel(memory=memory, clock=lambda: time.monotonic() * 1000.0)
    e = k.env_create(programs.load(argv[0]), argv, name=argv[0])
    out = ""
    deadline = time.monotonic() + max_seconds
    while until is not None and until not in out:
        assert time.monotonic() < deadline, f"{argv} did not print {until!r}"
        k.run(200_000)
        for x in k.take_events():
            if hasattr(x, "text"):
                out += x.text
    check_no_mismatch(out)
    k.pause(e.env_id)
    return stream_bytes(k, e.env_id, "builder")


# -- real daemons -------------------------------------------------------------------------

def ctl_ok(d, *argv) -> str:
    code, out, err = d.ctl(*argv)
    assert code == 0, f"jmigctl {' '.join(argv)} on {d.name} failed ({code}): {err}"
    return out


def ctl_json(d, *argv):
    """jmigctl CMD --json ARGS... on a daemon, parsed."""
    return json.loads(ctl_ok(d, argv[0], "--json", *argv[1:]))


def dps(d) -> list[dict]:
    return ctl_json(d, "ps")


def dfree(d) -> int:
    return ctl_json(d, "info")["memory"]["free"]


def dpasses(d) -> list[int]:
    return passes(d.console())


def wait_dpass(d, after: int = 0, timeout: float = 60.0) -> int:
    """Wait (synchronously) until a daemon's console shows a memtest pass
    numbered above `after`; fail at once on a MISMATCH."""
    deadline = time.monotonic() + timeout
    while True:
        text = d.console()
        check_no_mismatch(text)
        ps = passes(text)
        if ps and ps[-1] > after:
            return ps[-1]
        assert time.monotonic() < deadline, f"no memtest pass above {after} on {d.name}:\n" \
                                            f"{text[-1500:]}"
        time.sleep(0.05)


def wait_sync(predicate, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what or predicate}"
        time.sleep(0.05)


async def dcall(d, op: str, args: dict | None = None, on_push=None):
    """A control request to a daemon from an async test."""
    from jmig.node.secret import read_secret
    async with await ControlClient.open(d.addr, read_secret(d.secret_file)) as c:
        return await c.request(op, args, on_push)
