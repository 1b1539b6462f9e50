"""Bad input on every port: each case closes (or answers) only the one
connection, and the node keeps serving (a following ps works).

Most cases run against in-process nodes; one real daemon checks that the
refusals appear in the node's stderr JSON log."""
import json
import random
import socket
import struct
import time

import msgpack
import pytest
import structlog
import trio

from jmig import programs
from jmig.ctl.client import ControlClient
from jmig.proto.frames import (MAX_CONTROL_FRAME, MAX_DATA_FRAME, NEED_DATA, FrameDecoder,
                               encode_frame, sized)
from jmig.proto.handshake import PORT_KINDS, AuthError, ClientHandshake
from jmig.proto.wire import connect

from jmig.testing import InProcessCluster, console_of, wait_for

OFFSETS = {kind: i for i, kind in enumerate(PORT_KINDS)}       # normal P, pgfault P+1, ...
# What each port accepts after the handshake (before it: a few KiB on all).
LIMITS = {"normal": MAX_DATA_FRAME, "pgfault": MAX_DATA_FRAME, "pager": MAX_DATA_FRAME,
          "control": MAX_CONTROL_FRAME}


def raw_frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def _random_bytes() -> bytes:
    data = random.Random(4100).randbytes(4096)
    # The first four bytes read as a length beyond every port's limit.
    assert struct.unpack(">I", data[:4])[0] > max(LIMITS.values())
    return data


def garbage(kind: str, port_kind: str) -> tuple[bytes, bool]:
    """(bytes to send, whether to half-close afterwards)."""
    hello = encode_frame(ClientHandshake(b"x" * 32, port_kind).hello())
    return {
        "random": (_random_bytes(), False),
        "random-then-eof": (b"\x00\x00\x01\x00" + random.Random(1).randbytes(60), True),
        "truncated": (hello[:len(hello) // 2], True),
        "oversized": (struct.pack(">I", LIMITS[port_kind] + 1) + b"\x80" * 64, False),
        "not-msgpack": (raw_frame(b"\xc1" * 16), False),
        "not-a-map": (raw_frame(msgpack.packb([1, 2, 3])), False),
    }[kind]


GARBAGE = ["random", "random-then-eof", "truncated", "oversized", "not-msgpack", "not-a-map"]


def frames_in(data: bytes) -> list[dict]:
    dec = FrameDecoder(sized(max(LIMITS.values())))
    dec.receive_data(data)
    out = []
    while (f := dec.next_frame()) is not NEED_DATA:
        out.append(f)
    return out


async def send_and_watch(host: str, port: int, data: bytes, eof: bool) -> bytes:
    """Send data on a fresh connection and read until the node closes it
    (EOF or reset); fails if the node keeps it open for 5 s."""
    s = await trio.open_tcp_stream(host, port)
    got = b""
    try:
        try:
            await s.send_all(data)
            if eof:
                await s.send_eof()
        except trio.BrokenResourceError:
            return got                                     # closed before we finished
        with trio.fail_after(5):
            while True:
                try:
                    chunk = await s.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not chunk:
                    break
                got += chunk
    finally:
        await s.aclose()
    return got


async def still_serving(cluster: InProcessCluster, node) -> None:
    envs = (await cluster.call(node, "ps"))["envs"]
    assert 4100 in [e["envid"] for e in envs]


@pytest.fixture
async def node(cluster):
    return await cluster.start("victim", boot=[("loop", ("50",), 4100)])


# -- garbage before the handshake, on each of the four ports ------------------------------

@pytest.mark.parametrize("port_kind", PORT_KINDS)
@pytest.mark.parametrize("kind", GARBAGE)
async def test_garbage_closes_only_that_connection(cluster, node, port_kind, kind):
    data, eof = garbage(kind, port_kind)
    # A healthy control connection is open throughout and keeps working.
    async with await ControlClient.open(cluster.addr(node), cluster.secret) as bystander:
        got = await send_and_watch(node.cfg.host, node.cfg.port + OFFSETS[port_kind], data, eof)
        assert all(f.get("t") == "error" for f in frames_in(got)), got
        assert (await bystander.request("info"))["refused"] >= 1
    await still_serving(cluster, node)


async def test_refusals_are_counted_and_logged(cluster):
    with structlog.testing.capture_logs() as logs:
        node = await cluster.start("logged", boot=[("loop", ("50",), 4100)])
        for port_kind in PORT_KINDS:
            data, eof = garbage("oversized", port_kind)
            await send_and_watch(node.cfg.host, node.cfg.port + OFFSETS[port_kind], data, eof)
        await wait_for(lambda: node.refused == 4)
    refusals = [e for e in logs if e["event"] == "connection refused"]
    assert sorted(e["port"] for e in refusals) == sorted(PORT_KINDS)
    assert {e["reason"] for e in refusals} == {"protocol"}
    assert all("exceeds the limit" in e["detail"] for e in refusals)
    await still_serving(cluster, node)


# -- the handshake -----------------------------------------------------------------------

async def test_a_wrong_secret_is_refused_and_logged_with_reason_auth(cluster):
    with structlog.testing.capture_logs() as logs:
        node = await cluster.start("guarded", boot=[("loop", ("50",), 4100)])
        with pytest.raises(AuthError) as exc:
            await ControlClient.open(cluster.addr(node), b"not the cluster secret at all!")
        assert exc.value.code == "auth"
        await wait_for(lambda: node.refused == 1)
    refusal = [e for e in logs if e["event"] == "connection refused"]
    assert len(refusal) == 1
    assert refusal[0]["reason"] == "auth" and refusal[0]["port"] == "control"
    await still_serving(cluster, node)


@pytest.mark.parametrize("port_kind", PORT_KINDS)
async def test_a_wrong_secret_is_refused_on_every_port(cluster, node, port_kind):
    with pytest.raises(AuthError) as exc:
        await connect(node.cfg.host, node.cfg.port + OFFSETS[port_kind],
                      b"another secret, another cluster", port_kind)
    assert exc.value.code == "auth"
    await wait_for(lambda: node.refused == 1)
    await still_serving(cluster, node)


@pytest.mark.parametrize("port_kind", PORT_KINDS)
async def test_a_valid_handshake_for_the_wrong_port_kind_is_refused(cluster, node, port_kind):
    wrong = PORT_KINDS[(OFFSETS[port_kind] + 1) % 4]
    with pytest.raises(AuthError) as exc:
        await connect(node.cfg.host, node.cfg.port + OFFSETS[port_kind], cluster.secret, wrong)
    assert exc.value.code == "port"
    assert port_kind in exc.value.message
    await still_serving(cluster, node)


async def test_a_request_before_the_handshake_is_refused(cluster, node):
    got = await send_and_watch(node.cfg.host, node.cfg.port + 3,
                               encode_frame({"t": "req", "id": 1, "op": "ps", "args": {}}), False)
    frames = frames_in(got)
    assert [f["t"] for f in frames] == ["error"] and frames[0]["code"] == "protocol"
    assert not any(f.get("t") == "resp" for f in frames)
    await still_serving(cluster, node)


# -- garbage after a valid handshake -------------------------------------------------------

@pytest.mark.parametrize("port_kind", PORT_KINDS)
@pytest.mark.parametrize("kind", ["random", "oversized", "not-a-map"])
async def test_garbage_after_the_handshake_closes_that_connection(cluster, node, port_kind, kind):
    fs = await connect(node.cfg.host, node.cfg.port + OFFSETS[port_kind], cluster.secret,
                       port_kind)
    try:
        data, _ = garbage(kind, port_kind)
        try:
            await fs.stream.send_all(data)
        except trio.BrokenResourceError:
            pass
        with trio.fail_after(5):
            while True:
                try:
                    chunk = await fs.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not chunk:
                    break
    finally:
        await fs.aclose()
    await still_serving(cluster, node)


BAD_REQUESTS = [
    ({"t": "req", "op": "ps", "args": {}}, None, "bad-request"),                # missing id
    ({"t": "req", "id": "seven", "op": "ps"}, "seven", "bad-request"),          # id not an int
    ({"t": "req", "id": 1, "op": "frobnicate", "args": {}}, 1, "unknown-op"),
    ({"t": "req", "id": 2, "op": "_error", "args": {}}, 2, "unknown-op"),
    ({"t": "req", "id": 3, "op": "ps", "args": [1, 2]}, 3, "bad-request"),      # args not a map
    ({"t": "req", "id": 4, "op": "ps", "args": "x"}, 4, "bad-request"),
    ({"t": "req", "id": 5, "op": "pause", "args": {"envid": "4100"}}, 5, "bad-request"),
    ({"t": "req", "id": 6, "op": "pause", "args": {"envid": True}}, 6, "bad-request"),
    ({"t": "req", "id": 7, "op": "pause", "args": {"envid": -1}}, 7, "bad-request"),
    ({"t": "req", "id": 8, "op": "pause", "args": {"envid": 1 << 40}}, 8, "bad-request"),
    ({"t": "req", "id": 9, "op": "pause", "args": {}}, 9, "bad-request"),
    ({"t": "req", "id": 10, "op": 10, "args": {}}, 10, "bad-request"),          # op not a string
    ({"t": "resp", "id": 11, "ok": True}, 11, "bad-request"),                    # not a request
    ({}, None, "bad-request"),
    ({"t": "req", "id": 12, "op": "spawn", "args": {"program": 5}}, 12, "bad-request"),
    ({"t": "req", "id": 13, "op": "spawn", "args": {"program": "loop", "args": "50"}}, 13,
     "bad-request"),
    ({"t": "req", "id": 14, "op": "spawn", "args": {"program": "x", "elf": "text"}}, 14,
     "bad-request"),
    ({"t": "req", "id": 15, "op": "spawn", "args": {"program": "loop", "args": ["1"] * 1000}},
     15, "bad-request"),
    ({"t": "req", "id": 16, "op": "console", "args": {"lines": -1}}, 16, "bad-request"),
    ({"t": "req", "id": 17, "op": "console", "args": {"follow": "yes"}}, 17, "bad-request"),
    ({"t": "req", "id": 18, "op": "save", "args": {"envid": 4100, "name": "../../x"}}, 18,
     "bad-name"),
    ({"t": "req", "id": 19, "op": "migrate",
      "args": {"envid": 4100, "to": "127.0.0.1:1", "method": "teleport"}}, 19, "bad-request"),
]


async def test_garbage_requests_get_error_responses_and_the_connection_keeps_working(
        cluster, node):
    async with await ControlClient.open(cluster.addr(node), cluster.secret) as c:
        for req, rid, code in BAD_REQUESTS:
            await c.fs.send(req)
            resp = await c.fs.receive()
            assert resp["t"] == "resp" and resp["ok"] is False, req
            assert resp["id"] == rid, req
            assert resp["error"]["code"] == code, (req, resp)
            assert resp["error"]["message"], req
            # The same connection still answers a good request.
            envs = await c.request("ps")
            assert 4100 in [e["envid"] for e in envs["envs"]]
    # Nothing was paused, saved or migrated by any of it.
    ps = {e["envid"]: e for e in (await cluster.call(node, "ps"))["envs"]}
    assert list(ps) == [4100] and "paused" not in ps[4100]["state"]
    assert (await cluster.call(node, "ls"))["images"] == []


# -- operations that are refused ------------------------------------------------------------

async def test_refused_operations_give_clear_errors(cluster, node):
    hello = (await cluster.call(node, "spawn", {"program": "hello"}))["envid"]
    await wait_for(lambda: f"[{hello:08x}] free env {hello:08x}" in console_of(node))
    await cluster.call(node, "pause", {"envid": 4100})
    cases = [
        ("pause", {"envid": 99999}, "no-such-env", "no env 99999"),
        ("kill", {"envid": 99999}, "no-such-env", "no env 99999"),
        ("pause", {"envid": 4100}, "bad-state", "env 4100 is already paused"),
        ("resume", {"envid": hello}, "no-such-env", f"no env {hello}"),
        ("spawn", {"program": "junk", "elf": b"\x7fELF" + bytes(200)}, "bad-elf", ""),
        ("spawn", {"program": "junk", "elf": programs.load("loop")[:300]}, "bad-elf", ""),
        ("spawn", {"program": "nosuch"}, "no-such-program", "no program 'nosuch'"),
        ("load", {"name": "nosuch"}, "no-such-image", "nosuch"),
    ]
    async with await ControlClient.open(cluster.addr(node), cluster.secret) as c:
        for op, args, code, text in cases:
            rid = 100 + cases.index((op, args, code, text))
            await c.fs.send({"t": "req", "id": rid, "op": op, "args": args})
            resp = await c.fs.receive()
            assert resp["id"] == rid and not resp["ok"]
            assert resp["error"]["code"] == code, (op, args, resp)
            assert text in resp["error"]["message"] and len(resp["error"]["message"]) > 10
    await cluster.call(node, "resume", {"envid": 4100})
    await still_serving(cluster, node)


# -- a real daemon: the refusals are in its stderr JSON log ----------------------------------

def _send_and_watch_sync(host: str, port: int, data: bytes, eof: bool, source: str) -> bytes:
    """source: the address to send from (a node shuts out an address that
    keeps sending garbage, so each case comes from one of its own)."""
    got = b""
    with socket.create_connection((host, port), timeout=5, source_address=(source, 0)) as s:
        try:
            s.sendall(data)
            if eof:
                s.shutdown(socket.SHUT_WR)
            while chunk := s.recv(65536):
                got += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass
    return got


def test_a_daemon_survives_garbage_on_every_port_and_logs_the_refusals(daemons, tmp_path):
    d = daemons("target", "--boot", "loop@4100 50")
    for i, port_kind in enumerate(PORT_KINDS):
        for j, kind in enumerate(GARBAGE):
            data, eof = garbage(kind, port_kind)
            got = _send_and_watch_sync(d.host, d.port + OFFSETS[port_kind], data, eof,
                                       f"127.77.{200 + i}.{j + 1}")
            assert all(f.get("t") == "error" for f in frames_in(got))
        code, out, err = d.ctl("ps", "--json")
        assert code == 0 and 4100 in [e["envid"] for e in json.loads(out)], err

    other = tmp_path / "other-secret"
    other.write_text("a secret of some other cluster, long enough\n")
    other.chmod(0o600)
    code, out, err = d.ctl("--secret-file", str(other), "ps")
    assert code == 4 and "authentication failed" in err

    def refusals():
        return [e for e in (json.loads(l) for l in d.log().splitlines() if l.startswith("{"))
                if e.get("event") == "connection refused"]
    deadline = time.monotonic() + 5
    while not any(e["reason"] == "auth" for e in refusals()) and time.monotonic() < deadline:
        time.sleep(0.05)
    auth = [e for e in refusals() if e["reason"] == "auth"]
    assert len(auth) == 1 and auth[0]["port"] == "control"
    protocol = [e for e in refusals() if e["reason"] == "protocol"]
    assert {e["port"] for e in protocol} == set(PORT_KINDS)
    for port_kind in PORT_KINDS:                     # (the control port also saw the
        lines = [e for e in protocol if e["port"] == port_kind]   # fixture's start-up probe)
        assert len(GARBAGE) <= len(lines) <= len(GARBAGE) + (port_kind == "control")
    info = json.loads(d.ctl("info", "--json")[1])
    assert info["refused"] >= len(PORT_KINDS) * len(GARBAGE) + 1
    code, out, err = d.ctl("ps", "-q")
    assert code == 0 and out.split() == ["4100"]
    assert d.proc.poll() is None
