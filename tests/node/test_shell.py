"""`jmigctl shell` fed the original project's commands on stdin prints the
original project's messages."""
import os
import re
import select
import subprocess
import sys
import time

import pytest

from jmig.ctl.shell import HELP

from jmig.testing import Cluster, NodeProcess

COUNTER = re.compile(r"Test Program, Env ID: (\d+), Counter: (\d+)\n")


def counters(d: NodeProcess, envid: int) -> list[int]:
    return [int(n) for e, n in COUNTER.findall(d.console()) if int(e) == envid]


def wait_until(pred, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def shell_env(d: NodeProcess) -> dict:
    return dict(os.environ, JMIG_NODE=d.addr, JMIG_SECRET_FILE=str(d.secret_file))


def shell(d: NodeProcess, script: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jmig.ctl.main", "shell"], input=script,
                          capture_output=True, text=True, timeout=60, env=shell_env(d))


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    with Cluster(tmp_path_factory.mktemp("shell")) as c:
        a = c.start("a", "--boot", "loop@4100 50", wait=False)
        b = c.start("b", wait=False)
        a.wait_listening()
        b.wait_listening()
        wait_until(lambda: counters(a, 4100), what="env 4100's first line")
        yield a, b


def test_the_original_commands_print_the_original_messages(pair):
    a, _ = pair
    r = shell(a, "ps\npause 4100\ncopy 4100\nresume 4100\nhelp\n")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert re.search(r"^4100\s+00001004\s+0\s+(Runnable|Running)\s+loop", out, re.M)
    assert "Process 4100 is paused.\n" in out
    m = re.search(r"Copying from Env: 4100\nNew Env Created: (\d+)\n", out)
    assert m, out
    assert "Process 4100 is resumed.\n" in out
    assert HELP in out
    for command in ("ps", "pause ENV", "copy ENV", "save ENV NAME", "load NAME",
                    "migrate_send_normal ENV REMOTE_IP REMOTE_PORT LOCAL_IP",
                    "migrate_recv_normal", "migrate_send_pgfault", "migrate_recv_pgfault"):
        assert command in out
    # In that order, as typed.
    assert out.index("is paused.") < out.index("Copying from") < out.index("is resumed.")
    new = int(m.group(1))
    r = shell(a, f"kill {new}\n")
    assert r.stdout == f"Process {new} is killed.\n"


def test_unknown_commands_print_a_hint_and_the_shell_goes_on(pair):
    a, _ = pair
    r = shell(a, "frobnicate 4100\nmigrate_send_normal 4100\nps -q\n")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert lines[0] == "error: unknown command 'frobnicate'; type help"
    # Too few arguments: the shell names what is missing.
    assert lines[1] == ("error: migrate_send_normal: missing REMOTE_IP REMOTE_PORT LOCAL_IP "
                        "(usage: migrate_send_normal ENV REMOTE_IP REMOTE_PORT LOCAL_IP)")
    assert "4100" in lines[2:]


def test_errors_are_shown_and_the_shell_goes_on(pair):
    a, _ = pair
    r = shell(a, "# a comment\n\npause 99999\npause abc\npause \"4100\nnode\nps -q\n"
                 "exit\npause 4100\n")
    assert r.returncode == 0
    out = r.stdout
    assert "error: no env 99999" in out and "`ps` lists the node's envs" in out
    assert "jmigctl" not in out                  # hints in the shell's own words
    assert "bad env id 'abc'" in out
    assert "No closing quotation" in out
    assert f"{a.addr}\n" in out                  # node alone shows the node
    assert re.search(r"^4100$", out, re.M)
    assert "is paused" not in out                  # nothing after exit ran


def test_migrate_send_normal_and_recv_as_in_the_original(pair):
    a, b = pair
    # Terminal 2: the destination waits for a migration.
    recv = subprocess.Popen([sys.executable, "-m", "jmig.ctl.main", "shell"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=shell_env(b))
    try:
        recv.stdin.write("migrate_recv_normal\n")
        recv.stdin.flush()
        ready, _, _ = select.select([recv.stdout], [], [], 20)
        assert ready and recv.stdout.readline() == "Waiting for connections... (port 50001)\n"
        # Terminal 1: copy the test program and send the copy to node 2.
        r = shell(a, "pause 4100\ncopy 4100\n")
        new = int(re.search(r"New Env Created: (\d+)", r.stdout).group(1))
        last = counters(a, 4100)[-1]
        r = shell(a, f"migrate_send_normal {new} {b.host} {b.port} {a.host}\nresume 4100\n")
        assert r.returncode == 0
        m = re.search(r"Process Migration Finished, You can resume New Env: (\d+)", r.stdout)
        assert m, r.stdout + r.stderr
        moved = int(m.group(1))
        out, _ = recv.communicate("exit\n", timeout=20)
        assert f"Process Migration Finished, You can resume New Env: {moved}" in out
        shell(a, f"kill {new}\n")                    # the kept source copy
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait(5)
    # On node 2, resume it: the counter continues from the original's.
    since = len(b.console())
    r = shell(b, f"resume {moved}\n")
    assert r.stdout == f"Process {moved} is resumed.\n"
    wait_until(lambda: len(COUNTER.findall(b.console()[since:])) >= 2,
               what="the migrated counter")
    got = [(int(e), int(n)) for e, n in COUNTER.findall(b.console()[since:])]
    # loop reads its env id, then prints it: the first line may name the
    # env it was copied from (4100) or the copy, read before the move.
    assert [n for _, n in got] == list(range(last + 1, last + 1 + len(got))), got
    assert got[0][0] in (4100, new, moved) and all(e == moved for e, _ in got[1:]), got
    shell(b, f"kill {moved}\n")
