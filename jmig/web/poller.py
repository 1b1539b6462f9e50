"""The cluster as the web view shows it: the web process asks each node
over its control port (ps, jobs, info; pagemap for the envs someone is
looking at), every POLL_INTERVAL seconds, and only while at least one
browser has an event stream open.  With no viewer it closes its node
connections and sleeps: the nodes do no work for it.

A node that does not answer within REQUEST_TIMEOUT is shown with its
error; it never holds up the others (each node is asked in its own task).
"""
from __future__ import annotations

import math
import time

import trio

from ..proto.control import ControlClient, ControlPool

POLL_INTERVAL = 0.25               # seconds between two looks at the cluster
REQUEST_TIMEOUT = 2.0              # a node slower than this is shown as not answering
MEMBERS_INTERVAL = 2.0             # seconds between two `nodes` asks (one node given)
INFO_INTERVAL = 1.0                # seconds between two `info` asks of a node (memory)
MAX_NODES = 64
MAX_SELECTED = 16                  # distinct (node, env) page maps polled at once


class Poller:
    def __init__(self, seeds: list[str], secret: bytes, interval: float = POLL_INTERVAL):
        self.seeds = list(seeds)
        self.nodes = list(seeds)
        self.secret = secret
        self.interval = interval
        self.viewers = 0
        self._wanted = trio.Event()
        self.version = 0
        self._changed = trio.Event()
        self.view: dict = {"nodes": [], "when": 0.0}      # the last look
        self.pagemaps: dict[tuple[str, int], dict] = {}   # (node, envid) -> pagemap or error
        self.selected: dict[object, tuple[str, int]] = {}  # viewer -> (node, envid)
        self.polls = 0                                    # looks taken (tests, the bench)
        self._pool = ControlPool(self._open)          # kept connections, one per node
        self._members_at = -math.inf
        self._looked_at = -math.inf
        self._info: dict[str, tuple[float, dict]] = {}    # node -> (when asked, info)

    # -- viewers --------------------------------------------------------------------
    def attach(self) -> None:
        self.viewers += 1
        self._wanted.set()

    def detach(self, viewer) -> None:
        self.viewers -= 1
        self.selected.pop(viewer, None)
        if self.viewers == 0:
            self._wanted = trio.Event()

    async def wait_change(self, seen: int) -> int:
        """Wait until a look newer than `seen` is published; its version."""
        while self.version == seen:
            await self._changed.wait()
        return self.version

    # -- the loop -------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            if self.viewers == 0:
                await self._close_all()
                await self._wanted.wait()
            t0 = trio.current_time()
            await self.poll_once()
            await trio.sleep_until(t0 + self.interval)

    async def look(self) -> None:
        """A fresh look for a one-off request (GET /api/state): none if the
        last is younger than the poll interval; with no viewer, the node
        connections are closed again afterwards."""
        if trio.current_time() - self._looked_at < self.interval:
            return
        await self.poll_once()
        if self.viewers == 0:
            await self._close_all()

    async def poll_once(self) -> None:
        if len(self.seeds) == 1 and trio.current_time() - self._members_at >= MEMBERS_INTERVAL:
            await self._members()
        results: dict[str, dict] = {}
        wanted = set(list(self.selected.values())[:MAX_SELECTED])
        maps: dict[tuple[str, int], dict] = {}

        async def one(node: str):
            results[node] = await self._look(node)
            for n, envid in wanted:
                if n == node and "error" not in results[node]:
                    maps[(n, envid)] = await self._pagemap(node, envid)
        async with trio.open_nursery() as nursery:
            for node in self.nodes:
                nursery.start_soon(one, node)
        self.view = {"nodes": [{"addr": n, **results[n]} for n in self.nodes],
                     "when": time.time()}
        self.pagemaps = maps
        self.polls += 1
        self._looked_at = trio.current_time()
        self.version += 1
        self._changed.set()
        self._changed = trio.Event()

    async def _members(self) -> None:
        self._members_at = trio.current_time()
        try:
            res = await self._ask(self.seeds[0], "nodes")
        except Exception:
            return                      # shown as the seed's error by _look
        addrs = [m["addr"] for m in res.get("nodes", [])
                 if isinstance(m, dict) and isinstance(m.get("addr"), str)
                 and m.get("state") in ("alive", "suspect")]
        if addrs:
            self.nodes = [self.seeds[0]] + [a for a in addrs[1:MAX_NODES] if a != self.seeds[0]]

    async def _look(self, node: str) -> dict:
        try:
            at, info = self._info.get(node, (-math.inf, None))
            if trio.current_time() - at >= INFO_INTERVAL:
                info = await self._ask(node, "info")
                self._info[node] = (trio.current_time(), info)
            envs = (await self._ask(node, "ps"))["envs"]
            jobs = (await self._ask(node, "jobs"))["jobs"]
        except Exception as exc:        # shown per node; the others go on
            return {"error": _why(exc)}
        return {"name": info.get("name", node), "memory": info.get("memory"),
                "envs": [{k: e.get(k) for k in ("envid", "program", "status", "state", "pages",
                                                "remote_pages", "runs")} for e in envs],
                "jobs": [{k: j.get(k) for k in ("id", "kind", "envid", "target", "method",
                                                "state", "progress", "result", "error")}
                         for j in jobs]}

    async def _pagemap(self, node: str, envid: int) -> dict:
        try:
            return await self._ask(node, "pagemap", {"envid": envid})
        except Exception as exc:
            return {"envid": envid, "error": _why(exc)}

    async def _open(self, node: str, timeout: float) -> ControlClient:
        return await ControlClient.open(node, self.secret, timeout=timeout, name="jmig-web")

    async def _ask(self, node: str, op: str, args: dict | None = None):
        """One request on the node's kept connection (opened on demand,
        dropped on a failure other than the node's error answer; a look
        for /api/state and the loop's never use it at the same time)."""
        try:
            return await self._pool.call(node, op, args, REQUEST_TIMEOUT)
        except Exception:
            if node not in self._pool.clients:
                self._info.pop(node, None)
            raise

    async def call(self, node: str, op: str, args: dict) -> dict:
        """A control request on its own connection (the buttons)."""
        with trio.fail_after(REQUEST_TIMEOUT * 5):
            async with await ControlClient.open(node, self.secret, timeout=REQUEST_TIMEOUT,
                                                name="jmig-web") as c:
                return await c.request(op, args)

    async def _close_all(self) -> None:
        self._info.clear()
        await self._pool.close_all()


def _why(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return f"no answer within {REQUEST_TIMEOUT:g} s"
    code = getattr(exc, "code", None)
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return f"{code}: {text}" if code else text
