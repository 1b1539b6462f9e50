"""The process stream (format 2): decoding then encoding any image
reproduces it byte for byte (images of real programs, zero pages included,
and streams that hypothesis makes up), whatever pieces the bytes arrive
in, and whether a batch's page data is fed as bytes or read straight into
the sink's buffers."""
import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jmig import programs
from jmig.kernel.kernel import Kernel
from jmig.kernel.memlayout import PGSIZE, PTE_AVAIL, PTE_P, PTE_U, PTE_W, UTOP
from jmig.kernel.snapshot import EnvHeader
from jmig.node.migration.stream import StreamWriter
from jmig.proto import pstream
from jmig.proto.pstream import (MAGIC, StreamDecoder, StreamEncoder, StreamError, decode_pages,
                                encode_pages)


def _pieces(data: bytes, sizes):
    pos = 0
    for n in sizes:
        if pos >= len(data):
            return
        yield data[pos:pos + n]
        pos += n
    if pos < len(data):
        yield data[pos:]


def reencode(data: bytes, sizes=(1 << 30,)) -> tuple[bytes, list]:
    """Decode `data` fed in pieces of the given sizes, re-encoding every
    event (a batch once its pages have arrived in the buffers it was given)."""
    dec, enc = StreamDecoder(), StreamEncoder()
    out, events, pending = [], [], None
    for piece in _pieces(data, sizes):
        dec.receive_data(piece)
        while True:
            if pending is not None and not dec.want:
                out.append(enc.encode_event(pending[0], b"".join(pending[1])))
                pending = None
            e = dec.next_event()
            if e is pstream.NEED_DATA:
                break
            events.append(e)
            if isinstance(e, pstream.Batch):
                bufs = [bytearray(PGSIZE) for _ in e.vas]
                dec.sink(bufs)
                pending = (e, bufs)
                continue
            out.append(enc.encode_event(e))
    assert dec.state == "done" and pending is None
    return b"".join(out), events


def reencode_zero_copy(data: bytes, sizes) -> bytes:
    """As reencode(), but a batch's page data goes straight into its buffers
    (data_views and filled, the path a node's restorer takes from a socket
    or file), the rest fed as bytes in pieces of the given sizes."""
    dec, enc = StreamDecoder(), StreamEncoder()
    out, pending, pos = [], None, 0
    sizes = list(sizes)
    while pos < len(data) or pending is not None:
        if dec.want:
            view = dec.data_views()[0]
            n = min(len(view), len(data) - pos, sizes.pop(0) if sizes else 1 << 30)
            view[:n] = data[pos:pos + n]
            pos += n
            dec.filled(n)
        else:
            n = sizes.pop(0) if sizes else 1 << 30
            dec.receive_data(data[pos:pos + n])
            pos += n
        while True:
            if pending is not None and not dec.want:
                out.append(enc.encode_event(pending[0], b"".join(pending[1])))
                pending = None
            e = dec.next_event()
            if e is pstream.NEED_DATA:
                break
            if isinstance(e, pstream.Batch):
                bufs = [bytearray(PGSIZE) for _ in e.vas]
                dec.sink(bufs)
                pending = (e, bufs)
                break
            out.append(enc.encode_event(e))
        if pos >= len(data) and pending is None and dec.state == "done":
            break
    assert dec.state == "done"
    return b"".join(out)


def _decoded_pages(data: bytes) -> dict[int, tuple[int, bytes, bool]]:
    """va -> (perm, contents, travelled as a ZERO record) of a stream."""
    dec = StreamDecoder()
    dec.receive_data(data)
    pages = {}
    while (e := dec.next_event()) is not pstream.NEED_DATA:
        if isinstance(e, pstream.Batch):
            bufs = [bytearray(PGSIZE) for _ in e.vas]
            dec.sink(bufs)
            for va, perm, b in zip(e.vas, e.perms, bufs):
                pages[va] = (perm, b, False)
        elif isinstance(e, pstream.Page):
            pages[e.va] = (e.perm, e.data, e.zero)
    assert dec.state == "done"
    return {va: (perm, bytes(b), z) for va, (perm, b, z) in pages.items()}


def program_image(argv, until=None, instructions=0, remote=False, method="image") -> bytes:
    """Run a bundled program until its console shows `until` (or for a number
    of instructions), pause it, and serialize it as `jmigctl save` does."""
    k = Kernel(memory=16 << 20, clock=lambda: time.monotonic() * 1000.0)
    e = k.env_create(programs.load(argv[0]), argv, name=argv[0])
    out, ran = "", 0
    while (until is not None and until not in out) or ran < instructions:
        ran += k.run(20_000).executed or 20_000
        for x in k.take_events():
            out += getattr(x, "text", "")
        assert ran < 200_000_000, f"{argv} never printed {until!r}"
    if not e.paused:
        k.pause(e.env_id)
    w = StreamWriter(k, e.env_id, "test-node", method, remote=remote)
    return b"".join(bytes(p) for parts in w.parts() for p in parts)


IMAGES = {
    "hello-paused-early": (["hello"], None, 0, False),
    "sleeper-sleeping": (["sleeper"], None, 20_000, False),
    "loop-counting": (["loop", "1"], "Counter: 3", 0, False),
    "memtest-8-pages": (["memtest", "8", "3"], "pass 2 ok", 0, False),
    "forktree-forking": (["forktree"], None, 100_000, False),
    "primes-sieving": (["primes"], None, 100_000, False),
    "cowstress-copy-on-write": (["cowstress"], None, 100_000, False),
    "pingpong": (["pingpong"], None, 20_000, False),
    "faultalloc-paused-early": (["faultalloc"], None, 0, False),
    "memtest-pgfault-ptes": (["memtest", "8"], "pass 1 ok", 0, True),
}


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    return {name: program_image(argv, until, n, remote, "pgfault" if remote else "image")
            for name, (argv, until, n, remote) in IMAGES.items()}


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_decode_encode_reproduces_program_image_byte_for_byte(images, name):
    data = images[name]
    again, events = reencode(data)
    assert again == data
    assert isinstance(events[0], pstream.Header) and isinstance(events[-1], pstream.Trailer)
    # Whatever pieces the bytes come in (one byte at a time, odd sizes).
    sizes = [1] * 300 + [7, 4111, 3, 5000, 1, 2] * 50
    assert reencode(data, sizes)[0] == data
    assert reencode_zero_copy(data, [1 << 30]) == data
    assert reencode_zero_copy(data, sizes) == data


def test_program_images_include_zero_page_records(images):
    """memtest's .bss generation table is mostly zeros: ZERO records."""
    kinds = {}
    for name, data in images.items():
        _, events = reencode(data)
        kinds[name] = {"zero" if isinstance(e, pstream.Page) else type(e).__name__
                       for e in events[1:-1]}
    assert "zero" in kinds["memtest-8-pages"]
    assert "Batch" in kinds["memtest-8-pages"]
    assert kinds["memtest-pgfault-ptes"] <= {"Remote", "RemoteRun"}     # entries only


def test_reencoded_image_changed_by_one_byte_is_refused(images):
    """The round trip is exact, so a changed byte cannot survive it."""
    data = bytearray(images["hello-paused-early"])
    data[len(data) // 2] ^= 0x40
    with pytest.raises(StreamError):
        reencode(bytes(data))


# -- made-up streams ---------------------------------------------------------------------

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 63), (1 << 64) - 1),
                     st.floats(allow_nan=False), _text, st.binary(max_size=40))
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(_text, inner, max_size=4)), max_leaves=12)
_headers = st.dictionaries(st.one_of(_text, st.integers(-1000, 1000)), _values, max_size=12)
_perms = st.builds(lambda w, avail: PTE_U | PTE_P | (PTE_W if w else 0) | (avail & PTE_AVAIL),
                   st.booleans(), st.integers(0, 0xFFF))


def _contents(kind: str, seed: int) -> bytes:
    rnd = random.Random(seed)
    if kind == "zeros":
        return bytes(PGSIZE)
    if kind == "sparse":
        b = bytearray(PGSIZE)
        for _ in range(rnd.randint(1, 5)):
            b[rnd.randrange(PGSIZE)] = rnd.randint(1, 255)
        return bytes(b)
    return rnd.randbytes(PGSIZE)


# Records: (vpn, perm, record kind, contents kind, seed, count).  Record
# kinds: a BATCH of count pages (whatever their contents, zeros too), ZERO,
# REMOTE, RUN (count consecutive remote pages).  Address ranges never
# overlap; their order in the stream is shuffled.
_items = st.lists(
    st.tuples(st.integers(0, 5000), _perms,
              st.sampled_from(["batch", "zero", "remote", "run"]),
              st.sampled_from(["zeros", "sparse", "random"]), st.integers(0, 1 << 30),
              st.integers(1, 3000)),
    max_size=12)


@st.composite
def _records(draw):
    out, vpn = [], draw(st.integers(0, 1 << 16))
    for gap, perm, kind, contents, seed, count in draw(_items):
        vpn += gap
        count = count if kind == "run" else min(count, 20) if kind == "batch" else 1
        if vpn + count > UTOP >> 12:
            break
        out.append((vpn, perm, kind, contents, seed, count))
        vpn += count
    return draw(st.permutations(out))


def _with_pages(header: dict, records) -> dict:
    """The header a decoder accepts: it must announce how many pages follow."""
    h = {k: v for k, v in header.items() if k != "pages"}
    h["pages"] = sum(r[5] for r in records)
    return h


def _encode(header: dict, records) -> bytes:
    enc = StreamEncoder()
    out = [enc.start(header)]
    for vpn, perm, kind, contents, seed, count in records:
        if kind == "remote":
            out.append(enc.remote(vpn << 12, perm))
        elif kind == "run":
            out.append(enc.remote_run(vpn << 12, count, perm))
        elif kind == "zero":
            out.append(enc.zero(vpn << 12, perm))
        else:
            out += enc.batch([(vpn + i) << 12 for i in range(count)], [perm] * count,
                             [_contents(contents, seed + i) for i in range(count)])
    out.append(enc.trailer())
    return b"".join(bytes(x) for x in out)


@settings(max_examples=150, deadline=None)
@given(header=_headers, records=_records(),
       sizes=st.lists(st.integers(1, 9000), min_size=1, max_size=20))
def test_decode_encode_reproduces_generated_streams_byte_for_byte(header, records, sizes):
    header = _with_pages(header, records)
    data = _encode(header, records)
    again, events = reencode(data, sizes)
    assert again == data
    assert reencode_zero_copy(data, sizes) == data
    assert events[0].fields == header and list(events[0].fields) == list(header)
    body = events[1:-1]
    assert len(body) == len(records)
    for e, (vpn, perm, kind, contents, seed, count) in zip(body, records):
        if kind == "batch":
            assert isinstance(e, pstream.Batch)
            assert e.vas == [(vpn + i) << 12 for i in range(count)] and e.perms == [perm] * count
            continue
        assert (e.va, e.perm) == (vpn << 12, perm)
        if kind == "remote":
            assert isinstance(e, pstream.Remote)
        elif kind == "run":
            assert isinstance(e, pstream.RemoteRun) and e.count == count
        else:
            assert e.zero and e.data == pstream.ZERO_PAGE
    assert events[-1].pages == sum(r[5] for r in records)
    assert events[-1].nbytes == len(data) - 21


@settings(max_examples=60, deadline=None)
@given(header=_headers, records=_records())
def test_a_batch_fills_the_sink_with_exactly_the_pages_sent(header, records):
    header = _with_pages(header, records)
    got = {va: c for va, (_, c, _) in _decoded_pages(_encode(header, records)).items()}
    for vpn, perm, kind, contents, seed, count in records:
        if kind == "batch":
            for i in range(count):
                assert got[(vpn + i) << 12] == _contents(contents, seed + i)


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_node_decode_path_reencodes_program_image_byte_for_byte(images, name):
    data = images[name]
    assert reencode_zero_copy(data, [1 << 30]) == data
    assert reencode_zero_copy(data, [3, 4111, 1, 9000] * 20) == data


@settings(max_examples=60, deadline=None)
@given(header=_headers, records=_records(), data=st.data())
def test_any_truncation_of_a_generated_stream_is_incomplete_or_refused(header, records, data):
    full = _encode(_with_pages(header, records), records)
    cut = data.draw(st.integers(0, len(full) - 1))
    dec = StreamDecoder()
    try:
        dec.receive_data(full[:cut])
        list(dec.events())
    except StreamError:
        return
    assert dec.state != "done"


@settings(max_examples=100, deadline=None)
@given(records=_records())
def test_page_batches_decode_to_what_was_encoded(records):
    pages = [(vpn << 12, perm, _contents(c, seed)) for vpn, perm, _, c, seed, _ in records]
    got = decode_pages(encode_pages(pages))
    assert [(p.va, p.perm, p.data) for p in got] == pages


def test_magic_carries_the_format_version():
    assert MAGIC == b"JMIGPS\x00\x02"


def test_a_version_1_image_is_refused_saying_where_it_comes_from():
    dec = StreamDecoder()
    dec.receive_data(b"JMIGPS\x00\x01" + bytes(20))
    with pytest.raises(StreamError, match="version 1 is not supported.*older jmig"):
        list(dec.events())


def test_a_batch_entry_with_wrong_chunk_numbers_is_refused_before_its_data():
    enc = StreamEncoder()
    data = bytearray(enc.start({"pages": 1}) + b"".join(bytes(x) for x in enc.batch(
        [0x800000], [PTE_U | PTE_P], [bytes(PGSIZE)])))
    head = data.index(b"B\x00\x00\x10")
    data[head + 9 + 6 + 2] = 7                       # SEQ 3 -> 7
    dec = StreamDecoder()
    dec.receive_data(bytes(data[:head + 9 + 10]))    # the entry, none of the data
    with pytest.raises(StreamError, match="chunk sequence numbers are not 1, 2, 3, 4"):
        list(dec.events())


def test_pages_given_for_a_batch_must_match_it():
    enc = StreamEncoder()
    data = enc.start({"pages": 2}) + b"".join(bytes(x) for x in enc.batch(
        [0x800000, 0x801000], [PTE_U | PTE_P] * 2, [bytes(PGSIZE)] * 2))
    dec = StreamDecoder()
    dec.receive_data(data)
    events = [dec.next_event(), dec.next_event()]
    assert isinstance(events[1], pstream.Batch)
    with pytest.raises(StreamError, match="1 pages given for 2"):
        dec.sink([bytearray(PGSIZE)])


def test_a_header_announcing_more_pages_than_fit_is_refused_before_any_page():
    enc = StreamEncoder()
    data = enc.start({"pages": 1000}) + enc.remote_run(0x800000, 1000, PTE_U | PTE_P)
    dec = StreamDecoder(max_pages=100)
    dec.receive_data(data)
    with pytest.raises(StreamError, match="announces 1000 pages; at most 100"):
        list(dec.events())


def test_records_beyond_the_announced_page_count_are_refused():
    enc = StreamEncoder()
    data = enc.start({"pages": 5}) + enc.remote_run(0x800000, 6, PTE_U | PTE_P)
    dec = StreamDecoder()
    dec.receive_data(data)
    with pytest.raises(StreamError, match="more pages than the 5"):
        list(dec.events())


@pytest.mark.parametrize("before", [0, 1, 3], ids=["first", "after-1-zero", "after-3-zero"])
def test_a_batch_one_page_beyond_the_announced_count_is_refused_before_its_data(before):
    # header {pages: before + 2}; `before` ZERO records; then a BATCH of 3:
    # one page more than announced.  Its head alone is enough to refuse it.
    enc = StreamEncoder()
    vas = [0x800000 + (i << 12) for i in range(3)]
    head = enc.start({"pages": before + 2}) + b"".join(
        enc.zero(0x700000 + (i << 12), PTE_U | PTE_P) for i in range(before))
    batch = b"".join(bytes(x) for x in enc.batch(vas, [PTE_U | PTE_P] * 3, [bytes(PGSIZE)] * 3))
    dec = StreamDecoder()
    dec.receive_data(head + batch[:9 + 3 * 10])
    with pytest.raises(StreamError, match=f"more pages than the {before + 2} the header announced"):
        list(dec.events())
    assert dec.pages == before


@pytest.mark.parametrize("before", [0, 1, 3], ids=["first", "after-1-zero", "after-3-zero"])
def test_a_batch_that_ends_exactly_at_the_announced_count_is_accepted(before):
    enc = StreamEncoder()
    vas = [0x800000 + (i << 12) for i in range(3)]
    data = enc.start({"pages": before + 3}) + b"".join(
        enc.zero(0x700000 + (i << 12), PTE_U | PTE_P) for i in range(before))
    data += b"".join(bytes(x) for x in enc.batch(vas, [PTE_U | PTE_P] * 3, [bytes(PGSIZE)] * 3))
    data += enc.trailer()
    dec = StreamDecoder()
    dec.receive_data(data)
    events = list(dec.events())
    assert isinstance(events[-1], pstream.Trailer) and events[-1].pages == before + 3


def test_a_stream_of_several_mib_fed_in_small_pieces_decodes_every_page():
    # receive_data drops what it has decoded once more than 1 MiB of it is
    # buffered: the pages after that point must still arrive intact.
    vas = [0x800000 + (i << 12) for i in range(600)]
    pages = [bytes([i % 251 + 1]) * PGSIZE for i in range(600)]
    enc = StreamEncoder()
    data = enc.start({"pages": 600})
    for k in range(0, 600, 256):
        n = len(vas[k:k + 256])
        data += b"".join(bytes(x) for x in enc.batch(vas[k:k + n], [PTE_U | PTE_P] * n,
                                                     pages[k:k + n]))
    data += enc.trailer()
    dec = StreamDecoder()
    got = {}
    for off in range(0, len(data), 65536):
        dec.receive_data(data[off:off + 65536])
        while (e := dec.next_event()) is not pstream.NEED_DATA:
            if isinstance(e, pstream.Batch):
                bufs = [bytearray(PGSIZE) for _ in e.vas]
                dec.sink(bufs)
                got.update(zip(e.vas, bufs))
    assert dec.state == "done" and dec.trailer.pages == 600
    assert [bytes(got[va]) for va in vas] == pages


def _env_header(**kw):
    base = dict(envid=0x1001, parent_id=0, name="", status=2, runs=0, regs=(0,) * 8, eip=0,
                eflags=0, trapno=0, err=0, pgfault_upcall=0, ipc_recving=0, ipc_dstva=0,
                ipc_value=0, ipc_from=0, ipc_perm=0, sleep_ms=None)
    return EnvHeader(**(base | kw))


@pytest.mark.parametrize("h", [
    _env_header(),                                                       # every field 0
    _env_header(envid=0xFFFFFFFF, parent_id=0xFFFFFFFF, name="n" * 64, status=4,
                runs=0xFFFFFFFF, regs=(0xFFFFFFFF,) * 8, eip=0xFFFFFFFF, eflags=0xFFFFFFFF,
                trapno=0xFFFFFFFF, err=0xFFFFFFFF, pgfault_upcall=0xFFFFFFFF,
                ipc_recving=0xFFFFFFFF, ipc_dstva=0xFFFFFFFF, ipc_value=0xFFFFFFFF,
                ipc_from=0xFFFFFFFF, ipc_perm=0xFFFFFFFF, sleep_ms=0),
    _env_header(envid=0x1002, parent_id=0x1001, name="loop", runs=7, regs=tuple(range(1, 9)),
                eip=0x800020, eflags=0x202, trapno=14, err=6, pgfault_upcall=0x801000,
                ipc_recving=1, ipc_dstva=0x5000, ipc_value=11, ipc_from=0x1003, ipc_perm=7,
                sleep_ms=250),
], ids=["zeros", "all-ones", "distinct"])
def test_env_header_reads_back_every_field_written_from_0_to_0xffffffff(h):
    fields = pstream.header_fields(h, node="a", jmig_version="0", pages=0, method="image")
    assert pstream.env_header(fields) == h


@pytest.mark.parametrize("field,value", [("runs", -1), ("eip", 1 << 32), ("err", True),
                                         ("ipc", [0, 0, 0, 0, 1 << 32])])
def test_env_header_refuses_a_field_outside_32_bits(field, value):
    fields = pstream.header_fields(_env_header(), node="a", jmig_version="0", pages=0,
                                   method="image")
    fields[field] = value
    with pytest.raises(StreamError):
        pstream.env_header(fields)


@pytest.mark.parametrize("field,value,message", [
    ("regs", [0] * 7, "'regs' is not a list of 8 registers"),
    ("regs", [0] * 9, "'regs' is not a list of 8 registers"),
    ("regs", 0, "'regs' is not a list of 8 registers"),
    ("regs", [0] * 7 + [1 << 32], "'regs\\[7\\]' is not a 32-bit unsigned integer"),
    ("regs", [-1] + [0] * 7, "'regs\\[0\\]' is not a 32-bit unsigned integer"),
    ("ipc", [0] * 4, "'ipc' is not a list of 5 values"),
    ("ipc", [0] * 6, "'ipc' is not a list of 5 values"),
    ("ipc", None, "'ipc' is not a list of 5 values"),
    *[("name", name, "'name' is not a short string") for name in ("n" * 65, 5, None, b"loop")],
])
def test_env_header_refuses_registers_ipc_and_name_of_the_wrong_shape(field, value, message):
    fields = pstream.header_fields(_env_header(), node="a", jmig_version="0", pages=0,
                                   method="image")
    fields[field] = value
    with pytest.raises(StreamError, match=message):
        pstream.env_header(fields)


@pytest.mark.parametrize("chunk", [0, 1, 2, 3])
def test_a_page_batch_with_one_chunk_number_wrong_is_refused(chunk):
    data = bytearray(encode_pages([(0x800000, PTE_U | PTE_P, bytes(range(256)) * 16)]))
    data[5 + 6 + chunk * 1025] = 9
    with pytest.raises(StreamError, match="chunk sequence numbers are not 1, 2, 3, 4"):
        decode_pages(bytes(data))


def test_a_record_of_unknown_tag_is_refused_from_its_5_byte_head():
    dec = StreamDecoder()
    dec.receive_data(StreamEncoder().start({"pages": 1}) + b"X\x00\x00\x00\x06")
    with pytest.raises(StreamError, match="unknown record tag b'X'"):
        list(dec.events())


def test_an_overlapping_run_is_refused_naming_its_address():
    enc, other = StreamEncoder(), StreamEncoder()     # an encoder refuses it too
    other.start({"pages": 5})
    data = (enc.start({"pages": 5}) + enc.remote_run(0x800000, 3, PTE_U | PTE_P)
            + other.remote_run(0x802000, 2, PTE_U | PTE_P))
    dec = StreamDecoder()
    dec.receive_data(data)
    with pytest.raises(StreamError, match="run at 0x00802000 overlaps"):
        list(dec.events())


_PAGE_KINDS = ["zeros", "sparse", "random", "first word zero", "last byte"]


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 800), seed=st.integers(0, 1 << 30), lag=st.booleans())
def test_the_writer_sends_every_page_as_it_is_and_only_all_zero_pages_as_zero(n, seed, lag):
    """StreamWriter gathers each batch's frames into one of two buffers and
    sends a page as a ZERO record only when all 4096 bytes are zero (a
    zero first word, or a single nonzero last byte, is data).  With lag,
    each batch's bytes are taken only after the next batch was built, as a
    link still writing one batch while the next is made would see them."""
    rnd = random.Random(seed)
    kinds = [(rnd.choice(_PAGE_KINDS), rnd.randrange(1 << 30)) for _ in range(n)]
    k = Kernel(memory=16 << 20)
    e = k.env_create(programs.load("hello"), ["hello"], name="hello")
    k.pause(e.env_id)
    base = 0x10000000
    want = {}
    for i, (kind, page_seed) in enumerate(kinds):
        if kind == "first word zero":
            b = bytearray(random.Random(page_seed).randbytes(PGSIZE))
            b[:8] = bytes(8)
        elif kind == "last byte":
            b = bytearray(PGSIZE)
            b[-1] = 1 + page_seed % 255
        else:
            b = _contents(kind, page_seed)
        va = base + i * PGSIZE
        k.restore_page(k.get_env(e.env_id), va, PTE_U | PTE_W | PTE_P, bytes(b))
        want[va] = bytes(b)
    w = StreamWriter(k, e.env_id, "test-node", "image")
    out, held = [], []
    for parts in w.parts():
        held.append(parts)
        if len(held) > lag:                  # with lag, one batch stays unread
            out.append(b"".join(bytes(p) for p in held.pop(0)))
    out += [b"".join(bytes(p) for p in parts) for parts in held]
    got = _decoded_pages(b"".join(out))
    for va, data in want.items():
        perm, contents, zero = got[va]
        assert contents == data, f"page {va:#x} differs"
        assert zero == (data == bytes(PGSIZE)), f"page {va:#x}: ZERO record {zero}"
        assert perm == PTE_U | PTE_W | PTE_P
