"""The migration and page-server messages (proto/migration.py): what a peer
may send, and the error a node answers to anything else.

The limits are the wire's, written out here (not imported): a node that
changed one would refuse a peer that still sends the old values.
"""
import struct

import pytest

from jmig.proto import migration as m
from jmig.proto.frames import LocalProtocolError, RemoteProtocolError

MID = "0123456789abcdef"
TOKEN = bytes(range(16))
ADDR = ["10.0.0.1", 7000]

# One valid frame of every message, as it arrives (lists, not tuples).
FRAMES = {
    "begin": {"t": "begin", "mid": MID, "method": "pgfault", "src": "a", "src_addr": ADDR,
              "incarnation": "i1", "resume": True, "pages": 3, "header": {"eip": 1},
              "pager": ["10.0.0.1", 7002], "token": TOKEN, "push": False, "prefetch": 8},
    "pages": {"t": "pages", "b": b"\x00" * 8, "round": 1},
    "round-end": {"t": "round-end", "round": 2},
    "round-applied": {"t": "round-applied", "round": 2},
    "final": {"t": "final", "header": {}, "map": struct.pack(">IH", 0x800, 7) * 2,
              "remote": struct.pack(">I", 0x801), "drops": b"", "pages": 3},
    "ready": {"t": "ready"},
    "prepared": {"t": "prepared", "envid": 4096},
    "commit": {"t": "commit"},
    "committed": {"t": "committed", "envid": 4096},
    "go": {"t": "go"},
    "abort": {"t": "abort", "reason": "source keeps it"},
    "started": {"t": "started", "envid": 4096, "resumed": True, "after_s": 0.25},
    "error": {"t": "error", "code": "no-memory", "message": "out of pages"},
    "status": {"t": "status", "mid": MID},
    "status-reply": {"t": "status-reply", "mid": MID, "role": "destination",
                     "state": "prepared", "incarnation": "i2", "envid": 4096},
    "attach": {"t": "attach", "mid": MID, "token": TOKEN, "channel": "faults",
               "need": struct.pack(">2I", 0x800, 0x801)},
    "attached": {"t": "attached", "remaining": 2},
    "get": {"t": "get", "vpn": 0x800, "n": 4},
    "page-batch": {"t": "page-batch", "b": b"\x01\x02", "push": True},
    "release": {"t": "release"},
    "released": {"t": "released"},
}
ANY = frozenset(m._REGISTRY.values())


def with_(tag: str, **fields) -> dict:
    frame = dict(FRAMES[tag])
    for k, v in fields.items():
        if v is ...:
            del frame[k]
        else:
            frame[k] = v
    return frame


def refused(frame: dict, allowed=ANY) -> str:
    with pytest.raises(RemoteProtocolError) as e:
        m.decode(frame, allowed)
    return str(e.value)


# -- every message --------------------------------------------------------------------

def test_the_protocol_has_exactly_these_messages():
    assert set(m._REGISTRY) == set(FRAMES)


@pytest.mark.parametrize("tag", sorted(FRAMES))
def test_every_message_decodes_and_encodes_back_to_the_same_frame(tag):
    msg = m.decode(FRAMES[tag], ANY)
    assert type(msg).T == tag
    assert m.encode(msg) == FRAMES[tag]


def test_decoded_fields_are_typed_values():
    begin = m.decode(FRAMES["begin"], m.SOURCE_OPENS)
    assert begin.src_addr == ("10.0.0.1", 7000) and begin.pager == ("10.0.0.1", 7002)
    assert (begin.mid, begin.method, begin.resume, begin.pages, begin.prefetch) == \
        (MID, "pgfault", True, 3, 8)
    final = m.decode(FRAMES["final"], m.FROM_SOURCE_PRECOPY)
    assert final.page_map() == [(0x800, 7), (0x800, 7)]
    assert final.remote_vpns() == [0x801] and final.drop_vpns() == []
    assert m.decode(FRAMES["attach"], m.PAGER_OPENS).need_vpns() == [0x800, 0x801]


def test_optional_fields_may_be_absent_or_null_and_are_not_sent_when_none():
    frame = with_("begin", pages=..., header=None, pager=..., token=..., push=..., prefetch=...)
    begin = m.decode(frame, m.SOURCE_OPENS)
    assert (begin.pages, begin.header, begin.pager, begin.token, begin.push,
            begin.prefetch) == (None,) * 6
    assert m.encode(begin) == with_("begin", pages=..., header=..., pager=..., token=...,
                                    push=..., prefetch=...)


@pytest.mark.parametrize("tag, field", [("begin", "mid"), ("begin", "resume"),
                                        ("final", "drops"), ("get", "n"), ("error", "code")])
def test_a_missing_field_is_named(tag, field):
    assert refused(with_(tag, **{field: ...})) == f"{tag}: field {field!r} is missing"


def test_a_required_field_sent_as_null_is_missing():
    assert refused(with_("get", vpn=None)) == "get: field 'vpn' is missing"


# -- which message, where -------------------------------------------------------------

def test_a_message_not_allowed_here_is_refused_naming_those_that_are():
    msg = refused(FRAMES["get"], m.SOURCE_OPENS)
    assert msg == "unexpected message 'get' (expected begin, status)"


@pytest.mark.parametrize("t", ["no-such", None, 7, ["get"]])
def test_a_frame_of_no_known_message_is_refused(t):
    assert refused({"t": t, "vpn": 1, "n": 0}).startswith(f"unexpected message {t!r}")


def test_who_may_send_what():
    assert {c.T for c in m.SOURCE_OPENS} == {"begin", "status"}
    assert {c.T for c in m.FROM_PAGER} == {"get", "release"}
    assert {c.T for c in m.FROM_PAGE_SERVER} == {"attached", "page-batch", "released", "error"}
    assert {c.T for c in m.FROM_SOURCE_DECISION} == {"commit", "go", "abort", "error"}


# -- field limits: the last value accepted and the first refused, both sides ---------

INT_LIMITS = [
    # tag, field, lowest, highest
    ("get", "vpn", 0, 0xFFFFF),
    ("get", "n", 0, 64),
    ("begin", "prefetch", 0, 64),
    ("final", "prefetch", 0, 64),
    ("begin", "pages", 0, 0xFFFFFFFF),
    ("attached", "remaining", 0, 0xFFFFFFFF),
    ("final", "pages", 0, 1 << 20),
    ("pages", "round", 1, 100_000),
    ("round-end", "round", 1, 100_000),
    ("round-applied", "round", 1, 100_000),
    ("prepared", "envid", 1, (1 << 31) - 1),
    ("committed", "envid", 1, (1 << 31) - 1),
    ("started", "envid", 1, (1 << 31) - 1),
    ("status-reply", "envid", 1, (1 << 31) - 1),
]


@pytest.mark.parametrize("tag, field, lo, hi", INT_LIMITS)
def test_an_integer_field_takes_exactly_its_range(tag, field, lo, hi):
    for v in (lo, hi):
        assert getattr(m.decode(with_(tag, **{field: v}), ANY), field) == v
    for v in (lo - 1, hi + 1):
        assert refused(with_(tag, **{field: v})) == \
            f"{tag}: field {field!r} is not an integer in {lo}..{hi}"


@pytest.mark.parametrize("v", [True, False, 1.0, "1", b"\x01"])
def test_an_integer_field_refuses_booleans_and_other_types(v):
    assert "is not an integer" in refused(with_("get", n=v))


STR_LIMITS = [("begin", "src", 64), ("begin", "incarnation", 32), ("abort", "reason", 1024),
              ("error", "code", 64), ("error", "message", 1024),
              ("status-reply", "state", 32), ("status-reply", "incarnation", 32)]


@pytest.mark.parametrize("tag, field, n", STR_LIMITS)
def test_a_string_field_takes_at_most_its_length(tag, field, n):
    assert getattr(m.decode(with_(tag, **{field: "x" * n}), ANY), field) == "x" * n
    assert refused(with_(tag, **{field: "x" * (n + 1)})) == \
        f"{tag}: field {field!r} is not a string of at most {n} characters"
    assert "is not a string" in refused(with_(tag, **{field: b"x"}))


BYTES_LIMITS = [
    # tag, field, the longest accepted, its unit (a length not a multiple is refused)
    ("pages", "b", 4 << 20, 1),
    ("page-batch", "b", 4 << 20, 1),
    ("final", "map", 6 << 20, 6),
    ("final", "remote", 4 << 20, 4),
    ("final", "drops", 4 << 20, 4),
    ("attach", "need", 4 << 20, 4),
    ("begin", "runs", m.MAX_RUNS_BYTES, m.RUN_LEN),
]


@pytest.mark.parametrize("tag, field, longest, unit", BYTES_LIMITS)
def test_a_byte_field_takes_whole_units_up_to_its_length(tag, field, longest, unit):
    bad = f"{tag}: field {field!r} is not a byte string of the right length"
    assert m.decode(with_(tag, **{field: bytes(longest)}), ANY)
    assert refused(with_(tag, **{field: bytes(longest + unit)})) == bad
    if unit > 1:
        assert m.decode(with_(tag, **{field: bytes(unit)}), ANY)
        for n in (1, unit - 1, unit + 1):
            assert refused(with_(tag, **{field: bytes(n)})) == bad
    assert refused(with_(tag, **{field: "text"})) == bad


@pytest.mark.parametrize("tag", ["begin", "attach"])
def test_a_token_is_exactly_16_bytes(tag):
    for n in (15, 17, 0):
        assert "token" in refused(with_(tag, token=bytes(n)))


@pytest.mark.parametrize("mid", ["0123456789abcde", "0123456789abcdef0", "0123456789ABCDEF",
                                 "0123456789abcdeg", 1234, None])
def test_a_migration_id_is_16_lowercase_hex_digits(mid):
    frame = with_("status", mid=mid)
    want = "is missing" if mid is None else "is not a migration id (16 hex digits)"
    assert refused(frame) == f"status: field 'mid' {want}"


def test_every_hex_digit_is_allowed_in_a_migration_id():
    for mid in ("0123456789abcdef", "fedcba9876543210"):
        assert m.decode(with_("status", mid=mid), ANY).mid == mid


@pytest.mark.parametrize("addr", [["h", 0], ["h", 65536], ["", 7000], ["h" * 256, 7000],
                                  ["h", True], ["h", "7000"], [7, 7000], ["h", 7000, 1],
                                  ["h"], ("h", 7000), "h:7000"])
def test_an_address_is_a_host_and_a_port(addr):
    assert refused(with_("begin", src_addr=addr)) == "begin: field 'src_addr' is not [host, port]"
    assert refused(with_("begin", pager=addr)) == "begin: field 'pager' is not [host, port]"


def test_the_extreme_addresses_are_accepted():
    for addr in (["h", 1], ["h", 65535], ["h" * 255, 7000]):
        assert m.decode(with_("begin", src_addr=addr), ANY).src_addr == tuple(addr)


@pytest.mark.parametrize("tag, field, good, bad", [
    ("begin", "method", ["normal", "pgfault", "precopy"], ["copy", "", None]),
    ("attach", "channel", ["faults", "push"], ["pull", "fault"]),
    ("status-reply", "role", ["source", "destination", "none"], ["dest"]),
])
def test_a_choice_field_takes_only_its_values(tag, field, good, bad):
    for v in good:
        assert getattr(m.decode(with_(tag, **{field: v}), ANY), field) == v
    for v in bad:
        if v is not None:
            assert refused(with_(tag, **{field: v})) == \
                f"{tag}: field {field!r} is not one of {', '.join(good)}"


@pytest.mark.parametrize("v", [1, 0, None, "yes"])
def test_a_flag_is_true_or_false_only(v):
    if v is None:
        assert refused(with_("started", resumed=v)).endswith("is missing")
    else:
        assert refused(with_("started", resumed=v)) == "started: field 'resumed' is not true or false"
    assert "is not true or false" in refused(with_("page-batch", push=1))


def test_seconds_are_a_float_from_0_to_a_million():
    for v in (0.0, 1e6):
        assert m.decode(with_("started", after_s=v), ANY).after_s == v
    for v in (-0.001, 1e6 + 1, 1, True, "1.0"):
        assert refused(with_("started", after_s=v)) == \
            "started: field 'after_s' is not a number of seconds"


@pytest.mark.parametrize("v", [[], "header", 1, b""])
def test_a_header_is_a_map(v):
    assert refused(with_("final", header=v)) == "final: field 'header' is not a map"


# -- sending ----------------------------------------------------------------------------

def test_encode_refuses_a_message_the_peer_would_refuse():
    with pytest.raises(LocalProtocolError, match="about to send a bad message: get: field 'n'"):
        m.encode(m.Get(vpn=1, n=65))
    with pytest.raises(LocalProtocolError, match="'mid' is not a migration id"):
        m.encode(m.Status(mid="nope"))


def test_page_numbers_and_maps_pack_big_endian():
    assert m.pack_vpns([1, 0x800]) == b"\x00\x00\x00\x01\x00\x00\x08\x00"
    assert m.unpack_vpns(m.pack_vpns([7, 0xFFFFF, 0])) == [7, 0xFFFFF, 0]
    assert m.unpack_vpns(b"") == []
    assert m.pack_map([(0x800, 7), (1, 5)]) == b"\x00\x00\x08\x00\x00\x07\x00\x00\x00\x01\x00\x05"
    final = m.decode(with_("final", map=m.pack_map([(3, 1), (4, 7)])), ANY)
    assert final.page_map() == [(3, 1), (4, 7)]


def test_page_runs_pack_big_endian_and_too_many_are_not_announced():
    runs = [(0x800, 64, 7), (0xEEBFD, 1, 7)]
    assert m.pack_runs(runs)[:10] == b"\x00\x00\x08\x00\x00\x00\x00\x40\x00\x07"
    begin = m.decode(with_("begin", runs=m.pack_runs(runs)), ANY)
    assert begin.page_runs() == runs
    assert m.decode(with_("begin"), ANY).page_runs() is None
    most = m.MAX_RUNS_BYTES // m.RUN_LEN
    assert len(m.pack_runs([(1, 1, 7)] * most)) == most * m.RUN_LEN
    assert m.pack_runs([(1, 1, 7)] * (most + 1)) is None
