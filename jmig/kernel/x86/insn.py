"""The decoded form of one x86 instruction.

An `Insn` is what the decoder produces once per instruction address and what
the code generator (interpreter and block translator), the disassembler and
the tests all consume.  Operands are in Intel order: destination first.
"""
from __future__ import annotations

import attrs

# Operand kinds.
REG = 0     # general register: `reg` 0-7 (size 1: al cl dl bl ah ch dh bh)
MEM = 1     # memory: base/index registers (-1 = none), scale, disp, seg
IMM = 2     # immediate: `imm` already extended to the operand size, unsigned
REL = 3     # branch target: `imm` is the absolute 32-bit target address
SREG = 4    # segment register: `reg` 0 es, 1 cs, 2 ss, 3 ds, 4 fs, 5 gs


# Register numbers as the ModR/M byte encodes them.
EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI = range(8)
REG32 = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
REG16 = ("ax", "cx", "dx", "bx", "sp", "bp", "si", "di")
REG8 = ("al", "cl", "dl", "bl", "ah", "ch", "dh", "bh")
SREGS = ("es", "cs", "ss", "ds", "fs", "gs")
ES, CS, SS, DS, FS, GS = range(6)

def full_reg(n: int, size: int) -> int:
    """The 32-bit register that register n of an operand of this size is
    (part of): ah, ch, dh, bh (4-7 at size 1) are in eax, ecx, edx, ebx."""
    return n - 4 if size == 1 and n >= 4 else n


# The 16 condition codes of jcc/setcc/cmovcc, in encoding order.
CONDS = ("o", "no", "b", "ae", "e", "ne", "be", "a",
         "s", "ns", "p", "np", "l", "ge", "le", "g")

# Prefix values kept on the instruction.
REP = 0xF3
REPNE = 0xF2


@attrs.frozen(slots=True)
class Operand:
    kind: int
    size: int                 # 1, 2 or 4 bytes (MEM: size of the access)
    reg: int = -1             # REG / SREG
    base: int = -1            # MEM
    index: int = -1           # MEM
    scale: int = 1            # MEM
    disp: int = 0             # MEM: 32-bit, wrapped to unsigned
    seg: int = -1             # MEM: explicit segment override, -1 = default
    imm: int = 0              # IMM value / REL target


@attrs.frozen(slots=True)
class Insn:
    addr: int                 # address of the first byte
    length: int               # bytes, 1..15
    raw: bytes                # the instruction bytes
    op: str                   # operation, e.g. "add", "jcc", "movs", "(bad)"
    ops: tuple = ()           # operands, destination first
    size: int = 4             # operand size for implicit operands (string ops, push ...)
    cond: int = -1            # condition code 0-15 for jcc/setcc/cmovcc
    rep: int = 0              # 0, REP (f3) or REPNE (f2)
    lock: bool = False
    seg: int = -1             # segment override prefix, -1 = none
    trap: int = -1            # for op "(bad)": the trap it raises (6 or 13)
    err: int = 0              # and its error code

    @property
    def next(self) -> int:
        return (self.addr + self.length) & 0xFFFFFFFF
