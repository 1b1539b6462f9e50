"""Random x86 instruction sequences over the subset jmig's core implements.

`build_from_blocks(blocks, state_seed)` returns a `Machine` (see
unicorn_ref.py): a random sequence of instructions followed by
`int $0x30`, random registers, eflags and memory.  The sequence is a list
of blocks, (family, seed) pairs; each block is an instruction of that
family (with the instructions that set up its operands), generated from
random.Random(seed).  The tests draw the blocks with Hypothesis, so a
failure shrinks to the fewest, simplest blocks.  `build_case(rnd, ...)`
draws everything from one random.Random-like object.

Memory layout of every case:
    0x800000-0x801fff  code, read-only in most cases, writable in some (so
                       that stores may rewrite code); a sequence may start
                       just before 0x801000 so that instructions straddle
                       the pages
    0x8ff000           unmapped
    0x900000-0x902fff  data, writable
    0x903000           data, read-only
    0x904000           unmapped
Registers and memory operands are biased towards the data pages (a memory
operand is preceded, often, by `mov $addr, %base` / `mov $n, %index` so that
it lands there) while some land on the read-only page, straddle a page
boundary or hit unmapped memory and fault.

Relative branches (jcc, jmp, call, loop, jecxz) target instructions of the
sequence or its end; `call *%reg`/`jmp *mem` get their target through a
preceding `mov $target, ...`.  A 0x66-prefixed branch truncates eip to 16
bits and so jumps to an unmapped low address (a fetch fault on both).

Not generated, because Unicorn cannot model them as a JOS env sees them
(tested directly against the core in test_differential.py instead): segment
register loads and stores (Unicorn's selectors are not JOS's 0x1b/0x23),
privileged and I/O instructions, `int n` other than 3 and 0x30.  Segment
override prefixes are generated, fs and gs included: JOS's env_init_percpu
loads every data segment register with GD_UD|3, flat like Unicorn's.  Not generated because the SDM
leaves them undefined or model-specific: 16-bit bswap, f6/f7 /1 (an
undocumented alias of test), 0f 18 with a register operand and 0f 0d
(prefetch hint space), f3/f2 on non-string instructions (lzcnt and others on
newer CPUs; only `rep bsf`, which gcc emits, is generated), lock on instructions that are not lockable
(Unicorn executes e.g. `lock mov`, the SDM says #UD; the core's #UD is
tested directly).
"""
from __future__ import annotations

import random

from jmig.kernel.memlayout import PGSIZE

from .unicorn_ref import Machine

CODE_VA = 0x800000
DATA_VA = 0x900000
RO_VA = 0x903000
DATA_END = RO_VA + PGSIZE
M32 = 0xFFFFFFFF

EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI = range(8)
SPECIAL = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
           0x7FFFFFFF, 0x80000000, 0x80000001, 0xFFFFFFFE, 0xFFFFFFFF)


class Br:
    """A relative branch to instruction `pos + rel` of the sequence."""
    __slots__ = ("prefix", "size", "rel")

    def __init__(self, prefix: bytes, size: int, rel: int):
        self.prefix, self.size, self.rel = prefix, size, rel


class Abs:
    """prefix + the absolute address of instruction `pos + rel` + suffix."""
    __slots__ = ("prefix", "rel", "suffix")

    def __init__(self, prefix: bytes, rel: int, suffix: bytes = b""):
        self.prefix, self.rel, self.suffix = prefix, rel, suffix


def _imm(v: int, n: int) -> bytes:
    return (v & ((1 << (8 * n)) - 1)).to_bytes(n, "little")


class Gen:
    def __init__(self, rnd):
        self.r = rnd
        self.items: list = []
        self.addr_regs: set = set()     # registers of the last memory operand

    # -- randomness helpers
    def chance(self, p: float) -> bool:
        return self.r.random() < p

    def pick(self, seq):
        return seq[self.r.randrange(len(seq))]

    def pointer(self) -> int:
        r = self.r
        c = r.random()
        if c < 0.88:
            a = DATA_VA + r.randrange(0x3000)
        elif c < 0.92:
            a = RO_VA + r.randrange(0x1000)
        elif c < 0.965:
            a = self.pick((DATA_VA, DATA_VA + 0x1000, DATA_VA + 0x2000, RO_VA, DATA_END)) \
                + r.randint(-6, 5)
        else:
            a = self.pick((DATA_VA - r.randint(1, 64), DATA_END + r.randrange(64),
                           CODE_VA + r.randrange(0x2000), CODE_VA + r.randrange(0x80),
                           r.getrandbits(32)))
        if self.chance(0.5):
            a &= ~3
        return a & M32

    def value(self) -> int:
        c = self.r.random()
        if c < 0.40:
            return self.pointer()
        if c < 0.65:
            return self.r.randint(-8, 64) & M32
        if c < 0.80:
            return self.pick(SPECIAL)
        return self.r.getrandbits(32)

    def imm(self, n: int) -> bytes:
        c = self.r.random()
        if c < 0.3:
            v = self.r.randint(-4, 16)
        elif c < 0.5:
            v = self.pick(SPECIAL)
        else:
            v = self.r.getrandbits(8 * n)
        return _imm(v, n)

    def p66(self, p: float = 0.2) -> bytes:
        return b"\x66" if self.chance(p) else b""

    # -- emission
    def emit(self, b) -> None:
        self.items.append(b)

    def mov_imm(self, reg: int, v: int) -> None:
        self.emit(bytes((0xB8 + reg,)) + _imm(v, 4))

    def target(self) -> int:
        """A branch displacement in instructions: mostly forward."""
        if self.chance(0.75):
            return self.r.randint(1, 6)
        return -self.r.randint(0, 6)

    def modrm(self, reg: int, mem: bool | None = None, setup: float = 0.92) -> tuple[bytes, bool]:
        """ModR/M (+SIB +disp) with `reg` in the reg field.  May emit setup
        instructions first so that a memory operand lands in the data pages.
        Returns (bytes, is_memory)."""
        r = self.r
        if mem is None:
            mem = self.chance(0.6)
        if not mem:
            self.addr_regs = set()
            return bytes((0xC0 | reg << 3 | r.randrange(8),)), False
        mod = self.pick((0, 0, 1, 1, 2))
        rm = 4 if self.chance(0.35) else r.randrange(8)
        out = bytearray((mod << 6 | reg << 3 | rm,))
        base = index = None
        scale = 1
        if rm == 4:
            s = r.randrange(4)
            idx = r.randrange(8)
            b = r.randrange(8)
            out.append(s << 6 | idx << 3 | b)
            scale = 1 << s
            if idx != 4:
                index = idx
            if not (mod == 0 and b == 5):
                base = b
        elif not (mod == 0 and rm == 5):
            base = rm
        if mod == 0 and (rm == 5 or (rm == 4 and base is None)):
            if index is not None and self.chance(0.3):
                disp = self.pick((0, r.randint(-16, 16)))      # the index does the work
            else:
                disp = self.pointer() if self.chance(0.9) else self.value()
            out += _imm(disp, 4)
        elif mod == 1:
            disp = self.pick((0, r.randint(-8, 8), r.randint(-128, 127)))
            out += _imm(disp, 1)
        elif mod == 2:
            disp = self.pick((r.randint(-64, 0x1000), r.randint(-0x2000, 0x2000), r.getrandbits(32)))
            out += _imm(disp, 4)
        else:
            disp = 0
        self.addr_regs = {x for x in (base, index) if x is not None}
        if self.chance(setup):
            self._setup_address(base, index, scale, disp)
        return bytes(out), True

    def _setup_address(self, base, index, scale, disp) -> None:
        want = self.pointer()
        if index is not None and index == base:
            self.mov_imm(base, (want - disp) // (1 + scale))
            return
        iv = 0
        if index is not None and base is None:
            # No base: the scaled index makes the address, wrapping around
            # 4 GiB now and then.
            iv = ((want - disp) & M32) // scale
            if scale > 1 and self.chance(0.5):
                iv += self.r.randrange(scale) * ((1 << 32) // scale)
            self.mov_imm(index, iv)
            return
        if index is not None and index != ESP:
            iv = self.r.randint(-4, 16)
            self.mov_imm(index, iv)
        if base is not None and (base != ESP or self.chance(0.1)):
            self.mov_imm(base, want - disp - iv * scale)

    def seg(self, p: float = 0.05) -> bytes:
        return bytes((self.pick((0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65)),)) if self.chance(p) else b""

    def prefixes(self, *parts: bytes) -> bytes:
        parts = [p for p in parts if p]
        if len(parts) > 1 and self.chance(0.3):
            parts = parts[::-1]
        return b"".join(parts)

    # -- families ---------------------------------------------------------------
    def alu(self):
        r = self.r
        op = r.randrange(8)
        form = r.randrange(7)
        p66 = self.p66()
        if self.chance(0.1):
            # test: 84/85 (Eb,Gb / Ev,Gv), a8/a9 (al/eax, imm)
            opc = self.pick((0x84, 0x85, 0xA8, 0xA9))
            if opc == 0xA8:
                self.emit(bytes((opc,)) + self.imm(1))
            elif opc == 0xA9:
                self.emit(p66 + bytes((opc,)) + self.imm(2 if p66 else 4))
            else:
                m, _ = self.modrm(r.randrange(8))
                self.emit(p66 + bytes((opc,)) + m)
            return
        if form == 4:
            self.emit(self.prefixes(p66) + bytes((op * 8 + 4,)) + self.imm(1))
            return
        if form == 5:
            self.emit(self.prefixes(p66) + bytes((op * 8 + 5,)) + self.imm(2 if p66 else 4))
            return
        if form == 6:
            opc = self.pick((0x80, 0x81, 0x82, 0x83))
            m, mem = self.modrm(op)
            imm = self.imm(2 if p66 else 4) if opc == 0x81 else self.imm(1)
            body = bytes((opc,)) + m + imm
        else:
            m, mem = self.modrm(r.randrange(8))
            body = bytes((op * 8 + form,)) + m
        lock = b"\xf0" if mem and form in (0, 1, 6) and op != 7 and self.chance(0.1) else b""
        self.emit(self.prefixes(p66, lock, self.seg() if mem else b"") + body)

    def incdec(self):
        r = self.r
        form = r.randrange(3)
        p66 = self.p66()
        if form == 0:
            self.emit(p66 + bytes((self.pick((0x40, 0x48)) + r.randrange(8),)))
            return
        m, mem = self.modrm(r.randrange(2))
        lock = b"\xf0" if mem and self.chance(0.1) else b""
        self.emit(self.prefixes(p66, lock) + bytes((0xFE if form == 1 else 0xFF,)) + m)

    def unary(self):
        r = self.r
        sub = self.pick((0, 2, 3, 4, 5, 6, 7))
        opc = self.pick((0xF6, 0xF7))
        p66 = self.p66()
        if sub in (6, 7) and self.chance(0.6):
            # Make a quotient overflow less likely.
            self.emit(self.pick((b"\x31\xd2", b"\x99", b"\x66\x99", b"\x98",
                                 bytes((0xBA,)) + _imm(r.randint(0, 3), 4))))
        m, mem = self.modrm(sub)
        imm = b""
        if sub == 0:
            imm = self.imm(1) if opc == 0xF6 else self.imm(2 if p66 else 4)
        lock = b"\xf0" if mem and sub in (2, 3) and self.chance(0.1) else b""
        self.emit(self.prefixes(p66, lock, self.seg() if mem else b"") + bytes((opc,)) + m + imm)

    def imul(self):
        r = self.r
        p66 = self.p66()
        form = r.randrange(3)
        m, _ = self.modrm(r.randrange(8))
        if form == 0:
            self.emit(p66 + b"\x0f\xaf" + m)
        elif form == 1:
            self.emit(p66 + b"\x69" + m + self.imm(2 if p66 else 4))
        else:
            self.emit(p66 + b"\x6b" + m + self.imm(1))

    def mov(self):
        r = self.r
        p66 = self.p66()
        form = r.randrange(8)
        if form < 4:
            m, mem = self.modrm(r.randrange(8))
            self.emit(self.prefixes(p66, self.seg() if mem else b"") + bytes((0x88 + form,)) + m)
        elif form == 4:
            self.emit(bytes((0xB0 + r.randrange(8),)) + self.imm(1))
        elif form == 5:
            self.emit(p66 + bytes((0xB8 + r.randrange(8),)) + self.imm(2 if p66 else 4))
        elif form == 6:
            opc = self.pick((0xC6, 0xC7))
            m, _ = self.modrm(0)
            imm = self.imm(1) if opc == 0xC6 else self.imm(2 if p66 else 4)
            self.emit(p66 + bytes((opc,)) + m + imm)
        else:
            self.emit(self.prefixes(p66, self.seg()) + bytes((0xA0 + r.randrange(4),))
                      + _imm(self.pointer(), 4))

    def movx(self):
        r = self.r
        m, _ = self.modrm(r.randrange(8))
        self.emit(self.p66() + b"\x0f" + bytes((self.pick((0xB6, 0xB7, 0xBE, 0xBF)),)) + m)

    def lea(self):
        m, _ = self.modrm(self.r.randrange(8), mem=not self.chance(0.03), setup=0.3)
        self.emit(self.p66() + b"\x8d" + m)

    def xchg(self):
        r = self.r
        form = r.randrange(4)
        p66 = self.p66()
        if form == 0:
            self.emit(p66 + bytes((0x90 + r.randint(1, 7),)))
            return
        m, mem = self.modrm(r.randrange(8))
        lock = b"\xf0" if mem and self.chance(0.15) else b""
        opc = {1: self.pick((b"\x86", b"\x87")), 2: self.pick((b"\x0f\xc0", b"\x0f\xc1")),
               3: self.pick((b"\x0f\xb0", b"\x0f\xb1"))}[form]
        if form == 3 and self.chance(0.3):
            # Make the comparison succeed sometimes: eax = the operand's old value.
            self.emit(p66 + (b"\x8b" if opc[-1] & 1 else b"\x8a") + bytes(((m[0] & 0xC7),)) + m[1:])
        self.emit(self.prefixes(p66, lock) + opc + m)

    def stack(self):
        r = self.r
        p66 = self.p66(0.15)
        form = r.randrange(10)
        if form == 0:
            self.emit(p66 + bytes((0x50 + r.randrange(8),)))
        elif form == 1:
            self.emit(p66 + b"\x68" + self.imm(2 if p66 else 4))
        elif form == 2:
            self.emit(p66 + b"\x6a" + self.imm(1))
        elif form == 3:
            m, _ = self.modrm(6)
            self.emit(p66 + b"\xff" + m)
        elif form == 4:
            self.emit(p66 + bytes((0x58 + r.randrange(8),)))
        elif form == 5:
            m, _ = self.modrm(0)
            self.emit(p66 + b"\x8f" + m)
        elif form == 6:
            self.emit(p66 + self.pick((b"\x60", b"\x61")))
        elif form == 7:
            self.emit(p66 + self.pick((b"\x9c", b"\x9d")))
        elif form == 8:
            # pushf; modify the saved flags; popf
            self.emit(p66 + b"\x9c")
            self.emit(self.pick((b"\x81\x34\x24", b"\x81\x0c\x24", b"\x81\x24\x24"))
                      + _imm(r.getrandbits(32), 4))
            self.emit(p66 + b"\x9d")
        else:
            if self.chance(0.5):
                self.mov_imm(ESP, self.pointer())
            self.emit(p66 + self.pick((b"\x50", b"\x54", b"\x5c", b"\x8f\x04\x24",
                                       b"\xff\x34\x24", b"\x8f\x44\x24\x04", b"\x61", b"\x60")))

    def flags(self):
        self.emit(self.pick((b"\x9e", b"\x9f", b"\xf5", b"\xf8", b"\xf9", b"\xfc", b"\xfd",
                             b"\x98", b"\x66\x98", b"\x99", b"\x66\x99")))

    def shift(self):
        r = self.r
        opc = self.pick((0xC0, 0xC1, 0xD0, 0xD1, 0xD2, 0xD3))
        p66 = self.p66(0.25)
        count = self.pick((0, 1, r.randint(2, 7), 8, r.randint(9, 15), 16, r.randint(17, 31),
                           32, r.randrange(256)))
        if opc in (0xD2, 0xD3) and self.chance(0.6):
            self.emit(b"\xb1" + bytes((count,)))
        m, mem = self.modrm(r.randrange(8))
        imm = bytes((count,)) if opc in (0xC0, 0xC1) else b""
        self.emit(self.prefixes(p66, self.seg() if mem else b"") + bytes((opc,)) + m + imm)

    def shxd(self):
        r = self.r
        opc = self.pick((0xA4, 0xA5, 0xAC, 0xAD))
        p66 = self.p66(0.3)
        count = self.pick((0, 1, r.randint(2, 15), 16, r.randint(17, 31), r.randrange(256)))
        if opc in (0xA5, 0xAD) and self.chance(0.6):
            self.emit(b"\xb1" + bytes((count,)))
        m, _ = self.modrm(r.randrange(8))
        imm = bytes((count,)) if opc in (0xA4, 0xAC) else b""
        self.emit(p66 + b"\x0f" + bytes((opc,)) + m + imm)

    def bits(self):
        r = self.r
        form = r.randrange(4)
        p66 = self.p66()
        if form == 0:
            reg = r.randrange(8)
            m, mem = self.modrm(reg)
            if mem and self.chance(0.6) and reg != ESP and reg not in self.addr_regs:
                # The bit offset register addresses a bit string: keep it near.
                self.mov_imm(reg, r.randint(-200, 400))
            lock = b"\xf0" if mem and self.chance(0.1) else b""
            opc = self.pick((0xA3, 0xAB, 0xB3, 0xBB))
            self.emit(self.prefixes(p66, lock if opc != 0xA3 else b"") + b"\x0f" + bytes((opc,)) + m)
        elif form == 1:
            sub = r.randint(4, 7)
            m, mem = self.modrm(sub)
            lock = b"\xf0" if mem and sub != 4 and self.chance(0.1) else b""
            self.emit(self.prefixes(p66, lock) + b"\x0f\xba" + m + bytes((r.randrange(256),)))
        elif form == 2:
            if self.chance(0.3):
                self.emit(bytes((0xB8 + r.randrange(8),)) + _imm(0, 4))
            m, _ = self.modrm(r.randrange(8))
            # f3 0f bc (`rep bsf`, gcc's __builtin_ctz) now and then
            rep = b"\xf3" if self.chance(0.1) else b""
            self.emit(p66 + (rep + b"\x0f\xbc" if rep else b"\x0f" + self.pick((b"\xbc", b"\xbd")))
                      + m)
        else:
            self.emit(b"\x0f" + bytes((0xC8 + r.randrange(8),)))

    def cond(self):
        r = self.r
        if self.chance(0.5):
            self.pick((self.alu, self.incdec, self.shift, self.flags, self.unary))()
        cc = r.randrange(16)
        form = r.randrange(4)
        if form == 0:
            m, mem = self.modrm(r.randrange(8))
            self.emit(b"\x0f" + bytes((0x90 + cc,)) + m)
        elif form == 1:
            m, mem = self.modrm(r.randrange(8))
            self.emit(self.p66() + b"\x0f" + bytes((0x40 + cc,)) + m)
        elif form == 2:
            self.emit(Br(bytes((0x70 + cc,)), 1, self.target()))
        else:
            self.emit(Br(b"\x0f" + bytes((0x80 + cc,)), 4, self.target()))

    def string(self):
        r = self.r
        opc = self.pick((0xA4, 0xA5, 0xA6, 0xA7, 0xAA, 0xAB, 0xAC, 0xAD, 0xAE, 0xAF))
        rep = self.pick((b"", b"", b"\xf3", b"\xf3", b"\xf2"))
        p66 = self.p66(0.3) if opc & 1 else b""
        seg = self.seg(0.1) if opc in (0xA4, 0xA5, 0xA6, 0xA7, 0xAC, 0xAD) else b""
        if self.chance(0.5):
            self.emit(self.pick((b"\xfc", b"\xfd")))
        if self.chance(0.85):
            uses_esi = opc in (0xA4, 0xA5, 0xA6, 0xA7, 0xAC, 0xAD)
            uses_edi = opc not in (0xAC, 0xAD)
            src = self.pointer()
            if uses_esi:
                self.mov_imm(ESI, src)
            if uses_edi:
                same = opc in (0xA6, 0xA7) and self.chance(0.3)
                if uses_esi and self.chance(0.15):
                    dst = src + r.randint(-9, 9)        # overlapping source and destination
                else:
                    dst = src if same else self.pointer()
                self.mov_imm(EDI, dst & M32)
            if rep and self.chance(0.9):
                n = self.pick((0, 1, r.randint(2, 9), r.randint(2, 9), r.randint(10, 200),
                               r.randint(200, 3000)))
                self.mov_imm(ECX, n)
            if opc in (0xAE, 0xAF) and self.chance(0.4):
                self.emit(b"\x31\xc0")
        self.emit(self.prefixes(rep, p66, seg) + bytes((opc,)))

    def control(self):
        r = self.r
        form = r.randrange(12)
        if form == 0:
            self.emit(Br(b"\xe8", 4, self.target()))
        elif form == 1:
            reg = r.randrange(8)
            if reg != ESP:
                self.emit(Abs(bytes((0xB8 + reg,)), 1))
            self.emit(b"\xff" + bytes((0xD0 | reg,)))
        elif form == 2:
            # call/jmp *disp(%base) through a pointer stored in the data pages
            base = self.pick((EAX, ECX, EDX, EBX, EBP, ESI, EDI))
            disp = r.randint(-64, 64)
            self.mov_imm(base, DATA_VA + r.randrange(0x200, 0x2E00) - disp)
            modrm_mem = bytes((0x40 | base,)) + _imm(disp, 1)
            self.emit(Abs(b"\xc7" + bytes((0x40 | base,)) + _imm(disp, 1), 2))
            self.emit(b"\xff" + bytes((self.pick((0x10, 0x20)) | 0x40 | base,)) + _imm(disp, 1))
        elif form == 3:
            self.emit(b"\xc3")
        elif form == 4:
            self.emit(b"\xc2" + _imm(self.pick((0, 4, 8, r.randrange(0x40), r.getrandbits(16))), 2))
        elif form == 5:
            self.emit(Br(b"\xeb", 1, self.target()) if self.chance(0.5) else Br(b"\xe9", 4, self.target()))
        elif form == 6:
            reg = r.randrange(8)
            if reg != ESP:
                self.emit(Abs(bytes((0xB8 + reg,)), 1))
            self.emit(b"\xff" + bytes((0xE0 | reg,)))
        elif form == 7:
            if self.chance(0.5):
                self.mov_imm(ECX, self.pick((0, 1, 2, r.randint(3, 6))))
            self.emit(Br(bytes((self.pick((0xE0, 0xE1, 0xE2, 0xE3)),)), 1, self.target()))
        elif form == 8:
            if self.chance(0.5):
                self.mov_imm(EBP, self.pointer())
            level = self.pick((0, 0, 1, 2, 3, r.randrange(32), r.randrange(256)))
            alloc = self.pick((0, 4, 8, r.randrange(64), r.getrandbits(16)))
            self.emit(self.p66(0.15) + b"\xc8" + _imm(alloc, 2) + bytes((level,)))
        elif form == 9:
            if self.chance(0.5):
                self.mov_imm(EBP, self.pointer())
            self.emit(self.p66(0.15) + b"\xc9")
        elif form == 10:
            # call then ret later: a real subroutine
            self.emit(Br(b"\xe8", 4, 2))
            self.emit(Br(b"\xeb", 1, 2))
            self.emit(self.pick((b"\xc3", b"\xc2\x00\x00", b"\xc2\x04\x00")))
        else:
            # 16-bit operand size branches: eip is truncated to 16 bits
            self.emit(self.pick((b"\x66\xe8", b"\x66\xe9", b"\x66\x0f\x84", b"\x66\x0f\x85"))
                      + _imm(r.getrandbits(16), 2) if self.chance(0.5) else
                      self.pick((b"\x66\xeb", b"\x66\x74", b"\x66\x75", b"\x66\xe2", b"\x66\xe3",
                                 b"\x66\xe0", b"\x66\xe1")) + bytes((r.randrange(256),)))
            if self.chance(0.3):
                self.items.insert(len(self.items) - 1, self.pick((b"\x66\xc3", b"\x66\xc2\x02\x00")))

    def misc(self):
        r = self.r
        form = r.randrange(7)
        if form == 0:
            self.emit(self.pick((b"\x90", b"\x66\x90", b"\xf3\x90", b"\xf3\x0f\x1e\xfb")))
        elif form == 1:
            m, _ = self.modrm(0, setup=0.0)
            self.emit(self.p66() + b"\x0f\x1f" + m)
        elif form == 2:
            m, _ = self.modrm(r.randrange(8), setup=0.0)
            self.emit(b"\x0f" + bytes((r.randint(0x19, 0x1D),)) + m)
        elif form == 3:
            m, _ = self.modrm(r.randrange(4), mem=True, setup=0.0)
            self.emit(b"\x0f\x18" + m)
        elif form == 4:
            if self.chance(0.7):
                self.mov_imm(EBX, self.pointer())
            self.emit(self.seg(0.1) + b"\xd7")
        elif form == 5:
            self.emit(b"\xcc")
        else:
            self.emit(b"\x8d" + bytes((0x40 | r.randrange(8) << 3 | self.pick((0, 1, 2, 3, 5, 6, 7)),))
                      + bytes((r.randrange(256),)))

    def carry(self):
        """A carry that matters: cmp or sub of equal registers (CF = 0, what
        random operands almost never give) or of any two, then an
        instruction that consumes CF -- the block translator computes that
        carry from the setter's operands, not from eflags."""
        r = self.r
        regs = (0, 1, 2, 3, 5, 6, 7)                    # not esp
        a, b = self.pick(regs), self.pick(regs)
        if self.chance(0.6):
            self.emit(bytes((0x89, 0xC0 | b << 3 | a)))          # mov %b,%a: equal
        setter = self.pick((0x39, 0x29, 0x38, 0x19, 0x11))   # cmp, sub, cmp8, sbb, adc
        self.emit(self.p66(0.15) + bytes((setter, 0xC0 | b << 3 | a)))
        c, d = self.pick(regs), self.pick(regs)
        form = r.randrange(8)
        if form == 0:
            self.emit(bytes((self.pick((0x11, 0x19)), 0xC0 | d << 3 | c)))   # adc/sbb %d,%c
        elif form == 1:
            self.emit(bytes((0x83, 0xC0 | self.pick((2, 3)) << 3 | c)) + self.imm(1))
        elif form == 2:
            self.emit(bytes((0x0F, self.pick((0x92, 0x93)), 0xC0 | c)))      # setb/setae
        elif form == 3:
            self.emit(bytes((0x0F, self.pick((0x42, 0x43)), 0xC0 | c << 3 | d)))   # cmovb/ae
        elif form == 4:
            self.emit(bytes((0xD1, 0xC0 | self.pick((2, 3)) << 3 | c)))      # rcl/rcr $1
        elif form == 5:
            self.emit(b"\xf5" + bytes((0x11, 0xC0 | d << 3 | c)))           # cmc; adc
        elif form == 6:
            self.emit(bytes((0x19, 0xC0 | c << 3 | c)))                       # sbb %c,%c
        else:
            self.emit(b"\x9c")                                                # pushf


FAMILIES = ("alu", "incdec", "unary", "imul", "mov", "movx", "lea", "xchg", "stack", "flags",
            "shift", "shxd", "bits", "cond", "string", "control", "misc", "carry")


def layout(items: list, start: int) -> tuple[bytes, list[int]]:
    """Assemble items (bytes, Br, Abs) at `start`; returns the code and the
    address of every instruction."""
    n = len(items)
    addrs = []
    a = start
    for it in items:
        addrs.append(a)
        if isinstance(it, Br):
            a += len(it.prefix) + it.size
        elif isinstance(it, Abs):
            a += len(it.prefix) + 4 + len(it.suffix)
        else:
            a += len(it)
    addrs.append(a)                 # the end: int $0x30
    out = bytearray()
    for pos, it in enumerate(items):
        if isinstance(it, Br):
            tgt = addrs[min(max(pos + it.rel, 0), n)]
            nxt = addrs[pos + 1]
            rel = tgt - nxt
            if it.size == 1 and not -128 <= rel <= 127:
                rel = 0
            out += it.prefix + _imm(rel, it.size)
        elif isinstance(it, Abs):
            tgt = addrs[min(max(pos + it.rel, 0), n)]
            out += it.prefix + _imm(tgt, 4) + it.suffix
        else:
            out += it
    out += b"\xcd\x30"
    return bytes(out), addrs


def fill_memory(seed: int) -> bytes:
    """Contents of the four data pages: random bytes with zero runs, small
    numbers and pointers into the data pages sprinkled in."""
    g = random.Random(seed)
    size = DATA_END - DATA_VA
    mem = bytearray(g.randbytes(size))
    n = 20 + g.randrange(140)
    params = g.randbytes(8 * n)         # one draw for every sprinkle's choices
    for k in range(0, 8 * n, 8):
        off = int.from_bytes(params[k:k + 3], "little") % (size - 4)
        if params[k + 3] < 154:
            off &= ~3
        c = params[k + 4]
        v = int.from_bytes(params[k + 5:k + 8], "little")
        if c < 102:
            mem[off:off + 4] = (DATA_VA + v % size).to_bytes(4, "little")
        elif c < 179:
            mem[off:off + 4] = _imm(v % 69 - 4, 4)
        else:
            z = min(1 + v % 95, size - off)
            mem[off:off + z] = bytes(z)
    return bytes(mem)


def build_case(rnd, weights: dict[str, float], max_blocks: int = 12) -> tuple[Machine, int]:
    """A random machine drawn from rnd; returns it and a step limit."""
    names = list(weights)
    w = [weights[k] for k in names]
    blocks = [(rnd.choices(names, w)[0], rnd.getrandbits(32))
              for _ in range(rnd.randint(1, max_blocks))]
    return build_from_blocks(blocks, rnd.getrandbits(32))


def build_from_blocks(blocks: list[tuple[str, int]], state_seed: int) -> tuple[Machine, int]:
    """A machine whose code is one block per (family, seed) -- each block
    generated by its own random.Random(seed), so that Hypothesis can shrink
    a case block by block -- and whose registers, flags, memory and code
    address come from random.Random(state_seed)."""
    g = Gen(None)
    for fam, seed in blocks:
        g.r = random.Random(seed)
        getattr(g, fam)()
    rnd = g.r = random.Random(state_seed)
    start = CODE_VA
    if rnd.random() < 0.15:
        start = CODE_VA + 0x1000 - rnd.randint(1, 24)
    code, addrs = layout(g.items, start)
    pages = {CODE_VA: bytearray(b"\xcc" * PGSIZE), CODE_VA + PGSIZE: bytearray(b"\xcc" * PGSIZE)}
    for k, b in enumerate(code):
        a = start + k
        pages[a & ~0xFFF][a & 0xFFF] = b
    regs = [g.value() for _ in range(8)]
    sp = DATA_VA + rnd.randrange(0x100, 0x2F00)
    if rnd.random() < 0.8:
        sp &= ~3
    if rnd.random() < 0.1:
        sp = g.pointer()
    regs[ESP] = sp
    eflags = 0x202 | (rnd.getrandbits(12) & 0x8D5)
    if rnd.random() < 0.3:
        eflags |= 0x400
    seed = rnd.getrandbits(32)
    mem = fill_memory(seed)
    m = Machine(eip=start, regs=regs, eflags=eflags, frame_seed=state_seed)
    writable_code = rnd.random() < 0.2         # stores may then rewrite the code
    for va, buf in pages.items():
        m.map(va, bytes(buf), writable_code)
    for k in range(4):
        va = DATA_VA + k * PGSIZE
        m.map(va, mem[k * PGSIZE:(k + 1) * PGSIZE], va != RO_VA)
    m.code = (start, code)
    m.code_starts = frozenset(addrs)
    m.note = (f"reproduce: insngen.build_from_blocks({blocks!r}, {state_seed:#x})\n"
              f"data pages: insngen.fill_memory({seed:#x}) at {DATA_VA:#x} "
              f"(page {RO_VA:#x} read-only)")
    return m, 4 * len(g.items) + 20
