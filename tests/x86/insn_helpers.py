"""Run one x86 instruction on a fresh address space, for the per-instruction
tests (tests/x86/test_insn_*.py), on each engine of the core.

    cpu = step(b"\\x01\\xd8", eax=0xFFFFFFFF, ebx=1)      # add %ebx,%eax
    assert cpu.r[EAX] == 0 and cpu.eflags & CF

tests/x86/conftest.py runs every test in those files three times (ENGINE):
  - "interp": the reference interpreter, `run(cpu, mmu, n)`;
  - "blocks": the block translator (`run_blocks`, compiling at first
    sight).  The snippet is ended with `int $0x30`, and so is every direct
    branch target it has, so that the translator compiles it as a block
    (and a branch's taken side too) and stops right after the n
    instructions; the stop at a terminator there (planted or the
    snippet's own) reads as the interpreter's would (budget, eip at the
    terminator).  If the run went elsewhere, it is done again with a
    budget of exactly n;
  - "blocks-mid": the same with the snippet in the middle of a block: a
    page of its own at PREFIX holds `mov %eax,%eax; jmp CODE`, execution
    starts there, and the translator compiles the jump's target into the
    same block.  Counts leave the two prefix instructions out.
On the translator, the TLB is filled for every mapped page first (so that
memory accesses run in translated code, not through a restart), and a run
in which the interpreter ran the snippet's instructions instead (the
budget's tail) fails.

The address space has, all user-accessible:

    CODE   0x00800000  code page (writable, so a test can hold data in it)
    DATA   0x00900000  two writable data pages (DATA .. DATA + 0x2000)
    RO     0x00a00000  a read-only page
    STACK  0xeebfdf00  initial esp, in the page below USTACKTOP; the
                       0x100 bytes above it are in the same page
    UNMAPPED 0x00b00000 nothing is mapped here
    PREFIX 0x00700000  (blocks-mid only) the two instructions before CODE

Expected values in the tests are worked out by hand from the Intel SDM,
never taken from the core.
"""
from __future__ import annotations

from jmig.kernel.memlayout import (
    FL_AF, FL_CF, FL_DF, FL_IF, FL_OF, FL_PF, FL_RESERVED1, FL_SF, FL_TF, FL_ZF,
    PGSIZE, PTE_A, PTE_D, PTE_U, PTE_W, USTACKTOP,
)
from jmig.kernel.pmap import AddressSpace, PhysMem
from jmig.kernel.x86 import cpu as core
from jmig.kernel.x86.cpu import BUDGET, SYSCALL, TRAP, Cpu, Stop, run, run_blocks
from jmig.kernel.x86.decode import decode

__all__ = [
    "ENGINES", "PREFIX", "EAX", "ECX", "EDX", "EBX", "ESP", "EBP", "ESI", "EDI",
    "CF", "PF", "AF", "ZF", "SF", "TF", "IF", "DF", "OF", "ARITH", "BASE_FLAGS",
    "CODE", "DATA", "RO", "STACK", "UNMAPPED", "AD_PAGES",
    "BUDGET", "SYSCALL", "TRAP", "Stepped", "step",
]

EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI = range(8)
CF, PF, AF, ZF, SF, TF, IF, DF, OF = (FL_CF, FL_PF, FL_AF, FL_ZF, FL_SF, FL_TF, FL_IF,
                                      FL_DF, FL_OF)
ARITH = CF | PF | AF | ZF | SF | OF
BASE_FLAGS = FL_IF | FL_RESERVED1          # what a new env starts with

CODE = 0x00800000
DATA = 0x00900000
RO = 0x00A00000
STACK = USTACKTOP - 0x100
UNMAPPED = 0x00B00000
PREFIX = 0x00700000
AD_PAGES = (DATA, DATA + PGSIZE, RO, USTACKTOP - PGSIZE)   # what step(fresh_ad=True) clears

ENGINES = ("interp", "blocks", "blocks-mid")
ENGINE = "interp"                          # set by tests/x86/conftest.py
TERMINATOR = b"\xcd\x30"                  # int $0x30

_REGS = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")


class Stepped:
    """The machine after the run: registers, flags, why it stopped, memory."""

    def __init__(self, cpu: Cpu, stop: Stop, mem: AddressSpace):
        self.cpu = cpu
        self.stop = stop
        self.mem = mem

    @property
    def r(self) -> list[int]:
        return self.cpu.r

    @property
    def eip(self) -> int:
        return self.cpu.eip

    @property
    def eflags(self) -> int:
        return self.cpu.eflags

    def read(self, va: int, n: int) -> bytes:
        return self.mem.read(va, n)

    def rd8(self, va: int) -> int:
        return self.mem.read(va, 1)[0]

    def rd16(self, va: int) -> int:
        return int.from_bytes(self.mem.read(va, 2), "little")

    def rd32(self, va: int) -> int:
        return int.from_bytes(self.mem.read(va, 4), "little")

    def __repr__(self) -> str:
        return f"Stepped({self.cpu!r}, {self.stop!r})"


def step(code: bytes, *, eflags: int = BASE_FLAGS, mem: dict | None = None, n: int = 1,
         eip: int = CODE, fresh_ad: bool = False, **regs: int) -> Stepped:
    """Map the pages above, place `code` at `eip` and `mem` ({va: bytes}),
    set the registers (eax=..., esp defaults to STACK) and eflags, and run
    `n` instructions (or until a trap or syscall) on ENGINE.  fresh_ad:
    clear the A and D bits of the data, read-only and stack pages (and
    their TLB entries) just before the run, so that it shows which the run
    set (the setup's own writes set them)."""
    if ENGINE == "interp":
        cpu, space, _ = _machine(code, eflags, mem, eip, regs, (), fresh_ad=fresh_ad)
        return Stepped(cpu, run(cpu, space, n), space)
    mid = ENGINE == "blocks-mid"
    pre = 2 if mid else 0
    planted = _terminators(code, eip, mem or {})
    cpu, space, ran = _machine(code, eflags, mem, eip, regs, planted, mid, fresh_ad)
    stop = _blocks(cpu, space, n + 1 + pre, ran)
    if stop.count == n + 1 + pre and (stop.reason == SYSCALL or
                                      stop.reason == TRAP and stop.trapno == 3):
        # The (n+1)th instruction was a terminator (int $0x30, int3, int $3),
        # planted or the snippet's own: it changed nothing but eip.
        cpu.eip -= 1 if stop.reason == TRAP and space.read(cpu.eip - 1, 1) == b"\xcc" else 2
        stop = Stop(BUDGET, n)
    elif stop.reason != BUDGET and stop.count <= n + pre:
        stop = _unprefixed(stop, pre)      # a trap, fault or syscall of the snippet
    else:
        cpu, space, ran = _machine(code, eflags, mem, eip, regs, planted, mid, fresh_ad)
        stop = _unprefixed(_blocks(cpu, space, n + pre, ran), pre)
    if ran[0]:
        raise AssertionError(f"the interpreter ran {ran[0]} of the snippet's instructions "
                             f"on the translator's run ({stop})")
    return Stepped(cpu, stop, space)


def _unprefixed(stop: Stop, pre: int) -> Stop:
    return Stop(stop.reason, stop.count - pre, stop.trapno, stop.err, stop.va, stop.detail)


def _terminators(code: bytes, at: int, mem: dict) -> set[int]:
    """Where to put `int $0x30`: after the code, and at each direct branch
    target of its (linearly decoded) instructions, where nothing else is."""
    spots = {at + len(code)}
    off = 0
    while off < len(code):
        insn = decode(code[off:] + bytes(16), at + off)
        if insn.op in ("jcc", "jmp", "call", "loop", "loope", "loopne", "jecxz"):
            spots.add(insn.ops[0].imm)
        off += insn.length
    used = [(at, at + len(code))] + [(va, va + len(data)) for va, data in mem.items()]
    return {a for a in spots if CODE <= a <= CODE + PGSIZE - 2
            and not any(lo < a + 2 and a < hi for lo, hi in used)}


def _blocks(cpu: Cpu, space: AddressSpace, budget: int, ran: list) -> Stop:
    """run_blocks, compiling at first sight, counting what the interpreter
    ran of it in ran[0] (the tail of a budget; not a TLB miss's restart)."""
    real = core.run

    def counting(c, m, b):
        st = real(c, m, b)
        if b > 1:
            ran[0] += st.count
        return st
    core.run = counting
    try:
        return run_blocks(cpu, space, budget, hot=0)
    finally:
        core.run = real


def _machine(code, eflags, mem, eip, regs, planted, mid=False, fresh_ad=False):
    phys = PhysMem(64)
    space = AddressSpace(phys)
    pages = [(CODE, PTE_U | PTE_W), (DATA, PTE_U | PTE_W), (DATA + PGSIZE, PTE_U | PTE_W),
             (RO, PTE_U), (USTACKTOP - PGSIZE, PTE_U | PTE_W)]
    if mid:
        pages.append((PREFIX, PTE_U | PTE_W))
    for va, perm in pages:
        pfn = phys.page_alloc()
        assert space.page_insert(pfn, va, perm)
    # Fill the read-only page through its frame (user writes would fault).
    ro = space.pte[RO >> 12] >> 12
    phys.mem[ro << 12:(ro + 1) << 12] = bytes(range(256)) * 16
    space.flush_tlb()
    for va, data in (mem or {}).items():
        space.write(va, data)
    space.write(eip, code)
    for a in planted:
        space.write(a, TERMINATOR)
    start = eip
    if mid:
        rel = (eip - (PREFIX + 7)) & 0xFFFFFFFF
        space.write(PREFIX, b"\x8b\xc0\xe9" + rel.to_bytes(4, "little"))
        start = PREFIX
    if planted or mid:
        # Every page in the TLB: memory accesses run in the translated code.
        for va, perm in pages:
            space.translate(va, bool(perm & PTE_W))
    if fresh_ad:
        for va in AD_PAGES:
            space.set_perm(va >> 12, space.pte[va >> 12] & ~(PTE_A | PTE_D))
    cpu = Cpu()
    cpu.eip = start
    cpu.r[ESP] = STACK
    for name, value in regs.items():
        cpu.r[_REGS.index(name)] = value & 0xFFFFFFFF
    cpu.eflags = eflags
    return cpu, space, [0]
