"""The destination of a demand-paging migration: the pager (the original
project's "super process") fetches the pages that are still on the origin.

As soon as a migration begins here, before the source stops the process
(pgfault.py: Begin, then Ready), the pager connects and attaches two
channels to the origin's page server (origin.py), so that none of that is
downtime; once the migration is handed over (session.py's Go) it asks on
`faults` for each page an env blocks on (with up to `prefetch` following
pages), and takes on `push` whatever the origin sends by itself, a fault's
reply first.  The env alone waits for its page; everything else runs.
When nothing else can run, the kernel task itself polls for a fault's
reply and installs it (take_reply): the event loop's wake-up would cost
about as much as the round trip.  When no page is remote any more (or
the env died) it releases the origin.  A broken link leaves the env
"waiting for pages"; the pager reconnects with backoff and asks again for
what it still needs.  An origin that no longer knows the migration (it
restarted) means the remaining pages are gone: the env is destroyed,
naming them.

Moving the env on, saving or copying it first pulls every remaining page
in (`pull_all`, asking once per run of consecutive pages).
"""
from __future__ import annotations

import math
import time
from collections import deque

import attrs
import trio

from ...errors import Error
from ...kernel import events as ev
from ...proto import migration as m
from ...proto.frames import ProtocolError
from ...proto.pstream import decode_pages
from ..tasks import nursery as open_nursery
from .base import MigrationError
from .link import Link

BACKOFF_MIN, BACKOFF_MAX = 0.05, 2.0
ATTACH_WAIT = 5.0                  # how long a migration waits for the channels to attach
LATENCY_SAMPLES = 100_000
PUSH_GRACE = 0.5                   # a push link closing may just precede Released on faults
FAULTS_FIRST = 0.005               # longest a pushed batch waits for a fault's reply
REPLY_WAIT = 0.002                 # longest the idle kernel task polls for a fault's reply
ARRIVALS_KEEP = 30.0               # how long after the release the page map shows arrivals
FINISHED_KEPT = 64                 # released or lost migrations kept for stats


@attrs.define(eq=False)
class Incoming:
    """An env here whose pages still come from its origin."""
    mid: str
    envid: int                       # 0 until the migration commits here
    origin: str                      # origin node name
    addr: tuple[str, int]            # origin page server (host, port)
    token: bytes
    prefetch: int
    started: float = attrs.Factory(time.perf_counter)
    requests: object = None          # trio send channel: vpns, None (check), or bytes
    requests_recv: object = None
    faults: Link | None = None       # the faults channel, while connected
    pending: dict = attrs.Factory(dict)   # vpn -> when the env blocked on it
    unblocked: trio.Event = attrs.Factory(trio.Event)   # set while pending is empty
    asked: set = attrs.Factory(set)       # vpns asked for on the current faults channel
    state: str = "connecting"        # connecting / active / waiting / released / lost
    all_in: trio.Event = attrs.Factory(trio.Event)
    pull: bool = False
    faults_taken: int = 0
    fetched: int = 0                 # pages installed because they were asked for
    pushed: int = 0                  # pages installed from the push channel
    duplicates: int = 0
    reconnects: int = 0
    released_after: float | None = None
    latencies: list = attrs.Factory(list)   # seconds from each fault to its page, in order
    committed: trio.Event = attrs.Factory(trio.Event)   # committed here: attach
    attached: trio.Event = attrs.Factory(trio.Event)    # both channels attached (once)
    go: trio.Event = attrs.Factory(trio.Event)   # the source handed the env over
    remote: int = -1                 # pages still remote (counted down as they arrive)
    trace: object = None             # trace.MigrationTrace of its faults, or None
    # vpn -> True (pushed) / False (fetched on a fault), for the web view's
    # page map (pagemap op); bounded by the env's pages, dropped
    # ARRIVALS_KEEP s after the release.
    arrived: dict = attrs.Factory(dict)


class Pager:
    def __init__(self, node):
        self.node = node
        self.incoming: dict[str, Incoming] = {}
        self.by_env: dict[int, Incoming] = {}
        self.recent: dict[int, Incoming] = {}    # envid -> its last migration in, for
                                                   # arrivals() until ARRIVALS_KEEP after release
        self.latencies: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.totals = {"remote_faults": 0, "pages_fetched": 0, "pages_pushed": 0,
                       "duplicates": 0, "migrations_lost": 0, "reconnects": 0}
        self._nursery: trio.Nursery | None = None

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await trio.sleep_forever()

    # -- statistics ------------------------------------------------------------------
    def stats(self) -> dict:
        lat = sorted(self.latencies)
        out = dict(self.totals)
        out["fault_latency_p50_ms"] = _pct(lat, 50) * 1000 if lat else None
        out["fault_latency_p99_ms"] = _pct(lat, 99) * 1000 if lat else None
        out["incoming_active"] = sum(1 for i in self.incoming.values()
                                     if i.state not in ("released", "lost"))
        released = [i.released_after for i in self.incoming.values()
                    if i.released_after is not None]
        out["last_release_s"] = released[-1] if released else None
        out["migrations_in"] = [
            {"envid": i.envid, "origin": i.origin, "state": i.state, "faults": i.faults_taken,
             "fetched": i.fetched, "pushed": i.pushed, "duplicates": i.duplicates,
             "reconnects": i.reconnects, "release_s": i.released_after,
             "fault_p50_ms": _pct(sorted(i.latencies), 50) * 1000 if i.latencies else None,
             "fault_p99_ms": _pct(sorted(i.latencies), 99) * 1000 if i.latencies else None,
             "first_faults_ms": [round(x * 1000, 3) for x in i.latencies[:8]]}
            for i in list(self.incoming.values())[-16:]]
        return out

    def annotate(self, envid: int) -> str:
        inc = self.by_env.get(envid)
        if inc is not None and inc.state == "waiting":
            return f"origin {inc.origin} unreachable, retrying"
        return ""

    # -- starting ------------------------------------------------------------------------
    def prepare(self, mid: str, origin: str, addr: tuple[str, int], token: bytes,
                prefetch: int) -> None:
        """A migration with pages at its origin begins here: open the
        channels to the origin's page server now, while the rest arrives,
        so that they are ready when the env starts."""
        inc = Incoming(mid=mid, envid=0, origin=origin, addr=addr, token=token,
                       prefetch=prefetch)
        inc.requests, inc.requests_recv = trio.open_memory_channel(math.inf)
        inc.unblocked.set()
        inc.trace = self.node.tracer.migration()
        self.incoming[mid] = inc
        self.prune_finished()
        self._nursery.start_soon(self._link, inc)

    def prune_finished(self) -> None:
        """Forget all but the last FINISHED_KEPT released or lost
        migrations (stats shows the last 16), so a long-lived node's
        record of them stays bounded."""
        done = [mid for mid, i in self.incoming.items() if i.state in ("released", "lost")]
        for mid in done[:max(0, len(done) - FINISHED_KEPT)]:
            del self.incoming[mid]

    async def attached(self, mid: str, timeout: float = ATTACH_WAIT) -> None:
        """Wait until both channels are attached to the origin's page server
        (before the source stops the process, so that none of this is
        downtime); MigrationError if that takes longer than timeout."""
        inc = self.incoming[mid]
        with trio.move_on_after(timeout):
            await inc.attached.wait()
        if not inc.attached.is_set():
            host, port = inc.addr
            raise MigrationError("unreachable", f"{self.node.name} cannot attach to the page "
                                 f"server of {inc.origin} at {host}:{port}")

    def commit(self, mid: str, envid: int) -> None:
        """It committed here as envid; ask for nothing before go()."""
        inc = self.incoming[mid]
        inc.envid = envid
        self.by_env[envid] = inc
        self.recent[envid] = inc
        inc.committed.set()

    def go(self, mid: str) -> None:
        """The source handed the env over: fetch its pages."""
        self.incoming[mid].go.set()

    def cancel(self, mid: str) -> None:
        """The migration ended here without the env: forget it."""
        inc = self.incoming.pop(mid, None)
        if inc is not None:
            if self.by_env.get(inc.envid) is inc:
                del self.by_env[inc.envid]
            if self.recent.get(inc.envid) is inc:
                del self.recent[inc.envid]
            inc.state = "lost"
            inc.committed.set()
            inc.go.set()

    # -- the kernel's side -------------------------------------------------------------------
    def on_blocked(self, e: ev.EnvBlocked) -> None:
        inc = self.by_env.get(e.owner)
        if inc is None:
            self.node.log.error("env blocked on a remote page of no migration",
                                envid=e.envid, owner=e.owner, va=f"{e.va:#010x}")
            return
        vpn = e.va >> 12
        if vpn in inc.pending:
            return
        if not inc.pending:
            inc.unblocked = trio.Event()
        inc.pending[vpn] = time.perf_counter()
        if inc.trace is not None:
            inc.trace.fault(e.envid, e.va)
        inc.faults_taken += 1
        self.totals["remote_faults"] += 1
        link = inc.faults
        # Ask at once from here (the kernel task) when the link is idle: one
        # task switch less on every fault.
        if link is not None and link.fs.send_now({"t": "get", "vpn": vpn, "n": inc.prefetch}):
            inc.asked.add(vpn)
            if link.fs.unsent:
                inc.requests.send_nowait(b"")          # the asker flushes the rest
            return
        inc.requests.send_nowait(vpn)

    def take_reply(self) -> bool:
        """For the kernel task when nothing is runnable: if an env waits for
        a page it asked for less than REPLY_WAIT ago, poll the faults
        socket for the reply without sleeping and install it.  Neither the
        event loop's wake-up nor a sleeping CPU's (on a virtual machine,
        about as long as the round trip itself) then stands between the
        reply and the env; the price is this CPU, for at most REPLY_WAIT
        per fault.  True if a page was installed (the kernel was poked).
        A later reply, or anything else, comes through _exchange's
        fault_reader as usual."""
        now = time.perf_counter()
        # inc.faults is set from the commit until its link closes: the env's
        # first faults come before _link_loop has seen the go.
        waiting = [inc for inc in self.by_env.values() if inc.pending and inc.faults is not None]
        if not waiting:
            return False
        deadline = min(min(inc.pending.values()) for inc in waiting) + REPLY_WAIT
        if deadline <= now:
            return False
        installed = False
        while not installed and time.perf_counter() < deadline:
            for inc in waiting:
                installed |= self._take_replies(inc)
        return installed

    def _take_replies(self, inc: Incoming) -> bool:
        """Install the fault replies already readable on inc's faults link."""
        fs = inc.faults.fs
        installed = False
        while True:
            try:
                frame = fs.receive_now()
            except ProtocolError:
                return installed      # left to fault_reader, which reports it
            if frame is None:
                return installed
            try:
                msg = m.decode(frame, frozenset({m.PageBatch}))
                self._install(inc, decode_pages(msg.b), msg.push)
            except Exception:         # never raised in the kernel task: a
                fs.unread(frame)      # Released, an error reply, a bad batch or no
                return installed      # free frame is fault_reader's to handle or report
            installed = True
            if inc.remote <= 0:
                inc.all_in.set()
                inc.requests.send_nowait(None)        # the asker releases the origin

    def env_gone(self, envid: int) -> None:
        """An env here died: stop fetching its pages and let the origin go."""
        inc = self.by_env.get(envid)
        if inc is not None and inc.state not in ("released", "lost"):
            inc.pull = False
            inc.pending.clear()
            inc.unblocked.set()
            inc.all_in.set()
            try:
                inc.requests.send_nowait(None)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    # -- the link to the origin ------------------------------------------------------------------
    async def _link(self, inc: Incoming) -> None:
        """Keep the channels to the origin until every page is here.  Never
        raises: a bug here must not take the node down."""
        try:
            with self.node.io():
                await self._link_loop(inc)
        except Exception:
            self.node.log.exception("pager link failed", envid=inc.envid, origin=inc.origin)
            inc.state = "waiting"

    async def _open(self, inc: Incoming) -> Link:
        fs = await self.node.connect(inc.addr[0], inc.addr[1], "pager", timeout=5)
        return Link(fs, timeout=10)

    @staticmethod
    async def _attach(inc: Incoming, link: Link, channel: str, need: list[int]) -> None:
        await link.send(m.Attach(inc.mid, inc.token, channel, m.pack_vpns(need)))
        await link.receive(frozenset({m.Attached}))

    async def _link_loop(self, inc: Incoming) -> None:
        node = self.node
        backoff = BACKOFF_MIN
        while inc.state not in ("released", "lost"):
            faults = push = None
            try:
                faults = await self._open(inc)
                push = await self._open(inc)
                # The origin serves nothing before the go, so until then it has
                # sent nothing this side could lack: the list of pages still
                # needed (O(pages)) is only for an attach after the go.
                need = self._remote_vpns(inc) \
                    if inc.go.is_set() and self._env_alive(inc) else []
                await self._attach(inc, faults, "faults", need)
                await self._attach(inc, push, "push", need)
                inc.attached.set()                    # ready before it commits here
                await inc.committed.wait()
                if inc.state == "lost":
                    return                            # it never committed here
                inc.remote = self.node.kernel.remote_count(inc.envid) \
                    if self._env_alive(inc) else 0
                # Faults ask on this link from now on (none can come before the
                # go: the env does not run), even before _exchange starts.
                inc.asked = set()
                inc.faults = faults
                await inc.go.wait()                   # ready before the env runs
                if inc.state == "lost":
                    return                            # the source kept the env
                if inc.state == "waiting":
                    inc.reconnects += 1
                    self.totals["reconnects"] += 1
                    node.log.info("origin reachable again", envid=inc.envid, origin=inc.origin)
                inc.state = "active"
                backoff = BACKOFF_MIN
                await self._exchange(inc, faults, push)
            except MigrationError as exc:
                if exc.code == "unknown-migration":
                    self._lost(inc, exc.message)
                    return
                self._link_down(inc, exc)
            except (Error, OSError, trio.TooSlowError) as exc:
                self._link_down(inc, exc)
            finally:
                inc.faults = None
                for link in (faults, push):
                    if link is not None:
                        await link.aclose()
            if inc.state not in ("released", "lost"):
                await trio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    def _env_alive(self, inc: Incoming) -> bool:
        return self.node.kernel.live_env(inc.envid) is not None

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

    async def _exchange(self, inc: Incoming, faults: Link, push: Link) -> None:
        """One pair of connections' life: ask for faulted pages, install
        what arrives on either channel, release the origin when nothing is
        remote any more."""
        releasing = False

        async def maybe_release():
            nonlocal releasing
            if not releasing and (inc.remote <= 0 or not self._env_alive(inc)):
                releasing = True
                await faults.send(m.Release())

        async def fault_reader():
            while True:
                msg = await faults.receive(frozenset({m.PageBatch, m.Released}),
                                           timeout=math.inf)
                if isinstance(msg, m.Released):
                    if not releasing:
                        raise MigrationError("failed", "the origin released unasked")
                    self._released(inc)
                    nursery.cancel_scope.cancel()
                    return
                self._install(inc, decode_pages(msg.b), msg.push)
                if inc.remote <= 0:
                    inc.all_in.set()
                    await maybe_release()

        async def push_reader():
            try:
                while True:
                    msg = await push.receive(frozenset({m.PageBatch}), timeout=math.inf)
                    pages = decode_pages(msg.b)
                    if inc.pending and not any(p.va >> 12 in inc.pending for p in pages):
                        # An env waits for a page this batch lacks: this node
                        # stays free to take its reply the moment it arrives.
                        with trio.move_on_after(FAULTS_FIRST):
                            await inc.unblocked.wait()
                    self._install(inc, pages, True)
                    if inc.remote <= 0:
                        inc.all_in.set()
                        await maybe_release()
                    await trio.sleep(0)
            except MigrationError:
                await trio.sleep(PUSH_GRACE)    # the origin closes push on release, maybe first
                raise

        async def asker():
            async for vpn in inc.requests_recv:
                if vpn is None:
                    if inc.pull:
                        await self._request_all(faults, inc)
                    await maybe_release()
                elif isinstance(vpn, bytes):
                    await faults.flush()               # the rest of a send_now frame
                elif vpn in inc.pending and vpn not in inc.asked:
                    inc.asked.add(vpn)
                    await faults.send_raw({"t": "get", "vpn": vpn, "n": inc.prefetch})

        # Ask for every page an env is blocked on and this link was not asked
        # for yet (asked on the last link, or before the link was up).
        for vpn in list(inc.pending):
            if vpn not in inc.asked:
                inc.asked.add(vpn)
                await faults.send(m.Get(vpn, inc.prefetch))
        if inc.pull:
            await self._request_all(faults, inc)
        async with open_nursery() as nursery:
            nursery.start_soon(fault_reader)
            nursery.start_soon(push_reader)
            nursery.start_soon(asker)
            await maybe_release()

    def _install(self, inc: Incoming, pages, push: bool) -> None:
        k = self.node.kernel
        now = time.perf_counter()
        for p in pages:
            vpn = p.va >> 12
            try:
                installed = k.install_page(inc.envid, p.va, p.data)
            except ev.KernelError as exc:
                if exc.code != ev.NO_SUCH_ENV:
                    raise
                installed = False
            t0 = inc.pending.pop(vpn, None)
            if t0 is not None and installed:
                self.latencies.append(now - t0)
                if len(inc.latencies) < LATENCY_SAMPLES:
                    inc.latencies.append(now - t0)
            if not installed:
                inc.duplicates += 1
                self.totals["duplicates"] += 1
                continue
            inc.remote -= 1
            inc.arrived[vpn] = push
            if push:
                inc.pushed += 1
                self.totals["pages_pushed"] += 1
            else:
                inc.fetched += 1
                self.totals["pages_fetched"] += 1
        if not inc.pending:
            inc.unblocked.set()
        self.node.poke()

    async def _request_all(self, faults: Link, inc: Incoming) -> None:
        """Ask for every remote page: one Get per run of up to 1 + MAX_PREFETCH
        consecutive remote pages (the origin answers a Get with the page and
        the n that follow it in the env's address space, leaving out only
        pages it has sent already, which are on their way)."""
        now = time.perf_counter()
        todo = []
        for vpn in self._remote_vpns(inc):
            inc.pending.setdefault(vpn, now)
            if vpn not in inc.asked:
                todo.append(vpn)
        inc.asked.update(todo)
        i = 0
        while i < len(todo):
            vpn = todo[i]
            j = i + 1
            while j < len(todo) and j - i <= m.MAX_PREFETCH and todo[j] == vpn + (j - i):
                j += 1
            await faults.send(m.Get(vpn, j - i - 1))
            i = j

    def _released(self, inc: Incoming) -> None:
        inc.state = "released"
        if inc.trace is not None:
            inc.trace.summary("faults")
        inc.released_after = time.perf_counter() - inc.started
        inc.all_in.set()
        self.by_env.pop(inc.envid, None)
        self._nursery.start_soon(self._forget_arrivals, inc)
        self.node.log.info("all pages arrived; origin released", envid=inc.envid,
                           origin=inc.origin, seconds=round(inc.released_after, 4),
                           fetched=inc.fetched, pushed=inc.pushed, faults=inc.faults_taken)

    async def _forget_arrivals(self, inc: Incoming) -> None:
        await trio.sleep(ARRIVALS_KEEP)
        inc.arrived = {}
        if self.recent.get(inc.envid) is inc:
            del self.recent[inc.envid]

    def arrivals(self, envid: int) -> tuple[set[int], dict[int, bool]]:
        """For the page map: (vpns asked for and not yet here, {vpn: pushed?}
        of the pages that arrived) of env's last migration in, or two empty
        ones.  Costs nothing unless asked."""
        inc = self.recent.get(envid)
        if inc is None:
            return set(), {}
        inflight = set(inc.pending) | inc.asked if inc.state not in ("released", "lost") \
            else set()
        return inflight, inc.arrived

    def _lost(self, inc: Incoming, why: str) -> None:
        """The origin no longer knows this migration: the remaining pages are gone."""
        inc.state = "lost"
        inc.all_in.set()
        self.by_env.pop(inc.envid, None)
        self.recent.pop(inc.envid, None)
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

    # -- pulling everything in -------------------------------------------------------------
    async def pull_all(self, envid: int) -> None:
        """Fetch every remaining remote page of env (before it moves on,
        is saved or copied).  Raises KernelError if that cannot happen."""
        inc = self.by_env.get(envid)
        k = self.node.kernel
        if inc is None:
            if k.remote_count(envid):
                raise ev.KernelError(ev.BAD_STATE, f"env {envid} has remote pages but no "
                                     "migration to fetch them from")
            return
        inc.pull = True
        inc.requests.send_nowait(None)
        with trio.move_on_after(300):
            await inc.all_in.wait()
        if inc.state == "lost" or k.remote_count(envid):
            raise ev.KernelError(ev.BAD_STATE, f"could not fetch the pages of env {envid} "
                                 f"from {inc.origin}")


def _pct(sorted_vals: list[float], p: float) -> float:
    i = min(len(sorted_vals) - 1, max(0, int(round(p / 100 * (len(sorted_vals) - 1)))))
    return sorted_vals[i]
