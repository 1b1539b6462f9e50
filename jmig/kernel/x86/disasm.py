"""AT&T-syntax disassembly in the format of GNU objdump (binutils 2.40).

    disasm(code, addr)   ->  "  800020:\\t55                   \\tpush   %ebp\\n..."
    format_insn(insn)    ->  "mov    0x8(%ebp),%eax"

Everything comes from the decoder's `Insn` (decode.py is the one table):
its operation, operands, operand size, condition and prefixes.  This module
only adds the spelling: a map from operation names to AT&T mnemonics, the
suffix rules, and objdump's treatment of prefixes.  Where the text depends
on how an instruction was encoded rather than on what it does (a `0x0`
displacement, `%eiz`, the one-operand `shl %eax` of opcode d1, which
prefixes objdump prints by name), it reads the Insn's raw bytes.

Mnemonic suffixes follow objdump: b/w/l only when no register operand fixes
the size (`movl $0x0,(%eax)`, `incl`, `shlb %cl,(%eax)`, but `push $0x1`,
`push 0x4(%eax)`, `call *(%eax)`: in 32-bit code the stack and branch
operations take a `w` suffix only for a 16-bit operand size).

Prefixes are printed by name in byte order (`lock`, `rep`, `repz`, `repnz`,
`data16`, `cs` ...), except the ones an instruction uses: the last 66 when
the operand size matters, the last segment prefix when there is a memory
operand (it shows as `%es:(%eax)`), f3 of pause and endbr32.  As objdump
does, a rep prefix reads `rep` on movs/stos/lods, f2 on a branch reads
`bnd`, 3e on an indirect branch reads `notrack`, and cs/ds on a conditional
branch become the hints `,pn`/`,pt`.

Like objdump, f3 0f bc/bd print as tzcnt/lzcnt (the core runs them as
bsf/bsr, as a CPU without BMI1/ABM does), and members of the nop-hint space
(0f 0d, 0f 18-0f 1f: all nops to the core) take objdump's names where it
has them: prefetch*, cldemote, bndldx/bndstx, rdsspd, endbr32/endbr64.

Differences from objdump (tests/x86/test_disasm.py lists them too):
  - Encodings the core does not implement decode as "(bad)" (x87, in/out,
    hlt, iret, BCD adjust ..., a lock prefix where it is #UD, the 67
    prefix); objdump names them, and its length for them may differ.
  - `data16` on a rel8 branch: the target shown is the 16-bit one the CPU
    jumps to; objdump shows the untruncated address.
  - 0f 0d with a register operand, f2 0f bc/bd, and the MPX forms of
    0f 1a/0f 1b with a 66/f2/f3 prefix: objdump shows (bad) or MPX
    mnemonics; we show the nop or bsf/bsr the core executes.
  - An instruction cut off by the end of the buffer shows as `.byte`, even
    when it is only prefixes (objdump names those, e.g. `data16`).
"""
from __future__ import annotations

from bisect import bisect_right

from .decode import Truncated, decode
from .insn import (
    CONDS, ESP, IMM, MEM, REG, REG8, REG16, REG32, REL, SREG, SREGS, Insn, Operand,
)

# Operation names (decode.py) whose AT&T mnemonic differs.
MNEMONICS = {
    "imul2": "imul", "imul3": "imul", "calli": "call", "jmpi": "jmp", "movsr": "mov",
}

# Names by operand size, for operations spelled differently per size.
SIZED_NAMES = {
    "cwde": {4: "cwtl", 2: "cbtw"},
    "cdq": {4: "cltd", 2: "cwtd"},
}

SUFFIX = {1: "b", 2: "w", 4: "l"}

# Operations whose 16-bit form objdump marks with "w" (and 32-bit not at all).
STACK_OPS = frozenset({"push", "pop", "call", "calli", "jmp", "jmpi", "ret", "enter",
                       "leave", "pushf", "popf", "pusha", "popa"})
# Never suffixed: a segment register, setcc's fixed byte, lea's address.
NO_SUFFIX = frozenset({"movsr", "setcc", "lea", "int", "bswap"})
BRANCHES = frozenset({"call", "calli", "jmp", "jmpi", "jcc", "ret"})
HINTED = frozenset({"jcc", "loop", "loope", "loopne", "jecxz"})
STRING_OPS = frozenset({"movs", "cmps", "stos", "lods", "scas"})
LOCKABLE = frozenset({"add", "or", "adc", "sbb", "and", "sub", "xor", "not", "neg",
                      "inc", "dec", "xadd", "cmpxchg", "bts", "btr", "btc"})
SHIFTS = frozenset({"shl", "shr", "sar", "rol", "ror", "rcl", "rcr"})

PREFIX_NAMES = {0x66: "data16", 0x67: "addr16", 0xF0: "lock", 0xF2: "repnz", 0xF3: "repz",
                0x26: "es", 0x2E: "cs", 0x36: "ss", 0x3E: "ds", 0x64: "fs", 0x65: "gs"}
SEG_PREFIXES = {0x26: 0, 0x2E: 1, 0x36: 2, 0x3E: 3, 0x64: 4, 0x65: 5}

BYTES_PER_LINE = 7          # objdump's i386 bytes per line
SKIP_ZEROES = 8             # objdump skips runs of zeroes this long ...
SKIP_ZEROES_AT_END = 3      # ... or shorter than this at the very end


class _Layout:
    """Where the parts of an instruction sit in its raw bytes."""
    __slots__ = ("prefixes", "opcode", "modrm", "sib")

    def __init__(self, raw: bytes):
        i = 0
        while i < len(raw) and raw[i] in PREFIX_NAMES:
            i += 1
        self.prefixes = raw[:i]
        if i < len(raw) and raw[i] == 0x0F and i + 1 < len(raw):
            self.opcode = 0x0F00 | raw[i + 1]
            i += 2
        else:
            self.opcode = raw[i] if i < len(raw) else -1
            i += 1
        self.modrm = raw[i] if i < len(raw) else -1
        self.sib = raw[i + 1] if i + 1 < len(raw) else -1


def _uses_opsize(insn: Insn, lay: _Layout) -> bool:
    """Whether the operand-size prefix changes this instruction (objdump
    prints an unused one as `data16`)."""
    op = insn.op
    if op in STRING_OPS:
        return insn.size == 2
    if op in ("jcc", "jmp", "call") and insn.ops and insn.ops[0].kind == REL:
        return lay.opcode in (0xE8, 0xE9) or 0x0F80 <= lay.opcode <= 0x0F8F
    if op == "nop":
        if (lay.opcode == 0x0F1C and _last_rep(lay)) or (
                lay.opcode == 0x0F1E and _last_rep(lay) == 0xF3):
            return False                     # `data16 endbr32`, `data16 repz nopw`
        return _hint_name(insn, lay) is None   # `data16 prefetchnta`, but nopw
    if op == "movsr":
        return any(o.kind == REG for o in insn.ops)
    if op in ("ret", "enter", "leave", "pushf", "popf", "pusha", "popa", "cwde", "cdq"):
        return True
    if op in ("push", "pop") and insn.ops and insn.ops[0].kind == SREG:
        return True
    return any(o.kind in (REG, MEM, IMM) and o.size == 2 for o in insn.ops)


def _hint_mem(insn: Insn) -> bool:
    return bool(insn.ops) and insn.ops[0].kind == MEM


def _last_rep(lay: _Layout) -> int:
    for b in reversed(lay.prefixes):
        if b in (0xF2, 0xF3):
            return b
    return 0


def _hint_name(insn: Insn, lay: _Layout) -> str | None:
    """objdump's name for a memory form in the nop-hint space, if any."""
    if insn.op != "nop" or not _hint_mem(insn):
        return None
    reg = (lay.modrm >> 3) & 7
    plain = not any(b in (0x66, 0xF2, 0xF3) for b in lay.prefixes)
    if lay.opcode == 0x0F18 and reg < 4:
        return ("prefetchnta", "prefetcht0", "prefetcht1", "prefetcht2")[reg]
    if lay.opcode == 0x0F0D:
        return ("prefetch", "prefetchw", "prefetchwt1")[reg] if reg < 3 else "prefetch"
    if lay.opcode == 0x0F1C and reg == 0 and plain:
        return "cldemote"
    if lay.opcode == 0x0F1A and plain:
        return "bndldx"
    if lay.opcode == 0x0F1B and plain:
        return "bndstx"
    return None


def _rdsspd(insn: Insn, lay: _Layout) -> bool:
    return (insn.op == "nop" and lay.opcode == 0x0F1E and lay.modrm >> 3 == 0x19
            and _last_rep(lay) == 0xF3)


def _hex(v: int) -> str:
    return f"0x{v:x}"


def _sdisp(v: int) -> str:
    v &= 0xFFFFFFFF
    return f"-0x{0x100000000 - v:x}" if v & 0x80000000 else f"0x{v:x}"


def _regname(n: int, size: int) -> str:
    names = REG32 if size == 4 else REG16 if size == 2 else REG8
    return "%" + names[n]


class _Formatter:
    """Spells one Insn: prefixes(), mnemonic() and operands(), joined by text()."""

    def __init__(self, insn: Insn, symbols):
        self.insn = insn
        self.lay = _Layout(insn.raw)
        self.symbols = symbols
        self.seg_shown = -1         # segment printed in memory operands, -1 none

    # -- prefixes ---------------------------------------------------------------
    def prefixes(self) -> tuple[list[str], str]:
        """Prefix names to print before the mnemonic, and a branch hint."""
        i = self.insn
        lay = self.lay
        op = i.op
        pre = list(lay.prefixes)
        names: list[str | None] = [PREFIX_NAMES[b] for b in pre]
        hint = ""

        def last(bs) -> int:
            for k in range(len(pre) - 1, -1, -1):
                if pre[k] in bs:
                    return k
            return -1

        k66 = last((0x66,))
        kz = last((0xF3,))
        knz = last((0xF2,))
        kseg = last(SEG_PREFIXES)
        segs = {b for b in pre if b in SEG_PREFIXES}
        mem = any(o.kind == MEM for o in i.ops)

        if k66 >= 0 and _uses_opsize(i, lay):
            names[k66] = None
        if self._mandatory_f3():
            names[kz] = None                      # pause, endbr32, tzcnt, lzcnt
        elif op in ("movs", "stos", "lods") and kz >= 0:
            names[kz] = "rep"
        if op in BRANCHES and knz >= 0:
            names[knz] = "bnd"
        if mem and ((i.lock and op in LOCKABLE) or op == "xchg"):
            # Hardware lock elision: f2/f3 on a locked memory operation.
            if kz >= 0:
                names[kz] = "xrelease"
            if knz >= 0:
                names[knz] = "xacquire"
        elif mem and op == "mov" and lay.opcode in (0x88, 0x89, 0xC6, 0xC7) and kz > knz:
            names[kz] = "xrelease"
        if kseg >= 0:
            if op in ("calli", "jmpi") and 0x3E in segs:
                names[kseg] = "notrack"
            elif op in HINTED:
                if len(segs & {0x2E, 0x3E}) == 1:
                    hint = ",pt" if 0x3E in segs else ",pn"
                    names[kseg] = None
            elif mem or op in ("movs", "cmps", "lods", "xlat"):
                names[kseg] = None
                self.seg_shown = SEG_PREFIXES[pre[kseg]]
        return [n for n in names if n], hint

    def _mandatory_f3(self) -> bool:
        """f3 is part of the opcode (pause, endbr32/64, tzcnt, lzcnt)."""
        op = self.insn.op
        return op == "pause" or self._endbr() or _rdsspd(self.insn, self.lay) or (
            op in ("bsf", "bsr") and _last_rep(self.lay) == 0xF3)

    def _endbr(self) -> bool:
        lay = self.lay
        return (self.insn.op == "nop" and lay.opcode == 0x0F1E
                and lay.modrm in (0xFA, 0xFB) and _last_rep(self.lay) == 0xF3)

    # -- mnemonic ----------------------------------------------------------------
    def mnemonic(self) -> str:
        i = self.insn
        op = i.op
        lay = self.lay
        if op in SIZED_NAMES:
            return SIZED_NAMES[op][i.size]
        if op == "jcc":
            return "j" + CONDS[i.cond]
        if op == "setcc":
            return "set" + CONDS[i.cond]
        if op == "cmovcc":
            return "cmov" + CONDS[i.cond]
        if op in ("bsf", "bsr") and self._mandatory_f3():
            return "tzcnt" if op == "bsf" else "lzcnt"
        if op in ("movzx", "movsx"):
            return op[:4] + SUFFIX[i.ops[1].size] + SUFFIX[i.ops[0].size]
        if op in ("movs", "cmps"):
            return op + SUFFIX[i.size]
        if op == "nop":
            if lay.opcode == 0x90:
                return "xchg" if 0x66 in lay.prefixes else "nop"
            if self._endbr():
                return "endbr32" if lay.modrm == 0xFB else "endbr64"
            if _rdsspd(i, lay):
                return "rdsspd"
            name = _hint_name(i, lay)
            if name:
                return name
        name = MNEMONICS.get(op, op)
        if op in NO_SUFFIX or op in STRING_OPS:
            return name
        regs = [o for o in i.ops if o.kind == REG]
        if op in SHIFTS and i.ops[1].kind == REG:
            regs = regs[:-1]                      # the %cl count does not fix the size
        if op in STACK_OPS:
            if i.size == 2 and not regs and _uses_opsize(i, lay):
                return name + "w"
            return name
        if any(o.kind == MEM for o in i.ops) and not regs:
            return name + SUFFIX[i.size]
        return name

    # -- operands ----------------------------------------------------------------
    def operands(self) -> list[str]:
        i = self.insn
        op = i.op
        lay = self.lay
        if op in STRING_OPS:
            return self._string_operands()
        if op == "xlat":
            return [self._segname(3) + "(%ebx)"]
        if op == "nop" and (lay.opcode == 0x90 or self._endbr()):
            return ["%ax", "%ax"] if lay.opcode == 0x90 and 0x66 in lay.prefixes else []
        if _rdsspd(i, lay):
            return [_regname(lay.modrm & 7, 4)]
        if _hint_name(i, lay) in ("bndldx", "bndstx"):
            # MPX bound-table hints (a nop to the core).
            n = (lay.modrm >> 3) & 7
            bnd = f"%bnd{n}" if n < 4 else "(bad)"
            mem = self._mem(i.ops[0])
            return [mem, bnd] if lay.opcode == 0x0F1A else [bnd, mem]
        ops = list(i.ops)
        if op in SHIFTS and lay.opcode in (0xD0, 0xD1):
            ops = ops[:1]                         # shift by one: `shl %eax`
        if op == "movsr" and ops[1].kind == REG:
            # mov Ew, Sw: objdump names the register by operand size.
            ops[1] = Operand(REG, 2 if 0x66 in lay.prefixes else 4, reg=ops[1].reg)
        out = [self._operand(o) for o in ops]
        if op in ("calli", "jmpi"):
            out[0] = "*" + out[0]
        if op != "enter":
            out.reverse()
        return out

    def _segname(self, default: int) -> str:
        seg = self.seg_shown if self.seg_shown >= 0 else default
        return "%" + SREGS[seg] + ":"

    def _string_operands(self) -> list[str]:
        i = self.insn
        acc = _regname(0, i.size)
        src = self._segname(3) + "(%esi)"
        dst = "%es:(%edi)"
        return {"movs": [src, dst], "cmps": [dst, src], "stos": [acc, dst],
                "lods": [src, acc], "scas": [dst, acc]}[i.op]

    def _operand(self, o: Operand) -> str:
        if o.kind == REG:
            return _regname(o.reg, o.size)
        if o.kind == SREG:
            return "%" + SREGS[o.reg]
        if o.kind == IMM:
            return "$" + _hex(o.imm)
        if o.kind == REL:
            return self._target(o.imm)
        return self._mem(o)

    def _target(self, t: int) -> str:
        syms = self.symbols
        if syms is None:
            return _hex(t)
        name = syms(t)
        return f"{t:x} <{name}>" if name else f"{t:x}"

    def _mem(self, o: Operand) -> str:
        lay = self.lay
        seg = "%" + SREGS[self.seg_shown] + ":" if self.seg_shown >= 0 else ""
        if 0xA0 <= lay.opcode <= 0xA3 or lay.modrm < 0:
            return seg + _hex(o.disp)                    # moffs
        mod = lay.modrm >> 6
        rm = lay.modrm & 7
        has_sib = rm == 4
        if o.base < 0 and o.index < 0 and not has_sib:
            return seg + _hex(o.disp)                    # disp32 only
        text = seg
        if mod in (1, 2) or o.base < 0:
            text += _sdisp(o.disp)
        text += "("
        if o.base >= 0:
            text += "%" + REG32[o.base]
        if o.index >= 0:
            text += f",%{REG32[o.index]},{o.scale}"
        elif has_sib:
            scale = 1 << (lay.sib >> 6)
            if o.base != ESP or scale != 1:
                text += f",%eiz,{scale}"
        return text + ")"

    def text(self) -> str:
        i = self.insn
        if i.op == "(bad)":
            return "(bad)"
        pre, hint = self.prefixes()
        mnem = self.mnemonic() + hint
        ops = self.operands()
        head = "".join(p + " " for p in pre) + mnem
        if not ops:
            return head
        return head.ljust(6) + " " + ",".join(ops)


def format_insn(insn: Insn, symbols=None) -> str:
    """The mnemonic and operands of one instruction, as objdump prints them.

    `symbols`, if given, is a callable address -> "name" or "name+0x10" (or
    None) used for branch targets, as objdump -d shows them for an ELF
    (`call   800a3c <cprintf>`); without it targets are `0x800a3c`.
    """
    return _Formatter(insn, symbols).text()


def symbolizer(symbols: dict[int, str]):
    """A `symbols` callable for format_insn/disasm from {address: name}:
    the nearest symbol at or below an address, as `name` or `name+0xoff`."""
    addrs = sorted(symbols)

    def lookup(a: int):
        k = bisect_right(addrs, a) - 1
        if k < 0:
            return None
        base = addrs[k]
        name = symbols[base]
        return name if a == base else f"{name}+0x{a - base:x}"
    return lookup


def _addr_width(end: int) -> int:
    """Characters objdump keeps of an 8-digit address (it skips whole
    groups of four leading zeros of the section's end address, minus one)."""
    buf = f"{end & 0xFFFFFFFF:08x}"
    zeros = len(buf) - len(buf.lstrip("0"))
    if zeros == len(buf):
        zeros = 0
    skip = (zeros - 1) & -4 if zeros else 0
    return len(buf) - skip


def _addr_text(a: int, width: int) -> str:
    s = f"{a & 0xFFFFFFFF:08x}"[8 - width:]
    stripped = s.lstrip("0") or "0"
    return stripped.rjust(width)


def _line(a: int, width: int, raw: bytes, text: str) -> list[str]:
    """objdump's lines for one instruction: address, up to 7 bytes padded to
    a fixed column, the text; then any further bytes 7 to a line."""
    hexs = "".join(f"{b:02x} " for b in raw[:BYTES_PER_LINE])
    lines = [f"{_addr_text(a, width)}:\t{hexs.ljust(3 * BYTES_PER_LINE)}\t{text}"]
    for k in range(BYTES_PER_LINE, len(raw), BYTES_PER_LINE):
        chunk = raw[k:k + BYTES_PER_LINE]
        lines.append(f"{_addr_text(a + k, width)}:\t" + "".join(f"{b:02x} " for b in chunk))
    return lines


def disasm_iter(code: bytes, addr: int, symbols=None, skip_zeroes: bool = True):
    """Yield (address, Insn or None, [lines]) for each instruction of code.

    None stands for what objdump shows as `.byte 0x..` (an instruction cut
    off by the end of the buffer) or `...` (skipped zeroes)."""
    code = bytes(code)
    n = len(code)
    width = _addr_width(addr + n)
    pos = 0
    while pos < n:
        a = (addr + pos) & 0xFFFFFFFF
        if skip_zeroes and code[pos] == 0:
            z = pos
            while z < n and code[z] == 0:
                z += 1
            run = z - pos
            if run >= SKIP_ZEROES or (z == n and run < SKIP_ZEROES_AT_END):
                if z != n:
                    run &= ~3
                yield a, None, ["\t..."]
                pos += run
                continue
        try:
            insn = decode(code[pos:pos + 15], a)
        except Truncated:
            yield a, None, _line(a, width, code[pos:pos + 1], f".byte 0x{code[pos]:x}")
            pos += 1
            continue
        yield a, insn, _line(a, width, insn.raw, format_insn(insn, symbols))
        pos += insn.length


def disasm(code: bytes, addr: int, symbols=None, skip_zeroes: bool = True) -> str:
    """objdump -d style listing of `code` loaded at `addr`, one line per
    instruction (plus objdump's continuation lines for instructions longer
    than 7 bytes), each ending in a newline.

    `symbols`: see format_insn.  `skip_zeroes`: like objdump without -z,
    runs of 8 or more zero bytes (and 1-2 at the very end) show as `...`.
    """
    out = []
    for _, _, lines in disasm_iter(code, addr, symbols, skip_zeroes):
        out.extend(lines)
    return "".join(line + "\n" for line in out)
