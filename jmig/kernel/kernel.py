"""The simulated JOS kernel: envs, scheduler, traps, and the node's operations.

Pure and synchronous: no I/O, no trio, no logging.  The node drives it with
`run(budget)` and the operations below; everything the kernel has to say
comes back as events (events.py) in `self.events`, which the caller drains
with `take_events()`.

Scheduling follows JOS's sched_yield: each virtual CPU in turn picks the
next RUNNABLE env after the one it ran last, round-robin over envs[], and
runs it for a slice of instructions.  An env stays RUNNING between its
slices until its CPU switches to another env, as on JOS with several CPUs.
"""
from __future__ import annotations

import functools
import os
import time
from bisect import bisect_right, insort
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

import attrs

from . import events as ev
from . import syscall
from .elf import ElfError, parse_elf
from .env import Blocked as _Blocked
from .env import (
    ENV_FREE, ENV_NOT_RUNNABLE, ENV_RUNNABLE, ENV_RUNNING, ENVS_KVA, ENV_SIZE, ENVX,
    ENVGENSHIFT, NENV, STATUS_NAMES, Env, EnvSlots,
)
from .memlayout import (
    E_BAD_ENV, E_INVAL, E_IPC_NOT_RECV, E_NO_MEM, PTE_SYSCALL,
    FEC_PR, FEC_U, PGSIZE, PTE_P, PTE_REMOTE, PTE_U, PTE_W, ULIM, UPAGES, USTACKTOP, UTOP,
    UVPT, ROUNDDOWN, ROUNDUP,
)
from .pmap import AddressSpace, KernelPanic, PageFault, PhysMem
from .snapshot import EnvHeader, PageInfo, SnapshotMixin  # noqa: F401 (re-exported)
from .trap import TrapMixin
from .x86 import cpu as core
from .x86 import translate
from .x86.cpu import Cpu

DEFAULT_MEMORY = 64 << 20
ENGINES = {"blocks": core.run_blocks, "interp": core.run}
DEFAULT_SLICE = 10_000

_COMPILER: ThreadPoolExecutor | None = None


def _compiler() -> ThreadPoolExecutor:
    """The process's one thread for compiling regions in the background."""
    global _COMPILER
    if _COMPILER is None:
        _COMPILER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jmig-compile")
    return _COMPILER


@attrs.frozen
class RunResult:
    executed: int                  # instructions run
    idle: bool                     # nothing was runnable
    next_wake: float | None        # earliest sleep deadline (kernel ms), if any


WAITING_FOR = "waiting for the node of"   # an env held while another node answers


class Kernel(TrapMixin, SnapshotMixin):
    def __init__(self, memory: int = DEFAULT_MEMORY, ncpus: int = 1,
                 slice: int = DEFAULT_SLICE, clock: Callable[[], float] | None = None,
                 engine: str | None = None, prefault: bool = False,
                 background_compile: bool = False, slots: range | None = None):
        """engine: "blocks" (the block translator, default) or "interp" (the
        reference interpreter); $JMIG_ENGINE sets the default.  prefault:
        commit all physical memory now (a node: restoring a page then pays
        no first-touch zero-fill), rather than as frames are first used.
        background_compile: the block translator compiles regions in a
        worker thread (one per process) and interprets meanwhile, so that
        run() never holds its caller for a large region's compile (a node:
        its event loop); the default compiles in run(), deterministically
        (the tests that compare engines step by step)."""
        if memory < 16 * PGSIZE:
            raise ValueError(f"memory must be at least {16 * PGSIZE} bytes")
        if not 1 <= ncpus <= 64:
            raise ValueError("ncpus must be between 1 and 64")
        if slice < 1:
            raise ValueError("slice must be at least 1 instruction")
        engine = engine or os.environ.get("JMIG_ENGINE", "blocks")
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}")
        self.engine = engine
        self._core_run = ENGINES[engine]
        self.phys = PhysMem(memory // PGSIZE, prefault=prefault)
        if background_compile:
            self.phys.compiler = _compiler()
        self.ncpus = ncpus
        self.slice = slice
        self.clock = clock or (lambda: time.monotonic() * 1000.0)
        self.boot_ms = self.clock()
        self.envs = EnvSlots()
        # The slots this kernel gives new envs (a node's share of a cluster's
        # envs[]: docs/kernel.md); an env arriving from another node takes
        # its own slot, whichever it is, if that is free here.
        self.own_slots = range(NENV) if slots is None else slots
        if not (0 <= self.own_slots.start < self.own_slots.stop <= NENV):
            raise ValueError(f"slots must lie within 0..{NENV}")
        self.free_envs = list(reversed(self.own_slots))    # pop() gives the head
        self.live: list[int] = []                          # allocated slots, sorted
        self.curenv: list[Env | None] = [None] * ncpus
        self.events: list = []
        self.waiters: dict[tuple[int, int], list[Env]] = {}   # (owner id, vpn) -> envs
        self.instructions = 0
        self._syscall = syscall.dispatch
        # Cross-node IPC (the node sets these; a lone kernel keeps JOS's -E_BAD_ENV).
        self.remote_ipc = False           # a send to an env not here asks the node
        self.elsewhere: set[int] = set()  # env ids whose env lives on another node now

    def compiles_in_flight(self) -> int:
        """Regions being compiled in the background (background_compile)."""
        return translate.compiles_in_flight() if self.phys.compiler is not None else 0

    # -- events --------------------------------------------------------------------
    def take_events(self) -> list:
        out = self.events
        self.events = []
        return out

    def cprintf(self, text: str) -> None:
        self.events.append(ev.Console(text, 0))

    def now(self) -> float:
        return self.clock()

    # -- envs -----------------------------------------------------------------------
    def live_envs(self) -> list[Env]:
        """The allocated envs, in slot order."""
        return [self.envs[i] for i in self.live]

    def wants_cpu(self, e: Env) -> bool:
        """Whether e would run if given a CPU now: runnable, not paused,
        held, waiting for a remote page or asleep (the load of a node)."""
        return (e.status in (ENV_RUNNABLE, ENV_RUNNING) and not e.paused and not e.frozen
                and e.blocked_on is None and (e.wake_at is None or e.wake_at <= self.now()))

    def envid2env(self, envid: int, cur: Env | None, checkperm: bool) -> Env | None:
        """JOS's envid2env: 0 means cur; with checkperm the target must be
        cur or its child.  None for a bad envid (the caller returns -E_BAD_ENV)."""
        if envid == 0:
            return cur
        e = self.envs[ENVX(envid)]
        if e.status == ENV_FREE or e.env_id != envid:
            return None
        if checkperm and cur is not None and e is not cur and e.parent_id != cur.env_id:
            return None
        return e

    def env_alloc(self, parent_id: int, envid: int | None = None) -> Env:
        """Allocate an env slot and its page directory (JOS's env_alloc).

        With `envid`, take exactly that id if its slot is free (restores).
        Raises KernelError NO_FREE_ENV / NO_MEMORY; prints "new env"."""
        if envid is not None:
            idx = ENVX(envid)
            if envid <= 0 or envid >> ENVGENSHIFT == 0 or self.envs[idx].status != ENV_FREE:
                raise ev.KernelError(ev.NO_FREE_ENV, f"env id {envid:08x} is not available")
            e = self.envs[idx]
            if e.away:
                e.away = False                # it is back
                self.elsewhere.discard(envid if e.env_id == envid else e.env_id)
            elif idx in self.own_slots:
                self.free_envs.remove(idx)
        else:
            if not self.free_envs:
                raise ev.KernelError(ev.NO_FREE_ENV, f"all {len(self.own_slots)} env slots "
                                     "are in use")
            e = self.envs[self.free_envs[-1]]
            gen = (e.env_id + (1 << ENVGENSHIFT)) & ~(NENV - 1)
            if gen <= 0 or gen > 0x7FFFFFFF:
                gen = 1 << ENVGENSHIFT
            envid = gen | e.index
            self.free_envs.pop()
        try:
            aspace = AddressSpace(self.phys, self._window, self._window_word)
        except MemoryError:
            if e.index in self.own_slots:
                self.free_envs.append(e.index)
            raise ev.KernelError(ev.NO_MEMORY, "out of memory for a page directory") from None
        e.aspace = aspace
        insort(self.live, e.index)
        e.env_id = envid
        e.parent_id = parent_id
        e.status = ENV_RUNNABLE
        e.runs = 0
        e.executed = 0
        e.cpunum = 0
        e.pgfault_upcall = 0
        e.ipc_recving = e.ipc_dstva = e.ipc_value = e.ipc_from = e.ipc_perm = 0
        e.cpu = Cpu()
        e.cpu.r[4] = USTACKTOP
        e.trapno = e.err = 0
        e.name = ""
        e.paused = False
        e.saved_status = ENV_RUNNABLE
        e.wake_at = None
        e.blocked_on = None
        e.frozen = ""
        self.cprintf(f"[{parent_id:08x}] new env {envid:08x}\n")
        return e

    def env_free(self, e: Env, by: int) -> None:
        """Free an env's memory and slot (JOS's env_free), printing "free env"."""
        self.cprintf(f"[{by:08x}] free env {e.env_id:08x}\n")
        e.aspace.free_all()
        e.aspace = None
        e.status = ENV_FREE
        e.paused = False
        e.frozen = ""
        e.wake_at = None
        self._unblock_waiter(e)
        for cpu, cur in enumerate(self.curenv):
            if cur is e:
                self.curenv[cpu] = None
        # Envs waiting for this env's remote pages can never get them now.
        for key in [k for k in self.waiters if k[0] == e.env_id]:
            for w in self.waiters.pop(key):
                if w is not e and w.status != ENV_FREE:
                    w.blocked_on = None
        if e.env_id in self.elsewhere:
            # It lives on another node now: the slot shows it (window_status)
            # and is not given out until env_gone, or until it comes back.
            e.away = True
        elif e.index in self.own_slots:
            self.free_envs.append(e.index)
        self.live.remove(e.index)

    def env_destroy(self, e: Env, by: int, reason: str) -> None:
        self.env_free(e, by)
        self.events.append(ev.EnvDestroyed(e.env_id, reason))

    # -- status, respecting an operator's pause --------------------------------------
    def set_status(self, e: Env, status: int) -> None:
        if e.paused:
            e.saved_status = status
        else:
            e.status = status

    def jos_status(self, e: Env) -> int:
        return e.saved_status if e.paused else e.status

    # -- program loading ---------------------------------------------------------------
    def env_create(self, elf: bytes, argv: list[str] | None = None, name: str = "",
                   parent_id: int = 0, paused: bool = False, envid: int | None = None) -> Env:
        """Create an env running an ELF (JOS's env_create + load_icode).

        argv None: esp = USTACKTOP and no arguments (as JOS's kernel-created
        envs); otherwise argc/argv are laid out on the stack.  With envid,
        the env gets exactly that id (its slot must be free).  Raises
        KernelError BAD_ELF (nothing created), NO_FREE_ENV or NO_MEMORY."""
        try:
            image = parse_elf(elf)
        except ElfError as exc:
            raise ev.KernelError(ev.BAD_ELF, str(exc)) from None
        strings = argv or []
        stack_bytes = sum(len(a.encode()) + 1 for a in strings) + 4 * (len(strings) + 3)
        if stack_bytes > PGSIZE:
            raise ev.KernelError(ev.BAD_STATE, f"arguments need {stack_bytes} bytes; "
                                 f"the initial stack page holds {PGSIZE}")
        need = image.pages() + 1 + 4
        if need > self.phys.nfree:
            raise ev.KernelError(ev.NO_MEMORY, f"program needs about {need} pages; "
                                 f"{self.phys.nfree} are free")
        e = self.env_alloc(parent_id, envid)
        try:
            self._load_icode(e, elf, image)
            self._init_stack(e, argv)
        except ev.KernelError:
            self.env_free(e, 0)
            raise
        e.cpu.eip = image.entry
        e.name = name
        if paused:
            self.pause(e.env_id)
        self.events.append(ev.EnvCreated(e.env_id, parent_id, name))
        return e

    def _region_alloc(self, e: Env, va: int, length: int) -> None:
        start = ROUNDDOWN(va, PGSIZE)
        end = ROUNDUP(va + length, PGSIZE)
        for a in range(start, end, PGSIZE):
            if e.aspace.page_lookup(a) is not None:
                continue
            pfn = self.phys.page_alloc()
            if pfn is None or not e.aspace.page_insert(pfn, a, PTE_U | PTE_W):
                if pfn is not None:
                    self.phys.page_free(pfn)
                raise ev.KernelError(ev.NO_MEMORY, "out of memory loading the program")

    def _load_icode(self, e: Env, elf: bytes, image) -> None:
        for seg in image.segments:
            self._region_alloc(e, seg.vaddr, seg.memsz)
            if seg.filesz:
                self._kwrite(e, seg.vaddr, elf[seg.offset:seg.offset + seg.filesz])
        self._region_alloc(e, USTACKTOP - PGSIZE, PGSIZE)

    def _init_stack(self, e: Env, argv: list[str] | None) -> None:
        """[esp] = argc, [esp+4] = argv, argv[] and the strings above them."""
        if argv is None:
            e.cpu.r[4] = USTACKTOP
            return
        top = USTACKTOP
        ptrs = []
        for a in argv:
            b = a.encode() + b"\0"
            top -= len(b)
            self._kwrite(e, top, b)
            ptrs.append(top)
        top &= ~3
        arr = top - 4 * (len(ptrs) + 1)
        self._kwrite(e, arr, b"".join(p.to_bytes(4, "little") for p in ptrs) + bytes(4))
        sp = arr - 8
        self._kwrite(e, sp, len(argv).to_bytes(4, "little") + arr.to_bytes(4, "little"))
        e.cpu.r[4] = sp

    def _kwrite(self, e: Env, va: int, data: bytes) -> None:
        """The kernel writing into an env's memory with its own privilege
        (pages already mapped by the kernel; no user permission check)."""
        pos = 0
        while pos < len(data):
            pte = e.aspace.page_lookup(va)
            off = va & 0xFFF
            take = min(len(data) - pos, PGSIZE - off)
            base = pte & 0xFFFFF000
            self.phys.mem[base | off:(base | off) + take] = data[pos:pos + take]
            self.phys.drop_code(base >> 12)
            va += take
            pos += take

    # -- the read-only windows (UENVS, UPAGES) -------------------------------------------
    def _window(self, va: int, n: int) -> bytes:
        if va < UPAGES:
            first = (va - UTOP) // ENV_SIZE
            last = (va + n - 1 - UTOP) // ENV_SIZE
            if last >= NENV:
                raise PageFault(FEC_PR | FEC_U, UTOP + NENV * ENV_SIZE)
            blob = b"".join(self.envs[i].pack(self._env_link(i)) for i in range(first, last + 1))
            off = va - UTOP - first * ENV_SIZE
            return blob[off:off + n]
        if va < UVPT:
            first = (va - UPAGES) // 8
            last = (va + n - 1 - UPAGES) // 8
            ref = self.phys.ref
            blob = b"".join(
                (0).to_bytes(4, "little") + (ref[i] & 0xFFFF).to_bytes(2, "little") + bytes(2)
                if i < len(ref) else bytes(8)
                for i in range(first, last + 1))
            off = va - UPAGES - first * 8
            return blob[off:off + n]
        raise AssertionError("UVPT reads are the address space's")

    _ENV_WORDS = {72: "env_id", 76: "parent_id", 80: "type", 84: "window_status", 88: "runs",
                  92: "cpunum", 100: "pgfault_upcall", 108: "ipc_dstva", 112: "ipc_value",
                  116: "ipc_from", 120: "ipc_perm"}

    def _window_word(self, va: int) -> int | None:
        """One aligned 32-bit field of envs[] at UENVS, without packing the
        struct (None: not a plain field; the caller reads the bytes)."""
        i, off = divmod(va - UTOP, ENV_SIZE)
        name = self._ENV_WORDS.get(off)
        if name is None or i >= NENV:
            return None
        return getattr(self.envs[i], name) & 0xFFFFFFFF

    def _env_link(self, i: int) -> int:
        e = self.envs[i]
        if e.status != ENV_FREE:
            return 0
        # A free env links to the next one on the free list (kernel addresses).
        try:
            pos = self.free_envs.index(i)
        except ValueError:
            return 0
        return ENVS_KVA + self.free_envs[pos - 1] * ENV_SIZE if pos > 0 else 0

    # -- user memory checks (JOS's user_mem_check) -----------------------------------------
    def user_mem_check(self, e: Env, va: int, length: int, perm: int) -> int | None:
        """None if e may access [va, va+len) with perm|PTE_P, else the first
        bad address.  Remote pages count as present."""
        perm |= PTE_P
        start = ROUNDDOWN(va, PGSIZE)
        end = ROUNDUP(va + length, PGSIZE)
        a = start
        while a < end:
            if a >= ULIM:
                return max(a, va)
            if a >= UTOP:
                # UENVS, UPAGES and UVPT: mapped user-readable, never writable.
                if perm & PTE_W:
                    return max(a, va)
                a += PGSIZE
                continue
            pte = e.aspace.pte.get(a >> 12)
            if pte is None or pte & perm != perm:
                return max(a, va)
            a += PGSIZE
        return None

    def user_mem_assert(self, e: Env, va: int, length: int, perm: int) -> bool:
        bad = self.user_mem_check(e, va, length, perm | PTE_U)
        if bad is None:
            return True
        self.cprintf(f"[{e.env_id:08x}] user_mem_check assertion failure for va {bad:08x}\n")
        self.env_destroy(e, e.env_id, "bad pointer")
        return False

    def need_local(self, owner: Env, va: int, length: int) -> None:
        """Raise _Blocked if any page of [va, va+len) in owner is remote."""
        if length <= 0:
            return
        a = ROUNDDOWN(va, PGSIZE)
        while a < va + length:
            pte = owner.aspace.pte.get(a >> 12)
            if pte is not None and pte & PTE_REMOTE:
                raise _Blocked(owner, a)
            a += PGSIZE

    # -- the scheduler ---------------------------------------------------------------------
    def _runnable(self, e: Env, now: float) -> bool:
        if e.status != ENV_RUNNABLE or e.blocked_on is not None or e.frozen:
            return False
        if e.wake_at is not None:
            if e.wake_at > now:
                return False
            e.wake_at = None
        return True

    def _pick(self, cpu: int, now: float) -> Env | None:
        """JOS's sched_yield for one CPU: the first RUNNABLE env after the one
        it ran last, circularly (over the live slots only), else that one
        again if it is still running."""
        cur = self.curenv[cpu]
        live = self.live
        k = bisect_right(live, cur.index) if cur is not None else 0
        envs = self.envs
        for idx in live[k:] + live[:k]:
            e = envs[idx]
            if e.status == ENV_RUNNABLE and self._runnable(e, now):
                return e
        if cur is not None and cur.status == ENV_RUNNING and not cur.frozen \
                and cur.blocked_on is None and cur.wake_at is None:
            return cur
        return None

    def run(self, budget: int) -> RunResult:
        """Run envs for up to `budget` instructions in slices.  Returns how
        many ran, whether nothing was runnable, and the next sleep deadline."""
        executed = 0
        while executed < budget:
            now = self.now()
            ran = False
            for cpu in range(self.ncpus):
                e = self._pick(cpu, now)
                if e is None:
                    continue
                ran = True
                executed += self._run_env(e, cpu, min(self.slice, budget - executed))
                if executed >= budget:
                    break
            if not ran:
                self.instructions += executed
                return RunResult(executed, True, self.next_wake())
        self.instructions += executed
        return RunResult(executed, False, self.next_wake())

    def next_wake(self) -> float | None:
        envs = self.envs
        wakes = [e.wake_at for i in self.live
                 if (e := envs[i]).wake_at is not None and e.status == ENV_RUNNABLE
                 and not e.frozen and e.blocked_on is None]
        return min(wakes) if wakes else None

    def _run_env(self, e: Env, cpu: int, budget: int) -> int:
        prev = self.curenv[cpu]
        if prev is not None and prev is not e and prev.status == ENV_RUNNING:
            prev.status = ENV_RUNNABLE
        self.curenv[cpu] = e
        e.status = ENV_RUNNING
        e.runs += 1
        e.cpunum = cpu
        done = 0
        failed: list[Exception] = []

        def syscall_here() -> bool:
            """e's system call: True if e keeps the CPU.  A kernel bug is
            kept in `failed` and reported below."""
            e.trapno, e.err = 48, 0
            try:
                return self._syscall(self, e)
            except Exception as exc:
                failed.append(exc)
                return False

        run = self._core_run
        if run is core.run_blocks:
            # The block translator runs e's system calls without returning.
            run = functools.partial(run, syscall=syscall_here)
        while done < budget:
            stop = run(e.cpu, e.aspace, budget - done)
            done += stop.count
            reason = stop.reason
            if reason == core.BUDGET:
                break
            try:
                if reason == core.SYSCALL or reason == core.SYSCALL_DONE:
                    if reason == core.SYSCALL and syscall_here():
                        continue
                    if failed:
                        raise failed[0]
                    break
                if reason == core.REMOTE:
                    self._block(e, e, stop.va)
                    break
                if reason == core.TRAP:
                    if not self._trap(e, stop):
                        break
                    continue
                detail = stop.detail
            except Exception as exc:          # a kernel bug: never take the node down
                detail = f"{type(exc).__name__}: {exc}"
            self.cprintf(f"[{e.env_id:08x}] jmig internal error at eip {e.cpu.eip:08x}: "
                         f"{detail}\n")
            if e.status != ENV_FREE:
                self.env_destroy(e, e.env_id, "internal error")
            break
        if e.status == ENV_RUNNING and (e.wake_at is not None or e.blocked_on is not None):
            e.status = ENV_RUNNABLE
        e.executed += done
        return done

    # -- IPC with envs on other nodes -----------------------------------------------------
    def wait_for_network(self, e: Env, event) -> None:
        """e's syscall is answered by another node (event says what to ask):
        e waits, held, until network_result."""
        e.frozen = f"{WAITING_FOR} {event.dst:08x}"
        if e.status == ENV_RUNNING:
            e.status = ENV_RUNNABLE
        self.events.append(event)

    def network_result(self, envid: int, result: int) -> bool:
        """The answer to a waiting env's syscall on an env of another node
        (IpcSend, EnvCall): its eax, and it runs again.  False if it is
        gone (or not waiting)."""
        e = self.envs[ENVX(envid)]
        if e.status == ENV_FREE or e.env_id != envid or not e.frozen.startswith(WAITING_FOR):
            return False
        e.frozen = ""
        e.cpu.r[0] = result & 0xFFFFFFFF
        return True

    def ipc_deliver(self, src: int, dst: int, value: int, page, perm: int) -> int:
        """Another node's sys_ipc_try_send from env src to env dst here:
        JOS's result (0, -E_IPC_NOT_RECV, -E_BAD_ENV, -E_NO_MEM).  A page is
        copied into a fresh frame mapped at the receiver's dstva (JOS shares
        the sender's frame; across nodes it cannot)."""
        t = self.envs[ENVX(dst)]
        if t.status == ENV_FREE or t.env_id != dst or dst in self.elsewhere:
            return -E_BAD_ENV
        if t.frozen or not t.ipc_recving:
            return -E_IPC_NOT_RECV
        sent_perm = 0
        if page is not None and t.ipc_dstva < UTOP:
            if len(page) != PGSIZE or perm & ~PTE_SYSCALL or perm & (PTE_U | PTE_P) != PTE_U | PTE_P:
                return -E_INVAL
            pfn = self.phys.page_alloc(zero=False)
            if pfn is None:
                return -E_NO_MEM
            self.phys.mem[pfn << 12:(pfn + 1) << 12] = page
            if not t.aspace.page_insert(pfn, t.ipc_dstva, perm):
                self.phys.page_free(pfn)
                return -E_NO_MEM
            sent_perm = perm
        t.ipc_recving = 0
        t.ipc_from = src
        t.ipc_value = value & 0xFFFFFFFF
        t.ipc_perm = sent_perm
        t.cpu.r[0] = 0
        self.set_status(t, ENV_RUNNABLE)
        return 0

    def forking(self, envid: int) -> bool:
        """Whether envid is in the middle of a fork: it has a child made by
        sys_exofork that has not run yet and is not runnable (its pages are
        still being mapped; the parent must finish on this node)."""
        envs = self.envs
        return any((c := envs[i]).parent_id == envid and c.runs == 0
                   and c.status == ENV_NOT_RUNNABLE and not c.paused and not c.frozen
                   for i in self.live)

    def env_gone(self, envid: int) -> None:
        """envid, which left this node, has ended elsewhere: its slot shows
        it free and is given out again (last)."""
        self.elsewhere.discard(envid)
        e = self.envs[ENVX(envid)]
        if e.away and e.env_id == envid:
            e.away = False
            if e.index in self.own_slots:
                self.free_envs.insert(0, e.index)

    def env_call(self, src: int, dst: int, op: str, arg: int = 0) -> int:
        """Another node's env src calls sys_env_destroy ("destroy") or
        sys_env_set_status ("set_status", arg) on env dst here; dst must be
        src's child, as JOS's envid2env checks.  JOS's result; -E_BAD_ENV
        too for an env a migration holds (it is moving: try again)."""
        t = self.envs[ENVX(dst)]
        if t.status == ENV_FREE or t.env_id != dst or dst in self.elsewhere \
                or t.parent_id != src or t.frozen:
            return -E_BAD_ENV
        if op == "destroy":
            self.cprintf(f"[{src:08x}] destroying {dst:08x}\n")
            self.env_destroy(t, src, f"destroyed by {src:08x}")
            return 0
        if op == "set_status" and arg in (ENV_RUNNABLE, ENV_NOT_RUNNABLE):
            self.set_status(t, arg)
            return 0
        return -E_INVAL

    # -- remote pages ---------------------------------------------------------------------
    def _block(self, e: Env, owner: Env, va: int) -> None:
        vpn = va >> 12
        e.blocked_on = (owner.env_id, vpn << 12)
        self.waiters.setdefault((owner.env_id, vpn), []).append(e)
        if e.status == ENV_RUNNING:
            e.status = ENV_RUNNABLE
        self.events.append(ev.EnvBlocked(e.env_id, owner.env_id, vpn << 12))

    def _unblock_waiter(self, e: Env) -> None:
        if e.blocked_on is not None:
            owner, va = e.blocked_on
            lst = self.waiters.get((owner, va >> 12))
            if lst and e in lst:
                lst.remove(e)
                if not lst:
                    del self.waiters[(owner, va >> 12)]
            e.blocked_on = None

    def install_page(self, envid: int, va: int, data) -> bool:
        """Put the contents of a remote page in place and wake its waiters.

        Returns False (and changes nothing) if the env is gone or the page
        is no longer remote (installed already, or unmapped meanwhile).
        Raises KernelError NO_MEMORY if no frame is free."""
        e = self._env(envid)
        if len(data) != PGSIZE:
            raise ev.KernelError(ev.BAD_SNAPSHOT, f"page {va:08x}: {len(data)} bytes, not a page")
        vpn = va >> 12
        pte = e.aspace.pte.get(vpn)
        if pte is None or not pte & PTE_REMOTE:
            self._wake(envid, vpn)
            return False
        pfn = self.phys.page_alloc(zero=False)
        if pfn is None:
            raise ev.KernelError(ev.NO_MEMORY, "no free frame for an incoming page")
        self.phys.mem[pfn << 12:(pfn + 1) << 12] = data
        perm = pte & 0xFFF & ~PTE_P
        e.aspace.page_remove(va)           # drops the remote marker
        e.aspace.page_insert(pfn, va, perm)  # page table exists already: cannot fail
        self._wake(envid, vpn)
        return True

    def _wake(self, owner: int, vpn: int) -> None:
        for w in self.waiters.pop((owner, vpn), []):
            w.blocked_on = None

    def remote_pages(self, envid: int) -> list[int]:
        """The vas of the env's remote pages, in order (O(pages))."""
        e = self._env(envid)
        if not e.aspace.nremote:
            return []
        return sorted((vpn << 12) for vpn, pte in e.aspace.pte.items() if pte & PTE_REMOTE)

    def remote_count(self, envid: int) -> int:
        """How many of the env's pages are remote (O(1))."""
        return self._env(envid).aspace.nremote

    # -- operations for the node -----------------------------------------------------------
    def live_env(self, envid: int) -> Env | None:
        """The env with this id, if it exists here (in any status but free)."""
        e = self.envs[ENVX(envid)]
        return e if e.status != ENV_FREE and e.env_id == envid else None

    def _env(self, envid: int) -> Env:
        if not isinstance(envid, int) or envid <= 0:
            raise ev.KernelError(ev.NO_SUCH_ENV, f"no env {envid}")
        e = self.live_env(envid)
        if e is None:
            raise ev.KernelError(ev.NO_SUCH_ENV, f"no env {envid} ({envid:08x})")
        return e

    def get_env(self, envid: int) -> Env:
        return self._env(envid)

    def pause(self, envid: int) -> Env:
        """Stop an env (status NOT_RUNNABLE, shown as Sleeping) until resume."""
        e = self._env(envid)
        if e.paused:
            raise ev.KernelError(ev.BAD_STATE, f"env {envid} is already paused")
        e.saved_status = ENV_RUNNABLE if e.status == ENV_RUNNING else e.status
        e.status = ENV_NOT_RUNNABLE
        e.paused = True
        return e

    def resume(self, envid: int) -> Env:
        e = self._env(envid)
        if not e.paused:
            raise ev.KernelError(ev.BAD_STATE, f"env {envid} is not paused")
        if e.frozen:
            raise ev.KernelError(ev.BAD_STATE, f"env {envid} is {e.frozen}; it cannot run here")
        e.paused = False
        e.status = e.saved_status
        return e

    def kill(self, envid: int) -> None:
        e = self._env(envid)
        self.cprintf(f"[00000000] destroying {e.env_id:08x}\n")
        self.env_destroy(e, 0, "killed")

    def memory_stats(self) -> dict:
        total = self.phys.nframes
        free = self.phys.nfree
        return {"total_pages": total, "free_pages": free, "used_pages": total - free,
                "page_size": PGSIZE}

    def env_info(self, e: Env) -> dict:
        """One env as the node's ps shows it."""
        state = []
        if e.paused:
            state.append("paused")
        if e.frozen:
            state.append(e.frozen)
        if e.blocked_on is not None:
            state.append("waiting for pages")
        if e.wake_at is not None:
            left = e.wake_at - self.now()
            if left > 0:
                state.append(f"sleeping {int(left)}ms")
        if e.ipc_recving and self.jos_status(e) == ENV_NOT_RUNNABLE:
            state.append("ipc_recv")
        npages = sum(1 for vpn, pte in e.aspace.pte.items() if pte & PTE_P)
        remote = e.aspace.nremote          # kept by the page table (remote_count)
        return {"envid": e.env_id, "parent": e.parent_id, "status": STATUS_NAMES[e.status],
                "name": e.name, "state": ", ".join(state), "runs": e.runs, "cpu": e.cpunum,
                "pages": npages, "remote_pages": remote, "eip": e.cpu.eip}

    def ps(self) -> list[dict]:
        return [self.env_info(e) for e in self.live_envs()]

    def vmmap(self, envid: int) -> list[dict]:
        """Mapped ranges: consecutive pages with equal perm and state merged."""
        out: list[dict] = []
        for p in self.env_pages(envid):
            state = "remote" if p.remote else ("dirty" if p.dirty else "present")
            last = out[-1] if out else None
            if last and last["end"] == p.va and last["perm"] == p.perm and last["state"] == state:
                last["end"] = p.va + PGSIZE
                last["pages"] += 1
            else:
                out.append({"start": p.va, "end": p.va + PGSIZE, "perm": p.perm,
                            "state": state, "pages": 1})
        return out

    def check_invariants(self) -> None:
        """Panic if frame refcounts disagree with the mappings (for tests)."""
        counts = [0] * self.phys.nframes
        counts[0] = 1
        for e in self.envs.values():
            if e.status == ENV_FREE:
                continue
            a = e.aspace
            counts[a.pgdir_pfn] += 1
            for pfn in a.ptpages.values():
                counts[pfn] += 1
            for pte in a.pte.values():
                if not pte & PTE_REMOTE:
                    counts[pte >> 12 & 0xFFFFF] += 1
        if counts != self.phys.ref:
            bad = [i for i in range(len(counts)) if counts[i] != self.phys.ref[i]]
            raise KernelPanic(f"refcounts disagree with mappings at frames {bad[:10]}")
        free = set(self.phys.free)
        if len(free) != len(self.phys.free):
            raise KernelPanic("a frame is on the free list twice")
        for i in range(1, self.phys.nframes):
            if (i in free) != (counts[i] == 0):
                raise KernelPanic(f"frame {i}: ref {counts[i]} but free={i in free}")

    def iter_envs(self) -> Iterator[Env]:
        return iter(self.live_envs())
