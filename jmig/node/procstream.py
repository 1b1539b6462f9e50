"""Moving one env in and out of a kernel as a process stream.

`StreamWriter` turns a paused env into process-stream bytes a batch at a
time; `StreamRestorer` feeds decoded stream events into a kernel as an
"incoming" env that becomes real only on commit (and leaves nothing behind
on abort).  Save/load (images.py) and normal migration (migrate.py) are
both built from these two.
"""
from __future__ import annotations

import attrs

import jmig
from ..kernel import events as ev
from ..kernel.kernel import Kernel
from ..proto import pstream
from ..proto.pstream import StreamDecoder, StreamEncoder, StreamError

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
        self.pages = kernel.env_pages(envid)
        if any(p.remote for p in self.pages):
            raise ev.KernelError(ev.BAD_STATE, f"env {envid} still has pages on another node")
        self.enc = StreamEncoder()
        self.header = pstream.header_fields(
            kernel.header(envid), node=node, jmig_version=jmig.__version__,
            pages=len(self.pages), method=method, extra=extra)
        self.progress = Progress(total=len(self.pages))

    def batches(self, batch_bytes: int = BATCH_BYTES):
        """Yield lists of byte strings of about batch_bytes each, the last
        ending with the trailer."""
        k = self.kernel
        out = [self.enc.start(self.header)]
        size = len(out[0])
        for p in self.pages:
            if self.remote:
                rec = self.enc.remote(p.va, p.perm)
            else:
                rec = self.enc.page(p.va, p.perm, k.page_data(self.envid, p.va))
            out.append(rec)
            size += len(rec)
            self.progress.done += 1
            if size >= batch_bytes:
                self.progress.nbytes += size
                yield out
                out, size = [], 0
        out.append(self.enc.trailer())
        size += len(out[-1])
        self.progress.nbytes += size
        yield out


class StreamRestorer:
    """Decode a process stream into an incoming env of `kernel`.

    feed() raises StreamError for a malformed stream and KernelError when
    the kernel refuses (memory, env slots); after either, call abort().
    """

    def __init__(self, kernel: Kernel, keep_id: bool = True, allow_remote: bool = False,
                 create: bool = True):
        self.kernel = kernel
        self.keep_id = keep_id
        self.allow_remote = allow_remote
        self.create = create               # False: verify only, create nothing
        self.dec = StreamDecoder()
        self.env = None
        self.header: dict | None = None
        self.pages = 0
        self.total = 0

    @property
    def done(self) -> bool:
        return self.dec.state == "done"

    def feed(self, data) -> None:
        self.dec.receive_data(data)
        k = self.kernel
        for e in self.dec.events():
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
            elif isinstance(e, pstream.Page):
                self.pages += 1
                if self.env is not None:
                    k.restore_page(self.env, e.va, e.perm, e.data)
            elif isinstance(e, pstream.Remote):
                if not self.allow_remote:
                    raise StreamError(f"page {e.va:#010x} is marked remote in a full-copy stream")
                self.pages += 1
                if self.env is not None:
                    k.restore_page(self.env, e.va, e.perm, None)
            elif isinstance(e, pstream.Trailer):
                if self.total != e.pages:
                    raise StreamError(f"header announces {self.total} pages, trailer {e.pages}")

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
