"""Run-time helpers that generated code calls, and the exceptions it raises.

Everything here is plain Python shared by the interpreter functions and
the translated blocks (codegen.py puts these names in their globals).
Helpers never modify CPU state before every check that can fault has
passed, so a fault leaves no trace.
"""
from __future__ import annotations

from ..memlayout import FL_DF
from ..pmap import CpuFault
from .flags import ARITH, PF_TABLE, cf_of, compute, eflags_of, test_cc


class CpuTrap(CpuFault):
    """A fault-class exception other than a page fault (#DE, #UD, #GP):
    eip stays at the faulting instruction."""

    def __init__(self, trapno: int, err: int = 0):
        super().__init__(err, 0)
        self.trapno = trapno


class SoftInt(Exception):
    """A trap-class interrupt (int3, int $0x30): the instruction completed
    and `next` is the eip after it."""

    def __init__(self, trapno: int, next_eip: int):
        self.trapno = trapno
        self.next = next_eip


def ef_of(cpu) -> int:
    """The CPU's full EFLAGS, materialized (and cached in cpu.ef)."""
    fk = cpu.fk
    if fk:
        cpu.ef = (cpu.ef & ~ARITH) | compute(fk, cpu.fa, cpu.fb, cpu.fr)
        cpu.fk = 0
    return cpu.ef


def cf(cpu) -> int:
    return cf_of(cpu.fk, cpu.fa, cpu.fb, cpu.fr, cpu.ef)


def cc(cpu, c: int) -> bool:
    return test_cc(c, cpu.fk, cpu.fa, cpu.fb, cpu.fr, cpu.ef)


# -- division ------------------------------------------------------------------

def divu(num: int, den: int, size: int) -> tuple[int, int]:
    """Unsigned divide of a 2*size-byte value; #DE on zero or overflow."""
    if den == 0:
        raise CpuTrap(0)
    q, r = divmod(num, den)
    if q >> (size * 8):
        raise CpuTrap(0)
    return q, r


def divs(num: int, den: int, size: int) -> tuple[int, int]:
    """Signed divide (operands given unsigned); results masked unsigned."""
    bits = size * 8
    if den == 0:
        raise CpuTrap(0)
    if num >> (2 * bits - 1):
        num -= 1 << (2 * bits)
    if den >> (bits - 1):
        den -= 1 << bits
    q = abs(num) // abs(den)
    if (num < 0) != (den < 0):
        q = -q
    r = num - q * den
    if q >= (1 << (bits - 1)) or q < -(1 << (bits - 1)):
        raise CpuTrap(0)
    mask = (1 << bits) - 1
    return q & mask, r & mask


def sx(v: int, size: int) -> int:
    """Sign-extend a size-byte unsigned value to a Python int."""
    bits = size * 8
    return v - (1 << bits) if v >> (bits - 1) else v


# -- string instructions ---------------------------------------------------------
# Each returns the next eip: `nxt` when done, `here` when it stopped between
# iterations of a rep (registers updated to the completed iterations).

REP_CHUNK = 16384          # most element iterations per call of a rep


def _step(cpu, size):
    return -size if cpu.ef & FL_DF else size


_RD = {1: "rd8", 2: "rd16", 4: "rd32"}
_WR = {1: "wr8", 2: "wr16", 4: "wr32"}


def movs(cpu, r, m, size, rep, here, nxt):
    step = _step(cpu, size)
    if not rep:
        v = getattr(m, _RD[size])(r[6])
        getattr(m, _WR[size])(r[7], v)
        r[6] = (r[6] + step) & 0xFFFFFFFF
        r[7] = (r[7] + step) & 0xFFFFFFFF
        return nxt
    if r[1] == 0:
        return nxt
    if step > 0:
        n = m.bulk_copy(r[7], r[6], r[1], size)
        if n:
            r[6] = (r[6] + n * size) & 0xFFFFFFFF
            r[7] = (r[7] + n * size) & 0xFFFFFFFF
            r[1] -= n
            return nxt if r[1] == 0 else here
    rd = getattr(m, _RD[size])
    wr = getattr(m, _WR[size])
    esi, edi, ecx = r[6], r[7], r[1]
    left = REP_CHUNK
    try:
        while ecx and left:
            wr(edi, rd(esi))
            esi = (esi + step) & 0xFFFFFFFF
            edi = (edi + step) & 0xFFFFFFFF
            ecx -= 1
            left -= 1
    finally:
        r[6], r[7], r[1] = esi, edi, ecx
    return nxt if ecx == 0 else here


def stos(cpu, r, m, size, rep, here, nxt):
    step = _step(cpu, size)
    v = r[0] & (0xFF, 0xFFFF, 0, 0xFFFFFFFF)[size - 1]
    if not rep:
        getattr(m, _WR[size])(r[7], v)
        r[7] = (r[7] + step) & 0xFFFFFFFF
        return nxt
    if r[1] == 0:
        return nxt
    if step > 0:
        n = m.bulk_fill(r[7], v, r[1], size)
        if n:
            r[7] = (r[7] + n * size) & 0xFFFFFFFF
            r[1] -= n
            return nxt if r[1] == 0 else here
    wr = getattr(m, _WR[size])
    edi, ecx = r[7], r[1]
    left = REP_CHUNK
    try:
        while ecx and left:
            wr(edi, v)
            edi = (edi + step) & 0xFFFFFFFF
            ecx -= 1
            left -= 1
    finally:
        r[7], r[1] = edi, ecx
    return nxt if ecx == 0 else here


def _set_acc(r, size, v):
    if size == 4:
        r[0] = v
    elif size == 2:
        r[0] = (r[0] & 0xFFFF0000) | v
    else:
        r[0] = (r[0] & 0xFFFFFF00) | v


def lods(cpu, r, m, size, rep, here, nxt):
    step = _step(cpu, size)
    rd = getattr(m, _RD[size])
    if not rep:
        v = rd(r[6])
        _set_acc(r, size, v)
        r[6] = (r[6] + step) & 0xFFFFFFFF
        return nxt
    esi, ecx = r[6], r[1]
    left = REP_CHUNK
    try:
        while ecx and left:
            v = rd(esi)
            _set_acc(r, size, v)
            esi = (esi + step) & 0xFFFFFFFF
            ecx -= 1
            left -= 1
    finally:
        r[6], r[1] = esi, ecx
    return nxt if ecx == 0 else here


def _cmp_flags(cpu, size, a, b):
    cpu.fk = (3 << 3) | size            # SUB
    cpu.fa = a
    cpu.fb = b
    cpu.fr = (a - b) & (0xFF, 0xFFFF, 0, 0xFFFFFFFF)[size - 1]


def cmps(cpu, r, m, size, rep, here, nxt):
    """cmps: compares [esi] with [edi]; rep = f3 (repe) or f2 (repne)."""
    step = _step(cpu, size)
    rd = getattr(m, _RD[size])
    if not rep:
        a = rd(r[6])
        b = rd(r[7])
        _cmp_flags(cpu, size, a, b)
        r[6] = (r[6] + step) & 0xFFFFFFFF
        r[7] = (r[7] + step) & 0xFFFFFFFF
        return nxt
    want_equal = rep == 0xF3
    esi, edi, ecx = r[6], r[7], r[1]
    left = REP_CHUNK
    try:
        while ecx and left:
            a = rd(esi)
            b = rd(edi)
            _cmp_flags(cpu, size, a, b)
            esi = (esi + step) & 0xFFFFFFFF
            edi = (edi + step) & 0xFFFFFFFF
            ecx -= 1
            left -= 1
            if (a == b) != want_equal:
                return nxt
    finally:
        r[6], r[7], r[1] = esi, edi, ecx
    return nxt if ecx == 0 else here


def scas(cpu, r, m, size, rep, here, nxt):
    step = _step(cpu, size)
    rd = getattr(m, _RD[size])
    acc = r[0] & (0xFF, 0xFFFF, 0, 0xFFFFFFFF)[size - 1]
    if not rep:
        b = rd(r[7])
        _cmp_flags(cpu, size, acc, b)
        r[7] = (r[7] + step) & 0xFFFFFFFF
        return nxt
    want_equal = rep == 0xF3
    edi, ecx = r[7], r[1]
    left = REP_CHUNK
    try:
        while ecx and left:
            b = rd(edi)
            _cmp_flags(cpu, size, acc, b)
            edi = (edi + step) & 0xFFFFFFFF
            ecx -= 1
            left -= 1
            if (acc == b) != want_equal:
                return nxt
    finally:
        r[7], r[1] = edi, ecx
    return nxt if ecx == 0 else here


STRING_HELPERS = {"movs": movs, "stos": stos, "lods": lods, "cmps": cmps, "scas": scas}

GLOBALS = {
    "CpuTrap": CpuTrap, "SoftInt": SoftInt, "ef_of": ef_of, "cf": cf, "cc": cc,
    "divu": divu, "divs": divs, "sx": sx, "PF": PF_TABLE, "eflags_of": eflags_of,
    "test_cc": test_cc, **STRING_HELPERS,
}
