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
