"""Every decoder that reads bytes from the network or from disk, fed
arbitrary bytes (hypothesis): it raises nothing but its documented error
and allocates no more than a bounded amount beyond the bytes it was given.

    FrameDecoder          RemoteProtocolError   (all four ports, both sides)
    ServerHandshake       an error reply        (any decoded message)
    ClientHandshake       AuthError
    StreamDecoder         StreamError           (migration streams)
    ImageScan             StreamError           (images on disk)
    decode_pages          StreamError           (the page server's batches)
    parse_elf             ElfError              (uploaded programs)
"""
from __future__ import annotations

import struct
import tracemalloc

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jmig.kernel.elf import ElfError, parse_elf
from jmig.kernel.snapshot import EnvHeader
from jmig.proto import frames, pstream
from jmig.proto.frames import NEED_DATA, FrameDecoder, RemoteProtocolError
from jmig.proto.handshake import AuthError, ClientHandshake, ServerHandshake
from jmig.proto.image import ImageScan
from jmig.proto.pstream import MAGIC, StreamDecoder, StreamError, decode_pages

MB = 1 << 20
LIMITS = [frames.PREAUTH, frames.DATA, frames.CONTROL_REQUEST, frames.CONTROL_REPLY]


def peak_of(fn) -> int:
    """Bytes allocated at the peak while fn() runs (tracemalloc)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def chunks(data: bytes, sizes: list[int]):
    i = 0
    for n in sizes:
        if i >= len(data):
            return
        yield data[i:i + n]
        i += n
    if i < len(data):
        yield data[i:]


# -- frames ----------------------------------------------------------------------------

def drain_frames(limits, data: bytes, sizes) -> list:
    dec = FrameDecoder(limits)
    out = []
    try:
        for piece in chunks(data, sizes):
            dec.receive_data(piece)
            while (f := dec.next_frame()) is not NEED_DATA:
                assert isinstance(f, dict)
                out.append(f)
    except RemoteProtocolError:
        pass
    return out


@settings(max_examples=150)
@given(limits=st.sampled_from(LIMITS), data=st.binary(max_size=20000),
       sizes=st.lists(st.integers(1, 5000), max_size=10))
def test_frame_decoder_takes_any_bytes(limits, data, sizes):
    peak = peak_of(lambda: drain_frames(limits, data, sizes))
    assert peak < 4 * len(data) + 256 * 1024


def _frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.binary(max_size=64)
    | st.text(max_size=32),
    lambda inner: st.lists(inner, max_size=8) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=8),
    max_leaves=40)


@settings(max_examples=150)
@given(limits=st.sampled_from(LIMITS),
       body=st.dictionaries(st.text(max_size=8), msgpack_values, max_size=10))
def test_frame_decoder_on_valid_msgpack_returns_the_map_or_refuses_it(limits, body):
    data = _frame(msgpack.packb(body, use_bin_type=True))
    out = drain_frames(limits, data, [len(data)])
    assert out in ([], [body])
    if len(data) - 4 <= limits.frame and frames.depth_of(body, 64) <= min(limits.depth, 1):
        if all(not isinstance(v, (bytes, str)) or len(v) <= min(limits.bin, limits.str)
               for v in body.values()) and len(body) <= limits.map:
            assert out == [body]


HOSTILE = {
    "array32 of 2**32-1": b"\x81\xa1t\xdd\xff\xff\xff\xff" + b"\x80" * 1000,
    "map32 of 2**32-1": b"\x81\xa1t\xdf\xff\xff\xff\xff" + b"\x80" * 1000,
    "bin32 of 4 GiB": b"\x81\xa1t\xc6\xff\xff\xff\xff" + b"\x00" * 1000,
    "str32 of 4 GiB": b"\x81\xa1t\xdb\xff\xff\xff\xff" + b"a" * 1000,
    "1000 nested arrays": b"\x81\xa1t" + b"\x91" * 1000 + b"\xc0",
    "ext": b"\x81\xa1t\xc7\xff\x05" + b"\x00" * 255,
}


@pytest.mark.parametrize("limits", LIMITS, ids=["preauth", "data", "request", "reply"])
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_msgpack_is_refused_without_building_it(limits, name):
    data = _frame(HOSTILE[name])
    dec = FrameDecoder(limits)
    dec.receive_data(data)
    with pytest.raises(RemoteProtocolError):
        peak = peak_of(dec.next_frame)
        raise AssertionError(f"accepted ({peak} bytes)")


@pytest.mark.parametrize("limits", LIMITS[1:], ids=["data", "request", "reply"])
def test_a_frame_announcing_millions_of_objects_is_refused_before_it_is_buffered(limits):
    body_len = limits.frame - 16
    head = b"\x81\xa1t\xdd" + struct.pack(">I", body_len - 8) + b"\x80" * (64 << 10)
    dec = FrameDecoder(limits)
    with pytest.raises(RemoteProtocolError, match="max_array_len"):
        dec.receive_data(struct.pack(">I", body_len) + head)
        assert dec.next_frame() is NEED_DATA
        raise AssertionError("the prefix was not checked")


# -- the handshake ---------------------------------------------------------------------

messages = st.dictionaries(st.sampled_from(["t", "proto", "v", "port", "nonce", "node", "mac",
                                            "code", "message", "x"]),
                           msgpack_values | st.sampled_from(
                               ["hello", "auth", "challenge", "welcome", "error", "jmig",
                                "control", 2, b"\0" * 32]), max_size=7)


@settings(max_examples=150)
@given(msgs=st.lists(messages, min_size=1, max_size=4))
def test_server_handshake_answers_any_messages_without_raising(msgs):
    s = ServerHandshake(b"s" * 32, "control", "srv")
    for m in msgs:
        reply = s.receive(m)
        assert isinstance(reply, dict) and reply["t"] in ("challenge", "welcome", "error")
        assert "mac" not in reply or reply["t"] == "welcome"
    assert s.state.value in ("sent-challenge", "failed", "done")


@settings(max_examples=150)
@given(msgs=st.lists(messages, min_size=1, max_size=4))
def test_client_handshake_raises_only_auth_errors(msgs):
    c = ClientHandshake(b"s" * 32, "control")
    c.hello()
    for m in msgs:
        try:
            c.receive(m)
        except AuthError:
            return


# -- process streams, images, page batches -------------------------------------------

def _header_bytes(pages: int) -> bytes:
    h = EnvHeader(envid=4096, parent_id=0, name="x", status=2, runs=0, regs=(0,) * 8,
                  eip=0x800020, eflags=0x202, trapno=0, err=0, pgfault_upcall=0,
                  ipc_recving=0, ipc_dstva=0, ipc_value=0, ipc_from=0, ipc_perm=0,
                  sleep_ms=None)
    fields = pstream.header_fields(h, node="n", jmig_version="0", pages=pages, method="image")
    return pstream.StreamEncoder().start(fields)


record_bytes = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda tag, length, body: tag + struct.pack(">I", length) + body,
              st.sampled_from([b"B", b"P", b"Z", b"R", b"M", b"T", b"H", b"?"]),
              st.sampled_from([6, 10, 16, 4106, 0, 4110, 1 << 31]), st.binary(max_size=64)),
    st.builds(lambda n, entries, data: b"B" + struct.pack(">II", 4 + n * 4106, n)
              + entries + data,
              st.integers(0, 300), st.binary(max_size=200), st.binary(max_size=5000)),
    st.builds(lambda va, n, perm: b"M" + struct.pack(">IIIH", 10, va, n, perm),
              st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 0xFFFF)))


@settings(max_examples=150)
@given(pages=st.integers(0, 1 << 20), body=st.lists(record_bytes, max_size=12),
       sizes=st.lists(st.integers(1, 4000), max_size=8), remote=st.booleans())
def test_stream_decoder_takes_any_body(pages, body, sizes, remote):
    data = _header_bytes(pages) + b"".join(body)

    def run():
        dec = StreamDecoder(allow_remote=remote)
        try:
            for piece in chunks(data, sizes):
                dec.receive_data(piece)
                for _ in dec.events():
                    pass
        except StreamError:
            pass
    assert peak_of(run) < 4 * len(data) + 2 * MB


@settings(max_examples=150)
@given(data=st.binary(max_size=5000) | st.builds(lambda b: MAGIC + b, st.binary(max_size=5000)))
def test_stream_decoder_takes_any_bytes(data):
    dec = StreamDecoder()
    try:
        dec.receive_data(data)
        list(dec.events())
    except StreamError:
        pass


@settings(max_examples=100)
@given(pages=st.integers(0, 1 << 20), body=st.lists(record_bytes, max_size=12))
def test_image_scan_refuses_anything_but_an_image_with_bounded_memory(pages, body):
    data = _header_bytes(pages) + b"".join(body)

    def run():
        scan = ImageScan()
        try:
            scan.feed(data)
            scan.finish()
        except StreamError:
            return
        assert scan.trailer is not None
    assert peak_of(run) < 4 * len(data) + 2 * MB


@settings(max_examples=150)
@given(data=st.lists(record_bytes, max_size=8))
def test_page_batches_take_any_bytes(data):
    try:
        for p in decode_pages(b"".join(data)):
            assert len(p.data) == 4096
    except StreamError:
        pass


# -- ELF ---------------------------------------------------------------------------------

@settings(max_examples=150)
@given(data=st.binary(max_size=4096)
       | st.builds(lambda b: b"\x7fELF\x01\x01\x01" + b, st.binary(max_size=4096)))
def test_the_elf_parser_takes_any_bytes(data):
    try:
        parse_elf(data)
    except ElfError:
        pass
