"""Process images on disk (proto/image.py): the scan behind `jmigctl image
inspect|verify` and a node's load -- its page ranges, and the images and
files it refuses."""
import os

import pytest

from jmig.kernel.snapshot import EnvHeader
from jmig.proto import image, pstream
from jmig.proto.image import ImageScan, max_image_bytes, read_chunks, scan_file
from jmig.proto.pstream import StreamEncoder, StreamError

RW, RO = 7, 5                            # PTE_U|PTE_W|PTE_P, PTE_U|PTE_P
HEADER = EnvHeader(envid=4096, parent_id=0, name="x", status=2, runs=0, regs=(0,) * 8,
                   eip=0x800020, eflags=0x202, trapno=0, err=0, pgfault_upcall=0,
                   ipc_recving=0, ipc_dstva=0, ipc_value=0, ipc_from=0, ipc_perm=0,
                   sleep_ms=None)


def page(b: int) -> bytes:
    return bytes([b]) * 4096


def build(records, pages: int | None = None, trailer=True) -> bytes:
    """An image: records are ("data", [(va, perm), ...]) batches, ("zero", va, perm)
    and ("remote", va, perm)."""
    enc = StreamEncoder()
    n = pages if pages is not None else sum(len(r[1]) if r[0] == "data" else 1 for r in records)
    out = [enc.start(pstream.header_fields(HEADER, node="n", jmig_version="0", pages=n,
                                           method="image"))]
    for r in records:
        if r[0] == "data":
            vas, perms = zip(*r[1])
            out += [bytes(x) for x in enc.batch(list(vas), list(perms),
                                                [page(i + 1) for i in range(len(vas))])]
        elif r[0] == "zero":
            out.append(enc.zero(r[1], r[2]))
        else:
            out.append(enc.remote(r[1], r[2]))
    if trailer:
        out.append(enc.trailer())
    return b"".join(out)


def scan(data: bytes, pieces: int = 1) -> ImageScan:
    s = ImageScan()
    step = max(1, len(data) // pieces)
    for i in range(0, len(data), step):
        s.feed(data[i:i + step])
    s.finish()
    return s


def ranges(s: ImageScan) -> list[tuple]:
    return [(r["start"], r["end"], r["perm"], r["kind"], r["pages"]) for r in s.ranges]


def test_consecutive_pages_alike_make_one_range():
    data = build([("data", [(0x800000, RW), (0x801000, RW)]), ("data", [(0x802000, RW)]),
                  ("zero", 0x900000, RW), ("zero", 0x901000, RW)])
    s = scan(data, pieces=7)
    assert ranges(s) == [(0x800000, 0x803000, RW, "data", 3), (0x900000, 0x902000, RW, "zero", 2)]
    assert s.pages == 5
    assert s.header["envid"] == 4096 and s.trailer.pages == 5


def test_a_gap_a_permission_or_a_kind_starts_a_new_range():
    data = build([("data", [(0x800000, RW), (0x802000, RW), (0x803000, RO)]),
                  ("zero", 0x804000, RO), ("data", [(0x805000, RO)])])
    assert ranges(scan(data)) == [
        (0x800000, 0x801000, RW, "data", 1), (0x802000, 0x803000, RW, "data", 1),
        (0x803000, 0x804000, RO, "data", 1), (0x804000, 0x805000, RO, "zero", 1),
        (0x805000, 0x806000, RO, "data", 1)]


def test_an_image_holds_every_page_remote_ones_are_refused():
    with pytest.raises(StreamError):
        scan(build([("remote", 0x800000, RW)]))


def test_an_image_with_a_bad_header_is_refused():
    # The env header is checked as a node's load would (pstream.env_header).
    enc = StreamEncoder()
    fields = pstream.header_fields(HEADER, node="n", jmig_version="0", pages=0, method="image")
    del fields["eip"]
    with pytest.raises(StreamError):
        scan(enc.start(fields) + enc.trailer())


def test_a_truncated_image_is_refused_saying_where_it_ends():
    with pytest.raises(StreamError, match="shorter than the magic number"):
        scan(b"")
    with pytest.raises(StreamError, match="shorter than the magic number"):
        scan(pstream.MAGIC[:5])
    whole = build([("zero", 0x800000, RW)])
    with pytest.raises(StreamError, match="ends before its trailer"):
        scan(build([("zero", 0x800000, RW)], trailer=False))
    with pytest.raises(StreamError, match="ends before its trailer"):
        scan(whole[:-1])
    assert scan(whole).pages == 1


def test_what_was_read_stays_readable_after_a_refusal():
    s = ImageScan()
    s.feed(build([("zero", 0x800000, RW)], trailer=False))
    with pytest.raises(StreamError):
        s.finish()
    assert s.header["envid"] == 4096 and s.trailer is None and s.pages == 1


def test_a_scan_allows_max_pages_and_no_more():
    data = build([("data", [(0x800000 + i * 4096, RW) for i in range(3)])])
    s = ImageScan(max_pages=3)
    s.feed(data)
    s.finish()
    with pytest.raises(StreamError):
        ImageScan(max_pages=2).feed(data)


# -- files ----------------------------------------------------------------------------

def test_the_size_limit_is_the_worst_image_one_page_a_batch_plus_a_mib():
    # A one-page batch: tag, length, count (9 bytes), one entry (10), the page.
    for n in (0, 1, 300):
        assert max_image_bytes(n) == n * (9 + 10 + 4096) + (1 << 20)
    worst = build([("data", [(0x800000 + i * 4096, RW)]) for i in range(40)])
    assert len(worst) <= max_image_bytes(40) < len(worst) + (1 << 20)


def test_scan_file_reads_an_image_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(image, "READ_CHUNK", 5000)
    data = build([("data", [(0x800000 + i * 4096, RW) for i in range(4)]),
                  ("zero", 0x900000, RO)])
    (tmp_path / "img").write_bytes(data)
    s = scan_file(tmp_path / "img")
    assert s.pages == 5 and ranges(s)[1] == (0x900000, 0x901000, RO, "zero", 1)


def test_a_file_over_the_limit_is_refused_before_it_is_read(tmp_path):
    f = tmp_path / "big"
    f.write_bytes(bytes(101))
    with pytest.raises(StreamError, match="file is 101 bytes; no image that fits here can "
                                          "exceed 100"):
        next(read_chunks(f, 100))
    assert b"".join(read_chunks(f, 101)) == bytes(101)


def test_a_file_that_grows_while_read_is_refused(tmp_path, monkeypatch):
    f = tmp_path / "growing"
    f.write_bytes(bytes(150))
    real = os.fstat

    class Small:                          # the size when opened; then it grew
        def __init__(self, st):
            self.st_size = 100

    monkeypatch.setattr(image.os, "fstat", lambda fd: Small(real(fd)))
    monkeypatch.setattr(image, "READ_CHUNK", 60)
    got = []
    with pytest.raises(StreamError, match="grew past 100 bytes"):
        for chunk in read_chunks(f, 100):
            got.append(chunk)
    assert sum(map(len, got)) == 60
    assert b"".join(read_chunks(f, 150)) == bytes(150)
    f.write_bytes(bytes(101))             # one byte past the limit is too many
    with pytest.raises(StreamError, match="grew past 100 bytes"):
        list(read_chunks(f, 100))
