"""Real nodes for the command-line tests: jmig-node processes on loopback
addresses of their own (127.14.x.y, x from the pid, so that concurrent test
runs on one machine do not meet), with the original ports."""
import itertools
import os
import re
import sys
import time

import pytest

from jmig.testing import Cluster, NodeProcess

_hosts = itertools.count(2)
COUNTER = re.compile(r"Test Program, Env ID: (\d+), Counter: (\d+)")


def ctl_host() -> str:
    return f"127.14.{os.getpid() % 250 + 2}.{next(_hosts) % 250 + 2}"


def wait_until(pred, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.03)


def counters(d: NodeProcess, envid: int) -> list[int]:
    return [int(n) for e, n in COUNTER.findall(d.console()) if int(e) == envid]


def ctl_env(d: NodeProcess, **extra) -> dict:
    """The environment of a jmigctl subprocess driving d (without this
    process's COLUMNS and LINES: pytest-xdist's workers have 80x24, which
    rich would take over the size of the test's own terminal)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("JMIG_") and k not in ("COLUMNS", "LINES")}
    env.update({"JMIG_NODE": d.addr, "JMIG_SECRET_FILE": str(d.secret_file), **extra})
    return env


def jmigctl_argv(*argv) -> list[str]:
    return [sys.executable, "-m", "jmig.ctl.main", *argv]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two nodes: a booted the original test program as env 4100, b is empty."""
    with Cluster(tmp_path_factory.mktemp("ctl")) as c:
        a = c.start("a", "--boot", "loop@4100 50", host=ctl_host(), wait=False)
        b = c.start("b", host=ctl_host(), wait=False)
        a.wait_listening()
        b.wait_listening()
        wait_until(lambda: counters(a, 4100), what="env 4100's first line")
        yield a, b
