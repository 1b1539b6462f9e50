"""The steps every migration takes, on both sides, whatever moves between
begin and end: a two-phase commit followed by a hand-over.

    source                               destination
    ------                               -----------
    hold the env (method.hold)
    Begin, then the method's data  --->  build an incoming env (method.receive)
                                   <---  Prepared     the whole env, verified, held
    Commit                         --->  keep it, still held (ARRIVING)
                                   <---  Committed
    decide GO: give the env up
    (method.hand_over)
    Go                             --->  run it (resume if asked; method.started)
                                   <---  Started

The source decides alone and at once: GO when it has heard Committed (or,
having lost the link after its Commit, when the destination says it
committed), ABORT otherwise: on any failure, deadline, cancel or shutdown
before that, it aborts, tells the destination if it can, and puts the env
back as it was (running if it was running).  It is never in doubt.  The
destination runs the env only after Go; holding a committed env without
Go or Abort (the link broke), it asks the source for its decision until it
gets one (`resolve`), and meanwhile the env does not run.  So an env runs
on exactly one node whatever the network does; a destination that waits
for a source that is gone for good is settled by `jmigctl recover ENV
--force` there (the operator's word that the source will never return).
A source that restarted (another incarnation) has lost every env it held,
so its answer for a migration it does not know is GO.

Where the only copy of the env is, at each step (a crash of that node loses
the env; a crash of the other loses nothing):

    before Committed reaches the source   the source (the destination's is incoming or held)
    after the source decided GO           normal, precopy: the destination
                                          pgfault: both together: the destination has the
                                          registers and the pages that arrived, the origin
                                          the pages not yet fetched, until it is released

Save and load are the same steps with a file as the peer (filelink.py).
"""
from __future__ import annotations

import enum
import os
import time
from collections import OrderedDict

import attrs
import trio

from ...errors import Error
from ...proto import migration as m
from ...proto.frames import ProtocolError
from ...proto.handshake import AuthError
from ..failpoints import failpoint
from .base import (COMMIT_TIMEOUT, HANDOVER_TIMEOUT, PREPARED_TIMEOUT, STATUS_TIMEOUT, Hold,
                   MigrationError)
from .link import Link

MAX_REMEMBERED = 100_000          # decisions and outcomes a node answers status questions about
RESOLVE_BACKOFF = (0.05, 5.0)


class Decision(enum.StrEnum):
    PENDING = "pending"
    GO = "go"
    ABORT = "abort"


class Stage(enum.StrEnum):
    """Where a migration is (a job shows it)."""
    STARTING = "starting"
    COPYING = "copying"
    PREPARING = "preparing"
    COMMITTING = "committing"
    HANDING_OVER = "handing over"
    DONE = "done"
    ROLLED_BACK = "rolled back"


class Arrival(enum.StrEnum):
    """Where an incoming migration is, at the destination."""
    RECEIVING = "receiving"
    PREPARED = "prepared"
    COMMITTED = "committed"
    RUNNING = "running"
    ABORTED = "aborted"


def new_mid() -> str:
    return os.urandom(8).hex()


class Ledger:
    """What this node decided or reached for each migration it took part
    in, for other nodes' status questions (bounded, oldest forgotten)."""

    def __init__(self, incarnation: str, alive=lambda envid: True):
        """alive(envid): whether an env this node received still exists."""
        self.incarnation = incarnation
        self.alive = alive
        self.source: OrderedDict[str, Decision] = OrderedDict()
        self.destination: OrderedDict[str, tuple[Arrival, int | None]] = OrderedDict()

    @staticmethod
    def _put(d: OrderedDict, key, value) -> None:
        d[key] = value
        d.move_to_end(key)
        if len(d) > MAX_REMEMBERED:
            d.popitem(last=False)

    def decide(self, mid: str, d: Decision) -> None:
        self._put(self.source, mid, d)

    def arrive(self, mid: str, state: Arrival, envid: int | None) -> None:
        self._put(self.destination, mid, (state, envid))

    def reply(self, mid: str) -> m.StatusReply:
        if mid in self.source:
            return m.StatusReply(mid, "source", str(self.source[mid]), self.incarnation)
        if mid in self.destination:
            state, envid = self.destination[mid]
            if state in (Arrival.COMMITTED, Arrival.RUNNING) and not self.alive(envid):
                return m.StatusReply(mid, "destination", "gone", self.incarnation, envid)
            return m.StatusReply(mid, "destination", str(state), self.incarnation, envid)
        return m.StatusReply(mid, "none", "unknown", self.incarnation)


async def ask(node, addr: tuple[str, int], kind: str, mid: str) -> m.StatusReply | None:
    """Another node's StatusReply about mid (asked on its `kind` port at
    addr = (host, P)), or None if it cannot be reached now."""
    host, port = addr
    try:
        fs = await node.connect(host, port + ("normal", "pgfault").index(kind), kind,
                                timeout=STATUS_TIMEOUT)
    except (OSError, trio.TooSlowError, AuthError, ProtocolError):
        return None
    link = Link(fs, STATUS_TIMEOUT)
    try:
        await link.send(m.Status(mid))
        return await link.receive(frozenset({m.StatusReply}))
    except (MigrationError, ProtocolError):
        return None
    finally:
        await link.aclose()


# -- the source ---------------------------------------------------------------------------

@attrs.define(eq=False)
class Outbound:
    """One migration (or save) as the source runs it.  The method supplies
    hold / begin_fields / transfer / hand_over / roll_back, and may supply
    released (after the destination was told to run it); `connect` opens
    the link (to a node, or a file).  run() returns the statistics
    or raises MigrationError (the env is then back as it was)."""
    node: object
    method: object
    envid: int
    target: str                                     # "HOST:P", or "image NAME"
    connect: object                                 # async () -> Link
    resume: bool = False
    report: object = None                           # progress callback(dict), or None
    tracer: object = None                           # trace.MigrationTrace, or None
    mid: str = attrs.Factory(new_mid)
    stage: Stage = Stage.STARTING
    decision: Decision = Decision.PENDING
    new_envid: int | None = None
    t0: float = 0.0
    t_pause: float | None = None
    t_end: float | None = None                      # the destination made it runnable
    marks: dict = attrs.Factory(dict)               # step -> perf_counter() when reached
    link: Link | None = None
    log: object = None

    def progress(self, **kw) -> None:
        if self.tracer is not None:
            self.tracer.outbound(self, kw)
        if self.report is not None:
            self.report({"stage": str(self.stage), **kw})

    def set_stage(self, stage: Stage) -> None:
        self.stage = stage
        self.marks[str(stage)] = time.perf_counter()
        self.progress()

    def paused_now(self) -> None:
        """The method stopped the env (downtime counts from here)."""
        self.t_pause = time.perf_counter()

    async def run(self) -> dict:
        node = self.node
        self.log = node.log.bind(mid=self.mid, envid=self.envid, to=self.target,
                                 method=self.method.name)
        self.t0 = time.perf_counter()
        node.migrations.ledger.decide(self.mid, Decision.PENDING)
        await self.method.hold(self)
        try:
            await self._transfer_and_commit()
            self._decide(Decision.GO)
            if self.method.forwards and not getattr(self.method, "keep", False) \
                    and self.new_envid == self.envid:
                node.remote.departed(self.envid, self.target)     # IPC follows it there
            self.method.hand_over(self)
            with trio.CancelScope(shield=True):
                await self._hand_over()
            stats = self.stats()                # the downtime ends with the destination told
            released = getattr(self.method, "released", None)
            if released is not None:
                released(self)
            self.set_stage(Stage.DONE)
            return stats
        except BaseException as exc:
            if self.decision is Decision.PENDING:
                with trio.CancelScope(shield=True):
                    await self._abort(exc)
                if isinstance(exc, Error):
                    raise MigrationError(exc.code, f"{exc.message}; {self._where()}") from None
            raise
        finally:
            if self.link is not None:
                with trio.CancelScope(shield=True):
                    await self.link.aclose()

    async def _transfer_and_commit(self) -> None:
        name = self.method.name
        try:
            self.link = await self.connect(self)
        except (OSError, trio.TooSlowError) as exc:
            raise MigrationError("unreachable", f"cannot reach {self.target}: "
                                 f"{getattr(exc, 'strerror', None) or exc or 'timed out'}") \
                from None
        except AuthError as exc:
            raise MigrationError("refused", f"{self.target} refused the connection: "
                                 f"{exc.message}") from None
        link = self.link
        self.set_stage(Stage.COPYING)
        await self.method.transfer(self, link)
        failpoint(f"{name}.src.after_data")
        self.set_stage(Stage.PREPARING)
        await link.receive(frozenset({m.Prepared}))
        self.method.prepared(self)
        failpoint(f"{name}.src.after_prepared")
        self.set_stage(Stage.COMMITTING)
        try:
            await link.send(m.Commit())
            failpoint(f"{name}.src.after_commit")
            reply = await link.receive(frozenset({m.Committed}), timeout=COMMIT_TIMEOUT)
            self.new_envid = reply.envid
        except (MigrationError, ProtocolError) as exc:
            if isinstance(exc, MigrationError) and exc.code not in ("link-lost", "timeout"):
                raise                                   # the destination said no
            # The Commit may have arrived: the destination knows.
            reply = await self._ask_destination()
            if reply is None or reply.state not in (str(Arrival.COMMITTED),
                                                   str(Arrival.RUNNING)):
                raise
            self.new_envid = reply.envid

    async def _ask_destination(self) -> m.StatusReply | None:
        addr = getattr(self.method, "destination_addr", None)
        if addr is None:
            return None
        for delay in (0.1, 0.3, 1.0):
            reply = await ask(self.node, addr, self.method.port_kind, self.mid)
            if reply is not None:
                return reply
            await trio.sleep(delay)
        return None

    def _decide(self, d: Decision) -> None:
        self.decision = d
        self.node.migrations.ledger.decide(self.mid, d)
        failpoint(f"{self.method.name}.src.after_decision")
        self.log.info("migration decided", decision=str(d))

    async def _hand_over(self) -> None:
        """Tell the destination to run it.  If it cannot be told now, it asks
        (Status) when it finds the link gone: either way it learns GO."""
        self.set_stage(Stage.HANDING_OVER)
        try:
            await self.link.send(m.Go(), timeout=HANDOVER_TIMEOUT)
            started = await self.link.receive(frozenset({m.Started}), timeout=HANDOVER_TIMEOUT)
            self.marks["started"] = time.perf_counter()
            self.t_end = self.marks["started"] - (started.after_s or 0.0)
        except (MigrationError, ProtocolError) as exc:
            self.log.warning("destination not told to run the env yet; it will ask",
                             error=str(exc))

    async def _abort(self, exc: BaseException) -> None:
        self._decide(Decision.ABORT)
        reason = exc.message if isinstance(exc, MigrationError) else (
            "cancelled" if isinstance(exc, trio.Cancelled) else type(exc).__name__)
        if self.link is not None:
            try:
                await self.link.send(m.Abort(reason[:m.MAX_TEXT]), timeout=1.0)
            except (MigrationError, ProtocolError):
                pass
        self.method.roll_back(self)
        self.stage = Stage.ROLLED_BACK
        self.node.dispatch_events()
        self.node.poke()
        self.log.info("migration rolled back", reason=reason)

    def _where(self) -> str:
        """Where the env is after a roll back, in words."""
        e = self.node.kernel.live_env(self.envid)
        if e is None:
            return f"env {self.envid} is gone"
        return f"env {self.envid} is still here, {'paused' if e.paused else 'running'}"

    def _steps_ms(self, t_pause: float) -> dict:
        """When each step began, in ms after the pause (negative: before it;
        the downtime's profile): copying, preparing, committing, handing
        over, started (the Started reply arrived)."""
        return {k: round((v - t_pause) * 1000, 3) for k, v in self.marks.items()
                if k != str(Stage.STARTING)}

    def stats(self) -> dict:
        t = time.perf_counter()
        t_pause = self.t_pause if self.t_pause is not None else self.t0
        # The downtime ends when the destination made the env runnable (the
        # Started message says how long before it was sent), else now.
        t_end = self.t_end if self.t_end is not None else t
        out = {"envid": self.envid, "new_envid": self.new_envid, "method": self.method.name,
               "to": self.target, "mid": self.mid, "total_s": t - self.t0,
               "setup_s": t_pause - self.t0, "downtime_s": max(0.0, t_end - t_pause),
               "resumed": self.resume, "steps_ms": self._steps_ms(t_pause)}
        if self.link is not None:
            out["wire_bytes"] = self.link.bytes_sent + self.link.bytes_received
        out.update(self.method.stats(self))
        nbytes = out.get("bytes", 0)
        dt = t - t_pause
        out["mib_per_s"] = nbytes / (1 << 20) / dt if dt > 0 else 0.0
        return out


# -- the destination ---------------------------------------------------------------------------

@attrs.define(eq=False)
class Inbound:
    """One incoming migration (or load), as the destination runs it.  The
    method supplies receive (building the incoming env) and started."""
    node: object
    method: object
    begin: m.Begin
    link: Link
    announce: bool = True               # tell whoever waits for arrivals (not for a load)
    tracer: object = None               # trace.MigrationTrace, or None
    state: Arrival = Arrival.RECEIVING
    env: object = None
    t0: float = attrs.Factory(time.perf_counter)
    t_runnable: float = 0.0             # when settle() made the env runnable

    @property
    def mid(self) -> str:
        return self.begin.mid

    def _arrive(self, state: Arrival) -> None:
        self.state = state
        self.node.migrations.ledger.arrive(self.mid, state, self.env.env_id if self.env else None)

    async def serve(self) -> None:
        node = self.node
        log = node.log.bind(mid=self.mid, src=self.begin.src, method=self.begin.method)
        log.info("migration incoming")
        self._arrive(Arrival.RECEIVING)
        try:
            await self._receive_and_commit()
        except Error as exc:
            self._drop()
            log.warning("migration refused", reason=exc.message, code=exc.code)
            with trio.CancelScope(shield=True):
                await self.link.refuse(exc.code, exc.message)
            return
        except BaseException:
            self._drop()
            raise
        failpoint(f"{self.method.name}.dst.after_commit")
        # Committed here: run it only on the source's word.
        decision = None
        try:
            await self.link.send(m.Committed(self.env.env_id))
            msg = await self.link.receive(frozenset({m.Go, m.Abort}), timeout=COMMIT_TIMEOUT * 2)
            decision = Decision.GO if isinstance(msg, m.Go) else Decision.ABORT
        except Error as exc:
            log.warning("link lost before the source's decision; asking it", error=exc.message)
            decision = await self.resolve()
        if decision is None:
            return                                # settled meanwhile (jmigctl recover)
        self.settle(decision)
        if decision is Decision.GO:
            try:
                after = min(1e6, max(0.0, time.perf_counter() - self.t_runnable))
                await self.link.send_now(m.Started(self.env.env_id, self.begin.resume, after))
            except Error:
                pass

    async def _receive_and_commit(self) -> None:
        k = self.node.kernel
        self.env = await self.method.receive(self, self.link)
        if self.tracer is not None:
            self.tracer.received(self, self.env)
        failpoint(f"{self.method.name}.dst.before_prepared")
        self._arrive(Arrival.PREPARED)
        await self.link.send(m.Prepared(self.env.env_id))
        failpoint(f"{self.method.name}.dst.after_prepared")
        msg = await self.link.receive(frozenset({m.Commit, m.Abort}), timeout=PREPARED_TIMEOUT)
        if isinstance(msg, m.Abort):
            raise MigrationError("cancelled", f"the source gave up: {msg.reason}")
        k.commit_incoming(self.env)
        self.env.frozen = Hold.ARRIVING
        self._arrive(Arrival.COMMITTED)
        self.node.migrations.arriving[self.env.env_id] = self
        self.method.committed(self, self.env)

    def _drop(self) -> None:
        """Failed before the commit: nothing of the env stays here."""
        if self.env is not None:
            self.node.kernel.abort_incoming(self.env)
            self.node.dispatch_events()
            self.env = None
        self._arrive(Arrival.ABORTED)
        self.method.aborted(self)

    async def resolve(self, once: bool = False) -> Decision | None:
        """Ask the source for its decision until it gives one (once: ask
        once).  None: it cannot tell yet (once), or the env was settled
        meanwhile by other means."""
        delay, most = RESOLVE_BACKOFF
        while self.state is Arrival.COMMITTED:
            reply = await ask(self.node, self.begin.src_addr, "normal", self.mid)
            if reply is not None:
                if reply.incarnation != self.begin.incarnation:
                    return Decision.GO           # the source restarted: its copy is gone
                if reply.role == "source" and reply.state != Decision.PENDING:
                    return Decision(reply.state)
                if reply.role == "none":
                    return Decision.ABORT
            if once:
                return None
            await trio.sleep(delay)
            delay = min(most, delay * 2)
        return None

    def settle(self, decision: Decision) -> None:
        """Apply the source's decision to the held env."""
        node, k = self.node, self.node.kernel
        log = node.log.bind(mid=self.mid, src=self.begin.src)
        env = self.env
        node.migrations.arriving.pop(env.env_id, None)
        if self.state is not Arrival.COMMITTED or k.envs[env.env_id & 0x3FF] is not env \
                or not env.status:
            return
        if decision is Decision.GO:
            env.frozen = ""
            if self.begin.resume:
                k.resume(env.env_id)
            self.t_runnable = time.perf_counter()
            self._arrive(Arrival.RUNNING)
            if self.tracer is not None:
                self.tracer.arrived(self, node, env.env_id)
            self.method.started(self, env)
            node.dispatch_events()
            node.poke()
            dt = time.perf_counter() - self.t0
            log.info("migration arrived", envid=env.env_id, resumed=self.begin.resume,
                     seconds=round(dt, 4), wire_bytes=self.link.bytes_received,
                     mib_per_s=round(self.link.bytes_received / (1 << 20) / dt, 1) if dt else None)
            if self.announce:
                node.remote.visiting(env.env_id)
                node.announce_arrival({"method": self.begin.method, "envid": env.env_id,
                                       "src": self.begin.src, "resumed": self.begin.resume})
        else:
            env.frozen = ""
            k.env_destroy(env, 0, "the source kept the process")
            self._arrive(Arrival.ABORTED)
            self.method.aborted(self)
            node.dispatch_events()
            log.info("migration aborted by the source", envid=env.env_id)
