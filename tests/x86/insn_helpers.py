"""Run one x86 instruction on a fresh address space, for the per-instruction
tests (tests/x86/test_insn_*.py).

    cpu = step(b"\\x01\\xd8", eax=0xFFFFFFFF, ebx=1)      # add %ebx,%eax
    assert cpu.r[EAX] == 0 and cpu.eflags & CF

The address space has, all user-accessible:

    CODE   0x00800000  code page (writable, so a test can hold data in it)
    DATA   0x00900000  two writable data pages (DATA .. DATA + 0x2000)
    RO     0x00a00000  a read-only page
    STACK  0xeebfdf00  initial esp, in the page below USTACKTOP; the
                       0x100 bytes above it are in the same page
    UNMAPPED 0x00b00000 nothing is mapped here

Expected values in the tests are worked out by hand from the Intel SDM,
never taken from the core.
"""
from __future__ import annotations

from jmig.kernel.memlayout import (
    FL_AF, FL_CF, FL_DF, FL_IF, FL_OF, FL_PF, FL_RESERVED1, FL_SF, FL_TF, FL_ZF,
    PGSIZE, PTE_U, PTE_W, USTACKTOP,
)
from jmig.kernel.pmap import AddressSpace, PhysMem
from jmig.kernel.x86.cpu import BUDGET, SYSCALL, TRAP, Cpu, Stop, run

__all__ = [
    "EAX", "ECX", "EDX", "EBX", "ESP", "EBP", "ESI", "EDI",
    "CF", "PF", "AF", "ZF", "SF", "TF", "IF", "DF", "OF", "ARITH", "BASE_FLAGS",
    "CODE", "DATA", "RO", "STACK", "UNMAPPED",
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
         eip: int = CODE, **regs: int) -> Stepped:
    """Map the pages above, place `code` at `eip` and `mem` ({va: bytes}),
    set the registers (eax=..., esp defaults to STACK) and eflags, and run
    `n` instructions (or until a trap or syscall)."""
    phys = PhysMem(64)
    space = AddressSpace(phys)
    for va, perm in ((CODE, PTE_U | PTE_W), (DATA, PTE_U | PTE_W),
                     (DATA + PGSIZE, PTE_U | PTE_W), (RO, PTE_U),
                     (USTACKTOP - PGSIZE, PTE_U | PTE_W)):
        pfn = phys.page_alloc()
        assert space.page_insert(pfn, va, perm)
    # Fill the read-only page through its frame (user writes would fault).
    ro = space.pte[RO >> 12] >> 12
    phys.mem[ro << 12:(ro + 1) << 12] = bytes(range(256)) * 16
    space.flush_tlb()
    for va, data in (mem or {}).items():
        space.write(va, data)
    space.write(eip, code)
    cpu = Cpu()
    cpu.eip = eip
    cpu.r[ESP] = STACK
    for name, value in regs.items():
        cpu.r[_REGS.index(name)] = value & 0xFFFFFFFF
    cpu.eflags = eflags
    stop = run(cpu, space, n)
    return Stepped(cpu, stop, space)
