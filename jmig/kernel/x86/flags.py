"""EFLAGS: lazy evaluation, condition codes, and the core's choices for
flags the Intel SDM leaves undefined.

The arithmetic flags CF PF AF ZF SF OF are computed lazily.  A CPU keeps
`fk` (the kind of the last flag-setting operation, 0 if the flags are
already in `ef`), `fa`, `fb` (its operands) and `fr` (its result, masked to
the operand size).  `ef` holds every other EFLAGS bit (IF, DF, bit 1, ...)
and, when `fk == 0`, the arithmetic ones too.

    fk = KIND << 3 | size         size in bytes: 1, 2 or 4

    kind   operation                      CF                  notes
    ADD    add, xadd                      fr < fa
    ADC    adc with carry-in 1            fr <= fa            (adc with CF=0 is ADD)
    SUB    sub, cmp, neg, cmpxchg, scas,  fa < fb             neg is 0 - fb
           cmps
    SBB    sbb with borrow-in 1           fa <= fb            (sbb with CF=0 is SUB)
    LOGIC  and, or, xor, test             0                   OF 0, AF 0
    INC    inc                            fb (CF before)      fa + 1
    DEC    dec                            fb (CF before)      fa - 1
    MUL    mul, imul (all forms)          fb (1 = overflow)   OF = CF; SF ZF PF of fr
    SHL    shl by an immediate 1..31      bit `size*8` of     fa: the value, fb: the
                                          fa << fb            count; OF = MSB(fr) ^ CF
    SHR    shr by an immediate 1..31      bit fb-1 of fa      OF = MSB of fa >> (fb-1)
    SAR    sar by an immediate 1..31      bit fb-1 of fa,     OF = 0
                                          sign-extended

Undefined flags (SDM "undefined"), the core's choice, in one place:
  - and/or/xor/test: AF = 0.
  - mul, imul: SF, ZF and PF from the low half of the result (fr), AF = 0.
  - div, idiv: all six flags unchanged.
  - shl/shr/sar with a count other than 1 (after masking, count != 0): OF is
    computed as for a one-bit shift from the last step: shl: MSB(result) XOR
    CF; shr: MSB of the value before the last step; sar: 0.  AF = 0.  For
    8- and 16-bit operands with count >= width, CF is the last bit shifted
    out of the zero- (shl/shr) or sign- (sar) extended value.
  - rol/ror/rcl/rcr with a count other than 1: OF as for a one-bit rotate
    of the last step (rol: MSB(result) XOR CF; ror: MSB XOR bit MSB-1 of the
    result; rcl: MSB(result) XOR CF; rcr: MSB XOR bit MSB-1 of the result).
  - shld/shrd: OF as for a one-bit shift (MSB changed), AF = 0; a 16-bit
    count above 16 shifts the 48-bit concatenation (the Intel behaviour is
    undefined; the result is documented here, not tested against Unicorn).
  - bt/bts/btr/btc: OF SF AF PF unchanged.
  - bsf/bsr: CF OF SF AF PF unchanged; with a zero source the destination
    is unchanged (AMD's documented behaviour, which Intel CPUs share).
  - bswap with a 16-bit operand: the low word becomes 0.
"""
from __future__ import annotations

from ..memlayout import FL_AF, FL_CF, FL_OF, FL_PF, FL_SF, FL_ZF

ARITH = FL_CF | FL_PF | FL_AF | FL_ZF | FL_SF | FL_OF      # 0x8d5

ADD, ADC, SUB, SBB, LOGIC, INC, DEC, MUL, SHL, SHR, SAR = range(1, 12)

MASK = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF}          # by operand size in bytes
SIGN = {1: 0x80, 2: 0x8000, 4: 0x80000000}
BITS = {1: 8, 2: 16, 4: 32}

# PF_TABLE[b] = FL_PF if the byte b has an even number of set bits.
PF_TABLE = bytes(FL_PF if bin(b).count("1") % 2 == 0 else 0 for b in range(256))


def compute(fk: int, fa: int, fb: int, fr: int) -> int:
    """The six arithmetic flag bits of a lazy state (fk != 0)."""
    kind = fk >> 3
    size = fk & 7
    sign = SIGN[size]
    f = PF_TABLE[fr & 0xFF]
    if fr == 0:
        f |= FL_ZF
    if fr & sign:
        f |= FL_SF
    if kind == SUB or kind == SBB:
        if fa < fb or (kind == SBB and fa == fb):
            f |= FL_CF
        if (fa ^ fb) & (fa ^ fr) & sign:
            f |= FL_OF
        f |= (fa ^ fb ^ fr) & FL_AF
    elif kind == ADD or kind == ADC:
        if fr < fa or (kind == ADC and fr == fa):
            f |= FL_CF
        if (fa ^ fr) & (fb ^ fr) & sign:
            f |= FL_OF
        f |= (fa ^ fb ^ fr) & FL_AF
    elif kind == LOGIC:
        pass
    elif kind == INC:
        f |= fb & FL_CF
        if fr == sign:
            f |= FL_OF
        if fr & 0xF == 0:
            f |= FL_AF
    elif kind == DEC:
        f |= fb & FL_CF
        if fr == sign - 1:
            f |= FL_OF
        if fr & 0xF == 0xF:
            f |= FL_AF
    elif kind == MUL:
        if fb:
            f |= FL_CF | FL_OF
    elif kind == SHL:
        cf = (fa << fb) >> BITS[size] & 1
        f |= cf | ((1 if fr & sign else 0) ^ cf) << 11
    elif kind == SHR:
        f |= (fa >> (fb - 1)) & 1 | ((fa >> (fb - 1)) >> (BITS[size] - 1) & 1) << 11
    elif kind == SAR:
        f |= ((fa - (sign << 1) if fa & sign else fa) >> (fb - 1)) & 1
    else:
        raise AssertionError(f"bad lazy flags kind {fk:#x}")
    return f


def eflags_of(fk: int, fa: int, fb: int, fr: int, ef: int) -> int:
    """The full EFLAGS value of a CPU's flag state."""
    if fk:
        return (ef & ~ARITH) | compute(fk, fa, fb, fr)
    return ef


def cf_of(fk: int, fa: int, fb: int, fr: int, ef: int) -> int:
    """Just CF (0 or 1), cheaply for the common kinds."""
    if not fk:
        return ef & 1
    kind = fk >> 3
    if kind == SUB:
        return 1 if fa < fb else 0
    if kind == ADD:
        return 1 if fr < fa else 0
    if kind == LOGIC:
        return 0
    if kind == INC or kind == DEC:
        return fb & 1
    if kind == SBB:
        return 1 if fa <= fb else 0
    if kind == ADC:
        return 1 if fr <= fa else 0
    if kind == MUL:
        return 1 if fb else 0
    return compute(fk, fa, fb, fr) & FL_CF          # shifts


def test_cc(cc: int, fk: int, fa: int, fb: int, fr: int, ef: int) -> bool:
    """Evaluate condition code cc (0-15, jcc order) against a flag state."""
    c = cc >> 1
    if fk:
        kind = fk >> 3
        if c == 2:                                     # e / ne
            v = fr == 0
        elif kind == SUB and c in (1, 3, 6, 7):
            sign = SIGN[fk & 7]
            if c == 1:                                 # b / ae
                v = fa < fb
            elif c == 3:                               # be / a
                v = fa <= fb
            elif c == 6:                               # l / ge
                v = (fa ^ sign) < (fb ^ sign)
            else:                                      # le / g
                v = (fa ^ sign) <= (fb ^ sign)
        else:
            v = _test_bits(c, compute(fk, fa, fb, fr))
    else:
        v = _test_bits(c, ef)
    return v != bool(cc & 1)


def _test_bits(c: int, f: int) -> bool:
    if c == 0:
        return bool(f & FL_OF)
    if c == 1:
        return bool(f & FL_CF)
    if c == 2:
        return bool(f & FL_ZF)
    if c == 3:
        return bool(f & (FL_CF | FL_ZF))
    if c == 4:
        return bool(f & FL_SF)
    if c == 5:
        return bool(f & FL_PF)
    sf_ne_of = bool(f & FL_SF) != bool(f & FL_OF)
    if c == 6:
        return sf_ne_of
    return sf_ne_of or bool(f & FL_ZF)
