"""Attacks on real daemons by peers without the secret (and one with it):
the node stays available to jmigctl and to migrations, and its memory
does not grow with what an attacker sends (jmig/testing/attacks.py runs
each attack in a process of its own)."""
from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest

from jmig.node.secret import read_secret
from jmig.proto.frames import encode_frame, FrameDecoder, NEED_DATA
from jmig.proto.handshake import ClientHandshake
from jmig.testing.attacks import run_record_image

from tests.migration.helpers import ctl_json, ctl_ok, dps, wait_dpass

pytestmark = pytest.mark.slow
MB = 1 << 20


def rss(d) -> int:
    """The daemon's resident memory in bytes."""
    for line in open(f"/proc/{d.proc.pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@contextlib.contextmanager
def attack(d, name: str, *args, watch=None):
    """Run an attack on daemon d for the duration of the block.  watch: a
    list that receives the daemon's RSS every 0.1 s while it runs."""
    cmd = [sys.executable, "-m", "jmig.testing.attacks", name, d.host, str(d.port), *args]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        p.stdout.readline()                  # "attacking": started (imports take a while)
        time.sleep(1.0)                      # let it get going
        assert p.poll() is None, p.stderr.read().decode()
        yield p
    finally:
        p.kill()
        p.wait(10)


def sample_rss(d, seconds: float) -> int:
    """The largest RSS seen over `seconds`."""
    top = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        top = max(top, rss(d))
        time.sleep(0.05)
    return top


def refused_so_far(d, more_than: int, seconds: float = 20.0) -> dict:
    """The daemon's info once it has refused more than `more_than`
    connections as busy (the attacker opens them as fast as a loaded
    machine lets it), or at the deadline."""
    deadline = time.monotonic() + seconds
    info = ctl_json(d, "info")
    while info["busy_refused"] <= more_than and time.monotonic() < deadline:
        time.sleep(0.2)
        info = ctl_json(d, "info")
    return info


def ps_works(d, times: int = 5) -> None:
    for _ in range(times):
        assert 4100 in [e["envid"] for e in dps(d)]


@pytest.fixture
def victim(daemons):
    return daemons("victim", "--boot", "loop@4100 100")


def test_an_idle_flood_from_many_addresses_locks_out_neither_jmigctl_nor_a_migration(
        daemons, victim):
    src = daemons("src")
    envid = ctl_json(src, "spawn", "memtest", "256", "32", "20")["new_envid"]
    wait_dpass(src, 0)
    with attack(victim, "idle", "--conns", "500", "--sources", "50"):
        ps_works(victim)
        out = ctl_ok(src, "migrate", str(envid), "--to", victim.addr, "--resume")
        assert "Process Migration Finished" in out
        first = wait_dpass(victim, 0)
        wait_dpass(victim, first)
        ps_works(victim)
        info = refused_so_far(victim, 100)
    assert info["busy_refused"] > 100            # the flood really hit the budget
    assert envid in [e["envid"] for e in dps(victim)]
    assert envid not in [e["envid"] for e in dps(src)]


def test_an_idle_flood_from_the_clients_own_address_is_refused_not_queued(victim):
    # All from one address: that address gets its share (8), the rest are
    # refused at once; a client elsewhere does not notice.
    with attack(victim, "idle", "--conns", "200", "--sources", "1"):
        ps_works(victim)
        info = refused_so_far(victim, 100)
    assert info["handshakes"] <= 8 + 1 and info["busy_refused"] > 100


@pytest.mark.parametrize("name", ["slowloris", "garbage", "hugecount"])
def test_unauthenticated_attacks_leave_ps_working_and_memory_flat(victim, name):
    before = rss(victim)
    with attack(victim, name, "--conns", "64"):
        ps_works(victim)
        top = sample_rss(victim, 2.0)
    ps_works(victim)
    assert top - before < 20 * MB, f"RSS grew by {(top - before) / MB:.1f} MB under {name}"


def test_a_16_mib_unauthenticated_frame_is_refused_without_reading_it(victim):
    before = rss(victim)
    with attack(victim, "bigframe", "--conns", "8"):
        top = sample_rss(victim, 2.0)
        ps_works(victim)
    assert top - before < 20 * MB
    # And by hand: the node answers the length prefix alone.
    s = socket.create_connection((victim.host, victim.port + 3), timeout=5)
    s.sendall((16 << 20).to_bytes(4, "big"))
    got = b""
    while chunk := s.recv(4096):
        got += chunk
    s.close()
    dec = FrameDecoder()
    dec.receive_data(got)
    err = dec.next_frame()
    assert err["t"] == "error" and err["code"] == "protocol" and "exceeds" in err["message"]


def test_a_turned_away_peer_cannot_go_on_streaming_into_the_node(victim):
    # After refusing a 16 MiB length prefix the node reads at most 64 KiB
    # more (so that its refusal is not overtaken by a reset), then closes:
    # the rest of the frame cannot be sent (it was read, all of it, before).
    s = socket.create_connection((victim.host, victim.port + 3), timeout=5)
    s.sendall((16 << 20).to_bytes(4, "big"))
    with pytest.raises(OSError):
        s.sendall(bytes(16 << 20))
    s.close()
    ps_works(victim)


def test_a_huge_count_frame_from_an_authenticated_peer_costs_no_memory(victim):
    before = rss(victim)
    with attack(victim, "authed-hugecount", "--secret-file", str(victim.secret_file)):
        top = sample_rss(victim, 3.0)
        ps_works(victim)
    assert top - before < 20 * MB
    log = victim.log()
    assert "exceeds max_array_len" in log


def test_a_node_whose_stdout_nobody_reads_keeps_answering(daemons):
    r, w = os.pipe()
    node = daemons("stuck", wait=False, stdout=w)
    os.close(w)
    try:
        node.wait_listening()
        for _ in range(40):
            ctl_json(node, "spawn", "loop", "0")
        # 40 loops print far more than a pipe holds (64 KiB); nobody reads.
        # The node answers throughout (a stalled one would time the
        # subprocess out) until it has had to drop output.
        deadline = time.monotonic() + 120
        while True:
            r_ps = node.ctl_subprocess("ps", "-q", timeout=30)
            assert r_ps.returncode == 0 and len(r_ps.stdout.split()) == 40
            info = json.loads(node.ctl_subprocess("info", "--json", timeout=30).stdout)
            if info["console_dropped"] > 0:
                break
            assert time.monotonic() < deadline, "the console never filled up"
            time.sleep(0.5)
        # Now read: the node says how much it had to drop.
        os.set_blocking(r, False)
        got = b""
        deadline = time.monotonic() + 10
        while b"bytes dropped]" not in got and time.monotonic() < deadline:
            try:
                got += os.read(r, 1 << 20)
            except BlockingIOError:
                time.sleep(0.05)
        assert re.search(rb"\[console: \d+ bytes dropped\]", got)
        assert b"Test Program, Env ID:" in got
    finally:
        node.kill()
        os.close(r)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_secret_file_others_can_read_is_refused_by_both_programs(tmp_path, victim, mode):
    bad = tmp_path / "secret-open"
    bad.write_bytes(victim.secret_file.read_bytes())
    bad.chmod(mode)
    r = subprocess.run([sys.executable, "-m", "jmig.node.main", "--host", "127.0.0.1",
                        "--port", "1", "--secret-file", str(bad), "--data-dir",
                        str(tmp_path / "d")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 4
    assert f"mode {mode:04o}" in r.stderr and "chmod 600" in r.stderr
    c = victim.ctl_subprocess("--secret-file", str(bad), "ps")
    assert c.returncode == 4 and f"mode {mode:04o}" in c.stderr and "chmod 600" in c.stderr


def test_a_recorded_handshake_replayed_to_a_node_is_refused(victim):
    secret = read_secret(victim.secret_file)

    def frames(sock):
        dec = FrameDecoder()
        while True:
            f = dec.next_frame()
            if f is not NEED_DATA:
                yield f
                continue
            data = sock.recv(65536)
            if not data:
                return
            dec.receive_data(data)

    # A genuine client, every byte it sends recorded.
    s = socket.create_connection((victim.host, victim.port + 3), timeout=5)
    hs = ClientHandshake(secret, "control", "recorded")
    sent = encode_frame(hs.hello())
    s.sendall(sent)
    incoming = frames(s)
    auth = encode_frame(hs.receive(next(incoming)))
    s.sendall(auth)
    assert next(incoming)["t"] == "welcome"
    s.close()
    # The same bytes on a new connection: the node's nonce is new.
    s = socket.create_connection((victim.host, victim.port + 3), timeout=5)
    s.sendall(sent + auth)
    got = list(frames(s))
    s.close()
    assert [f["t"] for f in got] == ["challenge", "error"] and got[1]["code"] == "auth"
    ps_works(victim, 1)


def test_a_run_record_image_is_refused_before_anything_is_allocated(tmp_path, victim):
    img = run_record_image()
    assert len(img) < 256
    path = victim.data_dir / "images" / "evil.img"
    path.write_bytes(img)
    before = rss(victim)
    code, out, err = victim.ctl("load", "evil")
    assert code == 1 and "bad-image" in err and "announces" in err
    assert rss(victim) - before < 20 * MB
    f = tmp_path / "evil.img"
    f.write_bytes(img)
    r = victim.ctl_subprocess("image", "verify", str(f))
    assert r.returncode == 1 and "remote pages" in r.stderr
    ps_works(victim, 1)


def test_an_address_that_keeps_sending_garbage_is_shut_out_in_the_kernel(victim):
    def try_connect(src: str) -> bool:
        s = socket.socket()
        s.bind((src, 0))
        s.settimeout(0.5)
        try:
            s.connect((victim.host, victim.port + 3))
            return True
        except OSError:                       # the SYN was dropped: timed out
            return False
        finally:
            s.close()

    for _ in range(12):
        try:
            with socket.create_connection((victim.host, victim.port + 3), timeout=5,
                                          source_address=("127.77.9.9", 0)) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                while s.recv(4096):
                    pass
        except OSError:                       # reset, or refused in the kernel already
            pass
    deadline = time.monotonic() + 5
    while try_connect("127.77.9.9") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not try_connect("127.77.9.9")
    assert try_connect("127.77.9.10")
    ps_works(victim, 1)
    assert '"addresses blocked"' in victim.log() and "127.77.9.9" in victim.log()
