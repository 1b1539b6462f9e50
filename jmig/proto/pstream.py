"""The process stream: one env, serialized.  Save writes it to a file, load
reads it back, and normal migration sends the same bytes over TCP.

Grammar (docs/process-stream.md has the full description):

    STREAM   ::= MAGIC HEADER { PAGE | ZERO | REMOTE | RUN } TRAILER
    MAGIC    ::= "JMIGPS" 0x00 VERSION                       8 bytes, VERSION = 1
    RECORD   ::= TAG(1 byte) LENGTH(u32 big-endian) BODY[LENGTH]
    HEADER   ::= 'H' LENGTH msgpack-map                        LENGTH <= 64 KiB
    PAGE     ::= 'P' 4106 VA(u32) PERM(u16) CHUNK{4}
    CHUNK    ::= SEQ(u8, 1..4 in order) DATA[1024]
    ZERO     ::= 'Z' 6 VA(u32) PERM(u16)                      an all-zero page
    REMOTE   ::= 'R' 6 VA(u32) PERM(u16)                      present, contents elsewhere
    RUN      ::= 'M' 10 VA(u32) COUNT(u32) PERM(u16)          COUNT consecutive REMOTE pages
    TRAILER  ::= 'T' 16 PAGES(u32) BYTES(u64) CRC32(u32)

Integers in record bodies are big-endian.  VA is page-aligned and below
UTOP; PERM lies within PTE_SYSCALL and includes PTE_U|PTE_P; no VA appears
twice.  PAGES counts the pages of PAGE, ZERO, REMOTE and RUN records; BYTES and CRC32
(zlib's) cover every byte before the trailer record, magic included.

Sans-I/O: StreamEncoder returns bytes; StreamDecoder takes bytes
(receive_data) and yields events (next_event) or NEED_DATA, raising
StreamError with a message naming what is wrong.  Decoding then encoding
an image reproduces it byte for byte.
"""
from __future__ import annotations

import struct
import zlib

import attrs
import msgpack

from ..errors import Error
from ..kernel.snapshot import EnvHeader
from ..kernel.memlayout import CHUNK, PGSIZE, PTE_P, PTE_SYSCALL, PTE_U, UTOP

FORMAT_VERSION = 1
MAGIC = b"JMIGPS\x00" + bytes([FORMAT_VERSION])
MAX_HEADER = 64 * 1024
PAGE_BODY = 6 + 4 * (1 + CHUNK)          # 4106
SMALL_BODY = 6
TRAILER_BODY = 16
RUN_BODY = 10
MAX_RUN = (UTOP >> 12)
NEED_DATA = object()

_REC = struct.Struct(">cI")
_VAPERM = struct.Struct(">IH")
_PAGE_HEAD = struct.Struct(">cIIHB")          # tag, length, va, perm, seq 1
_SMALL_REC = struct.Struct(">cIIH")           # tag, length, va, perm
_RUN = struct.Struct(">IIH")                  # va, count, perm
_TRAILER = struct.Struct(">IQI")
ZERO_PAGE = bytes(PGSIZE)
_ONES = memoryview(b"\x01" * MAX_RUN)     # marks a run of pages seen

TAG_HEADER, TAG_PAGE, TAG_ZERO, TAG_REMOTE, TAG_TRAILER = b"H", b"P", b"Z", b"R", b"T"
TAG_RUN = b"M"


class StreamError(Error):
    """The stream is malformed, truncated or corrupt."""
    code = "bad-stream"


@attrs.frozen
class Header:
    fields: dict                     # the msgpack map, in its original key order


@attrs.frozen
class Page:
    va: int
    perm: int
    data: bytes                      # 4096 bytes
    zero: bool = False               # travelled as a ZERO record


@attrs.frozen
class Remote:
    va: int
    perm: int


@attrs.frozen
class RemoteRun:
    va: int
    count: int
    perm: int


@attrs.frozen
class Trailer:
    pages: int
    nbytes: int
    crc: int


def check_page(va: int, perm: int) -> None:
    if va % PGSIZE or va >= UTOP:
        raise StreamError(f"page address {va:#010x} is not page-aligned below UTOP")
    if perm & ~PTE_SYSCALL or perm & (PTE_U | PTE_P) != PTE_U | PTE_P:
        raise StreamError(f"page {va:#010x}: permissions {perm:#x} are not within PTE_SYSCALL "
                          "with PTE_U|PTE_P")


def _check_run(va: int, count: int, perm: int) -> None:
    check_page(va, perm)
    if not 1 <= count <= MAX_RUN or va + count * PGSIZE > UTOP:
        raise StreamError(f"run of {count} pages at {va:#010x} does not fit below UTOP")


class StreamEncoder:
    def __init__(self):
        self.crc = 0
        self.nbytes = 0
        self.pages = 0
        self._seen: set[int] = set()
        self.started = False
        self.finished = False

    def _out(self, b: bytes) -> bytes:
        self.crc = zlib.crc32(b, self.crc)
        self.nbytes += len(b)
        return b

    def start(self, fields: dict) -> bytes:
        if self.started:
            raise StreamError("stream already started")
        body = msgpack.packb(fields, use_bin_type=True)
        if len(body) > MAX_HEADER:
            raise StreamError(f"header of {len(body)} bytes exceeds {MAX_HEADER}")
        self.started = True
        return self._out(MAGIC + _REC.pack(TAG_HEADER, len(body)) + body)

    def _page_check(self, va: int, perm: int) -> None:
        if not self.started or self.finished:
            raise StreamError("page outside the stream")
        check_page(va, perm)
        if va in self._seen:
            raise StreamError(f"page {va:#010x} written twice")
        self._seen.add(va)
        self.pages += 1

    def page(self, va: int, perm: int, data, zero_ok: bool = True) -> bytes:
        """A PAGE record (or ZERO if the page is all zeros and zero_ok)."""
        self._page_check(va, perm)
        if len(data) != PGSIZE:
            raise StreamError(f"page {va:#010x} has {len(data)} bytes, not {PGSIZE}")
        if zero_ok and data == ZERO_PAGE:
            return self._out(_REC.pack(TAG_ZERO, SMALL_BODY) + _VAPERM.pack(va, perm))
        return self._out(b"".join((
            _REC.pack(TAG_PAGE, PAGE_BODY), _VAPERM.pack(va, perm),
            b"\x01", data[0:1024], b"\x02", data[1024:2048],
            b"\x03", data[2048:3072], b"\x04", data[3072:4096])))

    def page_batch(self, items, zero_ok: bool = True) -> bytes:
        """PAGE (or ZERO) records for many (va, perm, data) at once: the same
        bytes as page() for each, with one join and one checksum update."""
        if not self.started or self.finished:
            raise StreamError("page outside the stream")
        out = []
        app = out.append
        seen = self._seen
        n = 0
        for va, perm, data in items:
            if va in seen:
                raise StreamError(f"page {va:#010x} written twice")
            check_page(va, perm)
            seen.add(va)
            n += 1
            if zero_ok and data == ZERO_PAGE:
                app(_SMALL_REC.pack(TAG_ZERO, SMALL_BODY, va, perm))
            else:
                app(_PAGE_HEAD.pack(TAG_PAGE, PAGE_BODY, va, perm, 1))
                app(data[0:1024])
                app(b"\x02")
                app(data[1024:2048])
                app(b"\x03")
                app(data[2048:3072])
                app(b"\x04")
                app(data[3072:4096])
        self.pages += n
        return self._out(b"".join(out))

    def remote(self, va: int, perm: int) -> bytes:
        self._page_check(va, perm)
        return self._out(_REC.pack(TAG_REMOTE, SMALL_BODY) + _VAPERM.pack(va, perm))

    def remote_run(self, va: int, count: int, perm: int) -> bytes:
        """A RUN record: count consecutive remote pages from va."""
        if not self.started or self.finished:
            raise StreamError("page outside the stream")
        _check_run(va, count, perm)
        new = range(va, va + count * PGSIZE, PGSIZE)
        if not self._seen.isdisjoint(new):
            raise StreamError(f"run at {va:#010x} overlaps pages already written")
        self._seen.update(new)
        self.pages += count
        return self._out(_REC.pack(TAG_RUN, RUN_BODY) + _RUN.pack(va, count, perm))

    def trailer(self) -> bytes:
        if not self.started or self.finished:
            raise StreamError("trailer outside the stream")
        self.finished = True
        rec = _REC.pack(TAG_TRAILER, TRAILER_BODY) + _TRAILER.pack(self.pages, self.nbytes, self.crc)
        return rec

    def encode_event(self, event) -> bytes:
        """Re-encode a decoded event exactly (for decode -> encode round trips)."""
        if isinstance(event, Header):
            return self.start(event.fields)
        if isinstance(event, Page):
            self._page_check(event.va, event.perm)
            if event.zero:
                return self._out(_REC.pack(TAG_ZERO, SMALL_BODY) + _VAPERM.pack(event.va, event.perm))
            d = event.data
            return self._out(b"".join((
                _REC.pack(TAG_PAGE, PAGE_BODY), _VAPERM.pack(event.va, event.perm),
                b"\x01", d[0:1024], b"\x02", d[1024:2048], b"\x03", d[2048:3072],
                b"\x04", d[3072:4096])))
        if isinstance(event, Remote):
            return self.remote(event.va, event.perm)
        if isinstance(event, RemoteRun):
            return self.remote_run(event.va, event.count, event.perm)
        if isinstance(event, Trailer):
            return self.trailer()
        raise TypeError(event)


class StreamDecoder:
    """Incremental decoder; states: magic -> header -> body -> done.

    The header must announce how many pages follow (`pages`), at most
    max_pages (a node passes its number of frames), and the records may
    not exceed it: memory spent decoding is bounded by the announcement."""

    def __init__(self, max_pages: int = MAX_RUN, allow_remote: bool = True):
        """max_pages: the most pages a header may announce (a node passes
        its number of frames).  allow_remote=False: refuse REMOTE and RUN
        records (an image or a full-copy migration holds every page)."""
        self.max_pages = max_pages
        self.allow_remote = allow_remote
        self.announced = 0
        self._buf = bytearray()
        self._pos = 0
        self.state = "magic"
        self.crc = 0
        self.nbytes = 0
        self.pages = 0
        self._seen = bytearray(MAX_RUN)     # one byte per user page: constant memory
        self.header: dict | None = None
        self.trailer: Trailer | None = None

    def receive_data(self, data) -> None:
        if self.state == "done" and data:
            raise StreamError("data after the trailer")
        if self._pos > 1 << 20:
            del self._buf[:self._pos]
            self._pos = 0
        self._buf += data

    def _consume(self, n: int) -> memoryview:
        start = self._pos
        view = memoryview(self._buf)[start:start + n]
        self._pos = start + n
        return view

    def _count(self, view) -> None:
        self.crc = zlib.crc32(view, self.crc)
        self.nbytes += len(view)

    @property
    def pending(self) -> int:
        return len(self._buf) - self._pos

    def feed_pages(self, sink) -> int:
        """Fast path for the body: consume every complete PAGE, ZERO and
        REMOTE record at the front of the buffer, with the same checks as
        next_event(), then call sink(records, view) once: records is a list
        of (tag, va, perm, offset of the record's body in view), and view
        is valid only during the call.  Returns how many; stops at any
        other record."""
        if self.state != "body":
            return 0
        buf = self._buf
        pos = start = self._pos
        end = len(buf)
        seen = self._seen
        records = []
        app = records.append
        left = self.announced - self.pages
        unpack = _SMALL_REC.unpack_from
        while end - pos >= 11:
            tag, length, va, perm = unpack(buf, pos)
            if tag == TAG_PAGE:
                if length != PAGE_BODY or end - pos < 5 + PAGE_BODY:
                    break                              # next_event reports it / need data
                b = pos + 5
                if buf[b + 6] != 1 or buf[b + 1031] != 2 or buf[b + 2056] != 3 \
                        or buf[b + 3081] != 4:
                    raise StreamError(f"page {va:#010x}: chunk sequence numbers are not "
                                      "1, 2, 3, 4")
            elif tag == TAG_ZERO or (tag == TAG_REMOTE and self.allow_remote):
                if length != SMALL_BODY:
                    break
            else:
                break
            if va & 0xFFF or va >= UTOP or perm & ~PTE_SYSCALL or perm & 5 != 5:
                check_page(va, perm)                   # raises with the message
            if seen[va >> 12]:
                raise StreamError(f"page {va:#010x} appears twice")
            if len(records) >= left:
                raise StreamError(f"more pages than the {self.announced} the header "
                                  "announced")
            seen[va >> 12] = 1
            app((tag, va, perm, pos + 5))
            pos += 5 + length
        if not records:
            return 0
        view = memoryview(buf)
        try:
            sink(records, view)
            self.crc = zlib.crc32(view[start:pos], self.crc)
        finally:
            view.release()
        self.nbytes += pos - start
        self.pages += len(records)
        self._pos = pos
        return len(records)

    def next_event(self):
        avail = len(self._buf) - self._pos
        if self.state == "magic":
            if avail < len(MAGIC):
                return NEED_DATA
            m = bytes(self._consume(len(MAGIC)))
            if m[:6] != MAGIC[:6] or m[6] != 0:
                raise StreamError("not a jmig process stream (bad magic)")
            if m[7] != FORMAT_VERSION:
                raise StreamError(f"process stream format version {m[7]} is not supported "
                                  f"(this jmig reads version {FORMAT_VERSION})")
            self._count(memoryview(m))
            self.state = "header"
            avail -= len(MAGIC)
        if self.state == "done":
            if avail:
                raise StreamError("data after the trailer")
            return NEED_DATA
        if avail < 5:
            return NEED_DATA
        tag, length = _REC.unpack_from(self._buf, self._pos)
        if self.state == "header" and tag != TAG_HEADER:
            raise StreamError(f"expected the header record, found tag {tag!r}")
        limit = {TAG_HEADER: MAX_HEADER, TAG_PAGE: PAGE_BODY, TAG_ZERO: SMALL_BODY,
                 TAG_REMOTE: SMALL_BODY, TAG_TRAILER: TRAILER_BODY, TAG_RUN: RUN_BODY}.get(tag)
        if limit is None:
            raise StreamError(f"unknown record tag {tag!r} at byte {self.nbytes}")
        if (tag == TAG_HEADER and length > limit) or (tag != TAG_HEADER and length != limit):
            raise StreamError(f"record {tag.decode('latin-1')!r} has length {length}, "
                              f"expected {'at most ' if tag == TAG_HEADER else ''}{limit}")
        if avail < 5 + length:
            return NEED_DATA
        rec = self._consume(5 + length)
        body = rec[5:]
        if tag == TAG_TRAILER:
            pages, nbytes, crc = _TRAILER.unpack_from(body)
            if pages != self.pages:
                raise StreamError(f"trailer counts {pages} pages but the stream holds {self.pages}")
            if nbytes != self.nbytes:
                raise StreamError(f"trailer counts {nbytes} bytes but the stream holds {self.nbytes}")
            if crc != self.crc:
                raise StreamError(f"checksum mismatch: trailer says {crc:08x}, "
                                  f"contents give {self.crc:08x}")
            self.state = "done"
            self.trailer = Trailer(pages, nbytes, crc)
            if self.pending:
                raise StreamError("data after the trailer")
            return self.trailer
        self._count(rec)
        if tag == TAG_HEADER:
            if self.state != "header":
                raise StreamError("a second header record")
            try:
                fields = msgpack.unpackb(bytes(body), raw=False, strict_map_key=False)
            except Exception as exc:
                raise StreamError(f"header is not valid msgpack ({type(exc).__name__})") from None
            if not isinstance(fields, dict):
                raise StreamError("header is not a map")
            n = fields.get("pages")
            if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= self.max_pages:
                raise StreamError(f"header announces {n!r} pages; at most {self.max_pages} "
                                  "fit here")
            self.announced = n
            self.header = fields
            self.state = "body"
            return Header(fields)
        if tag in (TAG_RUN, TAG_REMOTE) and not self.allow_remote:
            raise StreamError(f"the stream holds remote pages (at {_VAPERM.unpack_from(body)[0]:#010x}): "
                              "it is a demand-paging migration stream, not an image or a full copy")
        if tag == TAG_RUN:
            va, count, perm = _RUN.unpack_from(body)
            _check_run(va, count, perm)
            if self.pages + count > self.announced:
                raise StreamError(f"more pages than the {self.announced} the header announced")
            vpn = va >> 12
            if self._seen.find(1, vpn, vpn + count) != -1:
                raise StreamError(f"run at {va:#010x} overlaps pages seen before")
            self._seen[vpn:vpn + count] = _ONES[:count]
            self.pages += count
            return RemoteRun(va, count, perm)
        va, perm = _VAPERM.unpack_from(body)
        check_page(va, perm)
        if self._seen[va >> 12]:
            raise StreamError(f"page {va:#010x} appears twice")
        if self.pages >= self.announced:
            raise StreamError(f"more pages than the {self.announced} the header announced")
        self._seen[va >> 12] = 1
        self.pages += 1
        if tag == TAG_PAGE:
            if body[6] != 1 or body[1031] != 2 or body[2056] != 3 or body[3081] != 4:
                raise StreamError(f"page {va:#010x}: chunk sequence numbers are not 1, 2, 3, 4")
            data = b"".join((body[7:1031], body[1032:2056], body[2057:3081], body[3082:4106]))
            return Page(va, perm, data)
        if tag == TAG_ZERO:
            return Page(va, perm, ZERO_PAGE, zero=True)
        return Remote(va, perm)

    def events(self):
        """All events decodable from the data received so far."""
        while True:
            e = self.next_event()
            if e is NEED_DATA:
                return
            yield e


# -- the header's fields -------------------------------------------------------------

def header_fields(h, *, node: str, jmig_version: str, pages: int, method: str,
                  extra: dict | None = None) -> dict:
    """The HEADER map for an env (kernel.EnvHeader), in a fixed key order."""
    fields = {
        "format": FORMAT_VERSION, "jmig": jmig_version, "method": method, "node": node,
        "envid": h.envid, "parent": h.parent_id, "name": h.name, "status": h.status,
        "runs": h.runs, "regs": list(h.regs), "eip": h.eip, "eflags": h.eflags,
        "trapno": h.trapno, "err": h.err, "upcall": h.pgfault_upcall,
        "ipc": [h.ipc_recving, h.ipc_dstva, h.ipc_value, h.ipc_from, h.ipc_perm],
        "sleep_ms": h.sleep_ms, "pages": pages,
    }
    if extra:
        fields.update(extra)
    return fields


def _u32(d: dict, key: str) -> int:
    v = d.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 0xFFFFFFFF:
        raise StreamError(f"header field {key!r} is not a 32-bit unsigned integer: {v!r}")
    return v


def env_header(fields: dict) -> EnvHeader:
    """Check a HEADER map and turn it into a kernel.EnvHeader."""
    regs = fields.get("regs")
    if not isinstance(regs, list) or len(regs) != 8:
        raise StreamError("header field 'regs' is not a list of 8 registers")
    for i, r in enumerate(regs):
        _u32({"regs[%d]" % i: r}, "regs[%d]" % i)
    ipc = fields.get("ipc")
    if not isinstance(ipc, list) or len(ipc) != 5:
        raise StreamError("header field 'ipc' is not a list of 5 values")
    for i, v in enumerate(ipc):
        _u32({f"ipc[{i}]": v}, f"ipc[{i}]")
    name = fields.get("name")
    if not isinstance(name, str) or len(name) > 64:
        raise StreamError("header field 'name' is not a short string")
    sleep = fields.get("sleep_ms")
    if sleep is not None:
        _u32(fields, "sleep_ms")
    status = _u32(fields, "status")
    if status not in (2, 4):
        raise StreamError(f"header field 'status' is {status}, not RUNNABLE (2) or NOT_RUNNABLE (4)")
    _u32(fields, "pages")
    return EnvHeader(
        envid=_u32(fields, "envid"), parent_id=_u32(fields, "parent"), name=name,
        status=status, runs=_u32(fields, "runs"), regs=tuple(regs), eip=_u32(fields, "eip"),
        eflags=_u32(fields, "eflags"), trapno=_u32(fields, "trapno"), err=_u32(fields, "err"),
        pgfault_upcall=_u32(fields, "upcall"), ipc_recving=ipc[0], ipc_dstva=ipc[1],
        ipc_value=ipc[2], ipc_from=ipc[3], ipc_perm=ipc[4], sleep_ms=sleep)


# -- page batches (the page server's frames) ----------------------------------------------
# The page server sends pages as bare PAGE/ZERO records (no magic, header
# or trailer), several to a frame.

def encode_pages(pages) -> bytes:
    """PAGE records for [(va, perm, data)], ZERO for all-zero pages."""
    out = []
    for va, perm, data in pages:
        check_page(va, perm)
        if data == ZERO_PAGE:
            out.append(_REC.pack(TAG_ZERO, SMALL_BODY) + _VAPERM.pack(va, perm))
        else:
            out.append(b"".join((
                _REC.pack(TAG_PAGE, PAGE_BODY), _VAPERM.pack(va, perm),
                b"\x01", data[0:1024], b"\x02", data[1024:2048],
                b"\x03", data[2048:3072], b"\x04", data[3072:4096])))
    return b"".join(out)


def decode_pages(buf: bytes) -> list[Page]:
    """Decode a batch of bare PAGE/ZERO records; StreamError if malformed."""
    out = []
    pos = 0
    n = len(buf)
    view = memoryview(buf)
    while pos < n:
        if n - pos < 5:
            raise StreamError("truncated page record")
        tag, length = _REC.unpack_from(buf, pos)
        if tag == TAG_PAGE and length == PAGE_BODY:
            body = view[pos + 5:pos + 5 + PAGE_BODY]
            if len(body) != PAGE_BODY:
                raise StreamError("truncated page record")
            va, perm = _VAPERM.unpack_from(body)
            check_page(va, perm)
            if body[6] != 1 or body[1031] != 2 or body[2056] != 3 or body[3081] != 4:
                raise StreamError(f"page {va:#010x}: chunk sequence numbers are not 1, 2, 3, 4")
            out.append(Page(va, perm, b"".join((body[7:1031], body[1032:2056],
                                                body[2057:3081], body[3082:4106]))))
        elif tag == TAG_ZERO and length == SMALL_BODY:
            if n - pos < 5 + SMALL_BODY:
                raise StreamError("truncated page record")
            va, perm = _VAPERM.unpack_from(buf, pos + 5)
            check_page(va, perm)
            out.append(Page(va, perm, ZERO_PAGE, zero=True))
        else:
            raise StreamError(f"bad record {tag!r} (length {length}) in a page batch")
        pos += 5 + length
    return out
