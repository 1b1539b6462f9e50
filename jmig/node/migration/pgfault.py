"""Demand-paging (pgfault) migration: only the page table entries move
(the process stream of normal.py, with RUN records of remote pages
instead of contents, to the destination's P+1); the origin keeps the
pages and serves them (origin.py) to the destination's pager (pager.py).

    source -> dest   Begin{pages, pager, token, push, prefetch} <process stream of RUN records>
"""
from __future__ import annotations

import os

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
        self.dest_name = link.peer
        host = self.page_server or self.node.advertised_host(link.fs)
        return {"pager": (host, self.node.ports["pager"]), "token": self.token,
                "push": self.push, "prefetch": self.prefetch}

    def prepared(self, out) -> None:
        """The destination holds it: its pager may attach now."""
        self.node.migrations.origin.expect(Outgoing(
            mid=out.mid, envid=self.envid, dest=self.dest_name, dest_addr=self.destination_addr,
            token=self.token, push=self.push, prefetch=self.prefetch, runs=self.writer.runs))

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
        self.node.migrations.pager.prepare(b.mid, b.src, b.pager, b.token, b.prefetch or 0)
        return await super().receive(inb, link)

    async def committed(self, inb, env) -> None:
        await self.node.migrations.pager.commit(inb.begin.mid, env.env_id)

    def started(self, inb, env) -> None:
        self.node.migrations.pager.go(inb.begin.mid)

    def aborted(self, inb) -> None:
        self.node.migrations.pager.cancel(inb.begin.mid)
