"""Moving a process between two real nodes, by each method, and checking
its memory afterwards: memtest verifies every page it wrote on each pass
and prints MISMATCH if one byte is wrong.

Run with `pytest examples/tests` after `pip install jmig` (the jmig_cluster
fixture comes with it)."""
import re

import pytest

PASS = re.compile(r"memtest: pass (\d+) ok")


def passes(node, since=0):
    return [int(n) for n in PASS.findall(node.console()[since:])]


@pytest.mark.parametrize("method", [
    ["--method", "normal"],
    ["--method", "pgfault"],
    ["--method", "pgfault", "--no-push"],
    ["--method", "precopy"],
    ["--method", "precopy", "--then", "pgfault"],
])
def test_memtest_keeps_verifying_after_it_moves(jmig_cluster, method):
    cluster = jmig_cluster(nodes=2)
    a, b = cluster.nodes
    env = cluster.spawn(a, "memtest", "512", "64")          # 2 MiB, 64 pages rewritten a pass
    a.wait_for_console(r"memtest: pass 1 ok")

    mark = len(b.console())
    result = cluster.migrate(a, env, b, *method, "--resume")
    b.wait_for_console(r"memtest: pass \d+ ok", since=mark)

    assert passes(b, mark)[0] > passes(a)[-1] - 1           # it went on where it was
    assert "MISMATCH" not in b.console()
    assert [e["envid"] for e in cluster.ps(b)] == [result["new_envid"]]
    # It runs on b only: a has nothing, or (pgfault, pages not all fetched
    # yet) keeps the env frozen as the page server for b.
    assert all("serving pages" in e["state"] for e in cluster.ps(a)), cluster.ps(a)
