"""A jmig node: one simulated JOS machine served over four TCP ports.

    P     normal migration receiver        (migrate.py)
    P+1   demand-paging migration receiver (pager.py)
    P+2   page server                      (pager.py)
    P+3   control: jmigctl                 (control.py)

The kernel runs in one task that gives way to the others between runs of
about QUANTUM_SECONDS, so every port stays responsive; with nothing
runnable it sleeps until poked (an operation made something runnable) or
until the next sleeping env is due.  Every connection on every port must
first pass the handshake (proto/handshake.py).  A connection that
misbehaves is closed; the node keeps serving.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

import attrs
import structlog
import trio

import jmig
from .. import programs
from ..kernel import events as ev
from ..kernel.kernel import DEFAULT_MEMORY, DEFAULT_SLICE, Kernel
from ..proto.frames import MAX_CONTROL_FRAME, MAX_DATA_FRAME, ProtocolError
from ..proto.handshake import AuthError
from ..proto.wire import ConnectionClosed, FramedStream, server_handshake
from .console import ConsoleHub
from .disk import DataDir

PORT_KINDS = ("normal", "pgfault", "pager", "control")   # offsets 0..3 from P
QUANTUM_SECONDS = 0.005          # kernel time between checkpoints
IO_QUANTUM_SECONDS = 0.0005      # ... while a migration moves data through this node
MAX_CONNECTIONS = 256


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

    def port_of(self, kind: str) -> int:
        return self.port + PORT_KINDS.index(kind)


class Node:
    def __init__(self, cfg: NodeConfig, secret: bytes):
        self.cfg = cfg
        self.secret = secret
        self.name = cfg.name or f"{cfg.host}:{cfg.port}"
        self.kernel = Kernel(memory=cfg.memory, ncpus=cfg.cpus, slice=cfg.slice,
                             clock=self._clock_ms)
        self.disk = DataDir(cfg.data_dir)
        self.console = ConsoleHub(echo=cfg.echo)
        self.log = structlog.get_logger("jmig.node").bind(node=self.name)
        self.started = time.time()
        self.ports: dict[str, int] = {}
        self.connections = 0
        self.refused = 0
        self._wakeup = trio.Event()
        self.nursery: trio.Nursery | None = None
        self.serving = trio.Event()
        # Per-feature state lives in these helpers (created in serve()).
        self.migrator = None
        self.pager = None
        self.free_pages_at_start = self.kernel.phys.nfree
        self.arrival_waiters: set[trio.MemorySendChannel] = set()
        self.busy: dict[int, str] = {}   # envid -> operation that runs while the env does
        self.io_active = 0               # transfers under way: keep kernel quanta short

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
            self.dispatch_events()
            if res.executed and dt > 0:
                target = IO_QUANTUM_SECONDS if self.io_active else QUANTUM_SECONDS
                quantum = int(min(2_000_000, max(200, quantum * target / dt)))
            if res.idle:
                if self._wakeup.is_set():
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
            elif isinstance(e, ev.EnvDestroyed):
                self.log.info("env destroyed", envid=e.envid, reason=e.reason)
                if self.pager is not None:
                    self.pager.env_gone(e.envid)
            elif isinstance(e, ev.EnvFaulted):
                self.log.warning("env faulted", envid=e.envid, trapno=e.trapno,
                                 err=e.err, va=f"{e.va:08x}", eip=f"{e.eip:08x}")
            elif isinstance(e, ev.EnvBlocked):
                self.log.debug("env blocked on remote page", envid=e.envid,
                               owner=e.owner, va=f"{e.va:08x}")
                if self.pager is not None:
                    self.pager.on_blocked(e)

    # -- programs -------------------------------------------------------------------
    def find_program(self, name: str) -> bytes | None:
        """A program by name: the node's disk first, then the bundled ones."""
        data = self.disk.read_program(name) if self._disk_name_ok(name) else None
        if data is None and programs.exists(name):
            data = programs.load(name)
        return data

    @staticmethod
    def _disk_name_ok(name: str) -> bool:
        from .disk import NAME_RE
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
        listeners = {}
        try:
            for kind in PORT_KINDS:
                port = self.cfg.port_of(kind) if self.cfg.port else 0
                ls = await trio.open_tcp_listeners(port, host=self.cfg.host)
                listeners[kind] = ls
                self.ports[kind] = ls[0].socket.getsockname()[1]
        except BaseException:
            for ls in listeners.values():
                for l in ls:
                    await l.aclose()
            raise
        from .migrate import Migrator
        from .pager import Pager
        self.migrator = Migrator(self)
        self.pager = Pager(self)
        for b in self.cfg.boot:
            e = self.spawn(b.program, list(b.args), envid=b.envid)
            self.log.info("booted", envid=e.env_id, program=b.program)
        self.log.info("node listening", host=self.cfg.host, ports=self.ports)
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            nursery.start_soon(self._kernel_loop)
            for kind, ls in listeners.items():
                nursery.start_soon(self._serve_port, kind, ls)
            nursery.start_soon(self.pager.run)
            self.serving.set()
            task_status.started(self)

    async def _serve_port(self, kind: str, listeners) -> None:
        async def handler(stream):
            await self._connection(kind, stream)
        await trio.serve_listeners(handler, listeners)

    async def _connection(self, kind: str, stream) -> None:
        max_frame = MAX_CONTROL_FRAME * 16 if kind == "control" else MAX_DATA_FRAME
        fs = FramedStream(stream, max_frame)
        peer = _peer_of(stream)
        if self.connections >= MAX_CONNECTIONS:
            self.log.warning("connection refused", port=kind, peer=peer, reason="too many")
            await fs.aclose()
            return
        self.connections += 1
        try:
            try:
                await server_handshake(fs, self.secret, kind, self.name, jmig.__version__)
            except AuthError as exc:
                self.refused += 1
                self.log.warning("connection refused", port=kind, peer=peer, reason=exc.code,
                                 detail=exc.message)
                return
            except (ProtocolError, ConnectionClosed, trio.TooSlowError) as exc:
                self.refused += 1
                self.log.warning("connection refused", port=kind, peer=peer,
                                 reason="protocol", detail=str(exc) or type(exc).__name__)
                return
            self.log.info("connection accepted", port=kind, peer=peer, client=fs.peer)
            try:
                await self._session(kind, fs)
            except (ProtocolError, ConnectionClosed) as exc:
                self.log.info("connection closed", port=kind, peer=peer,
                              detail=str(exc) or type(exc).__name__)
            except trio.TooSlowError:
                self.log.warning("connection timed out", port=kind, peer=peer)
            except Exception:           # a bug: log it, keep the node alive
                self.log.exception("connection handler failed", port=kind, peer=peer)
        finally:
            self.connections -= 1
            await fs.aclose()

    async def _session(self, kind: str, fs: FramedStream) -> None:
        if kind == "control":
            from .control import ControlSession
            await ControlSession(self, fs).run()
            return
        with self.io():
            if kind == "normal":
                await self.migrator.receive_port(fs)
            elif kind == "pgfault":
                await self.pager.receive_pgfault(fs)
            elif kind == "pager":
                await self.pager.serve_pages(fs)

    def advertised_host(self, fs: FramedStream) -> str:
        """Where other nodes reach this one: the bound address, or, when
        bound to every address, the one this connection leaves from."""
        h = self.cfg.host
        if h in ("", "0.0.0.0", "::"):
            h = fs.stream.socket.getsockname()[0]
        return h

    @contextmanager
    def io(self):
        """Mark a data transfer under way: the kernel task then runs in
        shorter quanta so that the transfer's tasks get the CPU often."""
        self.io_active += 1
        try:
            yield
        finally:
            self.io_active -= 1

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
    def info(self) -> dict:
        mem = self.kernel.memory_stats()
        envs = self.kernel.live_envs()
        return {"name": self.name, "host": self.cfg.host, "ports": dict(self.ports),
                "version": jmig.__version__, "uptime": self.uptime(), "cpus": self.cfg.cpus,
                "slice": self.cfg.slice, "memory": {
                    "total": mem["total_pages"] * 4096, "used": mem["used_pages"] * 4096,
                    "free": mem["free_pages"] * 4096},
                "envs": len(envs), "instructions": self.kernel.instructions,
                "connections": self.connections, "refused": self.refused,
                "data_dir": str(self.cfg.data_dir)}


def _peer_of(stream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
        return f"{host}:{port}"
    except (AttributeError, OSError):
        return "?"
