"""Demand-paging (pgfault) migration: only the page table entries move
(the process stream of normal.py, with RUN records of remote pages
instead of contents, to the destination's P+1); the origin keeps the
pages and serves them (origin.py) to the destination's pager (pager.py).

    source -> dest   Begin{pager, token, push, prefetch, runs}
    dest -> source   Ready                 (its pager attached to the origin's page server,
                                            its page table built from the runs)
    source -> dest   <process stream of RUN records>   (the process stops just before)

The switch (pause to runnable) is kept to what changed: Begin announces
the page runs as they are while the process runs, and the destination
builds the page table from them before it answers Ready; after the pause
the source finds the runs unchanged at no cost (Kernel.page_runs is kept
until the mapping changes) and the destination, seeing the same runs in
the stream, takes the prebuilt table in one step.  Background push starts
once the destination has said Started, so that no pushed page stands
between the Go and the Started of the switch.
"""
from __future__ import annotations

import os

from ...kernel.events import KernelError
from ...proto import migration as m
from ...proto.migration import MAX_PREFETCH
from .base import MigrationError
from .normal import StreamReceive, StreamSend
from .origin import Outgoing


class PgfaultSend(StreamSend):
    name = "pgfault"
    port_kind = "pgfault"
    remote = True

    def __init__(self, node, envid: int, *, push: bool = True, prefetch: int = 0,
                 destination_addr=None, page_server: str | None = None):
        if not 0 <= prefetch <= MAX_PREFETCH:
            raise MigrationError("bad-request", f"prefetch must be 0..{MAX_PREFETCH}")
        super().__init__(node, envid, keep=False, destination_addr=destination_addr)
        self.push = push
        self.prefetch = prefetch
        self.page_server = page_server
        self.token = os.urandom(16)
        self.dest_name = ""

    def begin_fields(self, out, link) -> dict:
        """The destination's pager may attach from now on (before the
        process stops: the destination answers Ready once it has); pages are
        served only after the hand-over."""
        self.dest_name = link.peer
        self.node.migrations.origin.expect(Outgoing(
            mid=out.mid, envid=self.envid, dest=self.dest_name, dest_addr=self.destination_addr,
            token=self.token, push=self.push, prefetch=self.prefetch, runs=[]))
        host = self.page_server or self.node.advertised_host(link.fs)
        return {"pager": (host, self.node.ports["pager"]), "token": self.token,
                "push": self.push, "prefetch": self.prefetch,
                "runs": m.pack_runs(self.node.kernel.page_runs(self.envid))}

    def prepared(self, out) -> None:
        """The destination holds it: the pages to serve are the ones sent as remote."""
        self.node.migrations.origin.outgoing[out.mid].set_runs(self.writer.runs)

    def hand_over(self, out) -> None:
        """GO: keep the pages and serve them until the destination has them all."""
        self.node.migrations.origin.serve(out.mid)

    def released(self, out) -> None:
        """The destination was told to run it (or will ask): push now."""
        self.node.migrations.origin.push(out.mid)

    def roll_back(self, out) -> None:
        self.node.migrations.origin.forget(out.mid)
        super().roll_back(out)

    def stats(self, out) -> dict:
        return {**super().stats(out), "push": self.push, "prefetch": self.prefetch}


class PgfaultReceive(StreamReceive):
    name = "pgfault"
    allow_remote = True

    async def receive(self, inb, link):
        b = inb.begin
        if b.pager is None or b.token is None:
            raise MigrationError("bad-request", "a pgfault migration must name the page server "
                                 "and carry a token")
        pager = self.node.migrations.pager
        pager.prepare(b.mid, b.src, b.pager, b.token, b.prefetch or 0)
        if b.runs is not None:
            try:
                self.expected = self.node.kernel.remote_table(b.page_runs())
            except KernelError as exc:
                raise MigrationError("bad-request", f"the announced page runs: {exc.message}") \
                    from None
        await pager.attached(b.mid)
        await link.send(m.Ready())
        return await super().receive(inb, link)

    def committed(self, inb, env) -> None:
        self.node.migrations.pager.commit(inb.begin.mid, env.env_id)

    def started(self, inb, env) -> None:
        self.node.migrations.pager.go(inb.begin.mid)

    def aborted(self, inb) -> None:
        self.node.migrations.pager.cancel(inb.begin.mid)
