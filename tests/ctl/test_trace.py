"""The original project's per-step lines: `migrate|save|load --trace` print
the source's, `jmig-node --trace` puts every side's on the node's console,
and large processes are summarised after the first pages."""
import json
import re
import subprocess

import pytest

from jmig.node.trace import TRACE_ITEMS

from .conftest import ctl_env, jmigctl_argv, wait_until


def run(d, *argv):
    r = subprocess.run(jmigctl_argv(*argv), env=ctl_env(d), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, f"jmigctl {' '.join(argv)}: {r.stdout}{r.stderr}"
    return r.stdout


def pages_of(d, envid) -> int:
    return [e["pages"] for e in json.loads(run(d, "ps", "--json")) if e["envid"] == envid][0]


@pytest.mark.slow
def test_trace_lines_on_request_and_on_the_nodes_consoles(daemons):
    a = daemons("tr-a", "--trace")
    b = daemons("tr-b", "--trace")
    quiet = daemons("tr-c")                                  # no --trace: a console without them
    env = json.loads(run(a, "spawn", "--json", "memtest", "64"))["new_envid"]
    wait_until(lambda: "memtest: pass 1 ok" in a.console(), what="memtest's first pass")
    run(a, "pause", str(env))
    total = pages_of(a, env)
    assert total > TRACE_ITEMS
    out = run(a, "migrate", str(env), "--to", b.addr, "--trace")
    lines = out.splitlines()
    assert lines[0] == f"Migration: From {a.addr}, To {b.addr}, Env ID: {env}"
    sends = [l for l in lines if l.startswith("Send Page: ")]
    assert len(sends) == 4 * TRACE_ITEMS                     # 4 chunks of 1 KiB per page
    assert sends[:4] == [f"Send Page: 0x00800000, Sequence: {i}" for i in (1, 2, 3, 4)]
    assert f"... and {total - TRACE_ITEMS} more pages" in lines
    assert lines[-3] == f"You have successfully moved Env {env} to {b.addr}."
    new = int(re.search(r"New Env: (\d+)", out).group(1))
    wait_until(lambda: "Migration: From" in b.console(), what="b's trace")
    cb = b.console()
    assert "Recv Page: 0x00800000, Sequence: 1\n" in cb
    assert f"... and {total - TRACE_ITEMS} more pages\n" in cb
    assert f"Migration: From {a.addr}, To {b.addr}, Env ID: {new}\n" in cb
    assert "Send Page: 0x00800000, Sequence: 1\n" in a.console()      # the source's console too
    # Demand paging back to a: entries on both sides, then a fault each way.
    run(b, "migrate", str(new), "--to", a.addr, "--method", "pgfault", "--no-push")
    wait_until(lambda: "Recv Page Table Entry: 0x00800000" in a.console(), what="a's entries")
    assert "Send Page Table Entry: 0x00800000\n" in b.console()
    back = [e["envid"] for e in json.loads(run(a, "ps", "--json")) if e["program"] == "memtest"]
    run(a, "resume", str(back[0]))
    wait_until(lambda: "Handle User Page Fault, Env: " in a.console(), what="a fault")
    wait_until(lambda: "Recv Request For Page: 0x" in b.console(), what="b's request")
    run(a, "kill", str(back[0]))
    # save and load --trace print theirs; a node without --trace shows none of it.
    q = json.loads(run(quiet, "spawn", "--json", "--paused", "loop"))["new_envid"]
    out = run(quiet, "save", "--trace", str(q), "traced")
    assert "Send Page: 0x00800000, Sequence: 1" in out and "Save Image Successful" in out
    out = run(quiet, "load", "--trace", "traced")
    assert "Recv Page: 0x00800000, Sequence: 4" in out and "Load Image Successful" in out
    out = run(quiet, "load", "traced")
    assert "Page" not in out
    assert "Page" not in quiet.console() and "Migration:" not in quiet.console()
