"""jmigctl demo plays the original walkthrough on two nodes of its own, on
the loopback address --host names, checking each claim."""
import subprocess

import pytest

from .conftest import ctl_host, jmigctl_argv


@pytest.mark.slow
def test_the_demo_plays_the_walkthrough_on_the_host_it_is_given(tmp_path):
    host = ctl_host()
    r = subprocess.run(jmigctl_argv("demo", "--fast", "--host", host), capture_output=True,
                       text=True, timeout=300, env={"HOME": str(tmp_path), "PATH": "/usr/bin"})
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert f"started node1 on {host}:" in out and f"started node2 on {host}:" in out
    assert "Process 4100 is paused." in out and "Save Image Successful: my_image" in out
    assert out.count("You have successfully moved Env") == 2
    assert "ok: on node 2 the copy continues" in out and "fetched" in out
    assert out.rstrip().endswith("The walkthrough is complete.")
    assert "FAILED" not in out + r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_the_cluster_demo_balances_twelve_burns_over_four_nodes_and_drains_one(tmp_path):
    host = ctl_host()
    r = subprocess.run(jmigctl_argv("demo", "--cluster", "--fast", "--host", host),
                       capture_output=True, text=True, timeout=300,
                       env={"HOME": str(tmp_path), "PATH": "/usr/bin"})
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    for n in (1, 2, 3, 4):
        assert f"started node{n} on {host}:" in out
        assert f"ok: node{n} lists 4 alive members: node1, node2, node3, node4" in out
    assert "ok: balancing is on on node1, node2, node3, node4" in out
    assert "ok: balanced in " in out and "node1 3, node2 3, node3 3, node4 3" in out
    assert "ok: on node" in out and "it continues from node1's count" in out
    assert "ok: node4 has no envs" in out and "ok: node1-3 have the 12 burns" in out
    assert out.rstrip().endswith("The cluster demo is complete.")
    assert "FAILED" not in out + r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_the_distributed_demo_spreads_the_prime_sieve_over_four_nodes(tmp_path):
    host = ctl_host()
    r = subprocess.run(jmigctl_argv("demo", "--distributed", "--fast", "--host", host),
                       capture_output=True, text=True, timeout=300,
                       env={"HOME": str(tmp_path), "PATH": "/usr/bin"})
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    for k, n in enumerate((1, 2, 3, 4)):
        assert f"started node{n} on {host}:" in out and f"--node-id {k}" in out
        assert f"ok: node{n} lists 4 alive members: node1, node2, node3, node4" in out
    for n in (2, 3, 4):
        assert f"; moving it to node{n}" in out and f"keeps its id on node{n}" in out
    assert "ok: node1's generator sent 2..300" in out
    assert "ok: exactly the 62 primes up to 300 were printed, each once" in out
    assert "ok: each of the 63 envs is on exactly one node" in out
    assert "ok: all 62 filters are still there" in out
    assert out.count("(filter 2) lives on node2") == 1 and "(filter 3) lives on node3" in out \
        and "(filter 5) lives on node4" in out
    assert "ok: no remote syscall failed" in out and "ok: no env panicked" in out
    assert out.rstrip().endswith("The distributed demo is complete.")
    assert "FAILED" not in out + r.stderr and "Traceback" not in r.stderr
