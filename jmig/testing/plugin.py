"""jmig's pytest plugin (registered through the `pytest11` entry point, so
installing jmig is enough): fixtures that start real jmig-node processes
for a test and kill them afterwards.

    def test_moves(jmig_cluster):
        c = jmig_cluster(nodes=2)             # a and b, running, one secret
        a, b = c.nodes
        env = c.spawn(a, "memtest", "1024", "256")
        c.migrate(a, env, b, "--method", "pgfault")

    async def test_moves_trio(jmig_trio_cluster):     # pytest-trio
        c = await jmig_trio_cluster(nodes=2)
        ...

jmig_cluster(nodes=N, netns=False, memory=None, cpus=None, args=()) may be
called several times in one test (several clusters).  With netns=True each
node is a host of its own in a network namespace (needs root and `ip`; the
test is skipped, saying why, where that is not so).  When a test fails, each
node's last console and log lines are added to its report.  At the end of
the session the plugin checks that no process the run started (directly or
not: they carry its JMIG_TEST_RUN tag) and no namespace it made is left,
removes any and fails the run naming them.
"""
from __future__ import annotations

import atexit
import os
import secrets
import signal
import time
from pathlib import Path

import pytest
import trio

from ..kernel.x86 import bytecode
from . import netns
from .cluster import Cluster
from .inprocess import InProcessCluster
from .process import STARTED, NodeProcess

_CLUSTERS = pytest.StashKey[list]()


def _make(request, tmp_path: Path, nodes: int, netns_: bool, memory, cpus, args) -> Cluster:
    if netns_:
        why = netns.unavailable()
        if why:
            pytest.skip(why)
    clusters = request.node.stash.setdefault(_CLUSTERS, [])
    c = Cluster(tmp_path / f"cluster{len(clusters)}", netns=netns_, hosts=max(nodes, 8))
    clusters.append(c)
    if nodes:
        c.start_many(nodes, memory=memory, cpus=cpus, args=args)
    return c


@pytest.fixture
def jmig_cluster(request, tmp_path):
    """A factory of clusters of real jmig-node processes (see Cluster)."""
    def make(nodes: int = 0, *, netns: bool = False, memory: str | None = None,
             cpus: int | None = None, args=()) -> Cluster:
        return _make(request, tmp_path, nodes, netns, memory, cpus, tuple(args))
    yield make
    for c in request.node.stash.get(_CLUSTERS, []):
        c.close()


class TrioCluster:
    """A Cluster for trio tests: what blocks runs in a worker thread (or
    polls with trio.sleep), so the test's event loop keeps running.  Nodes
    are started from the test's own thread (their death signal is tied to
    the thread that starts them)."""

    def __init__(self, cluster: Cluster):
        self.sync = cluster

    @property
    def nodes(self) -> list[NodeProcess]:
        return self.sync.nodes

    def __getitem__(self, name: str) -> NodeProcess:
        return self.sync[name]

    async def start(self, name: str | None = None, *args, **kw) -> NodeProcess:
        wait = kw.pop("wait", True)
        node = self.sync.start(name, *args, wait=False, **kw)
        if wait:
            await self.wait_listening(node)
        return node

    async def wait_listening(self, node: NodeProcess) -> None:
        await trio.to_thread.run_sync(node.wait_listening)

    async def ctl(self, node: NodeProcess, *argv, check: bool = True):
        return await trio.to_thread.run_sync(lambda: self.sync.ctl(node, *argv, check=check))

    async def ctl_json(self, node: NodeProcess, *argv):
        return await trio.to_thread.run_sync(lambda: self.sync.ctl_json(node, *argv))

    async def spawn(self, node: NodeProcess, program: str, *args) -> int:
        return await trio.to_thread.run_sync(lambda: self.sync.spawn(node, program, *args))

    async def migrate(self, node: NodeProcess, envid: int, to, *args) -> dict:
        return await trio.to_thread.run_sync(lambda: self.sync.migrate(node, envid, to, *args))

    async def jobs(self, node: NodeProcess) -> list[dict]:
        return await trio.to_thread.run_sync(lambda: self.sync.jobs(node))

    async def wait_for_console(self, node: NodeProcess, pattern: str, timeout: float = 20.0,
                               since: int = 0):
        return await trio.to_thread.run_sync(
            lambda: node.wait_for_console(pattern, timeout, since))

    def link(self, src: NodeProcess, dst: NodeProcess):
        return self.sync.link(src, dst)


@pytest.fixture
async def jmig_trio_cluster(request, tmp_path):
    """A factory of clusters for trio tests: `await jmig_trio_cluster(nodes=2)`."""
    async def make(nodes: int = 0, *, netns: bool = False, memory: str | None = None,
                   cpus: int | None = None, args=()) -> TrioCluster:
        c = TrioCluster(_make(request, tmp_path, 0, netns, memory, cpus, ()))
        started = [c.sync.start(None, *args, wait=False, memory=memory, cpus=cpus)
                   for _ in range(nodes)]
        for node in started:
            await c.wait_listening(node)
        return c
    yield make
    for c in request.node.stash.get(_CLUSTERS, []):
        c.close()


@pytest.fixture
async def jmig_nodes(tmp_path):
    """Nodes inside the test's process, for white-box trio tests
    (`await jmig_nodes.start("a")`; see jmig.testing.inprocess)."""
    async with trio.open_nursery() as nursery:
        yield InProcessCluster(nursery, tmp_path)
        nursery.cancel_scope.cancel()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for c in item.stash.get(_CLUSTERS, []):
            for title, text in c.report():
                report.sections.append((f"{title} ({report.when})", text))


RUN_TAG = "JMIG_TEST_RUN"


def pytest_configure(config):
    # Every process this run starts, directly or not (nodes, jmigctl, a
    # demo's nodes), inherits the tag, which is how the end of the run
    # finds what was left behind.
    os.environ[RUN_TAG] = f"{os.getpid()}-{secrets.token_hex(4)}"


def _tagged() -> dict[int, str]:
    """Live processes (not this one) carrying this run's tag: pid -> command."""
    mark = f"{RUN_TAG}={os.environ.get(RUN_TAG, '')}".encode() + b"\0"
    mine = {os.getpid(), bytecode.helper_pid()}        # this process and its compile helper
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) in mine:
            continue
        try:
            if mark in (d / "environ").read_bytes():
                out[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                    errors="replace").strip()
        except OSError:
            continue                        # gone, or a zombie
    return out


def left_behind() -> list[str]:
    """Processes started by this run and namespaces created by it that are
    still there (a process gets 2 s to finish exiting)."""
    procs = _tagged()
    if procs:
        time.sleep(2)
        procs = {p: c for p, c in _tagged().items() if p in procs}
    out = [f"process {pid} ({cmd[:120]}) still running" for pid, cmd in sorted(procs.items())]
    out += [f"network namespace or bridge {x} still exists" for x in sorted(netns.left_behind())]
    return out


def _clean_up() -> None:
    for n in STARTED:
        n.kill()
    for pid in _tagged():
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    for x in netns.left_behind():
        netns.delete(x)


@pytest.hookimpl(trylast=True)          # after the session's fixtures are torn down
def pytest_sessionfinish(session, exitstatus):
    left = left_behind()
    if left:
        _clean_up()
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        text = "jmig: left behind by this run (now removed): " + "; ".join(left)
        if tr is not None:
            tr.write_line(text, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


atexit.register(_clean_up)
