"""The frame codec (proto/frames.py), byte by byte and over trio streams.

    FRAME ::= LENGTH(u32, big-endian) BODY[LENGTH]      BODY: a msgpack map
"""
import struct

import msgpack
import pytest
import trio
import trio.testing

from jmig.proto.frames import (DATA, MAX_CONTROL_FRAME, MAX_DATA_FRAME, NEED_DATA, FrameDecoder,
                               LocalProtocolError, ProtocolError, RemoteProtocolError,
                               encode_frame, sized)
from jmig.proto.wire import ConnectionClosed, FramedStream

FRAMES = [
    {"t": "req", "id": 1, "op": "ps", "args": {}},
    {},
    {"t": "page", "va": 0x00800000, "data": bytes(range(256)) * 16},
    {"nested": {"list": [1, -2, 3.5, None, True, "ü"], "big": 2**63 - 1}, 7: "int key"},
    {"t": "resp", "id": 2, "ok": False, "error": {"code": "no-such-env", "message": "no env 9"}},
]
BLOB = b"".join(encode_frame(f) for f in FRAMES)


def raw_frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def drain(dec: FrameDecoder) -> list:
    out = []
    while (f := dec.next_frame()) is not NEED_DATA:
        out.append(f)
    return out


# -- encoding ----------------------------------------------------------------------

def test_encode_is_a_big_endian_length_then_msgpack():
    b = encode_frame({"t": "hello"})
    body = msgpack.packb({"t": "hello"}, use_bin_type=True)
    assert b == struct.pack(">I", len(body)) + body


def test_encode_refuses_a_frame_over_the_limit():
    body_len = len(msgpack.packb({"d": b"x" * 100}, use_bin_type=True))
    encode_frame({"d": b"x" * 100}, max_frame=body_len)           # exactly the limit: fine
    with pytest.raises(LocalProtocolError, match="exceeds the limit"):
        encode_frame({"d": b"x" * 101}, max_frame=body_len)


def test_encode_refuses_oversized_frames_at_the_default_limits():
    with pytest.raises(LocalProtocolError):
        encode_frame({"d": b"\0" * (MAX_DATA_FRAME + 1)})
    with pytest.raises(LocalProtocolError):
        encode_frame({"d": b"\0" * MAX_CONTROL_FRAME}, max_frame=MAX_CONTROL_FRAME)


def test_local_and_remote_errors_are_both_protocol_errors():
    assert issubclass(LocalProtocolError, ProtocolError)
    assert issubclass(RemoteProtocolError, ProtocolError)
    assert not issubclass(LocalProtocolError, RemoteProtocolError)


# -- decoding byte by byte ---------------------------------------------------------

def test_decoder_needs_data_until_a_frame_is_complete():
    dec = FrameDecoder()
    assert dec.next_frame() is NEED_DATA
    one = encode_frame(FRAMES[0])
    for i, byte in enumerate(one):
        assert dec.next_frame() is NEED_DATA, f"a frame after only {i} bytes"
        dec.receive_data(bytes([byte]))
    assert dec.next_frame() == FRAMES[0]
    assert dec.next_frame() is NEED_DATA
    assert dec.buffered == 0


def test_frames_fed_one_byte_at_a_time_decode_identically():
    dec = FrameDecoder()
    got = []
    for i in range(len(BLOB)):
        dec.receive_data(BLOB[i:i + 1])
        got += drain(dec)
    assert got == FRAMES


@pytest.mark.parametrize("step", [2, 3, 5, 7, 4096])
def test_frames_fed_in_chunks_decode_identically(step):
    dec = FrameDecoder()
    got = []
    for i in range(0, len(BLOB), step):
        dec.receive_data(BLOB[i:i + step])
        got += drain(dec)
    assert got == FRAMES


def test_frames_split_at_every_byte_boundary_decode_identically():
    # Small frames so that every split of the whole stream is cheap to try.
    small = [{"t": "req", "id": i, "op": "ps", "args": {"x": b"\xff" * i}} for i in range(6)]
    blob = b"".join(encode_frame(f) for f in small)
    for cut in range(len(blob) + 1):
        dec = FrameDecoder()
        dec.receive_data(blob[:cut])
        got = drain(dec)
        dec.receive_data(blob[cut:])
        got += drain(dec)
        assert got == small, f"split at byte {cut}"
        assert dec.buffered == 0


def test_every_split_of_a_large_frame_decodes_identically():
    frame = FRAMES[2]
    blob = encode_frame(frame)
    for cut in range(len(blob)):
        dec = FrameDecoder()
        dec.receive_data(blob[:cut])
        assert dec.next_frame() is NEED_DATA
        dec.receive_data(blob[cut:])
        assert dec.next_frame() == frame, f"split at byte {cut}"


def test_several_frames_in_one_chunk():
    dec = FrameDecoder()
    dec.receive_data(BLOB + BLOB[:5])
    assert drain(dec) == FRAMES
    assert dec.buffered == 5


# -- malformed input ---------------------------------------------------------------

def test_a_length_over_the_limit_fails_before_the_body_arrives():
    dec = FrameDecoder(sized(100))
    dec.receive_data(struct.pack(">I", 101))
    with pytest.raises(RemoteProtocolError, match="exceeds the limit of 100"):
        dec.next_frame()


def test_a_frame_of_exactly_the_limit_is_accepted():
    body = msgpack.packb({"d": b"y" * 90}, use_bin_type=True)
    dec = FrameDecoder(sized(len(body)))
    dec.receive_data(raw_frame(body))
    assert dec.next_frame() == {"d": b"y" * 90}


@pytest.mark.parametrize("length", [MAX_DATA_FRAME + 1, 0xFFFFFFFF])
def test_oversized_length_prefix_at_the_default_limit(length):
    dec = FrameDecoder()
    dec.receive_data(struct.pack(">I", length) + b"\x80")
    with pytest.raises(RemoteProtocolError):
        dec.next_frame()


@pytest.mark.parametrize("body", [
    b"\xc1",                                        # the one byte msgpack never uses
    b"\x85\x01",                                    # a map of 5 with half an entry
    b"\xdb\x00\x00\x00\x10abc",                     # str32 claiming 16 bytes, 3 present
    b"\x80\x80",                                    # two maps in one frame
    b"\xd9\x02\xff\xfe",                            # str8 that is not UTF-8
    bytes(range(200, 256)),
], ids=["c1", "half-map", "short-str", "extra-data", "bad-utf8", "garbage"])
def test_a_body_that_is_not_msgpack_raises_remote_protocol_error(body):
    dec = FrameDecoder()
    dec.receive_data(raw_frame(body))
    with pytest.raises(RemoteProtocolError, match="not valid msgpack"):
        dec.next_frame()


@pytest.mark.parametrize("obj", [[1, 2], 5, "hello", b"bytes", None, True, 1.5],
                         ids=["list", "int", "str", "bin", "nil", "bool", "float"])
def test_a_body_that_is_not_a_map_raises_remote_protocol_error(obj):
    dec = FrameDecoder()
    dec.receive_data(raw_frame(msgpack.packb(obj, use_bin_type=True)))
    with pytest.raises(RemoteProtocolError, match="not a map"):
        dec.next_frame()


def test_an_empty_body_is_not_msgpack():
    dec = FrameDecoder()
    dec.receive_data(struct.pack(">I", 0))
    with pytest.raises(RemoteProtocolError):
        dec.next_frame()


def test_a_failed_decoder_stays_dead():
    dec = FrameDecoder(sized(10))
    dec.receive_data(struct.pack(">I", 11))
    with pytest.raises(RemoteProtocolError):
        dec.next_frame()
    with pytest.raises(RemoteProtocolError):
        dec.next_frame()
    with pytest.raises(RemoteProtocolError):
        dec.receive_data(encode_frame({"t": "ok"}))


def test_a_good_frame_before_a_bad_one_is_still_delivered():
    dec = FrameDecoder()
    dec.receive_data(encode_frame({"a": 1}) + raw_frame(b"\xc1"))
    assert dec.next_frame() == {"a": 1}
    with pytest.raises(RemoteProtocolError):
        dec.next_frame()


# -- through trio streams -------------------------------------------------------------

async def test_framed_streams_carry_frames_both_ways():
    left, right = trio.testing.memory_stream_pair()
    a, b = FramedStream(left, DATA), FramedStream(right, DATA)
    for f in FRAMES:
        await a.send(f)
    for f in FRAMES:
        assert await b.receive() == f
    for f in FRAMES[:2]:
        await b.send(f)
    assert [await a.receive(), await a.receive()] == FRAMES[:2]
    assert a.bytes_sent == b.bytes_received == len(BLOB)


async def test_framed_stream_reassembles_frames_written_byte_by_byte():
    left, right = trio.testing.memory_stream_pair()
    b = FramedStream(right, DATA)
    got = []

    async def reader():
        for _ in FRAMES:
            got.append(await b.receive())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        for i in range(len(BLOB)):
            await left.send_all(BLOB[i:i + 1])
            if i % 64 == 0:
                await trio.testing.wait_all_tasks_blocked()
    assert got == FRAMES


async def test_framed_stream_reports_a_clean_close_as_connection_closed():
    left, right = trio.testing.memory_stream_pair()
    b = FramedStream(right, DATA)
    await left.send_all(encode_frame({"x": 1}))
    await left.aclose()
    assert await b.receive() == {"x": 1}
    with pytest.raises(ConnectionClosed):
        await b.receive()


async def test_framed_stream_reports_a_close_mid_frame_as_a_protocol_error():
    left, right = trio.testing.memory_stream_pair()
    b = FramedStream(right, DATA)
    await left.send_all(encode_frame({"x": b"y" * 100})[:50])
    await left.aclose()
    with pytest.raises(RemoteProtocolError, match="middle of a frame"):
        await b.receive()


async def test_framed_stream_rejects_an_oversized_frame_from_the_peer():
    left, right = trio.testing.memory_stream_pair()
    b = FramedStream(right, sized(1000))
    await left.send_all(struct.pack(">I", 1001))
    with pytest.raises(RemoteProtocolError, match="exceeds the limit"):
        await b.receive()


async def test_framed_stream_refuses_to_send_an_oversized_frame():
    left, right = trio.testing.memory_stream_pair()
    a = FramedStream(left, sized(1000))
    with pytest.raises(LocalProtocolError):
        await a.send({"d": b"z" * 2000})
    assert a.bytes_sent == 0


async def test_framed_stream_sending_to_a_closed_peer_is_connection_closed():
    left, right = trio.testing.memory_stream_pair()
    a = FramedStream(left, DATA)
    await a.aclose()
    with pytest.raises(ConnectionClosed):
        await a.send({"x": 1})
