"""Decoder for 32-bit protected-mode user code.

One table (`ONE_BYTE`, `TWO_BYTE` and the group tables) maps opcodes to an
operation name and operand specifications in the Intel manual's notation
(Appendix A, "Opcode Map").  `decode(buf, addr)` turns bytes into an `Insn`;
the code generator, the disassembler and the tests are all driven by it.

Operand specifications:
    Eb Ew Ed Ev   ModR/M r/m operand of 8, 16, 32 or operand-size bits
    Gb Gw Gv      ModR/M reg field as a general register
    M             ModR/M memory operand only (lea); a register form is #UD
    Sw            ModR/M reg field as a segment register
    Ib Iw Iz      immediate of 8, 16, 16/32 bits; Ibs is sign-extended to v
    Iv            immediate of the full operand size (mov r, imm)
    Jb Jz         relative branch target of 8 or 16/32 bits
    Ob Ov         absolute memory offset (moffs32)
    Zb Zv Zd      register from the low 3 bits of the opcode
    AL eAX CL     fixed registers; `1` is the constant one (shift by one)

Prefixes: 66 (operand size), f2/f3 (repne/rep), f0 (lock), segment
overrides 26 2e 36 3e 64 65 (all flat: in a JOS env ds, es, ss, fs and gs
hold the user data selector, base 0).  The 67 address-size
prefix (16-bit addressing) is not supported: #UD.

Not implemented, decoded as `(bad)` with trap 6 (#UD): x87/MMX/SSE, BCD
adjust (daa das aaa aas aam aad), bound, arpl, far call/jmp/ret, les/lds,
into, cpuid, rdtsc, sysenter, icebp.  Privileged or I/O
instructions are decoded as `(bad)` with trap 13 (#GP, error 0): in, out,
ins, outs, cli, sti, hlt, iret, lgdt/lidt/lmsw/invlpg, lldt/ltr, clts,
invd/wbinvd, mov to/from control and debug registers, rdmsr/wrmsr/rdpmc.
"""
from __future__ import annotations

from .insn import (
    IMM, MEM, REG, REL, REP, SREG, Insn, Operand,
)

MAX_LEN = 15


class Truncated(Exception):
    """The buffer ended before the instruction did; fetch more bytes."""


# --------------------------------------------------------------------------
# The tables.

ALU = ("add", "or", "adc", "sbb", "and", "sub", "xor", "cmp")
SHIFTS = ("rol", "ror", "rcl", "rcr", "shl", "shr", "shl", "sar")  # /6 is sal = shl

UD = ("(bad)", 6)          # undefined or not implemented: #UD
GP = ("(bad)", 13)         # privileged: #GP(0)

ONE_BYTE: dict[int, tuple] = {}
for i, name in enumerate(ALU):
    b = i * 8
    ONE_BYTE[b + 0] = (name, "Eb Gb")
    ONE_BYTE[b + 1] = (name, "Ev Gv")
    ONE_BYTE[b + 2] = (name, "Gb Eb")
    ONE_BYTE[b + 3] = (name, "Gv Ev")
    ONE_BYTE[b + 4] = (name, "AL Ib")
    ONE_BYTE[b + 5] = (name, "eAX Iz")
ONE_BYTE.update({
    0x06: ("push", "ES"), 0x07: ("pop", "ES"), 0x0E: ("push", "CS"),
    0x16: ("push", "SS"), 0x17: ("pop", "SS"), 0x1E: ("push", "DS"), 0x1F: ("pop", "DS"),
    0x27: UD, 0x2F: UD, 0x37: UD, 0x3F: UD,
    0x60: ("pusha", ""), 0x61: ("popa", ""), 0x62: UD, 0x63: UD,
    0x68: ("push", "Iz"), 0x69: ("imul3", "Gv Ev Iz"),
    0x6A: ("push", "Ibs"), 0x6B: ("imul3", "Gv Ev Ibs"),
    0x6C: GP, 0x6D: GP, 0x6E: GP, 0x6F: GP,
    0x84: ("test", "Eb Gb"), 0x85: ("test", "Ev Gv"),
    0x86: ("xchg", "Eb Gb"), 0x87: ("xchg", "Ev Gv"),
    0x88: ("mov", "Eb Gb"), 0x89: ("mov", "Ev Gv"),
    0x8A: ("mov", "Gb Eb"), 0x8B: ("mov", "Gv Ev"),
    0x8C: ("movsr", "Ev Sw"), 0x8D: ("lea", "Gv M"), 0x8E: ("movsr", "Sw Ew"),
    0x90: ("nop", ""),
    0x98: ("cwde", ""), 0x99: ("cdq", ""), 0x9A: UD, 0x9B: UD,
    0x9C: ("pushf", ""), 0x9D: ("popf", ""), 0x9E: ("sahf", ""), 0x9F: ("lahf", ""),
    0xA0: ("mov", "AL Ob"), 0xA1: ("mov", "eAX Ov"),
    0xA2: ("mov", "Ob AL"), 0xA3: ("mov", "Ov eAX"),
    0xA4: ("movs", "b"), 0xA5: ("movs", "v"), 0xA6: ("cmps", "b"), 0xA7: ("cmps", "v"),
    0xA8: ("test", "AL Ib"), 0xA9: ("test", "eAX Iz"),
    0xAA: ("stos", "b"), 0xAB: ("stos", "v"), 0xAC: ("lods", "b"), 0xAD: ("lods", "v"),
    0xAE: ("scas", "b"), 0xAF: ("scas", "v"),
    0xC2: ("ret", "Iw"), 0xC3: ("ret", ""), 0xC4: UD, 0xC5: UD,
    0xC8: ("enter", "Iw Ib"), 0xC9: ("leave", ""), 0xCA: UD, 0xCB: UD,
    0xCC: ("int3", ""), 0xCD: ("int", "Ib"), 0xCE: UD, 0xCF: GP,
    0xD4: UD, 0xD5: UD, 0xD6: UD, 0xD7: ("xlat", ""),
    0xE0: ("loopne", "Jb"), 0xE1: ("loope", "Jb"), 0xE2: ("loop", "Jb"), 0xE3: ("jecxz", "Jb"),
    0xE4: GP, 0xE5: GP, 0xE6: GP, 0xE7: GP,
    0xE8: ("call", "Jz"), 0xE9: ("jmp", "Jz"), 0xEA: UD, 0xEB: ("jmp", "Jb"),
    0xEC: GP, 0xED: GP, 0xEE: GP, 0xEF: GP,
    0xF1: UD, 0xF4: GP, 0xF5: ("cmc", ""),
    0xF8: ("clc", ""), 0xF9: ("stc", ""), 0xFA: GP, 0xFB: GP, 0xFC: ("cld", ""), 0xFD: ("std", ""),
})
for r in range(8):
    ONE_BYTE[0x40 + r] = ("inc", "Zv")
    ONE_BYTE[0x48 + r] = ("dec", "Zv")
    ONE_BYTE[0x50 + r] = ("push", "Zv")
    ONE_BYTE[0x58 + r] = ("pop", "Zv")
    ONE_BYTE[0xB0 + r] = ("mov", "Zb Ib")
    ONE_BYTE[0xB8 + r] = ("mov", "Zv Iv")
    if r:
        ONE_BYTE[0x90 + r] = ("xchg", "Zv eAX")
for cc in range(16):
    ONE_BYTE[0x70 + cc] = ("jcc", "Jb", cc)
for op in range(0xD8, 0xE0):
    ONE_BYTE[op] = UD                       # x87

# Groups: opcode -> (operand spec, 8 entries indexed by ModR/M.reg)
GROUPS: dict[int, tuple[str, tuple]] = {
    0x80: ("Eb Ib", ALU), 0x81: ("Ev Iz", ALU), 0x82: ("Eb Ib", ALU), 0x83: ("Ev Ibs", ALU),
    0x8F: ("Ev", ("pop", UD, UD, UD, UD, UD, UD, UD)),
    0xC0: ("Eb Ib", SHIFTS), 0xC1: ("Ev Ib", SHIFTS),
    0xC6: ("Eb Ib", ("mov", UD, UD, UD, UD, UD, UD, UD)),
    0xC7: ("Ev Iz", ("mov", UD, UD, UD, UD, UD, UD, UD)),
    0xD0: ("Eb 1", SHIFTS), 0xD1: ("Ev 1", SHIFTS),
    0xD2: ("Eb CL", SHIFTS), 0xD3: ("Ev CL", SHIFTS),
    0xF6: ("Eb", ("test", "test", "not", "neg", "mul", "imul", "div", "idiv")),
    0xF7: ("Ev", ("test", "test", "not", "neg", "mul", "imul", "div", "idiv")),
    0xFE: ("Eb", ("inc", "dec", UD, UD, UD, UD, UD, UD)),
    0xFF: ("Ev", ("inc", "dec", "calli", UD, "jmpi", UD, "push", UD)),
}
GROUP_TEST_IMM = {0xF6: "Ib", 0xF7: "Iz"}     # test r/m, imm in group 3 /0 and /1

TWO_BYTE: dict[int, tuple] = {
    0x06: GP, 0x08: GP, 0x09: GP, 0x0B: UD, 0x0D: ("nop", "Ev"),
    0x20: GP, 0x21: GP, 0x22: GP, 0x23: GP,
    0x30: GP, 0x31: UD, 0x32: GP, 0x33: GP, 0x34: UD, 0x35: UD,
    0xA0: ("push", "FS"), 0xA1: ("pop", "FS"), 0xA2: UD,
    0xA8: ("push", "GS"), 0xA9: ("pop", "GS"),
    0xA3: ("bt", "Ev Gv"), 0xA4: ("shld", "Ev Gv Ib"), 0xA5: ("shld", "Ev Gv CL"),
    0xAB: ("bts", "Ev Gv"), 0xAC: ("shrd", "Ev Gv Ib"), 0xAD: ("shrd", "Ev Gv CL"),
    0xAF: ("imul2", "Gv Ev"),
    0xB0: ("cmpxchg", "Eb Gb"), 0xB1: ("cmpxchg", "Ev Gv"),
    0xB3: ("btr", "Ev Gv"), 0xB6: ("movzx", "Gv Eb"), 0xB7: ("movzx", "Gv Ew"),
    0xBB: ("btc", "Ev Gv"), 0xBC: ("bsf", "Gv Ev"), 0xBD: ("bsr", "Gv Ev"),
    0xBE: ("movsx", "Gv Eb"), 0xBF: ("movsx", "Gv Ew"),
    0xC0: ("xadd", "Eb Gb"), 0xC1: ("xadd", "Ev Gv"),
}
for op in range(0x18, 0x20):
    TWO_BYTE[op] = ("nop", "Ev")            # hint NOPs, incl. nopl and endbr32
for cc in range(16):
    TWO_BYTE[0x40 + cc] = ("cmovcc", "Gv Ev", cc)
    TWO_BYTE[0x80 + cc] = ("jcc", "Jz", cc)
    TWO_BYTE[0x90 + cc] = ("setcc", "Eb", cc)
for r in range(8):
    TWO_BYTE[0xC8 + r] = ("bswap", "Zv")

TWO_BYTE_GROUPS: dict[int, tuple[str, tuple]] = {
    0x00: ("Ew", (UD, UD, GP, GP, UD, UD, UD, UD)),          # sldt str lldt ltr verr verw
    0x01: ("Ev", (UD, UD, GP, GP, UD, UD, GP, GP)),          # sgdt sidt lgdt lidt smsw - lmsw invlpg
    0xBA: ("Ev Ib", (UD, UD, UD, UD, "bt", "bts", "btr", "btc")),
}

# Operations that accept a lock prefix when their destination is memory.
LOCKABLE = frozenset({"add", "or", "adc", "sbb", "and", "sub", "xor", "not", "neg",
                      "inc", "dec", "xchg", "xadd", "cmpxchg", "bts", "btr", "btc"})
STRING_OPS = frozenset({"movs", "cmps", "stos", "lods", "scas"})

_PREFIX_SEG = {0x26: 0, 0x2E: 1, 0x36: 2, 0x3E: 3, 0x64: 4, 0x65: 5}
_FIXED_REGS = {"AL": (0, 1), "CL": (1, 1), "eAX": (0, 0)}   # (reg, size or 0 = v)
_SREG_NAMES = {"ES": 0, "CS": 1, "SS": 2, "DS": 3, "FS": 4, "GS": 5}


def _bad(addr: int, raw: bytes, trap: int, err: int = 0) -> Insn:
    return Insn(addr=addr, length=len(raw), raw=raw, op="(bad)", trap=trap, err=err)


class _Reader:
    """Bytes of one instruction, bounded by the buffer and by MAX_LEN."""
    __slots__ = ("buf", "pos", "start")

    def __init__(self, buf: bytes, start: int = 0):
        self.buf = buf
        self.pos = start
        self.start = start

    def take(self, n: int) -> int:
        pos = self.pos
        end = pos + n
        if end - self.start > MAX_LEN:
            raise _TooLong
        if end > len(self.buf):
            raise Truncated
        self.pos = end
        return int.from_bytes(self.buf[pos:end], "little")


class _TooLong(Exception):
    pass


def decode(buf: bytes, addr: int) -> Insn:
    """Decode the instruction at the start of `buf`, which sits at `addr`.

    Returns an Insn; undefined or unsupported encodings come back as op
    "(bad)" with trap 6 (or 13 for privileged ones), never as an exception.
    Raises Truncated if `buf` ends before the instruction does and holds
    fewer than MAX_LEN bytes (the caller fetches the next page and retries).
    """
    rd = _Reader(buf)
    try:
        return _decode(rd, addr)
    except _TooLong:
        # More than 15 bytes: #GP(0) on a real CPU.
        return _bad(addr, bytes(buf[:MAX_LEN]), 13)


def _decode(rd: _Reader, addr: int) -> Insn:
    opsize = 4
    rep = 0
    lock = False
    seg = -1
    while True:
        b = rd.take(1)
        if b == 0x66:
            opsize = 2
        elif b == 0xF3 or b == 0xF2:
            rep = b
        elif b == 0xF0:
            lock = True
        elif b in _PREFIX_SEG:
            seg = _PREFIX_SEG[b]
        elif b == 0x67:
            return _bad(addr, bytes(rd.buf[:rd.pos]), 6)
        else:
            break

    cond = -1
    modrm = None
    if b == 0x0F:
        b2 = rd.take(1)
        if b2 in TWO_BYTE_GROUPS:
            spec, names = TWO_BYTE_GROUPS[b2]
            modrm = rd.take(1)
            entry = names[(modrm >> 3) & 7]
        else:
            entry = TWO_BYTE.get(b2, UD)
            spec = None
        opcode = 0x0F00 | b2
    elif b in GROUPS:
        spec, names = GROUPS[b]
        modrm = rd.take(1)
        reg = (modrm >> 3) & 7
        entry = names[reg]
        if b in GROUP_TEST_IMM and reg < 2:
            spec = spec + " " + GROUP_TEST_IMM[b]
        opcode = b
    else:
        entry = ONE_BYTE.get(b, UD)
        spec = None
        opcode = b

    if isinstance(entry, str):
        name = entry
    else:
        name = entry[0]
        if name == "(bad)":
            # Consume a ModR/M byte for group encodings so the length is sane.
            return _bad(addr, bytes(rd.buf[:rd.pos]), entry[1])
        spec = entry[1]
        if len(entry) > 2:
            cond = entry[2]

    if name == "nop" and opcode == 0x90 and rep == REP:
        name = "pause"

    ops = []
    size = opsize
    if name in STRING_OPS:
        size = 1 if spec == "b" else opsize
        spec = ""
    elif name == "xlat":
        size = 1

    specs = spec.split() if spec else []
    needs_modrm = any(s[0] in "EGMS" and s not in _SREG_NAMES for s in specs)
    if needs_modrm and modrm is None:
        modrm = rd.take(1)
    mem = None
    if modrm is not None and (modrm >> 6) != 3:
        mem = _modrm_mem(rd, modrm, seg)
    rel_size = 0
    for s in specs:
        o = _operand(s, rd, opcode, modrm, mem, opsize, seg)
        if o is None:
            return _bad(addr, bytes(rd.buf[:rd.pos]), 6)
        if s[0] == "J":
            rel_size = o
            ops.append(None)
        else:
            ops.append(o)
    length = rd.pos
    raw = bytes(rd.buf[:length])
    if rel_size:
        rel = int.from_bytes(raw[length - rel_size:], "little", signed=True)
        target = (addr + length + rel) & 0xFFFFFFFF
        if opsize == 2 and name in ("jmp", "call", "jcc", "loop", "loope", "loopne", "jecxz"):
            target &= 0xFFFF        # SDM: a 16-bit operand size truncates EIP
        ops[ops.index(None)] = Operand(REL, 4, imm=target)

    if name == "movsr":
        sreg = ops[0] if ops[0].kind == SREG else ops[1]
        if sreg.reg > 5 or (ops[0].kind == SREG and sreg.reg == 1):
            return _bad(addr, raw, 6)          # mov to cs, or sreg 6/7
        if ops[1].kind == SREG and ops[0].kind == MEM:
            ops[0] = Operand(MEM, 2, base=ops[0].base, index=ops[0].index,
                             scale=ops[0].scale, disp=ops[0].disp, seg=ops[0].seg)
    # The operand size of the operation: its first operand's, except where
    # the first operand is an immediate or a segment register, or none.
    if ops and ops[0].kind in (REG, MEM):
        size = ops[0].size
    if name in ("ret", "enter", "leave", "pusha", "popa", "pushf", "popf", "call", "calli",
                "jmp", "jmpi", "jcc", "push", "pop") and not (ops and ops[0].kind in (REG, MEM)):
        size = opsize

    if lock and not (name in LOCKABLE and ops and ops[0].kind == MEM):
        return _bad(addr, raw, 6)
    if name in ("jcc", "setcc", "cmovcc") and cond < 0:
        raise AssertionError("condition missing in table")
    return Insn(addr=addr, length=length, raw=raw, op=name, ops=tuple(ops), size=size,
                cond=cond, rep=rep if (name in STRING_OPS or name == "pause") else 0,
                lock=lock, seg=seg)


def _modrm_mem(rd: _Reader, modrm: int, seg: int) -> tuple:
    """Parse the addressing part after a ModR/M byte whose mod != 3."""
    mod = modrm >> 6
    rm = modrm & 7
    base = index = -1
    scale = 1
    if rm == 4:
        sib = rd.take(1)
        scale = 1 << (sib >> 6)
        index = (sib >> 3) & 7
        if index == 4:
            index = -1
        base = sib & 7
        if base == 5 and mod == 0:
            base = -1
            disp = rd.take(4)
        else:
            disp = 0
    elif rm == 5 and mod == 0:
        disp = rd.take(4)
    else:
        base = rm
        disp = 0
    if mod == 1:
        d = rd.take(1)
        disp = (d - 0x100 if d & 0x80 else d) & 0xFFFFFFFF
    elif mod == 2:
        disp = rd.take(4)
    if index == -1:
        scale = 1
    return (base, index, scale, disp, seg)


def _operand(s: str, rd: _Reader, opcode: int, modrm, mem, opsize: int, seg: int):
    """Build one operand; returns None for an impossible form (#UD), or the
    byte count of a relative offset for J operands (fixed up by the caller)."""
    kind = s[0]
    if s in _FIXED_REGS:
        reg, sz = _FIXED_REGS[s]
        return Operand(REG, sz or opsize, reg=reg)
    if s in _SREG_NAMES:
        return Operand(SREG, 2, reg=_SREG_NAMES[s])
    if s == "1":
        return Operand(IMM, 1, imm=1)
    if kind in "EM":
        if s == "M":
            size = opsize
        else:
            size = {"b": 1, "w": 2, "d": 4, "v": opsize}[s[1]]
        if mem is None:
            if s == "M":
                return None
            return Operand(REG, size, reg=modrm & 7)
        base, index, scale, disp, sg = mem
        return Operand(MEM, size, base=base, index=index, scale=scale, disp=disp, seg=sg)
    if kind == "G":
        size = {"b": 1, "w": 2, "d": 4, "v": opsize}[s[1]]
        return Operand(REG, size, reg=(modrm >> 3) & 7)
    if s == "Sw":
        return Operand(SREG, 2, reg=(modrm >> 3) & 7)
    if kind == "Z":
        size = {"b": 1, "d": 4, "v": opsize}[s[1]]
        return Operand(REG, size, reg=opcode & 7)
    if kind == "I":
        if s == "Ib":
            return Operand(IMM, 1, imm=rd.take(1))
        if s == "Ibs":
            v = rd.take(1)
            v = (v - 0x100 if v & 0x80 else v) & ((1 << (opsize * 8)) - 1)
            return Operand(IMM, opsize, imm=v)
        if s == "Iw":
            return Operand(IMM, 2, imm=rd.take(2))
        # Iz and Iv are the same in 32-bit code.
        return Operand(IMM, opsize, imm=rd.take(opsize))
    if kind == "J":
        if s == "Jb":
            rd.take(1)
            return 1
        rd.take(opsize)
        return opsize
    if kind == "O":
        size = 1 if s == "Ob" else opsize
        return Operand(MEM, size, disp=rd.take(4), seg=seg)
    raise AssertionError(f"unknown operand spec {s}")

