"""The carry flag handed from one instruction to the next: a flag setter
(cmp, sub, add, logic, neg, inc/dec) followed by an instruction that
consumes CF (adc, sbb, setb/setae, jb/jae, cmovb, cmc, rcl/rcr).

In a translated block the consumer reads the setter's lazy flags (its
operands and result), never eflags: a wrong carry there shows only on
the block translator, and only when the two run in the same block.  The
cases below run on every engine (tests/x86/conftest.py), the two
instructions in one snippet; the property test draws setters, operands
(equal ones half the time: `cmp` of equal values clears CF) and
consumers, and checks each engine against the expectations worked out
below from the SDM, and the translator against the interpreter.
"""
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from . import insn_helpers
from .insn_helpers import ARITH, BASE_FLAGS, CF, CODE, EAX, ECX, EDX, step

M32 = 0xFFFFFFFF


# -- hand-derived cases ---------------------------------------------------------------------

def test_cmp_of_equal_values_then_adc_adds_no_carry():
    # cmp %ebx,%eax ; adc %edx,%ecx          eax == ebx: CF = 0
    cpu = step(b"\x39\xd8\x11\xd1", n=2, eax=5, ebx=5, ecx=10, edx=20)
    assert cpu.r[ECX] == 30 and not cpu.eflags & CF


def test_cmp_of_equal_values_then_sbb_borrows_nothing():
    # cmp %ebx,%eax ; sbb %ecx,%ecx          the "CF to a mask" idiom: 0
    cpu = step(b"\x39\xd8\x19\xc9", n=2, eax=0x80000000, ebx=0x80000000, ecx=7)
    assert cpu.r[ECX] == 0 and not cpu.eflags & CF


def test_cmp_below_then_sbb_gives_all_ones():
    # cmp %ebx,%eax ; sbb %ecx,%ecx          eax < ebx: CF = 1, ecx = -1
    cpu = step(b"\x39\xd8\x19\xc9", n=2, eax=4, ebx=5, ecx=7)
    assert cpu.r[ECX] == M32 and cpu.eflags & CF


def test_cmp_of_equal_bytes_then_adc_keeps_carry_clear():
    # cmp %bl,%al ; adc $0,%ecx              al == bl (upper bits differ)
    cpu = step(b"\x38\xd8\x83\xd1\x00", n=2, eax=0x1234_5677, ebx=0x77, ecx=1)
    assert cpu.r[ECX] == 1 and not cpu.eflags & CF


def test_cmp_of_equal_values_then_jb_falls_through():
    # cmp %ebx,%eax ; jb .+0x10
    cpu = step(b"\x39\xd8\x72\x0e", n=2, eax=9, ebx=9, eflags=BASE_FLAGS | CF)
    assert cpu.eip == CODE + 4


def test_cmp_of_equal_values_then_jae_is_taken():
    # cmp %ebx,%eax ; jae .+0x10
    cpu = step(b"\x39\xd8\x73\x0e", n=2, eax=9, ebx=9, eflags=BASE_FLAGS | CF)
    assert cpu.eip == CODE + 0x12


def test_cmp_of_equal_values_then_setb_gives_0_and_setae_1():
    # cmp %ebx,%eax ; setb %cl ; setae %dl
    cpu = step(b"\x39\xd8\x0f\x92\xc1\x0f\x93\xc2", n=3, eax=3, ebx=3,
               ecx=0xAAAAAAFF, edx=0xBBBBBB00)
    assert cpu.r[ECX] == 0xAAAAAA00 and cpu.r[EDX] == 0xBBBBBB01


def test_cmp_of_equal_values_then_cmc_sets_carry():
    # cmp %ebx,%eax ; cmc ; adc $0,%ecx
    cpu = step(b"\x39\xd8\xf5\x83\xd1\x00", n=3, eax=3, ebx=3, ecx=1)
    assert cpu.r[ECX] == 2 and not cpu.eflags & CF


def test_cmp_of_equal_values_then_rcl_shifts_in_zero():
    # cmp %ebx,%eax ; rcl $1,%ecx
    cpu = step(b"\x39\xd8\xd1\xd1", n=2, eax=3, ebx=3, ecx=0x40000001,
               eflags=BASE_FLAGS | CF)
    assert cpu.r[ECX] == 0x80000002 and not cpu.eflags & CF


def test_cmp_of_equal_values_then_rcr_shifts_in_zero():
    # cmp %ebx,%eax ; rcr $1,%ecx
    cpu = step(b"\x39\xd8\xd1\xd9", n=2, eax=3, ebx=3, ecx=0x80000002,
               eflags=BASE_FLAGS | CF)
    assert cpu.r[ECX] == 0x40000001 and not cpu.eflags & CF


def test_sub_of_equal_values_then_adc_adds_no_carry():
    # sub %ebx,%eax ; adc %edx,%ecx
    cpu = step(b"\x29\xd8\x11\xd1", n=2, eax=0xFFFFFFFF, ebx=0xFFFFFFFF, ecx=1, edx=1)
    assert cpu.r[EAX] == 0 and cpu.r[ECX] == 2


def test_cmp_of_a_register_with_itself_then_cmovb_moves_nothing():
    # cmp %eax,%eax ; cmovb %edx,%ecx
    cpu = step(b"\x39\xc0\x0f\x42\xca", n=2, eax=1, ecx=2, edx=3, eflags=BASE_FLAGS | CF)
    assert cpu.r[ECX] == 2


# -- the property test ---------------------------------------------------------------------

# Setters: (bytes, operation on (a, b, cf_in) -> CF).  Operands eax = a, ebx = b.
SETTERS = {
    "cmp %ebx,%eax": (b"\x39\xd8", lambda a, b, c: a < b),
    "sub %ebx,%eax": (b"\x29\xd8", lambda a, b, c: a < b),
    "cmp %bl,%al": (b"\x38\xd8", lambda a, b, c: a & 0xFF < b & 0xFF),
    "cmp %bx,%ax": (b"\x66\x39\xd8", lambda a, b, c: a & 0xFFFF < b & 0xFFFF),
    "cmp %eax,%eax": (b"\x39\xc0", lambda a, b, c: False),
    "sub %eax,%eax": (b"\x29\xc0", lambda a, b, c: False),
    "add %ebx,%eax": (b"\x01\xd8", lambda a, b, c: a + b > M32),
    "and %ebx,%eax": (b"\x21\xd8", lambda a, b, c: False),
    "xor %ebx,%eax": (b"\x31\xd8", lambda a, b, c: False),
    "test %ebx,%eax": (b"\x85\xd8", lambda a, b, c: False),
    "neg %eax": (b"\xf7\xd8", lambda a, b, c: a != 0),
    "inc %eax": (b"\x40", lambda a, b, c: c),          # inc/dec leave CF alone
    "dec %eax": (b"\x48", lambda a, b, c: c),
    "adc %ebx,%eax": (b"\x11\xd8", lambda a, b, c: a + b + c > M32),
    "sbb %ebx,%eax": (b"\x19\xd8", lambda a, b, c: a < b + c),
}

# Consumers: (bytes, instructions, (ecx, edx, cf) -> (ecx, CF after or None, eip offset or
# None)).  Operands ecx = c, edx = d; the eip offset is from the consumer's start.
CONSUMERS = {
    "adc %edx,%ecx": (b"\x11\xd1", 1, lambda c, d, f: ((c + d + f) & M32, c + d + f > M32)),
    "sbb %edx,%ecx": (b"\x19\xd1", 1, lambda c, d, f: ((c - d - f) & M32, c < d + f)),
    "sbb %ecx,%ecx": (b"\x19\xc9", 1, lambda c, d, f: (-f & M32, bool(f))),
    "adc $0,%ecx": (b"\x83\xd1\x00", 1, lambda c, d, f: ((c + f) & M32, c + f > M32)),
    "setb %cl": (b"\x0f\x92\xc1", 1, lambda c, d, f: (c & ~0xFF | f, None)),
    "setae %cl": (b"\x0f\x93\xc1", 1, lambda c, d, f: (c & ~0xFF | (1 - f), None)),
    "cmovb %edx,%ecx": (b"\x0f\x42\xca", 1, lambda c, d, f: (d if f else c, None)),
    "cmc; adc $0,%ecx": (b"\xf5\x83\xd1\x00", 2,
                         lambda c, d, f: ((c + 1 - f) & M32, c + 1 - f > M32)),
    "rcl $1,%ecx": (b"\xd1\xd1", 1, lambda c, d, f: ((c << 1 | f) & M32, bool(c >> 31))),
    "rcr $1,%ecx": (b"\xd1\xd9", 1, lambda c, d, f: (c >> 1 | f << 31, bool(c & 1))),
}
JUMPS = {"jb": (b"\x72\x0e", True), "jae": (b"\x73\x0e", False)}

_u32 = st.one_of(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, 0x7FFFFFFF, 0x80000000, M32]),
                 st.integers(0, M32))


@st.composite
def _operands(draw):
    a = draw(_u32)
    how = draw(st.sampled_from(["equal", "equal", "below", "above", "any"]))
    b = {"equal": a, "below": (a + 1) & M32, "above": (a - 1) & M32}.get(how)
    return a, draw(_u32) if b is None else b


def _on(engine, code, n, **kw):
    saved = insn_helpers.ENGINE
    insn_helpers.ENGINE = engine
    try:
        return step(code, n=n, **kw)
    finally:
        insn_helpers.ENGINE = saved


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(setter=st.sampled_from(sorted(SETTERS)),
       consumer=st.sampled_from(sorted(CONSUMERS) + sorted(JUMPS)),
       ab=_operands(), c=_u32, d=_u32, cf_in=st.booleans())
def test_a_flag_setter_then_a_carry_consumer(insn_engine, setter, consumer, ab, c, d, cf_in):
    a, b = ab
    scode, cf_of = SETTERS[setter]
    cf = int(bool(cf_of(a, b, int(cf_in))))
    eflags = BASE_FLAGS | (CF if cf_in else 0)
    regs = dict(eax=a, ebx=b, ecx=c, edx=d)
    if consumer in JUMPS:
        ccode, on_carry = JUMPS[consumer]
        got = step(scode + ccode, n=2, eflags=eflags, **regs)
        taken = bool(cf) == on_carry
        want_eip = CODE + len(scode) + (0x10 if taken else 2)
        assert got.eip == want_eip, f"{setter}; {consumer} with CF={cf}"
        return
    ccode, k, effect = CONSUMERS[consumer]
    got = step(scode + ccode, n=1 + k, eflags=eflags, **regs)
    want_ecx, want_cf = effect(c, d, cf)
    assert got.r[ECX] == want_ecx, f"{setter}; {consumer} with CF={cf}: ecx {got.r[ECX]:#x}"
    if want_cf is not None:
        assert bool(got.eflags & CF) == want_cf, f"{setter}; {consumer}: CF after"
    else:
        assert bool(got.eflags & CF) == bool(cf), f"{setter}; {consumer}: CF kept"
    if insn_engine != "interp":
        ref = _on("interp", scode + ccode, 1 + k, eflags=eflags, **regs)
        assert (got.r, got.eflags & ARITH, got.eip) == (ref.r, ref.eflags & ARITH, ref.eip)
