"""Semantics of every instruction, as Python source generated from an Insn.

`SEMANTICS[op](g, insn)` emits the body of one instruction through a `Gen`.
The same emitters serve the interpreter (one compiled function per
instruction, registers in the `r` list, flags in the CPU object) and the
block translator (translate.py: registers and flags in locals).

Contract of an emitted instruction, which makes faults precise:
  1. read operands and memory, compute (nothing observable changes);
  2. write memory (an instruction that writes more than one location, or
     one that may straddle pages, checks every byte first);
  3. commit: registers, flags, next eip (`Gen` defers register and flag
     writes to this point automatically).
A fault in 1 or 2 leaves every register, flag and memory byte unchanged.
"""
from __future__ import annotations

import re

from ..memlayout import FL_CF, FL_ZF
from .flags import (
    ADC, ADD, ARITH, BITS, DEC, INC, LOGIC, MASK, MUL, SAR, SBB, SHL, SHR, SIGN, SUB,
)
from .insn import IMM, MEM, REG, REL, SREG, EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI, Insn, Operand

RD = {1: "rd8", 2: "rd16", 4: "rd32"}
WR = {1: "wr8", 2: "wr16", 4: "wr32"}

# Segment registers in a JOS env: cs is GD_UT|3; ds, es, ss from the
# trapframe and fs, gs from env_init_percpu are all GD_UD|3 (flat).
SEG_VALUES = {0: 0x23, 1: 0x1B, 2: 0x23, 3: 0x23, 4: 0x23, 5: 0x23}

POPF_MASK = 0x244CD5           # CF PF AF ZF SF DF OF NT AC ID (IF, IOPL, TF kept)


class Gen:
    """Emits the Python body of one instruction (interpreter mode).

    The translator subclasses this to keep registers and flags in locals.
    """

    def __init__(self, insn: Insn):
        self.insn = insn
        self.lines: list[str] = []
        self.indent = 1
        self.ntmp = 0
        self.pending_regs: list[tuple[int, int, str]] = []
        self.pending_flags: list[str] = []
        self.next_expr: str | None = None       # None: fall through to insn.next
        self.eas: dict[int, str] = {}
        self.ends = False                       # the body ends in raise/return itself

    # -- emission ---------------------------------------------------------------
    def emit(self, line: str) -> None:
        self.lines.append("    " * self.indent + line)

    def tmp(self, expr: str | None = None) -> str:
        self.ntmp += 1
        name = f"_t{self.ntmp}"
        if expr is not None:
            self.emit(f"{name} = {expr}")
        return name

    # -- registers ----------------------------------------------------------------
    def r32(self, n: int) -> str:
        return f"r[{n}]"

    def getreg(self, n: int, size: int) -> str:
        if size == 4:
            return self.r32(n)
        if size == 2:
            return f"({self.r32(n)} & 0xFFFF)"
        if n < 4:
            return f"({self.r32(n)} & 0xFF)"
        return f"({self.r32(n - 4)} >> 8 & 0xFF)"

    def setreg(self, n: int, size: int, expr: str) -> None:
        """Deferred register write; expr is evaluated now into a temp."""
        if not _is_simple(expr):
            expr = self.tmp(expr)
        self.pending_regs.append((n, size, expr))

    def _commit_reg(self, n: int, size: int, v: str) -> None:
        if size == 4:
            self.emit(f"{self.r32(n)} = {v}")
        elif size == 2:
            R = self.r32(n)
            self.emit(f"{R} = ({R} & 0xFFFF0000) | {v}")
        elif n < 4:
            R = self.r32(n)
            self.emit(f"{R} = ({R} & 0xFFFFFF00) | {v}")
        else:
            R = self.r32(n - 4)
            self.emit(f"{R} = ({R} & 0xFFFF00FF) | ({v} << 8)")

    # -- memory -------------------------------------------------------------------
    def ea(self, op: Operand, extra: int = 0) -> str:
        """The operand's effective address (computed once per instruction)."""
        key = id(op) ^ extra
        name = self.eas.get(key)
        if name is not None:
            return name
        parts = []
        if op.base >= 0:
            parts.append(self.r32(op.base))
        if op.index >= 0:
            idx = self.r32(op.index)
            parts.append(idx if op.scale == 1 else f"{idx} * {op.scale}")
        disp = (op.disp + extra) & 0xFFFFFFFF
        if disp or not parts:
            parts.append(hex(disp))
        expr = " + ".join(parts)
        if len(parts) > 1 or (op.index >= 0 and op.scale > 1):
            # A sum, or a lone scaled index (`(,%ecx,8)`), wraps at 4 GiB.
            expr = f"({expr}) & 0xFFFFFFFF"
        name = self.tmp(expr)
        self.eas[key] = name
        return name

    def load(self, addr: str, size: int) -> str:
        return self.tmp(f"m.{RD[size]}({addr})")

    def store(self, addr: str, size: int, expr: str) -> None:
        self.emit(f"m.{WR[size]}({addr}, {expr})")

    def check_write(self, addr: str, n: int) -> None:
        self.emit(f"m.check_write({addr}, {n})")

    # -- operands -----------------------------------------------------------------
    def read(self, op: Operand) -> str:
        if op.kind == REG:
            return self.getreg(op.reg, op.size)
        if op.kind == MEM:
            return self.load(self.ea(op), op.size)
        if op.kind in (IMM, REL):
            return hex(op.imm)
        if op.kind == SREG:
            return hex(SEG_VALUES[op.reg])
        raise AssertionError(op)

    def read_tmp(self, op: Operand) -> str:
        """Like read, but always a simple name or literal (safe to reuse)."""
        v = self.read(op)
        return v if _is_simple(v) else self.tmp(v)

    def write(self, op: Operand, expr: str) -> None:
        if op.kind == REG:
            self.setreg(op.reg, op.size, expr)
        elif op.kind == MEM:
            self.store(self.ea(op), op.size, expr)
        else:
            raise AssertionError(op)

    # -- flags --------------------------------------------------------------------
    def set_lazy(self, kind: int, size: int, a: str, b: str, res: str) -> None:
        fk = kind << 3 | size
        self.pending_flags += [f"cpu.fk = {fk}", f"cpu.fa = {a}", f"cpu.fb = {b}",
                               f"cpu.fr = {res}"]

    def set_lazy_kind(self, kind: str, a: str, b: str, res: str) -> None:
        """Like set_lazy, with the kind computed at run time (adc, sbb)."""
        self.pending_flags += [f"cpu.fk = {kind}", f"cpu.fa = {a}", f"cpu.fb = {b}",
                               f"cpu.fr = {res}"]

    def eflags(self) -> str:
        """Full EFLAGS now (materialized)."""
        return self.tmp("ef_of(cpu)")

    def carry(self) -> str:
        return self.tmp("cf(cpu)")

    def set_arith(self, bits: str, mask: int = ARITH) -> None:
        """Deferred: replace the arithmetic flags in `mask` with `bits`."""
        bits = bits if _is_simple(bits) else self.tmp(bits)
        if mask == ARITH:
            # Every arithmetic flag is replaced: the old ones need not be computed.
            self.pending_flags += [f"cpu.ef = (cpu.ef & {~mask & 0xFFFFFFFF:#x}) | {bits}",
                                   "cpu.fk = 0"]
        else:
            self.pending_flags += [f"cpu.ef = (ef_of(cpu) & {~mask & 0xFFFFFFFF:#x}) | {bits}"]

    def set_ef(self, expr: str) -> None:
        """Deferred: replace the whole EFLAGS word."""
        v = expr if _is_simple(expr) else self.tmp(expr)
        self.pending_flags += ["cpu.fk = 0", f"cpu.ef = {v}"]

    def set_df(self, on: bool) -> None:
        self.pending_flags.append("cpu.ef |= 0x400" if on else "cpu.ef &= 0xFFFFFBFF")

    def cond(self, cc: int) -> str:
        return f"cc(cpu, {cc})"

    def df(self) -> str:
        return "(cpu.ef & 0x400)"

    # -- control ------------------------------------------------------------------
    def jump(self, expr: str) -> None:
        self.next_expr = expr if _is_simple(expr) else self.tmp(expr)

    def commit(self) -> None:
        for n, size, v in self.pending_regs:
            self._commit_reg(n, size, v)
        for line in self.pending_flags:
            self.emit(line)
        self.pending_regs = []
        self.pending_flags = []

    def finish(self) -> None:
        if self.ends:
            return
        self.commit()
        self.emit(f"return {self.next_expr if self.next_expr is not None else hex(self.insn.next)}")

    def fault(self, trapno: int, err: str | int = 0) -> None:
        """Raise a fault-class exception (nothing committed)."""
        self.emit(f"raise CpuTrap({trapno}, {err})")
        self.ends = True

    def softint(self, trapno: int) -> None:
        """Commit, then raise a trap-class interrupt with eip after the insn."""
        self.commit()
        self.emit(f"raise SoftInt({trapno}, {self.insn.next:#x})")
        self.ends = True

    def string_op(self, name: str) -> None:
        i = self.insn
        self.commit()
        self.emit(f"return {name}(cpu, r, m, {i.size}, {i.rep}, {i.addr:#x}, {i.next:#x})")
        self.ends = True


_SIMPLE = re.compile(r"_t\d+|0x[0-9a-fA-F]+|\d+")


def _is_simple(expr: str) -> bool:
    """A temp or a literal: safe to use after registers are committed and
    to splice into a larger expression.  (A prefix test is not enough:
    `0xffff if ... else 0` or `_t1 if _t2 else _t3` are not simple.)"""
    return _SIMPLE.fullmatch(expr) is not None


# ---------------------------------------------------------------------------------
# Semantics.  Each takes (g, insn) and emits through g.

SEMANTICS = {}


def sem(*names):
    def deco(fn):
        for n in names:
            SEMANTICS[n] = fn
        return fn
    return deco


@sem("add", "sub", "cmp", "and", "or", "xor", "adc", "sbb", "test")
def _alu(g: Gen, i: Insn):
    dst, src = i.ops
    s = i.size
    M = MASK[s]
    a = g.read_tmp(dst)
    b = g.read_tmp(src)
    op = i.op
    if op in ("add", "adc"):
        if op == "adc":
            c = g.carry()
            res = g.tmp(f"({a} + {b} + {c}) & {M:#x}")
            kind = g.tmp(f"{ADC << 3 | s} if {c} else {ADD << 3 | s}")
        else:
            res = g.tmp(f"({a} + {b}) & {M:#x}")
            kind = None
    elif op in ("sub", "cmp", "sbb"):
        if op == "sbb":
            c = g.carry()
            res = g.tmp(f"({a} - {b} - {c}) & {M:#x}")
            kind = g.tmp(f"{SBB << 3 | s} if {c} else {SUB << 3 | s}")
        elif op == "cmp":
            res = f"(({a} - {b}) & {M:#x})"         # only the flags see it
            kind = None
        else:
            res = g.tmp(f"({a} - {b}) & {M:#x}")
            kind = None
    else:
        pyop = {"and": "&", "test": "&", "or": "|", "xor": "^"}[op]
        if op == "xor" and dst == src:
            res = "0"
        elif op == "test":
            res = a if dst == src else f"({a} & {b})"
        else:
            res = g.tmp(f"{a} {pyop} {b}")
        kind = None
    if op not in ("cmp", "test"):
        g.write(dst, res)
    if kind is None:
        k = {"add": ADD, "sub": SUB, "cmp": SUB}.get(op, LOGIC)
        g.set_lazy(k, s, a, b, res)
    else:
        g.set_lazy_kind(kind, a, b, res)


@sem("inc", "dec")
def _incdec(g: Gen, i: Insn):
    dst, = i.ops
    s = i.size
    a = g.read_tmp(dst)
    c = g.carry()
    if i.op == "inc":
        res = g.tmp(f"({a} + 1) & {MASK[s]:#x}")
    else:
        res = g.tmp(f"({a} - 1) & {MASK[s]:#x}")
    g.write(dst, res)
    g.set_lazy(INC if i.op == "inc" else DEC, s, a, c, res)


@sem("neg")
def _neg(g: Gen, i: Insn):
    dst, = i.ops
    s = i.size
    b = g.read_tmp(dst)
    res = g.tmp(f"-{b} & {MASK[s]:#x}")
    g.write(dst, res)
    g.set_lazy(SUB, s, "0", b, res)


@sem("not")
def _not(g: Gen, i: Insn):
    dst, = i.ops
    a = g.read_tmp(dst)
    g.write(dst, f"{a} ^ {MASK[i.size]:#x}")


@sem("mov")
def _mov(g: Gen, i: Insn):
    dst, src = i.ops
    g.write(dst, g.read_tmp(src))


@sem("movzx")
def _movzx(g: Gen, i: Insn):
    dst, src = i.ops
    g.write(dst, g.read_tmp(src))


@sem("movsx")
def _movsx(g: Gen, i: Insn):
    dst, src = i.ops
    v = g.read_tmp(src)
    sign = SIGN[src.size]
    ext = MASK[dst.size] ^ MASK[src.size]
    g.write(dst, g.tmp(f"({v} | {ext:#x}) if {v} & {sign:#x} else {v}"))


@sem("movsr")
def _movsr(g: Gen, i: Insn):
    dst, src = i.ops
    if dst.kind == SREG:
        # Only the user data selector can be loaded: jmig keeps every data
        # segment flat and does not track selector values, so even the null
        # selector (legal in ds/es/fs/gs until used) is refused with #GP.
        v = g.read_tmp(src)
        g.emit(f"if {v} != 0x23: raise CpuTrap(13, {v} & 0xFFFC)")
    else:
        g.write(dst, hex(SEG_VALUES[src.reg]))


@sem("lea")
def _lea(g: Gen, i: Insn):
    dst, src = i.ops
    ea = g.ea(src)
    g.write(dst, ea if dst.size == 4 else f"{ea} & 0xFFFF")


@sem("xchg")
def _xchg(g: Gen, i: Insn):
    a, b = i.ops
    va = g.read_tmp(a)
    vb = g.read_tmp(b)
    # Memory (if any) is operand a for the Eb,Gb forms; write memory first.
    if b.kind == MEM:
        a, b, va, vb = b, a, vb, va
    g.write(a, vb)
    g.write(b, va)


@sem("xadd")
def _xadd(g: Gen, i: Insn):
    dst, src = i.ops
    s = i.size
    a = g.read_tmp(dst)
    b = g.read_tmp(src)
    res = g.tmp(f"({a} + {b}) & {MASK[s]:#x}")
    if dst.kind == MEM:
        g.write(dst, res)
        g.write(src, a)
    else:
        g.write(src, a)
        g.write(dst, res)
    g.set_lazy(ADD, s, a, b, res)


@sem("cmpxchg")
def _cmpxchg(g: Gen, i: Insn):
    dst, src = i.ops
    s = i.size
    acc = g.tmp(g.getreg(EAX, s))
    d = g.read_tmp(dst)
    v = g.read_tmp(src)
    res = g.tmp(f"({acc} - {d}) & {MASK[s]:#x}")
    eq = g.tmp(f"{acc} == {d}")
    if dst.kind == MEM:
        g.write(dst, g.tmp(f"{v} if {eq} else {d}"))
        g.setreg(EAX, s, f"{acc} if {eq} else {d}")
    else:
        # Accumulator first: when dst is the accumulator itself and equal,
        # the final value is src (dst written last).
        g.setreg(EAX, s, f"{acc} if {eq} else {d}")
        g.write(dst, g.tmp(f"{v} if {eq} else {d}"))
    g.set_lazy(SUB, s, acc, d, res)


@sem("push")
def _push(g: Gen, i: Insn):
    s = i.size
    src, = i.ops
    if src.kind == IMM:
        v = hex(src.imm & MASK[s])
    elif src.kind == SREG:
        v = hex(SEG_VALUES[src.reg])
    else:
        v = g.read_tmp(src)
    sp = g.tmp(f"({g.r32(ESP)} - {s}) & 0xFFFFFFFF")
    g.store(sp, s, v)
    g.setreg(ESP, 4, sp)


@sem("pop")
def _pop(g: Gen, i: Insn):
    s = i.size
    dst, = i.ops
    sp = g.r32(ESP)               # read only before the registers are committed
    v = g.load(sp, s)
    nsp = g.tmp(f"({sp} + {s}) & 0xFFFFFFFF")
    if dst.kind == SREG:
        g.emit(f"if {v} != 0x23: raise CpuTrap(13, {v} & 0xFFFC)")
        g.setreg(ESP, 4, nsp)
    elif dst.kind == MEM:
        # The address is computed with esp already incremented.
        if ESP in (dst.base, dst.index):
            ea = _ea_with_esp(g, dst, nsp)
        else:
            ea = g.ea(dst)
        g.store(ea, s, v)
        g.setreg(ESP, 4, nsp)
    else:
        g.setreg(ESP, 4, nsp)
        g.setreg(dst.reg, s, v)


def _ea_with_esp(g: Gen, op: Operand, esp: str) -> str:
    parts = []
    for reg, scale in ((op.base, 1), (op.index, op.scale)):
        if reg < 0:
            continue
        v = esp if reg == ESP else g.r32(reg)
        parts.append(v if scale == 1 else f"{v} * {scale}")
    parts.append(hex(op.disp))
    return g.tmp(f"({' + '.join(parts)}) & 0xFFFFFFFF")


@sem("pusha")
def _pusha(g: Gen, i: Insn):
    s = i.size
    sp = g.tmp(g.r32(ESP))
    base = g.tmp(f"({sp} - {8 * s}) & 0xFFFFFFFF")
    g.check_write(base, 8 * s)
    for k, reg in enumerate((EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI)):
        v = g.getreg(reg, s) if reg != ESP else (sp if s == 4 else f"{sp} & 0xFFFF")
        addr = g.tmp(f"({sp} - {(k + 1) * s}) & 0xFFFFFFFF")
        g.store(addr, s, v)
    g.setreg(ESP, 4, base)


@sem("popa")
def _popa(g: Gen, i: Insn):
    s = i.size
    sp = g.tmp(g.r32(ESP))
    vals = {}
    for k, reg in enumerate((EDI, ESI, EBP, ESP, EBX, EDX, ECX, EAX)):
        addr = g.tmp(f"({sp} + {k * s}) & 0xFFFFFFFF")
        vals[reg] = g.load(addr, s)
    for reg in (EDI, ESI, EBP, EBX, EDX, ECX, EAX):
        g.setreg(reg, s, vals[reg])
    g.setreg(ESP, 4, f"({sp} + {8 * s}) & 0xFFFFFFFF")


@sem("pushf")
def _pushf(g: Gen, i: Insn):
    s = i.size
    f = g.eflags()
    sp = g.tmp(f"({g.r32(ESP)} - {s}) & 0xFFFFFFFF")
    g.store(sp, s, f"{f} & {0xFCFFFF & MASK[s]:#x}")
    g.setreg(ESP, 4, sp)


@sem("popf")
def _popf(g: Gen, i: Insn):
    s = i.size
    sp = g.tmp(g.r32(ESP))
    v = g.load(sp, s)
    f = g.eflags()
    mask = POPF_MASK & MASK[s]
    g.setreg(ESP, 4, f"({sp} + {s}) & 0xFFFFFFFF")
    g.set_ef(f"({f} & {~mask & 0xFFFFFFFF:#x}) | ({v} & {mask:#x})")


@sem("sahf")
def _sahf(g: Gen, i: Insn):
    ah = g.tmp(g.getreg(4, 1))
    g.set_arith(f"{ah} & 0xD5", 0xD5)


@sem("lahf")
def _lahf(g: Gen, i: Insn):
    f = g.eflags()
    g.setreg(4, 1, f"({f} & 0xD5) | 2")


@sem("cwde")
def _cwde(g: Gen, i: Insn):
    if i.size == 4:
        v = g.tmp(g.getreg(EAX, 2))
        g.setreg(EAX, 4, f"({v} | 0xFFFF0000) if {v} & 0x8000 else {v}")
    else:
        v = g.tmp(g.getreg(EAX, 1))
        g.setreg(EAX, 2, f"({v} | 0xFF00) if {v} & 0x80 else {v}")


@sem("cdq")
def _cdq(g: Gen, i: Insn):
    s = i.size
    g.setreg(EDX, s, f"{MASK[s]:#x} if {g.getreg(EAX, s)} & {SIGN[s]:#x} else 0")


@sem("call")
def _call(g: Gen, i: Insn):
    s = i.size
    tgt = g.read_tmp(i.ops[0])
    sp = g.tmp(f"({g.r32(ESP)} - {s}) & 0xFFFFFFFF")
    g.store(sp, s, hex(i.next & MASK[s]))
    g.setreg(ESP, 4, sp)
    g.jump(tgt)


@sem("calli")
def _calli(g: Gen, i: Insn):
    _call(g, i)


@sem("jmp", "jmpi")
def _jmp(g: Gen, i: Insn):
    g.jump(g.read_tmp(i.ops[0]))


@sem("jcc")
def _jcc(g: Gen, i: Insn):
    g.jump(f"{i.ops[0].imm:#x} if {g.cond(i.cond)} else {i.next:#x}")


@sem("jecxz")
def _jecxz(g: Gen, i: Insn):
    g.jump(f"{i.ops[0].imm:#x} if {g.r32(ECX)} == 0 else {i.next:#x}")


@sem("loop", "loope", "loopne")
def _loop(g: Gen, i: Insn):
    c = g.tmp(f"({g.r32(ECX)} - 1) & 0xFFFFFFFF")
    cond = f"{c}"
    if i.op == "loope":
        cond = f"{c} and {g.cond(4)}"
    elif i.op == "loopne":
        cond = f"{c} and {g.cond(5)}"
    g.jump(f"{i.ops[0].imm:#x} if ({cond}) else {i.next:#x}")
    g.setreg(ECX, 4, c)


@sem("ret")
def _ret(g: Gen, i: Insn):
    s = i.size
    sp = g.r32(ESP)               # read only before the registers are committed
    v = g.load(sp, s)
    extra = i.ops[0].imm if i.ops else 0
    g.setreg(ESP, 4, f"({sp} + {s + extra}) & 0xFFFFFFFF")
    g.jump(v)


@sem("leave")
def _leave(g: Gen, i: Insn):
    s = i.size
    bp = g.r32(EBP)               # read only before the registers are committed
    v = g.load(bp, s)
    g.setreg(ESP, 4, f"({bp} + {s}) & 0xFFFFFFFF")
    g.setreg(EBP, s, v)


@sem("enter")
def _enter(g: Gen, i: Insn):
    s = i.size
    alloc = i.ops[0].imm
    level = i.ops[1].imm & 31
    sp = g.tmp(g.r32(ESP))
    bp = g.tmp(g.r32(EBP))
    old_bp = g.tmp(g.getreg(EBP, s))
    # First every access is checked in the SDM's order -- push ebp, then per
    # level a load of an outer frame pointer and its push, then the push of
    # the frame -- so the first one that faults is the one a CPU reports and
    # nothing has changed; then the same accesses are done in the same
    # order (a load may read what an earlier push of this enter stored).
    frame = g.tmp(f"({sp} - {s}) & 0xFFFFFFFF")
    g.check_write(frame, s)
    slots = []
    cur = frame
    for k in range(1, level):
        src = g.tmp(f"({bp} - {k * s}) & 0xFFFFFFFF")
        g.emit(f"m.check_read({src}, {s})")
        cur = g.tmp(f"({cur} - {s}) & 0xFFFFFFFF")
        g.check_write(cur, s)
        slots.append((src, cur))
    if level:
        last = g.tmp(f"({cur} - {s}) & 0xFFFFFFFF")
        g.check_write(last, s)
        cur = last
    g.store(frame, s, old_bp)
    for src, dst in slots:
        g.store(dst, s, g.load(src, s))
    if level:
        g.store(cur, s, frame if s == 4 else f"{frame} & 0xFFFF")
    g.setreg(EBP, s, frame if s == 4 else f"{frame} & 0xFFFF")
    g.setreg(ESP, 4, f"({cur} - {alloc}) & 0xFFFFFFFF")


@sem("nop", "pause")
def _nop(g: Gen, i: Insn):
    pass


@sem("int3")
def _int3(g: Gen, i: Insn):
    g.softint(3)


@sem("int")
def _int(g: Gen, i: Insn):
    n = i.ops[0].imm
    if n == 0x30:
        g.softint(0x30)
    elif n == 3:
        g.softint(3)
    else:
        # The IDT gate's DPL is 0: #GP with the IDT bit set in the error code.
        g.fault(13, n * 8 + 2)


@sem("(bad)")
def _bad(g: Gen, i: Insn):
    g.fault(i.trap, i.err)


@sem("cmc")
def _cmc(g: Gen, i: Insn):
    f = g.eflags()
    g.set_arith(f"({f} & 0x8D5) ^ 1")


@sem("clc", "stc")
def _clcstc(g: Gen, i: Insn):
    g.set_arith("1" if i.op == "stc" else "0", FL_CF)


@sem("cld", "std")
def _cldstd(g: Gen, i: Insn):
    g.set_df(i.op == "std")


@sem("setcc")
def _setcc(g: Gen, i: Insn):
    g.write(i.ops[0], g.tmp(f"1 if {g.cond(i.cond)} else 0"))


@sem("cmovcc")
def _cmovcc(g: Gen, i: Insn):
    dst, src = i.ops
    v = g.read_tmp(src)                       # read (and fault) even if not taken
    old = g.read_tmp(dst)
    g.write(dst, g.tmp(f"{v} if {g.cond(i.cond)} else {old}"))


@sem("xlat")
def _xlat(g: Gen, i: Insn):
    addr = g.tmp(f"({g.r32(EBX)} + {g.getreg(EAX, 1)}) & 0xFFFFFFFF")
    g.setreg(EAX, 1, g.load(addr, 1))


@sem("bswap")
def _bswap(g: Gen, i: Insn):
    dst, = i.ops
    if dst.size == 2:
        g.write(dst, "0")
        return
    v = g.read_tmp(dst)
    g.write(dst, f"int.from_bytes({v}.to_bytes(4, 'little'), 'big')")


# -- multiply and divide ------------------------------------------------------------

@sem("mul", "imul")
def _mul1(g: Gen, i: Insn):
    src, = i.ops
    s = i.size
    bits = BITS[s]
    a = g.tmp(g.getreg(EAX, s))
    b = g.read_tmp(src)
    if i.op == "mul":
        p = g.tmp(f"{a} * {b}")
        hi = g.tmp(f"{p} >> {bits}")
        ovf = g.tmp(f"1 if {hi} else 0")
    else:
        p = g.tmp(f"sx({a}, {s}) * sx({b}, {s})")
        lo_s = g.tmp(f"sx({p} & {MASK[s]:#x}, {s})")
        ovf = g.tmp(f"0 if {lo_s} == {p} else 1")
        p = g.tmp(f"{p} & {(1 << 2 * bits) - 1:#x}")
        hi = g.tmp(f"{p} >> {bits}")
    lo = g.tmp(f"{p} & {MASK[s]:#x}")
    if s == 1:
        g.setreg(EAX, 2, f"{p} & 0xFFFF")
    else:
        g.setreg(EAX, s, lo)
        g.setreg(EDX, s, hi)
    g.set_lazy(MUL, s, "0", ovf, lo)


@sem("imul2", "imul3")
def _imul(g: Gen, i: Insn):
    dst = i.ops[0]
    s = dst.size
    if i.op == "imul2":
        a = g.read_tmp(dst)
        b = g.read_tmp(i.ops[1])
    else:
        a = g.read_tmp(i.ops[1])
        b = hex(i.ops[2].imm)
    p = g.tmp(f"sx({a}, {s}) * sx({b}, {s})")
    lo = g.tmp(f"{p} & {MASK[s]:#x}")
    ovf = g.tmp(f"0 if sx({lo}, {s}) == {p} else 1")
    g.write(dst, lo)
    g.set_lazy(MUL, s, "0", ovf, lo)


@sem("div", "idiv")
def _div(g: Gen, i: Insn):
    src, = i.ops
    s = i.size
    bits = BITS[s]
    d = g.read_tmp(src)
    fn = "divu" if i.op == "div" else "divs"
    if s == 1:
        num = g.getreg(EAX, 2)
    else:
        num = f"({g.getreg(EDX, s)} << {bits}) | {g.getreg(EAX, s)}"
    q = g.tmp(f"{fn}({num}, {d}, {s})")
    if s == 1:
        g.setreg(EAX, 2, f"({q}[1] << 8) | {q}[0]")
    else:
        g.setreg(EAX, s, f"{q}[0]")
        g.setreg(EDX, s, f"{q}[1]")


# -- shifts and rotates ----------------------------------------------------------------

def _flags_szp(res: str, sign: int) -> str:
    return (f"(PF[{res} & 0xFF] | (0x40 if {res} == 0 else 0) | "
            f"(0x80 if {res} & {sign:#x} else 0))")


@sem("shl", "shr", "sar")
def _shift(g: Gen, i: Insn):
    dst, cnt_op = i.ops
    s = i.size
    bits = BITS[s]
    M = MASK[s]
    sign = SIGN[s]
    v = g.read_tmp(dst)
    if cnt_op.kind == IMM:
        cnt = cnt_op.imm & 31
        if cnt == 0:
            # Flags and value unchanged, but a memory operand is still
            # read and written back, as with a count of 0 in cl (and as
            # Bochs and QEMU do): it needs write access.
            if dst.kind == MEM:
                g.write(dst, v)
            return
        c = str(cnt)
    else:
        c = g.tmp(f"{g.getreg(ECX, 1)} & 31")
    if cnt_op.kind == IMM:
        # Flags lazily, from the value and the count (flags.py: SHL SHR SAR).
        if i.op == "shl":
            res = g.tmp(f"({v} << {c}) & {M:#x}")
        elif i.op == "shr":
            res = g.tmp(f"{v} >> {c}")
        else:
            res = g.tmp(f"(sx({v}, {s}) >> {c}) & {M:#x}")
        g.write(dst, res)
        g.set_lazy({"shl": SHL, "shr": SHR, "sar": SAR}[i.op], s, v, c, res)
        return
    if i.op == "shl":
        res = g.tmp(f"({v} << {c}) & {M:#x}")
        cf = g.tmp(f"({v} << {c}) >> {bits} & 1")
        of = g.tmp(f"(1 if {res} & {sign:#x} else 0) ^ {cf}")
    elif i.op == "shr":
        res = g.tmp(f"{v} >> {c}")
        cf = g.tmp(f"({v} >> ({c} - 1)) & 1 if {c} else 0")
        of = g.tmp(f"((({v} >> ({c} - 1)) if {c} else 0) >> {bits - 1}) & 1")
    else:
        sv = g.tmp(f"sx({v}, {s})")
        res = g.tmp(f"({sv} >> {c}) & {M:#x}")
        cf = g.tmp(f"({sv} >> ({c} - 1)) & 1 if {c} else 0")
        of = "0"
    fl = g.tmp(f"{_flags_szp(res, sign)} | {cf} | ({of} << 11)")
    g.write(dst, res)
    f = g.eflags()
    g.set_ef(f"(({f} & {~ARITH & 0xFFFFFFFF:#x}) | {fl}) if {c} else {f}")


@sem("rol", "ror", "rcl", "rcr")
def _rotate(g: Gen, i: Insn):
    dst, cnt_op = i.ops
    s = i.size
    bits = BITS[s]
    M = MASK[s]
    v = g.read_tmp(dst)
    if cnt_op.kind == IMM:
        c = str(cnt_op.imm & 31)
    else:
        c = g.tmp(f"{g.getreg(ECX, 1)} & 31")
    f = g.eflags()
    if i.op in ("rol", "ror"):
        n = g.tmp(f"{c} % {bits}")
        if i.op == "rol":
            res = g.tmp(f"(({v} << {n}) | ({v} >> ({bits} - {n}))) & {M:#x}")
            cf = g.tmp(f"{res} & 1")
            of = g.tmp(f"({res} >> {bits - 1}) ^ {cf}")
        else:
            res = g.tmp(f"(({v} >> {n}) | ({v} << ({bits} - {n}))) & {M:#x}")
            cf = g.tmp(f"{res} >> {bits - 1}")
            of = g.tmp(f"{cf} ^ (({res} >> {bits - 2}) & 1)")
        newf = g.tmp(f"(({f} & 0xFFFFF7FE) | {cf} | ({of} << 11)) if {c} else {f}")
    else:
        # Rotate through carry: a (bits+1)-bit rotation of CF:value.
        n = g.tmp(f"{c} % {bits + 1}")
        cin = g.tmp(f"{f} & 1")
        wide = g.tmp(f"({cin} << {bits}) | {v}")
        W = (1 << (bits + 1)) - 1
        if i.op == "rcl":
            rot = g.tmp(f"(({wide} << {n}) | ({wide} >> ({bits + 1} - {n}))) & {W:#x}")
        else:
            rot = g.tmp(f"(({wide} >> {n}) | ({wide} << ({bits + 1} - {n}))) & {W:#x}")
        res = g.tmp(f"{rot} & {M:#x}")
        cf = g.tmp(f"{rot} >> {bits}")
        if i.op == "rcl":
            of = g.tmp(f"({res} >> {bits - 1}) ^ {cf}")
        else:
            of = g.tmp(f"(({res} >> {bits - 1}) ^ ({res} >> {bits - 2})) & 1")
        newf = g.tmp(f"(({f} & 0xFFFFF7FE) | {cf} | ({of} << 11)) if {c} else {f}")
    g.write(dst, res)
    g.set_ef(newf)


@sem("shld", "shrd")
def _shxd(g: Gen, i: Insn):
    dst, src, cnt_op = i.ops
    s = i.size
    bits = BITS[s]
    M = MASK[s]
    sign = SIGN[s]
    d = g.read_tmp(dst)
    v = g.read_tmp(src)
    if cnt_op.kind == IMM:
        c = str(cnt_op.imm & 31)
    else:
        c = g.tmp(f"{g.getreg(ECX, 1)} & 31")
    f = g.eflags()
    # A 16-bit operand shifts the 48-bit dst:src:dst (so counts 17..31 are
    # defined as Bochs and P6-family CPUs behave); 32-bit is dst:src.
    if i.op == "shld":
        if s == 2:
            comb = g.tmp(f"({d} << 32) | ({v} << 16) | {d}")
            res = g.tmp(f"(({comb} << {c}) >> 32) & 0xFFFF")
            cf = g.tmp(f"({comb} >> (48 - {c})) & 1")
        else:
            comb = g.tmp(f"({d} << {bits}) | {v}")
            res = g.tmp(f"(({comb} << {c}) >> {bits}) & {M:#x}")
            cf = g.tmp(f"({comb} >> ({2 * bits} - {c})) & 1")
    else:
        if s == 2:
            comb = g.tmp(f"({d} << 32) | ({v} << 16) | {d}")
        else:
            comb = g.tmp(f"({v} << {bits}) | {d}")
        res = g.tmp(f"({comb} >> {c}) & {M:#x}")
        cf = g.tmp(f"({comb} >> ({c} - 1)) & 1 if {c} else 0")
    of = g.tmp(f"(({res} ^ {d}) >> {bits - 1}) & 1")
    fl = g.tmp(f"{_flags_szp(res, sign)} | {cf} | ({of} << 11)")
    g.write(dst, g.tmp(f"{res} if {c} else {d}"))
    g.set_ef(f"(({f} & {~ARITH & 0xFFFFFFFF:#x}) | {fl}) if {c} else {f}")


# -- bit operations ---------------------------------------------------------------------

@sem("bt", "bts", "btr", "btc")
def _bt(g: Gen, i: Insn):
    dst, off_op = i.ops
    s = i.size
    bits = BITS[s]
    if dst.kind == MEM and off_op.kind == REG:
        off = g.tmp(f"sx({g.getreg(off_op.reg, s)}, {s})")
        base = g.ea(dst)
        addr = g.tmp(f"({base} + ({off} >> {bits.bit_length() - 1}) * {s}) & 0xFFFFFFFF")
        bit = g.tmp(f"{off} & {bits - 1}")
        v = g.load(addr, s)
        target = Operand(MEM, s)          # placeholder for the store below
    else:
        if off_op.kind == IMM:
            bit = str(off_op.imm & (bits - 1))
        else:
            bit = g.tmp(f"{g.getreg(off_op.reg, s)} & {bits - 1}")
        v = g.read_tmp(dst)
        addr = None
        target = dst
    cf = g.tmp(f"({v} >> {bit}) & 1")
    if i.op != "bt":
        if i.op == "bts":
            nv = f"{v} | (1 << {bit})"
        elif i.op == "btr":
            nv = f"{v} & ~(1 << {bit}) & {MASK[s]:#x}"
        else:
            nv = f"{v} ^ (1 << {bit})"
        if addr is not None:
            g.store(addr, s, g.tmp(nv))
        else:
            g.write(target, g.tmp(nv))
    g.set_arith(cf, FL_CF)


@sem("bsf", "bsr")
def _bsf(g: Gen, i: Insn):
    dst, src = i.ops
    v = g.read_tmp(src)
    old = g.read_tmp(dst)
    if i.op == "bsf":
        idx = f"({v} & -{v}).bit_length() - 1"
    else:
        idx = f"{v}.bit_length() - 1"
    g.write(dst, g.tmp(f"({idx}) if {v} else {old}"))
    g.set_arith(f"0 if {v} else 0x40", FL_ZF)


# -- strings ----------------------------------------------------------------------------

@sem("movs", "stos", "lods", "cmps", "scas")
def _string(g: Gen, i: Insn):
    g.string_op(i.op)


# ---------------------------------------------------------------------------------------

def generate(g: Gen, insn: Insn) -> None:
    """Emit insn's semantics into g (raises KeyError for an unknown op)."""
    SEMANTICS[insn.op](g, insn)
    g.finish()
