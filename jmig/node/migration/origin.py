"""The origin of a demand-paging migration: it keeps the env's pages
(the env held SERVING) and serves them on its page server port (P+2) until
the destination has them all and releases it.

The destination's pager opens two connections per migration, each
starting with Attach{channel}:

    faults   Get{vpn, n} -> PageBatch{push: false}     the page and up to n following
    push     PageBatch{push: true}*                    every page not sent yet, in order
    either   Release -> Released                       the origin lets go

Faults have a connection of their own so that a fault's page never waits
behind pushed pages (in this node's send queue or in the kernel's socket
buffers), and the push gives way while a request waits unread on it.
A thread of its own reads that connection and answers each Get the moment
it arrives, so that a fault waits neither for the event loop to wake nor
for the push it is busy with; anything else on it (a Release, an error,
the end) goes back to the event loop.  That thread runs at the lowest
real-time priority (SCHED_FIFO 1) while it serves, where the node may
(root or CAP_SYS_NICE): otherwise a request arriving while the push and
the destination keep every CPU busy waits for the scheduler's next turn
(up to 4 ms on two CPUs), not for its wake-up.  A page is pushed at most once; a
fault is answered even if the page was pushed already (its copy may still
be in flight on the push connection: the destination installs whichever
arrives first and drops the other).
On re-attach the destination lists the pages it still needs, which
become unsent again, so after a broken link nothing is missing.
Only the migration's destination (its node name from the handshake),
presenting the migration's token, is served.

Pushing runs when the migration asked for it, and always once the node is
shutting down (`drain`), so that an orderly shutdown loses no page.
"""
from __future__ import annotations

import hmac
import os
import select
import time
from bisect import bisect_right
from contextlib import contextmanager
from itertools import chain

import attrs
import trio

from ...errors import Error
from ...kernel.events import KernelError
from ...proto import migration as m
from ...proto.frames import ProtocolError
from ...proto.pstream import encode_pages
from ..failpoints import failpoint
from ..tasks import nursery as open_nursery
from .base import Hold, MigrationError
from .link import Link
from .session import ask

PUSH_BATCH = 16                    # pages per pushed frame
GIVE_WAY_STEPS = 8                 # scheduler rounds a push batch waits for a fault's reply
ATTACH_TIMEOUT = 120.0             # from a page-server connection to its Attach
FAULT_THREADS = 16                 # faults connections served by threads at once
_UNLIMITED = trio.CapacityLimiter(float("inf"))   # they are counted by fault_threads


@attrs.define(eq=False)
class Outgoing:
    """An env whose pages this node serves to one destination."""
    mid: str
    envid: int
    dest: str                        # destination node name (from its handshake)
    dest_addr: tuple[str, int]       # (host, P) of the destination
    token: bytes
    push: bool
    prefetch: int
    runs: list                       # [(first vpn, count, perm)] in address order
    sent: set = attrs.Factory(set)   # vpns pushed or served
    starts: list = attrs.Factory(list)
    started: float = attrs.Factory(time.perf_counter)
    pushed: int = 0
    served: int = 0
    channels: set = attrs.Factory(set)            # channels attached now
    faults_poll: object = None                    # select.poll of the faults socket, attached
    pushing: trio.Event = attrs.Factory(trio.Event)   # set: push (asked for, or draining)
    released: trio.Event = attrs.Factory(trio.Event)
    trace: object = None                          # trace.MigrationTrace of its requests, or None

    def __attrs_post_init__(self):
        self.set_runs(self.runs)

    def set_runs(self, runs: list) -> None:
        self.runs = runs
        self.starts = [r[0] for r in runs]

    @property
    def npages(self) -> int:
        return sum(c for _, c, _ in self.runs)

    def vpns(self):
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

    def fault_waiting(self) -> bool:
        """A request has reached the faults socket and is not read yet."""
        return self.faults_poll is not None and bool(self.faults_poll.poll(0))

    def unsent(self, size: int):
        """The pages not sent yet, in address order, size at a time (checked
        as they are taken: faults send pages meanwhile)."""
        batch = []
        for vpn in self.vpns():
            if vpn not in self.sent:
                batch.append(vpn)
                if len(batch) >= size:
                    batch = [v for v in batch if v not in self.sent]
                    if batch:
                        yield batch
                    batch = []
        batch = [v for v in batch if v not in self.sent]
        if batch:
            yield batch


@contextmanager
def realtime():
    """Run the calling thread at SCHED_FIFO priority 1 (the lowest real-time
    one) inside the block, and at normal priority again after it (trio
    reuses its threads); yields False, changing nothing, where that is not
    allowed.  For a thread that sleeps in poll() between short bursts of
    work: Linux keeps real-time threads to 95% of each second
    (kernel.sched_rt_runtime_us), so even a flood of requests cannot stop
    the rest of the machine."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except OSError:
        yield False
        return
    try:
        yield True
    finally:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


def runs_of(vpn_perms) -> list[tuple[int, int, int]]:
    """[(first vpn, count, perm)] from (vpn, perm) pairs in address order."""
    runs: list[list[int]] = []
    for vpn, perm in vpn_perms:
        if runs and runs[-1][2] == perm and runs[-1][0] + runs[-1][1] == vpn:
            runs[-1][1] += 1
        else:
            runs.append([vpn, 1, perm])
    return [tuple(r) for r in runs]


class PageServer:
    def __init__(self, node):
        self.node = node
        self.outgoing: dict[str, Outgoing] = {}
        self.by_env: dict[int, Outgoing] = {}
        self.totals = {"pages_served": 0, "page_requests": 0, "pages_push_sent": 0,
                       "releases": 0}
        self.fault_threads = 0
        self.fault_priority: str | None = None   # "realtime" or "normal", once a thread served

    # -- the table -------------------------------------------------------------------
    def expect(self, out: Outgoing) -> None:
        """A migration to out.dest begins: let its pager attach (it does so
        while the process stream arrives, to be ready when the env runs),
        but serve nothing before serve(mid)."""
        out.trace = self.node.tracer.migration()
        self.outgoing[out.mid] = out
        self.by_env[out.envid] = out

    def serve(self, mid: str) -> None:
        """The migration is handed over: serve its pages; the env is held
        SERVING here."""
        out = self.outgoing[mid]
        self.node.kernel.get_env(out.envid).frozen = Hold.SERVING

    def push(self, mid: str) -> None:
        """The destination runs it: push its pages, if asked to."""
        out = self.outgoing.get(mid)
        if out is not None and out.push:
            out.pushing.set()

    def forget(self, mid: str) -> None:
        """The migration is over here (released, recovered, or rolled back
        before it was served): its channels stop."""
        out = self.outgoing.pop(mid, None)
        if out is not None:
            if self.by_env.get(out.envid) is out:
                del self.by_env[out.envid]
            out.released.set()
            out.pushing.set()

    def stats(self) -> dict:
        return {**self.totals, "outgoing_active": len(self.outgoing),
                "fault_priority": self.fault_priority}

    # -- the page server's connections ----------------------------------------------------
    async def handle(self, link: Link) -> None:
        """One connection on P+2: Attach, then the channel's traffic."""
        # A destination's pager connects as the migration begins there and
        # attaches once it commits: give it time.
        msg = await link.receive(m.PAGER_OPENS, timeout=ATTACH_TIMEOUT)
        out = self.outgoing.get(msg.mid)
        if out is None:
            await link.refuse("unknown-migration", f"{self.node.name} serves no migration "
                              f"{msg.mid}")
            return
        if not hmac.compare_digest(msg.token, out.token) or link.peer != out.dest:
            self.node.log.warning("page request refused", mid=out.mid, peer=link.peer)
            await link.refuse("refused", "not this migration's destination")
            return
        if msg.channel in out.channels:
            await link.refuse("busy", f"the {msg.channel} channel is attached already")
            return
        out.channels.add(msg.channel)
        try:
            # Pages the destination still lacks count as unsent (lost in flight).
            need = set(msg.need_vpns())
            out.sent -= need
            await link.send(m.Attached(len(need)))
            if msg.channel == "faults":
                out.faults_poll = select.poll()
                out.faults_poll.register(link.fs.stream.socket.fileno(), select.POLLIN)
                await self._faults(link, out)
            else:
                await self._push(link, out)
        finally:
            out.channels.discard(msg.channel)
            if msg.channel == "faults":
                out.faults_poll = None

    def _page(self, out: Outgoing, vpn: int):
        va = vpn << 12
        return (va, out.perm_of(vpn), self.node.kernel.page_data(out.envid, va))

    async def _faults(self, link: Link, out: Outgoing) -> None:
        """Answer each fault at once, on this connection: from a thread of
        its own while Gets come (_serve_faults), here for anything else."""
        while True:
            # A trace's sinks are the event loop's; past FAULT_THREADS
            # connections, the rest are served here.
            if out.trace is None and self.fault_threads < FAULT_THREADS:
                self.fault_threads += 1
                try:
                    await self._faults_thread(link, out)
                finally:
                    self.fault_threads -= 1
                if link.fs.unsent:
                    await link.flush()
            msg = await link.receive(m.FROM_PAGER, timeout=float("inf"))
            if isinstance(msg, m.Release):
                await self._release(link, out)
                return
            reply = self._answer(out, msg)
            if reply is not None:
                await link.send_first(reply)
                failpoint("pager.origin.after_pages")

    def _answer(self, out: Outgoing, msg: m.Get) -> dict | None:
        """The reply to a fault: its page and up to n following ones not
        sent yet (None for a page the env does not have)."""
        self.totals["page_requests"] += 1
        if out.perm_of(msg.vpn) is None:
            return None
        if out.trace is not None:
            out.trace.request(msg.vpn << 12)
        batch = [msg.vpn] + [v for v in out.following(msg.vpn, msg.n) if v not in out.sent]
        out.sent.update(batch)
        out.served += len(batch)
        self.totals["pages_served"] += len(batch)
        return {"t": "page-batch", "b": encode_pages([self._page(out, v) for v in batch]),
                "push": False}

    async def _faults_thread(self, link: Link, out: Outgoing) -> None:
        """Run _serve_faults in a thread until it hands the link back
        (cancelling this stops it: it is never abandoned, so nothing
        touches the socket once this returns)."""
        stop_r, stop_w = os.pipe()
        try:
            async with open_nursery() as nursery:
                async def stop_when_cancelled():
                    try:
                        await trio.sleep_forever()
                    finally:
                        os.write(stop_w, b"x")

                nursery.start_soon(stop_when_cancelled)
                await trio.to_thread.run_sync(self._serve_faults, link.fs, out, stop_r,
                                              link.timeout, limiter=_UNLIMITED)
                nursery.cancel_scope.cancel()
        finally:
            os.close(stop_r)
            os.close(stop_w)

    def _serve_faults(self, fs, out: Outgoing, stop_fd: int, timeout: float) -> None:
        """In a thread: read Gets from the faults socket and answer each at
        once, without the event loop (a request waits neither for its
        wake-up nor behind the pushed pages it is busy with), at real-time
        priority where allowed.  Returns on anything else, left unread for
        link.receive: a Release, a frame that is no Get, end of file, a
        broken or stalled link, half a frame; or when stop_fd becomes
        readable.  The env is held SERVING: its pages do not change while
        they are read here."""
        with realtime() as raised:
            if not raised and self.fault_priority != "normal":
                self.node.log.warning("fault replies served at normal priority: real-time "
                                      "scheduling is not allowed (needs CAP_SYS_NICE)")
            self.fault_priority = "realtime" if raised else "normal"
            self._serve_gets(fs, out, stop_fd, timeout)

    def _serve_gets(self, fs, out: Outgoing, stop_fd: int, timeout: float) -> None:
        poll = select.poll()
        poll.register(fs.stream.socket.fileno(), select.POLLIN)
        poll.register(stop_fd, select.POLLIN)
        while True:
            try:
                frame = fs.receive_now()
                if frame is None:
                    if any(fd == stop_fd for fd, _ in poll.poll()):
                        return
                    frame = fs.receive_now()
            except ProtocolError:
                return                     # link.receive raises it again
            if frame is None:
                return
            try:
                msg = m.decode(frame, frozenset({m.Get}))
            except ProtocolError:
                fs.unread(frame)
                return
            try:
                reply = self._answer(out, msg)
            except KernelError:                # the env went meanwhile: the loop's to report
                fs.unread(frame)
                return
            if reply is not None:
                if not fs.send_blocking(reply, timeout):
                    return
                failpoint("pager.origin.after_pages")

    async def _push(self, link: Link, out: Outgoing) -> None:
        """Push every page not sent yet (once pushing is on); then wait for
        the release, which may come on either channel."""
        async with open_nursery() as nursery:
            async def release_watch():
                await link.receive(frozenset({m.Release}), timeout=float("inf"))
                await self._release(link, out)
                nursery.cancel_scope.cancel()

            nursery.start_soon(release_watch)
            await out.pushing.wait()
            if out.released.is_set():
                nursery.cancel_scope.cancel()
                return
            for batch in out.unsent(PUSH_BATCH):
                # Faults first: a request waiting on the faults socket is read
                # and answered (by _faults, in one step) before this batch.
                for _ in range(GIVE_WAY_STEPS):
                    if not out.fault_waiting():
                        break
                    await trio.sleep(0)
                batch = [v for v in batch if v not in out.sent]
                if not batch:
                    continue
                out.sent.update(batch)
                await link.send_raw({"t": "page-batch", "b": encode_pages(
                    [self._page(out, v) for v in batch]), "push": True})
                out.pushed += len(batch)
                self.totals["pages_push_sent"] += len(batch)
            await out.released.wait()
            nursery.cancel_scope.cancel()

    async def _release(self, link: Link, out: Outgoing) -> None:
        """Every page is on the destination: the origin's copy goes."""
        self.forget(out.mid)
        if out.trace is not None:
            out.trace.summary("requests")
        k = self.node.kernel
        e = k.live_env(out.envid)
        if e is not None:
            self.totals["releases"] += 1
            e.frozen = ""
            k.env_destroy(e, 0, "released by destination")
            self.node.dispatch_events()
        self.node.log.info("origin released", envid=out.envid, mid=out.mid,
                           seconds=round(time.perf_counter() - out.started, 4),
                           served=out.served, pushed=out.pushed)
        try:
            await link.send(m.Released(), timeout=1.0)
        except Error:
            pass

    # -- shutdown ------------------------------------------------------------------------------
    async def drain(self, log) -> None:
        """Push the rest of every migration this node serves and wait until
        each is released (cancel to give up: `outgoing` keeps the rest)."""
        for out in self.outgoing.values():
            out.pushing.set()
        pending = list(self.outgoing.values())
        for out in pending:
            left = out.npages - len(out.sent)
            log.info("pushing the rest of a served migration before shutting down",
                     envid=out.envid, to=out.dest, pages_left=left)
        for out in pending:
            await out.released.wait()
            log.info("served migration released", envid=out.envid, to=out.dest)

    # -- recovery ------------------------------------------------------------------------------
    async def recover(self, envid: int, force: bool) -> dict | None:
        """Take back an env this node serves whose destination lost it.
        None if this node serves no migration of envid."""
        out = self.by_env.get(envid)
        if out is None:
            return None
        reply = await ask(self.node, out.dest_addr, "pgfault", out.mid)
        if reply is not None and reply.role == "destination" \
                and reply.state in ("committed", "running"):
            raise MigrationError("refused", f"the destination {out.dest} still has env "
                                 f"{envid}'s migration (state {reply.state}); it may be "
                                 "running it, so it cannot be recovered here")
        if reply is None and not force:
            raise MigrationError("unreachable", f"the destination {out.dest} cannot be reached "
                                 "and may still be running the process; if it is gone for good, "
                                 "use --force")
        self.forget(out.mid)
        e = self.node.kernel.get_env(envid)
        e.frozen = ""
        self.node.log.info("recovered env from a failed pgfault migration", envid=envid)
        found = "unreachable" if reply is None else f"it reports {reply.state}"
        return {"envid": envid, "found": f"the destination {out.dest}: {found}",
                "outcome": "recovered here, paused"}

