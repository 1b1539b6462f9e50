"""CPU state and the interpreter: run(cpu, mmu, budget) -> Stop.

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
"""
from __future__ import annotations

import attrs

from ..memlayout import FL_IF, FL_RESERVED1, PGSIZE
from ..pmap import CpuFault, PageFault, RemotePage
from . import codegen, runtime
from .decode import MAX_LEN, Truncated, decode
from .flags import eflags_of
from .insn import Insn
from .runtime import SoftInt
from .translate import BLOCK_KEY, MAX_BLOCK, NOT_IN_BLOCKS, ends_block, translate

# Why run() stopped.
BUDGET = "budget"          # executed `budget` instructions
SYSCALL = "syscall"        # int $0x30 (eip is after it)
TRAP = "trap"              # a fault or trap: trapno, err, va (page faults)
REMOTE = "remote"          # touched a remote page at va (eip at the insn)
INTERNAL = "internal"      # a bug in jmig's core (never the guest's doing)


@attrs.frozen
class Stop:
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


def compile_insn(insn: Insn):
    """The Python function for one decoded instruction (cached process-wide)."""
    key = (insn.addr, insn.raw)
    fn = _COMPILED.get(key)
    if fn is not None:
        return fn
    g = codegen.Gen(insn)
    codegen.generate(g, insn)
    src = "def _f(cpu, r, m):\n" + "\n".join(g.lines) + "\n"
    ns = dict(runtime.GLOBALS)
    exec(compile(src, f"<x86 {insn.addr:#010x} {insn.raw.hex()}>", "exec"), ns)
    fn = ns["_f"]
    fn.insn = insn
    fn.src = src
    if len(_COMPILED) >= _COMPILED_MAX:
        _COMPILED.clear()
    _COMPILED[key] = fn
    return fn


def fetch_decode(m, eip: int) -> Insn:
    """Decode the instruction at eip through the MMU (faults like a fetch)."""
    buf = m.fetch(eip, MAX_LEN)
    try:
        return decode(buf, eip)
    except Truncated:
        pass
    # The instruction continues on the next page: fetching it may fault.
    nxt = (eip + len(buf)) & 0xFFFFFFFF
    buf += m.fetch(nxt, MAX_LEN - len(buf))
    try:
        return decode(buf, eip)
    except Truncated:
        # Only possible if the buffer is shorter than 15 bytes, i.e. never
        # after two pages; treat as undefined.
        return Insn(addr=eip, length=len(buf), raw=buf, op="(bad)", trap=6)


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
    __slots__ = ("fn", "raw", "insn")

    def __init__(self, fn, insn: Insn):
        self.fn = fn
        self.raw = insn.raw
        self.insn = insn

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

_BLOCKS: dict[tuple[int, bytes], object] = {}
_BLOCK_AT: dict[int, tuple[bytes, object]] = {}    # eip -> (bytes, block) last translated


def _interp_adapter(fn, addr: int):
    """Run one interpreter instruction where a block cannot start."""
    def one(cpu, r, m, budget):
        try:
            return fn(cpu, r, m), 1
        except SoftInt as e:
            e.count = 1
            raise
        except CpuFault as e:
            e.eip = addr
            e.count = 0
            raise
    return one


def block_slow(m, eip: int):
    """Decode, translate and cache the block starting at eip."""
    d = m.code_page(eip)
    # The same program loaded again (another env, another frame): reuse the
    # block if the bytes at eip are the ones it was translated from.
    known = _BLOCK_AT.get(eip)
    if known is not None:
        raw, fn = known
        if (eip & 0xFFF) + len(raw) <= PGSIZE and m.fetch(eip, len(raw)) == raw:
            m.mark_code(eip, len(raw))
            d[(eip & 0xFFF) | 0x1000] = fn
            return fn
    insns = []
    a = eip
    page = eip & ~0xFFF
    while len(insns) < MAX_BLOCK:
        if (a & ~0xFFF) != page:
            break
        insn = fetch_decode(m, a)
        if insn.op in NOT_IN_BLOCKS or (a & 0xFFF) + insn.length > PGSIZE:
            break
        insns.append(insn)
        if ends_block(insn, eip):
            break
        a = insn.next
    if not insns:
        fn = _interp_adapter(lookup_slow(m, eip), eip)
    else:
        raw = b"".join(i.raw for i in insns)
        key = (eip, raw)
        fn = _BLOCKS.get(key)
        if fn is None:
            fn = translate(insns)
            if len(_BLOCKS) >= _COMPILED_MAX:
                _BLOCKS.clear()
                _BLOCK_AT.clear()
            _BLOCKS[key] = fn
        _BLOCK_AT[eip] = (raw, fn)
        m.mark_code(eip, len(raw))
    d[(eip & 0xFFF) | BLOCK_KEY] = fn
    return fn


def run_blocks(cpu: Cpu, m, budget: int) -> Stop:
    """Like run(), with the block translator: same contract, faster."""
    r = cpu.r
    eip = cpu.eip
    n = 0
    icache = m.icache
    try:
        while n < budget:
            d = icache.get(eip >> 12)
            fn = d.get((eip & 0xFFF) | 0x1000) if d is not None else None
            if fn is None:
                fn = block_slow(m, eip)
            eip, k = fn(cpu, r, m, budget - n)
            n += k
    except Exception as e:
        return _stopped(e, cpu, eip, n)
    cpu.eip = eip
    return Stop(BUDGET, n)
