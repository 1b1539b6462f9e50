"""jmigctl top, checked without a screenshot: under a pseudo-terminal for a
few refreshes while a pre-copy migration is in flight; the envs of both
nodes and the job's progress appear."""
import json
import re
import subprocess
import sys

import pexpect
import pytest

from .conftest import ctl_env, jmigctl_argv, wait_until

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run(d, *argv):
    r = subprocess.run(jmigctl_argv(*argv), env=ctl_env(d), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, f"jmigctl {' '.join(argv)}: {r.stdout}{r.stderr}"
    return r.stdout


@pytest.mark.slow
def test_top_shows_the_envs_and_a_jobs_progress(jmig_cluster):
    c = jmig_cluster()
    a = c.start("top-a", "--boot", "loop@4100 50")
    b = c.start("top-b")
    env = json.loads(run(a, "spawn", "--json", "memtest", "1024", "64"))["new_envid"]
    wait_until(lambda: "memtest" in a.console(), what="memtest to start")
    link = c.link(a, b)
    link.rate(100_000)
    # 4 MiB at 100 KB/s: the migration stays in flight for the whole test.
    job = json.loads(run(a, "migrate", str(env), "--to", link.addr, "--detach",
                         "--json"))["job"]
    try:
        wait_until(lambda: (json.loads(run(a, "jobs", "--json"))[0]["progress"]
                            .get("done", 0)) > 0, what="the first pages")
        child = pexpect.spawn(sys.executable, ["-m", "jmig.ctl.main", "top", "--nodes",
                                               f"{a.addr},{b.addr}", "--interval", "0.5",
                                               "--iterations", "3"],
                              env=ctl_env(a, TERM="xterm"), encoding="utf-8", timeout=60,
                              dimensions=(40, 200))
        child.expect(pexpect.EOF)
        screen = ANSI.sub("", child.before)
        child.close()
        assert child.exitstatus == 0, screen
        assert "top-a" in screen and "top-b" in screen
        assert re.search(rf"\b4100\s+loop\s+\d+%", screen), screen       # CPU share
        assert re.search(rf"\b{env}\s+memtest\s+", screen), screen
        m = re.search(rf"job {job} migrate env {env} -> {re.escape(link.addr)} "
                      r"\(normal\), copying\D+?(\d+)/(\d+) pages", screen)
        assert m, screen
        assert int(m.group(2)) > 1024 and 0 < int(m.group(1)) < int(m.group(2))
        assert "━" in screen                                      # the progress bar
        # Piped, top prints plain snapshots, one per refresh, with the job's line.
        plain = run(a, "top", "--nodes", f"{a.addr},{b.addr}", "--iterations", "2",
                    "--interval", "0.2")
        assert plain.count("\nNODE ") + plain.startswith("NODE ") == 2 or \
            plain.count("NODE  ") == 2, plain
        assert re.search(rf"^{re.escape(a.addr)}\s+{env}\s+memtest\s+", plain, re.M), plain
        assert re.search(rf"job {job} migrate .* \d+/\d+ pages \d+%", plain), plain
    finally:
        out = run(a, "cancel", job)
    assert f"Job {job} cancelled" in out
