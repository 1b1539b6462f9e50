"""Each port's frame limits (proto/frames.py), enforced to the unit: what a
peer may send before the handshake, to a control port, back from one, and
on the migration ports -- the largest accepted and the smallest refused,
with the error the peer is closed with.

The values are the wire's, written out here (not imported from frames.py):
a node that changed one would refuse what a peer of the old value sends.
"""
import struct

import msgpack
import pytest

from jmig.proto import frames
from jmig.proto.frames import NEED_DATA, FrameDecoder, RemoteProtocolError

KIB, MIB = 1 << 10, 1 << 20
PORTS = {"preauth": frames.PREAUTH, "control request": frames.CONTROL_REQUEST,
         "control reply": frames.CONTROL_REPLY, "data": frames.DATA,
         "sized(5000)": frames.sized(5000)}

# port, what, the most a frame may hold
LIMITS = [
    ("preauth", "str", 256), ("preauth", "bin", 64), ("preauth", "map", 8),
    ("preauth", "depth", 1),
    ("control request", "str", 64 * KIB), ("control request", "array", 1024),
    ("control request", "map", 64), ("control request", "depth", 4),
    ("control reply", "str", 8 * MIB), ("control reply", "bin", 1 * MIB),
    ("control reply", "array", 1 << 16), ("control reply", "map", 256),
    ("control reply", "depth", 8),
    ("data", "str", 4096), ("data", "array", 64), ("data", "map", 64), ("data", "depth", 4),
    ("sized(5000)", "depth", 64),
]
FRAME = [("preauth", 1024), ("control request", 16 * MIB), ("control reply", 16 * MIB),
         ("data", 4 * MIB), ("sized(5000)", 5000)]


def holding(what: str, n: int) -> dict:
    """A frame body whose largest `what` is n."""
    if what == "str":
        return {"s": "x" * n}
    if what == "bin":
        return {"b": bytes(n)}
    if what == "array":
        return {"a": [0] * n}
    if what == "map":
        return {i: 0 for i in range(n)}
    body: dict = {}
    for _ in range(n - 1):                # depth: maps in maps, a flat map is 1
        body = {"a": body}
    return body


def decode(port: str, body: dict):
    dec = FrameDecoder(PORTS[port])
    dec.receive_data(frames.encode_frame(body, 1 << 30))
    return dec.next_frame()


@pytest.mark.parametrize("port, what, most", LIMITS)
def test_a_port_takes_a_frame_at_its_limit_and_refuses_one_more(port, what, most):
    assert decode(port, holding(what, most)) == holding(what, most)
    with pytest.raises(RemoteProtocolError) as e:
        decode(port, holding(what, most + 1))
    if what == "depth":
        assert str(e.value) == f"frame body nests deeper than {most} levels"
    else:
        assert str(e.value).startswith("frame body is not valid msgpack within this "
                                       "connection's limits")


@pytest.mark.parametrize("port, most", FRAME)
def test_a_frame_longer_than_its_port_allows_is_refused_from_its_length(port, most):
    dec = FrameDecoder(PORTS[port])
    dec.receive_data(struct.pack(">I", most))
    assert dec.next_frame() is NEED_DATA
    dec = FrameDecoder(PORTS[port])
    dec.receive_data(struct.pack(">I", most + 1))
    with pytest.raises(RemoteProtocolError,
                       match=f"^frame of {most + 1} bytes exceeds the limit of {most}$"):
        dec.next_frame()


@pytest.mark.parametrize("port, most", [("data", 4 * MIB), ("control request", 16 * MIB),
                                        ("sized(5000)", 5000)])
def test_a_bin_may_fill_the_frame(port, most):
    # A page batch (data) or an uploaded ELF (control) is one bin as large
    # as the frame allows, less the map around it.
    body = {"b": bytes(most - 16)}
    assert decode(port, body) == body


def test_sized_limits_nothing_but_the_frame_and_the_depth():
    for body in ({"s": "x" * 4990}, {"a": [0] * 4990}, {i: 0 for i in range(1000)}):
        assert decode("sized(5000)", body) == body


def test_a_long_frame_is_refused_on_its_first_64_kib_if_they_break_the_limits():
    # A body announcing a million-pair map is refused as soon as 64 KiB of it
    # is here, not once the whole MiB is buffered.
    body = b"\xdf" + struct.pack(">I", 10**6) + bytes(MIB - 5)
    dec = FrameDecoder(frames.DATA)
    dec.receive_data(struct.pack(">I", len(body)) + body[:64 * KIB - 1])
    assert dec.next_frame() is NEED_DATA
    dec.receive_data(body[64 * KIB - 1:64 * KIB])
    with pytest.raises(RemoteProtocolError, match="not valid msgpack"):
        dec.next_frame()


def test_a_long_frame_within_the_limits_waits_for_the_rest():
    body = msgpack.packb({"b": bytes(MIB)}, use_bin_type=True)
    dec = FrameDecoder(frames.DATA)
    dec.receive_data(struct.pack(">I", len(body)) + body[:100 * KIB])
    assert dec.next_frame() is NEED_DATA
    dec.receive_data(body[100 * KIB:])
    assert dec.next_frame() == {"b": bytes(MIB)}


def test_the_second_long_frame_on_a_connection_is_checked_on_its_first_64_kib_too():
    good = msgpack.packb({"b": bytes(MIB)}, use_bin_type=True)
    bad = b"\xdf" + struct.pack(">I", 10**6) + bytes(MIB - 5)
    dec = FrameDecoder(frames.DATA)
    dec.receive_data(struct.pack(">I", len(good)) + good)
    assert dec.next_frame() == {"b": bytes(MIB)}
    dec.receive_data(struct.pack(">I", len(bad)) + bad[:64 * KIB])
    with pytest.raises(RemoteProtocolError, match="not valid msgpack"):
        dec.next_frame()


def test_a_long_frame_arriving_in_pieces_has_its_beginning_looked_at_once(monkeypatch):
    # Each piece of a 1 MiB frame does not parse its first 64 KiB again.
    body = msgpack.packb({"b": bytes(MIB)}, use_bin_type=True)
    dec = FrameDecoder(frames.DATA)
    made = []
    real = dec._unpacker
    monkeypatch.setattr(dec, "_unpacker", lambda: made.append(1) or real())
    dec.receive_data(struct.pack(">I", len(body)))
    for i in range(0, len(body), 16 * KIB):
        dec.receive_data(body[i:i + 16 * KIB])
        frame = dec.next_frame()
    assert frame == {"b": bytes(MIB)} and len(made) == 1


def test_the_first_64_kib_are_checked_as_the_whole_frame_is_decoded():
    # What the early check refuses, the whole frame's decoding refuses too
    # (a str that is not UTF-8), and what that accepts the early check
    # accepts (a map key that is no str).
    bad = b"\x82" + msgpack.packb("t") + b"\xa2\xff\xfe" + msgpack.packb("pad") \
        + msgpack.packb(bytes(MIB), use_bin_type=True)
    dec = FrameDecoder(frames.DATA)
    dec.receive_data(struct.pack(">I", len(bad)) + bad[:64 * KIB])
    with pytest.raises(RemoteProtocolError, match="not valid msgpack"):
        dec.next_frame()
    good = msgpack.packb({7: "int key", "b": bytes(MIB)}, use_bin_type=True)
    dec = FrameDecoder(frames.DATA)
    dec.receive_data(struct.pack(">I", len(good)) + good[:64 * KIB])
    assert dec.next_frame() is NEED_DATA
    dec.receive_data(good[64 * KIB:])
    assert dec.next_frame() == {7: "int key", "b": bytes(MIB)}


def test_msgpack_extension_types_are_refused_in_any_frame():
    # jmig's messages hold none; a peer sending one is refused, whether the
    # frame is short or long (checked on its first 64 KiB, before the rest).
    ext = msgpack.packb({"x": msgpack.ExtType(1, b"a")})
    dec = FrameDecoder(frames.DATA)
    dec.receive_data(struct.pack(">I", len(ext)) + ext)
    with pytest.raises(RemoteProtocolError, match="not valid msgpack"):
        dec.next_frame()
    body = b"\x82" + msgpack.packb("x") + msgpack.packb(msgpack.ExtType(1, b"a")) \
        + msgpack.packb("pad") + msgpack.packb(bytes(MIB), use_bin_type=True)
    dec = FrameDecoder(frames.DATA)
    dec.receive_data(struct.pack(">I", len(body)) + body[:64 * KIB])
    with pytest.raises(RemoteProtocolError, match="not valid msgpack"):
        dec.next_frame()


def test_depth_counts_nesting_a_scalar_being_0():
    assert frames.depth_of(5, 4) == 0
    assert frames.depth_of({}, 4) == 1
    assert frames.depth_of({"a": [1, {"b": []}]}, 8) == 4
    deep: list = []
    for _ in range(100):
        deep = [deep]
    assert frames.depth_of(deep, 4) == 5          # counted no deeper than limit + 1
