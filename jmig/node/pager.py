"""Demand-paging (pgfault) migration: post-copy with background push,
prefetch, release, and recovery from link failures.

The origin sends the env's page table entries only (a process stream of
REMOTE records, migrate.py's two-phase commit on the destination's P+1)
and keeps the pages, frozen "serving pages".  The destination's pager (the
original project's "super process") connects to the origin's page server
(P+2) and fetches a page whenever the env touches one that is still
remote; the env alone waits, everything else runs.

Page server protocol (after the port's handshake):

    dest -> origin   {t: attach, mid, token, need: <u32 vpn array>}
    origin -> dest   {t: attached, remaining}  | {t: error, code: "unknown-migration" | ...}
    dest -> origin   {t: get, vpn, n}          a fault: vpn and up to n following pages
    origin -> dest   {t: pages, b: <PAGE/ZERO records>, push: bool}
    dest -> origin   {t: release}              every page has arrived (or the env died)
    origin -> dest   {t: released}

Faults jump the queue: the origin answers a `get` before sending the next
background push batch.  Every page is sent once (`sent`); on re-attach the
destination lists the pages it still needs, which become unsent again, so
after a broken link no page is installed twice and none is missing.  The
origin serves a migration's pages only to that migration's destination
(its node name from the handshake) holding the migration's token.

Onward migration, save and copy of an env with remote pages first pull
every remaining page in (pull_all), then proceed as usual.
"""
from __future__ import annotations

import hmac
import math
from bisect import bisect_right
from itertools import chain
import os
import struct
import time
from collections import deque

import attrs
import trio

from ..kernel import events as ev
from ..proto.frames import ProtocolError
from ..proto.handshake import AuthError
from ..proto.pstream import StreamError, decode_pages, encode_pages
from ..proto.wire import ConnectionClosed, FramedStream
from .failpoints import failpoint
from .migrate import MigrationError
from .tasks import nursery as open_nursery

PUSH_BATCH = 16                    # pages per background push frame
MAX_PREFETCH = 64
BACKOFF_MIN, BACKOFF_MAX = 0.05, 2.0
LATENCY_SAMPLES = 100_000


def _pack_vpns(vpns) -> bytes:
    return struct.pack(f">{len(vpns)}I", *vpns)


def _unpack_vpns(b: bytes) -> list[int]:
    if not isinstance(b, bytes) or len(b) % 4:
        raise ProtocolError("bad vpn list")
    return list(struct.unpack(f">{len(b) // 4}I", b))


@attrs.define(eq=False)
class Outgoing:
    """Origin side: an env whose pages this node serves."""
    mid: str
    envid: int
    dest: str                        # destination node name (from its handshake)
    dest_addr: tuple[str, int]       # (host, P) of the destination
    token: bytes
    push: bool
    prefetch: int
    committed: bool = False
    sent: set = attrs.Factory(set)   # vpns sent
    runs: list = attrs.Factory(list)  # [(first vpn, count, perm)] in address order
    starts: list = attrs.Factory(list)  # the first vpns, for bisect
    started: float = 0.0
    pushed: int = 0
    served: int = 0
    attached: bool = False

    def __attrs_post_init__(self):
        self.starts = [r[0] for r in self.runs]

    def vpns(self):
        """Every vpn this migration serves, in address order."""
        return chain.from_iterable(range(f, f + c) for f, c, _ in self.runs)

    def perm_of(self, vpn: int) -> int | None:
        i = bisect_right(self.starts, vpn) - 1
        if i >= 0:
            first, count, perm = self.runs[i]
            if vpn < first + count:
                return perm
        return None

    def following(self, vpn: int, n: int) -> list[int]:
        """Up to n vpns after vpn, in address order (the prefetch window)."""
        out = []
        i = bisect_right(self.starts, vpn) - 1
        while n > 0 and 0 <= i < len(self.runs):
            first, count, _ = self.runs[i]
            start = max(first, vpn + 1)
            take = list(range(start, min(first + count, start + n)))
            out += take
            n -= len(take)
            i += 1
        return out


def _batches(out: "Outgoing", size: int):
    """The pages not sent yet, in address order, size at a time (checked
    against `sent` as they are taken, since faults send pages meanwhile)."""
    batch = []
    for vpn in out.vpns():
        if vpn not in out.sent:
            batch.append(vpn)
            if len(batch) >= size:
                batch = [v for v in batch if v not in out.sent]
                if batch:
                    yield batch
                batch = []
    batch = [v for v in batch if v not in out.sent]
    if batch:
        yield batch


def runs_of(vpn_perms) -> list[tuple[int, int, int]]:
    """[(first vpn, count, perm)] from (vpn, perm) pairs in address order."""
    runs: list[list[int]] = []
    for vpn, perm in vpn_perms:
        if runs and runs[-1][2] == perm and runs[-1][0] + runs[-1][1] == vpn:
            runs[-1][1] += 1
        else:
            runs.append([vpn, 1, perm])
    return [tuple(r) for r in runs]


@attrs.define(eq=False)
class Incoming:
    """Destination side: an env whose pages still come from its origin."""
    mid: str
    envid: int
    origin: str                      # origin node name
    addr: tuple[str, int]            # origin page server (host, port)
    status_addr: tuple[str, int]     # origin's (host, P)
    token: bytes
    push: bool
    prefetch: int
    started: float
    requests: object = None          # trio send channel: vpns, None (check), or bytes
    requests_recv: object = None
    link: object = None              # the FramedStream to the origin, while connected
    pending: dict = attrs.Factory(dict)   # vpn -> time the env blocked on it
    state: str = "connecting"        # connecting / active / waiting / released / lost
    done: trio.Event = attrs.Factory(trio.Event)
    all_in: trio.Event = attrs.Factory(trio.Event)
    pull: bool = False
    faults: int = 0
    fetched: int = 0                 # pages installed because they were asked for
    pushed: int = 0                  # pages installed from background push
    duplicates: int = 0
    reconnects: int = 0
    released_after: float | None = None


class Pager:
    def __init__(self, node):
        self.node = node
        self.outgoing: dict[str, Outgoing] = {}
        self.out_by_env: dict[int, Outgoing] = {}
        self.incoming: dict[str, Incoming] = {}
        self.in_by_env: dict[int, Incoming] = {}
        self.latencies: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.totals = {"remote_faults": 0, "pages_fetched": 0, "pages_pushed": 0,
                       "pages_served": 0, "pages_push_sent": 0, "duplicates": 0,
                       "releases": 0, "migrations_lost": 0, "reconnects": 0}
        self.nursery: trio.Nursery | None = None

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            await trio.sleep_forever()

    # -- statistics ------------------------------------------------------------------
    def stats(self) -> dict:
        lat = sorted(self.latencies)
        out = dict(self.totals)
        out["fault_latency_p50_ms"] = _pct(lat, 50) * 1000 if lat else None
        out["fault_latency_p99_ms"] = _pct(lat, 99) * 1000 if lat else None
        out["incoming_active"] = sum(1 for i in self.incoming.values()
                                     if i.state not in ("released", "lost"))
        out["outgoing_active"] = len(self.outgoing)
        released = [i.released_after for i in self.incoming.values()
                    if i.released_after is not None]
        out["last_release_s"] = released[-1] if released else None
        out["migrations_in"] = [
            {"envid": i.envid, "origin": i.origin, "state": i.state, "faults": i.faults,
             "fetched": i.fetched, "pushed": i.pushed, "duplicates": i.duplicates,
             "reconnects": i.reconnects, "release_s": i.released_after}
            for i in list(self.incoming.values())[-16:]]
        return out

    def annotate(self, envid: int) -> str:
        """Extra ps state for an env (origin unreachable, serving pages)."""
        inc = self.in_by_env.get(envid)
        if inc is not None and inc.state == "waiting":
            return f"origin {inc.origin} unreachable, retrying"
        return ""

    # -- origin: the migrations whose pages this node serves ---------------------------
    def track(self, out: Outgoing) -> None:
        self.outgoing[out.mid] = out
        self.out_by_env[out.envid] = out

    def forget(self, mid: str) -> None:
        out = self.outgoing.pop(mid, None)
        if out is not None and self.out_by_env.get(out.envid) is out:
            del self.out_by_env[out.envid]

    # -- origin: sending ------------------------------------------------------------
    async def send_pgfault(self, envid: int, target: str, *, keep: bool = False,
                           resume: bool = False, push=True, prefetch=0, progress=None,
                           page_server: str | None = None) -> dict:
        if not isinstance(push, bool) or not isinstance(prefetch, int) \
                or not 0 <= prefetch <= MAX_PREFETCH:
            raise MigrationError("bad-request", f"prefetch must be 0..{MAX_PREFETCH}")
        if keep:
            raise MigrationError("bad-request", "--keep makes no sense for pgfault: the "
                                 "origin keeps the pages until they have all moved")
        node = self.node
        k = node.kernel
        token = os.urandom(16)
        from .migrate import parse_target
        host, port = parse_target(target)

        def extra(fs):
            # Where the destination reaches our page server: the address this
            # connection leaves from, unless told otherwise.
            ph = page_server or node.advertised_host(fs)
            return {"pager": [ph, node.ports["pager"]], "origin_port": node.cfg.port,
                    "token": token, "push": push, "prefetch": prefetch}

        def on_prepared(mid, fs, writer):
            out = Outgoing(mid=mid, envid=envid, dest=fs.peer, dest_addr=(host, port),
                           token=token, push=push, prefetch=prefetch, runs=writer.runs,
                           started=time.perf_counter())
            self.track(out)

        stats = await node.migrator.send(envid, target, "pgfault", resume=resume,
                                         progress=progress, extra=extra,
                                         on_prepared=on_prepared, on_failed=self.forget)
        out = self.outgoing.get(stats["mid"])
        if out is not None:
            out.committed = True
            e = k.get_env(envid)
            if e.frozen == "migrated":
                e.frozen = "serving pages"
        stats.update({"push": push, "prefetch": prefetch, "kept": False})
        return stats

    # -- origin: the page server ------------------------------------------------------
    async def serve_pages(self, fs: FramedStream) -> None:
        msg = await fs.receive()
        if msg.get("t") != "attach":
            await fs.send({"t": "error", "code": "protocol", "message": "expected attach"})
            return
        out = self.outgoing.get(msg.get("mid")) if isinstance(msg.get("mid"), str) else None
        token = msg.get("token")
        if out is None:
            await fs.send({"t": "error", "code": "unknown-migration",
                           "message": f"{self.node.name} serves no migration {msg.get('mid')!r}"})
            return
        if not isinstance(token, bytes) or not hmac.compare_digest(token, out.token) \
                or fs.peer != out.dest:
            self.node.log.warning("page request refused", mid=out.mid, peer=fs.peer)
            await fs.send({"t": "error", "code": "refused",
                           "message": "not this migration's destination"})
            return
        if out.attached:
            await fs.send({"t": "error", "code": "busy", "message": "already attached"})
            return
        need = set(_unpack_vpns(msg.get("need", b"")))
        # Pages the destination still lacks count as unsent (lost in flight).
        out.sent = set(out.vpns()) - need
        out.attached = True
        try:
            await fs.send({"t": "attached", "remaining": len(need)})
            await self._serve(fs, out)
        finally:
            out.attached = False

    async def _serve(self, fs: FramedStream, out: Outgoing) -> None:
        """Answer faults at once (from the reader) and push the rest in the
        background; the stream's send lock (FIFO) makes a fault wait for at
        most one push batch."""
        released = trio.Event()
        k = self.node.kernel

        def page(vpn):
            va = vpn << 12
            return (va, out.perm_of(vpn), k.page_data(out.envid, va))

        async def send(batch, is_push):
            out.sent.update(batch)
            await fs.send({"t": "pages", "b": encode_pages([page(v) for v in batch]),
                           "push": is_push})
            if is_push:
                out.pushed += len(batch)
                self.totals["pages_push_sent"] += len(batch)
            else:
                out.served += len(batch)
                self.totals["pages_served"] += len(batch)
            failpoint("pager.origin.after_pages")

        async def reader():
            while True:
                m = await fs.receive()
                t = m.get("t")
                if t == "get" and isinstance(m.get("vpn"), int):
                    vpn = m["vpn"]
                    n = m.get("n", 0)
                    n = min(n, MAX_PREFETCH) if isinstance(n, int) else 0
                    if out.perm_of(vpn) is not None:
                        cand = [vpn] + (out.following(vpn, n) if n else [])
                        batch = [v for v in cand if v not in out.sent]
                        if batch:
                            await send(batch, False)
                elif t == "release":
                    released.set()
                    return
                else:
                    raise ProtocolError(f"unexpected {t!r} on the page server")

        async def pusher():
            for vpn_batch in _batches(out, PUSH_BATCH):
                await send(vpn_batch, True)
                await trio.sleep(0)

        async with open_nursery() as nursery:
            nursery.start_soon(reader)
            if out.push:
                nursery.start_soon(pusher)
            await released.wait()
            nursery.cancel_scope.cancel()
        # Released: every page is on the destination.
        self._release_outgoing(out, "released by destination")
        try:
            await fs.send({"t": "released"})
        except ConnectionClosed:
            pass

    def _release_outgoing(self, out: Outgoing, why: str) -> None:
        self.forget(out.mid)
        k = self.node.kernel
        try:
            e = k.get_env(out.envid)
        except ev.KernelError:
            return
        self.totals["releases"] += 1
        k.env_destroy(e, 0, why)
        self.node.dispatch_events()
        self.node.log.info("origin released", envid=out.envid, mid=out.mid,
                           seconds=round(time.perf_counter() - out.started, 4),
                           served=out.served, pushed=out.pushed)

    # -- destination: receiving ----------------------------------------------------------
    async def receive_pgfault(self, fs: FramedStream) -> None:
        await self.node.migrator.receive(fs, "pgfault", on_commit=self._on_commit)

    def _on_commit(self, begin: dict, env) -> None:
        pager = begin.get("pager")
        token = begin.get("token")
        if not (isinstance(pager, list) and len(pager) == 2 and isinstance(pager[0], str)
                and isinstance(pager[1], int) and isinstance(token, bytes)):
            raise ProtocolError("pgfault begin lacks the page server address or token")
        prefetch = begin.get("prefetch", 0)
        inc = Incoming(mid=begin["mid"], envid=env.env_id, origin=str(begin.get("src", "?")),
                       addr=(pager[0], pager[1]), status_addr=(pager[0], begin.get("origin_port", 0)),
                       token=token, push=bool(begin.get("push")),
                       prefetch=prefetch if isinstance(prefetch, int) else 0,
                       started=time.perf_counter())
        inc.requests, inc.requests_recv = trio.open_memory_channel(math.inf)
        self.incoming[inc.mid] = inc
        self.in_by_env[env.env_id] = inc
        self.nursery.start_soon(self._link, inc)

    def on_blocked(self, e: ev.EnvBlocked) -> None:
        inc = self.in_by_env.get(e.owner)
        if inc is None:
            self.node.log.error("env blocked on a remote page of no migration",
                                envid=e.envid, owner=e.owner, va=f"{e.va:08x}")
            return
        vpn = e.va >> 12
        if vpn not in inc.pending:
            inc.pending[vpn] = time.perf_counter()
            inc.faults += 1
            self.totals["remote_faults"] += 1
            fs = inc.link
            # Ask at once from here (the kernel task) when the link is idle:
            # one task switch less on every fault.
            if fs is not None and fs.send_now({"t": "get", "vpn": vpn, "n": inc.prefetch}):
                if fs.unsent:
                    inc.requests.send_nowait(b"")         # the asker flushes the rest
                return
            inc.requests.send_nowait(vpn)

    def env_gone(self, envid: int) -> None:
        """An env here died: stop fetching its pages and let the origin go."""
        inc = self.in_by_env.get(envid)
        if inc is not None and inc.state not in ("released", "lost"):
            inc.pull = False
            inc.all_in.set()
            try:
                inc.requests.send_nowait(None)      # wakes the link to release
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def _link(self, inc: Incoming) -> None:
        """Keep a connection to the origin's page server until every page is
        here.  Never raises: a bug here must not take the node down."""
        try:
            with self.node.io():
                await self._link_loop(inc)
        except Exception:
            self.node.log.exception("pager link failed", envid=inc.envid, origin=inc.origin)
            inc.state = "waiting"

    async def _link_loop(self, inc: Incoming) -> None:
        node = self.node
        backoff = BACKOFF_MIN
        while inc.state not in ("released", "lost"):
            try:
                fs = await node.connect(inc.addr[0], inc.addr[1], "pager", timeout=5)
            except (OSError, trio.TooSlowError, ConnectionClosed, ProtocolError, AuthError) as exc:
                self._link_down(inc, exc)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            try:
                alive = self._env_alive(inc)
                need = self._remote_vpns(inc) if alive else []
                await fs.send({"t": "attach", "mid": inc.mid, "token": inc.token,
                               "need": _pack_vpns(need)})
                with trio.fail_after(10):
                    reply = await fs.receive()
                if reply.get("t") == "error":
                    if reply.get("code") == "unknown-migration":
                        self._lost(inc, str(reply.get("message", "")))
                        return
                    raise ProtocolError(f"origin refused: {reply.get('message')}")
                if inc.state == "waiting":
                    inc.reconnects += 1
                    self.totals["reconnects"] += 1
                    node.log.info("origin reachable again", envid=inc.envid, origin=inc.origin)
                inc.state = "active"
                backoff = BACKOFF_MIN
                await self._exchange(fs, inc)
            except (ConnectionClosed, ProtocolError, trio.TooSlowError, StreamError) as exc:
                self._link_down(inc, exc)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
            finally:
                await fs.aclose()

    def _env_alive(self, inc: Incoming) -> bool:
        e = self.node.kernel.envs[inc.envid & 0x3FF]
        return e.env_id == inc.envid and e.status != 0

    def _remote_vpns(self, inc: Incoming) -> list[int]:
        try:
            return [va >> 12 for va in self.node.kernel.remote_pages(inc.envid)]
        except ev.KernelError:
            return []

    def _link_down(self, inc: Incoming, exc) -> None:
        if inc.state != "waiting":
            self.node.log.warning("origin unreachable; env waits for pages", envid=inc.envid,
                                  origin=inc.origin, error=str(exc) or type(exc).__name__)
        inc.state = "waiting"

    async def _exchange(self, fs: FramedStream, inc: Incoming) -> None:
        """One connection's life: ask for faulted pages, install what arrives,
        release the origin when nothing is remote any more."""
        k = self.node.kernel
        releasing = False

        async def maybe_release():
            nonlocal releasing
            if not releasing and (not self._env_alive(inc) or not self._remote_vpns(inc)):
                releasing = True
                await fs.send({"t": "release"})

        # Re-ask for every page an env is blocked on (requests lost with the last link).
        for vpn in list(inc.pending):
            await fs.send({"t": "get", "vpn": vpn, "n": inc.prefetch})
        if inc.pull:
            await self._request_all(fs, inc)

        async def asker():
            async for vpn in inc.requests_recv:
                if vpn is None:
                    if inc.pull:
                        await self._request_all(fs, inc)
                    await maybe_release()
                elif isinstance(vpn, bytes):
                    await fs.send_raw(vpn)          # flushes the rest of a send_now frame
                elif vpn in inc.pending:
                    await fs.send({"t": "get", "vpn": vpn, "n": inc.prefetch})

        inc.link = fs
        try:
            async with open_nursery() as nursery:
                nursery.start_soon(asker)
                await maybe_release()
                while True:
                    m = await fs.receive()
                    t = m.get("t")
                    if t == "released" and releasing:
                        self._released(inc)
                        nursery.cancel_scope.cancel()
                        return
                    if t != "pages" or not isinstance(m.get("b"), bytes):
                        raise ProtocolError(f"unexpected {t!r} from the page server")
                    now = time.perf_counter()
                    for p in decode_pages(m["b"]):
                        vpn = p.va >> 12
                        try:
                            installed = k.install_page(inc.envid, p.va, p.data)
                        except ev.KernelError as exc:
                            if exc.code != ev.NO_SUCH_ENV:
                                raise
                            installed = False
                        t0 = inc.pending.pop(vpn, None)
                        if t0 is not None:
                            self.latencies.append(now - t0)
                        if not installed:
                            inc.duplicates += 1
                            self.totals["duplicates"] += 1
                        elif m.get("push"):
                            inc.pushed += 1
                            self.totals["pages_pushed"] += 1
                        else:
                            inc.fetched += 1
                            self.totals["pages_fetched"] += 1
                    self.node.poke()
                    if not self._remote_vpns(inc):
                        inc.all_in.set()
                        await maybe_release()
        finally:
            inc.link = None

    async def _request_all(self, fs: FramedStream, inc: Incoming) -> None:
        for vpn in self._remote_vpns(inc):
            if vpn not in inc.pending:
                inc.pending[vpn] = time.perf_counter()
                await fs.send({"t": "get", "vpn": vpn, "n": 0})

    def _released(self, inc: Incoming) -> None:
        inc.state = "released"
        inc.released_after = time.perf_counter() - inc.started
        inc.all_in.set()
        inc.done.set()
        self.in_by_env.pop(inc.envid, None)
        self.node.log.info("all pages arrived; origin released", envid=inc.envid,
                           origin=inc.origin, seconds=round(inc.released_after, 4),
                           fetched=inc.fetched, pushed=inc.pushed, faults=inc.faults)

    def _lost(self, inc: Incoming, why: str) -> None:
        """The origin no longer knows this migration: the remaining pages are gone."""
        inc.state = "lost"
        inc.all_in.set()
        inc.done.set()
        self.in_by_env.pop(inc.envid, None)
        self.totals["migrations_lost"] += 1
        k = self.node.kernel
        missing = self._remote_vpns(inc)
        if self._env_alive(inc):
            shown = ", ".join(f"{v << 12:08x}" for v in missing[:8])
            more = f" and {len(missing) - 8} more" if len(missing) > 8 else ""
            k.cprintf(f"[{inc.envid:08x}] origin {inc.origin} lost the migration; "
                      f"{len(missing)} pages are gone ({shown}{more}); destroying the env\n")
            k.env_destroy(k.get_env(inc.envid), 0, "pages lost with the origin")
        self.node.dispatch_events()
        self.node.log.error("migration lost", envid=inc.envid, origin=inc.origin,
                            missing=len(missing), reason=why)

    # -- destination: pulling everything in --------------------------------------------
    async def pull_all(self, envid: int) -> None:
        """Fetch every remaining remote page of env (before it moves on,
        is saved or copied).  Raises KernelError if that cannot happen."""
        inc = self.in_by_env.get(envid)
        k = self.node.kernel
        if inc is None:
            if k.remote_pages(envid):
                raise ev.KernelError(ev.BAD_STATE, f"env {envid} has remote pages but no "
                                     "migration to fetch them from")
            return
        inc.pull = True
        inc.requests.send_nowait(None)
        with trio.fail_after(300):
            await inc.all_in.wait()
        if inc.state == "lost" or k.remote_pages(envid):
            raise ev.KernelError(ev.BAD_STATE, f"could not fetch the pages of env {envid} "
                                 f"from {inc.origin}")

    # -- origin: recovery -----------------------------------------------------------------
    async def recover(self, envid: int, force: bool = False) -> dict:
        out = self.out_by_env.get(envid)
        if out is None:
            raise MigrationError("bad-state", f"env {envid} is not held by a migration here")
        host, port = out.dest_addr
        reply = await self.node.migrator.query_status(host, port, "pgfault", out.mid)
        committed = None if reply is None else bool(reply.get("committed"))
        if committed and reply.get("alive") is not False:
            raise MigrationError("refused", f"the destination {host}:{port} still has env "
                                 f"{envid}'s migration; it may be running it, so it cannot be "
                                 "recovered here")
        if committed is None and not force:
            raise MigrationError("in-doubt", f"the destination {host}:{port} cannot be "
                                 "reached and may still be running the process; if it is "
                                 "gone for good, use --force")
        self.forget(out.mid)
        e = self.node.kernel.get_env(envid)
        e.frozen = ""
        self.node.log.info("recovered env from a failed pgfault migration", envid=envid)
        return {"envid": envid, "outcome": "recovered here, paused"}

def _pct(sorted_vals: list[float], p: float) -> float:
    if not sorted_vals:
        return 0.0
    i = min(len(sorted_vals) - 1, max(0, int(round(p / 100 * (len(sorted_vals) - 1)))))
    return sorted_vals[i]
