"""Word accesses of a basic block that share one TLB lookup.

A function's prologue pushes four registers, its epilogue pops them, its
body reads its arguments at 8(%ebp), 12(%ebp) ...: each access looks the
same page up in the TLB again.  Before the translator emits a block,
plan() follows the registers through it symbolically -- each holds "value
v plus a constant" (push and pop move esp by 4, `mov %esp,%ebp` copies,
`lea d(%r)`, `add`/`sub $imm` add) -- and puts the aligned word accesses at
constant offsets from one value, reads and writes apart, into a group.
The group's first access (its *leader*) looks up the page of the group's
lowest address under a key that misses unless the whole span lies in one
page and is aligned:

    _g0 = ((_a := esp - 0x10) + RD[(_a & 0xFFFFF003) | ((_a ^ (_a + 0x10)) >> 10 & 4)]) >> 2

and every access of the group is then `M32[_g0 + k]`, which cannot fault.
A miss restarts the leader in the interpreter, as any miss does.

Registers are followed only through the instructions modelled here; any
other instruction gives every register a fresh value, so that no group
reaches across it.  The translator checks, as it emits each instruction,
that the instruction writes no register this model says it keeps.
"""
from __future__ import annotations

from .insn import EBP, ESP, IMM, MEM, REG, Insn

MIN_GROUP = 3            # accesses in a group (fewer: the leader's key costs more than it saves)
MAX_SPAN = 256           # bytes from a group's lowest to its highest word

# Operations whose register effects the model knows: the destination
# register operand (ops[0]) gets a fresh value unless noted in _step.
_DEST = frozenset({"mov", "movzx", "movsx", "lea", "add", "sub", "and", "or", "xor", "adc",
                   "sbb", "inc", "dec", "neg", "not", "shl", "shr", "sar", "rol", "ror",
                   "imul2", "imul3", "setcc", "cmovcc"})
_NO_WRITE = frozenset({"cmp", "test", "nop", "jmp", "jcc", "bt"})
# Of those, the ones whose memory operand is read / written (ALU ops with a
# memory destination do both).
_READS = frozenset({"add", "sub", "and", "or", "xor", "adc", "sbb", "inc", "dec", "neg", "not",
                    "cmp", "test", "imul2", "imul3"})
_WRITES = frozenset({"add", "sub", "and", "or", "xor", "adc", "sbb", "inc", "dec", "neg", "not"})


def _full(op) -> int:
    """The 32-bit register an operand of kind REG writes (part of)."""
    return op.reg - 4 if op.size == 1 and op.reg >= 4 else op.reg


class Access:
    """One planned access: the group's name, the word's index in it, and
    where the instruction takes its address ("op": its memory operand,
    "top": (%esp), "slot": -4(%esp), "ebp": (%ebp)); for the leader also
    (register, offset, span): the group's lowest address is that
    register's value (as the instruction starts) plus offset, its highest
    that plus span."""

    __slots__ = ("name", "word", "where", "lead")

    def __init__(self, name: str, word: int, where: str, lead: tuple | None):
        self.name = name
        self.word = word
        self.where = where
        self.lead = lead


def writes(insn: Insn) -> frozenset | None:
    """The registers insn may write (full numbers), or None if the model
    does not know it (then every register gets a fresh value)."""
    op = insn.op
    if op in _NO_WRITE:
        return frozenset()
    if op in _DEST:
        d = insn.ops[0]
        return frozenset({_full(d)}) if d.kind == REG else frozenset()
    if insn.size != 4:
        return None
    if op in ("push", "call", "calli", "ret"):
        return frozenset({ESP})
    if op == "pop":
        d = insn.ops[0]
        if d.kind == REG:
            return frozenset({ESP, d.reg})
        return frozenset({ESP}) if d.kind == MEM else None
    if op == "leave":
        return frozenset({ESP, EBP})
    return None


def _signed(x: int) -> int:
    return x - (1 << 32) if x & 0x80000000 else x


def plan(insns: list[Insn], slow) -> dict[int, dict[str, Access]]:
    """For each instruction (by index) with a grouped access: {"r": ...,
    "w": ...}, its read and its write (at most one of each is grouped).
    slow: addresses of instructions that must not be grouped."""
    fresh = iter(range(1 << 30))
    val = {n: (next(fresh), 0) for n in range(8)}      # register -> (value id, constant)
    seen = []                                          # (index, kind, where, reg, value id, offset)

    def access(k: int, kind: str, where: str, reg: int, disp: int) -> None:
        v, c = val[reg]
        if any(a[0] == k and a[1] == kind for a in seen[-2:]):
            raise AssertionError(f"two {kind} accesses in {insns[k]}")
        seen.append((k, kind, where, reg, v, c + disp, c))

    for k, insn in enumerate(insns):
        op = insn.op
        w = writes(insn)
        if w is None:
            val = {n: (next(fresh), 0) for n in range(8)}
            continue
        grouped = insn.addr not in slow and insn.size == 4
        if grouped:
            for o in insn.ops:
                if o.kind == MEM and o.size == 4 and o.base >= 0 and o.index < 0 \
                        and o.seg < 0 and insn.seg < 0 and abs(_signed(o.disp)) < 0x10000:
                    if op == "mov":
                        access(k, "w" if o is insn.ops[0] else "r", "op", o.base, _signed(o.disp))
                    elif op in ("push", "calli"):
                        access(k, "r", "op", o.base, _signed(o.disp))
                    else:
                        if op in _READS:
                            access(k, "r", "op", o.base, _signed(o.disp))
                        if op in _WRITES and o is insn.ops[0]:
                            access(k, "w", "op", o.base, _signed(o.disp))
            if op in ("push", "call", "calli"):
                access(k, "w", "slot", ESP, -4)
            elif op in ("ret", "pop") and not (op == "pop" and insn.ops[0].kind == MEM):
                access(k, "r", "top", ESP, 0)
            elif op == "leave":
                access(k, "r", "ebp", EBP, 0)
        # The registers after insn.
        new = dict(val)
        for n in w:
            new[n] = (next(fresh), 0)
        if op in ("push", "call", "calli"):
            new[ESP] = (val[ESP][0], val[ESP][1] - 4)
        elif op == "pop":
            d = insn.ops[0]
            new[ESP] = (val[ESP][0], val[ESP][1] + 4)
            if d.kind == REG and d.reg == ESP:
                new[ESP] = (next(fresh), 0)
        elif op == "ret":
            extra = insn.ops[0].imm if insn.ops else 0
            new[ESP] = (val[ESP][0], val[ESP][1] + 4 + extra)
        elif op == "leave":
            new[ESP] = (val[EBP][0], val[EBP][1] + 4)
        elif insn.ops and insn.ops[0].kind == REG and insn.ops[0].size == 4:
            d = insn.ops[0].reg
            src = insn.ops[1] if len(insn.ops) > 1 else None
            if op == "mov" and src is not None and src.kind == REG:
                new[d] = val[src.reg]
            elif op == "lea" and src.base >= 0 and src.index < 0:
                new[d] = (val[src.base][0], val[src.base][1] + _signed(src.disp))
            elif op in ("add", "sub") and src is not None and src.kind == IMM:
                step = _signed(src.imm)
                new[d] = (val[d][0], val[d][1] + (step if op == "add" else -step))
        val = new

    out: dict[int, dict[str, Access]] = {}
    groups: dict[tuple, list] = {}
    for a in seen:
        groups.setdefault((a[1], a[4], a[5] & 3), []).append(a)
    count = 0
    for (kind, _, _), members in groups.items():
        # Runs of accesses, in order of use, each within MAX_SPAN bytes; an
        # access joins the first run it fits.
        runs: list[list] = []
        for a in members:
            for run in runs:
                offs = [x[5] for x in run]
                if max(offs + [a[5]]) - min(offs + [a[5]]) <= MAX_SPAN:
                    run.append(a)
                    break
            else:
                runs.append([a])
        for run in runs:
            if len(run) < MIN_GROUP:
                continue
            name = f"_g{count}"
            count += 1
            lo = min(x[5] for x in run)
            span = max(x[5] for x in run) - lo
            for i, (k, _, where, reg, _, off, c) in enumerate(run):
                lead = (reg, lo - c, span) if i == 0 else None
                out.setdefault(k, {})[kind] = Access(name, (off - lo) >> 2, where, lead)
    return out
