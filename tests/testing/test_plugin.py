"""jmig's pytest plugin as its users meet it: pytest runs on test files of
their kind (in a fresh directory, a pytest process of its own) and the
report, the exit code and the processes left on the machine are checked."""
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jmig.testing import Cluster, netns

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def gone(pid: int) -> bool:
    """The process has exited (and is not a zombie waiting to be reaped)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def wait_gone(pids, timeout: float = 20.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(gone(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if not gone(p)]


def test_a_failing_test_shows_each_nodes_console_and_log(pytester):
    shutil.copy(ROOT / "examples" / "failing" / "test_shows_logs.py", pytester.path)
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    r.assert_outcomes(failed=1)
    out = r.stdout.str()
    assert "hello said hello, not goodbye" in out
    assert "jmig node a (" in out and ") console (call)" in out and ") log (call)" in out
    assert "hello, world" in out                               # the console's lines
    assert '"event": "node listening"' in out                  # the log's lines


def test_the_examples_pass(pytester):
    for f in sorted((ROOT / "examples" / "tests").glob("test_*.py")):
        shutil.copy(f, pytester.path)
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    r.assert_outcomes(passed=10)


def test_nodes_are_killed_when_pytest_is_interrupted(pytester, tmp_path):
    pids = tmp_path / "pids"
    pytester.makepyfile(test_sleeps=f"""
        import time
        def test_sleeps(jmig_cluster):
            c = jmig_cluster(nodes=2)
            open({str(pids)!r}, "w").write(" ".join(str(n.proc.pid) for n in c.nodes))
            time.sleep(120)
    """)
    p = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"],
                         cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120          # under CI's load a cold start is slow
    while not (pids.exists() and pids.read_text()):
        assert time.monotonic() < deadline and p.poll() is None, p.stdout.read()
        time.sleep(0.05)
    nodes = [int(x) for x in pids.read_text().split()]
    assert not any(gone(n) for n in nodes)
    p.send_signal(signal.SIGINT)                               # Ctrl-C
    p.communicate(timeout=120)
    assert wait_gone(nodes) == []


def test_nodes_die_with_a_pytest_that_is_killed_outright(pytester, tmp_path):
    pids = tmp_path / "pids"
    pytester.makepyfile(test_sleeps=f"""
        import time
        def test_sleeps(jmig_cluster):
            c = jmig_cluster(nodes=1)
            open({str(pids)!r}, "w").write(str(c.nodes[0].proc.pid))
            time.sleep(120)
    """)
    p = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"],
                         cwd=pytester.path, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (pids.exists() and pids.read_text()):
        assert time.monotonic() < deadline and p.poll() is None
        time.sleep(0.05)
    node = int(pids.read_text())
    p.kill()                                                   # no teardown at all
    p.wait(10)
    assert wait_gone([node]) == []


def test_a_node_left_running_fails_the_run_and_is_killed(pytester, tmp_path):
    pids = tmp_path / "pids"
    pytester.makepyfile(test_leaks=f"""
        from jmig.testing import Cluster
        def test_leaks(tmp_path):
            c = Cluster(tmp_path)                  # never closed
            open({str(pids)!r}, "w").write(str(c.start("a").proc.pid))
    """)
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    r.assert_outcomes(passed=1)
    assert r.ret == pytest.ExitCode.TESTS_FAILED
    out = r.stdout.str()
    assert "jmig: left behind by this run (now removed): process " in out
    assert "jmig.node.main --host" in out and "--name a" in out
    assert wait_gone([int(pids.read_text())]) == []


async def test_the_trio_flavour_moves_a_process_across_a_delayed_link(jmig_trio_cluster):
    c = await jmig_trio_cluster(nodes=2)
    a, b = c.nodes
    env = await c.spawn(a, "memtest", "256", "32")
    await c.wait_for_console(a, r"memtest: pass 1 ok")
    link = c.link(a, b)
    link.delay(0.1)
    started = time.monotonic()
    code, out, _ = await c.ctl(a, "--node", link.addr, "info")
    assert code == 0 and b.name in out
    assert time.monotonic() - started > 0.2                   # a round trip crossed the delay
    link.delay(0.002)                 # each fault is a round trip: 256 of them
    mark = len(b.console())
    r = await c.migrate(a, env, link, "--method", "pgfault", "--no-push", "--resume")
    await c.wait_for_console(b, r"memtest: pass \d+ ok", since=mark)
    assert link.bytes()["back"] > 0                           # faults went back through it
    assert [e["envid"] for e in await c.ctl_json(b, "ps")] == [r["new_envid"]]


def test_a_namespaced_clusters_namespaces_and_bridge_go_when_it_closes(tmp_path):
    why = netns.unavailable()
    if why:
        pytest.skip(why)
    with Cluster(tmp_path, netns=True, hosts=2) as c:
        node = c.start("a")
        names = {h.ns for h in c.net.hosts} | {c.net.bridge}
        assert names <= netns.existing()
        pid = node.proc.pid
    assert not names & netns.existing()
    assert wait_gone([pid]) == []
