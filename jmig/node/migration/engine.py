"""The migration engine of a node: it starts migrate, save and load jobs,
serves the migration ports (P, P+1) and the page server (P+2), answers
other nodes' questions about migrations, settles envs left by broken
links (`recover`), and drains everything at an orderly shutdown."""
from __future__ import annotations

import time

import trio

from ...kernel import events as ev
from ...kernel.kernel import WAITING_FOR
from ...proto import migration as m
from ...proto.frames import ProtocolError
from ...proto.pstream import StreamError
from ...proto.wire import FramedStream, parse_node
from ..disk import DiskError
from .base import Hold, MigrationError
from .filelink import LoadLink, SaveLink
from .jobs import Job, JobTable
from .link import Link
from .normal import StreamReceive, StreamSend
from .origin import PageServer
from .pager import Pager
from .pgfault import PgfaultReceive, PgfaultSend
from .precopy import PrecopyReceive, PrecopySend
from .session import Decision, Inbound, Ledger, Outbound, new_mid

METHODS = ("normal", "pgfault", "precopy")


class SaveSend(StreamSend):
    """Save: a normal stream to an image file; the env stays here (paused,
    or running again if it was paused just for the save)."""
    name = "image"
    forwards = False                # saved: the env stays here
    holds_as = Hold.SAVING

    def __init__(self, node, envid: int, pause: bool):
        super().__init__(node, envid, keep=True)
        self.pause = pause

    async def hold(self, out) -> None:
        e = self.node.kernel.get_env(self.envid)
        if not e.paused and not self.pause:
            raise ev.KernelError(ev.BAD_STATE, f"env {self.envid} is running; pause it first "
                                 "(or save with --pause to pause it just for the save)")
        await super().hold(out)

    def hand_over(self, out) -> None:
        self.roll_back(out)                 # saved: the env is as it was before


class Migrations:
    def __init__(self, node):
        self.node = node
        self.ledger = Ledger(node.incarnation, alive=self._alive)
        self.origin = PageServer(node)
        self.pager = Pager(node)
        self.jobs = JobTable(node, node.disk.root / "jobs")
        self.busy: dict[int, str] = {}          # envid -> what runs while the env does
        self.arriving: dict[int, Inbound] = {}  # envid -> committed here, awaiting the go

    def _alive(self, envid) -> bool:
        return bool(envid) and self.node.kernel.live_env(envid) is not None

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.pager.run)
            await nursery.start(self.jobs.run)
            task_status.started()

    def check_free(self, envid: int) -> None:
        """Refuse to start moving an env that something already holds."""
        e = self.node.kernel.get_env(envid)
        if e.frozen.startswith(WAITING_FOR) and envid not in self.busy:
            return                  # a syscall on another node's env: stop() waits for it
        if e.frozen or envid in self.busy:
            raise ev.KernelError(ev.BAD_STATE, f"env {envid} is {e.frozen or self.busy[envid]}")

    # -- jobs -------------------------------------------------------------------------
    def migrate(self, envid: int, to: str, method: str = "normal", *, keep: bool = False,
                resume: bool = False, push: bool = True, prefetch: int = 0,
                max_rounds: int = 8, downtime_limit_ms: int = 50, then: str = "stop",
                timeout: float | None = None, page_server: str | None = None,
                trace: bool = False, reason: str = "") -> Job:
        node = self.node
        try:
            host, port = parse_node(to)
        except ValueError as exc:
            raise MigrationError("bad-request", str(exc)) from None
        if node.is_me(host, port):
            raise MigrationError("bad-request", f"{to} is this node; migrate to another one")
        self.check_free(envid)
        dest = (host, port)
        if method == "normal":
            sender = StreamSend(node, envid, keep=keep, destination_addr=dest)
        elif method == "pgfault":
            if keep:
                raise MigrationError("bad-request", "--keep makes no sense for pgfault: the "
                                     "origin keeps the pages until they have all moved")
            sender = PgfaultSend(node, envid, push=push, prefetch=prefetch,
                                 destination_addr=dest, page_server=page_server)
        elif method == "precopy":
            sender = PrecopySend(node, envid, keep=keep, max_rounds=max_rounds,
                                 downtime_limit_ms=downtime_limit_ms, then=then, push=push,
                                 prefetch=prefetch, destination_addr=dest,
                                 page_server=page_server)
        else:
            raise MigrationError("bad-request", f"unknown method {method!r}: use normal, "
                                 "pgfault or precopy")

        async def connect(out):
            fs = await node.connect(host, port + (1 if sender.port_kind == "pgfault" else 0),
                                    sender.port_kind)
            return Link(fs, timeout) if timeout else Link(fs)

        async def run(job: Job) -> dict:
            out = Outbound(node, sender, envid, to, connect, resume=resume, report=job.report,
                           tracer=node.tracer.migration(job.trace_line if trace else None))
            job.session = out
            with node.io():
                return await out.run()

        return self.jobs.start("migrate", envid, to, run, method=method, reason=reason)

    def save(self, envid: int, name: str, *, force: bool = False, pause: bool = False,
             trace: bool = False) -> Job:
        node = self.node
        path = node.disk.image_path(name)
        if path.exists() and not force:
            raise DiskError("exists", f"image {name} already exists on {node.name}; "
                            "use --force to replace it")
        self.check_free(envid)
        sender = SaveSend(node, envid, pause)

        async def connect(out):
            return SaveLink(path, envid)

        async def run(job: Job) -> dict:
            out = Outbound(node, sender, envid, f"image {name}", connect, report=job.report,
                           tracer=node.tracer.migration(job.trace_line if trace else None))
            job.session = out
            stats = await out.run()
            return {"envid": envid, "image": name, "pages": stats["pages"],
                    "bytes": stats["bytes"], "seconds": stats["total_s"],
                    "mib_per_s": stats["bytes"] / (1 << 20) / stats["total_s"]
                    if stats["total_s"] else 0.0}

        return self.jobs.start("save", envid, name, run)

    def load(self, name: str, *, resume: bool = False, trace: bool = False) -> Job:
        node = self.node
        path = node.disk.image_path(name)
        if not path.is_file():
            raise DiskError("no-such-image", f"no image {name} on {node.name} "
                            "(see `jmigctl ls`)")

        async def run(job: Job) -> dict:
            t0 = time.perf_counter()
            try:
                link = LoadLink(path, node.kernel.phys.nframes)
            except StreamError as exc:
                raise MigrationError("bad-image", f"image rejected: {exc.message}") from None
            begin = m.Begin(mid=new_mid(), method="normal", src=node.name,
                            src_addr=(node.cfg.host or "127.0.0.1", node.cfg.port or 1),
                            incarnation=node.incarnation, resume=resume)
            receiver = StreamReceive(node)
            inb = Inbound(node, receiver, begin, link, announce=False,
                          tracer=node.tracer.migration(job.trace_line if trace else None))
            try:
                await inb.serve()
            finally:
                await link.aclose()
            if link.failure is not None:
                code, message = link.failure
                raise MigrationError("bad-image" if code in ("bad-stream", "protocol")
                                     else code, f"image rejected: {message}"
                                     if code == "bad-stream" else message)
            dt = time.perf_counter() - t0
            nbytes = link.size
            envid = inb.env.env_id
            job.envid = envid
            return {"envid": envid, "new_envid": envid, "image": name,
                    "pages": receiver.restorer.pages,
                    "bytes": nbytes, "seconds": dt, "resumed": resume,
                    "mib_per_s": nbytes / (1 << 20) / dt if dt else 0.0}

        return self.jobs.start("load", None, name, run)

    # -- the ports --------------------------------------------------------------------------
    async def serve(self, kind: str, fs: FramedStream) -> None:
        """One connection on P (normal, precopy), P+1 (pgfault) or P+2 (pager)."""
        link = Link(fs)
        try:
            await self._serve(kind, link)
        except ProtocolError as exc:
            await link.refuse("protocol", exc.message)
            raise

    async def _serve(self, kind: str, link: Link) -> None:
        if kind == "pager":
            await self.origin.handle(link)
            return
        first = await link.receive(m.SOURCE_OPENS)
        if isinstance(first, m.Status):
            await link.send(self.ledger.reply(first.mid))
            return
        if self.node.stopping:
            await link.refuse("refused", f"{self.node.name} is shutting down")
            return
        if first.incarnation == self.node.incarnation:
            # Another name of this very node (an alias, 0.0.0.0, a port forward).
            await link.refuse("bad-request", f"{self.node.name} is the env's own node; "
                              "migrate to another one")
            return
        expected = ("pgfault",) if kind == "pgfault" else ("normal", "precopy")
        if first.method not in expected:
            await link.refuse("protocol", f"a {first.method} migration does not belong on the "
                              f"{kind} port")
            return
        receiver = {"normal": StreamReceive, "pgfault": PgfaultReceive,
                    "precopy": PrecopyReceive}[first.method](self.node)
        await Inbound(self.node, receiver, first, link, tracer=self.node.tracer.migration()).serve()

    # -- settling --------------------------------------------------------------------------
    async def recover(self, envid: int, force: bool = False) -> dict:
        """Settle an env a broken migration left held here: one that arrived
        and waits for its source's go, or one whose pages this node serves
        to a destination that lost it."""
        inb = self.arriving.get(envid)
        if inb is not None:
            decision = await inb.resolve(once=True)
            src = inb.begin.src
            if decision is None:
                if not force:
                    raise MigrationError("in-doubt", f"env {envid} arrived from {src}, which "
                                         "cannot say yet whether it gave the env up (it cannot "
                                         "be reached); if it is gone for good, use --force to "
                                         "run the env here")
                decision, found = Decision.GO, f"{src} cannot be reached; --force: taken over"
            else:
                found = f"{src} decided {decision}"
            inb.settle(decision)
            outcome = ("the env runs here now" if decision is Decision.GO and inb.begin.resume
                       else "the env is here, paused" if decision is Decision.GO
                       else "the source kept it; the copy here is gone")
            return {"envid": envid, "found": found, "outcome": outcome}
        res = await self.origin.recover(envid, force)
        if res is not None:
            return res
        self.node.kernel.get_env(envid)
        raise MigrationError("bad-state", f"env {envid} is not held by a migration here: "
                             "nothing to recover")

    # -- facts ------------------------------------------------------------------------------
    def annotate(self, envid: int) -> str:
        """Extra ps state for an env, if a migration holds it."""
        inb = self.arriving.get(envid)
        if inb is not None:
            return f"from {inb.begin.src}, waiting for its go-ahead"
        return self.pager.annotate(envid) or self.busy.get(envid, "")

    def stats(self) -> dict:
        return {**self.pager.stats(), **self.origin.stats()}

    # -- shutdown ---------------------------------------------------------------------------
    async def shutdown(self, log) -> None:
        """Finish or roll back every job, then push the rest of every
        migration this node still serves pages for and wait for its release."""
        await self.jobs.shutdown(log)
        await self.origin.drain(log)

    def abandoned(self) -> list[str]:
        """What stopping now would lose (for the second signal's message)."""
        out = [f"job {j.id} ({j.kind} of env {j.envid})" for j in self.jobs.running.values()]
        out += [f"the {o.npages - len(o.sent)} pages of env {o.envid} not yet sent to {o.dest}"
                for o in self.origin.outgoing.values()]
        return out

