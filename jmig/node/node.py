"""A jmig node: one simulated JOS machine served over four TCP ports.

    P     normal and pre-copy migration receiver   (migration/)
    P+1   demand-paging migration receiver         (migration/)
    P+2   page server                              (migration/origin.py)
    P+3   control: jmigctl                         (control.py)

The kernel runs in one task that gives way to the others between runs of
about QUANTUM_SECONDS, so every port stays responsive; with nothing
runnable it sleeps until poked (an operation made something runnable) or
until the next sleeping env is due.  Every connection on every port must
first pass the handshake (proto/handshake.py).  A connection that
misbehaves is closed; the node keeps serving.
"""
from __future__ import annotations

import ipaddress
import os
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import attrs
import structlog
import trio

import jmig
from .. import programs
from ..kernel import events as ev
from ..kernel.kernel import DEFAULT_MEMORY, DEFAULT_SLICE, Kernel
from ..proto.frames import ProtocolError, encode_frame
from ..proto.handshake import AuthError
from ..proto.wire import ConnectionClosed, FramedStream, connect, send_error, server_handshake
from . import listener
from .admission import BUSY, GARBAGE, PENALIZED, SLOW, WRONG, Admission, Throttle
from .balance import Balancer
from .cluster import LoadMeter, Membership, slots_of
from .console import ConsoleHub
from .control import ControlSession
from .disk import NAME_RE, DataDir
from .migration import Migrations
from .migration.base import deadlines
from .peers import Peers
from .remote import IPC_DEADLINE_SECONDS, RemoteEnvs
from .trace import Tracer

PORT_KINDS = ("normal", "pgfault", "pager", "control")   # offsets 0..3 from P
QUANTUM_SECONDS = 0.005          # kernel time between checkpoints
IO_QUANTUM_SECONDS = 0.0005      # ... while a migration moves data through this node
TURN_AWAY_SECONDS = 0.2          # how long a refused peer gets to read why
TURN_AWAY_BYTES = 64 << 10       # ... and what it may still send meanwhile
BLOCKLIST_INTERVAL = 0.5         # how often the kernel's blocklist follows drained penalties
BLOCKLIST_BATCH = 0.01           # ... and how soon it follows new ones
_BUSY_FRAME = encode_frame({"t": "error", "code": "busy", "message": BUSY})
_PENALIZED_FRAME = encode_frame({"t": "error", "code": "busy", "message": PENALIZED})


@attrs.frozen
class BootSpec:
    program: str
    args: tuple[str, ...] = ()
    envid: int | None = None


@attrs.frozen
class NodeConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 50001
    name: str = ""
    memory: int = DEFAULT_MEMORY
    cpus: int = 1
    slice: int = DEFAULT_SLICE
    boot: tuple[BootSpec, ...] = ()
    echo: bool = True                  # user output to stdout
    prefault: bool = True              # commit physical memory at start (jmig-node)
    trace: bool = False                # the original's per-page lines on the console
    join: tuple[str, ...] = ()         # members to join (HOST:P)
    node_id: int | None = None         # this node's share of env slots (cluster.slots_of)
    balance: bool = False              # balance load automatically (balance.py)

    def port_of(self, kind: str) -> int:
        return self.port + PORT_KINDS.index(kind)


class Node:
    def __init__(self, cfg: NodeConfig, secret: bytes):
        self.cfg = cfg
        self.secret = secret
        self.name = cfg.name or f"{cfg.host}:{cfg.port}"
        self.version = jmig.__version__
        self.incarnation = os.urandom(8).hex()      # this process; a restart is another
        self.kernel = Kernel(memory=cfg.memory, ncpus=cfg.cpus, slice=cfg.slice,
                             clock=self._clock_ms, prefault=cfg.prefault,
                             background_compile=True, slots=slots_of(cfg.node_id))
        self.disk = DataDir(cfg.data_dir)
        self.console = ConsoleHub(echo=cfg.echo)
        self.tracer = Tracer(self.console if cfg.trace else None)
        self.log = structlog.get_logger("jmig.node").bind(node=self.name)
        self.started = time.time()
        self.ports: dict[str, int] = {}
        self.admission = Admission(on_penalized=self._blocklist_stale)
        self._blocklist_changed = trio.Event()
        self._log_throttle = Throttle()
        self._refuser = listener.Refuser()
        self.refused = 0                 # handshakes that failed (bad secret, garbage, ...)
        self._wakeup = trio.Event()
        self._connections: trio.Nursery | None = None    # where connection tasks run
        self.serving = trio.Event()
        self.migrations = Migrations(self)
        self.free_pages_at_start = self.kernel.phys.nfree
        self.arrival_waiters: set[trio.MemorySendChannel] = set()
        self.io_active = 0               # transfers under way: keep kernel quanta short
        self.stopping = False            # shutting down: no new migrations in or out
        self.cordoned = False            # no drain or balancer sends envs here
        self.meter = LoadMeter(self.kernel)
        self.peers = Peers(self)
        self.membership = Membership(self, cfg.join)
        self.balancer = Balancer(self, cfg.balance)
        self.remote = RemoteEnvs(self)

    # -- time ---------------------------------------------------------------------
    @staticmethod
    def _clock_ms() -> float:
        try:
            return trio.current_time() * 1000.0
        except RuntimeError:           # outside trio (tests poking the kernel directly)
            return time.monotonic() * 1000.0

    def uptime(self) -> float:
        return time.time() - self.started

    # -- the kernel task ----------------------------------------------------------
    def poke(self) -> None:
        """Something may have become runnable: wake the kernel task."""
        self._wakeup.set()

    async def _kernel_loop(self) -> None:
        quantum = 20_000
        k = self.kernel
        while True:
            t0 = time.perf_counter()
            res = k.run(quantum)
            dt = time.perf_counter() - t0
            self.meter.busy += dt
            self.dispatch_events()
            if res.executed and dt > 0:
                target = IO_QUANTUM_SECONDS if self.io_active else QUANTUM_SECONDS
                quantum = int(min(2_000_000, max(200, quantum * target / dt)))
            if res.idle:
                if self._wakeup.is_set() or self.migrations.pager.take_reply():
                    self._wakeup = trio.Event()
                    continue
                deadline = float("inf") if res.next_wake is None else res.next_wake / 1000.0
                with trio.move_on_at(deadline):
                    await self._wakeup.wait()
                self._wakeup = trio.Event()
            else:
                await trio.sleep(0)

    def dispatch_events(self) -> None:
        for e in self.kernel.take_events():
            if isinstance(e, ev.Console):
                self.console.write(e.text, e.envid)
            elif isinstance(e, ev.EnvCreated):
                self.log.info("env created", envid=e.envid, parent=e.parent_id, program=e.name)
                self.balancer.arrived(e.envid)
                self.remote.arrived(e.envid)
            elif isinstance(e, ev.EnvDestroyed):
                self.log.info("env destroyed", envid=e.envid, reason=e.reason)
                self.migrations.pager.env_gone(e.envid)
                self.balancer.gone(e.envid)
                self.remote.destroyed(e.envid)
            elif isinstance(e, ev.EnvFaulted):
                self.log.warning("env faulted", envid=e.envid, trapno=e.trapno,
                                 err=e.err, va=f"{e.va:#010x}", eip=f"{e.eip:#010x}")
            elif isinstance(e, (ev.IpcSend, ev.EnvCall)):
                self.remote.ask(e)
            elif isinstance(e, ev.EnvBlocked):
                self.log.debug("env blocked on remote page", envid=e.envid,
                               owner=e.owner, va=f"{e.va:#010x}")
                self.migrations.pager.on_blocked(e)

    # -- programs -------------------------------------------------------------------
    def find_program(self, name: str) -> bytes | None:
        """A program by name: the node's disk first, then the bundled ones."""
        data = self.disk.read_program(name) if self._disk_name_ok(name) else None
        if data is None and programs.exists(name):
            data = programs.load(name)
        return data

    @staticmethod
    def _disk_name_ok(name: str) -> bool:
        return isinstance(name, str) and bool(NAME_RE.match(name))

    def spawn(self, name: str, args: list[str], elf: bytes | None = None,
              envid: int | None = None, paused: bool = False):
        """Create an env running a program (or the given ELF bytes)."""
        if elf is None:
            elf = self.find_program(name)
            if elf is None:
                raise ev.KernelError(ev.NO_SUCH_PROGRAM,
                                     f"no program {name!r} on node {self.name} "
                                     f"(bundled: {', '.join(programs.names())})")
        # A fixed envid: the original walkthrough boots the test program as 4100.
        e = self.kernel.env_create(elf, [name, *args], name=name, paused=paused, envid=envid)
        self.dispatch_events()
        self.poke()
        return e

    # -- serving --------------------------------------------------------------------
    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Bind all four ports, boot, and serve until cancelled.  Raises
        OSError if a port cannot be bound (before anything runs)."""
        self.disk.prepare()
        socks = {}
        try:
            for kind in PORT_KINDS:
                socks[kind] = listener.bind(self.cfg.host,
                                            self.cfg.port_of(kind) if self.cfg.port else 0)
                self.ports[kind] = socks[kind].getsockname()[1]
        except BaseException:
            for sock in socks.values():
                sock.close()
            raise
        for b in self.cfg.boot:
            e = self.spawn(b.program, list(b.args), envid=b.envid)
            self.log.info("booted", envid=e.env_id, program=b.program)
        self.log.info("node listening", host=self.cfg.host, ports=self.ports)
        try:
            async with trio.open_nursery() as nursery:
                self._connections = nursery
                nursery.start_soon(self._kernel_loop)
                for kind, sock in socks.items():
                    nursery.start_soon(listener.serve, sock, partial(self._on_accept, kind),
                                       self._on_capacity)
                nursery.start_soon(self._gatekeeper, list(socks.values()))
                nursery.start_soon(self._refuser.run)
                await nursery.start(self.migrations.run)
                await nursery.start(self.membership.run)
                await nursery.start(self.remote.run)
                nursery.start_soon(self.balancer.run)
                self.serving.set()
                task_status.started(self)
        finally:
            self.console.close()

    def _on_accept(self, kind: str, fd: int, addr) -> None:
        """A new connection: refuse it here and now (a penalized address, or
        no room in the handshake budget), or start its task."""
        host = addr[0]
        if self.admission.penalized(host):
            # Closed without a word (a write is the dearest part of a
            # refusal), except when the refusal is logged: then the peer is
            # told why too, once per log interval.
            self._refuser.refuse(fd, _PENALIZED_FRAME
                                 if self._log_refusals(kind, host, "penalized") else b"")
            return
        scope = trio.CancelScope()
        ticket = self.admission.enter(host, scope.cancel)
        if ticket is None:
            # Told why, unless the address is suspect already (as a flood is
            # after its first refusal): then only when the refusal is logged.
            logged = self._log_refusals(kind, host, "busy")
            told = logged or not self.admission.suspect(host)
            self._refuser.refuse(fd, _BUSY_FRAME if told else b"")
            return
        self._connections.start_soon(self._connection, kind, listener.stream_of(fd),
                                     f"{host}:{addr[1]}", ticket, scope)

    def _blocklist_stale(self) -> None:
        self._blocklist_changed.set()

    async def _gatekeeper(self, socks) -> None:
        """Keep the kernel's blocklist of every listener equal to the
        addresses the admission penalizes (listener.block): at once when one
        is added (after BLOCKLIST_BATCH, to take others with it), and every
        BLOCKLIST_INTERVAL for those whose penalty has drained."""
        shown: list[str] = []
        while True:
            with trio.move_on_after(BLOCKLIST_INTERVAL):
                await self._blocklist_changed.wait()
                await trio.sleep(BLOCKLIST_BATCH)
            self._blocklist_changed = trio.Event()
            now = self.admission.blocked()
            if now != shown:
                for sock in socks:
                    listener.block(sock, now)
                added = sorted(set(now) - set(shown))
                if added:
                    self.log.warning("addresses blocked", hosts=added[:16], count=len(now))
                shown = now

    def _log_refusals(self, kind: str, host: str, reason: str) -> bool:
        """Log a refusal at accept (a few per address, then counts:
        Throttle); True if this one was logged."""
        n = self._log_throttle.take(host)
        if n:
            self.log.warning("connection refused", port=kind, peer_host=host, reason=reason,
                             count=n)
        return bool(n)

    def _on_capacity(self, exc: OSError) -> None:
        self.log.error("cannot accept connections", error=exc.strerror)

    async def _connection(self, kind: str, stream, peer: str, ticket, scope) -> None:
        fs = FramedStream(stream)
        try:
            if not await self._authenticate(kind, fs, peer, ticket, scope):
                return
            if not self.admission.open_session():
                self.log.warning("connection refused", port=kind, peer=peer,
                                 reason="too many sessions")
                await self._turn_away(fs, "busy", "node busy: too many connections")
                return
            try:
                self.log.info("connection accepted", port=kind, peer=peer, client=fs.peer)
                await self._session(kind, fs)
            except (ProtocolError, ConnectionClosed) as exc:
                self.log.info("connection closed", port=kind, peer=peer,
                              detail=str(exc) or type(exc).__name__)
            except trio.TooSlowError:
                self.log.warning("connection timed out", port=kind, peer=peer)
            except Exception:           # a bug: log it, keep the node alive
                self.log.exception("connection handler failed", port=kind, peer=peer)
            finally:
                self.admission.close_session()
        finally:
            await fs.aclose()

    async def _authenticate(self, kind: str, fs: FramedStream, peer: str, ticket,
                            scope: trio.CancelScope) -> bool:
        """The handshake, holding a ticket of the unauthenticated peers'
        budget (admission.py); scope is cancelled if the ticket is evicted.
        False: the connection is refused (and was told why)."""
        host = ticket.host
        try:
            with scope:
                await server_handshake(fs, self.secret, kind, self.name, jmig.__version__)
                self.admission.authenticated(host)
                return True
        except AuthError as exc:
            self.refused += 1
            self.admission.failed(host, GARBAGE if exc.code == "protocol"
                                  else WRONG)
            n = self._log_throttle.take(host)
            if n:
                self.log.warning("connection refused", port=kind, peer=peer, reason=exc.code,
                                 detail=exc.message, count=n)
            return False
        except (ProtocolError, ConnectionClosed, trio.TooSlowError) as exc:
            self.refused += 1
            self.admission.failed(host, GARBAGE if isinstance(exc, ProtocolError)
                                  else SLOW)
            n = self._log_throttle.take(host)
            detail = str(exc) or type(exc).__name__
            if n:
                self.log.warning("connection refused", port=kind, peer=peer, reason="protocol",
                                 detail=detail, count=n)
            if isinstance(exc, ProtocolError):
                await self._turn_away(fs, "protocol", detail[:200])
            return False
        finally:
            self.admission.leave(ticket)
        n = self._log_throttle.take(host)
        if n:
            self.log.warning("connection refused", port=kind, peer=peer, reason="busy",
                             detail="evicted from the handshake by newer peers", count=n)
        await self._turn_away(fs, "busy", BUSY)
        return False

    @staticmethod
    async def _turn_away(fs: FramedStream, code: str, message: str) -> None:
        """Tell the peer why, then half-close and read what it still sends
        (briefly, and at most TURN_AWAY_BYTES: an honest peer has sent a
        hello at most), so that the close cannot overtake the message as a
        reset."""
        with trio.move_on_after(TURN_AWAY_SECONDS):
            await send_error(fs, code, message)
            try:
                await fs.stream.send_eof()
                left = TURN_AWAY_BYTES
                while left > 0:
                    data = await fs.stream.receive_some(left)
                    if not data:
                        break
                    left -= len(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def _session(self, kind: str, fs: FramedStream) -> None:
        if kind == "control":
            await ControlSession(self, fs).run()
            return
        with self.io():
            await self.migrations.serve(kind, fs)

    async def connect(self, host: str, port: int, kind: str,
                      timeout: float | None = None) -> FramedStream:
        """An authenticated connection to another node's port, leaving from
        this node's own address when it is bound to one (so the other side
        sees, and budgets, this node's address)."""
        kw = {} if timeout is None else {"timeout": timeout}
        local = _source_address(self.cfg.host, host)
        return await connect(host, port, self.secret, kind, self.name, local_host=local, **kw)

    def advertised_host(self, fs) -> str:
        """Where other nodes reach this one: the bound address, or, when
        bound to every address, the one this connection leaves from."""
        h = self.cfg.host
        if h in ("", "0.0.0.0", "::"):
            sock = getattr(getattr(fs, "stream", None), "socket", None)
            h = sock.getsockname()[0] if sock is not None else "127.0.0.1"
        return h

    def address_for(self, link) -> tuple[str, int]:
        """(host, P) of this node as the other end of link sees it."""
        return (self.advertised_host(link.fs), self.cfg.port or self.ports.get("normal", 1))

    def is_me(self, host: str, port: int) -> bool:
        """Whether HOST:P names this node (an address it listens on, its port)."""
        if port != (self.cfg.port or self.ports.get("normal")):
            return False
        if host in (self.cfg.host, "localhost") or host == self.name:
            return True
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return False
        mine = self.cfg.host
        return mine in ("", "0.0.0.0", "::") and (addr.is_loopback or addr.is_unspecified)

    @contextmanager
    def io(self):
        """Mark a data transfer under way: the kernel task then runs in
        shorter quanta so that the transfer's tasks get the CPU often."""
        self.io_active += 1
        try:
            yield
        finally:
            self.io_active -= 1

    async def shutdown(self) -> None:
        """An orderly stop: refuse new migrations, finish or roll back every
        job, push the rest of every migration whose pages this node serves
        and wait until it is released.  The node serves meanwhile."""
        self.stopping = True
        await self.migrations.shutdown(self.log)
        await self.membership.leave()
        self.log.info("shutdown complete: nothing left in flight")

    # -- arrivals (jmigctl shell's migrate_recv_*) ------------------------------------
    def announce_arrival(self, info: dict) -> None:
        """A migration committed here: tell whoever waits for one."""
        for ch in list(self.arrival_waiters):
            try:
                ch.send_nowait(info)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                self.arrival_waiters.discard(ch)

    async def wait_arrival(self) -> dict:
        send, recv = trio.open_memory_channel(1)
        self.arrival_waiters.add(send)
        try:
            return await recv.receive()
        finally:
            self.arrival_waiters.discard(send)

    # -- facts ----------------------------------------------------------------------
    def load(self) -> dict:
        """What a heartbeat tells the other members (cluster.py)."""
        k = self.kernel
        envs = k.live_envs()
        return {"envs": len(envs), "runnable": sum(1 for e in envs if k.wants_cpu(e)),
                "cpu": round(self.meter.cpu, 3), "ips": round(self.meter.ips, 1),
                "free": k.phys.nfree * 4096, "total": k.phys.nframes * 4096,
                "jobs": len(self.migrations.jobs.running), "cpus": self.cfg.cpus,
                "cordoned": self.cordoned, "balance": self.balancer.on,
                "stopping": self.stopping}

    def info(self) -> dict:
        mem = self.kernel.memory_stats()
        envs = self.kernel.live_envs()
        return {"name": self.name, "host": self.cfg.host, "ports": dict(self.ports),
                "version": jmig.__version__, "uptime": self.uptime(), "cpus": self.cfg.cpus,
                "slice": self.cfg.slice, "memory": {
                    "total": mem["total_pages"] * 4096, "used": mem["used_pages"] * 4096,
                    "free": mem["free_pages"] * 4096},
                "envs": len(envs), "instructions": self.kernel.instructions,
                "compiling": self.kernel.compiles_in_flight(),
                "incarnation": self.incarnation,
                "console_dropped": self.console.dropped_bytes,
                "connections": self.admission.sessions, "handshakes": self.admission.preauth,
                "refused": self.refused, "busy_refused": self.admission.refused,
                "deadlines": {**deadlines(), "ipc_s": IPC_DEADLINE_SECONDS},
                "data_dir": str(self.cfg.data_dir)}


def _source_address(bound: str, target: str) -> str | None:
    """The address to connect from: the one this node is bound to, when it
    is one address and on the same side of loopback as the target."""
    try:
        b, t = ipaddress.ip_address(bound), ipaddress.ip_address(target)
    except ValueError:
        return None
    if b.is_unspecified or b.version != t.version or b.is_loopback != t.is_loopback:
        return None
    return bound
