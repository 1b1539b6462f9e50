"""Nodes as separate hosts: each in a network namespace of its own, bound to
every address of its host (0.0.0.0) and reached across a bridge, so that
what a node advertises to another (its address as the other side sees it,
where the pgfault destination connects back for pages) is what distinct
machines would see.  Skipped, saying why, where namespaces cannot be made
(not root, no `ip`)."""
import re
import time

import pytest

from tests.migration.helpers import check_no_mismatch, passes

COUNTER = re.compile(r"Test Program, Env ID: (\d+), Counter: (\d+)")
pytestmark = pytest.mark.slow


def counters(node, envid: int, since: int = 0) -> list[int]:
    return [int(n) for e, n in COUNTER.findall(node.console()[since:]) if int(e) == envid]


def next_counter(node, envid: int, since: int = 0, timeout: float = 20.0) -> int:
    node.wait_for_console(rf"Test Program, Env ID: {envid}, Counter: \d+", timeout, since)
    return counters(node, envid, since)[0]


def memtest_passes_on(node, since: int, after: int = 0, timeout: float = 120.0) -> int:
    """Wait for a memtest pass numbered above `after` in node's console
    from offset since on, failing at once on a MISMATCH; its number."""
    deadline = time.monotonic() + timeout
    while True:
        text = node.console()
        check_no_mismatch(text)
        done = [n for n in passes(text[since:]) if n > after]
        if done:
            return done[-1]
        assert time.monotonic() < deadline, f"no memtest pass above {after} on {node.name}"
        time.sleep(0.05)


def test_the_original_walkthrough_between_two_namespaced_hosts(jmig_cluster):
    c = jmig_cluster(netns=True)
    a = c.start("a", "--boot", "loop@4100 50")
    b = c.start("b")
    assert a.host == "0.0.0.0" and a.netns != b.netns and a.addr != b.addr
    first = next_counter(a, 4100)

    c.ctl(a, "pause", "4100")
    mark = len(a.console())
    ps = {e["envid"]: e for e in c.ps(a)}
    assert "paused" in ps[4100]["state"]
    c.ctl(a, "resume", "4100")
    assert next_counter(a, 4100, mark) > first                  # it goes on

    c.ctl(a, "pause", "4100")
    c.ctl(a, "save", "4100", "my_image")
    saved = counters(a, 4100)[-1]
    assert "my_image" in c.ctl(a, "ls")[1]
    loaded = c.ctl_json(a, "load", "my_image")["new_envid"]
    mark = len(a.console())
    c.ctl(a, "resume", str(loaded))
    assert next_counter(a, loaded, mark) == saved + 1           # from where it was saved

    c.ctl(a, "pause", str(loaded))
    last = counters(a, loaded)[-1]
    mark_b = len(b.console())
    moved = c.migrate(a, loaded, b, "--method", "normal")["new_envid"]
    c.ctl(b, "resume", str(moved))
    assert next_counter(b, moved, mark_b) == last + 1           # normal: on b, goes on
    c.ctl(b, "kill", str(moved))

    copy = c.ctl_json(a, "copy", "4100")["new_envid"]
    c.ctl(a, "kill", "4100")
    last = counters(a, 4100)[-1]
    mark_b = len(b.console())
    moved = c.migrate(a, copy, b, "--method", "pgfault", "--no-push")["new_envid"]
    c.ctl(b, "resume", str(moved))
    assert next_counter(b, moved, mark_b) == last + 1           # pgfault: pages by fault
    stats = c.ctl_json(a, "stats")
    assert stats["pager"]["pages_served"] > 0, stats            # ...from a, across the bridge


def test_every_method_across_four_hosts_with_a_slow_link_memtest_clean(jmig_cluster):
    c = jmig_cluster(nodes=4, netns=True)
    a, b, cc, d = c.nodes
    slow = c.link(d, a)                     # d -> a (and a's page requests back to d)
    slow.delay(0.005)
    slow.rate(8_000_000)
    env = c.spawn(a, "memtest", "1024", "128")
    last = memtest_passes_on(a, 0)
    hops = [(a, b, ["--method", "normal", "--resume"]),
            (b, cc, ["--method", "pgfault", "--no-push", "--resume"]),
            (cc, d, ["--method", "pgfault", "--resume"]),
            (d, slow, ["--method", "precopy", "--then", "pgfault", "--resume"]),
            (a, b, ["--method", "precopy", "--resume"])]
    for src, dst, args in hops:
        target = dst.dst if hasattr(dst, "dst") else dst
        mark = len(target.console())
        env = c.migrate(src, env, dst, *args)["new_envid"]
        last = memtest_passes_on(target, mark, last)
        for n in c.nodes:
            check_no_mismatch(n.console())
    assert slow.bytes()["fwd"] > 1024 * 4096 // 2      # the hybrid crossed the slow link
    # Its last dirty pages, if it left any to demand paging, were fetched
    # back across the link too (migrate --page-server, which the link sets).
    if c.ctl_json(d, "stats")["pager"]["pages_served"]:
        assert slow.bytes()["back"] > 0
    # pgfault's destinations fetched from the origin's own namespace address.
    for origin in (b, cc):
        stats = c.ctl_json(origin, "stats")["pager"]
        assert stats["pages_served"] > 0, (origin.name, stats)
    assert [e["envid"] for e in c.ps(b)] == [env]
    for n in (a, cc, d):
        assert c.ps(n) == []
