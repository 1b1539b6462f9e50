"""What a process stream may name (proto/pstream.py): page addresses and
permissions in every kind of record, each page once, the header's size,
how many pages a stream may hold, and remote pages where only a full copy
is allowed.  A stream breaking one is refused with the page it is about.

The records are written out byte by byte (the encoder runs the same
checks, so a stream it made could not break them)."""
import re
import tracemalloc
import struct

import msgpack
import pytest

from jmig.proto import pstream
from jmig.proto.pstream import MAGIC, StreamDecoder, StreamEncoder, StreamError

UTOP = 0xEEC00000
R, RW = 0x5, 0x7                    # PTE_U|PTE_P, and PTE_W
AVAIL = 0xE00                       # PTE_AVAIL: a user may set these
SEQ = b"\x01\x02\x03\x04"


def header(pages: int, **more) -> bytes:
    body = msgpack.packb({"pages": pages, **more}, use_bin_type=True)
    return b"H" + struct.pack(">I", len(body)) + body


def zero(va: int, perm: int) -> bytes:
    return b"Z" + struct.pack(">IIH", 6, va, perm)


def remote(va: int, perm: int) -> bytes:
    return b"R" + struct.pack(">IIH", 6, va, perm)


def run(va: int, count: int, perm: int) -> bytes:
    return b"M" + struct.pack(">IIIH", 10, va, count, perm)


def batch(entries) -> bytes:
    n = len(entries)
    return (b"B" + struct.pack(">II", 4 + n * (10 + 4096), n)
            + b"".join(struct.pack(">IH", va, perm) + SEQ for va, perm in entries)
            + bytes(4096 * n))


def decode(*records, pages=None, **kw) -> list:
    """The events of MAGIC + header + records (no trailer: what matters is
    whether a record is refused)."""
    dec = StreamDecoder(**kw)
    n = pages if pages is not None else 64
    dec.receive_data(MAGIC + header(n) + b"".join(records))
    events = []
    while (e := dec.next_event()) is not pstream.NEED_DATA:
        events.append(e)
        if isinstance(e, pstream.Batch):
            dec.sink(None)
    return events


RECORDS = {"zero": lambda va, perm: zero(va, perm), "remote": lambda va, perm: remote(va, perm),
           "run": lambda va, perm: run(va, 1, perm),
           "batch": lambda va, perm: batch([(0x10000, RW), (0x11000, R), (va, perm)])}
BAD_ADDRESSES = [0x800001, 0x800800, UTOP, UTOP + 0x1000, 0xFFFFF000]
BAD_PERMS = [0x4, 0x1, 0x0, 0x6, RW | 0x20, RW | 0x40, R | 0x100, RW | 0x1000, 0xFFFF]


@pytest.mark.parametrize("kind", sorted(RECORDS))
@pytest.mark.parametrize("va", BAD_ADDRESSES)
def test_a_page_not_page_aligned_below_utop_is_refused_in_any_record(kind, va):
    with pytest.raises(StreamError, match=f"{va:#010x}"):
        decode(RECORDS[kind](va, RW))


@pytest.mark.parametrize("kind", sorted(RECORDS))
@pytest.mark.parametrize("perm", BAD_PERMS)
def test_permissions_outside_pte_syscall_or_without_u_and_p_are_refused(kind, perm):
    with pytest.raises(StreamError, match=f"permissions {perm:#x} are not within PTE_SYSCALL"):
        decode(RECORDS[kind](0x800000, perm))


@pytest.mark.parametrize("kind", sorted(RECORDS))
def test_the_last_page_below_utop_with_any_user_permissions_is_accepted(kind):
    for perm in (R, RW, RW | AVAIL, R | 0x400):
        events = decode(RECORDS[kind](UTOP - 0x1000, perm))
        assert len(events) == 2


def test_a_batch_is_refused_for_its_bad_entry_wherever_it_is():
    # Good entries before and after the bad one.
    good = [(0x10000 + (i << 12), RW) for i in range(4)]
    for bad, msg in [((UTOP, RW), "0xeec00000 is not page-aligned"),
                     ((0x800004, RW), "0x00800004 is not page-aligned"),
                     ((0x800000, 0x3), "permissions 0x3"), ((0x800000, RW | 0x80), "permissions 0x87")]:
        for at in (0, 2, 4):
            with pytest.raises(StreamError, match=msg):
                decode(batch(good[:at] + [bad] + good[at:]))


def test_a_page_named_twice_in_one_batch_is_refused_naming_it():
    with pytest.raises(StreamError, match="page 0x00803000 appears twice"):
        decode(batch([(0x801000, RW), (0x803000, RW), (0x802000, R), (0x803000, R)]))


def test_a_batch_of_two_naming_one_page_twice_is_refused():
    # Two entries, the same page, in either order of permissions: a batch
    # short enough that its order alone proves nothing.
    for perms in ((RW, R), (R, RW)):
        with pytest.raises(StreamError, match="page 0x00803000 appears twice"):
            decode(batch([(0x803000, perms[0]), (0x803000, perms[1])]))
    with pytest.raises(StreamError, match="page 0x00a01000 written twice"):
        enc = StreamEncoder()
        enc.start({"pages": 2})
        enc.batch([0xA01000, 0xA01000], [RW] * 2, [bytes(4096)] * 2)


def test_a_batch_in_descending_order_is_accepted_and_one_repeating_a_page_is_not():
    events = decode(batch([(0x805000, RW), (0x804000, RW), (0x803000, R)]))
    assert [list(map(int, e.vas)) for e in events if isinstance(e, pstream.Batch)] == \
        [[0x805000, 0x804000, 0x803000]]
    with pytest.raises(StreamError, match="page 0x00804000 appears twice"):
        decode(batch([(0x805000, RW), (0x804000, RW), (0x804000, R)]))


def test_a_batch_naming_a_page_seen_before_is_refused_naming_it():
    with pytest.raises(StreamError, match="page 0x00805000 appears twice"):
        decode(zero(0x805000, RW), batch([(0x804000, RW), (0x805000, RW)]))
    with pytest.raises(StreamError, match="page 0x00802000 appears twice"):
        decode(batch([(0x801000, RW), (0x802000, RW)]), zero(0x802000, R))


def test_the_encoder_refuses_a_page_twice_in_a_batch_naming_it():
    enc = StreamEncoder()
    enc.start({"pages": 3})
    with pytest.raises(StreamError, match="page 0x00a01000 written twice"):
        enc.batch([0xA00000, 0xA01000, 0xA01000], [RW] * 3, [bytes(4096)] * 3)


def test_a_header_of_64_kib_is_the_largest():
    def fields(size):
        pad = size - len(msgpack.packb({"pages": 0, "pad": ""}, use_bin_type=True))
        f = {"pages": 0, "pad": "x" * (pad - 2)}   # a str over 31 bytes costs 2 more
        assert len(msgpack.packb(f, use_bin_type=True)) == size
        return f

    StreamEncoder().start(fields(64 << 10))
    with pytest.raises(StreamError, match=f"header of {(64 << 10) + 1} bytes exceeds 65536"):
        StreamEncoder().start(fields((64 << 10) + 1))

    def decoder_given(size: int) -> StreamDecoder:
        dec = StreamDecoder()
        body = msgpack.packb(fields(size), use_bin_type=True)
        dec.receive_data(MAGIC + b"H" + struct.pack(">I", len(body)) + body)
        return dec

    assert decoder_given(64 << 10).next_event().fields["pages"] == 0
    with pytest.raises(StreamError, match="has length 65537, expected at most 65536"):
        decoder_given((64 << 10) + 1).next_event()


def test_a_stream_may_announce_every_user_page_and_no_more():
    # 0xEEC00 pages: all of them below UTOP.
    assert len(decode(pages=0xEEC00)) == 1
    with pytest.raises(StreamError, match="announces 977921 pages; at most 977920 fit"):
        decode(pages=0xEEC01)
    assert len(decode(run(0, 0xEEC00, R), pages=0xEEC00)) == 2


def test_a_full_copy_refuses_remote_pages_and_takes_every_other_record():
    for rec in (remote(0x800000, RW), run(0x800000, 2, RW)):
        with pytest.raises(StreamError, match="holds remote pages \\(at 0x00800000\\)"):
            decode(rec, allow_remote=False)
    events = decode(zero(0x800000, RW), batch([(0x801000, R)]), allow_remote=False)
    assert [type(e).__name__ for e in events] == ["Header", "Page", "Batch"]


@pytest.mark.parametrize("pages", ["5", 5.0, True, None, -1, [5]])
def test_a_header_must_announce_a_whole_number_of_pages(pages):
    dec = StreamDecoder()
    body = msgpack.packb({"pages": pages}, use_bin_type=True)
    dec.receive_data(MAGIC + b"H" + struct.pack(">I", len(body)) + body)
    with pytest.raises(StreamError, match=re.escape(f"header announces {pages!r} pages")):
        dec.next_event()


@pytest.mark.parametrize("n", [0, 257])
def test_a_batch_of_a_bad_size_is_refused_from_its_9_byte_head(n):
    dec = StreamDecoder()
    dec.receive_data(MAGIC + header(64) + b"B" + struct.pack(">II", 4 + n * 4106, n))
    assert isinstance(dec.next_event(), pstream.Header)
    with pytest.raises(StreamError, match=f"batch record of {n} pages has length {4 + n * 4106}; "
                                          "a batch holds 1..256 pages of 4106 bytes each"):
        dec.next_event()


# -- page batches from the page server (decode_pages) ---------------------------------

def test_a_page_batch_holds_page_and_zero_records_only():
    for rec in (remote(0x800000, RW), run(0x800000, 1, RW), b"Z" + struct.pack(">IIHB", 7, 0x800000, RW, 0)):
        with pytest.raises(StreamError, match=f"bad record {rec[:1]!r} \\(length"):
            pstream.decode_pages(rec)


def test_a_record_head_with_nothing_after_it_is_named_for_its_tag():
    with pytest.raises(StreamError, match="bad record b'X' \\(length 6\\)"):
        pstream.decode_pages(b"X" + struct.pack(">I", 6))
    with pytest.raises(StreamError, match="truncated page record"):
        pstream.decode_pages(b"Z" + struct.pack(">I", 6))


@pytest.mark.parametrize("cut", [1, 4, 5, 8, 10])
def test_a_truncated_zero_record_is_refused(cut):
    rec = zero(0x800000, RW)
    assert pstream.decode_pages(rec)[0].zero
    with pytest.raises(StreamError, match="truncated page record"):
        pstream.decode_pages(rec + rec[:cut])


def test_a_stream_is_judged_on_its_8_byte_magic_alone():
    dec = StreamDecoder()
    dec.receive_data(b"NOTJMIG\x02")
    with pytest.raises(StreamError, match="bad magic"):
        dec.next_event()
    dec = StreamDecoder()
    dec.receive_data(b"JMIGPS\x00\x01")
    with pytest.raises(StreamError, match="version 1 is not supported"):
        dec.next_event()


def test_asking_for_the_next_event_before_giving_a_batch_a_sink_is_an_error():
    # A consumer that forgot sink() would otherwise wait for data forever.
    dec = StreamDecoder()
    dec.receive_data(MAGIC + header(2) + batch([(0x801000, RW), (0x802000, RW)]))
    assert isinstance(dec.next_event(), pstream.Header)
    assert isinstance(dec.next_event(), pstream.Batch)
    with pytest.raises(StreamError, match="arrived with nowhere to go"):
        dec.next_event()
    dec.sink(None)                                  # given one, the pages go there
    assert dec.next_event() is pstream.NEED_DATA    # (the trailer has not come)


@pytest.mark.parametrize("kind", ["zero", "remote"])
def test_a_single_page_record_beyond_the_announced_count_is_refused_at_once(kind):
    # Not at the trailer: a stream announcing 1 page could otherwise name
    # thousands, each one installed before the count is checked.
    record = RECORDS[kind]
    dec = StreamDecoder()
    dec.receive_data(MAGIC + header(1) + record(0x801000, RW) + record(0x802000, RW))
    assert isinstance(dec.next_event(), pstream.Header)
    dec.next_event()
    with pytest.raises(StreamError, match="more pages than the 1 the header announced"):
        dec.next_event()
    assert dec.pages == 1


def test_a_batch_entry_with_bad_chunk_numbers_is_named_wherever_it_is():
    good = [(0x801000 + (i << 12), RW) for i in range(3)]
    for at in (0, 1, 2):
        rec = bytearray(batch(good))
        seq_at = 9 + at * 10 + 6                  # the entry's 4 sequence bytes
        rec[seq_at:seq_at + 4] = b"\x01\x02\x04\x03"
        with pytest.raises(StreamError, match=f"page {good[at][0]:#010x}: chunk sequence"):
            decode(bytes(rec))


def test_a_run_that_ends_past_utop_is_refused_and_one_that_ends_at_it_accepted():
    with pytest.raises(StreamError, match="run of 2 pages at 0xeebff000 does not fit below UTOP"):
        decode(run(UTOP - 0x1000, 2, RW))
    assert len(decode(run(UTOP - 0x2000, 2, RW))) == 2
    enc = StreamEncoder()
    enc.start({"pages": 4})
    with pytest.raises(StreamError, match="does not fit below UTOP"):
        enc.remote_run(UTOP - 0x1000, 2, RW)


def test_the_encoder_refuses_pages_before_the_header_and_after_the_trailer():
    enc = StreamEncoder()
    with pytest.raises(StreamError, match="page outside the stream"):
        enc.zero(0x800000, RW)
    enc.start({"pages": 1})
    enc.zero(0x800000, RW)
    enc.trailer()
    for write in (lambda: enc.zero(0x801000, RW), lambda: enc.remote(0x801000, RW),
                  lambda: enc.remote_run(0x801000, 1, RW),
                  lambda: enc.batch([0x801000], [RW], [bytes(4096)])):
        with pytest.raises(StreamError, match="page outside the stream"):
            write()
    with pytest.raises(StreamError, match="trailer outside the stream"):
        enc.trailer()


def test_the_encoder_refuses_a_trailer_before_the_header():
    with pytest.raises(StreamError, match="trailer outside the stream"):
        StreamEncoder().trailer()


@pytest.mark.parametrize("size", [0, 4095, 4097])
def test_the_encoder_refuses_a_page_that_is_not_4096_bytes(size):
    enc = StreamEncoder()
    enc.start({"pages": 2})
    with pytest.raises(StreamError, match=f"a page of {size} bytes, not 4096"):
        enc.batch([0x800000, 0x801000], [RW, RW], [bytes(4096), bytes(size)])


def test_the_encoder_refuses_an_empty_batch():
    enc = StreamEncoder()
    enc.start({"pages": 1})
    with pytest.raises(StreamError, match="a batch holds 1..256 pages, not 0"):
        enc.batch([], [], [])


@pytest.mark.parametrize("at", range(7))
def test_a_stream_whose_magic_differs_in_any_byte_is_refused(at):
    bad = bytearray(MAGIC)
    bad[at] ^= 0x20
    dec = StreamDecoder()
    dec.receive_data(bytes(bad) + header(0))
    with pytest.raises(StreamError, match="not a jmig process stream"):
        dec.next_event()


def test_decode_pages_says_which_pages_travelled_as_zero_records():
    data = bytes(range(256)) * 16
    pages = pstream.decode_pages(pstream.encode_pages(
        [(0x800000, RW, data), (0x801000, RW, bytes(4096)), (0x802000, R, data)]))
    assert [(p.va, p.zero, p.data == data) for p in pages] == \
        [(0x800000, False, True), (0x801000, True, False), (0x802000, False, True)]


def test_the_encoder_refuses_a_run_over_a_page_it_wrote_before():
    enc = StreamEncoder()
    enc.start({"pages": 8})
    enc.zero(0x801000, RW)
    with pytest.raises(StreamError, match="run at 0x00800000 overlaps pages already written"):
        enc.remote_run(0x800000, 4, RW)


def test_a_run_of_no_pages_is_refused():
    with pytest.raises(StreamError, match="run of 0 pages at 0x00800000 does not fit"):
        decode(run(0x800000, 0, RW))
    enc = StreamEncoder()
    enc.start({"pages": 1})
    with pytest.raises(StreamError, match="run of 0 pages"):
        enc.remote_run(0x800000, 0, RW)


@pytest.mark.parametrize("vas,perms", [([0x800000], [RW, RW]), ([0x800000, 0x801000], [RW])],
                         ids=["vas-short", "perms-short"])
def test_the_encoder_refuses_a_batch_whose_lists_differ_in_length(vas, perms):
    enc = StreamEncoder()
    enc.start({"pages": 2})
    with pytest.raises(StreamError, match="a batch holds"):
        enc.batch(vas, perms, [bytes(4096)] * 2)


def test_a_long_stream_decoded_in_pieces_holds_a_bounded_buffer():
    # 48 MiB of pages fed 2 MiB at a time: the bytes already decoded are
    # dropped as it goes, so the decoder holds a few MiB, not the stream.
    n = 48 * 256
    enc = StreamEncoder()
    parts = [enc.start({"pages": n})]
    page = bytes(range(256)) * 16
    for first in range(0, n, 256):
        vas = [(0x100 + i) << 12 for i in range(first, first + 256)]
        parts += [bytes(x) for x in enc.batch(vas, [RW] * 256, [page] * 256)]
    parts.append(enc.trailer())
    stream = memoryview(b"".join(parts))
    dec = StreamDecoder()
    tracemalloc.start()
    try:
        for at in range(0, len(stream), 2 << 20):
            dec.receive_data(stream[at:at + (2 << 20)])
            while (e := dec.next_event()) is not pstream.NEED_DATA:
                if isinstance(e, pstream.Batch):
                    dec.sink(None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert dec.state == "done" and dec.trailer.pages == n
    assert peak < 12 << 20, f"the decoder held {peak >> 20} MiB for a 48 MiB stream"


def test_a_page_batch_record_whose_tag_and_length_disagree_is_refused():
    page = pstream.encode_pages([(0x800000, RW, bytes(range(256)) * 16)])
    as_zero = b"Z" + page[1:]                       # a ZERO tag with a PAGE's length
    with pytest.raises(StreamError, match="bad record b'Z' \\(length 4106\\)"):
        pstream.decode_pages(as_zero)
    short_page = b"P" + zero(0x800000, RW)[1:]      # a PAGE tag with a ZERO's length
    with pytest.raises(StreamError, match="bad record b'P' \\(length 6\\)"):
        pstream.decode_pages(short_page + page)


@pytest.mark.parametrize("n", [0, 4095, 4097])
def test_a_page_of_another_length_is_refused_when_encoded(n):
    with pytest.raises(StreamError, match=f"page 0x00800000: {n} bytes, not 4096"):
        pstream.encode_pages([(0x800000, RW, bytes(n))])
