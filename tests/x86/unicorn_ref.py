"""Differential reference for jmig's x86 core: the same machine in Unicorn.

`run_both(machine)` builds two identical machines -- jmig's core (`Ours`:
PhysMem + AddressSpace + Cpu) and a Unicorn UC_MODE_32 instance (`Ref`)
with the same pages (a read-only page in ours is UC_PROT_READ|UC_PROT_EXEC
in Unicorn, a writable one UC_PROT_ALL: 32-bit x86 without NX executes
every readable page), registers, eflags and eip -- and steps both one
instruction at a time.  After every instruction it compares eip, the eight
registers, the flags the instruction defines (`undefined_effects` lists the
ones the SDM leaves undefined; DF and the user-writable NT/AC/ID bits are
compared too) and every byte of every mapped page.  The first difference
raises AssertionError with the instruction bytes, its disassembly (jmig's
and objdump's), the differing register/flag/byte with both values and the
machine it started from.

`run_both(..., pooled=True)` reuses Unicorn instances with the same memory
layout (new contents, registers and a flushed translation cache), which
halves the cost of a short case; an instance that raised an exception is
not reused (see Ref.release).

How the two are stepped:
  - ours: `run(cpu, mmu, 1)`; a rep string instruction may stop between
    iterations leaving eip on the instruction, so it is run again until
    eip leaves it or it faults.
  - Unicorn: `emu_start(eip, ..., count=1)`.  Unicorn's count=1 stops a
    rep string instruction after one iteration, so a rep instruction runs
    with `until` = the address after it instead.
  - `int $0x30` and int3 arrive through UC_HOOK_INTR with eip after the
    instruction (trap class); #DE arrives there too with eip on the
    instruction.  Page faults arrive through UC_HOOK_MEM_*_UNMAPPED /
    UC_HOOK_MEM_WRITE_PROT (the first reported address is the fault
    address) and end emu_start with UcError; #UD is UC_ERR_INSN_INVALID.
  - When Unicorn executes an instruction whose *successor* cannot be
    fetched (a jump to an unmapped page), it reports UC_ERR_FETCH_* with
    eip already at the successor: the instruction itself completed.

Where the two are not compared, and why (the narrow exclusions).  Where
they disagree the Intel SDM decides; these are the cases where Unicorn
is wrong, or the behaviour is undefined or differs by design:
  - Flags the SDM leaves undefined for the instruction (see
    `undefined_effects`): Unicorn's values are replaced by ours after the
    step so that later readers of the flags (pushf, lahf, adc, jcc ...)
    see the same input on both sides.
  - Results the SDM leaves undefined: a 16-bit shld/shrd whose count is
    above 16.  Ours is copied into Unicorn after the step.
  - EFLAGS bits TF IF IOPL RF VM VIF VIP: Unicorn runs at CPL 0, where
    popf may change them; a JOS env runs at CPL 3, where it may not (the
    core keeps them).  Ours are copied into Unicorn after every step.
  - Unicorn bugs (`unicorn_wrong_flags`, `unicorn_fixup`, Comparer.step):
      * `lock neg m`: QEMU's locked path gets SF ZF PF wrong;
      * `ret imm16` with imm16 >= 0x8000: QEMU sign-extends the count;
      * a 16-bit `enter` (66 c8): QEMU writes all of EBP, the SDM only BP
        (BP <- FrameTemp(15:0)): EBP's upper half is not compared;
      * `popa` faulting part-way: QEMU has already written some registers;
      * `count=1` alone makes Unicorn translate ahead and report a fetch
        fault for an instruction ending at a page end whose next page is
        unmapped, so Unicorn is also stopped at the instruction's end.
  - `rep bsf` (f3 0f bc, gcc's __builtin_ctz) is bsf on jmig's core (a CPU
    without BMI1) and tzcnt on Unicorn's model: its flags, and its result
    for a zero source, are not compared.
  - `cmps` faulting on both operands: the SDM does not order its two reads;
    the core reports [esi] (read first), QEMU [edi].  Accepted when ours
    is [esi]'s element and really faults.
  - JOS's address space above UTOP: the kernel maps it, so a user access
    there is a *protection* fault (FEC_PR), and the UENVS/UPAGES/UVPT
    windows are readable; Unicorn has nothing mapped there.  A fault at
    va >= UTOP must be a protection fault in ours; a run ends where
    Unicorn cannot read a window (UTOP <= va < ULIM) -- unless
    `Comparer.jos_windows` says the Ref maps the windows itself, as the
    kernel-level lockstep (tests/kernel/lockstep.py) does.
  - On a fault, Unicorn's memory: QEMU commits the bytes/stores of a
    multi-byte or multi-store access one at a time and may leave part of a
    faulting write behind; the x86 restarts the instruction, and jmig's
    contract is stronger -- a faulting instruction changes nothing -- so
    ours is checked against the state before the instruction instead.
    (A rep string instruction that faults after completing iterations is
    compared with Unicorn except for the element being stored.)
  - An instruction that stores into its own bytes, or into the code after
    it in its page (Unicorn's translation block): QEMU abandons it and
    Unicorn stops on it; the run ends there.
  - An instruction jmig's core does not implement (it raises #UD/#GP as
    "(bad)") that Unicorn executes, when it is *not* one of the
    instructions the test generated (`Machine.code_starts`), and bytes
    other than the generated instructions (after a ret to a data pointer
    or a jump into an instruction): the run ends there, as it does at an
    instruction that a `Comparer.comparable` filter rejects.
"""
from __future__ import annotations

import ctypes
import random
import subprocess
import tempfile
from dataclasses import dataclass, field

import unicorn as U
from unicorn import x86_const as X

from jmig.kernel.memlayout import FEC_PR, FEC_WR, PGSIZE, PTE_U, PTE_W, ULIM, UTOP
from jmig.kernel.pmap import AddressSpace, CpuFault, PhysMem
from jmig.kernel.x86.cpu import BUDGET, INTERNAL, REMOTE, SYSCALL, TRAP, Cpu, fetch_decode, run
from jmig.kernel.x86.decode import STRING_OPS
from jmig.kernel.x86.insn import IMM, MEM, REG

REG_NAMES = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
UC_REGS = (X.UC_X86_REG_EAX, X.UC_X86_REG_ECX, X.UC_X86_REG_EDX, X.UC_X86_REG_EBX,
           X.UC_X86_REG_ESP, X.UC_X86_REG_EBP, X.UC_X86_REG_ESI, X.UC_X86_REG_EDI)
UC_STATE = UC_REGS + (X.UC_X86_REG_EIP, X.UC_X86_REG_EFLAGS)

FL_CF, FL_PF, FL_AF, FL_ZF, FL_SF, FL_TF, FL_IF, FL_DF, FL_OF = (
    0x1, 0x4, 0x10, 0x40, 0x80, 0x100, 0x200, 0x400, 0x800)
FL_NT, FL_AC, FL_ID = 0x4000, 0x40000, 0x200000
ARITH = FL_CF | FL_PF | FL_AF | FL_ZF | FL_SF | FL_OF
# Flags compared after an instruction (minus the ones it leaves undefined).
COMPARED = ARITH | FL_DF | FL_NT | FL_AC | FL_ID
FLAG_NAMES = ((FL_CF, "CF"), (FL_PF, "PF"), (FL_AF, "AF"), (FL_ZF, "ZF"), (FL_SF, "SF"),
              (FL_DF, "DF"), (FL_OF, "OF"), (FL_NT, "NT"), (FL_AC, "AC"), (FL_ID, "ID"))

M32 = 0xFFFFFFFF
UNTIL_SENTINEL = 0xB5A9E2C7      # an unmapped address no test jumps to


# -- disassembly for failure messages ---------------------------------------------------

def objdump(code: bytes, addr: int) -> str:
    """objdump's disassembly of raw 32-bit code (empty if objdump is missing)."""
    if not code:
        return ""
    with tempfile.NamedTemporaryFile(suffix=".bin") as f:
        f.write(code)
        f.flush()
        try:
            out = subprocess.run(
                ["objdump", "-D", "-b", "binary", "-mi386", f"--adjust-vma={addr:#x}", f.name],
                capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return ""
    lines = out.splitlines()
    for k, line in enumerate(lines):
        if line.endswith("<.data>:"):
            return "\n".join(lines[k + 1:])
    return out


def disassemble(code: bytes, addr: int) -> str:
    """jmig's disassembly (if jmig.kernel.x86.disasm exists) and objdump's."""
    parts = []
    try:
        from jmig.kernel.x86.disasm import disasm
        text = disasm(code, addr)
        if not isinstance(text, str):
            text = "\n".join(map(str, text))
        parts.append("jmig:\n" + text.rstrip())
    except Exception as e:          # the disassembler is optional here
        parts.append(f"jmig: (no disassembly: {type(e).__name__}: {e})")
    od = objdump(code, addr)
    if od:
        parts.append("objdump:\n" + od.rstrip())
    return "\n".join(parts)


# -- the machine description --------------------------------------------------------------

@dataclass
class Machine:
    """What both sides start from."""
    eip: int
    regs: list
    eflags: int
    pages: dict = field(default_factory=dict)      # page va -> (bytes, writable)
    code: tuple = (0, b"")                          # (addr, bytes) shown in failures
    code_starts: frozenset = frozenset()            # generated instruction addresses
    note: str = ""                                  # how to reproduce
    frame_seed: int = 0                             # order of jmig's physical frames

    def map(self, va: int, data: bytes | None = None, writable: bool = True) -> None:
        data = bytes(PGSIZE) if data is None else bytes(data)
        assert va % PGSIZE == 0 and len(data) == PGSIZE
        self.pages[va] = (data, writable)

    def poke(self, va: int, data: bytes) -> None:
        """Store bytes into the (mapped) page contents, ignoring permissions."""
        for k, b in enumerate(data):
            a = va + k
            page = a & ~0xFFF
            cur, w = self.pages[page]
            off = a - page
            self.pages[page] = (cur[:off] + bytes((b,)) + cur[off + 1:], w)

    def copy(self) -> "Machine":
        return Machine(self.eip, list(self.regs), self.eflags, dict(self.pages), self.code,
                       self.code_starts, self.note, self.frame_seed)

    def describe(self) -> str:
        regs = " ".join(f"{n}={v:08x}" for n, v in zip(REG_NAMES, self.regs))
        pages = ", ".join(f"{va:#x}{'' if w else ' (ro)'}" for va, (_, w) in sorted(self.pages.items()))
        lines = [f"initial state: eip={self.eip:08x} {regs} eflags={self.eflags:08x}",
                 f"pages: {pages}"]
        addr, code = self.code
        if code:
            lines.append(f"code at {addr:#x}: {code.hex()}")
            lines.append(disassemble(code, addr))
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)


@dataclass
class Outcome:
    kind: str                 # "ok", "int" (int3/int $0x30: eip after it), "fault"
    trapno: int = -1
    va: int = 0
    write: bool = False       # page faults: a write access
    present: bool = False     # page faults: protection violation on a present page
    detail: str = ""

    def __str__(self) -> str:
        if self.kind == "ok":
            return "completed"
        if self.kind == "int":
            return f"software interrupt {self.trapno:#x}"
        if self.trapno == 14:
            what = ("write" if self.write else "read") + (" protection" if self.present else " not-present")
            return f"page fault va={self.va:#010x} ({what})"
        return f"trap {self.trapno}" + (f" ({self.detail})" if self.detail else "")


class CoreBug(AssertionError):
    pass


# -- jmig's side ----------------------------------------------------------------------------

class Ours:
    def __init__(self, m: Machine):
        self.phys = PhysMem(len(m.pages) + 64)
        # Frames in a machine-specific order, so that page contents land at
        # even and odd frame numbers alike (physical addresses matter to
        # the MMU's bit arithmetic).
        random.Random(m.frame_seed).shuffle(self.phys.free)
        self.mmu = AddressSpace(self.phys)
        for va, (data, w) in sorted(m.pages.items()):
            self.map(va, data, w)
        self.cpu = Cpu(m.regs, m.eip, m.eflags)

    def map(self, va: int, data: bytes, writable: bool) -> None:
        pfn = self.phys.page_alloc()
        base = pfn << 12
        self.phys.mem[base:base + PGSIZE] = data
        assert self.mmu.page_insert(pfn, va, PTE_U | (PTE_W if writable else 0))

    def unmap(self, va: int) -> None:
        self.mmu.page_remove(va)

    def protect(self, va: int, writable: bool) -> None:
        """Change a mapped page's W bit, keeping its frame."""
        pte = self.mmu.pte[va >> 12]
        pfn = pte >> 12 & 0xFFFFF
        assert self.mmu.page_insert(pfn, va, PTE_U | (PTE_W if writable else 0))

    def pages(self) -> dict:
        out = {}
        for vpn, pte in sorted(self.mmu.pte.items()):
            base = (pte >> 12 & 0xFFFFF) << 12
            out[vpn << 12] = bytes(self.phys.mem[base:base + PGSIZE])
        return out

    def page(self, va: int) -> bytes:
        pte = self.mmu.pte[va >> 12]
        base = (pte >> 12 & 0xFFFFF) << 12
        return bytes(self.phys.mem[base:base + PGSIZE])

    def writable(self, va: int) -> bool:
        return bool(self.mmu.pte[va >> 12] & PTE_W)

    def state(self):
        c = self.cpu
        return (c.eip, tuple(c.r), c.eflags)

    def to_machine(self, base: Machine | None = None) -> Machine:
        c = self.cpu
        m = Machine(c.eip, list(c.r), c.eflags)
        for va, data in self.pages().items():
            m.pages[va] = (data, self.writable(va))
        if base is not None:
            m.code, m.code_starts, m.note = base.code, base.code_starts, base.note
        return m

    def step(self, rep: bool) -> tuple[Outcome, int]:
        """One instruction (all iterations of a rep).  Returns the outcome and
        the number of run() calls."""
        cpu = self.cpu
        start = cpu.eip
        calls = 0
        while True:
            st = run(cpu, self.mmu, 1)
            calls += 1
            self.last = st            # the last Stop (a lockstep engine returns it)
            if st.reason == INTERNAL:
                raise CoreBug(f"run() returned INTERNAL at eip {cpu.eip:#x}: {st.detail}")
            if st.reason == BUDGET:
                if rep and cpu.eip == start:
                    if calls > 200_000:
                        raise CoreBug("rep instruction never finishes")
                    continue
                return Outcome("ok"), calls
            if st.reason == SYSCALL:
                return Outcome("int", 0x30), calls
            if st.reason == TRAP:
                if st.trapno == 3 and cpu.eip != start:
                    return Outcome("int", 3), calls
                if st.trapno == 14:
                    return Outcome("fault", 14, st.va, bool(st.err & FEC_WR), bool(st.err & FEC_PR),
                                   detail=f"err={st.err:#x}"), calls
                return Outcome("fault", st.trapno, detail=f"err={st.err:#x}"), calls
            if st.reason == REMOTE:
                raise CoreBug(f"REMOTE stop without remote pages: {st}")
            raise CoreBug(f"unknown stop {st}")


# -- Unicorn's side ----------------------------------------------------------------------------

_FAULT_ACCESS = {
    U.UC_MEM_READ_UNMAPPED: (False, False), U.UC_MEM_WRITE_UNMAPPED: (True, False),
    U.UC_MEM_FETCH_UNMAPPED: (False, False), U.UC_MEM_READ_PROT: (False, True),
    U.UC_MEM_WRITE_PROT: (True, True), U.UC_MEM_FETCH_PROT: (False, True),
}
_FETCH_ERRORS = (U.UC_ERR_FETCH_UNMAPPED, U.UC_ERR_FETCH_PROT)
_DATA_ERRORS = (U.UC_ERR_READ_UNMAPPED, U.UC_ERR_WRITE_UNMAPPED, U.UC_ERR_READ_PROT,
                U.UC_ERR_WRITE_PROT)


def _runs(pages: dict) -> tuple:
    """Runs of adjacent pages with the same permission: ((va, data, w), ...)."""
    out = []
    for va, (data, w) in sorted(pages.items()):
        if out and out[-1][0] + len(out[-1][1]) == va and out[-1][2] == w:
            out[-1] = (out[-1][0], out[-1][1] + data, w)
        else:
            out.append((va, data, w))
    return tuple(out)


def _hook_intr(uc, intno, box):
    box[0]._on_intr(uc, intno, None)


def _hook_mem(uc, access, addr, size, value, box):
    return box[0]._on_mem(uc, access, addr, size, value, None)


# Idle Unicorn instances by memory layout, for Ref(m, pooled=True): creating
# one and mapping its memory costs more than running a short test case.
_POOL: dict[tuple, list] = {}


class Ref:
    def __init__(self, m: Machine, pooled: bool = False):
        runs = _runs(m.pages)
        self.layout = tuple((va, len(data), w) for va, data, w in runs)
        self.pooled = pooled
        self._state = None
        self.events: list = []
        self.intr: int | None = None
        self.faulted = False
        free = _POOL.get(self.layout) if pooled else None
        if free:
            uc, self._box, self._fast_read = free.pop()
            self.uc = uc
            self.mapped = {va + k: w for va, n, w in self.layout for k in range(0, n, PGSIZE)}
            for va, data, w in runs:
                uc.mem_write(va, data)
            uc.ctl_flush_tb()                   # the code changed
        else:
            uc = self.uc = U.Uc(U.UC_ARCH_X86, U.UC_MODE_32)
            self.mapped = {}
            for va, data, w in runs:
                self.map(va, data, w)
            self._box = [self]
            uc.hook_add(U.UC_HOOK_INTR, _hook_intr, self._box)
            uc.hook_add(U.UC_HOOK_MEM_UNMAPPED | U.UC_HOOK_MEM_PROT, _hook_mem, self._box)
            self._fast_read = self._setup_fast_read()
        self._box[0] = self
        uc.reg_write_batch(list(zip(UC_REGS, m.regs)))
        uc.reg_write(X.UC_X86_REG_EFLAGS, m.eflags)
        uc.reg_write(X.UC_X86_REG_EIP, m.eip)

    def release(self) -> None:
        """Give a pooled instance back (this Ref is unusable afterwards).
        One that raised an exception is dropped instead: Unicorn keeps
        QEMU's exception-nesting state after it stops on an exception, and
        the next #DE in the same instance would come out as a #DF."""
        if self.pooled and self.uc is not None and not self.faulted:
            layout_now = {va: w for va, w in self.mapped.items()}
            layout_was = {va + k: w for va, n, w in self.layout for k in range(0, n, PGSIZE)}
            if layout_now == layout_was:
                _POOL.setdefault(self.layout, []).append((self.uc, self._box, self._fast_read))
            self.uc = None

    def map(self, va: int, data: bytes, writable: bool) -> None:
        """Map len(data) bytes (whole pages) at va."""
        perm = U.UC_PROT_READ | U.UC_PROT_EXEC | (U.UC_PROT_WRITE if writable else 0)
        self.uc.mem_map(va, len(data), perm)
        self.uc.mem_write(va, bytes(data))
        for k in range(0, len(data), PGSIZE):
            self.mapped[va + k] = writable

    def unmap(self, va: int) -> None:
        self.uc.mem_unmap(va, PGSIZE)
        del self.mapped[va]

    def protect(self, va: int, writable: bool) -> None:
        perm = U.UC_PROT_READ | U.UC_PROT_EXEC | (U.UC_PROT_WRITE if writable else 0)
        self.uc.mem_protect(va, PGSIZE, perm)
        self.mapped[va] = writable

    def _on_intr(self, uc, intno, _ud):
        self.intr = intno
        uc.emu_stop()

    def _on_mem(self, uc, access, addr, size, value, _ud):
        self.events.append((access, addr, size))
        return False

    # state
    def _setup_fast_read(self):
        """One ctypes call for all ten registers (the binding's generic
        reg_read_batch spends most of a step's time building arguments)."""
        uc = self.uc
        try:
            vals = [uc._select_reg_class(r)() for r in UC_STATE]
            ids = (ctypes.c_int * len(UC_STATE))(*UC_STATE)
            ptrs = (ctypes.c_void_p * len(UC_STATE))(*(ctypes.addressof(v) for v in vals))
            return (uc._do_reg_read_batch, ids, ptrs, vals)
        except AttributeError:
            return None

    def state(self):
        st = self._state
        if st is None:
            fast = self._fast_read
            if fast is not None:
                fn, ids, ptrs, vals = fast
                if fn(ids, ptrs, len(UC_STATE)) != U.UC_ERR_OK:
                    raise U.UcError(U.UC_ERR_ARG)
                v = [x.value & M32 for x in vals]
            else:
                v = self.uc.reg_read_batch(UC_STATE)
            st = self._state = (v[8], tuple(v[:8]), v[9])
        return st

    def set_eflags(self, v: int) -> None:
        self.uc.reg_write(X.UC_X86_REG_EFLAGS, v)
        self._state = None

    def set_regs(self, regs) -> None:
        self.uc.reg_write_batch(list(zip(UC_REGS, regs)))
        self._state = None

    def page(self, va: int) -> bytes:
        return bytes(self.uc.mem_read(va, PGSIZE))

    def write(self, va: int, data: bytes) -> None:
        self.uc.mem_write(va, bytes(data))

    def memory(self) -> dict:
        return {va: self.page(va) for va in sorted(self.mapped)}

    def step(self, start: int, until: int | None = None, end: int | None = None) -> Outcome:
        out = self._step(start, until, end)
        if out.kind == "fault":
            self.faulted = True
        return out

    def _step(self, start: int, until: int | None = None, end: int | None = None) -> Outcome:
        """One instruction at `start`; `until` = its end for a rep string op
        (run to completion), `end` = its end otherwise (also a stop address:
        with count=1 alone, Unicorn translates ahead and reports a fetch
        fault at `start` when the bytes after an instruction that ends at
        a page end cannot be fetched)."""
        self.events.clear()
        self.intr = None
        self._state = None
        uc = self.uc
        try:
            if until is not None:
                uc.emu_start(start, until)
            else:
                # `until` must be an address no instruction jumps to: after
                # Unicorn stopped on reaching `until`, a later emu_start at
                # that address with count=1 returns without executing.
                if end is None or end == start:
                    end = UNTIL_SENTINEL ^ (start == UNTIL_SENTINEL)
                uc.emu_start(start, end, count=1)
        except U.UcError as e:
            eip = uc.reg_read(X.UC_X86_REG_EIP)
            if e.errno in _FETCH_ERRORS:
                if eip != start:
                    return Outcome("ok")       # completed; its successor cannot be fetched
                return self._page_fault(start)
            if e.errno in _DATA_ERRORS:
                return self._page_fault(start)
            if e.errno == U.UC_ERR_INSN_INVALID:
                return Outcome("fault", 6, detail="UC_ERR_INSN_INVALID")
            return Outcome("fault", -1, detail=f"unexpected Unicorn error: {e}")
        if self.intr is not None:
            if self.intr in (3, 0x30):
                return Outcome("int", self.intr)
            return Outcome("fault", self.intr, detail="UC_HOOK_INTR")
        return Outcome("ok")

    def _page_fault(self, start: int) -> Outcome:
        if not self.events:
            return Outcome("fault", -1, detail="Unicorn memory error without a hook event")
        access, addr, size = self.events[0]
        write, present = _FAULT_ACCESS[access]
        return Outcome("fault", 14, addr, write, present,
                       detail=f"unicorn access={access} size={size}")


# -- what the SDM leaves undefined ---------------------------------------------------------------

def _count(insn, regs) -> int:
    cnt = insn.ops[-1]
    if cnt.kind == IMM:
        return cnt.imm & 31
    return regs[1] & 31               # cl


def _source_is_zero(insn, regs) -> bool:
    src = insn.ops[1]
    if src.kind == REG:
        v = regs[src.reg]
        return (v & 0xFFFF if src.size == 2 else v) == 0
    return True         # a memory source: not looked up here, assume the worst


def undefined_effects(insn, regs) -> tuple[int, bool]:
    """(flags the instruction leaves undefined, whether its result is undefined)."""
    if insn is None:
        return 0, False
    op = insn.op
    if op in ("and", "or", "xor", "test"):
        return FL_AF, False
    if op in ("mul", "imul", "imul2", "imul3"):
        return FL_SF | FL_ZF | FL_AF | FL_PF, False
    if op in ("div", "idiv"):
        return ARITH, False
    if op in ("shl", "shr", "sar"):
        c = _count(insn, regs)
        if c == 0:
            return 0, False
        u = FL_AF | (FL_OF if c != 1 else 0)
        if op != "sar" and insn.size < 4 and c >= insn.size * 8:
            u |= FL_CF      # SDM: CF undefined for shl/shr when count >= width
        return u, False
    if op in ("rol", "ror", "rcl", "rcr"):
        c = _count(insn, regs)
        return (FL_OF if c > 1 else 0), False
    if op in ("shld", "shrd"):
        c = _count(insn, regs)
        if c == 0:
            return 0, False
        if c > insn.size * 8:
            return ARITH, True          # 16-bit count above 16: all undefined
        return FL_AF | (FL_OF if c != 1 else 0), False
    if op in ("bt", "bts", "btr", "btc"):
        return FL_OF | FL_SF | FL_AF | FL_PF, False
    if op in ("bsf", "bsr"):
        # A zero source leaves the destination undefined by the SDM (the
        # core keeps it, as Intel and AMD CPUs do, and so does QEMU's bsf);
        # for `rep bsf` (tzcnt on Unicorn's CPU model) it is 32 there.
        zero_src = is_rep_bsf(insn) and _source_is_zero(insn, regs)
        return FL_CF | FL_OF | FL_SF | FL_AF | FL_PF, zero_src
    return 0, False


def _prefixes(raw: bytes) -> bytes:
    k = 0
    while k < len(raw) and raw[k] in (0x66, 0x67, 0xF0, 0xF2, 0xF3, 0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65):
        k += 1
    return raw[:k]


def is_rep_bsf(insn) -> bool:
    """`rep bsf` (f3 0f bc), which gcc emits for __builtin_ctz: bsf on a CPU
    without BMI1 (jmig's core), tzcnt on Unicorn's.  Same result for a
    nonzero source; the flags differ (bsf: ZF = source is 0; tzcnt: ZF =
    result is 0, CF = source is 0)."""
    return insn is not None and insn.op == "bsf" and 0xF3 in _prefixes(insn.raw)


def unicorn_wrong_flags(insn) -> int:
    """Flags Unicorn 2.1 (QEMU 5's translator) computes wrongly for insn, or
    that depend on the CPU model."""
    if insn is None:
        return 0
    if is_rep_bsf(insn):
        return ARITH
    if insn.op == "neg" and insn.lock:
        # `lock neg m`: QEMU's locked path leaves SF ZF PF of the wrong
        # value (the non-locked `neg m` agrees with the core and the SDM).
        return FL_SF | FL_ZF | FL_PF
    return 0


def unicorn_fixup(insn, ours_regs, uc_regs) -> list | None:
    """Unicorn's registers after insn with its known bugs undone (None: no
    change).  Applied before comparing, so nothing else is excused."""
    if insn is None:
        return None
    if insn.op == "enter" and insn.size == 2:
        # SDM, ENTER: BP <- FrameTemp(15:0), the upper half of EBP is kept;
        # QEMU's gen_enter writes FrameTemp to all of EBP.
        fixed = list(uc_regs)
        fixed[5] = (uc_regs[5] & 0xFFFF) | (ours_regs[5] & 0xFFFF0000)
        return fixed
    if insn.op == "ret" and insn.ops and insn.ops[0].imm >= 0x8000:
        # SDM, RET imm16: release imm16 bytes, an unsigned count; QEMU reads
        # the immediate sign-extended (x86_ldsw_code), 0x10000 short.
        fixed = list(uc_regs)
        fixed[4] = (uc_regs[4] + 0x10000) & M32
        return fixed
    return None


# -- the lockstep comparison --------------------------------------------------------------------------

@dataclass
class Result:
    reason: str               # "syscall", "fault", "steps", "unsupported"
    steps: int
    outcome: Outcome | None
    ours: Ours
    ref: Ref


def _may_write(insn, regs, lo: int, n: int) -> bool:
    """Whether insn may store into [lo, lo+n) (its memory operands, the stack
    below esp, the string destination) -- even the value already there."""
    def hits(a: int, size: int) -> bool:
        return any(lo <= (a + k) & M32 < lo + n for k in range(size))
    for o in insn.ops:
        if o.kind == MEM:
            a = o.disp
            if o.base >= 0:
                a += regs[o.base]
            if o.index >= 0:
                a += regs[o.index] * o.scale
            if hits(a & M32, max(o.size, 4)):
                return True
    if insn.op in ("push", "call", "calli", "pushf", "pusha", "enter"):
        return hits((regs[4] - 64) & M32, 64)
    if insn.op in ("movs", "stos"):
        return hits(regs[7], insn.size)
    return False


def _in_element(va: int, addr: int, size: int) -> bool:
    """va is one of the bytes [addr, addr+size), or the start of the second
    page of an element straddling two pages."""
    return any(va == (addr + k) & M32 for k in range(size))


def _fmt_regs(regs) -> str:
    return " ".join(f"{n}={v:08x}" for n, v in zip(REG_NAMES, regs))


def _flag_diff(a: int, b: int, mask: int) -> str:
    for bit, name in FLAG_NAMES:
        if mask & bit and (a ^ b) & bit:
            return f"flag {name}: ours={1 if a & bit else 0} unicorn={1 if b & bit else 0}"
    return ""


def _first_byte_diff(va: int, a: bytes, b: bytes, skip=()) -> str | None:
    if a == b:
        return None
    for k in range(PGSIZE):
        if a[k] != b[k] and not any(lo <= va + k < hi for lo, hi in skip):
            n = sum(1 for j in range(PGSIZE) if a[j] != b[j])
            return (f"byte at {va + k:#010x}: ours={a[k]:#04x} unicorn={b[k]:#04x} "
                    f"({n} differing bytes in the page; ours {a[k & ~15:(k & ~15) + 16].hex()} "
                    f"unicorn {b[k & ~15:(k & ~15) + 16].hex()} at {va + (k & ~15):#x})")
    return None


class Comparer:
    def __init__(self, machine: Machine, ours: Ours | None = None, ref: Ref | None = None):
        self.m = machine
        self.ours = ours if ours is not None else Ours(machine)
        self.ref = ref if ref is not None else Ref(machine)
        self.trace: list[str] = []
        self.stop_at_syscall = True
        # Optional filter insn -> bool: an instruction it rejects ends the
        # run as "unsupported" (used for garbage bytes, see test_bad_input).
        self.comparable = None
        # True when `ref` maps JOS's read-only windows above UTOP itself (the
        # kernel-level lockstep in tests/kernel/lockstep.py): reads there are
        # then compared like any other access instead of ending the run.
        self.jos_windows = False

    # -- failure reporting
    def fail(self, step: int, start: int, raw: bytes, what: str, pre=None) -> None:
        c = self.ours.cpu
        uc_eip, uc_regs, uc_fl = self.ref.state()
        lines = [f"x86 core differs from Unicorn at step {step}, eip {start:#010x}: {what}"]
        if raw:
            lines.append(f"instruction bytes: {raw.hex(' ')}")
            lines.append(disassemble(raw, start))
        if pre is not None:
            lines.append(f"before:  eip={pre[0]:08x} {_fmt_regs(pre[1])} eflags={pre[2]:08x}")
        lines.append(f"ours:    eip={c.eip:08x} {_fmt_regs(c.r)} eflags={c.eflags:08x}")
        lines.append(f"unicorn: eip={uc_eip:08x} {_fmt_regs(uc_regs)} eflags={uc_fl:08x}")
        if self.trace:
            lines.append("last instructions: " + " | ".join(self.trace[-8:]))
        lines.append(self.m.describe())
        raise AssertionError("\n".join(lines))

    def decode(self, start: int):
        """The instruction at start as ours fetches it (None: the fetch faults)."""
        try:
            return fetch_decode(self.ours.mmu, start)
        except CpuFault:
            return None

    def _generated(self, start: int, insn) -> bool:
        """Is insn one of the generated instructions, unmodified (stores may
        rewrite code)?"""
        if start not in self.m.code_starts:
            return False
        addr, code = self.m.code
        off = start - addr
        return code[off:off + insn.length] == insn.raw

    def _rewrote(self, start: int, insn, pre_pages) -> bool:
        for k in range(insn.length):
            a = (start + k) & M32
            page = a & ~0xFFF
            if page in pre_pages and self.ours.page(page)[a & 0xFFF] != pre_pages[page][a & 0xFFF]:
                return True
        return False

    def _insn_bytes(self, start: int) -> bytes:
        """Up to 15 bytes at start from ours's mapped pages (for messages)."""
        out = bytearray()
        for k in range(15):
            a = (start + k) & M32
            if (a >> 12) not in self.ours.mmu.pte:
                break
            out.append(self.ours.page(a & ~0xFFF)[a & 0xFFF])
        return bytes(out)

    # -- comparisons
    def compare_state(self, step, start, raw, pre, mask, skip_mem=()):
        c = self.ours.cpu
        uc_eip, uc_regs, uc_fl = self.ref.state()
        if c.eip != uc_eip:
            self.fail(step, start, raw, f"eip: ours={c.eip:#010x} unicorn={uc_eip:#010x}", pre)
        for k in range(8):
            if c.r[k] != uc_regs[k]:
                self.fail(step, start, raw,
                          f"register {REG_NAMES[k]}: ours={c.r[k]:#010x} unicorn={uc_regs[k]:#010x}", pre)
        fl = c.eflags
        if (fl ^ uc_fl) & mask:
            self.fail(step, start, raw, _flag_diff(fl, uc_fl, mask) +
                      f" (ours eflags={fl:#x} unicorn={uc_fl:#x})", pre)
        self.compare_memory(step, start, raw, pre, skip_mem)

    def compare_memory(self, step, start, raw, pre, skip=()):
        ours_pages = self.ours.pages()
        if sorted(ours_pages) != sorted(self.ref.mapped):
            self.fail(step, start, raw, f"mapped pages differ: ours {sorted(ours_pages)} "
                      f"unicorn {sorted(self.ref.mapped)}", pre)
        for va, data in ours_pages.items():
            u = self.ref.page(va)
            if data != u:
                d = _first_byte_diff(va, data, u, skip)
                if d:
                    self.fail(step, start, raw, d, pre)

    def sync_flags(self, mask: int) -> None:
        """Give Unicorn ours for every flag not compared (undefined, CPL-dependent)."""
        fl = self.ours.cpu.eflags
        uc_fl = self.ref.state()[2]
        want = (uc_fl & mask) | (fl & ~mask)
        if want != uc_fl:
            self.ref.set_eflags(want)

    def sync_all(self) -> None:
        """Give Unicorn ours registers and memory (after an undefined result)."""
        self.ref.set_regs(self.ours.cpu.r)
        self.ref.set_eflags(self.ours.cpu.eflags)
        for va, data in self.ours.pages().items():
            self.ref.write(va, data)

    # -- the loop
    def step(self, step: int) -> Outcome:
        """One instruction on both (compared); returns its outcome."""
        ours, ref = self.ours, self.ref
        start = ours.cpu.eip
        uc_start = ref.state()[0]
        if uc_start != start:
            self.fail(step, start, b"", f"eip: ours={start:#010x} unicorn={uc_start:#010x}")
        insn = self.decode(start)
        if insn is not None and self.comparable is not None and not self.comparable(insn):
            return Outcome("unsupported", detail=f"not comparable: {insn.raw.hex()}")
        if insn is not None and self.m.code_starts and not self._generated(start, insn):
            # Executing bytes that are not one of the generated instructions
            # (a ret to a data pointer, a jump into an instruction): those
            # may be anything, e.g. segment register pushes (see module doc).
            return Outcome("unsupported", detail=f"left the generated code at {start:#x}")
        raw = insn.raw if insn is not None else self._insn_bytes(start)
        pre = ours.state()
        pre_pages = ours.pages()
        undef_flags, undef_result = undefined_effects(insn, pre[1])
        rep = insn is not None and insn.op in STRING_OPS and insn.rep != 0
        try:
            out, _ = ours.step(rep)
        except CoreBug as e:
            self.fail(step, start, raw, str(e), pre)
        uout = ref.step(start, insn.next if rep else None, insn.next if insn is not None else None)
        if insn is not None and (self._rewrote(start, insn, pre_pages) or (
                uout.kind == "ok" and out.kind == "ok" and ref.state()[0] == start
                and ours.cpu.eip != start
                and _may_write(insn, pre[1], start, 0x1000 - (start & 0xFFF)))):
            # The instruction stored into its own bytes, or into code after it
            # in the same page, which Unicorn's translation block for this
            # step covers (perhaps the same values: Unicorn stopped on it).
            # A CPU completes it (so does the core, a rep instruction with all
            # its iterations); QEMU's precise-SMC handling abandons it and
            # retranslates.
            return Outcome("unsupported", detail="the instruction rewrote itself")
        self.trace.append(f"{start:#x}: {raw.hex()} -> {out}")
        mask = COMPARED & ~undef_flags & ~unicorn_wrong_flags(insn)

        if (not self.jos_windows
                and uout.kind == "fault" and uout.trapno == 14 and UTOP <= uout.va < ULIM
                and not uout.write and (out.kind != "fault" or out.trapno == 14)):
            # JOS's read-only windows (UENVS, UPAGES, UVPT) are readable by
            # user code; Unicorn has nothing mapped there, so it cannot
            # follow a read there (ours may complete, or fault later, e.g.
            # on the write of a read-modify-write).
            return Outcome("unsupported", 14, uout.va, detail="read of a JOS window above UTOP")
        if out.kind != uout.kind or out.trapno != uout.trapno:
            if (out.kind == "fault" and out.trapno in (6, 13) and insn is not None
                    and insn.op == "(bad)" and not self._generated(start, insn)):
                return Outcome("unsupported", out.trapno)
            self.fail(step, start, raw, f"outcome: ours {out}, unicorn {uout}", pre)

        if out.kind in ("ok", "int"):
            if undef_result:
                if self.ours.cpu.eip != ref.state()[0]:
                    self.fail(step, start, raw, "eip after an undefined result", pre)
                self.sync_all()
            else:
                fixed = unicorn_fixup(insn, ours.cpu.r, ref.state()[1])
                if fixed is not None:
                    ref.set_regs(fixed)
                self.compare_state(step, start, raw, pre, mask)
                self.sync_flags(mask)
            return out

        # Both faulted with the same trap number.
        if out.trapno == 14:
            if (insn is not None and insn.op == "cmps" and out.va != uout.va
                    and not out.write and not uout.write
                    and _in_element(out.va, ours.cpu.r[6], insn.size)
                    and _in_element(uout.va, ours.cpu.r[7], insn.size)
                    and (out.va & ~0xFFF) not in ref.mapped):
                # cmps reads [esi] and [edi]; the SDM does not order the two
                # reads.  The core reads [esi] (its first operand) first,
                # QEMU [edi]: when both fault each reports its first.
                uout = Outcome("fault", 14, out.va, False, out.present if out.va >= UTOP
                               else False, uout.detail + " (cmps: [esi] taken)")
            if out.va >= UTOP and uout.va == out.va and out.present and not uout.present:
                # JOS maps its kernel above UTOP: a user access there is a
                # protection fault; Unicorn has nothing mapped there.
                uout.present = True
            if (out.va, out.write, out.present) != (uout.va, uout.write, uout.present):
                self.fail(step, start, raw, f"fault: ours {out}, unicorn {uout}", pre)
        c = ours.cpu
        uc_eip, uc_regs, uc_fl = ref.state()
        if c.eip != start or uc_eip != start:
            self.fail(step, start, raw, f"fault eip: ours={c.eip:#x} unicorn={uc_eip:#x} "
                      f"(instruction at {start:#x})", pre)
        if not rep:
            # jmig's contract: a faulting instruction changes nothing at all.
            if ours.state() != pre:
                self.fail(step, start, raw, "the faulting instruction changed registers or flags "
                          f"(after: {_fmt_regs(c.r)} eflags={c.eflags:08x})", pre)
            for va, data in ours.pages().items():
                d = _first_byte_diff(va, data, pre_pages[va])
                if d:
                    self.fail(step, start, raw, "the faulting instruction changed memory: "
                              + d.replace("unicorn", "before"), pre)
            # QEMU's popa writes each register as it pops it: when a later
            # pop faults, Unicorn's registers are partly updated (a CPU's
            # are not, and the core's are checked above).
            for k in range(8) if insn is None or insn.op != "popa" else ():
                if c.r[k] != uc_regs[k]:
                    self.fail(step, start, raw, f"register {REG_NAMES[k]} at the fault: "
                              f"ours={c.r[k]:#010x} unicorn={uc_regs[k]:#010x}", pre)
        else:
            # A rep instruction faults after the iterations it completed
            # (registers show them); Unicorn may have stored part of the
            # faulting element, ours must not have touched it.
            skip = ()
            if insn.op in ("movs", "stos"):
                edi = c.r[7]
                skip = ((edi, edi + insn.size),)
                for a in range(edi, edi + insn.size):
                    a &= M32
                    page = a & ~0xFFF
                    if page in pre_pages and ours.page(page)[a & 0xFFF] != pre_pages[page][a & 0xFFF]:
                        self.fail(step, start, raw, f"the faulting element at {a:#x} was written", pre)
            self.compare_state(step, start, raw, pre, mask, skip_mem=skip)
        return out

    def run(self, max_steps: int) -> Result:
        for step in range(max_steps):
            out = self.step(step)
            if out.kind in ("fault", "unsupported"):
                return Result(out.kind, step, out, self.ours, self.ref)
            if out.kind == "int" and out.trapno == 0x30 and self.stop_at_syscall:
                return Result("syscall", step + 1, out, self.ours, self.ref)
        return Result("steps", max_steps, None, self.ours, self.ref)


def run_both(machine: Machine, max_steps: int = 1000, *, stop_at_syscall: bool = True,
             pooled: bool = False) -> Result:
    """Step jmig's core and Unicorn in lockstep from `machine` (see module doc).
    pooled: take Unicorn from (and give it back to) a pool of instances with
    the same memory layout; the result's `ref` is then unusable."""
    c = Comparer(machine, ref=Ref(machine, pooled=True) if pooled else None)
    c.stop_at_syscall = stop_at_syscall
    res = c.run(max_steps)
    if pooled:
        c.ref.release()
    return res


# -- small helpers for tests -------------------------------------------------------------------------

def make_machine(code: bytes, *, code_va: int = 0x800000, data: dict | None = None,
                 regs=None, eflags: int = 0x202, ro_code: bool = True, eip: int | None = None,
                 note: str = "") -> Machine:
    """A machine with `code` at code_va (pages as needed) and data pages
    {va: (bytes or None, writable)}."""
    m = Machine(eip=code_va if eip is None else eip, regs=list(regs or [0] * 8), eflags=eflags)
    first = code_va & ~0xFFF
    last = (code_va + max(len(code), 1) - 1) & ~0xFFF
    pages = {}
    for va in range(first, last + PGSIZE, PGSIZE):
        pages[va] = bytearray(PGSIZE)
    for k, b in enumerate(code):
        a = code_va + k
        pages[a & ~0xFFF][a & 0xFFF] = b
    for va, buf in pages.items():
        m.map(va, bytes(buf), not ro_code)
    for va, (content, w) in (data or {}).items():
        m.map(va, content, w)
    m.code = (code_va, bytes(code))
    m.note = note
    return m

