"""Normal migration, and what travels in it: every page, as a process
stream (proto/pstream.py) written raw on the connection right after the
Begin frame (it is self-delimiting: its trailer ends it), page data going
from the source's frames to the destination's with scatter/gather calls.
The demand-paging method sends the same stream with page table entries
only (pgfault.py), and save/load write and read it to and from a file
(filelink.py).

    source -> dest   Begin{pages} <process stream>           then session.py's steps
"""
from __future__ import annotations

from ...proto import migration as m
from ..failpoints import failpoint
from .base import Hold, MigrationError, SourceCopy
from .stream import StreamRestorer, StreamWriter


class StreamSend(SourceCopy):
    """The source's part of a migration whose data is a process stream:
    the env is paused (if it was not) once the link to the destination is
    up, and held for the rest of the exchange.  While the link is being
    opened it keeps running, marked busy (kill and other moves refused)."""
    holds_as = Hold.MIGRATING
    name = "normal"
    port_kind = "normal"
    remote = False                          # pgfault: page table entries only

    def __init__(self, node, envid: int, *, keep: bool = False,
                 destination_addr: tuple[str, int] | None = None):
        self.node = node
        self.envid = envid
        self.keep = keep
        self.destination_addr = destination_addr     # (host, P) of the destination
        self.was_paused = False
        self.paused_here = False                     # this migration paused it
        self.writer: StreamWriter | None = None

    async def hold(self, out) -> None:
        node, k = self.node, self.node.kernel
        k.get_env(self.envid)
        node.migrations.check_free(self.envid)
        if k.remote_count(self.envid):
            await node.migrations.pager.pull_all(self.envid)
        node.migrations.busy[self.envid] = str(self.holds_as)

    async def stop(self, out) -> None:
        """Pause and hold the env: the downtime starts here.  A fork in
        progress finishes first (the child's pages are mapped from this
        node); a syscall of it that waits for another node's answer gets it
        (paused, the env does not run on it: the answer moves with its
        registers)."""
        k = self.node.kernel
        await self.node.remote.finish_fork(self.envid)
        e = k.get_env(self.envid)
        self.was_paused = e.paused
        if not e.paused:
            k.pause(self.envid)
            self.paused_here = True
        out.paused_now()
        await self.node.remote.quiesce(self.envid)
        self.node.migrations.busy.pop(self.envid, None)
        e = k.get_env(self.envid)
        e.frozen = self.holds_as

    def begin_fields(self, out, link) -> dict:
        return {}

    async def transfer(self, out, link) -> None:
        node = self.node
        if self.remote:
            # Begin first, the process still running: the destination's pager
            # attaches to our page server before the downtime starts.
            await self._begin(out, link, None)
            await link.receive(frozenset({m.Ready}))
            await self.stop(out)
            self.writer = w = StreamWriter(node.kernel, self.envid, node.name, self.name,
                                           remote=True)
        else:
            await self.stop(out)
            self.writer = w = StreamWriter(node.kernel, self.envid, node.name, self.name)
            await self._begin(out, link, w.npages)
        failpoint(f"{self.name}.src.after_begin")
        for parts in w.parts():
            await link.send_stream(parts)
            out.progress(done=w.progress.done, total=w.progress.total, bytes=w.progress.nbytes)

    async def _begin(self, out, link, pages: int | None) -> None:
        node = self.node
        await link.send(m.Begin(mid=out.mid, method=self.name, src=node.name,
                                src_addr=node.address_for(link), incarnation=node.incarnation,
                                resume=out.resume, pages=pages, **self.begin_fields(out, link)))

    def hand_over(self, out) -> None:
        """GO: the destination has it; give ours up (--keep: leave it paused)."""
        self.keep_or_give_up()
        if self.keep:
            self.node.dispatch_events()

    def roll_back(self, out) -> None:
        """ABORT: the env is ours again, as it was before."""
        self.give_back()

    def stats(self, out) -> dict:
        w = self.writer
        return {"pages": w.npages if w else 0, "bytes": w.progress.nbytes if w else 0,
                "was_paused": self.was_paused, "kept": self.keep}


class StreamReceive:
    """The destination's part: decode the stream into an incoming env."""
    name = "normal"
    allow_remote = False

    def __init__(self, node):
        self.node = node
        self.restorer: StreamRestorer | None = None
        self.expected = None            # pgfault: the remote PTEs built before the stream

    async def receive(self, inb, link):
        r = self.restorer = StreamRestorer(self.node.kernel, keep_id=True,
                                           allow_remote=self.allow_remote, node=self.node.name,
                                           expected=self.expected)
        try:
            await link.receive_stream(r)
            r.finish()
        except BaseException:
            r.abort()
            raise
        if r.env is None:
            raise MigrationError("bad-stream", "the stream held no process")
        env, r.env = r.env, None
        return env

    def committed(self, inb, env) -> None:
        """The env is committed here (held): get ready for it to start."""

    def started(self, inb, env) -> None:
        """The source said go: the env runs here."""

    def aborted(self, inb) -> None:
        """The migration ended here without the env (failed, or the source
        said abort): nothing of it stays."""


def check_target(node, host: str, port: int) -> None:
    """Refuse a migration to this node itself."""
    if node.is_me(host, port):
        raise MigrationError("bad-request", f"{host}:{port} is this node; migrate to another one")

