"""The block translator: regions of hot code compiled into one Python
function each.

A region is the code reachable from an entry address through direct
jumps, branches and calls, the return points of its calls and the targets
its indirect transfers (ret, call *, jmp *) were seen to take, restricted
to basic blocks that have run (cpu.run_blocks counts them), across pages.
Its function keeps the registers and the flag state in locals and runs
until control leaves the region, the budget is spent, or a system call,
trap or fault:

    while n <= lim:                      # lim = budget - the longest path
        if pc < 0x800a00:                # a binary search over the heads
            if pc == 0x8006b7:
                ...                      # the tree of blocks from this head
        ...
        else: break                      # pc is not in the region: leave

A *head* is where the search can land: the entry, loop headers, blocks
with several predecessors, functions, return points and targets of
indirect transfers.  Every other block has one predecessor and is compiled
inline after it, so a head's code is a tree: a conditional branch is an
`if` whose taken side continues inline, a head that branches back to
itself runs as an inner `while` loop.  A short block with several
predecessors is copied into each (the increment and test closing a loop
join the loop's body).  A tree continues into the callee of a call (an
indirect call: the targets seen, each under a guard) and at the callee's
`ret` into the code after the call, under a guard that the popped address
is that one.

Flags are symbolic: an instruction that sets them only records, at
compile time, the kind and the expressions of its operands and result; a
branch tests those directly (`cmp` then `jne` is one comparison).  They
are stored into the locals fk/fa/fb/fr only where they may be observed:
read, seen by a fault, or carried to a head that may read them first or
out of the region; a move to a head that overwrites them first stores
which symbolic state holds them (`fid`), evaluated only if the region
stops there.  Memory goes through the TLB dictionaries inline
(pmap.AddressSpace: the physical address is va + rt[va & 0xfffff003] for
an aligned word), which fill themselves on a miss; what they cannot answer
(a misaligned word, a fault, a JOS window, a store into a frame holding
code) raises KeyError, and the instruction is restarted by the
interpreter.  An instruction that keeps restarting is compiled again with
an inline fallback.  Aligned words at constant offsets from one register
value along a path (a frame's pushes, pops, arguments and locals) share
one lookup (groups.py); pushes and pops among them leave esp's update to
the next instruction of another kind.

Faults are precise: every instruction reads, then writes memory, then
commits registers and flags (codegen.py), so at a fault in instruction k
the locals hold the state before it.  The line of the function where the
exception passed names the instruction; a table built at compile time
gives its address, how many instructions the path has completed since
the count was last updated, and where its flags are.

    f(cpu, r, m, budget, pc) -> (next pc, instructions executed)

Exactly `budget` instructions at most: a path starts only if its longest
run before the next check fits.  The returned pc carries a reason in the
bits above 31 (EXIT_*) when the function stopped for one.
"""
from __future__ import annotations

import contextlib
import functools
import keyword
import re
import sys
import types
from collections import deque

from ..memlayout import PGSIZE, UTOP
from ..pmap import CpuFault, PageFault, RemotePage
from . import bytecode, codegen, groups, runtime
from .codegen import Gen, _is_simple
from .decode import MAX_LEN, Truncated, decode
from .flags import ADC, ADD, DEC, INC, LOGIC, MUL, SBB, SIGN, SUB
from .insn import EBP, ESP, IMM, MEM, REG, Insn, full_reg

REGN = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
M32 = 0xFFFFFFFF

# Why a region function returned, in the bits of pc above 31.
EXIT_SYSCALL = 1 << 32          # after int $0x30 (pc = the next instruction)
EXIT_INT3 = 2 << 32             # after int3 / int $3 (pc = the next instruction)
EXIT_TAIL = 4 << 32             # too little budget left for a path (pc = a head)
EXIT_RESTART = 8 << 32          # interpret the instruction at pc (a TLB miss)
EXIT_MASK = 0xF << 32

# Limits on what one region compiles.
MAX_REGION = 2000               # instructions decoded per region
MAX_STATIC = 256                # ... when all the code reachable is compiled (tests)
MAX_BB = 64                     # instructions per basic block
MAX_PATH = 96                   # instructions on a path between budget checks
MAX_TREE = 400                  # instructions compiled in one head's tree
MAX_DEPTH = 40                  # nested branches in one tree
DUP_MAX = 4                     # a block this short is copied, not made a head
MAX_GUARDS = 4                  # targets of an indirect call or jump compiled in place
MAX_FOLLOW = 48                 # instructions of heads a tree follows calls and rets into
MAX_LOOP = 48                   # instructions of a loop whose heads its head's tree follows

# Basic-block terminators.
BRANCHES = frozenset({"jcc", "loop", "loope", "loopne", "jecxz"})
ENDS_BB = BRANCHES | {"jmp", "jmpi", "call", "calli", "ret", "int", "int3", "(bad)"}
INDIRECT = frozenset({"jmpi", "calli", "ret"})
STRING_OPS = frozenset({"movs", "stos", "lods", "cmps", "scas"})

# What an instruction does with the six arithmetic flags (flag_effect).
FULL_WRITERS = frozenset({"add", "sub", "cmp", "and", "or", "xor", "test", "neg", "xadd",
                          "cmpxchg", "mul", "imul", "imul2", "imul3", "popf"})
CONSUMERS = frozenset({"jcc", "setcc", "cmovcc", "adc", "sbb", "rcl", "rcr", "pushf", "lahf",
                       "loope", "loopne"})
PARTIAL = frozenset({"inc", "dec", "clc", "stc", "cmc", "bt", "bts", "btr", "btc", "bsf", "bsr",
                     "sahf", "rol", "ror", "shl", "shr", "sar", "shld", "shrd"})
NO_MEMORY = frozenset({"lea", "nop", "pause", "jmp", "jcc", "jecxz", "loop", "loope",
                       "loopne", "cwde", "cdq", "bswap", "setcc", "cmovcc", "cld", "std",
                       "clc", "stc", "cmc", "lahf", "sahf", "not", "neg", "inc", "dec",
                       "mov", "movzx", "movsx", "xchg", "xadd", "cmpxchg", "test", "cmp",
                       "add", "sub", "and", "or", "xor", "adc", "sbb", "shl", "shr", "sar",
                       "rol", "ror", "rcl", "rcr", "shld", "shrd", "bt", "bts", "btr", "btc",
                       "bsf", "bsr", "imul2", "imul3", "mul", "imul"})


# Instructions that only read registers through Gen.r32/getreg and write
# them through setreg: register aliases (RegionGen.alias) live across them
# when they touch no memory.
ALIAS_SAFE = frozenset({"mov", "movzx", "movsx", "lea", "add", "sub", "and", "or", "xor",
                        "cmp", "test", "inc", "dec", "neg", "not", "shl", "shr", "sar",
                        "nop"})


def may_fault(insn: Insn) -> bool:
    """Whether insn can raise (a memory access, a division, a selector)."""
    if insn.op not in NO_MEMORY:
        return True
    return insn.op != "lea" and any(o.kind == MEM for o in insn.ops)


def flag_effect(insn: Insn) -> str:
    """'use': needs the flags before it (reads them for its result, or may
    fault: a fault must see them exact); 'kill': sets all six without
    reading them; 'pass': sets some from the others, or none."""
    if may_fault(insn) or insn.op in CONSUMERS:
        return "use"
    op = insn.op
    if op in FULL_WRITERS or (op in ("shl", "shr", "sar") and insn.ops[1].kind == 2
                              and insn.ops[1].imm & 31):
        return "kill"
    return "pass"


def is_exit_op(insn: Insn) -> bool:
    """Instructions a region leaves to the interpreter (they only trap)."""
    if insn.op == "(bad)":
        return True
    return insn.op == "int" and insn.ops[0].imm not in (3, 0x30)


# -- decoding ------------------------------------------------------------------------

_DECODED: dict[tuple[int, bytes], Insn] = {}


def fetch_decode(m, eip: int, ahead: bool = False) -> Insn:
    """Decode the instruction at eip through the MMU (faults like a fetch;
    `ahead`: reading code before it runs, which sets no A bit)."""
    fetch = m.peek if ahead else m.fetch
    buf = fetch(eip, MAX_LEN)
    key = (eip, buf)
    insn = _DECODED.get(key)
    if insn is not None:
        return insn
    try:
        insn = decode(buf, eip)
    except Truncated:
        # The instruction continues on the next page: fetching it may fault.
        nxt = (eip + len(buf)) & M32
        buf2 = buf + fetch(nxt, MAX_LEN - len(buf))
        try:
            return decode(buf2, eip)
        except Truncated:
            # Only possible if the buffer is shorter than 15 bytes, i.e.
            # never after two pages; treat as undefined.
            return Insn(addr=eip, length=len(buf2), raw=buf2, op="(bad)", trap=6)
    if len(_DECODED) > 200_000:
        _DECODED.clear()
    _DECODED[key] = insn
    return insn


class Bb:
    """A basic block: instructions within one page, ending after a control
    transfer or trap, or before an instruction that crosses a page."""
    __slots__ = ("start", "insns", "term", "succ", "dyn", "next", "raw")

    def __init__(self, start: int, insns: list[Insn]):
        self.start = start
        self.insns = insns
        last = insns[-1]
        self.term = last if last.op in ENDS_BB else None
        self.next = last.next                  # the address after the block
        self.raw = b"".join(i.raw for i in insns)
        self.succ: list[int] = []              # static successors
        self.dyn = False                       # ends in an indirect transfer or a trap
        t = self.term
        if t is None:
            self.succ = [self.next]
        elif t.op in BRANCHES:
            self.succ = [t.ops[0].imm, t.next]
        elif t.op in ("jmp", "call"):
            self.succ = [t.ops[0].imm]
        else:
            self.dyn = True


def decode_bb(m, start: int) -> Bb | None:
    """The basic block at start, or None if it cannot be fetched or its
    first instruction is one blocks leave to the interpreter."""
    if start >= UTOP:
        return None
    insns = []
    a = start
    try:
        while len(insns) < MAX_BB:
            insn = fetch_decode(m, a, ahead=True)
            if (a & 0xFFF) + insn.length > PGSIZE:
                break                          # straddles a page: the interpreter's
            if is_exit_op(insn):
                break                          # the interpreter raises its trap
            insns.append(insn)
            if insn.op in ENDS_BB:
                break
            a = insn.next
            if a & 0xFFF == 0:
                break                          # the next page is another block
    except (PageFault, RemotePage):
        pass
    if not insns:
        return None
    return Bb(start, insns)


# -- which code a region holds -------------------------------------------------------

class Plan:
    """The blocks of a region, its heads, and where the flags are live."""

    def __init__(self, entry: int, bbs: dict[int, Bb], dyn_targets: set[int],
                 indirect: dict[int, set[int]] | None = None):
        self.entry = entry
        self.bbs = bbs
        # indirect call/jump address -> targets seen, in the region
        self.indirect = {a: {x for x in ts if x in bbs} for a, ts in (indirect or {}).items()}
        preds: dict[int, int] = {s: 0 for s in bbs}
        for bb in bbs.values():
            for s in bb.succ:
                if s in preds:
                    preds[s] += 1
        heads = {entry} | {s for s in dyn_targets if s in bbs}
        # Functions: entered from elsewhere too (compiled into their callers
        # where they fit, emit_region).
        heads |= {bb.term.ops[0].imm for bb in bbs.values()
                  if bb.term is not None and bb.term.op == "call"} & bbs.keys()
        heads |= _loop_headers(bbs, heads)
        for s, k in preds.items():
            if k >= 2 and len(bbs[s].insns) > DUP_MAX:
                heads.add(s)
        # A copied block must not lead back to itself without a head on the way.
        heads |= _loop_headers(bbs, heads)
        self.heads = heads
        self.liveness()

    def liveness(self) -> None:
        """live[s]: at the start of block s the flags may be observed before
        all six are overwritten -- read, seen by a fault, or carried out of
        the path (any move to a head, any exit).  dead[s][i]: the flags
        after instruction i of block s are not observed."""
        bbs, heads = self.bbs, self.heads
        live: dict[int, bool] = {}
        dead: dict[int, list[bool]] = {}

        def settle(s: int) -> None:
            bb = bbs[s]
            if bb.dyn:
                out = True
            else:
                out = any(t in heads or t not in bbs or live[t] for t in bb.succ)
            d = [False] * len(bb.insns)
            for i in range(len(bb.insns) - 1, -1, -1):
                d[i] = not out
                e = flag_effect(bb.insns[i])
                if e == "use":
                    out = True
                elif e == "kill":
                    out = False
            live[s] = out
            dead[s] = d

        # Post-order over the edges to blocks that are not heads (no cycles:
        # every cycle has a head on it).
        entered: set[int] = set()
        for root in bbs:
            if root not in entered:
                for what, node in _dfs(bbs, root, entered, heads):
                    if what == "done":
                        settle(node)
        self.live = live
        self.dead = dead


def _short_loops(bbs: dict[int, Bb]) -> dict[int, frozenset]:
    """Block -> the blocks of the loops through it (its strongly connected
    component over the static edges), for components of at most MAX_LOOP
    instructions that are loops.  Kosaraju's two walks, iteratively."""
    order: list[int] = []
    entered: set[int] = set()
    for root in bbs:
        if root not in entered:
            order += [node for what, node in _dfs(bbs, root, entered) if what == "done"]
    preds: dict[int, list[int]] = {}
    for a, bb in bbs.items():
        for b in bb.succ:
            if b in bbs:
                preds.setdefault(b, []).append(a)
    out: dict[int, frozenset] = {}
    placed: set[int] = set()
    for root in reversed(order):
        if root in placed:
            continue
        comp = {root}
        placed.add(root)
        todo = [root]
        while todo:
            for p in preds.get(todo.pop(), ()):
                if p not in placed:
                    placed.add(p)
                    comp.add(p)
                    todo.append(p)
        if (len(comp) > 1 or root in bbs[root].succ) \
                and sum(len(bbs[a].insns) for a in comp) <= MAX_LOOP:
            frozen = frozenset(comp)
            for a in comp:
                out[a] = frozen
    return out


def _dfs(bbs: dict[int, Bb], root: int, entered: set[int], blocked=frozenset()):
    """Depth-first from root over the static edges, entering no block of
    `entered` (which it fills) or `blocked`: yields ("back", b) for an edge
    to a block b on the current path and ("done", b) as b is finished."""
    on_path = {root}
    entered.add(root)
    stack = [(root, iter(bbs[root].succ))]
    while stack:
        node, it = stack[-1]
        nxt = next(it, None)
        if nxt is None:
            stack.pop()
            on_path.discard(node)
            yield "done", node
        elif nxt not in bbs or nxt in blocked:
            continue
        elif nxt in on_path:
            yield "back", nxt
        elif nxt not in entered:
            entered.add(nxt)
            on_path.add(nxt)
            stack.append((nxt, iter(bbs[nxt].succ)))


def _loop_headers(bbs: dict[int, Bb], roots: set[int]) -> set[int]:
    """Targets of back edges of a depth-first search from `roots` over the
    static edges (a walk ends at the other roots)."""
    found = set()
    for root in sorted(roots):
        found |= {b for what, b in _dfs(bbs, root, set(), roots - {root}) if what == "back"}
    return found


# -- the code generator --------------------------------------------------------------

# Flag states at compile time (RegionGen.fs):
LOC = ("loc",)          # in the locals fk, fa, fb, fr, ef
EF = ("ef",)            # all six in ef (fk is 0 once stored)
UNK = ("unk",)          # not needed: the head is entered with them dead
# ("k", kind, a, b, r): lazy with the kind known; ("d", kind_expr, a, b, r): kind
# computed at run time.  a, b, r are literals, temps, registers or pure
# expressions of those; a register is copied into a temp before it changes
# while the flags are still needed.

_CALL = re.compile(r"[A-Za-z_]\w*\s*\(")
_WORD = re.compile(r"\b[A-Za-z_]\w*")


# A grouped word access (groups.py), which cannot raise.
_MEMBER = re.compile(r"\s*(?:\w+ = )?M32\[_g\d+(?: \+ \d+)?\](?: = \w+)?$")


def _pure(v: str) -> bool:
    """An expression without calls or subscripts (safe to evaluate later)."""
    return "[" not in v and _CALL.search(v) is None


# -- upper bounds of values, for loads that stay in one page ------------------------
#
# Along a path, RegionGen knows an exclusive upper bound for some locals:
# the result of `shr $k` is below 2**(32-k), of `and $c` at most c, a byte
# or word load below 256 or 65536.  An access whose address is then known
# to stay in one page, aligned (`uvpd[PDX(va)]`: (va >> 22) * 4 + UVPD),
# has a TLB key known at compile time; in a loop its entry is looked up
# once before the loop, not once per turn.

NOPAGE = 1 << 40        # a hoisted TLB entry for a page not in the TLB: indexes past memory


_SHR = re.compile(r"\(?([A-Za-z_]\w*) >> (\d+)\)?")
_AND = re.compile(r"\(?[A-Za-z_]\w*(?: >> \d+)? & (0x[0-9a-fA-F]+|\d+)\)?")


@functools.lru_cache(maxsize=8192)
def _bound_form(expr: str):
    """How an expression's value is bounded, from its text (the forms
    codegen writes them in): ("c", n) below the constant n; ("r", name)
    below the bound of a local; ("s", name, k) that shifted right by k;
    None: not known.  (A load's temp gets its bound from load itself.)"""
    if expr.isidentifier():
        return ("r", expr)
    m = _SHR.fullmatch(expr)
    if m:
        return ("s", m[1], int(m[2]))
    m = _AND.fullmatch(expr)
    if m:
        return ("c", int(m[1], 0) + 1)
    if expr[:1].isdigit():
        try:
            return ("c", int(expr, 0) + 1)
        except ValueError:
            return None
    return None


_HQ = re.compile(r"\b_hq(\d+)\b")
_LOW_TEST = re.compile(r"\(\(([a-z]{3}) & 0xFF\) & (0x[0-9a-fA-F]+)\)")


def _entry_expr(key: tuple, hoisted: bool) -> str:
    """A TLB entry (see RegionGen._entry): looked up where it is used (a
    KeyError for a miss), or before a loop (NOPAGE for a miss)."""
    kind, a = key
    page = a & ~0xFFF
    delta = f"RD.get({page:#x}, {NOPAGE:#x})" if hoisted else f"RD[{page:#x}]"
    return delta if kind == "d" else f"(({a:#x} + {delta}) >> 2)"


@functools.lru_cache(maxsize=4096)
def _fs_words(fs: tuple) -> frozenset:
    """The names a symbolic flag state's expressions use."""
    return frozenset(w for part in fs[1:] for w in _WORD.findall(str(part)))


class Retry(Exception):
    """Emission found a block that must become a head; plan again."""

    def __init__(self, start: int):
        self.start = start


class RegionGen(Gen):
    """codegen.Gen with registers in locals, symbolic flags, TLB-inline
    memory, and the bookkeeping for precise faults."""

    def __init__(self, slow: frozenset):
        super().__init__(None)
        self.slow = slow                    # instruction addresses with slow memory
        self.tags: list[int] = []           # per line: recipe index (-1: none)
        self.recipes: list[tuple] = []      # (eip, count offset, flags, synced)
        self.cur = -1
        self.used: set[int] = set()
        self.written: set[int] = set()
        self.fs = LOC
        self.mat = True                     # the locals fk.. hold fs
        self.next_fs = None
        self.dead = False                   # this instruction's flags are not observed
        self.fids: dict[tuple, int] = {}    # flag state -> the id stored in `fid`
        self.pool: list[str] = []           # temp names
        self.busy: set[str] = set()         # taken by the current instruction
        self.saved: list[tuple] = []        # flag states of branches still to emit
        self.first = 0                      # the current instruction's first line
        self.deferred = None                # inc/dec's carry, computed only if needed
        # `mov %src, %dst` leaves dst's local as it was and makes reads of dst
        # read src (alias[dst] = "src") until dst is written, src is about
        # to change, or anything but ALIAS_SAFE code follows (a possible
        # fault, a branch, the end of a path): then `dst = src` is emitted.
        self.alias: dict[int, str] = {}
        # Exclusive upper bounds of locals (registers, temps) on this path,
        # below 2**32 (see _bound_form).
        self.ub: dict[str, int] = {}
        self.onepage: dict[str, tuple] = {}  # ea expression -> (page, operand, disp)
        # In a loop tree: the TLB entries its loads use, (kind, page) ->
        # number (see _entry); else None.  path_keys: those used on the
        # current path; looping: those used on a path back to the head.
        self.hoist: dict[tuple, int] | None = None
        self.path_keys: frozenset = frozenset()
        self.looping: set[tuple] = set()
        # Word accesses sharing one TLB lookup (groups.py): the tree's plan,
        # (place, instruction index) -> accesses, and the State at the end
        # of each place; the current instruction's accesses still to emit;
        # the groups whose leader is on the current path.
        self.gplan: dict[tuple, dict] = {}
        self.gends: dict[tuple, groups.State] = {}
        self.gacc: dict[str, groups.Access] = {}
        self.gdone: frozenset = frozenset()
        # Pushes and pops whose word is in a group leave esp's local as it
        # was and add to spoff (esp is esp + spoff), until an instruction
        # of another kind or the end of the path (flush_esp): they cannot
        # fault, so no restart sees the local behind.
        self.spoff = 0

    def group_tree(self) -> None:
        """A head's tree starts."""
        self.gplan = {}
        self.gends = {}
        self.gdone = frozenset()
        self.spoff = 0

    def group_block(self, bb: "Bb", place: tuple, bbs: dict, heads) -> None:
        """The block at place starts: plan the groups of the tree of blocks
        from it unless a plan made earlier on this path covers it (a
        followed call or return continues from its caller's state)."""
        if place in self.gends:
            return
        plan, ends = groups.plan(bb, bbs, heads, self.slow, place, self.gends.get(place[:-1]))
        self.gplan.update(plan)
        self.gends.update(ends)

    def group_insn(self, place: tuple, k: int) -> None:
        """Instruction k of the block at place is next (before start())."""
        self.gacc = dict(self.gplan.get((place, k), ()))

    def _deferred(self, insn: Insn) -> groups.Access | None:
        """The grouped stack word of a push, pop, call or ret whose esp
        update can wait (flush_esp), or None."""
        op = insn.op
        if insn.size != 4 or op not in ("push", "pop", "call", "ret") or len(self.gacc) != 1:
            return None
        if op in ("push", "pop"):
            o = insn.ops[0]
            if not (o.kind == REG and o.reg != ESP or op == "push" and o.kind == IMM):
                return None
        a = self.gacc.get("w" if op in ("push", "call") else "r")
        if a is None or a.lead is not None or a.name not in self.gdone:
            return None
        return a

    def stack_op(self, insn: Insn) -> bool:
        """Emit a push, pop, call or ret whose stack word is a group
        member with esp's update deferred; False if it is not one."""
        a = self._deferred(insn)
        if a is None:
            return False
        self.gacc = {}
        w = f"{a.name} + {a.word}" if a.word else a.name
        op = insn.op
        if op == "push":
            o = insn.ops[0]
            self.emit(f"M32[{w}] = {hex(o.imm & M32) if o.kind != REG else self.r32(o.reg)}")
            self.spoff -= 4
        elif op == "call":
            self.emit(f"M32[{w}] = {insn.next:#x}")
            self.spoff -= 4
            self.jump(hex(insn.ops[0].imm))
        elif op == "pop":
            self.setreg(insn.ops[0].reg, 4, f"M32[{w}]")
            self.spoff += 4
        else:
            v = self.tmp(f"M32[{w}]")
            self.spoff += 4 + (insn.ops[0].imm if insn.ops else 0)
            self.jump(v)
        return True

    def flush_esp(self) -> None:
        """Give esp's local its value (after deferred pushes and pops);
        flags that refer to it keep the old.  No register is aliased then:
        a deferred instruction ends the aliases (start()), and the `mov`
        that makes one is not deferred, so it flushes first."""
        off = self.spoff
        if not off:
            return
        self.spoff = 0
        if self.alias:
            raise AssertionError(f"{self.insn}: aliases {self.alias} with esp deferred")
        fs = self.fs
        if len(fs) == 5 and "esp" in _fs_words(fs):
            c = self.tmp("esp")
            self.fs = tuple(re.sub(r"\besp\b", c, x) if isinstance(x, str) else x for x in fs)
        self.emit(f"esp = (esp {'+' if off > 0 else '-'} {abs(off):#x}) & 0xFFFFFFFF")
        self.ub.pop("esp", None)
        self.written.add(ESP)

    def emit(self, line: str) -> None:
        self.lines.append("    " * self.indent + line)
        self.tags.append(self.cur)

    # Temps are reused from one instruction to the next (few locals: no
    # EXTENDED_ARG in the bytecode), except those the flag state refers to.
    def tmp(self, expr: str | None = None) -> str:
        pinned = self._pinned()
        for name in self.pool:
            if name not in self.busy and name not in pinned:
                break
        else:
            name = f"_t{len(self.pool)}"
            self.pool.append(name)
        self.busy.add(name)
        if expr is not None:
            self.emit(f"{name} = {expr}")
            self._bounded(name, expr)
        else:
            self.ub.pop(name, None)
        return name

    def bound(self, expr: str) -> int | None:
        """An exclusive upper bound of expr's value here, or None."""
        return self._eval_bound(_bound_form(expr))

    def _eval_bound(self, f) -> int | None:
        if f is None:
            return None
        if f[0] == "c":
            return f[1]
        b = self.ub.get(f[1])
        if b is None:
            if f[1] not in REGN:
                return None
            b = 1 << 32
        return b if f[0] == "r" else ((b - 1) >> f[2]) + 1

    def _bounded(self, name: str, expr: str) -> None:
        """name = expr was emitted: name's bound is expr's."""
        b = self.bound(expr)
        if b is not None and b < 1 << 32:
            self.ub[name] = b
        else:
            self.ub.pop(name, None)

    def _commit_reg(self, n: int, size: int, v: str) -> None:
        if size == 4:
            self._bounded(REGN[n], v)
        else:
            self.ub.pop(REGN[full_reg(n, size)], None)
        super()._commit_reg(n, size, v)

    def _pinned(self) -> set[str]:
        out = set()
        for fs in (self.fs, self.next_fs, *self.saved):
            if fs is not None and len(fs) == 5:
                out |= _fs_words(fs)
        return out

    def start(self, insn: Insn, count: int, dead: bool) -> None:
        self.busy = set()
        self.first = len(self.lines)
        self.insn = insn
        self.dead = dead
        self.pending_regs = []
        self.pending_flags = []
        self.next_expr = None
        self.eas = {}
        self.onepage = {}
        self.ends = False
        self.next_fs = None
        self.recipes.append((insn.addr, count, LOC if self.mat else self.fs, False))
        self.cur = len(self.recipes) - 1
        if self.spoff and self._deferred(insn) is None:
            self.flush_esp()
        if self.alias and (insn.op not in ALIAS_SAFE or may_fault(insn)):
            self.unalias()

    def unalias(self) -> None:
        """Give every aliased register its value in its local."""
        for n, src in self.alias.items():
            self.emit(f"{REGN[n]} = {src}")
            self._bounded(REGN[n], src)
            self.written.add(n)
        self.alias = {}

    def synced(self) -> None:
        """The current instruction keeps its state in r and cpu (helpers)."""
        eip, count, fl, _ = self.recipes[self.cur]
        self.recipes[self.cur] = (eip, count, fl, True)

    def commit(self) -> None:
        if self.gdone:
            model = groups.writes(self.insn)
            if model is not None:
                wrote = {full_reg(n, size) for n, size, _ in self.pending_regs}
                if not wrote <= model:
                    raise AssertionError(f"{self.insn} writes {wrote}, groups.py says {model}")
        fs = self.next_fs if self.next_fs is not None else self.fs
        if not self.dead and len(fs) == 5:
            # The flags stay needed: copy the registers they refer to first.
            changing = {REGN[full_reg(n, size)]
                        for n, size, _ in self.pending_regs}
            if changing:
                parts = list(fs)
                copies = {}                 # one temp for equal parts (test %eax,%eax)
                for k in (2, 3, 4):
                    if changing & set(_WORD.findall(parts[k])):
                        c = copies.get(parts[k])
                        if c is None:
                            c = copies[parts[k]] = self.tmp(parts[k])
                        parts[k] = c
                fs = tuple(parts)
                if self.next_fs is not None:
                    self.next_fs = fs
                else:
                    self.fs = fs
        if self.alias:
            self._realias()
        if self.insn.op == "mov" and len(self.pending_regs) == 1:
            n, size, v = self.pending_regs[0]
            if size == 4 and v in REGN and v != REGN[n]:
                self.alias[n] = v
                self.pending_regs = []
        for n, size, v in list(self.pending_regs):
            if size == 4 and v.startswith("_t"):
                self._fold(n, v)
        super().commit()
        if self.next_fs is not None:
            self.fs = self.next_fs
            self.mat = self.fs is LOC
            self.next_fs = None

    def _fold(self, n: int, v: str) -> None:
        """`_tN = e` ... `reg = _tN` becomes `reg = e` where the temp was
        defined, if _tN has no other use, and nothing after its definition
        in this instruction reads reg or can raise (a restart there would
        see reg written early): `pop %ebx` is `ebx = M32[...]`, then esp."""
        reg = REGN[n]
        lines = self.lines
        head = "    " * self.indent + f"{v} = "
        j = None
        for i in range(len(lines) - 1, self.first - 1, -1):
            if lines[i].startswith(head):
                j = i
                break
        if j is None:
            return
        if sum(_WORD.findall(x).count(v) for x in lines[self.first:]) != 1:
            return
        for x in lines[j + 1:]:
            if not (_pure(x) or _MEMBER.match(x)) or reg in _WORD.findall(x):
                return
        for m, size, w in self.pending_regs:
            if w != v and (reg in _WORD.findall(w) or full_reg(m, size) == n):
                return
        if v in self._pinned() and not self._repin(v, reg):
            return
        lines[j] = "    " * self.indent + f"{reg} = " + lines[j][len(head):]
        self._bounded(reg, v)
        self.pending_regs = [p for p in self.pending_regs if p[2] != v]

    def _repin(self, v: str, reg: str) -> bool:
        """The temp v, which this instruction commits to reg whole, is
        pinned only by the flags it sets: make them refer to reg instead
        (equal from the commit on; a later write to reg copies it first,
        as for any register the flags refer to), so that v can go."""
        fs = self.next_fs
        if fs is None or len(fs) != 5 or any(
                o is not None and len(o) == 5 and v in _fs_words(o) for o in (self.fs, *self.saved)):
            return False
        word = re.compile(rf"\b{v}\b")
        self.next_fs = tuple(word.sub(reg, p) if isinstance(p, str) else p for p in fs)
        return True

    def _realias(self) -> None:
        """Before this instruction's registers are committed: an aliased
        register whose source changes, or that is written in part, gets
        its value first (at the instruction's start, where its reads saw
        the source's old value); one written whole just ends."""
        changing = {full_reg(n, size) for n, size, _ in self.pending_regs}
        whole = {n for n, size, _ in self.pending_regs if size == 4}
        stale = [(n, src) for n, src in self.alias.items()
                 if (REGN.index(src) in changing or n in changing) and n not in whole]
        for k, (n, src) in enumerate(stale):
            self.lines.insert(self.first + k, "    " * self.indent + f"{REGN[n]} = {src}")
            self.tags.insert(self.first + k, self.cur)
            self._bounded(REGN[n], src)
            self.written.add(n)
        self.alias = {n: src for n, src in self.alias.items()
                      if n not in changing and REGN.index(src) not in changing}

    # -- registers ----------------------------------------------------------------
    def r32(self, n: int) -> str:
        if n == ESP and self.spoff:
            raise AssertionError(f"{self.insn} reads esp with {self.spoff} deferred")
        src = self.alias.get(n)
        if src is not None:
            self.used.add(REGN.index(src))
            return src
        self.used.add(n)
        return REGN[n]

    def setreg(self, n: int, size: int, expr: str) -> None:
        self.written.add(full_reg(n, size))
        if size == 4 and expr in REGN and self.insn.op == "mov":
            self.pending_regs.append((n, size, expr))     # commit makes it an alias
            return
        super().setreg(n, size, expr)

    def read_tmp(self, op) -> str:
        if op.kind == REG and op.size == 4:
            return self.r32(op.reg)          # unchanged until this instruction commits
        if op.kind == REG and op.size == 1 and op.reg < 4 and self.insn.op in ("test", "cmp"):
            # Only compared: `(eax & 0xFF) == 0x2d` needs no temp.
            return f"({self.r32(op.reg)} & 0xFF)"
        return super().read_tmp(op)

    def ea(self, op, extra: int = 0) -> str:
        """The address of a memory operand, left unwrapped: a sum past 4 GiB
        misses the TLB (its key) or indexes past memory, and a negative one
        (a displacement below -1 MiB is wrapped here) has a key above ULIM,
        so either restarts in the interpreter, which wraps it.  lea wraps."""
        disp = (op.disp + extra) & M32
        if self.gacc and not extra and id(op) not in self.eas:
            # Every access through the operand (a read, a write, or both) a
            # member of a group already looked up: no address is computed;
            # only load() and store() see the name, and make it M32[_gN + k].
            kinds = [k for k, where, _, _ in groups.accesses(self.insn) if where == "op"]
            got = [self.gacc.get(k) for k in kinds]
            if kinds and all(a is not None and a.where == "op" and a.lead is None
                             and a.name in self.gdone for a in got):
                name = self.eas[id(op)] = f"@{id(op)}"
                return name
        if self.insn.op != "lea":
            one = self._one_page(op, extra, disp)
            if one is not None:
                return one
        if self.insn.op == "lea":
            return super().ea(op, extra)
        if 0x100000 <= disp < 0xFFF00000:
            below = self._below_4g(op, extra, disp)
            return super().ea(op, extra) if below is None else below
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
        if not parts:
            return hex(disp)
        expr = " + ".join(parts)
        if disp >= 0x80000000:
            expr += f" - {0x100000000 - disp:#x}"
        elif disp:
            expr += f" + {disp:#x}"
        name = expr if expr in REGN else self.tmp(expr)
        self.eas[key] = name
        return name

    def _highest(self, op, disp: int) -> tuple[int, list[str]] | None:
        """The highest address a memory operand can have here (its
        registers' known bounds), and the terms of its sum but the
        displacement; None if a register's value is unbounded."""
        hi = disp
        parts = []
        for n, scale in ((op.base, 1), (op.index, op.scale)):
            if n < 0:
                continue
            v = self.r32(n)
            b = self.bound(v)
            if b is None:
                return None
            hi += (b - 1) * scale
            parts.append(v if scale == 1 else f"{v} * {scale}")
        return hi, parts

    def _below_4g(self, op, extra: int, disp: int) -> str | None:
        """The address of a memory operand with a large displacement (a
        window such as UVPT's) whose registers' bounds keep it below 4 GiB,
        unwrapped; None if they may not."""
        key = id(op) ^ extra
        name = self.eas.get(key)
        if name is not None:
            return name
        got = self._highest(op, disp)
        if got is None or got[0] > M32 or not got[1]:
            return None
        name = self.eas[key] = self.tmp(f"{' + '.join(got[1])} + {disp:#x}")
        return name

    def _one_page(self, op, extra: int, disp: int) -> str | None:
        """The address of a memory operand known to stay in one page (its
        registers' bounds), as an expression without wrapping (it cannot
        pass 4 GiB); None if it may leave the page of its displacement."""
        key = id(op) ^ extra
        name = self.eas.get(key)
        if name is not None:
            return name if name in self.onepage else None
        got = self._highest(op, disp)
        if got is None or got[0] >> 12 != disp >> 12:
            return None
        parts = got[1]
        expr = f"({' + '.join(parts)} + {disp:#x})" if parts else hex(disp)
        self.onepage[expr] = (disp & ~0xFFF, op, disp)
        self.eas[key] = expr
        return expr

    def _entry(self, kind: str, page: int, disp: int) -> str:
        """The TLB entry of a page known at compile time: kind "d" its
        delta (physical address = va + delta), "w" the word index of disp
        in it.  In a loop tree a placeholder (_hqN) that settle() makes a
        local assigned before the loop if a path back to the head uses
        it; else looked up where it is used (a KeyError for a miss)."""
        key = (kind, page if kind == "d" else disp)
        if self.hoist is None:
            return _entry_expr(key, False)
        k = self.hoist.get(key)
        if k is None:
            k = self.hoist[key] = len(self.hoist)
        self.path_keys |= {key}
        return f"_hq{k}"

    def settle(self, mark: int) -> None:
        """After a loop tree whose code starts at line mark: its entries
        used on a path back to the head are looked up once, before the
        loop (NOPAGE when the page is not in the TLB: the load then
        indexes past memory, an IndexError, and is restarted as a miss
        is); the others where they are used."""
        names = {}
        before = []
        for key, k in self.hoist.items():
            if key not in self.looping:
                names[str(k)] = _entry_expr(key, False)
                continue
            names[str(k)] = name = f"_h{k}"
            before.append(f"{name} = {_entry_expr(key, True)}")
        if names:
            sub = functools.partial(_HQ.sub, lambda m: names[m[1]])
            lines = self.lines
            for i in range(mark, len(lines)):
                if "_hq" in lines[i]:
                    lines[i] = sub(lines[i])
        pad = "    " * self.indent
        self.lines[mark:mark] = [pad + x for x in before]
        self.tags[mark:mark] = [-1] * len(before)

    def _load_one_page(self, addr: str, size: int) -> str | None:
        """A load from an address _one_page made, aligned for its size
        (its TLB key is then the page), or None."""
        page, op, disp = self.onepage[addr]
        if size > 1 and (disp % size or op.base >= 0 or op.index >= 0 and op.scale % size):
            return None
        if size == 4 and op.base < 0:
            w = self._entry("w", page, disp)
            if op.index < 0:
                return self.tmp(f"M32[{w}]")
            if op.scale == 4:
                return self.tmp(f"M32[{self.r32(op.index)} + {w}]")
        d = self._entry("d", page, disp)
        if size == 4:
            return self.tmp(f"M32[({addr} + {d}) >> 2]")
        if size == 1:
            return self.tmp(f"MEM[{addr} + {d}]")
        return self.tmp(f"M16[({addr} + {d}) >> 1]")

    # -- memory -------------------------------------------------------------------
    def _addr(self, addr: str) -> str:
        return addr if _is_simple(addr) or addr in REGN else self.tmp(addr)

    def _grouped(self, addr: str, kind: str, size: int) -> str | None:
        """The word index of this access if it is in a group: M32[_gN + k]
        (the leader looks the group's page up first); else None."""
        a = self.gacc.get(kind)
        if a is None or size != 4:
            if addr[0] == "@":
                raise AssertionError(f"{self.insn}: a grouped operand's {kind} was not planned")
            return None
        where = a.where
        if addr[0] == "@":
            ok = where == "op"
        elif where == "op":
            ok = any(o.kind == MEM and self.eas.get(id(o)) == addr for o in self.insn.ops)
        elif where == "top":
            ok = addr == self.r32(ESP)
        elif where == "ebp":
            ok = addr == self.r32(EBP)
        else:
            ok = self.insn.op in ("push", "call", "calli")
        if not ok:
            return None
        del self.gacc[kind]
        if a.lead is not None:
            reg, rel, span, tlb = a.lead
            x = self.r32(reg)
            if rel:
                x = f"(_a := {x} {'+' if rel > 0 else '-'} {abs(rel):#x})"
                y = "_a"
            else:
                y = x
            key = f"({y} & 0xFFFFF003)"
            if span:
                key += f" | (({y} ^ ({y} + {span:#x})) >> 10 & 4)"
            self.emit(f"{a.name} = ({x} + {tlb}[{key}]) >> 2")
            self.gdone |= {a.name}
        elif a.name not in self.gdone:
            return None
        return f"{a.name} + {a.word}" if a.word else a.name

    def load(self, addr: str, size: int) -> str:
        w = self._grouped(addr, "r", size)
        if w is not None:
            return self.tmp(f"M32[{w}]")
        v = self._load(addr, size)
        if size < 4:
            self.ub[v] = 1 << 8 * size          # a byte or a word: below 256 or 65,536
        return v

    def _load(self, addr: str, size: int) -> str:
        if addr in self.onepage and self.insn.addr not in self.slow:
            v = self._load_one_page(addr, size)
            if v is not None:
                return v
        a = self._addr(addr)
        if self.insn.addr in self.slow:
            fn = codegen.RD[size]
            w = f"{a} & 0xFFFFFFFF" if a.startswith("_t") else a      # unwrapped sums
            if size == 4:
                return self.tmp(f"M32[({a} + _d) >> 2] if (_d := RD.get({a} & 0xFFFFF003)) "
                                f"is not None else m.{fn}({w})")
            if size == 1:
                return self.tmp(f"MEM[{a} + _d] if (_d := RD.get({a} & 0xFFFFF000)) "
                                f"is not None else m.{fn}({w})")
            return self.tmp(f"M16[({a} + _d) >> 1] if (_d := RD.get({a} & 0xFFFFF001)) "
                            f"is not None else m.{fn}({w})")
        if size == 4:
            return self.tmp(f"M32[({a} + RD[{a} & 0xFFFFF003]) >> 2]")
        if size == 1:
            return self.tmp(f"MEM[{a} + RD[{a} & 0xFFFFF000]]")
        return self.tmp(f"M16[({a} + RD[{a} & 0xFFFFF001]) >> 1]")

    def store(self, addr: str, size: int, expr: str) -> None:
        w = self._grouped(addr, "w", size)
        if w is not None:
            self.emit(f"M32[{w}] = {expr}")
            return
        a = self._addr(addr)
        if self.insn.addr in self.slow:
            fn = codegen.WR[size]
            key = {4: "0xFFFFF003", 1: "0xFFFFF000", 2: "0xFFFFF001"}[size]
            target = {4: f"M32[({a} + _d) >> 2]", 1: f"MEM[{a} + _d]",
                      2: f"M16[({a} + _d) >> 1]"}[size]
            w = f"{a} & 0xFFFFFFFF" if a.startswith("_t") else a
            self.emit(f"if (_d := WR.get({a} & {key})) is None: m.{fn}({w}, {expr})")
            self.emit(f"else: {target} = {expr}")
            return
        if size == 4:
            self.emit(f"M32[({a} + WR[{a} & 0xFFFFF003]) >> 2] = {expr}")
        elif size == 1:
            self.emit(f"MEM[{a} + WR[{a} & 0xFFFFF000]] = {expr}")
        else:
            self.emit(f"M16[({a} + WR[{a} & 0xFFFFF001]) >> 1] = {expr}")

    def check_write(self, addr: str, n: int) -> None:
        self.emit(f"m.check_write({addr} & 0xFFFFFFFF, {n})")

    # -- flags --------------------------------------------------------------------
    def _operand(self, v: str) -> str:
        if _is_simple(v) or v in REGN or v is self.deferred:
            return v
        return f"({v})" if _pure(v) else self.tmp(v)

    def _partial_dead(self) -> bool:
        """This instruction computes flags from flags nobody will see."""
        return self.dead and self.insn.op in PARTIAL

    def _need(self) -> tuple:
        fs = self.fs
        if fs is UNK:
            raise AssertionError(f"flags read where they are dead at {self.insn.addr:#x}")
        return fs

    def set_lazy(self, kind: int, size: int, a: str, b: str, res: str) -> None:
        if self.dead:
            self.next_fs = UNK
            return
        m = _LOW_TEST.fullmatch(res)
        if m and int(m[2], 16) <= 0xFF:
            res = f"({m[1]} & {m[2]})"         # test $imm8,%al: `eax & imm`
        self.next_fs = ("k", kind << 3 | size, self._operand(a), self._operand(b),
                        self._operand(res))

    def set_lazy_kind(self, kind: str, a: str, b: str, res: str) -> None:
        if self.dead:
            self.next_fs = UNK
            return
        self.next_fs = ("d", self._operand(kind), self._operand(a), self._operand(b),
                        self._operand(res))

    def _parts(self):
        """(fk, fa, fb, fr) expressions of the current flag state."""
        fs = self._need()
        if fs is LOC:
            return "fk", "fa", "fb", "fr"
        if fs is EF:
            return "0", "0", "0", "0"
        return (hex(fs[1]) if fs[0] == "k" else fs[1]), fs[2], fs[3], fs[4]

    def eflags(self) -> str:
        if self._partial_dead():
            return "0"                      # only feeds flags nobody sees
        if self._need() is EF:
            return self.tmp("ef")
        k, a, b, r = self._parts()
        return self.tmp(f"eflags_of({k}, {a}, {b}, {r}, ef)")

    def carry(self) -> str:
        if self._partial_dead():
            return "0"
        if self.insn.op in ("inc", "dec") and self.insn.ops[0].kind != MEM:
            # Only the flags see it: computed when they are stored or seen.
            self.deferred = self._carry_expr()
            return self.deferred
        return self.tmp(self._carry_expr())

    def _carry_expr(self) -> str:
        fs = self._need()
        if fs is EF:
            return "(ef & 1)"
        if fs[0] == "k":
            kind = fs[1] >> 3
            a, b, r = fs[2], fs[3], fs[4]
            if kind == SUB:
                return f"(1 if {a} < {b} else 0)"
            if kind == ADD:
                return f"(1 if {r} < {a} else 0)"
            if kind == LOGIC:
                return "0"
            if kind in (INC, DEC):
                return f"({b} & 1)"
            if kind == MUL:
                return f"(1 if {b} else 0)"
            if kind == SBB:
                return f"(1 if {a} <= {b} else 0)"
            if kind == ADC:
                return f"(1 if {r} <= {a} else 0)"
        if fs is LOC:
            # inc/dec (kinds 6 and 7: fk >> 4 == 3) keep CF in fb.
            return "((fb & 1) if fk >> 4 == 3 else cf_of(fk, fa, fb, fr, ef))"
        k, a, b, r = self._parts()
        return f"cf_of({k}, {a}, {b}, {r}, ef)"

    def set_arith(self, bits: str, mask: int = codegen.ARITH) -> None:
        if self.dead:
            self.next_fs = UNK
            return
        bits = bits if _is_simple(bits) else self.tmp(bits)    # before registers change
        if mask == codegen.ARITH:
            self.pending_flags.append(f"ef = (ef & {~mask & M32:#x}) | {bits}")
        else:
            f = self.eflags()
            self.pending_flags.append(f"ef = ({f} & {~mask & M32:#x}) | {bits}")
        self.next_fs = EF

    def set_ef(self, expr: str) -> None:
        if self.dead and self.insn.op != "popf":
            self.next_fs = UNK              # only arithmetic flags change
            return
        v = self._operand(expr) if _is_simple(expr) else self.tmp(expr)
        self.pending_flags.append(f"ef = {v}")
        self.next_fs = EF

    def set_df(self, on: bool) -> None:
        self.pending_flags.append("ef |= 0x400" if on else "ef &= 0xFFFFFBFF")

    def df(self) -> str:
        return "(ef & 0x400)"

    def cond(self, cc: int) -> str:
        """A Python expression for condition cc from the current flag state."""
        expr = self._static_cond(cc >> 1)
        if expr is None:
            k, a, b, r = self._parts()
            if cc >> 1 == 2 and k == "fk":
                expr = "((fr == 0) if fk else (ef & 0x40))"
            else:
                return f"test_cc({cc}, {k}, {a}, {b}, {r}, ef)"
        return f"(not {expr})" if cc & 1 else expr

    def _static_cond(self, c: int) -> str | None:
        fs = self._need()
        if fs is EF:
            f = {0: "ef & 0x800", 1: "ef & 1", 2: "ef & 0x40", 3: "ef & 0x41", 4: "ef & 0x80",
                 5: "ef & 4", 6: "(not (ef & 0x80)) != (not (ef & 0x800))",
                 7: "(ef & 0x40 or (not (ef & 0x80)) != (not (ef & 0x800)))"}[c]
            return f"({f})"
        if fs[0] != "k":
            return None
        kind, size = fs[1] >> 3, fs[1] & 7
        a, b, r = fs[2], fs[3], fs[4]
        S = SIGN[size]
        if c == 2:
            return f"({a} == {b})" if kind == SUB else f"(not {r})"
        if c == 4:
            return f"({r} & {S:#x})"
        if kind == SUB:
            return {1: f"({a} < {b})", 3: f"({a} <= {b})",
                    6: f"(({a} ^ {S:#x}) < ({b} ^ {S:#x}))",
                    7: f"(({a} ^ {S:#x}) <= ({b} ^ {S:#x}))"}.get(c)
        if kind == LOGIC:
            return {0: "False", 1: "False", 3: f"({r} == 0)", 6: f"({r} & {S:#x})",
                    7: f"({r} == 0 or {r} & {S:#x})"}.get(c)
        if kind in (INC, DEC) and c == 1:
            return f"({b} & 1)"
        return None

    def materialize(self) -> None:
        """Store the flag state into the locals fk, fa, fb, fr."""
        if self.mat:
            return
        fs = self._need()
        if fs is EF:
            self.emit("fk = 0")
        else:
            k = hex(fs[1]) if fs[0] == "k" else fs[1]
            if any(_CALL.search(str(x)) or "fk" in str(x) for x in fs[2:]):
                self.emit(f"fk, fa, fb, fr = {k}, {fs[2]}, {fs[3]}, {fs[4]}")
            else:
                self.emit(f"fk = {k}; fa = {fs[2]}; fb = {fs[3]}; fr = {fs[4]}")
            self.fs = (fs[0], fs[1] if fs[0] == "k" else "fk", "fa", "fb", "fr")
        self.mat = True

    def fid(self) -> int:
        """An id for the current flag state, for `fid` (0: in the locals)."""
        if self.mat:
            return 0
        key = self._need()
        k = self.fids.get(key)
        if k is None:
            k = self.fids[key] = len(self.fids) + 1
        return k

    # -- control ------------------------------------------------------------------
    def softint(self, trapno: int) -> None:
        raise AssertionError("int is a block terminator")

    def string_op(self, name: str) -> None:
        """Call the runtime helper with the state in r and cpu."""
        i = self.insn
        self.commit()
        self.synced()
        for n in range(8):
            self.used.add(n)
            self.written.add(n)
        self.materialize()
        self.emit("r[:] = eax, ecx, edx, ebx, esp, ebp, esi, edi")
        self.emit("cpu.fk = fk; cpu.fa = fa; cpu.fb = fb; cpu.fr = fr; cpu.ef = ef")
        self.next_expr = self.tmp(f"{name}(cpu, r, m, {i.size}, {i.rep}, {i.addr:#x}, "
                                  f"{i.next:#x})")
        self.emit("eax, ecx, edx, ebx, esp, ebp, esi, edi = r")
        for reg in REGN:
            self.ub.pop(reg, None)
        if name in ("cmps", "scas"):
            self.emit("fk = cpu.fk; fa = cpu.fa; fb = cpu.fb; fr = cpu.fr")
            self.fs = LOC
        self.mat = True


# -- compiling a region --------------------------------------------------------------

def _emit_region(plan: Plan, slow: frozenset):
    """The region's body: the dispatch on pc with each head's tree.

    A tree continues into the callee of a call (static, or a target an
    indirect call was seen to take, under a guard) and, at the callee's
    ret, into the code after the call (under a guard that the popped
    address is that one), even where those are heads: a call and its
    return cost two comparisons instead of two dispatches."""
    g = RegionGen(slow)
    bbs = plan.bbs
    heads = plan.heads
    maxpath = [1]

    # A loop tree follows inline the heads of a short loop through its head,
    # so a tight loop runs without a dispatch per head per turn (a long one
    # would compile much more code for little gain).
    loops = _short_loops(bbs)

    def fits(bb: Bb, cnt: int, t: dict, depth: int) -> bool:
        return (cnt + len(bb.insns) <= MAX_PATH and depth <= MAX_DEPTH
                and t["size"] + len(bb.insns) <= MAX_TREE)

    def edge(target: int, cnt: int, t: dict, depth: int, ctx: tuple, inl: frozenset,
             follow: bool = False) -> None:
        """Control moves to the static address target after cnt instructions.
        ctx: return addresses of the calls followed on this path; follow:
        target is a callee or a return point (compile it here even if it is
        a head, unless already on this path)."""
        bb = bbs.get(target)
        if target == t["head"] and t["loops"]:
            to_head(target, cnt, t, self_loop=True)
            return
        if bb is not None and target not in heads:
            if not fits(bb, cnt, t, depth):
                raise Retry(target)
            t["size"] += len(bb.insns)
            enter_page(target, t)
            path(bb, cnt, t, depth, ctx, inl)
            return
        if bb is not None and (follow or t["loops"] and target in loops.get(t["head"], ())) \
                and target not in inl and fits(bb, cnt, t, depth) \
                and t["followed"] + len(bb.insns) <= MAX_FOLLOW:
            t["size"] += len(bb.insns)
            t["followed"] += len(bb.insns)
            enter_page(target, t)
            path(bb, cnt, t, depth, ctx, inl | {target})
            return
        to_head(target, cnt, t, self_loop=False)

    def enter_page(target: int, t: dict) -> None:
        """Code on another page follows: its first fetch sets A (NOTA: the
        env's pages of region code whose A is still clear)."""
        if target >> 12 != t["page"]:
            g.unalias()
            g.emit(f"if NOTA: _touch(m, {target >> 12:#x})")
            t["page"] = target >> 12

    @contextlib.contextmanager
    def side(test: str, t: dict):
        """`if test:` with what the with-block emits under it; after it the
        path's state is as before (the code after the `if` is the other
        side of the branch)."""
        saved = (g.fs, g.mat, t["fid0"], t["page"], dict(g.ub), g.path_keys, t["place"], g.gdone,
                 g.spoff)
        g.saved.append(g.fs)
        g.emit(f"if {test}:")
        g.indent += 1
        yield
        g.indent -= 1
        g.saved.pop()
        g.fs, g.mat, t["fid0"], t["page"], g.ub, g.path_keys, t["place"], g.gdone, \
            g.spoff = saved

    def guarded(expr: str, target: int, cnt: int, t: dict, depth: int, ctx: tuple,
                inl: frozenset) -> None:
        """if expr == target: follow it here (the fall-through is emitted next)."""
        bb = bbs.get(target)
        if bb is None or target in inl or not fits(bb, cnt, t, depth + 1) \
                or t["followed"] + len(bb.insns) > MAX_FOLLOW:
            return
        with side(f"{expr} == {target:#x}", t):
            edge(target, cnt, t, depth + 1, ctx, inl, follow=True)

    def to_head(target: int, cnt: int, t: dict, self_loop: bool) -> None:
        g.flush_esp()
        g.unalias()
        maxpath[0] = max(maxpath[0], cnt)
        jump = "break" if t["loops"] else "continue"
        dead = target in heads and not plan.live[target]
        if self_loop:
            t["back"] = True
            g.looping |= g.path_keys
            if dead:
                fid = g.fid()
                g.emit(f"n += {cnt}")
                g.emit(f"if n > lim: pc = {target:#x}; fid = {fid}; break"
                       if fid or not t["fid0"] else f"if n > lim: pc = {target:#x}; break")
            else:
                g.materialize()
                if not t["fid0"]:
                    g.emit("fid = 0")
                    t["fid0"] = True
                g.emit(f"n += {cnt}")
                g.emit(f"if n > lim: pc = {target:#x}; break")
            g.emit("continue")
            return
        if dead:
            fid = g.fid()
            if fid or not t["fid0"]:
                g.emit(f"fid = {fid}")
        else:
            g.materialize()
            if not t["fid0"]:
                g.emit("fid = 0")
        g.emit(f"pc = {target:#x}; n += {cnt}")
        g.emit(jump)

    def leave(expr: str, cnt: int, t: dict) -> None:
        """Control moves to a computed address (or leaves with a reason)."""
        g.flush_esp()
        g.unalias()
        maxpath[0] = max(maxpath[0], cnt)
        g.materialize()
        if not t["fid0"]:
            g.emit(f"pc = {expr}; n += {cnt}; fid = 0")
        else:
            g.emit(f"pc = {expr}; n += {cnt}")
        g.emit("break" if t["loops"] else "continue")

    def path(bb: Bb, cnt: int, t: dict, depth: int, ctx: tuple, inl: frozenset) -> None:
        insns = bb.insns
        term = bb.term
        dead = plan.dead[bb.start]
        body = len(insns) - 1 if term is not None else len(insns)
        place = t["place"] = t["place"] + (bb.start,)
        g.group_block(bb, place, bbs, heads)
        for k in range(body):
            insn = insns[k]
            g.group_insn(place, k)
            g.start(insn, cnt, dead[k])
            if not g.stack_op(insn):
                codegen.SEMANTICS[insn.op](g, insn)
            if insn.op in STRING_OPS:
                # A rep instruction may stop part-way: then leave at it.
                nxt = g.next_expr
                g.next_expr = None
                if insn.rep:
                    with side(f"{nxt} != {insn.next:#x}", t):
                        leave(nxt, cnt + 1, t)
            else:
                g.commit()
            cnt += 1
        if term is None:
            edge(bb.next, cnt, t, depth, ctx, inl)
            return
        g.group_insn(place, len(insns) - 1)
        g.start(term, cnt, dead[-1])
        op = term.op
        cnt += 1
        if op in BRANCHES:
            if op == "jcc":
                cond = g.cond(term.cond)
            elif op == "jecxz":
                cond = f"({g.r32(1)} == 0)"
            else:
                # loop*: ecx is decremented first; the test reads it after.
                zf = g.cond(4 if op == "loope" else 5) if op != "loop" else None
                if zf is not None and not _is_simple(zf):
                    zf = g.tmp(zf)
                g.setreg(1, 4, f"({g.r32(1)} - 1) & 0xFFFFFFFF")
                g.commit()
                cond = "ecx" if zf is None else f"(ecx and {zf})"
            with side(cond, t):
                edge(term.ops[0].imm, cnt, t, depth + 1, ctx, inl)
            edge(term.next, cnt, t, depth, ctx, inl)
            return
        if op in ("int", "int3"):
            code = EXIT_SYSCALL if op == "int" and term.ops[0].imm == 0x30 else EXIT_INT3
            leave(f"{term.next | code:#x}", cnt, t)
            return
        if not g.stack_op(term):
            codegen.SEMANTICS[op](g, term)
        nxt = g.next_expr
        g.commit()
        if op == "jmp":
            edge(term.ops[0].imm, cnt, t, depth, ctx, inl)
        elif op == "call":
            edge(term.ops[0].imm, cnt, t, depth, ctx + (term.next,), inl, follow=True)
        else:
            if op == "ret" and ctx:
                guarded(nxt, ctx[-1], cnt, t, depth, ctx[:-1], inl)
            elif op in ("calli", "jmpi"):
                more = ctx + (term.next,) if op == "calli" else ctx
                for target in sorted(plan.indirect.get(term.addr, ()))[:MAX_GUARDS]:
                    guarded(nxt, target, cnt, t, depth, more, inl)
            leave(nxt, cnt, t)

    def tree(head: int, loops: bool) -> dict:
        live = plan.live[head]
        g.fs, g.mat = (LOC, True) if live else (UNK, False)
        g.alias = {}
        g.ub = {}
        g.path_keys = frozenset()
        t = {"head": head, "loops": loops, "size": len(bbs[head].insns), "back": False,
             "fid0": live, "followed": 0, "page": head >> 12, "place": ()}
        g.group_tree()
        path(bbs[head], 0, t, 0, (), frozenset((head,)))
        return t

    def dispatch(hs: list[int]) -> None:
        if len(hs) <= 3:
            for k, h in enumerate(hs):
                g.emit(f"{'if' if k == 0 else 'elif'} pc == {h:#x}:")
                g.indent += 1
                g.emit(f"if NOTA: _touch(m, {h >> 12:#x})")
                mark = len(g.lines)
                g.emit("while True:")
                g.indent += 1
                g.hoist = {}
                g.looping = set()
                t = tree(h, True)
                g.indent -= 1
                if t["back"]:
                    g.settle(mark)
                g.hoist = None
                if not t["back"]:
                    # No path returns to this head: no loop.
                    del g.lines[mark:]
                    del g.tags[mark:]
                    tree(h, False)
                g.indent -= 1
            g.emit("else: break")
            return
        mid = len(hs) // 2
        g.emit(f"if pc < {hs[mid]:#x}:")
        g.indent += 1
        dispatch(hs[:mid])
        g.indent -= 1
        g.emit("else:")
        g.indent += 1
        dispatch(hs[mid:])
        g.indent -= 1

    g.indent = 3
    dispatch(sorted(heads))
    return g, maxpath[0]


def _peephole(lines: list[str], tags: list[int], keep: set[str]):
    """Drop temps nothing reads (pure ones), and fold `_tN = e` followed by
    `x = _tN` into `x = e` where _tN has no other use.  `keep`: names the
    fault and exit tables refer to."""
    uses: dict[str, int] = {}
    for line in lines:
        for w in _WORD.findall(line):
            if w.startswith("_t"):
                uses[w] = uses.get(w, 0) + 1
    out, otags = [], []
    k = 0
    n = len(lines)
    while k < n:
        line = lines[k]
        body = line.lstrip()
        if body.startswith("_t") and " = " in body:
            name, expr = body.split(" = ", 1)
            if name.isidentifier() and name not in keep and _pure(expr):
                if uses.get(name, 0) == 1:
                    k += 1                      # defined, never read
                    continue
                if uses.get(name, 0) == 2 and k + 1 < n:
                    nxt = lines[k + 1]
                    nb = nxt.lstrip()
                    if nb.endswith(f" = {name}") and len(nxt) - len(nb) == len(line) - len(body) \
                            and tags[k + 1] == tags[k]:
                        target = nb[:-len(f" = {name}")]
                        out.append(line[:len(line) - len(body)] + f"{target} = {expr}")
                        otags.append(tags[k])
                        k += 2
                        continue
        out.append(line)
        otags.append(tags[k])
        k += 1
    return out, otags


def compile_region(plan: Plan, slow: frozenset = frozenset(), to_code=compile):
    """Compile a planned region; returns the function (attributes: heads,
    maxpath, src, plan) or raises Retry when a block must become a head.
    to_code(source, name, "exec"): Python's compile, or one that does the
    same elsewhere (bytecode.compile_in_helper)."""
    g, maxpath = _emit_region(plan, slow)
    keep = set()
    for _, _, fs, _ in g.recipes:
        if len(fs) == 5:
            for part in fs[1:]:
                keep.update(_WORD.findall(str(part)))
    for fs in g.fids:
        for part in fs[1:]:
            keep.update(_WORD.findall(str(part)))
    lines, tags = _peephole(g.lines, g.tags, keep)
    regs = sorted(g.used | g.written)
    src = ["def _r(cpu, r, m, budget, pc):"]
    src += [f"    {REGN[i]} = r[{i}]" for i in regs]
    src.append("    fk = cpu.fk; fa = cpu.fa; fb = cpu.fb; fr = cpu.fr; ef = cpu.ef; fid = 0")
    src.append("    RD = m.rt; WR = m.wt; M32 = m.m32; M16 = m.m16; MEM = m.mem; NOTA = m.nota")
    src.append(f"    n = 0; lim = budget - {maxpath}")
    src.append("    try:")
    src.append("        while n <= lim:")
    first = len(src) + 1                    # line number of the first body line
    src += lines
    src.append("        else:")
    src.append("            if pc <= 0xFFFFFFFF: pc |= EXIT_TAIL")
    state = f"n, ({''.join(REGN[i] + ', ' for i in regs)}), fk, fa, fb, fr, ef, _frame()"
    src.append("    except (KeyError, IndexError) as _e:")
    src.append(f"        return _restart(_e, cpu, r, {state})")
    src.append("    except CpuFault as _e:")
    src.append(f"        _fault(_e, cpu, r, {state})")
    src.append("        raise")
    for fs, k in sorted(g.fids.items(), key=lambda kv: kv[1]):
        # The flag state a move to a head left in `fid`, stored at the exit.
        test = "if" if k == 1 else "elif"
        if fs is EF:
            src.append(f"    {test} fid == {k}: fk = 0")
        else:
            kind = hex(fs[1]) if fs[0] == "k" else fs[1]
            src.append(f"    {test} fid == {k}: fk, fa, fb, fr = {kind}, {fs[2]}, {fs[3]}, {fs[4]}")
    src += [f"    r[{i}] = {REGN[i]}" for i in sorted(g.written)]
    src.append("    cpu.fk = fk; cpu.fa = fa; cpu.fb = fb; cpu.fr = fr; cpu.ef = ef")
    src.append("    return pc, n")
    text = "\n".join(src) + "\n"
    ns = dict(runtime.GLOBALS)
    ns.update(EXIT_TAIL=EXIT_TAIL, CpuFault=CpuFault, cf_of=runtime.cf_of,
              _restart=_restart, _fault=_fault, _flags=_flags, _frame=sys._getframe,
              _touch=_touch,
              _RECIPES=g.recipes, _LINES={first + k: t for k, t in enumerate(tags) if t >= 0},
              _AT={},
              _FIDS={v: k for k, v in g.fids.items()},
              _REGS=tuple(REGN[i] for i in regs))
    exec(to_code(text, f"<region {plan.entry:#010x}>", "exec"), ns)
    fn = ns["_r"]
    fn.src = text
    fn.heads = tuple(sorted(plan.heads))
    fn.maxpath = maxpath
    fn.plan = plan
    fn.size = sum(len(bb.insns) for bb in plan.bbs.values())
    return fn


# -- faults and restarts inside a region ---------------------------------------------

def _value(x, loc) -> int:
    """A flag operand (literal, local, or pure expression of locals) now."""
    if isinstance(x, int):
        return x
    v = loc.get(x)
    if v is not None:
        return v
    return eval(x, _EVAL, {k: loc[k] for k in _WORD.findall(x)
                           if k not in _EVAL and not keyword.iskeyword(k)})


def _flags(fs, loc) -> tuple:
    """(fk, fa, fb, fr, ef) of a compile-time flag state, from the locals."""
    if fs is UNK:
        raise AssertionError("flags needed where they were dead")
    if fs is LOC:
        return loc["fk"], loc["fa"], loc["fb"], loc["fr"], loc["ef"]
    if fs is EF:
        return 0, 0, 0, 0, loc["ef"]
    k = fs[1] if fs[0] == "k" else _value(fs[1], loc)
    return k, _value(fs[2], loc), _value(fs[3], loc), _value(fs[4], loc), loc["ef"]


def _touch(m, vpn: int) -> None:
    """The first fetch from page vpn in this env: set its A bit."""
    if vpn in m.nota:
        m.nota.discard(vpn)
        m._read_base(vpn << 12)


_EVAL = {"cf_of": runtime.cf_of, "eflags_of": runtime.eflags_of, "sx": runtime.sx,
         "__builtins__": {}}


class _Locals:
    """The locals a fault recipe needs: the registers, n and the flag locals
    as the handler passed them, the rest from the frame (only if asked)."""
    __slots__ = ("known", "frame", "all")

    def __init__(self, known: dict, frame):
        self.known = known
        self.frame = frame
        self.all = None

    def get(self, name, default=None):
        v = self.known.get(name)
        if v is not None:
            return v
        if self.all is None:
            self.all = self.frame.f_locals
        return self.all.get(name, default)

    def __getitem__(self, name):
        v = self.get(name)
        if v is None:
            raise KeyError(name)
        return v

    def keys(self):
        if self.all is None:
            self.all = self.frame.f_locals
        return self.all.keys()


def _writeback(e, cpu, r, n, regs, fk, fa, fb, fr, ef, frame):
    """Put the state before the faulting instruction into r and cpu;
    returns (its eip, instructions completed)."""
    tb = e.__traceback__
    g = tb.tb_frame.f_globals
    # tb_lineno scans the function's line table (a region's has thousands
    # of lines); the bytecode offset of the same place is remembered.
    at = g["_AT"]
    k = at.get(tb.tb_lasti)
    if k is None:
        k = g["_LINES"].get(tb.tb_lineno)
        if k is None:
            raise AssertionError(f"no instruction at line {tb.tb_lineno}") from e
        at[tb.tb_lasti] = k
    eip, offset, fs, synced = g["_RECIPES"][k]
    if not synced:
        names = g["_REGS"]
        for name, v in zip(names, regs):
            r[REGN.index(name)] = v
        loc = dict(zip(names, regs), fk=fk, fa=fa, fb=fb, fr=fr, ef=ef)
        cpu.fk, cpu.fa, cpu.fb, cpu.fr, cpu.ef = _flags(fs, _Locals(loc, frame))
    return eip, n + offset


def _restart(e, cpu, r, n, regs, fk, fa, fb, fr, ef, frame):
    """A TLB miss: state before the instruction, and the interpreter's turn."""
    eip, count = _writeback(e, cpu, r, n, regs, fk, fa, fb, fr, ef, frame)
    return eip | EXIT_RESTART, count


def _fault(e, cpu, r, n, regs, fk, fa, fb, fr, ef, frame) -> None:
    """A fault: state before the instruction, eip and count on the exception."""
    eip, count = _writeback(e, cpu, r, n, regs, fk, fa, fb, fr, ef, frame)
    e.eip = eip
    e.count = count


# -- building regions ----------------------------------------------------------------

_COMPILED: dict[tuple, object] = {}
_COMPILED_MAX = 5_000


def plan_region(m, entry: int, seen, indirect, taken, static: bool) -> Plan | None:
    """Decide the blocks of the region at entry.  seen(a): the block at a
    has run; indirect(a): targets the indirect transfer at a took;
    taken(a): a is a head of another region large enough to end this one
    (a small one's code is compiled again into this one)."""
    first = decode_bb(m, entry)
    if first is None:
        return None
    bbs = {entry: first}
    dyn: set[int] = set()
    ind: dict[int, set[int]] = {}
    work = deque([first])
    total = len(first.insns)
    while work:
        bb = work.popleft()
        targets = list(bb.succ)
        t = bb.term
        if t is not None:
            if t.op in ("call", "calli") or t.op in ("int", "int3") and not static:
                targets.append(t.next)
                dyn.add(t.next)
            if t.op in INDIRECT:
                seen_targets = indirect(t.addr)
                targets += sorted(seen_targets)
                dyn |= seen_targets
                ind[t.addr] = seen_targets
        for a in targets:
            if a in bbs or a >= UTOP or taken(a):
                continue
            if not static and not seen(a):
                continue
            if total >= (MAX_STATIC if static else MAX_REGION):
                continue
            nb = decode_bb(m, a)
            if nb is None:
                continue
            bbs[a] = nb
            total += len(nb.insns)
            work.append(nb)
    return Plan(entry, bbs, dyn, ind)


def build(m, entry: int, seen, indirect, taken, static: bool, slow: frozenset):
    """Plan and compile (or reuse) the region at entry; None if there is
    no code a region can start with there.  Its `plan` has the blocks (and
    heads) it was compiled from."""
    plan = plan_region(m, entry, seen, indirect, taken, static)
    if plan is None:
        return None
    return remember_built(m, _compile(plan, slow))


def remember_built(m, fn):
    """Keep a newly built region fn for later kernels (its pages as m holds them)."""
    _remember(fn, {v: m.peek(v << 12, PGSIZE) for v in {b >> 12 for b in fn.plan.bbs}})
    return fn


def _remember(fn, pages: dict) -> None:
    """Keep fn for later kernels, with the pages it was compiled from,
    whole: a kernel running the same program finds them equal with one
    comparison each."""
    if hasattr(fn, "pages"):
        return
    fn.pages = pages
    for h in fn.heads:
        known = _BY_HEAD.setdefault(h, [])
        if len(known) >= 8:
            del known[0]
        known.append(fn)


def _compile(plan: Plan, slow: frozenset):
    """Compile a plan (or reuse the function compiled from the same code,
    heads and slow instructions)."""
    key, fn = lookup(plan, slow)
    if fn is None:
        fn = adopt(*compile_job(plan, key))
    return fn


# Compiling in another thread (cpu.py, when m.phys.compiler is set): the
# caller plans (plan_region, plan_with_heads, plan_merged), looks the plan
# up, and if it was never compiled runs compile_job in the worker; once
# done, it checks same_code and calls adopt, all but compile_job in its
# own thread.

def _key(plan: Plan, slow: frozenset) -> tuple:
    """What a compiled region depends on: entry, code, heads, slow instructions."""
    key_code = tuple((s, bb.raw) for s, bb in sorted(plan.bbs.items()))
    slow_here = frozenset(a for a in slow if any(
        bb.start <= a < bb.next for bb in plan.bbs.values()))
    return (plan.entry, key_code, tuple(sorted(plan.heads)), slow_here)


def lookup(plan: Plan, slow: frozenset) -> tuple:
    """(the plan's key, the function compiled before from its code and
    heads or None)."""
    key = _key(plan, slow)
    return key, _COMPILED.get(key)


def compile_job(plan: Plan, key: tuple, to_code=compile) -> tuple:
    """(key, function) for a plan and its key: compile_region, with the
    heads it asks for added.  Touches nothing but plan (the caller's own):
    safe in a worker thread."""
    while True:
        try:
            return key, compile_region(plan, key[3], to_code)
        except Retry as r:
            plan.heads.add(r.start)
            plan.liveness()


_INFLIGHT: dict[tuple, object] = {}     # key -> Future of a compile under way elsewhere


def compile_elsewhere(executor, plan: Plan, key: tuple):
    """A future of compile_job(plan, key) run by executor, its Python
    bytecode compiled by the helper process (bytecode.py: the builtin
    compile holds the GIL throughout); a plan of the same key already
    compiling there (another env running the same program) shares its
    future instead of compiling again."""
    job = _INFLIGHT.get(key)
    if job is None:
        job = _INFLIGHT[key] = executor.submit(compile_job, plan, key,
                                               bytecode.compile_in_helper)
        job.add_done_callback(lambda _: _INFLIGHT.pop(key, None))
    return job


def compiles_in_flight() -> int:
    """Compiles under way in worker threads (this process)."""
    return len(_INFLIGHT)


def adopt(key: tuple, fn):
    """Keep a compiled function for reuse; returns it."""
    if len(_COMPILED) >= _COMPILED_MAX:
        _COMPILED.clear()
        _BY_HEAD.clear()
    _COMPILED[key] = fn
    return fn


def same_code(m, fn) -> bool:
    """Whether m still holds the code of every block fn was compiled from
    (it may have changed while fn compiled in another thread)."""
    try:
        return all(m.peek(bb.start, len(bb.raw)) == bb.raw for bb in fn.plan.bbs.values())
    except (PageFault, RemotePage):
        return False


_BY_HEAD: dict[int, list] = {}      # head address -> regions compiled with it


def known_regions(m, eip: int) -> list:
    """Regions compiled before (in any kernel of this process) with a head
    at eip whose pages m holds byte for byte, the largest first (merged
    regions come after the ones they merged)."""
    out = []
    for fn in sorted(_BY_HEAD.get(eip, ()), key=lambda f: -f.size):     # largest first
        try:
            if all(m.peek(vpn << 12, PGSIZE) == page for vpn, page in fn.pages.items()):
                out.append(fn)
        except (PageFault, RemotePage):
            pass
    return out


def plan_with_heads(old, more: set[int]) -> Plan:
    plan = old.plan
    new = Plan(plan.entry, plan.bbs, set(plan.heads) | more, {})
    new.indirect = plan.indirect
    return new


def with_heads(old, more: set[int], slow: frozenset):
    """The region `old` compiled again with more heads."""
    return remember_rebuilt(_compile(plan_with_heads(old, more), slow), old)


def plan_merged(a, b) -> Plan:
    plan = Plan(a.plan.entry, {**a.plan.bbs, **b.plan.bbs},
                set(a.plan.heads) | set(b.plan.heads), {})
    plan.indirect = {**a.plan.indirect, **b.plan.indirect}
    return plan


def merged(a, b, slow: frozenset):
    """One region of the blocks and heads of the regions a and b."""
    return remember_rebuilt(_compile(plan_merged(a, b), slow), a, b)


def remember_rebuilt(fn, *olds):
    """Keep fn, compiled from the regions olds, with their pages."""
    if all(hasattr(o, "pages") for o in olds):
        pages = {}
        for o in olds:
            pages.update(o.pages)
        _remember(fn, pages)
    return fn


def instance(fn):
    """A copy of a compiled region to install: one function object per
    installation, so that dropping one drops exactly that one."""
    inst = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__)
    inst.heads = fn.heads
    inst.maxpath = fn.maxpath
    inst.plan = fn.plan
    inst.src = fn.src
    inst.size = fn.size
    if hasattr(fn, "pages"):
        inst.pages = fn.pages
    return inst
