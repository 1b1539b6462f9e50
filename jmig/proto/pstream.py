"""The process stream: one env, serialized.  Save writes it to a file, load
reads it back, and normal and demand-paging migration send the same bytes
over TCP.

Grammar (docs/process-stream.md has the full description):

    STREAM   ::= MAGIC HEADER { BATCH | ZERO | REMOTE | RUN } TRAILER
    MAGIC    ::= "JMIGPS" 0x00 VERSION                       8 bytes, VERSION = 2
    RECORD   ::= TAG(1 byte) LENGTH(u32 big-endian) BODY[LENGTH]
    HEADER   ::= 'H' LENGTH msgpack-map                        LENGTH <= 64 KiB
    BATCH    ::= 'B' LENGTH COUNT(u32) ENTRY{COUNT} DATA       1 <= COUNT <= 256
    ENTRY    ::= VA(u32) PERM(u16) SEQ(u8){4}                  SEQ = 1, 2, 3, 4
    DATA     ::= COUNT pages of 4096 bytes, each as its four 1 KiB chunks in order
    ZERO     ::= 'Z' 6 VA(u32) PERM(u16)                      an all-zero page
    REMOTE   ::= 'R' 6 VA(u32) PERM(u16)                      present, contents elsewhere
    RUN      ::= 'M' 10 VA(u32) COUNT(u32) PERM(u16)          COUNT consecutive REMOTE pages
    TRAILER  ::= 'T' 16 PAGES(u32) BYTES(u64) CRC32(u32)

Integers in record bodies are big-endian.  A BATCH's LENGTH is 4 +
COUNT * (10 + 4096): its entries first, then its pages' data, so that the
data of many pages is one contiguous run in the stream and moves between
frames and sockets or files with scatter/gather system calls and no copy
of its own.  Each 1 KiB chunk of a page keeps its sequence number (the
original project's four chunks per page), in the page's entry.  VA is
page-aligned and below UTOP; PERM lies within PTE_SYSCALL and includes
PTE_U|PTE_P; no VA appears twice.  PAGES counts the pages of BATCH, ZERO,
REMOTE and RUN records; BYTES and CRC32 (zlib's) cover every byte before
the trailer record, magic included.  Version 1 (a record per page, chunks
interleaved) is refused with a message that names it.

Sans-I/O: StreamEncoder returns bytes (and, for a batch, the pages' own
buffers to send after its head); StreamDecoder takes bytes (receive_data)
and yields events (next_event) or NEED_DATA, raising StreamError with a
message naming what is wrong.  After a Batch event the decoder wants the
batch's page data: the consumer names where it goes (sink), then either
feeds it as bytes (receive_data copies it into the sink) or reads it into
the sink's buffers itself (data_views, then filled) -- the zero-copy path.
Decoding then encoding a stream reproduces it byte for byte.
"""
from __future__ import annotations

import struct

import attrs
import msgpack
import numpy as np
# zlib's CRC-32, computed with SIMD: 0.5 us a page here against zlib's 1.9 us
from zlib_ng.zlib_ng import crc32

from ..errors import Error
from ..kernel.memlayout import CHUNK, PGSIZE, PTE_P, PTE_SYSCALL, PTE_U, UTOP
from ..kernel.snapshot import EnvHeader

FORMAT_VERSION = 2
MAGIC = b"JMIGPS\x00" + bytes([FORMAT_VERSION])
MAX_HEADER = 64 * 1024
BATCH_MAX = 256                           # pages per BATCH record
ENTRY = 10                                # VA, PERM, four SEQ bytes
PAGE_BODY = 6 + 4 * (1 + CHUNK)           # 4106: a page batch's PAGE record (encode_pages)
SMALL_BODY = 6
TRAILER_BODY = 16
RUN_BODY = 10
MAX_RUN = (UTOP >> 12)
NEED_DATA = object()
SEQS = b"\x01\x02\x03\x04"

_REC = struct.Struct(">cI")
_VAPERM = struct.Struct(">IH")
_BATCH_HEAD = struct.Struct(">cII")          # tag, length, count
_RUN = struct.Struct(">IIH")                 # va, count, perm
_TRAILER = struct.Struct(">IQI")
_ENTRY_DTYPE = np.dtype([("va", ">u4"), ("perm", ">u2"), ("seq", "u1", (4,))])
_SEQ_ROW = np.frombuffer(SEQS, np.uint8)
ZERO_PAGE = bytes(PGSIZE)

TAG_HEADER, TAG_BATCH, TAG_ZERO, TAG_REMOTE, TAG_TRAILER = b"H", b"B", b"Z", b"R", b"T"
TAG_RUN = b"M"
TAG_PAGE = b"P"                              # page batches only (encode_pages)


class StreamError(Error):
    """The stream is malformed, truncated or corrupt."""
    code = "bad-stream"


@attrs.frozen
class Header:
    fields: dict                     # the msgpack map, in its original key order


@attrs.frozen
class Batch:
    """COUNT pages whose data follows (4096 bytes each, in this order)."""
    vas: list
    perms: list


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


def _check_entries(vas: np.ndarray, perms: np.ndarray) -> None:
    """check_page for many pages at once (the first bad one named)."""
    bad = (vas % PGSIZE != 0) | (vas >= UTOP) | ((perms & ~PTE_SYSCALL) != 0) \
        | ((perms & (PTE_U | PTE_P)) != (PTE_U | PTE_P))
    if bad.any():
        i = int(np.argmax(bad))
        check_page(int(vas[i]), int(perms[i]))


class _Seen:
    """Which user pages a stream has named: one byte per page, constant
    memory (zeroed lazily by the OS: only the parts a stream names are
    ever touched, so a small stream costs little)."""

    def __init__(self):
        self.map = np.zeros(MAX_RUN, np.uint8)

    def add_many(self, vpns: np.ndarray, what: str) -> None:
        m = self.map
        ascending = len(vpns) < 2 or bool((vpns[1:] > vpns[:-1]).all())   # no repeats
        if m[vpns].any() or not ascending and len(np.unique(vpns)) != len(vpns):
            dup = next(int(v) for i, v in enumerate(vpns)
                       if m[v] or int(v) in set(int(x) for x in vpns[:i]))
            raise StreamError(f"page {dup << 12:#010x} {what}")
        m[vpns] = 1

    def add(self, vpn: int, what: str) -> None:
        if self.map[vpn]:
            raise StreamError(f"page {vpn << 12:#010x} {what}")
        self.map[vpn] = 1

    def add_run(self, vpn: int, count: int, what: str) -> None:
        run = self.map[vpn:vpn + count]
        if run.any():
            raise StreamError(f"run at {vpn << 12:#010x} {what}")
        run[:] = 1


class StreamEncoder:
    def __init__(self):
        self.crc = 0
        self.nbytes = 0
        self.pages = 0
        self._seen = _Seen()
        self.started = False
        self.finished = False

    def _out(self, b) -> bytes:
        self.crc = crc32(b, self.crc)
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

    def _body(self) -> None:
        if not self.started or self.finished:
            raise StreamError("page outside the stream")

    def _batch_head(self, vas, perms, n: int) -> bytes:
        """A BATCH record's head and entries; its pages counted."""
        self._body()
        if not 1 <= n <= BATCH_MAX or len(vas) != n or len(perms) != n:
            raise StreamError(f"a batch holds 1..{BATCH_MAX} pages, not {n}")
        va = np.asarray(vas, dtype=np.int64)
        pm = np.asarray(perms, dtype=np.int64)
        _check_entries(va, pm)
        self._seen.add_many(va >> 12, "written twice")
        ent = np.empty(n, _ENTRY_DTYPE)
        ent["va"] = va
        ent["perm"] = pm
        ent["seq"] = _SEQ_ROW
        self.nbytes += _BATCH_HEAD.size + n * (ENTRY + PGSIZE)
        self.pages += n
        return _BATCH_HEAD.pack(TAG_BATCH, 4 + n * (ENTRY + PGSIZE), n) + ent.tobytes()

    def batch(self, vas, perms, pages) -> list:
        """A BATCH record for pages (4096-byte buffers) at vas with perms:
        its head and entries as bytes, then the pages themselves (not
        copied), to be written in that order."""
        for p in pages:
            if len(p) != PGSIZE:
                raise StreamError(f"a page of {len(p)} bytes, not {PGSIZE}")
        head = self._batch_head(vas, perms, len(pages))
        crc = crc32(head, self.crc)
        for p in pages:
            crc = crc32(p, crc)
        self.crc = crc
        return [head, *pages]

    def batch_data(self, vas, perms, data) -> list:
        """A BATCH record whose pages lie back to back in one buffer
        (len(vas) * 4096 bytes): its head, then data itself (not copied).
        One checksum call for the whole batch."""
        data = memoryview(data).cast("B")
        if len(data) != len(vas) * PGSIZE:
            raise StreamError(f"{len(data)} bytes of data for {len(vas)} pages")
        head = self._batch_head(vas, perms, len(vas))
        self.crc = crc32(data, crc32(head, self.crc))
        return [head, data]

    def zero(self, va: int, perm: int) -> bytes:
        """A ZERO record: an all-zero page."""
        self._body()
        check_page(va, perm)
        self._seen.add(va >> 12, "written twice")
        self.pages += 1
        return self._out(_REC.pack(TAG_ZERO, SMALL_BODY) + _VAPERM.pack(va, perm))

    def remote(self, va: int, perm: int) -> bytes:
        self._body()
        check_page(va, perm)
        self._seen.add(va >> 12, "written twice")
        self.pages += 1
        return self._out(_REC.pack(TAG_REMOTE, SMALL_BODY) + _VAPERM.pack(va, perm))

    def remote_run(self, va: int, count: int, perm: int) -> bytes:
        """A RUN record: count consecutive remote pages from va."""
        self._body()
        _check_run(va, count, perm)
        self._seen.add_run(va >> 12, count, "overlaps pages already written")
        self.pages += count
        return self._out(_REC.pack(TAG_RUN, RUN_BODY) + _RUN.pack(va, count, perm))

    def trailer(self) -> bytes:
        if not self.started or self.finished:
            raise StreamError("trailer outside the stream")
        self.finished = True
        return _REC.pack(TAG_TRAILER, TRAILER_BODY) + _TRAILER.pack(self.pages, self.nbytes,
                                                                     self.crc)

    def encode_event(self, event, data=None) -> bytes:
        """Re-encode a decoded event exactly (round trips); a Batch needs
        its pages' data (count * 4096 bytes)."""
        if isinstance(event, Header):
            return self.start(event.fields)
        if isinstance(event, Batch):
            n = len(event.vas)
            return b"".join(bytes(x) for x in self.batch(
                event.vas, event.perms, [data[i * PGSIZE:(i + 1) * PGSIZE] for i in range(n)]))
        if isinstance(event, Page):
            return self.zero(event.va, event.perm)
        if isinstance(event, Remote):
            return self.remote(event.va, event.perm)
        if isinstance(event, RemoteRun):
            return self.remote_run(event.va, event.count, event.perm)
        if isinstance(event, Trailer):
            return self.trailer()
        raise TypeError(event)


class StreamDecoder:
    """Incremental decoder; states: magic -> header -> body (-> data) -> done.

    The header must announce how many pages follow (`pages`), at most
    max_pages (a node passes its number of frames), and the records may
    not exceed it: memory spent decoding is bounded by the announcement.
    After a Batch event the decoder is in state "data" until the batch's
    pages have arrived: call sink(views) first (len(Batch.vas) buffers of
    4096 bytes, or None to have them checked and dropped)."""

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
        self._seen = _Seen()
        self.header: dict | None = None
        self.trailer: Trailer | None = None
        self._views: list = []           # the sink's buffers still to fill
        self._left = 0                   # data bytes the current batch still needs
        self._scratch: memoryview | None = None

    def receive_data(self, data) -> None:
        if self.state == "done" and data:
            raise StreamError("data after the trailer")
        if self._pos > 1 << 20:
            del self._buf[:self._pos]
            self._pos = 0
        self._buf += data
        if self.state == "data":
            self._drain_into_sink()

    def _consume(self, n: int) -> memoryview:
        start = self._pos
        view = memoryview(self._buf)[start:start + n]
        self._pos = start + n
        return view

    def _count(self, view) -> None:
        self.crc = crc32(view, self.crc)
        self.nbytes += len(view)

    @property
    def pending(self) -> int:
        """Bytes received and not yet decoded."""
        return len(self._buf) - self._pos

    # -- page data -------------------------------------------------------------------
    def sink(self, views) -> None:
        """Where the current batch's pages go: writable buffers whose sizes
        are multiples of 4096 and add up to the batch's pages, in order
        (None: check them and drop them).  Buffered bytes are copied there
        at once."""
        if self.state != "data":
            raise StreamError("no batch is waiting for its pages")
        if views is None:
            if self._scratch is None:
                self._scratch = memoryview(bytearray(BATCH_MAX * PGSIZE))
            views = [self._scratch[:self._left]]
        else:
            views = [memoryview(v).cast("B") for v in views]
            given = sum(len(v) for v in views)
            if given != self._left:
                raise StreamError(f"{given // PGSIZE} pages given for {self._left // PGSIZE}")
        self._views = views
        self._drain_into_sink()

    def data_views(self) -> list:
        """The parts of the sink still to fill, in order (for readv/recv_into)."""
        return list(self._views)

    def filled(self, n: int) -> None:
        """The consumer wrote the next n bytes of page data into data_views()."""
        if n > self._left:
            raise StreamError("more page data than the batch holds")
        views = self._views
        while n:
            v = views[0]
            k = min(n, len(v))
            self._count(v[:k])
            self._left -= k
            n -= k
            if k == len(v):
                views.pop(0)
            else:
                views[0] = v[k:]
        if not self._left:
            self._views = []
            self.state = "body"

    def _drain_into_sink(self) -> None:
        while self._views and self.pending:
            v = self._views[0]
            k = min(len(v), self.pending)
            v[:k] = self._consume(k)
            self.filled(k)

    @property
    def want(self) -> int:
        """Page data bytes the current batch still needs (0 unless state
        is "data")."""
        return self._left

    def next_event(self):
        if self.state == "data":
            if self._left and not self._views:
                raise StreamError("a batch's pages arrived with nowhere to go (call sink)")
            return NEED_DATA
        avail = len(self._buf) - self._pos
        if self.state == "magic":
            if avail < len(MAGIC):
                return NEED_DATA
            m = bytes(self._consume(len(MAGIC)))
            if m[:6] != MAGIC[:6] or m[6] != 0:
                raise StreamError("not a jmig process stream (bad magic)")
            if m[7] != FORMAT_VERSION:
                raise StreamError(f"process stream format version {m[7]} is not supported "
                                  f"(this jmig reads version {FORMAT_VERSION}"
                                  + ("; version 1 images come from an older jmig: load them "
                                     "there and migrate the process here" if m[7] == 1 else "")
                                  + ")")
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
        if tag == TAG_BATCH:
            return self._batch(avail, length)
        limit = {TAG_HEADER: MAX_HEADER, TAG_ZERO: SMALL_BODY, TAG_REMOTE: SMALL_BODY,
                 TAG_TRAILER: TRAILER_BODY, TAG_RUN: RUN_BODY}.get(tag)
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
            self._more(count)
            self._seen.add_run(va >> 12, count, "overlaps pages seen before")
            self.pages += count
            return RemoteRun(va, count, perm)
        va, perm = _VAPERM.unpack_from(body)
        check_page(va, perm)
        self._more(1)
        self._seen.add(va >> 12, "appears twice")
        self.pages += 1
        if tag == TAG_ZERO:
            return Page(va, perm, ZERO_PAGE, zero=True)
        return Remote(va, perm)

    def _more(self, n: int) -> None:
        if self.pages + n > self.announced:
            raise StreamError(f"more pages than the {self.announced} the header announced")

    def _batch(self, avail: int, length: int):
        """A BATCH record's head and entries (its data is taken separately)."""
        if avail < 9:
            return NEED_DATA
        _, _, n = _BATCH_HEAD.unpack_from(self._buf, self._pos)
        if not 1 <= n <= BATCH_MAX or length != 4 + n * (ENTRY + PGSIZE):
            raise StreamError(f"batch record of {n} pages has length {length}; a batch holds "
                              f"1..{BATCH_MAX} pages of {ENTRY + PGSIZE} bytes each")
        if avail < 9 + n * ENTRY:
            return NEED_DATA
        self._more(n)
        head = self._consume(9 + n * ENTRY)
        ent = np.frombuffer(head, _ENTRY_DTYPE, count=n, offset=9)
        vas = ent["va"].astype(np.int64)
        perms = ent["perm"].astype(np.int64)
        _check_entries(vas, perms)
        if (ent["seq"] != _SEQ_ROW).any():
            i = int(np.argmax((ent["seq"] != _SEQ_ROW).any(axis=1)))
            raise StreamError(f"page {int(vas[i]):#010x}: chunk sequence numbers are not "
                              "1, 2, 3, 4")
        self._seen.add_many(vas >> 12, "appears twice")
        self._count(head)
        del ent
        self.pages += n
        self._left = n * PGSIZE
        self.state = "data"
        return Batch(vas.tolist(), perms.tolist())

    def events(self):
        """All events decodable from the data received so far (a Batch's
        pages are checked and dropped)."""
        while True:
            e = self.next_event()
            if e is NEED_DATA:
                return
            yield e
            if isinstance(e, Batch):
                self.sink(None)


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
        if len(data) != PGSIZE:
            raise StreamError(f"page {va:#010x}: {len(data)} bytes, not {PGSIZE}")
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
