"""Demand-paging (pgfault) migration: only the page table entries move
(the process stream of normal.py, with RUN records of remote pages
instead of contents, to the destination's P+1); the origin keeps the
pages and serves them (origin.py) to the destination's pager (pager.py).

    source -> dest   Begin{pager, token, push, prefetch}
    dest -> source   Ready                 (its pager attached to the origin's page server)
    source -> dest   <process stream of RUN records>   (the process stops just before)
"""
from __future__ import annotations

import os

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
                "push": self.push, "prefetch": self.prefetch}

    def prepared(self, out) -> None:
        """The destination holds it: the pages to serve are the ones sent as remote."""
        self.node.migrations.origin.outgoing[out.mid].set_runs(self.writer.runs)

    def hand_over(self, out) -> None:
        """GO: keep the pages and serve them until the destination has them all."""
        self.node.migrations.origin.serve(out.mid)

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
        await pager.attached(b.mid)
        await link.send(m.Ready())
        return await super().receive(inb, link)

    def committed(self, inb, env) -> None:
        self.node.migrations.pager.commit(inb.begin.mid, env.env_id)

    def started(self, inb, env) -> None:
        self.node.migrations.pager.go(inb.begin.mid)

    def aborted(self, inb) -> None:
        self.node.migrations.pager.cancel(inb.begin.mid)
