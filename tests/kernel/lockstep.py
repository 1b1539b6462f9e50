"""A lockstep engine for the kernel: every instruction of every env is run on
jmig's reference interpreter and on a Unicorn shadow of that env, and the two
are compared after each one (tests/x86/unicorn_ref.py's Comparer: eip, the
eight registers, the flags the instruction defines, the bytes of the pages
written, faults), with the same system-call answers on both sides.

    ls = Lockstep()
    out = run_program_lockstep(ls, elf, argv, name, max_instructions=...)

`Lockstep` has the signature of the kernel's core run,
`ls(cpu, aspace, budget) -> Stop`; `run_program_lockstep` runs
jmig.kernel.runner.run_program on a Kernel whose `_core_run` is `ls`.

How the shadow follows the env
  - One Unicorn instance per AddressSpace, created at the env's first slice
    and dropped when the address space is freed.
  - At every entry (a new slice, or the return from a system call or a
    handled page fault) the shadow is made equal to the env: its pages are
    mapped, unmapped and re-protected to match the page table (a PTE_W page
    is UC_PROT_ALL, a read-only one READ|EXEC: 32-bit x86 without NX executes
    every readable page; a page without PTE_U is PROT_NONE), the contents of
    every page that changed since the shadow last matched it are copied in
    (the kernel's syscalls, the page-fault upcall's UTrapframe, COW copies,
    IPC page transfers, other envs writing shared frames), and the eight
    registers, eflags and eip are set from the env's Cpu.  So a system call
    is answered once, by the kernel, and its answer (eax, memory) reaches
    the shadow at the next entry.
  - Each instruction: Comparer.step runs ours (`run(cpu, aspace, 1)`, a rep
    instruction to completion) and Unicorn (count=1) and compares.  Memory:
    the pages either side wrote (ours: the MMU's store entry points record
    the page and its contents before the first store of the step; Unicorn: a
    UC_HOOK_MEM_WRITE hook) are compared byte for byte; and at every exit
    every mapped page is compared, as a net for anything else.
  - The JOS windows above UTOP (UENVS, UPAGES, UVPT): a read there that
    Unicorn cannot satisfy maps the page(s), read-only and not executable,
    with the bytes `aspace.read(va, PGSIZE)` returns -- the kernel's own
    answer -- computed from the page table as it was before the instruction
    (plus the A bit its fetch set: what the CPU's read sees); a window page
    our MMU faults on stays unmapped, so both fault.  UVPT pages are dropped
    from the shadow when the page table changes (A/D bits included); UENVS
    and UPAGES pages hold while the env runs (only the kernel changes
    them), except the env's own struct Env, whose trap frame is its live
    registers: those bytes are rewritten before every instruction.  All
    window pages are unmapped at exit.
  - A fault or trap must be the same on both sides (trap number, fault va,
    read/write, present/protection); the engine then returns our Stop and
    the kernel delivers it (the upcall, or destroying the env).

What is not compared (`Lockstep.uncompared` lists each occurrence): what
Unicorn cannot model as a JOS env sees it, as in the core's differential
tests -- segment register loads and stores (JOS's selectors; Unicorn runs
with its own GDT), `int n` other than 3 and 0x30 (#GP on JOS; Unicorn just
reports the interrupt), and instructions the core raises #UD/#GP for
("(bad)": privileged and I/O instructions, which Unicorn runs at CPL 0).
Such an instruction runs on ours alone and the shadow is then set from ours.

Counting: each `run(cpu, aspace, 1)` call counts as one instruction, exactly
as `run(cpu, aspace, budget)` counts, so a lockstep run schedules exactly as
a normal run with the "interp" engine does; the one exception is a rep
instruction that needs several calls when fewer are left in the slice
(`Lockstep.overshoots` counts them): it is completed in the slice.
"""
from __future__ import annotations

from collections.abc import Mapping

import unicorn as U
from unicorn import x86_const as X

from jmig.kernel import runner
from jmig.kernel.env import ENV_SIZE
from jmig.kernel.memlayout import PGSIZE, PTE_A, PTE_P, PTE_REMOTE, PTE_U, PTE_W, ULIM, UTOP, UVPT
from jmig.kernel.pmap import CpuFault
from jmig.kernel.x86.cpu import BUDGET, SYSCALL, Cpu, Stop, fetch_decode, run_blocks
from jmig.kernel.x86.insn import SREG

from ..x86.unicorn_ref import (
    M32, Comparer, Machine, Ours, Ref, _first_byte_diff, _hook_intr, _hook_mem,
)

UTOP_VPN = UTOP >> 12
_RW = U.UC_PROT_READ | U.UC_PROT_WRITE | U.UC_PROT_EXEC
_RO = U.UC_PROT_READ | U.UC_PROT_EXEC


def _uc_perm(pte: int) -> int:
    if not pte & PTE_U:
        return U.UC_PROT_NONE
    return _RW if pte & PTE_W else _RO


def _local(pte: int | None) -> bool:
    return pte is not None and bool(pte & PTE_P) and not pte & PTE_REMOTE


def comparable(insn) -> bool:
    """Whether Unicorn can run insn as a JOS env would (see the module doc)."""
    if insn.op == "(bad)":
        return False
    if insn.op == "int" and insn.ops and insn.ops[0].imm not in (3, 0x30):
        return False
    return not any(o.kind == SREG for o in insn.ops)


# -- ours: the env's own Cpu and AddressSpace -------------------------------------------------

class EnvOurs(Ours):
    """unicorn_ref.Ours over a kernel env's Cpu and AddressSpace (not copies).

    `pages()` is a lazy view: the contents of a page at the time of the call,
    which for the pages the next step writes means the copy the store
    recorder saved before its first store."""

    def __init__(self, aspace):
        self.mmu = aspace
        self.phys = aspace.phys
        self.cpu = None
        self.epoch = 0              # steps so far
        self.saved: dict[int, bytes] = {}   # page -> contents before this step's stores
        self.written: set[int] = set()
        self.calls = 0
        self.last = None
        self.last_state = self.pre_state = None

    def state(self):
        st = self.last_state = super().state()
        return st

    def present(self, va) -> bool:
        return isinstance(va, int) and va < UTOP and _local(self.mmu.pte.get(va >> 12))

    def pages(self):
        return _PageView(self)

    def step(self, rep: bool):
        # Comparer.step takes `pre = ours.state()` just before this.
        self.pre_state = self.last_state
        self.epoch += 1
        self.saved.clear()
        self.written.clear()
        out, self.calls = super().step(rep)
        return out, self.calls

    def note_write(self, va: int, n: int) -> None:
        """The MMU is about to store n bytes at va (the store may still fault)."""
        page = va & ~0xFFF
        end = va + max(n, 1)
        saved = self.saved
        while page < end:
            p = page & M32
            if p not in saved and self.present(p):
                saved[p] = self.page(p)
                self.written.add(p)
            page += PGSIZE


class _PageView(Mapping):
    """ours.pages() at one moment: the env's local pages below UTOP."""

    def __init__(self, ours: EnvOurs):
        self.o = ours
        self.epoch = ours.epoch

    def __getitem__(self, va):
        o = self.o
        if not o.present(va):
            raise KeyError(va)
        if o.epoch != self.epoch:
            if o.epoch != self.epoch + 1:
                raise RuntimeError("a page view used more than one step later")
            data = o.saved.get(va)
            if data is not None:
                return data
        return o.page(va)

    def __contains__(self, va) -> bool:
        return self.o.present(va)

    def _keys(self):
        return sorted(vpn << 12 for vpn, pte in self.o.mmu.pte.items()
                      if vpn < UTOP_VPN and _local(pte))

    def __iter__(self):
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())


_STORES = ("wr8", "wr16", "wr32", "write", "bulk_copy", "bulk_fill")


def _install_store_recorder(aspace, ours: EnvOurs) -> None:
    """Shadow the MMU's store entry points (every store of the core goes
    through one of them) with instance attributes that record the page."""
    cls = type(aspace)
    note = ours.note_write
    wr8, wr16, wr32, write = cls.wr8, cls.wr16, cls.wr32, cls.write
    bulk_copy, bulk_fill = cls.bulk_copy, cls.bulk_fill

    def r_wr8(va, v):
        note(va, 1)
        wr8(aspace, va, v)

    def r_wr16(va, v):
        note(va, 2)
        wr16(aspace, va, v)

    def r_wr32(va, v):
        note(va, 4)
        wr32(aspace, va, v)

    def r_write(va, data):
        note(va, len(data))
        write(aspace, va, data)

    def r_bulk_copy(dst, src, count, size):
        note(dst, 1)                # it stores within dst's page only
        return bulk_copy(aspace, dst, src, count, size)

    def r_bulk_fill(dst, value, count, size):
        note(dst, 1)
        return bulk_fill(aspace, dst, value, count, size)

    d = aspace.__dict__
    d.update(wr8=r_wr8, wr16=r_wr16, wr32=r_wr32, write=r_write, bulk_copy=r_bulk_copy,
             bulk_fill=r_bulk_fill)


def _remove_store_recorder(aspace) -> None:
    d = aspace.__dict__
    for name in _STORES:
        d.pop(name, None)


# -- Unicorn's side: the shadow of one address space ---------------------------------------------

class EnvRef(Ref):
    """unicorn_ref.Ref for a shadow that follows a kernel env (mapped and
    refreshed by Shadow), with the JOS windows mapped on demand."""

    def __init__(self, aspace, env, ours: EnvOurs):
        self.aspace = aspace
        self.env = env                      # the kernel's Env (None: not known)
        self.ours = ours
        # [lo, hi) of the env's struct Env at UENVS
        self.own = None if env is None else (UTOP + env.index * ENV_SIZE,
                                             UTOP + (env.index + 1) * ENV_SIZE)
        self.uc = uc = U.Uc(U.UC_ARCH_X86, U.UC_MODE_32)
        self.layout = ()
        self.pooled = False
        self._state = None
        self.events: list = []
        self.intr = None
        self.faulted = False
        self.mapped: dict[int, bool] = {}   # user page va -> writable
        self.perm: dict[int, int] = {}      # user page va -> Unicorn protection
        self.windows: dict[int, bool] = {}  # window page va -> is a UVPT page
        self.window_pte: dict | None = None  # the page table the UVPT pages were made from
        self.written: set[int] = set()
        self.pre_pte: dict | None = None
        self.start = 0
        self.window_maps = 0
        self._box = [self]
        uc.hook_add(U.UC_HOOK_INTR, _hook_intr, self._box)
        uc.hook_add(U.UC_HOOK_MEM_UNMAPPED | U.UC_HOOK_MEM_PROT, _hook_mem, self._box)
        uc.hook_add(U.UC_HOOK_MEM_WRITE, self._on_write)
        self._fast_read = self._setup_fast_read()

    def release(self) -> None:
        self.uc = None

    def _on_write(self, uc, access, addr, size, value, _ud):
        self.written.add(addr & ~0xFFF)
        self.written.add((addr + size - 1) & ~0xFFF)

    def step(self, start, until=None, end=None):
        self.written.clear()
        self.start = start
        return super().step(start, until, end)

    # -- the JOS windows
    def _on_mem(self, uc, access, addr, size, value, _ud):
        if access == U.UC_MEM_READ_UNMAPPED and self._map_windows(addr, size):
            return True
        return super()._on_mem(uc, access, addr, size, value, _ud)

    def _map_windows(self, addr: int, size: int) -> bool:
        first = addr & ~0xFFF
        last = (addr + max(size, 1) - 1) & ~0xFFF
        pages = [p for p in range(first, last + PGSIZE, PGSIZE)
                 if p not in self.mapped and p not in self.windows]
        if not pages or not all(UTOP <= p < ULIM for p in pages):
            return False
        contents = []
        for p in pages:
            try:
                contents.append(self._window_page(p))
            except CpuFault:
                return False            # our MMU faults there: so must Unicorn
        for p, data in zip(pages, contents):
            self.uc.mem_map(p, PGSIZE, U.UC_PROT_READ)
            self.uc.mem_write(p, data)
            self.windows[p] = p >= UVPT
            self.window_maps += 1
        return True

    def _window_page(self, p: int) -> bytes:
        """The page at p as our MMU reads it for this instruction."""
        a = self.aspace
        if p < UVPT:
            own, env, pre = self.own, self.env, self.ours.pre_state
            if own is None or pre is None or not (p < own[1] and own[0] < p + PGSIZE):
                return a.read(p, PGSIZE)
            # The env's own struct Env holds its registers, which ours read
            # before the instruction changed them; so must Unicorn.
            live = env.cpu
            env.cpu = Cpu(pre[1], pre[0], pre[2])
            try:
                return a.read(p, PGSIZE)
            finally:
                env.cpu = live
        # UVPT/uvpd: the page table before the instruction's own stores set
        # A/D bits, with the A bits its fetch set (an x86 fetches first).
        pre = self.pre_pte
        now = a.pte
        if pre is None or pre == now:
            state = dict(now)
        else:
            state = dict(pre)
            for vpn in {self.start >> 12, ((self.start + 14) & M32) >> 12}:
                if vpn in state and vpn in now:
                    state[vpn] |= now[vpn] & PTE_A
        a.pte = state
        try:
            data = a.read(p, PGSIZE)
        finally:
            a.pte = now
        self.window_pte = state
        return data

    def drop_windows(self, uvpt_only: bool = False) -> None:
        for p, is_uvpt in list(self.windows.items()):
            if is_uvpt or not uvpt_only:
                self.uc.mem_unmap(p, PGSIZE)
                del self.windows[p]
        if not any(self.windows.values()):
            self.window_pte = None

    def before_step(self) -> None:
        """Keep the mapped window pages what our MMU would read now."""
        a = self.aspace
        if self.windows:
            if self.window_pte is not None and a.pte != self.window_pte:
                self.drop_windows(uvpt_only=True)
            own = self.own
            if own is None:
                self.drop_windows()
            else:
                lo, hi = own
                for p in {lo & ~0xFFF, (hi - 1) & ~0xFFF}:
                    if p in self.windows:
                        s, e = max(lo, p), min(hi, p + PGSIZE)
                        self.uc.mem_write(s, a.read(s, e - s))
        self.pre_pte = dict(a.pte)


class EnvComparer(Comparer):
    """unicorn_ref.Comparer for a kernel env: memory compared on the pages
    written, instructions decoded from the core's instruction cache."""

    def __init__(self, shadow: "Shadow"):
        self.shadow = shadow
        super().__init__(Machine(0, [0] * 8, 0x202), shadow.ours, shadow.ref)
        self.jos_windows = True
        self.comparable = comparable

    def decode(self, start: int):
        d = self.ours.mmu.icache.get(start >> 12)
        fn = d.get(start & 0xFFF) if d is not None else None
        insn = getattr(fn, "insn", None)
        if insn is not None and (start & 0xFFF) + insn.length <= PGSIZE:
            return insn
        try:
            return fetch_decode(self.ours.mmu, start)
        except CpuFault:
            return None

    def _rewrote(self, start: int, insn, pre_pages) -> bool:
        # Comparer._rewrote, looking only at the pages this step stored into
        # (the others cannot have changed): the same answer, cheaper.
        saved = self.ours.saved
        if not saved:
            return False
        for k in range(insn.length):
            a = (start + k) & M32
            before = saved.get(a & ~0xFFF)
            if before is not None and self.ours.page(a & ~0xFFF)[a & 0xFFF] != before[a & 0xFFF]:
                return True
        return False

    def compare_memory(self, step, start, raw, pre, skip=()):
        ours, ref = self.ours, self.ref
        for va in sorted(ours.written | ref.written):
            if va not in ref.mapped or not ours.present(va):
                continue
            d = _first_byte_diff(va, ours.page(va), ref.page(va), skip)
            if d:
                self.fail(step, start, raw, d, pre)

    def fail(self, step, start, raw, what, pre=None):
        self.m = self.shadow.machine(pre)
        super().fail(step, start, raw, what, pre)


class Shadow:
    """One env's Unicorn shadow and its comparer."""

    def __init__(self, ls: "Lockstep", aspace):
        self.ls = ls
        self.aspace = aspace
        self.env = ls.env_of(aspace)
        self.ours = EnvOurs(aspace)
        self.ref = EnvRef(aspace, self.env, self.ours)
        self.cmp = EnvComparer(self)
        self.known: dict[int, bytes] = {}   # page -> contents the shadow holds (checked)

    def machine(self, pre=None) -> Machine:
        """For failure messages: the env's state (before the instruction, if
        given), its mapped pages, and where in the run it is."""
        c = self.ours.cpu
        eip, regs, eflags = pre if pre is not None else (c.eip, c.r, c.eflags)
        e = self.env
        who = f"env {e.env_id:08x} ({e.name or '?'})" if e is not None else "env ?"
        wins = ", ".join(f"{va:#x}" for va in sorted(self.ref.windows))
        note = (f"lockstep: {who} of program {self.ls.program!r}, after {self.ls.instructions} "
                f"instructions of the run; JOS window pages in the shadow: {wins or 'none'}")
        m = Machine(eip, list(regs), eflags, note=note)
        m.pages = {va: (None, w) for va, w in self.ref.mapped.items()}
        return m

    def enter(self, cpu) -> None:
        """Make the shadow equal to the env (mappings, contents, registers)."""
        a = self.aspace
        ours, ref = self.ours, self.ref
        uc = ref.uc
        ours.cpu = cpu
        ref.drop_windows()
        want = {vpn << 12: pte for vpn, pte in a.pte.items() if vpn < UTOP_VPN and _local(pte)}
        for va in [v for v in ref.mapped if v not in want]:
            uc.mem_unmap(va, PGSIZE)
            del ref.mapped[va], ref.perm[va]
            self.known.pop(va, None)
            uc.ctl_remove_cache(va, va + PGSIZE)
        for va, pte in want.items():
            perm = _uc_perm(pte)
            data = ours.page(va)
            if va not in ref.mapped:
                uc.mem_map(va, PGSIZE, perm)
                ref.mapped[va] = bool(pte & PTE_W)
                ref.perm[va] = perm
                uc.mem_write(va, data)
                uc.ctl_remove_cache(va, va + PGSIZE)
                self.known[va] = data
                self.ls.page_copies += 1
                continue
            if ref.perm[va] != perm:
                uc.mem_protect(va, PGSIZE, perm)
                ref.perm[va] = perm
                ref.mapped[va] = bool(pte & PTE_W)
            if self.known.get(va) != data:
                uc.mem_write(va, data)
                uc.ctl_remove_cache(va, va + PGSIZE)
                self.known[va] = data
                self.ls.page_copies += 1
        self.set_registers()

    def set_registers(self) -> None:
        c = self.ours.cpu
        ref = self.ref
        ref.set_regs(c.r)
        ref.set_eflags(c.eflags)
        ref.uc.reg_write(X.UC_X86_REG_EIP, c.eip)
        ref._state = None

    def follow_ours(self) -> None:
        """After an instruction only ours ran: give Unicorn ours's state."""
        ours, ref = self.ours, self.ref
        self.set_registers()
        for va in ours.written | ref.written:
            if va in ref.mapped and ours.present(va):
                data = ours.page(va)
                ref.write(va, data)
                ref.uc.ctl_remove_cache(va, va + PGSIZE)

    def leave(self, faulted: bool) -> None:
        """Every mapped page must be equal (a net for stores not seen).

        After a fault, the pages Unicorn stored into during the faulting
        instruction get ours's contents first: QEMU may leave part of a
        faulting multi-byte store behind, where the core (and an x86) changes
        nothing; Comparer.step has checked the rest (unicorn_ref's exclusion)."""
        ours, ref = self.ours, self.ref
        ref.drop_windows()
        if faulted:
            for va in ref.written:
                if va in ref.mapped and ours.present(va):
                    ref.write(va, ours.page(va))
                    ref.uc.ctl_remove_cache(va, va + PGSIZE)
        for va in sorted(ref.mapped):
            o = ours.page(va)
            u = ref.page(va)
            if o != u:
                d = _first_byte_diff(va, o, u)
                c = ours.cpu
                self.ls.fail(f"memory differs at the end of a slice (eip {c.eip:#010x}): {d}\n"
                             + self.machine().describe())
            self.known[va] = o


# -- the engine ------------------------------------------------------------------------------------

class Lockstep:
    """The kernel's core run, with every instruction checked against Unicorn.

    Raises AssertionError (the Comparer's message: instruction bytes, both
    disassemblies, the first difference, the env) at the first difference;
    the kernel does not catch it, so the run stops there.  Counters:
    `instructions` (run() calls), `compared` (instructions compared),
    `uncompared` [(eip, bytes hex, reason)], `overshoots`, `shadows`
    (Unicorn instances made), `page_copies` (pages copied into shadows),
    `window_maps` (JOS window pages mapped into shadows)."""

    def __init__(self, kernel=None, program: str = ""):
        self.kernel = kernel
        self.program = program
        self.shadow_of: dict = {}       # AddressSpace -> Shadow
        self.instructions = 0
        self.compared = 0
        self.uncompared: list[tuple[int, str, str]] = []
        self.overshoots = 0
        self.shadows = 0
        self.page_copies = 0
        self.retired_window_maps = 0
        self.differences: list[str] = []
        self.expect: dict | None = None     # slice count -> (regs, eip, eflags) to pass through
        self.checked = 0                    # of those, passed through

    @property
    def window_maps(self) -> int:
        return self.retired_window_maps + sum(s.ref.window_maps for s in self.shadow_of.values())

    def env_of(self, aspace):
        if self.kernel is None:
            return None
        for e in self.kernel.envs.values():
            if e.aspace is aspace:
                return e
        return None

    def fail(self, message: str) -> None:
        self.differences.append(message)
        raise AssertionError(message)

    def _shadow(self, aspace) -> Shadow:
        sh = self.shadow_of.get(aspace)
        if sh is None:
            for a in [a for a in self.shadow_of if a.pgdir_pfn == 0]:   # freed envs
                old = self.shadow_of.pop(a)
                self.retired_window_maps += old.ref.window_maps
                old.ref.release()
            sh = self.shadow_of[aspace] = Shadow(self, aspace)
            self.shadows += 1
        return sh

    def __call__(self, cpu, aspace, budget: int) -> Stop:
        sh = self._shadow(aspace)
        sh.enter(cpu)
        ours, ref, cmp = sh.ours, sh.ref, sh.cmp
        _install_store_recorder(aspace, ours)
        done = 0
        result = None
        try:
            while done < budget:
                ref.before_step()
                start = cpu.eip
                epoch = ours.epoch
                try:
                    out = cmp.step(self.compared)
                except AssertionError as exc:
                    self.differences.append(str(exc))
                    raise
                if ours.epoch == epoch:
                    # Rejected by `comparable`: ours alone, then Unicorn follows.
                    insn = cmp.decode(start)
                    self.uncompared.append((start, insn.raw.hex() if insn else "", out.detail))
                    ours.step(False)
                    sh.follow_ours()
                elif out.kind == "unsupported":
                    insn = cmp.decode(start)
                    self.uncompared.append((start, insn.raw.hex() if insn else "", out.detail))
                    sh.follow_ours()
                else:
                    self.compared += 1
                if len(cmp.trace) > 256:
                    del cmp.trace[:-16]
                st = ours.last
                calls = ours.calls
                if calls > budget - done:
                    self.overshoots += 1
                self.instructions += calls - 1 + st.count
                if st.reason == BUDGET:
                    done += calls
                    if self.expect is not None and done in self.expect:
                        self._expected(done, cpu)
                    continue
                result = Stop(st.reason, done + calls - 1 + st.count, st.trapno, st.err, st.va,
                              st.detail)
                break
            else:
                result = Stop(BUDGET, done)
        finally:
            _remove_store_recorder(aspace)
        sh.leave(result.reason not in (BUDGET, SYSCALL))
        return result


    def _expected(self, done: int, cpu) -> None:
        want = self.expect[done]
        got = (tuple(cpu.r), cpu.eip, cpu.eflags)
        if got != want:
            names = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
            diff = [f"{n}: interpreter={a:#x} translator={b:#x}"
                    for n, a, b in zip(names, got[0], want[0]) if a != b]
            if got[1] != want[1]:
                diff.append(f"eip: interpreter={got[1]:#x} translator={want[1]:#x}")
            if got[2] != want[2]:
                diff.append(f"eflags: interpreter={got[2]:#x} translator={want[2]:#x}")
            self.fail(f"the translator differs at a block boundary, {done} instructions into "
                      f"a slice of program {self.program!r}: " + "; ".join(diff))
        self.checked += 1


# -- the block translator against the same ---------------------------------------------------

def _env_state(cpu, aspace) -> tuple:
    """An env's registers, raw flag state, PTEs and local pages' bytes."""
    mem = aspace.mem
    pages = {vpn: bytes(mem[pte & 0xFFFFF000:(pte & 0xFFFFF000) + PGSIZE])
             for vpn, pte in aspace.pte.items() if vpn < UTOP_VPN and _local(pte)}
    return (list(cpu.r), cpu.eip, (cpu.fk, cpu.fa, cpu.fb, cpu.fr, cpu.ef), dict(aspace.pte),
            pages)


def _restore(state: tuple, cpu, aspace) -> None:
    regs, eip, flags, pte, pages = state
    cpu.r[:] = regs
    cpu.eip = eip
    cpu.fk, cpu.fa, cpu.fb, cpu.fr, cpu.ef = flags
    for vpn, old in pte.items():
        if aspace.pte.get(vpn) != old:
            aspace._set_pte(vpn, old)               # A and D bits the slice set
    mem = aspace.mem
    for vpn, data in pages.items():
        base = pte[vpn] & 0xFFFFF000
        mem[base:base + PGSIZE] = data
    # The TLB and the fetched-pages cache imply A bits that are clear again.
    aspace.rt.clear()
    aspace.wt.clear()
    aspace.icache.clear()
    for fn in set(aspace.regions.values()):
        aspace.nota.update(v for v in fn.vpns if not aspace.pte[v] & PTE_A)


class TranslatorLockstep:
    """The kernel's core run on the block translator, checked against
    Unicorn.  Each slice runs on the translator (run_blocks, compiling a
    region once a block has run `hot` times), which records the registers,
    eip and eflags at every block boundary (each return of a region, each
    stretch it left to the interpreter); then the env is put back as it
    was and the same slice runs on Lockstep -- jmig's interpreter and
    Unicorn, compared after every instruction -- which must pass through
    every recorded state and end with the translator's stop, registers,
    flags, page contents and page-table entries (A bits aside: a region
    sets A on the pages of all its code when it is installed, as a
    prefetch may).  The kernel goes on from that state."""

    def __init__(self, kernel=None, program: str = "", hot: int = 1):
        self.ls = Lockstep(kernel, program)
        self.hot = hot
        self.slices = 0
        self.boundaries = 0                 # block boundaries recorded

    @property
    def kernel(self):
        return self.ls.kernel

    @kernel.setter
    def kernel(self, k):
        self.ls.kernel = k

    @property
    def program(self) -> str:
        return self.ls.program

    @program.setter
    def program(self, name: str) -> None:
        self.ls.program = name

    def __getattr__(self, name):
        return getattr(self.ls, name)       # counters, program, differences

    def __call__(self, cpu, aspace, budget: int) -> Stop:
        before = _env_state(cpu, aspace)
        seen: dict[int, tuple] = {}

        def observe(n: int, eip: int) -> None:
            seen[n] = (tuple(cpu.r), eip, cpu.eflags)
        st_t = run_blocks(cpu, aspace, budget, hot=self.hot, observe=observe)
        regs_t, eip_t, eflags_t = list(cpu.r), cpu.eip, cpu.eflags
        pte_t, pages_t = dict(aspace.pte), _env_state(cpu, aspace)[4]
        _restore(before, cpu, aspace)
        self.slices += 1
        self.boundaries += len(seen)
        self.ls.expect = seen
        try:
            st_l = self.ls(cpu, aspace, budget)
        finally:
            self.ls.expect = None
        what = []
        if tuple(st_t[:5]) != tuple(st_l[:5]):
            what.append(f"stop: interpreter {st_l} translator {st_t}")
        if (cpu.r, cpu.eip, cpu.eflags) != (regs_t, eip_t, eflags_t):
            what.append(f"state at the end: interpreter {cpu.r} eip={cpu.eip:#x} "
                        f"eflags={cpu.eflags:#x}, translator {regs_t} eip={eip_t:#x} "
                        f"eflags={eflags_t:#x}")
        if {v: p & ~PTE_A for v, p in aspace.pte.items()} != \
                {v: p & ~PTE_A for v, p in pte_t.items()}:
            what.append("page table entries differ at the end of the slice")
        pages_l = _env_state(cpu, aspace)[4]
        for vpn in sorted(set(pages_l) | set(pages_t)):
            if pages_l.get(vpn) != pages_t.get(vpn):
                what.append(f"page {vpn << 12:#x} differs at the end of the slice")
                break
        if what:
            self.ls.fail(f"the translator differs from the Unicorn-checked interpreter in a "
                         f"slice of {budget} instructions of program {self.ls.program!r} "
                         f"(env eip at the start {before[1]:#x}): " + "; ".join(what))
        return st_l


def run_program_lockstep(ls: Lockstep, elf: bytes, argv, name: str = "", **kw):
    """runner.run_program with every env run by `ls` (same arguments)."""
    real = runner.Kernel

    class LockstepKernel(real):
        def __init__(self, *a, **k):
            k["engine"] = "interp"
            super().__init__(*a, **k)
            self._core_run = ls
            ls.kernel = self

    ls.program = ls.program or name
    runner.Kernel = LockstepKernel
    try:
        return runner.run_program(elf, argv, name, **kw)
    finally:
        runner.Kernel = real
