"""Issue 5: bad input.  Corrupt and truncated images are refused by load
(error bad-image, a clear message, no env, no leak, the node keeps serving);
a migration stream with a wrong version or garbage is refused and the
receiver keeps serving; save refuses a running env without --pause and an
existing name without --force; `jmigctl image inspect/verify` work offline
and report corruption."""
import io
import json
import os
import struct

import pytest
import trio

from jmig.ctl.client import ControlClient, RemoteError
from jmig.ctl.main import main as jmigctl
from jmig.proto.image import scan_file
from jmig.proto.frames import ProtocolError
from jmig.proto.pstream import ENTRY, MAGIC, StreamError
from jmig.proto.wire import ConnectionClosed, connect

from .helpers import build_image, call, counters, env_ids, free, image_file, start, wait_until


async def _hello_image(cluster, node) -> tuple[int, bytes]:
    """`hello` created paused (it has not run at all) and saved: 5 pages."""
    envid = (await call(cluster, node, "spawn", {"program": "hello", "paused": True}))["envid"]
    await call(cluster, node, "save", {"envid": envid, "name": "hello"})
    return envid, image_file(node, "hello").read_bytes()


def _records(data: bytes) -> list[tuple[int, bytes, int]]:
    """(offset, tag, length) of every record after the magic."""
    out, pos = [], len(MAGIC)
    while pos < len(data):
        tag, length = data[pos:pos + 1], struct.unpack(">I", data[pos + 1:pos + 5])[0]
        out.append((pos, tag, length))
        pos += 5 + length
    return out


def _structural_offsets(data: bytes) -> list[int]:
    """Every byte that is not page contents, the first and last byte of each
    1 KiB chunk, and every 23rd byte."""
    offs = set(range(len(MAGIC)))
    for pos, tag, length in _records(data):
        if tag == b"B":
            n = struct.unpack(">I", data[pos + 5:pos + 9])[0]
            offs.update(range(pos, pos + 9 + n * ENTRY))            # head, entries
            for c in range(4 * n):
                chunk = pos + 9 + n * ENTRY + c * 1024
                offs.update((chunk, chunk + 1023))                  # first, last
        else:
            offs.update(range(pos, pos + 5 + length))
    offs.update(range(0, len(data), 23))
    return sorted(o for o in offs if o < len(data))


def _boundary_lengths(data: bytes) -> list[int]:
    lens = set(range(0, 64)) | set(range(len(data) - 40, len(data)))
    for pos, _, length in _records(data):
        for p in (pos, pos + 5, pos + 9, pos + 19, pos + 5 + length):
            lens.update(range(p - 2, p + 3))
    lens.update(range(0, len(data), 23))
    return sorted(n for n in lens if 0 <= n < len(data))


def _flip(b: int, i: int) -> int:
    return b ^ (0xFF if i % 2 else 1 << (i // 2 % 8))


def test_every_single_byte_corruption_and_truncation_fails_load_verification(tmp_path):
    """Exhaustive: every byte of the image changed (all bits, or one bit,
    alternately) and every truncation, through the verification pass that
    load runs before it creates anything (jmig.proto.image.scan_file)."""
    data = build_image(["hello"], None)
    assert 16_000 < len(data) < 30_000
    path = tmp_path / "x.img"
    path.write_bytes(data)
    assert scan_file(path).pages == 5
    fd = os.open(path, os.O_RDWR)
    try:
        for i in range(len(data)):
            os.pwrite(fd, bytes([_flip(data[i], i)]), i)
            with pytest.raises(StreamError):
                scan_file(path)
            os.pwrite(fd, data[i:i + 1], i)
        for n in range(len(data) - 1, -1, -1):
            os.ftruncate(fd, n)
            with pytest.raises(StreamError):
                scan_file(path)
    finally:
        os.close(fd)


async def test_corrupt_and_truncated_images_are_refused_by_load_with_bad_image(cluster):
    """Through the node's load: every structural byte (magic, header, each
    record's tag, length, address, permissions, chunk numbers, the trailer)
    and a sample of contents changed; truncations at and around every record
    boundary and a sample of others.  Each is refused with bad-image and a
    message naming the problem; no env appears, no frame leaks, the node
    keeps serving."""
    a = await start(cluster, "a")
    hello, data = await _hello_image(cluster, a)
    free_before = free(a)
    path = image_file(a, "bad")
    path.write_bytes(data)
    messages = {}
    refused = 0
    async with await ControlClient.open(cluster.addr(a), cluster.secret) as c:
        async def load_refused(what):
            nonlocal refused
            with pytest.raises(RemoteError) as exc:
                await c.request("load", {"name": "bad"})
            assert exc.value.code == "bad-image", (what, exc.value.message)
            assert exc.value.message.startswith("image rejected: "), exc.value.message
            messages.setdefault(exc.value.message[len("image rejected: "):][:40], what)
            refused += 1

        fd = os.open(path, os.O_RDWR)
        try:
            for i in _structural_offsets(data):
                os.pwrite(fd, bytes([_flip(data[i], i)]), i)
                await load_refused(f"byte {i} changed")
                os.pwrite(fd, data[i:i + 1], i)
            for n in reversed(_boundary_lengths(data)):
                os.ftruncate(fd, n)
                await load_refused(f"truncated to {n} bytes")
        finally:
            os.close(fd)
        # Still serving, nothing created, nothing leaked.
        assert env_ids(a) == [hello]
        assert free(a) == free_before
        a.kernel.check_invariants()
        path.write_bytes(data)
        good = await c.request("load", {"name": "bad"})
        assert good["pages"] == 5
    assert refused > 2000
    text = " | ".join(messages)
    for problem in ("bad magic", "checksum mismatch", "truncated", "chunk sequence"):
        assert problem in text, text


async def _migration_session(node, frames, raw: bytes | None = None):
    """Connect to node's normal migration port as a node would (handshake
    with the cluster secret), send frames (and raw bytes: a process stream
    follows a Begin raw, and then the sending side is closed), and return
    the reply frame or None if the node closed the connection."""
    fs = await connect(node.cfg.host, node.cfg.port, node.secret, "normal", "intruder")
    try:
        for f in frames:
            await fs.send(f)
        if raw is not None:
            await fs.send_raw(raw)
            await fs.stream.send_eof()
        with trio.fail_after(10):
            return await fs.receive()
    except (ConnectionClosed, ProtocolError):
        return None
    finally:
        await fs.aclose()


def _begin(pages=5):
    return {"t": "begin", "mid": os.urandom(8).hex(), "method": "normal", "src": "intruder",
            "src_addr": ["127.0.0.1", 1], "incarnation": "x", "pages": pages, "resume": True}


async def test_migration_stream_with_wrong_version_or_garbage_is_refused_and_receiver_keeps_serving(
        cluster):
    a = await start(cluster, "a")
    b = await start(cluster, "b")
    envid, image = await _hello_image(cluster, b)
    free_before = free(a)
    v1 = MAGIC[:7] + b"\x01" + image[8:]
    garbage = b"\xff" + os.urandom(50_000)
    first_batch = _records(image)[1][0]
    cases = {
        "an old format": ([_begin()], v1, "format version 1 is not supported"),
        "garbage stream": ([_begin()], garbage, "bad magic"),
        "garbage after a good header": ([_begin()], image[:first_batch] + garbage,
                                        "unknown record tag"),
        "truncated stream": ([_begin()], image[:-30], "receiving the process stream"),
        "corrupt page": ([_begin()], image[:5000] + b"\x00" + image[5001:],
                         "checksum mismatch"),
        "not a begin": ([{"t": "commit"}], None, "unexpected message 'commit'"),
        "garbage frame": ([], b"\x00\x00\x00\x08notmsgpk", None),
        "oversized frame": ([], struct.pack(">I", 0xFFFFFFF0) + b"x" * 100, None),
    }
    codes = {"not a begin": "protocol", "truncated stream": "link-lost"}
    for what, (frames, raw, words) in cases.items():
        reply = await _migration_session(a, frames, raw)
        if words is not None:
            assert reply is not None and reply["t"] == "error", (what, reply)
            code = codes.get(what, "bad-stream")
            assert reply["code"] == code and words in reply["message"], (what, reply)
        else:
            assert reply is None or reply["t"] == "error", (what, reply)
        assert env_ids(a) == [], what
        assert free(a) == free_before, what
    a.kernel.check_invariants()
    # The receiver still serves real migrations.
    r = await call(cluster, b, "migrate", {"envid": envid, "to": cluster.addr(a), "resume": True})
    await wait_until(lambda: "hello, world" in a.rec.text(r["new_envid"]), what="hello on A")


def _ctl(node_addr, secret_file, *argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    env = {"JMIG_NODE": node_addr, "JMIG_SECRET_FILE": str(secret_file), "HOME": "/nonexistent"}
    code = jmigctl(list(argv), environ=env, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


async def test_save_of_running_env_is_refused_with_hint_and_works_with_pause(cluster, tmp_path):
    a = await start(cluster, "a")
    secret = tmp_path / "secret"
    secret.write_bytes(cluster.secret)
    secret.chmod(0o600)
    envid = (await call(cluster, a, "spawn", {"program": "loop", "args": ["10"]}))["envid"]
    await wait_until(lambda: counters(a.rec.text(envid)), what="loop output")
    code, out, err = await trio.to_thread.run_sync(_ctl, cluster.addr(a), secret, "save",
                                                   str(envid), "snap")
    assert code == 1
    assert f"env {envid} is running; pause it first" in err and "--pause" in err
    assert not image_file(a, "snap").exists()
    assert "paused" not in a.kernel.ps()[0]["state"]

    before = counters(a.rec.text(envid))[-1][1]
    code, out, err = await trio.to_thread.run_sync(_ctl, cluster.addr(a), secret, "save",
                                                   str(envid), "snap", "--pause")
    assert code == 0, err
    assert out.startswith("Save Image Successful: snap (")
    after = counters(a.rec.text(envid))[-1][1]
    # It keeps running: not paused, and the counter keeps going.
    assert "paused" not in a.kernel.ps()[0]["state"]
    n = counters(a.rec.text(envid))[-1][1]
    await wait_until(lambda: counters(a.rec.text(envid))[-1][1] >= n + 3, what="more counting")
    # The image holds the counter at the moment of the save.
    mark = a.rec.mark()
    loaded = (await call(cluster, a, "load", {"name": "snap", "resume": True}))["envid"]
    await wait_until(lambda: counters(a.rec.text(loaded, mark)), what="the loaded copy")
    first = counters(a.rec.text(loaded, mark))[0][1]
    assert before + 1 <= first <= after + 1


async def test_save_to_existing_name_is_refused_unless_force(cluster, tmp_path):
    a = await start(cluster, "a")
    secret = tmp_path / "secret"
    secret.write_bytes(cluster.secret)
    secret.chmod(0o600)
    envid = (await call(cluster, a, "spawn", {"program": "loop", "args": ["10"]}))["envid"]
    await call(cluster, a, "save", {"envid": envid, "name": "snap", "pause": True})
    first = image_file(a, "snap").read_bytes()
    await wait_until(lambda: len(counters(a.rec.text(envid))) >= 3, what="loop output")
    code, out, err = await trio.to_thread.run_sync(_ctl, cluster.addr(a), secret, "save",
                                                   str(envid), "snap", "--pause")
    assert code == 1
    assert "already exists" in err and "--force" in err and "[exists]" in err
    assert image_file(a, "snap").read_bytes() == first
    code, out, err = await trio.to_thread.run_sync(_ctl, cluster.addr(a), secret, "save",
                                                   str(envid), "snap", "--pause", "--force")
    assert code == 0, err
    assert image_file(a, "snap").read_bytes() != first      # the counter moved on
    assert [i["name"] for i in (await call(cluster, a, "ls"))["images"]] == ["snap"]


def test_image_inspect_and_verify_work_offline_and_report_corruption(tmp_path):
    good = tmp_path / "hello.img"
    good.write_bytes(build_image(["hello"], None))
    nowhere = "127.0.0.1:1"          # no node is needed (nor reachable)
    secret = tmp_path / "no-secret"

    code, out, err = _ctl(nowhere, secret, "image", "inspect", str(good), "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["valid"] is True and info["error"] is None
    assert info["pages"] == 5 and info["header"]["name"] == "hello"
    assert sum(r["pages"] for r in info["ranges"]) == 5
    code, out, err = _ctl(nowhere, secret, "image", "verify", str(good))
    assert code == 0, err
    assert out.startswith(f"{good}: ok, env 4096 (hello), 5 pages, checksum ")

    data = good.read_bytes()
    corrupt = tmp_path / "corrupt.img"
    corrupt.write_bytes(data[:9000] + bytes([data[9000] ^ 0x10]) + data[9001:])
    truncated = tmp_path / "truncated.img"
    truncated.write_bytes(data[:-7])
    badtag = tmp_path / "badtag.img"
    pos = _records(data)[1][0]
    badtag.write_bytes(data[:pos] + b"Q" + data[pos + 1:])
    for path, words in ((corrupt, "checksum mismatch"), (truncated, "truncated"),
                        (badtag, "unknown record tag")):
        code, out, err = _ctl(nowhere, secret, "image", "inspect", str(path), "--json")
        assert code == 1
        info = json.loads(out)
        assert info["valid"] is False and words in info["error"], info["error"]
        code, out, err = _ctl(nowhere, secret, "image", "inspect", str(path))
        assert code == 1 and "BAD" in out and words in out
        code, out, err = _ctl(nowhere, secret, "image", "verify", str(path))
        assert code == 1 and f"{path}: invalid image: " in err and words in err, err
    code, out, err = _ctl(nowhere, secret, "image", "verify", str(tmp_path / "missing.img"))
    assert code == 1 and "cannot read" in err


def test_image_verify_refuses_a_stream_with_remote_pages_as_load_does(tmp_path):
    import io
    from jmig.ctl.main import main
    from jmig.kernel.memlayout import PTE_P, PTE_U
    from jmig.proto.pstream import StreamEncoder
    enc = StreamEncoder()
    header = {"format": 1, "jmig": "0", "method": "pgfault", "node": "n", "envid": 4096,
              "parent": 0, "name": "x", "status": 2, "runs": 0, "regs": [0] * 8,
              "eip": 0x800020, "eflags": 0x202, "trapno": 0, "err": 0, "upcall": 0,
              "ipc": [0] * 5, "sleep_ms": None, "pages": 2}
    data = enc.start(header) + enc.remote_run(0x800000, 2, PTE_U | PTE_P) + enc.trailer()
    f = tmp_path / "remote.img"
    f.write_bytes(data)
    out, err = io.StringIO(), io.StringIO()
    assert main(["image", "verify", str(f)], environ={}, stdout=out, stderr=err) == 1
    assert "remote pages" in err.getvalue()
