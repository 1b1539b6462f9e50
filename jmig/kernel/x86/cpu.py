"""CPU state and the two engines: the interpreter, run(cpu, mmu, budget)
-> Stop, and the block translator's, run_blocks (same contract).

The interpreter executes one decoded instruction at a time.  Each
instruction is decoded once and compiled into a small Python function
(codegen.py); the function is cached per physical frame and page offset
(pmap.PhysMem.code), so every env mapping that frame shares it, and in a
process-wide cache keyed by address and bytes, so that the same program
loaded again compiles nothing.

An instruction function has the signature f(cpu, r, m) -> next eip, where
r is cpu.r and m is the env's AddressSpace (the MMU).  It raises CpuFault
(PageFault, RemotePage, CpuTrap) with no effect, or SoftInt after
completing.

run_blocks interprets a basic block at a time and counts how often each
starts; a hot block gets a region compiled (translate.py) and installed in
the env (pmap.AddressSpace.regions, by head), and from then on the
region's function runs it.  It also keeps regions for reuse by envs
mapping the same frames and by later kernels, recompiles a region entered
where it has no head, merges regions that hand control to each other, and
gives an instruction that keeps restarting a slower inline fallback.
With a compiler (m.phys.compiler, a node's kernel) regions compile in a
worker thread while their blocks keep being interpreted (_compile_for,
_compiled): a large region takes tens of milliseconds to compile, which
must not hold a node's event loop.
"""
from __future__ import annotations

import re
import types
from typing import NamedTuple

from ..memlayout import FL_IF, FL_RESERVED1, PGSIZE, PTE_A, PTE_P, PTE_REMOTE, PTE_U
from ..pmap import CpuFault, PageFault, RemotePage
from . import codegen, runtime, translate
from .flags import eflags_of
from .insn import Insn
from .runtime import SoftInt
from .translate import fetch_decode

# Why run() stopped.
BUDGET = "budget"          # executed `budget` instructions
SYSCALL = "syscall"        # int $0x30 (eip is after it)
SYSCALL_DONE = "syscall done"   # int $0x30 that run_blocks' syscall() ran, and which ended the run
TRAP = "trap"              # a fault or trap: trapno, err, va (page faults)
REMOTE = "remote"          # touched a remote page at va (eip at the insn)
INTERNAL = "internal"      # a bug in jmig's core (never the guest's doing)
M32 = 0xFFFFFFFF


class Stop(NamedTuple):
    """Why a run stopped (a tuple: made on every system call)."""
    reason: str
    count: int                 # instructions completed
    trapno: int = -1
    err: int = 0
    va: int = 0
    detail: str = ""


class Cpu:
    """User-visible register state plus lazily evaluated flags."""
    __slots__ = ("r", "eip", "ef", "fk", "fa", "fb", "fr")

    def __init__(self, regs=None, eip: int = 0, eflags: int = FL_IF | FL_RESERVED1):
        self.r = list(regs) if regs is not None else [0] * 8
        self.eip = eip
        self.ef = eflags
        self.fk = 0
        self.fa = self.fb = self.fr = 0

    @property
    def eflags(self) -> int:
        return eflags_of(self.fk, self.fa, self.fb, self.fr, self.ef)

    @eflags.setter
    def eflags(self, v: int) -> None:
        self.ef = v | FL_RESERVED1
        self.fk = 0

    def copy(self) -> "Cpu":
        c = Cpu(self.r, self.eip, self.eflags)
        return c

    def __repr__(self) -> str:
        names = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
        regs = " ".join(f"{n}={v:08x}" for n, v in zip(names, self.r))
        return f"Cpu({regs} eip={self.eip:08x} eflags={self.eflags:08x})"


# -- compilation ---------------------------------------------------------------------

_COMPILED: dict[tuple[int, bytes], object] = {}
_COMPILED_MAX = 200_000
# Code objects by shape: an instruction's generated code with its integer
# literals made parameters.  A program's thousands of instructions have a
# hundred or so shapes, so compile() (~0.13 ms, most of a first run's cost)
# runs once per shape; each instruction is the shape's code with its own
# literals as the parameters' defaults.
_SHAPES: dict[str, types.CodeType] = {}
_LITERAL = re.compile(r"(?<![\w.])(0x[0-9a-fA-F]+|\d+)(?![\w.])")
_GLOBALS = dict(runtime.GLOBALS)


def compile_insn(insn: Insn):
    """The Python function for one decoded instruction (cached process-wide)."""
    key = (insn.addr, insn.raw)
    fn = _COMPILED.get(key)
    if fn is not None:
        return fn
    g = codegen.Gen(insn)
    codegen.generate(g, insn)
    body = "\n".join(g.lines)
    values: list[int] = []

    def parameter(lit: re.Match) -> str:
        text = lit.group(0)
        values.append(int(text, 16) if text[:2] == "0x" else int(text))
        return f"_k{len(values) - 1}"
    shape = _LITERAL.sub(parameter, body)
    code = _SHAPES.get(shape)
    if code is None:
        params = "".join(f", _k{k}=0" for k in range(len(values)))
        ns = dict(runtime.GLOBALS)
        exec(compile(f"def _f(cpu, r, m{params}):\n{shape}\n", "<x86>", "exec"), ns)
        code = ns["_f"].__code__
        if len(_SHAPES) >= _COMPILED_MAX:
            _SHAPES.clear()
        _SHAPES[shape] = code
    fn = types.FunctionType(code, _GLOBALS, "_f", tuple(values))
    fn.insn = insn
    fn.src = "def _f(cpu, r, m):\n" + body + "\n"
    fn.ends = insn.op in translate.ENDS_BB or translate.is_exit_op(insn)
    fn.indirect = insn.op in translate.INDIRECT
    if len(_COMPILED) >= _COMPILED_MAX:
        _COMPILED.clear()
    _COMPILED[key] = fn
    return fn


def _stopped(e: Exception, cpu: Cpu, eip: int, n: int) -> Stop:
    """Turn what an instruction or block raised into a Stop.  Blocks set
    .eip (where to resume) and .count (instructions completed) on it; a
    single instruction leaves them unset (eip = the instruction, 0 done)."""
    if isinstance(e, SoftInt):
        cpu.eip = e.next
        n += getattr(e, "count", 1)
        if e.trapno == 0x30:
            return Stop(SYSCALL, n)
        return Stop(TRAP, n, e.trapno)
    if isinstance(e, CpuFault):
        cpu.eip = getattr(e, "eip", eip)
        n += getattr(e, "count", 0)
        if isinstance(e, RemotePage):
            return Stop(REMOTE, n, va=e.va)
        if isinstance(e, PageFault):
            return Stop(TRAP, n, 14, e.err, e.va)
        return Stop(TRAP, n, e.trapno, e.err)
    # Anything else is a bug in the core: report it, never crash the node.
    cpu.eip = eip
    return Stop(INTERNAL, n, detail=f"{type(e).__name__}: {e}")


class _Straddler:
    """An instruction that crosses a page boundary: cached in its first
    frame, it re-checks its bytes (and the second page's mapping) each time."""
    __slots__ = ("fn", "raw", "insn", "ends", "indirect")

    def __init__(self, fn, insn: Insn):
        self.fn = fn
        self.raw = insn.raw
        self.insn = insn
        self.ends = fn.ends
        self.indirect = fn.indirect

    def __call__(self, cpu, r, m):
        insn = self.insn
        if m.read_code(insn.addr, insn.length) != self.raw:
            fn = lookup_slow(m, insn.addr)
            return fn(cpu, r, m)
        return self.fn(cpu, r, m)


def lookup_slow(m, eip: int):
    """Decode and compile the instruction at eip and cache it in its frame."""
    d = m.code_page(eip)
    insn = fetch_decode(m, eip)
    fn = compile_insn(insn)
    off = eip & 0xFFF
    if off + insn.length > PGSIZE:
        fn = _Straddler(fn, insn)
    m.mark_code(eip, insn.length)
    d[off] = fn
    return fn


def run(cpu: Cpu, m, budget: int) -> Stop:
    """Interpret up to `budget` instructions of the env whose MMU is m.

    Never raises for anything the guest does: faults, traps, syscalls and
    undefined instructions come back as a Stop.  On a fault cpu.eip is the
    faulting instruction and nothing it did is visible.
    """
    r = cpu.r
    eip = cpu.eip
    n = 0
    icache = m.icache
    try:
        while n < budget:
            d = icache.get(eip >> 12)
            fn = d.get(eip & 0xFFF) if d is not None else None
            if fn is None:
                fn = lookup_slow(m, eip)
            eip = fn(cpu, r, m)
            n += 1
    except Exception as e:
        return _stopped(e, cpu, eip, n)
    cpu.eip = eip
    return Stop(BUDGET, n)


# -- the block translator's engine ---------------------------------------------------

HOT = 32                 # a block runs this often in the interpreter before it is compiled
WARM = 64                # ... with the blocks that ran at least 1/WARM as often
HOT_KEY = 0x2000         # frame code dict: page offset | HOT_KEY -> runs in the interpreter
IND_KEY = 0x4000         # page offset | IND_KEY -> targets an indirect transfer took
TPL_KEY = 0x8000         # page offset | TPL_KEY -> (region, its (vpn, pfn) pages) to reuse
MAX_TARGETS = 16         # targets remembered per indirect transfer
SLOW_AFTER = 8           # restarts of one instruction before it gets slow memory
MERGE_AFTER = 64         # moves from one region to another before they become one
ASK_AGAIN = 16           # runs (or moves) before asking again while a region compiles elsewhere

SLOW: set[int] = set()   # instruction addresses compiled with slow memory (all envs)


def _seen(m, at_least: int):
    icache = m.icache

    def seen(a: int) -> bool:
        d = icache.get(a >> 12)
        return d is not None and not 0 <= d.get((a & 0xFFF) | HOT_KEY, 0) < at_least
    return seen


def _hot(m):
    icache = m.icache

    def hot(a: int) -> int:
        d = icache.get(a >> 12)
        return d.get((a & 0xFFF) | HOT_KEY, 0) if d is not None else 0
    return hot


def _indirect(m):
    icache = m.icache

    def indirect(a: int) -> set[int]:
        d = icache.get(a >> 12)
        return set(d.get((a & 0xFFF) | IND_KEY, ())) if d is not None else set()
    return indirect


def _frames_match(m, frames) -> bool:
    """Whether m maps each page (vpn, pfn) of a region to that frame."""
    pte = m.pte
    for vpn, pfn in frames:
        p = pte.get(vpn)
        if p is None or p & (PTE_P | PTE_U | PTE_REMOTE) != PTE_P | PTE_U or p >> 12 != pfn:
            return False
    return True


def _install(m, eip: int, static: bool, d: dict) -> bool | None:
    """Install a region with a head at eip in m: the one compiled for
    another env mapping the same frames (fork); else the region compiling
    the block at eip again with eip as a head; else a new region of the
    code that has run and no region here compiles.  False if no region
    can start at eip; None if it is being compiled in the background
    (m.phys.compiler; see _compiled): ask again later."""
    tpl = d.get((eip & 0xFFF) | TPL_KEY)
    if tpl is not None and not static and _frames_match(m, tpl[1]):
        _place(m, tpl[0], static, tpl[1])
        return True
    executor = None if static else m.phys.compiler
    if executor is not None and m.compiling is not None:
        return None                       # one compile at a time per address space
    old = m.blocks.get(eip)
    if old is not None:
        # Entered from outside where it has no head: compile it again with
        # heads at every block entered so since it was compiled.
        hot = _hot(m)
        more = {b for b in old.plan.bbs if hot(b) != old.counts.get(b, 0)} | {eip}
        if executor is not None:
            return _compile_for(m, executor, translate.plan_with_heads(old, more), (old,))
        fn = translate.with_heads(old, more, frozenset(SLOW))
        m.drop_region(old)
    else:
        warm = max(1, _hot(m)(eip) // WARM)
        if executor is not None:
            plan = translate.plan_region(m, eip, _seen(m, warm), _indirect(m),
                                         m.blocks.__contains__, False)
            return False if plan is None else _compile_for(m, executor, plan, ())
        fn = translate.build(m, eip, _seen(m, warm), _indirect(m), m.blocks.__contains__,
                             static, frozenset(SLOW))
    if fn is None:
        return False
    _place(m, fn, static)
    return True


def _compile_for(m, executor, plan, olds: tuple) -> bool | None:
    """The region of plan for m, replacing the regions olds (none: a new
    one): installed now if it was compiled before (True), else compiled
    by executor and installed by _compiled once done (None)."""
    key, fn = translate.lookup(plan, frozenset(SLOW))
    if fn is None:
        m.compiling = (olds, translate.compile_elsewhere(executor, plan, key))
        return None
    _adopted(m, fn, olds)
    return True


def _adopted(m, fn, olds: tuple) -> None:
    if olds:
        translate.remember_rebuilt(fn, *olds)
        for o in olds:
            m.drop_region(o)
    else:
        translate.remember_built(m, fn)
    _place(m, fn, False)


def _compiled(m) -> None:
    """Install the region m's background compile made, once it is done,
    if it still applies: the code it was compiled from unchanged, the
    regions it replaces still installed, no region at its entry yet."""
    olds, job = m.compiling
    if not job.done():
        return
    m.compiling = None
    fn = translate.adopt(*job.result())      # kept for reuse either way (keyed by its code)
    if not translate.same_code(m, fn) or not all(_installed(m, o) for o in olds):
        return
    if not olds and fn.plan.entry in m.regions:
        return
    _adopted(m, fn, olds)


def _installed(m, fn) -> bool:
    return any(m.regions.get(h) is fn for h in fn.heads)


def _reuse(m, eip: int) -> bool:
    """Install a region an earlier run (another kernel) compiled with a
    head at eip, if the code here is the same."""
    if eip in m.blocks:
        return False
    for fn in translate.known_regions(m, eip):
        if m.blocks.keys().isdisjoint(fn.plan.bbs):
            _place(m, fn, False)
            return True
    return False


def _merge(m, a, b) -> bool:
    """Control moves often between the regions a and b: compile them as
    one.  False if that waits for a compile in the background: ask again."""
    if a.size + b.size > translate.MAX_REGION:
        return True
    executor = m.phys.compiler
    if executor is not None:
        if m.compiling is not None:
            return False
        return bool(_compile_for(m, executor, translate.plan_merged(a, b), (a, b)))
    m.drop_region(a)
    m.drop_region(b)
    _place(m, translate.merged(a, b, frozenset(SLOW)), False)
    return True


def _place(m, fn, static: bool, frames=None) -> None:
    """Install the compiled region fn in m (and offer it to envs sharing
    its frames)."""
    layout = _layout(fn.plan)
    pte = m.pte
    if frames is None:
        phys = m.phys
        pages = []
        for vpn, _, ranges in layout:
            # Its frame holds code from now on (never in a write TLB); no
            # fetch yet: A is set when the code first runs (translate._touch).
            pfn = pte[vpn] >> 12 & 0xFFFFF
            phys.code_dict(pfn)
            bits = phys.codebits[pfn]
            for off, end in ranges:
                bits[off:end] = _ONES[:end - off]
            pages.append((vpn, pfn))
        frames = tuple(pages)
        if not static:
            where = dict(frames)
            pfns = [p for _, p in frames]
            for h in fn.heads:
                hd = m.icache.get(h >> 12)
                if hd is not None:
                    hd[(h & 0xFFF) | TPL_KEY] = (fn, frames)
                    phys.note_template(where[h >> 12], (h & 0xFFF) | TPL_KEY, pfns)
    m.nota.update(vpn for vpn, _ in frames if not pte[vpn] & PTE_A)
    inst = translate.instance(fn)
    # How often each block had run in the interpreter when the region was
    # placed (blocks not listed: never, their page had no code yet);
    # _install compares to find blocks entered from outside since.
    counts = {}
    icache = m.icache
    for vpn, keys, _ in layout:
        d = icache.get(vpn)
        if d is not None:
            counts.update({b: d.get(key, 0) for b, key in keys})
    inst.counts = counts
    m.install_region(inst, [v for v, _ in frames], [p for _, p in frames])


_ONES = b"\x01" * PGSIZE


def _layout(plan):
    """plan's blocks by page, computed once per plan: a tuple of (vpn,
    ((block, its HOT_KEY), ...), ((off, end), ...) the bytes of code in
    the page, adjacent blocks merged), pages in address order."""
    layout = plan.__dict__.get("layout")
    if layout is None:
        pages: dict[int, list] = {}
        for b in sorted(plan.bbs):
            pages.setdefault(b >> 12, []).append(b)
        out = []
        for vpn, bs in pages.items():
            ranges: list[list[int]] = []
            for b in bs:
                off = b & 0xFFF
                end = min(off + len(plan.bbs[b].raw), PGSIZE)
                if ranges and off <= ranges[-1][1]:
                    ranges[-1][1] = max(ranges[-1][1], end)
                else:
                    ranges.append([off, end])
            out.append((vpn, tuple((b, (b & 0xFFF) | HOT_KEY) for b in bs),
                        tuple((o, e) for o, e in ranges)))
        plan.layout = layout = tuple(out)
    return layout


def _tier0(cpu: Cpu, r, m, eip: int, budget: int, hot: int, count: bool) -> tuple[int, int]:
    """Count a run of the block at eip (unless execution only resumes
    there: a new slice, after a restart); compile its region once it is
    hot, else interpret the block.  Returns (next eip, instructions run)."""
    d = m.icache.get(eip >> 12)
    if d is None:
        d = m.code_page(eip)
    if count:
        key = (eip & 0xFFF) | HOT_KEY
        c = d.get(key, 0) + 1
        d[key] = c
        if c == 1 and hot and _reuse(m, eip):
            return eip, 0
        if c > hot:
            done = _install(m, eip, hot == 0, d)
            if done:
                return eip, 0
            # None: compiling in the background, ask again; False: no region
            # starts here, never try again.
            d[key] = hot - ASK_AGAIN if done is None else -(1 << 40)
    start = eip
    k = 0
    try:
        while True:
            fn = d.get(eip & 0xFFF)
            if fn is None:
                fn = lookup_slow(m, eip)
            nxt = fn(cpu, r, m)
            k += 1
            if fn.ends or k >= budget or k >= translate.MAX_BB or nxt >> 12 != eip >> 12:
                if fn.indirect:
                    tk = (eip & 0xFFF) | IND_KEY
                    seen = d.get(tk)
                    if seen is None:
                        d[tk] = seen = set()
                    if len(seen) < MAX_TARGETS:
                        seen.add(nxt)
                return nxt, k
            eip = nxt
            if (eip - start) >> 12:
                return eip, k
    except SoftInt as e:
        e.count = k + 1
        raise
    except CpuFault as e:
        e.eip = eip
        e.count = k
        raise


def _restarted(m, eip: int) -> None:
    """The instruction at eip missed the TLB inside a region; one that
    keeps missing (a window, a page holding code) gets slow memory."""
    counts = m.restarts
    c = counts.get(eip, 0) + 1
    counts[eip] = c
    if c == SLOW_AFTER:
        SLOW.add(eip)
        fn = m.regions.get(m.last_entry)
        if fn is not None:
            m.drop_region(fn)
            entry = fn.plan.entry
            d = m.icache.get(entry >> 12)
            if d is not None:
                d.pop((entry & 0xFFF) | TPL_KEY, None)


def run_blocks(cpu: Cpu, m, budget: int, hot: int = HOT, observe=None,
               syscall=None) -> Stop:
    """Like run(), with the block translator: the same contract and the
    same count (exactly `budget` at most), faster.  hot=0 compiles a
    region at the first run of a block, from all the code statically
    reachable (tests); else regions hold the blocks that have run.
    observe(n, eip), if given, is called at every block boundary: after
    each return of a region and each stretch the interpreter ran, with
    the registers and flags in cpu (tests/kernel/lockstep.py).

    syscall(), if given, runs a system call a region stops at (cpu.eip
    after the int $0x30) without leaving: it returns True if the env
    keeps the CPU, and the run goes on at cpu.eip as a new run would;
    False ends the run with SYSCALL_DONE.  It must not raise.  A system
    call elsewhere (the interpreter's, or one at the end of the budget)
    still ends the run with SYSCALL."""
    r = cpu.r
    eip = cpu.eip
    n = 0
    regions = m.regions
    blocks = m.blocks
    moves = m.moves
    prev = None
    # Resuming (a new slice, after a restart): the interpreter runs code a
    # region compiles without counting it, until control reaches a head.
    resume = True
    try:
        if m.compiling is not None:
            _compiled(m)
        while n < budget:
            fn = regions.get(eip)
            if fn is not None:
                if fn is not prev:
                    if prev is not None and hot:
                        c = moves.get((prev, fn), 0) + 1
                        moves[prev, fn] = c
                        if c == MERGE_AFTER:
                            if not _merge(m, prev, fn):
                                moves[prev, fn] = MERGE_AFTER - ASK_AGAIN
                            prev = None
                            continue
                    prev = fn
                m.last_entry = eip
                eip, k = fn(cpu, r, m, budget - n, eip)
                n += k
                resume = False
                if observe is not None:
                    observe(n, eip & M32)
                continue
            if eip > M32:
                why = eip & translate.EXIT_MASK
                eip &= M32
                cpu.eip = eip
                if why == translate.EXIT_SYSCALL:
                    if syscall is None:
                        return Stop(SYSCALL, n)
                    if not syscall():
                        return Stop(SYSCALL_DONE, n)
                    # As a new run_blocks call would go on.
                    eip = cpu.eip
                    prev = None
                    resume = True
                    if m.compiling is not None:
                        _compiled(m)
                    continue
                if why == translate.EXIT_INT3:
                    return Stop(TRAP, n, 3)
                if why == translate.EXIT_RESTART:
                    _restarted(m, eip)
                    resume = True
                    st = run(cpu, m, 1)
                else:
                    st = run(cpu, m, budget - n)        # the tail of the budget
                if st.reason != BUDGET:
                    return Stop(st.reason, n + st.count, st.trapno, st.err, st.va, st.detail)
                n += st.count
                eip = cpu.eip
                if observe is not None:
                    observe(n, eip)
                continue
            eip, k = _tier0(cpu, r, m, eip, budget - n, hot,
                            not resume or eip not in blocks or hot == 0)
            n += k
            if observe is not None and k:
                observe(n, eip)
    except Exception as e:
        return _stopped(e, cpu, eip, n)
    if eip > M32:
        # A region used up the budget with its last instruction.
        why = eip & translate.EXIT_MASK
        cpu.eip = eip & M32
        if why == translate.EXIT_SYSCALL:
            return Stop(SYSCALL, n)
        if why == translate.EXIT_INT3:
            return Stop(TRAP, n, 3)
        return Stop(BUDGET, n)
    cpu.eip = eip
    return Stop(BUDGET, n)
