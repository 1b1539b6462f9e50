"""Moving one env in and out of a kernel as a process stream.

`StreamWriter` turns a paused env into process-stream parts a batch at a
time: bytes for record heads, and for page data one buffer per batch into
which the batch's frames were gathered by one NumPy call (a 4 KiB copy a
page in C, against a Python step a page: a view, a checksum call and an
iovec each), checksummed with one call and written with one iovec.
`StreamRestorer` decodes a stream into an "incoming" env that becomes
real only on commit (and leaves nothing behind on abort); a batch's page
data lands straight in the frames it was given (read there by the caller
with readv/recv_into, or copied there from bytes fed in).  Every page's
entry is checked before any of its data is placed, and the stream's
checksum before the env can be committed; an incoming env never runs.
"""
from __future__ import annotations

import attrs
import numpy as np
import structlog

import jmig
from ... import logs
from ...kernel import events as ev
from ...kernel.kernel import Kernel
from ...kernel.memlayout import PGSIZE
from ...kernel.snapshot import RemoteTable
from ...proto import pstream
from ...proto.pstream import (BATCH_MAX, ZERO_PAGE, StreamDecoder,
                              StreamEncoder, StreamError)


@attrs.define
class Progress:
    total: int
    done: int = 0
    nbytes: int = 0


class StreamWriter:
    """Serialize env `envid` (which must stay paused while this runs, and
    whose frames must outlive each yielded batch until it is written)."""

    def __init__(self, kernel: Kernel, envid: int, node: str, method: str,
                 extra: dict | None = None, remote: bool = False):
        """remote: send every page as a REMOTE record (page table entries
        only, for demand paging) instead of its contents."""
        self.kernel = kernel
        self.envid = envid
        self.remote = remote
        if kernel.remote_count(envid):
            raise ev.KernelError(ev.BAD_STATE, f"env {envid} still has pages on another node")
        if remote:
            self.runs = kernel.page_runs(envid)       # [(first vpn, count, perm)]
            self.npages = sum(c for _, c, _ in self.runs)
        else:
            self.vas, self.perms, self.pfns = kernel.page_frames(envid)
            self.npages = len(self.vas)
        self.enc = StreamEncoder()
        self.log = structlog.get_logger("jmig.stream").bind(node=node, envid=envid)
        self.header = pstream.header_fields(
            kernel.header(envid), node=node, jmig_version=jmig.__version__,
            pages=self.npages, method=method, extra=extra)
        self.progress = Progress(total=self.npages)

    def parts(self):
        """Yield lists of buffers (bytes, or memoryviews of frames) of up to
        BATCH_MAX pages each, to be written in order; the last list ends
        with the trailer."""
        enc = self.enc
        out = [enc.start(self.header)]
        if self.remote:
            # Page table entries only: runs of consecutive pages with one perm.
            for vpn, count, perm in self.runs:
                out.append(enc.remote_run(vpn << 12, count, perm))
            self.progress.done = self.npages
            out.append(enc.trailer())
            self.progress.nbytes = enc.nbytes + len(out[-1])
            yield out
            return
        frames = self.kernel.phys.frames
        vas, perms, pfns = self.vas, self.perms, self.pfns
        # Two buffers in turn: a batch's pages are copied into one (a gather
        # in C, cheaper than a Python step per page) and stay there until
        # the batch after next is asked for (a link may still be writing
        # the last one while the next is built).
        bufs = [np.empty((BATCH_MAX, PGSIZE // 8), np.uint64) for _ in range(2)]
        for k, i in enumerate(range(0, len(pfns), BATCH_MAX)):
            va, pm, pf = vas[i:i + BATCH_MAX], perms[i:i + BATCH_MAX], pfns[i:i + BATCH_MAX]
            count = len(pf)
            # An all-zero page travels as a ZERO record: only a page whose
            # first word is zero can be one; those are checked whole.
            maybe = np.flatnonzero(frames[pf, 0] == 0)
            zero = [j for j in maybe.tolist() if not frames[pf[j]].any()]
            if zero:
                for j in zero:
                    out.append(enc.zero(int(va[j]), int(pm[j])))
                keep = np.ones(count, bool)
                keep[zero] = False
                va, pm, pf = va[keep], pm[keep], pf[keep]
            if len(pf):
                buf = bufs[k % 2][:len(pf)]
                np.take(frames, pf, axis=0, out=buf, mode="clip")
                out += enc.batch_data(va, pm, buf)
            if logs.DEBUG:
                log_chunks(self.log, "send page", vas[i:i + count].tolist())
            self.progress.done += count
            self.progress.nbytes = enc.nbytes
            yield out
            out = []
        out.append(enc.trailer())
        self.progress.nbytes = enc.nbytes + len(out[-1])
        yield out


def log_chunks(log, event: str, vas) -> None:
    """The original project's per-chunk lines ("Send Page: 0x00800000,
    Sequence: 1") as debug-level events, for pages at vas."""
    for va in vas:
        for seq in (1, 2, 3, 4):
            log.debug(event, va=f"{va:#010x}", sequence=seq)


class StreamRestorer:
    """Decode a process stream into an incoming env of `kernel`.

    feed() raises StreamError for a malformed stream and KernelError when
    the kernel refuses (memory, env slots); after either, call abort().
    When feed() returns with `wants_data`, a batch's pages are expected:
    feed more bytes, or read them straight into data_views() and call
    filled(n) (the zero-copy path), then feed(b"") to go on.
    """

    def __init__(self, kernel: Kernel | None, keep_id: bool = True, allow_remote: bool = False,
                 create: bool = True, node: str = "", expected: RemoteTable | None = None):
        """expected: remote PTEs built ahead (Kernel.remote_table) from the
        runs the source announced; if the stream's RUN records are exactly
        those runs, the env takes the table in one step at the trailer,
        else they are restored one by one as they come."""
        self.kernel = kernel
        self.keep_id = keep_id
        self.allow_remote = allow_remote
        self.create = create and kernel is not None   # False: verify only, create nothing
        self.expected = expected if self.create else None
        self.deferred: list[tuple[int, int, int]] = []     # RUN records matching expected
        self.dec = StreamDecoder(kernel.phys.nframes if kernel is not None
                                 else pstream.MAX_RUN, allow_remote=allow_remote)
        self.env = None
        self.log = structlog.get_logger("jmig.stream").bind(node=node)
        self.header: dict | None = None
        self.pages = 0
        self.total = 0

    @property
    def done(self) -> bool:
        return self.dec.state == "done"

    @property
    def wants_data(self) -> bool:
        return self.dec.want > 0

    def data_views(self) -> list:
        return self.dec.data_views()

    def filled(self, n: int) -> None:
        self.dec.filled(n)

    def feed(self, data) -> None:
        dec = self.dec
        if data:
            dec.receive_data(data)
        k = self.kernel
        while not dec.want:
            e = dec.next_event()
            if e is pstream.NEED_DATA:
                return
            if isinstance(e, pstream.Batch):
                self.pages += len(e.vas)
                if logs.DEBUG:
                    log_chunks(self.log, "receive page", e.vas)
                dec.sink(k.restore_batch(self.env, e.vas, e.perms) if self.env is not None
                         else None)
            elif isinstance(e, pstream.Header):
                h = pstream.env_header(e.fields)
                self.header = e.fields
                self.total = e.fields["pages"]
                if self.create:
                    need = self.total + 8
                    if need > k.phys.nfree:
                        raise ev.KernelError(ev.NO_MEMORY, f"the process needs {self.total} pages; "
                                             f"{k.phys.nfree} are free here")
                    self.env = k.create_from(h, keep_id=self.keep_id)
                self.log = self.log.bind(envid=self.env.env_id if self.env else h.envid)
            elif isinstance(e, pstream.Page):              # a ZERO record
                self.pages += 1
                if self.env is not None:
                    k.restore_page(self.env, e.va, e.perm, ZERO_PAGE)
            elif isinstance(e, pstream.Remote):
                self.pages += 1
                if self.env is not None:
                    k.restore_page(self.env, e.va, e.perm, None)
            elif isinstance(e, pstream.RemoteRun):
                self.pages += e.count
                if self.env is not None:
                    self._remote_run((e.va >> 12, e.count, e.perm))   # (va aligned: decoder)
            elif isinstance(e, pstream.Trailer):
                if self.total != e.pages:
                    raise StreamError(f"header announces {self.total} pages, trailer {e.pages}")
                if self.env is not None and self.deferred:
                    if len(self.deferred) == len(self.expected.runs):
                        k.restore_remote_table(self.env, self.expected)
                    else:
                        self._restore_deferred()

    def _remote_run(self, run: tuple[int, int, int]) -> None:
        """A RUN record: deferred while it is the next of the expected runs."""
        x = self.expected
        if x is not None and len(self.deferred) < len(x.runs) \
                and x.runs[len(self.deferred)] == run:
            self.deferred.append(run)
            return
        self._restore_deferred()
        first, count, perm = run
        self.kernel.restore_remote_run(self.env, first << 12, count, perm)

    def _restore_deferred(self) -> None:
        """The stream left the expected runs: restore what was deferred."""
        for first, count, perm in self.deferred:
            self.kernel.restore_remote_run(self.env, first << 12, count, perm)
        self.deferred = []
        self.expected = None

    def finish(self) -> None:
        """Check that the stream ended properly."""
        if not self.done:
            raise StreamError("the stream ended early (truncated: no trailer)")

    def abort(self) -> None:
        if self.env is not None:
            self.kernel.abort_incoming(self.env)
            self.env = None


def stream_bytes(kernel: Kernel, envid: int, node: str, method: str = "image") -> bytes:
    """The whole process stream of env as one bytes object (tests, tools)."""
    w = StreamWriter(kernel, envid, node, method)
    return b"".join(bytes(p) for batch in w.parts() for p in batch)

