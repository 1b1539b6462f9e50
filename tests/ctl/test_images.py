"""Images that move: a running memtest saved on one node, exported to a
file, imported and copied to another node, loaded there; the loaded env
goes on verifying every page of its memory."""
import json
import stat
import subprocess

import pytest

from tests.migration.helpers import check_no_mismatch, passes, wait_dpass

from .conftest import ctl_env, jmigctl_argv


def run(d, *argv, check=True):
    r = subprocess.run(jmigctl_argv(*argv), env=ctl_env(d), capture_output=True, text=True,
                       timeout=120)
    if check:
        assert r.returncode == 0, f"jmigctl {' '.join(argv)}: {r.stdout}{r.stderr}"
    return r


def js(d, *argv):
    return json.loads(run(d, *argv, "--json").stdout)


@pytest.mark.slow
def test_export_import_and_copy_a_running_memtest_between_two_nodes(daemons, tmp_path):
    a = daemons("img-a")
    b = daemons("img-b")
    env = json.loads(run(a, "spawn", "--json", "memtest", "256", "32").stdout)["new_envid"]
    first = wait_dpass(a, timeout=120)
    saved = js(a, "save", "--pause", str(env), "mt")           # it keeps running
    assert saved["pages"] > 256
    f = tmp_path / "mt.img"
    out = run(a, "image", "export", "mt", str(f)).stdout
    assert f"Image mt exported to {f}: env {env} (memtest)" in out
    assert f.stat().st_size == [i["size"] for i in js(a, "ls")["images"] if i["name"] == "mt"][0]
    assert run(a, "image", "verify", str(f)).stdout.startswith(f"{f}: ok, env {env} (memtest)")
    # Import under another name; copy under the same name.
    out = run(b, "image", "import", str(f), "from_file").stdout
    assert f"imported as from_file on {b.addr}: env {env} (memtest)" in out
    out = run(a, "image", "copy", "mt", "--to", b.addr).stdout
    assert f"Image mt copied to {b.addr} as mt" in out
    names = {i["name"]: i["size"] for i in js(b, "ls")["images"]}
    assert names["mt"] == names["from_file"] == f.stat().st_size
    # A node's images hold process memory: readable by its owner only,
    # whether saved there or imported.
    for d, name in ((a, "mt"), (b, "from_file"), (b, "mt")):
        assert stat.S_IMODE((d.data_dir / "images" / f"{name}.img").stat().st_mode) == 0o600
    # Without --force nothing is replaced; with it, it is.
    r = run(a, "image", "copy", "mt", "--to", b.addr, check=False)
    assert r.returncode == 1 and "already exists" in r.stderr and "--force" in r.stderr
    run(a, "image", "copy", "mt", "--to", b.addr, "--force")
    # A corrupted file is refused before anything is sent, and by the node too.
    bad = tmp_path / "bad.img"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    r = run(b, "image", "import", str(bad), "bad", check=False)
    assert r.returncode == 1 and "nothing was sent" in r.stderr
    assert "bad" not in {i["name"] for i in js(b, "ls")["images"]}
    # Both images on b hold the process: loaded, each verifies all its pages.
    since = len(b.console())
    for name in ("from_file", "mt"):
        new = js(b, "load", "--resume", name)["new_envid"]
        assert [e["program"] for e in js(b, "ps") if e["envid"] == new] == ["memtest"]
    wait_dpass(b, first, timeout=240)
    text = b.console()[since:]
    check_no_mismatch(text)
    assert passes(text), text[-2000:]
    check_no_mismatch(a.console())
