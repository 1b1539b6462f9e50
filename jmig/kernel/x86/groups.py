"""Word accesses along a region's tree that share one TLB lookup.

A function's prologue pushes four registers, its epilogue pops them, its
body reads its arguments at 8(%ebp), 12(%ebp) ...: each access looks the
same page up in the TLB again.  Before the translator emits a block,
plan() follows the registers through it and the blocks compiled inline
after it, symbolically -- each holds "value v plus a constant" (push and
pop move esp by 4, `mov %esp,%ebp` copies, `lea d(%r)`, `add`/`sub $imm`
add) -- and puts the aligned word accesses at constant offsets from one
value into a group whose first access (its *leader*) is on the path to
all the others; reads may join a group of writes, not the reverse.  The
leader looks up the page of the group's lowest address under a key that
misses unless the whole span lies in one page and is aligned:

    _g0 = ((_a := esp - 0x10) + RD[(_a & 0xFFFFF003) | ((_a ^ (_a + 0x10)) >> 10 & 4)]) >> 2

and every access of the group is then `M32[_g0 + k]`, which cannot fault.
A miss restarts the leader in the interpreter, as any miss does.

Registers are followed only through the instructions modelled here; any
other instruction gives every register a fresh value, so that no group
reaches across it.  The translator checks, as it emits each instruction,
that the instruction writes no register this model says it keeps.
"""
from __future__ import annotations

from .insn import EBP, ESP, IMM, MEM, REG, Insn, full_reg

MIN_GROUP = 3            # accesses in a group (fewer: the leader's key costs more than it saves)
MAX_SPAN = 256           # bytes from a group's lowest to its highest word

# Operations whose register effects the model knows: the destination
# register operand (ops[0]) gets a fresh value unless step() says more.
_DEST = frozenset({"mov", "movzx", "movsx", "lea", "add", "sub", "and", "or", "xor", "adc",
                   "sbb", "inc", "dec", "neg", "not", "shl", "shr", "sar", "rol", "ror",
                   "imul2", "imul3", "setcc", "cmovcc"})
_NO_WRITE = frozenset({"cmp", "test", "nop", "jmp", "jcc", "bt"})
# Of those, the ones whose memory operand is read / written (ALU ops with a
# memory destination do both).
_READS = frozenset({"add", "sub", "and", "or", "xor", "adc", "sbb", "inc", "dec", "neg", "not",
                    "cmp", "test", "imul2", "imul3"})
_WRITES = frozenset({"add", "sub", "and", "or", "xor", "adc", "sbb", "inc", "dec", "neg", "not"})


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
        return frozenset({full_reg(d.reg, d.size)}) if d.kind == REG else frozenset()
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


def accesses(insn: Insn) -> list[tuple]:
    """The word accesses insn makes that may be grouped, in the order the
    code generator emits them: (kind "r"/"w", where, register, offset)."""
    op = insn.op
    out = []
    for o in insn.ops:
        if o.kind == MEM and o.size == 4 and o.base >= 0 and o.index < 0 \
                and abs(_signed(o.disp)) < 0x10000:
            d = _signed(o.disp)
            if op == "mov":
                out.append(("w" if o is insn.ops[0] else "r", "op", o.base, d))
            elif op in ("push", "calli"):
                out.append(("r", "op", o.base, d))
            else:
                if op in _READS:
                    out.append(("r", "op", o.base, d))
                if op in _WRITES and o is insn.ops[0]:
                    out.append(("w", "op", o.base, d))
    if op in ("push", "call", "calli"):
        out.append(("w", "slot", ESP, -4))
    elif op == "ret" or op == "pop" and insn.ops[0].kind != MEM:
        out.append(("r", "top", ESP, 0))
    elif op == "leave":
        out.append(("r", "ebp", EBP, 0))
    return out


def step(insn: Insn, val: dict, fresh) -> dict:
    """The registers' (value id, constant) after insn (fresh: new ids)."""
    w = writes(insn)
    if w is None:
        return {n: (next(fresh), 0) for n in range(8)}
    op = insn.op
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
            k = _signed(src.imm)
            new[d] = (val[d][0], val[d][1] + (k if op == "add" else -k))
    return new


class Group:
    """Accesses at constant offsets from one value, on one page: the
    first one (the leader) looks the page up in RD (kind "r") or WR ("w");
    reads may join a group of writes (a page in WR is readable)."""

    __slots__ = ("kind", "vid", "lo", "hi", "frozen", "members", "name")

    def __init__(self, kind: str, vid: int, off: int):
        self.kind = kind
        self.vid = vid
        self.lo = self.hi = off
        self.frozen = False             # planned before: its span is fixed
        self.members: list[tuple] = []  # (key, kind, where, reg, offset, register constant)
        self.name = ""

    def takes(self, kind: str, vid: int, off: int) -> bool:
        if vid != self.vid or (off - self.lo) & 3 or kind == "w" and self.kind == "r":
            return False
        if self.frozen:
            return self.lo <= off <= self.hi
        return max(self.hi, off) - min(self.lo, off) <= MAX_SPAN


class State:
    """Where a path stands at the end of a block: the registers' values
    and the groups whose leader is on the path."""

    __slots__ = ("val", "live", "fresh", "names")

    def __init__(self, val: dict, live: tuple, fresh, names: int):
        self.val = val
        self.live = live
        self.fresh = fresh
        self.names = names


MAX_NAMES = 64           # group names in a region (_g0 .. _g63)


def plan(root, bbs: dict, heads, slow, occ: tuple, start: State | None = None):
    """Plan the groups of the tree of blocks from root: root and, through
    their static successors, the blocks that are not heads (each compiled
    inline after its one predecessor).  occ names root's place in the
    region's tree (the block starts from the tree's head); start: the
    state the path reaches root with (a followed call or return), or None
    (a head: nothing known).  Returns (accesses, ends): accesses maps
    (place, instruction index) -> {"r": Access, "w": Access}; ends maps
    each place to its State after the block."""
    if start is None:
        fresh = iter(range(1 << 30))
        start = State({n: (next(fresh), 0) for n in range(8)}, (), fresh, 0)
    fresh = start.fresh
    made: list[Group] = []
    ends: dict[tuple, tuple] = {}
    budget = [400]

    def visit(bb, place: tuple, val: dict, live: tuple) -> None:
        for k, insn in enumerate(bb.insns):
            if insn.addr not in slow and insn.size == 4 and writes(insn) is not None:
                seen = set()
                for kind, where, reg, disp in accesses(insn):
                    if kind in seen:
                        raise AssertionError(f"two {kind} accesses in {insn}")
                    seen.add(kind)
                    vid, c = val[reg]
                    off = c + disp
                    # The largest group it fits, then the one it widens least.
                    fits = [g for g in live if g.takes(kind, vid, off)]
                    if fits:
                        g = min(fits, key=lambda g: (-len(g.members),
                                                     max(g.hi, off) - min(g.lo, off) - g.hi + g.lo))
                    else:
                        g = Group(kind, vid, off)
                        made.append(g)
                        live = live + (g,)
                    g.lo = min(g.lo, off)
                    g.hi = max(g.hi, off)
                    g.members.append(((place, k), kind, where, reg, off, c))
            val = step(insn, val, fresh)
        ends[place] = (val, live)
        budget[0] -= len(bb.insns)
        t = bb.term
        if budget[0] <= 0 or t is not None and t.op == "call":
            return
        for s in bb.succ:
            nb = bbs.get(s)
            if nb is not None and s not in heads:
                visit(nb, place + (s,), val, live)

    visit(root, occ, start.val, start.live)
    names = start.names
    out: dict[tuple, dict] = {}
    for g in made:
        if len(g.members) < MIN_GROUP or names >= MAX_NAMES:
            g.members = []
            continue
        g.name = f"_g{names}"
        names += 1
        g.frozen = True
    for g in list(start.live) + made:
        for i, (key, kind, where, reg, off, c) in enumerate(g.members):
            if key[0][:len(occ)] != occ:
                continue                        # planned before, on the path to root
            lead = None
            if i == 0 and g in made:
                lead = (reg, g.lo - c, g.hi - g.lo, "RD" if g.kind == "r" else "WR")
            out.setdefault(key, {})[kind] = Access(g.name, (off - g.lo) >> 2, where, lead)
    states = {place: State(val, tuple(g for g in live if g.members), fresh, names)
              for place, (val, live) in ends.items()}
    return out, states
