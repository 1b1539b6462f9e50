"""What a migration does when the network or the other node fails: links
of jmig_cluster sit between two nodes and can be cut, blackholed, delayed
or rate-limited; nodes can be frozen (SIGSTOP), killed and restarted.
Whatever fails, the process stays on exactly one node with its memory
intact."""
import re

import pytest

PASS = re.compile(r"memtest: pass (\d+) ok")


def last_pass(node):
    found = PASS.findall(node.console())
    return int(found[-1]) if found else 0


def start_memtest(cluster, node):
    env = cluster.spawn(node, "memtest", "1024", "64")      # 4 MiB
    node.wait_for_console(r"memtest: pass 1 ok")
    return env


def slow_migration(cluster, a, b, rate):
    """A normal migration from a to b across a link at `rate` bytes/s,
    started as a job that gives up after 2 s without progress."""
    link = cluster.link(a, b)
    link.rate(rate)
    env = start_memtest(cluster, a)
    job = cluster.ctl_json(a, "migrate", str(env), "--to", link.addr, "--detach",
                           "--timeout", "2")["job"]
    return link, env, job


def outcome(cluster, node, job):
    code, _, err = cluster.ctl(node, "jobs", "watch", job, check=False)
    state = [j for j in cluster.jobs(node) if j["id"] == job][0]["state"]
    return code, state, err


def still_running_on(cluster, node, env, other):
    """env is on node only, and memtest goes on verifying there."""
    assert [e["envid"] for e in cluster.ps(node)] == [env]
    assert cluster.ps(other) == []
    before = last_pass(node)
    node.wait_for_console(rf"memtest: pass {before + 1} ok", timeout=60)
    assert "MISMATCH" not in node.console()


def test_a_blackholed_link_fails_the_job_and_the_process_runs_on(jmig_cluster):
    cluster = jmig_cluster(nodes=2)
    a, b = cluster.nodes
    link, env, job = slow_migration(cluster, a, b, 500_000)
    link.blackhole()                         # nothing passes, nothing is closed
    code, state, err = outcome(cluster, a, job)
    assert code != 0 and state == "failed", err
    link.restore()
    still_running_on(cluster, a, env, b)


def test_a_frozen_destination_fails_the_job_and_the_process_runs_on(jmig_cluster):
    cluster = jmig_cluster(nodes=2)
    a, b = cluster.nodes
    link, env, job = slow_migration(cluster, a, b, 500_000)
    b.sigstop()
    code, state, err = outcome(cluster, a, job)
    b.sigcont()
    assert code != 0 and state == "failed", err
    still_running_on(cluster, a, env, b)


def test_a_link_cut_mid_copy_fails_the_job_and_the_process_runs_on(jmig_cluster):
    cluster = jmig_cluster(nodes=2)
    a, b = cluster.nodes
    link, env, job = slow_migration(cluster, a, b, 500_000)
    link.down()                              # cut, and refuse new connections
    code, state, err = outcome(cluster, a, job)
    assert code != 0 and state == "failed", err
    link.up()
    still_running_on(cluster, a, env, b)


@pytest.mark.parametrize("method", ["normal", "pgfault"])
def test_a_delayed_link_slows_nothing_but_the_wire(jmig_cluster, method):
    cluster = jmig_cluster(nodes=2)
    a, b = cluster.nodes
    link = cluster.link(a, b)
    link.delay(0.02)                         # 20 ms each way
    env = start_memtest(cluster, a)
    mark = len(b.console())
    new = cluster.migrate(a, env, link, "--method", method, "--resume")["new_envid"]
    b.wait_for_console(r"memtest: pass \d+ ok", since=mark, timeout=120)
    assert [e["envid"] for e in cluster.ps(b)] == [new] and cluster.ps(a) == []
    assert "MISMATCH" not in b.console()
