"""The block translator: runs of decoded instructions compiled into one
Python function each.

A block is a straight-line run of instructions within one page, ending
after a control transfer, a trap (int, int3, undefined) or before an
instruction the translator leaves to the interpreter (string operations,
an instruction that straddles a page).  Its function keeps the registers
and the lazy flag state in locals, computes each flag condition from the
operation that set it (a `cmp` followed by `jne` becomes one comparison),
reads and writes memory through inline TLB lookups, and runs a block that
branches back to its own start as a `while` loop.

The same semantic emitters as the interpreter (codegen.py) generate the
code, so every instruction keeps its contract: reads, then memory writes,
then register and flag commits.  A fault in instruction k therefore finds
the locals exactly as after instruction k-1; the function writes them back,
sets eip to instruction k and re-raises, so faults stay precise and
restartable.  The budget is kept to within one block: a block (or one loop
iteration) always completes.

    f(cpu, r, m, budget) -> (next eip, instructions executed)

Exceptions leave with `.eip` (the instruction to resume at) and `.count`
(instructions completed) set.  Blocks are cached per physical frame in the
same dict as the interpreter's instructions (at page offset | 0x1000), so
they are invalidated exactly as decoded instructions are.
"""
from __future__ import annotations

from . import codegen, runtime
from .codegen import Gen, _is_simple
from .flags import ADD, DEC, INC, LOGIC, SUB, SIGN, cf_of
from .insn import Insn

REGN = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
MAX_BLOCK = 64
BLOCK_KEY = 0x1000
NOT_IN_BLOCKS = frozenset({"movs", "stos", "lods", "cmps", "scas"})

# Flag liveness.  FULL_WRITERS set all six arithmetic flags without reading
# any; FLAG_NEUTRAL neither read nor write them.  Everything else is treated
# as reading them (conservative), and so is any instruction that may fault,
# since a fault must see exact flags.
FULL_WRITERS = frozenset({"add", "sub", "cmp", "and", "or", "xor", "test", "neg", "xadd",
                          "cmpxchg", "mul", "imul", "imul2", "imul3", "popf"})
FLAG_NEUTRAL = frozenset({"mov", "movzx", "movsx", "lea", "not", "xchg", "push", "pop",
                          "call", "calli", "jmp", "jmpi", "ret", "nop", "pause", "cwde", "cdq",
                          "bswap", "leave", "enter", "pusha", "popa", "jecxz", "loop",
                          "div", "idiv", "movsr", "xlat", "cld", "std"})
NEVER_FAULTS = frozenset({"lea", "nop", "pause", "jmp", "jcc", "jecxz", "loop", "loope",
                          "loopne", "cwde", "cdq", "bswap", "setcc", "cmovcc", "cld", "std",
                          "clc", "stc", "cmc", "lahf", "sahf", "not", "neg", "inc", "dec",
                          "mov", "movzx", "movsx", "xchg", "xadd", "cmpxchg", "test", "cmp",
                          "add", "sub", "and", "or", "xor", "adc", "sbb", "shl", "shr", "sar",
                          "rol", "ror", "rcl", "rcr", "shld", "shrd", "bt", "bts", "btr", "btc",
                          "bsf", "bsr", "imul2", "imul3", "mul", "imul"})


def may_fault(insn: Insn) -> bool:
    if insn.op not in NEVER_FAULTS:
        return True
    if insn.op == "lea":
        return False
    return any(o.kind == 1 for o in insn.ops)       # a memory operand


def dead_flags(insns: list[Insn]) -> list[bool]:
    """dead[i]: instruction i's flag results are overwritten before anything
    (a reader, a possible fault, the end of the block) could see them."""
    dead = [False] * len(insns)
    live = True                                     # live out of the block
    for i in range(len(insns) - 1, -1, -1):
        ins = insns[i]
        dead[i] = not live
        op = ins.op
        full = op in FULL_WRITERS or (op in ("shl", "shr", "sar") and ins.ops[1].kind == 2
                                      and ins.ops[1].imm & 31)
        if may_fault(ins):
            live = True
        elif full:
            live = False
        elif op in FLAG_NEUTRAL:
            pass
        else:
            live = True
    return dead
ENDS_BLOCK = frozenset({"jmp", "jmpi", "call", "calli", "ret", "loop", "loope",
                        "loopne", "jecxz", "int", "int3", "(bad)"})


def ends_block(insn: Insn, start: int) -> bool:
    """Whether the block that started at `start` ends after insn (a jcc
    ends it only when it branches back to the start: a loop)."""
    if insn.op == "jcc":
        return start in (insn.ops[0].imm, insn.next)
    return insn.op in ENDS_BLOCK


class BlockGen(Gen):
    """Gen with registers and flags in locals, flag conditions specialized."""

    def __init__(self):
        super().__init__(None)
        self.indent = 2
        self.used: set[int] = set()
        self.written: set[int] = set()
        self.flags_used = False
        self.kind: int | None = None      # fk at the current instruction, if known
        self.next_kind: int | None = None
        self.set_kind = False
        self.dead = False                 # this instruction's flag results are dead

    def start(self, insn: Insn, dead: bool = False) -> None:
        self.dead = dead
        self.insn = insn
        self.pending_regs = []
        self.pending_flags = []
        self.next_expr = None
        self.eas = {}
        self.ends = False
        self.set_kind = False

    def commit(self) -> None:
        super().commit()
        if self.set_kind:
            self.kind = self.next_kind
            self.set_kind = False

    # -- registers ----------------------------------------------------------------
    def r32(self, n: int) -> str:
        self.used.add(n)
        return REGN[n]

    def setreg(self, n: int, size: int, expr: str) -> None:
        self.written.add(n if size != 1 or n < 4 else n - 4)
        super().setreg(n, size, expr)

    # -- memory -------------------------------------------------------------------
    def _name(self, addr: str) -> str:
        return addr if _is_simple(addr) else self.tmp(addr)

    def load(self, addr: str, size: int) -> str:
        a = self._name(addr)
        if size == 4:
            return self.tmp(f"M32[({a} + _d) >> 2] if not {a} & 3 and "
                            f"(_d := rt.get({a} & 0xFFFFF000)) is not None else m.rd32({a})")
        if size == 1:
            return self.tmp(f"mem[{a} + _d] if (_d := rt.get({a} & 0xFFFFF000)) "
                            f"is not None else m.rd8({a})")
        return super().load(a, size)

    def store(self, addr: str, size: int, expr: str) -> None:
        a = self._name(addr)
        if size == 4:
            self.emit(f"if not {a} & 3 and (_d := wt.get({a} & 0xFFFFF000)) is not None: "
                      f"M32[({a} + _d) >> 2] = {expr}")
            self.emit(f"else: m.wr32({a}, {expr})")
        elif size == 1:
            self.emit(f"if (_d := wt.get({a} & 0xFFFFF000)) is not None: mem[{a} + _d] = {expr}")
            self.emit(f"else: m.wr8({a}, {expr})")
        else:
            super().store(a, size, expr)

    # -- flags --------------------------------------------------------------------
    def _kind_now(self, fk: int | None) -> None:
        self.next_kind = fk
        self.set_kind = True

    def set_lazy(self, kind: int, size: int, a: str, b: str, res: str) -> None:
        if self.dead:
            return
        self.flags_used = True
        fk = kind << 3 | size
        self.pending_flags += [f"fk = {fk}", f"fa = {a}", f"fb = {b}", f"fr = {res}"]
        self._kind_now(fk)

    def set_lazy_kind(self, kind: str, a: str, b: str, res: str) -> None:
        if self.dead:
            return
        self.flags_used = True
        self.pending_flags += [f"fk = {kind}", f"fa = {a}", f"fb = {b}", f"fr = {res}"]
        self._kind_now(None)

    def eflags(self) -> str:
        self.flags_used = True
        return self.tmp("eflags_of(fk, fa, fb, fr, ef)")

    def carry(self) -> str:
        if self.dead and self.insn.op in ("inc", "dec"):
            return "0"                    # only feeds the (dead) preserved CF
        self.flags_used = True
        k = self.kind
        if k is not None:
            kind = k >> 3
            if k == 0:
                return self.tmp("ef & 1")
            if kind == SUB:
                return self.tmp("1 if fa < fb else 0")
            if kind == ADD:
                return self.tmp("1 if fr < fa else 0")
            if kind == LOGIC:
                return "0"
            if kind in (INC, DEC):
                return self.tmp("fb & 1")
        return self.tmp("cf_of(fk, fa, fb, fr, ef)")

    def set_arith(self, bits: str, mask: int = codegen.ARITH) -> None:
        if self.dead and mask == codegen.ARITH:
            return
        self.flags_used = True
        bits = bits if _is_simple(bits) else self.tmp(bits)
        if mask == codegen.ARITH:
            # Every arithmetic flag is replaced: no need to materialize the old ones.
            self.pending_flags += [f"ef = (ef & {~mask & 0xFFFFFFFF:#x}) | {bits}", "fk = 0"]
        else:
            self.pending_flags += [f"ef = (eflags_of(fk, fa, fb, fr, ef) & "
                                   f"{~mask & 0xFFFFFFFF:#x}) | {bits}", "fk = 0"]
        self._kind_now(0)

    def set_ef(self, expr: str) -> None:
        self.flags_used = True
        v = expr if _is_simple(expr) else self.tmp(expr)
        self.pending_flags += ["fk = 0", f"ef = {v}"]
        self._kind_now(0)

    def set_df(self, on: bool) -> None:
        self.flags_used = True
        self.pending_flags.append("ef |= 0x400" if on else "ef &= 0xFFFFFBFF")

    def df(self) -> str:
        self.flags_used = True
        return "(ef & 0x400)"

    def cond(self, cc: int) -> str:
        """A Python expression for condition cc, specialized on the kind of
        the operation that set the flags when the block knows it."""
        self.flags_used = True
        expr = self._static_cond(cc >> 1)
        if expr is None:
            return f"test_cc({cc}, fk, fa, fb, fr, ef)"
        return f"(not {expr})" if cc & 1 else expr

    def _static_cond(self, c: int) -> str | None:
        k = self.kind
        if k is None:
            return None
        if k == 0:
            f = {0: "ef & 0x800", 1: "ef & 1", 2: "ef & 0x40", 3: "ef & 0x41", 4: "ef & 0x80",
                 5: "ef & 4", 6: "(not (ef & 0x80)) != (not (ef & 0x800))",
                 7: "(ef & 0x40 or (not (ef & 0x80)) != (not (ef & 0x800)))"}[c]
            return f"({f})"
        kind, size = k >> 3, k & 7
        S = SIGN[size]
        if c == 2:
            return "(fr == 0)"
        if c == 4:
            return f"(fr & {S:#x})"
        if kind == SUB:
            return {1: "(fa < fb)", 3: "(fa <= fb)", 6: f"((fa ^ {S:#x}) < (fb ^ {S:#x}))",
                    7: f"((fa ^ {S:#x}) <= (fb ^ {S:#x}))"}.get(c)
        if kind == LOGIC:
            return {0: "False", 1: "False", 3: "(fr == 0)", 6: f"(fr & {S:#x})",
                    7: f"(fr == 0 or fr & {S:#x})"}.get(c)
        if kind in (INC, DEC) and c == 1:
            return "(fb & 1)"
        return None


def _may_fault(lines: list[str]) -> bool:
    text = "\n".join(lines)
    return any(s in text for s in ("m.", "raise", "divu(", "divs(", ".get("))


def translate(insns: list[Insn]):
    """Compile a run of decoded instructions into a block function.

    A jcc inside the run is a side exit (taken: leave the block); a jcc at
    its end that branches back to the start makes the block a loop."""
    g = BlockGen()
    start = insns[0].addr
    last = insns[-1]
    loop_cond = None
    dead = dead_flags(insns)
    g.indent = 3
    for k, insn in enumerate(insns):
        g.start(insn, dead[k])
        mark = len(g.lines)
        is_last = k == len(insns) - 1
        if is_last and insn.op == "jcc" and start in (insn.ops[0].imm, insn.next) \
                and insn.ops[0].imm != insn.next:
            loop_cond = (g.cond(insn.cond), insn.ops[0].imm == start)
            g.ends = True
        elif not is_last and insn.op == "jcc":
            g.emit(f"if {g.cond(insn.cond)}: _nx = {insn.ops[0].imm:#x}; n += {k + 1}; break")
        else:
            codegen.SEMANTICS[insn.op](g, insn)
            if not g.ends:
                g.commit()
        if _may_fault(g.lines[mark:]):
            g.lines.insert(mark, "    " * g.indent + f"_k = {k}")
    body = g.lines
    n = len(insns)
    regs = sorted(g.used | g.written)
    src = ["def _b(cpu, r, m, budget):"]
    src += [f"    {REGN[i]} = r[{i}]" for i in regs]
    if g.flags_used:
        src.append("    fk = cpu.fk; fa = cpu.fa; fb = cpu.fb; fr = cpu.fr; ef = cpu.ef")
    src.append("    rt = m.rt; wt = m.wt; M32 = m.m32; mem = m.mem; n = 0; _k = 0")
    writeback = [f"r[{i}] = {REGN[i]}" for i in sorted(g.written)]
    if g.flags_used:
        writeback.append("cpu.fk = fk; cpu.fa = fa; cpu.fb = fb; cpu.fr = fr; cpu.ef = ef")
    src += ["    try:", "        while True:"]
    src += body
    if loop_cond is not None:
        cond, taken_loops = loop_cond
        src.append(f"            n += {n}")
        if taken_loops:
            src.append(f"            if not {cond}: _nx = {last.next:#x}; break")
        else:
            src.append(f"            if {cond}: _nx = {last.ops[0].imm:#x}; break")
        src.append(f"            if n >= budget: _nx = {start:#x}; break")
    else:
        nxt = g.next_expr if g.next_expr is not None else hex(last.next)
        src.append(f"            _nx = {nxt}; n += {n}; break")
    src.append("    except SoftInt as _e:")
    src += ["        " + w for w in writeback]
    src.append("        _e.count = n + _k + 1")
    src.append("        raise")
    src.append("    except CpuFault as _e:")
    src += ["        " + w for w in writeback]
    src.append("        _e.eip = _A[_k]")
    src.append("        _e.count = n + _k")
    src.append("        raise")
    src += ["    " + w for w in writeback]
    src.append("    return _nx, n")
    text = "\n".join(src) + "\n"
    ns = dict(runtime.GLOBALS)
    ns["_A"] = tuple(i.addr for i in insns)
    ns["CpuFault"] = runtime.CpuFault
    ns["cf_of"] = cf_of
    exec(compile(text, f"<block {start:#010x} x{n}>", "exec"), ns)
    fn = ns["_b"]
    fn.src = text
    fn.insns = insns
    return fn
