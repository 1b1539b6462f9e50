"""Moving one env in and out of a kernel as a process stream.

`StreamWriter` turns a paused env into process-stream bytes a batch at a
time; `StreamRestorer` feeds decoded stream events into a kernel as an
"incoming" env that becomes real only on commit (and leaves nothing behind
on abort).  Save/load (images.py) and normal migration (migrate.py) are
both built from these two.
"""
from __future__ import annotations

import attrs
import structlog

import jmig
from ... import logs
from ...kernel import events as ev
from ...kernel.kernel import Kernel
from ...proto import pstream
from ...proto.pstream import StreamDecoder, StreamEncoder, StreamError

BATCH_BYTES = 256 * 1024


@attrs.define
class Progress:
    total: int
    done: int = 0
    nbytes: int = 0


class StreamWriter:
    """Serialize env `envid` (which must stay paused while this runs)."""

    def __init__(self, kernel: Kernel, envid: int, node: str, method: str,
                 extra: dict | None = None, remote: bool = False):
        """remote: send every page as a REMOTE record (page table entries
        only, for demand paging) instead of its contents."""
        self.kernel = kernel
        self.envid = envid
        self.remote = remote
        if kernel.remote_pages(envid):
            raise ev.KernelError(ev.BAD_STATE, f"env {envid} still has pages on another node")
        if remote:
            self.runs = kernel.page_runs(envid)       # [(first vpn, count, perm)]
            self.npages = sum(c for _, c, _ in self.runs)
        else:
            self.pages = kernel.page_list(envid)      # [(va, perm, remote)]
            self.npages = len(self.pages)
        self.enc = StreamEncoder()
        self.log = structlog.get_logger("jmig.stream").bind(node=node, envid=envid)
        self.header = pstream.header_fields(
            kernel.header(envid), node=node, jmig_version=jmig.__version__,
            pages=self.npages, method=method, extra=extra)
        self.progress = Progress(total=self.npages)

    def batches(self, batch_bytes: int = BATCH_BYTES):
        """Yield lists of byte strings of about batch_bytes each, the last
        ending with the trailer."""
        k = self.kernel
        mem = memoryview(k.phys.mem)
        out = [self.enc.start(self.header)]
        per_batch = max(1, batch_bytes // 4111)
        e = k.get_env(self.envid)
        pte = e.aspace.pte
        if self.remote:
            # Page table entries only: runs of consecutive pages with one perm.
            for vpn, count, perm in self.runs:
                out.append(self.enc.remote_run(vpn << 12, count, perm))
            self.progress.done = self.npages
            self.progress.nbytes += sum(len(x) for x in out)
            out.append(self.enc.trailer())
            self.progress.nbytes += len(out[-1])
            yield out
            return
        pages = self.pages
        for i in range(0, len(pages), per_batch):
            chunk = pages[i:i + per_batch]
            items = []
            for va, perm, _ in chunk:
                base = pte[va >> 12] & 0xFFFFF000
                items.append((va, perm, mem[base:base + 4096]))
            out.append(self.enc.page_batch(items))
            if logs.DEBUG:
                log_chunks(self.log, "send page", chunk)
            self.progress.done += len(chunk)
            self.progress.nbytes += sum(len(x) for x in out)
            yield out
            out = []
        out.append(self.enc.trailer())
        self.progress.nbytes += len(out[-1])
        yield out


def log_chunks(log, event: str, pages) -> None:
    """The original project's per-chunk lines ("Send Page: 0x00800000,
    Sequence: 1") as debug-level events."""
    for va, *_ in pages:
        for seq in (1, 2, 3, 4):
            log.debug(event, va=f"{va:#010x}", sequence=seq)


class StreamRestorer:
    """Decode a process stream into an incoming env of `kernel`.

    feed() raises StreamError for a malformed stream and KernelError when
    the kernel refuses (memory, env slots); after either, call abort().
    """

    def __init__(self, kernel: Kernel, keep_id: bool = True, allow_remote: bool = False,
                 create: bool = True, node: str = ""):
        self.kernel = kernel
        self.keep_id = keep_id
        self.allow_remote = allow_remote
        self.create = create               # False: verify only, create nothing
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

    def feed(self, data) -> None:
        self.dec.receive_data(data)
        k = self.kernel
        dec = self.dec
        while True:
            if dec.feed_pages(self._sink_batch):
                continue
            e = dec.next_event()
            if e is pstream.NEED_DATA:
                return
            if isinstance(e, pstream.Header):
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
            elif isinstance(e, pstream.Page):
                self._sink(pstream.TAG_ZERO if e.zero else pstream.TAG_PAGE, e.va, e.perm,
                           None, e.data)
            elif isinstance(e, pstream.Remote):
                self._sink(pstream.TAG_REMOTE, e.va, e.perm, None)
            elif isinstance(e, pstream.RemoteRun):
                self.pages += e.count
                if self.env is not None:
                    k.restore_remote_run(self.env, e.va, e.count, e.perm)
            elif isinstance(e, pstream.Trailer):
                if self.total != e.pages:
                    raise StreamError(f"header announces {self.total} pages, trailer {e.pages}")

    def _sink_batch(self, records, view) -> None:
        """Many page records at once (the decoder's fast path)."""
        self.pages += len(records)
        if logs.DEBUG:
            log_chunks(self.log, "receive page", [r[1:] for r in records if r[0] != b"R"])
        if self.env is not None:
            self.kernel.restore_records(self.env, records, view)

    def _sink(self, tag, va: int, perm: int, body, data=None) -> None:
        """One page record: install it in the incoming env (if creating)."""
        self.pages += 1
        if self.env is None:
            return
        k = self.kernel
        if tag == pstream.TAG_PAGE:
            if body is not None:
                k.restore_page(self.env, va, perm, chunks=(body[7:1031], body[1032:2056],
                                                           body[2057:3081], body[3082:4106]))
            else:
                k.restore_page(self.env, va, perm, data)
        elif tag == pstream.TAG_ZERO:
            k.restore_page(self.env, va, perm, pstream.ZERO_PAGE)
        else:
            k.restore_page(self.env, va, perm, None)

    def finish(self) -> None:
        """Check that the stream ended properly."""
        if not self.done:
            raise StreamError("the stream ended early (truncated: no trailer)")

    def commit(self, resume: bool = False):
        self.finish()
        env = self.kernel.commit_incoming(self.env, resume=resume)
        self.env = None
        return env

    def abort(self) -> None:
        if self.env is not None:
            self.kernel.abort_incoming(self.env)
            self.env = None
