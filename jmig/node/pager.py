"""Demand-paging (pgfault) migration: receiver on P+1, page server on P+2,
and the pager that fetches remote pages for blocked envs."""
from __future__ import annotations

from ..kernel import events as ev


class Pager:
    def __init__(self, node):
        self.node = node

    async def run(self) -> None:
        return

    def on_blocked(self, e: ev.EnvBlocked) -> None:
        pass

    def env_gone(self, envid: int) -> None:
        pass

    async def pull_all(self, envid: int) -> None:
        raise ev.KernelError(ev.BAD_STATE, f"env {envid} has remote pages")

    async def receive_pgfault(self, fs) -> None:
        await fs.send({"t": "error", "code": "unsupported", "message": "not yet"})

    async def serve_pages(self, fs) -> None:
        await fs.send({"t": "error", "code": "unsupported", "message": "not yet"})
