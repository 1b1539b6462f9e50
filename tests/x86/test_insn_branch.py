"""Branches and conditions: jcc (rel8 and rel32), setcc, cmovcc, jmp, loop,
jecxz.

Every condition is tested taken and not taken, with the flags produced by a
preceding `cmp %ebx,%eax` (the core evaluates some conditions straight from
the operands of the last subtraction) and again with the flags given
directly in EFLAGS.  Conditions per the SDM (Vol. 1, B.1):

    o  OF=1        b  CF=1        e  ZF=1        be CF=1 or ZF=1
    s  SF=1        p  PF=1        l  SF!=OF      le ZF=1 or SF!=OF

and the odd codes (no ae ne a ns np ge g) negate them.
"""
import pytest

from .insn_helpers import (
    ARITH, BASE_FLAGS, CF, CODE, DATA, EAX, EBX, ECX, EDI, OF, PF, SF, TRAP, UNMAPPED, ZF,
    step,
)

CONDS = ("o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g")
NEG1 = 0xFFFFFFFF
INT_MIN = 0x80000000

# (condition, eax, ebx, taken after `cmp %ebx,%eax`), worked out by hand.
CMP_CASES = [
    ("o", INT_MIN, 1, True),           # -2^31 - 1 overflows
    ("o", 5, 1, False),
    ("no", 5, 1, True),
    ("no", INT_MIN, 1, False),
    ("b", 1, 2, True),                 # unsigned 1 < 2
    ("b", NEG1, 1, False),             # unsigned 0xffffffff > 1
    ("ae", 2, 2, True),
    ("ae", 1, 2, False),
    ("e", 7, 7, True),
    ("e", 7, 8, False),
    ("ne", 7, 8, True),
    ("ne", 7, 7, False),
    ("be", 7, 7, True),                # equal
    ("be", 1, NEG1, True),             # below
    ("be", 8, 7, False),
    ("a", 8, 7, True),
    ("a", 7, 7, False),
    ("a", INT_MIN, 1, True),           # unsigned, although signed less
    ("s", 1, 2, True),                 # 1 - 2 = -1
    ("s", 2, 1, False),
    ("ns", 2, 1, True),
    ("ns", 1, 2, False),
    ("p", 3, 0, True),                 # result 0x03: two bits set
    ("p", 1, 0, False),
    ("p", 0x103, 0, True),             # only the low byte counts
    ("np", 1, 0, True),
    ("np", 3, 0, False),
    ("l", NEG1, 1, True),              # signed -1 < 1
    ("l", 1, NEG1, False),
    ("l", INT_MIN, 1, True),           # SF=0, OF=1
    ("ge", 1, NEG1, True),
    ("ge", 5, 5, True),
    ("ge", NEG1, 1, False),
    ("le", 5, 5, True),
    ("le", INT_MIN, 0x7FFFFFFF, True),  # -2^31 <= 2^31-1 (the subtraction overflows)
    ("le", 1, NEG1, False),
    ("g", 1, NEG1, True),
    ("g", 5, 5, False),
    ("g", 0x7FFFFFFF, INT_MIN, True),  # overflows the other way
]

# (condition, eflags arithmetic bits, taken)
FLAG_CASES = [
    ("o", OF, True), ("o", ARITH & ~OF, False),
    ("no", ARITH & ~OF, True), ("no", OF, False),
    ("b", CF, True), ("b", ARITH & ~CF, False),
    ("ae", ARITH & ~CF, True), ("ae", CF, False),
    ("e", ZF, True), ("e", ARITH & ~ZF, False),
    ("ne", ARITH & ~ZF, True), ("ne", ZF, False),
    ("be", CF, True), ("be", ZF, True), ("be", ARITH & ~(CF | ZF), False),
    ("a", ARITH & ~(CF | ZF), True), ("a", ZF, False), ("a", CF, False),
    ("s", SF, True), ("s", ARITH & ~SF, False),
    ("ns", ARITH & ~SF, True), ("ns", SF, False),
    ("p", PF, True), ("p", ARITH & ~PF, False),
    ("np", ARITH & ~PF, True), ("np", PF, False),
    ("l", SF, True), ("l", OF, True), ("l", SF | OF, False), ("l", 0, False),
    ("ge", SF | OF, True), ("ge", 0, True), ("ge", SF, False), ("ge", OF, False),
    ("le", ZF | SF | OF, True), ("le", SF, True), ("le", SF | OF, False), ("le", 0, False),
    ("g", SF | OF, True), ("g", 0, True), ("g", ZF, False), ("g", OF, False),
]


def _id(case):
    cc, a, b, taken = case
    return f"{cc}-{a:#x}-vs-{b:#x}-{'taken' if taken else 'not-taken'}"


def _fid(case):
    cc, f, taken = case
    return f"{cc}-flags{f:#x}-{'taken' if taken else 'not-taken'}"


CMP = b"\x39\xd8"                      # cmp %ebx,%eax


@pytest.mark.parametrize("cc,eax,ebx,taken", CMP_CASES, ids=map(_id, CMP_CASES))
def test_jcc_rel8_after_cmp(cc, eax, ebx, taken):
    # cmp %ebx,%eax ; j<cc> .+0x12
    cpu = step(CMP + bytes([0x70 + CONDS.index(cc), 0x10]), eax=eax, ebx=ebx, n=2)
    assert cpu.eip == (CODE + 0x14 if taken else CODE + 4)


@pytest.mark.parametrize("cc,eax,ebx,taken", CMP_CASES, ids=map(_id, CMP_CASES))
def test_jcc_rel32_after_cmp(cc, eax, ebx, taken):
    # cmp %ebx,%eax ; j<cc> .+0x106
    code = CMP + bytes([0x0F, 0x80 + CONDS.index(cc)]) + (0x100).to_bytes(4, "little")
    cpu = step(code, eax=eax, ebx=ebx, n=2)
    assert cpu.eip == (CODE + 0x108 if taken else CODE + 8)


@pytest.mark.parametrize("cc,eax,ebx,taken", CMP_CASES, ids=map(_id, CMP_CASES))
def test_setcc_after_cmp(cc, eax, ebx, taken):
    # cmp %ebx,%eax ; set<cc> %cl
    cpu = step(CMP + bytes([0x0F, 0x90 + CONDS.index(cc), 0xC1]), eax=eax, ebx=ebx,
               ecx=0xAAAAAAAA, n=2)
    assert cpu.r[ECX] == (0xAAAAAA01 if taken else 0xAAAAAA00)


@pytest.mark.parametrize("cc,eax,ebx,taken", CMP_CASES, ids=map(_id, CMP_CASES))
def test_cmovcc_after_cmp(cc, eax, ebx, taken):
    # cmp %ebx,%eax ; cmov<cc> %esi,%edi
    cpu = step(CMP + bytes([0x0F, 0x40 + CONDS.index(cc), 0xFE]), eax=eax, ebx=ebx,
               esi=0x2222, edi=0x1111, n=2)
    assert cpu.r[EDI] == (0x2222 if taken else 0x1111)


@pytest.mark.parametrize("cc,flags,taken", FLAG_CASES, ids=map(_fid, FLAG_CASES))
def test_jcc_from_eflags(cc, flags, taken):
    # j<cc> .+0x12
    cpu = step(bytes([0x70 + CONDS.index(cc), 0x10]), eflags=BASE_FLAGS | flags)
    assert cpu.eip == (CODE + 0x12 if taken else CODE + 2)


@pytest.mark.parametrize("cc,flags,taken", FLAG_CASES, ids=map(_fid, FLAG_CASES))
def test_setcc_from_eflags(cc, flags, taken):
    # set<cc> %al
    cpu = step(bytes([0x0F, 0x90 + CONDS.index(cc), 0xC0]), eax=0x55, eflags=BASE_FLAGS | flags)
    assert cpu.r[EAX] == (1 if taken else 0)


# -- conditions after other flag-setting operations ------------------------------------

def test_jle_after_test_of_zero_is_taken():
    # test %eax,%eax ; jle .+0x12
    cpu = step(b"\x85\xc0\x7e\x10", eax=0, n=2)
    assert cpu.eip == CODE + 0x14


def test_jle_after_test_of_negative_is_taken():
    # test %eax,%eax ; jle .+0x12
    cpu = step(b"\x85\xc0\x7e\x10", eax=INT_MIN, n=2)
    assert cpu.eip == CODE + 0x14


def test_jle_after_test_of_positive_is_not_taken():
    # test %eax,%eax ; jle .+0x12
    cpu = step(b"\x85\xc0\x7e\x10", eax=1, n=2)
    assert cpu.eip == CODE + 4


def test_jo_after_add_overflow():
    # add %ebx,%eax ; jo .+0x12
    cpu = step(b"\x01\xd8\x70\x10", eax=0x7FFFFFFF, ebx=1, n=2)
    assert cpu.eip == CODE + 0x14


def test_jb_after_inc_sees_the_carry_from_before():
    # inc %eax ; jb .+0x12       (inc leaves CF alone)
    cpu = step(b"\x40\x72\x10", eax=5, eflags=BASE_FLAGS | CF, n=2)
    assert cpu.eip == CODE + 0x13


def test_jb_after_sbb_with_equal_operands_and_borrow():
    # sbb %ebx,%eax ; jb .+0x12
    cpu = step(b"\x19\xd8\x72\x10", eax=5, ebx=5, eflags=BASE_FLAGS | CF, n=2)
    assert cpu.r[EAX] == NEG1
    assert cpu.eip == CODE + 0x14


def test_jae_after_adc_carry_out_is_not_taken():
    # adc %ebx,%eax ; jae .+0x12
    cpu = step(b"\x11\xd8\x73\x10", eax=NEG1, ebx=0, eflags=BASE_FLAGS | CF, n=2)
    assert cpu.eip == CODE + 4


def test_js_after_dec_to_minus_one():
    # dec %eax ; js .+0x12
    cpu = step(b"\x48\x78\x10", eax=0, n=2)
    assert cpu.eip == CODE + 0x13


def test_jl_after_byte_compare_uses_the_byte_sign():
    # cmp $0x1,%al ; jl .+0x12
    cpu = step(b"\x3c\x01\x7c\x10", eax=0x80, n=2)
    assert cpu.eip == CODE + 0x14


def test_ja_after_byte_compare_is_unsigned():
    # cmp $0x1,%al ; ja .+0x12
    cpu = step(b"\x3c\x01\x77\x10", eax=0x80, n=2)
    assert cpu.eip == CODE + 0x14


def test_jg_after_word_compare():
    # cmp %bx,%ax ; jg .+0x12
    cpu = step(b"\x66\x39\xd8\x7f\x10", eax=0x00000001, ebx=0x0000FFFF, n=2)
    assert cpu.eip == CODE + 0x15


def test_jb_after_neg_of_nonzero():
    # neg %eax ; jb .+0x12
    cpu = step(b"\xf7\xd8\x72\x10", eax=1, n=2)
    assert cpu.eip == CODE + 0x14


def test_jcc_does_not_change_flags():
    # je .+0x12
    cpu = step(b"\x74\x10", eflags=BASE_FLAGS | ZF | CF)
    assert cpu.eflags & ARITH == ZF | CF


def test_jcc_rel8_backwards():
    # jne .-0x10
    cpu = step(b"\x75\xee", eip=CODE + 0x100)
    assert cpu.eip == CODE + 0xF0


# -- setcc, cmovcc forms ------------------------------------------------------------------

def test_sete_to_memory():
    # sete (%ebx)
    cpu = step(b"\x0f\x94\x03", ebx=DATA, eflags=BASE_FLAGS | ZF, mem={DATA: b"\x77\x77"})
    assert cpu.read(DATA, 2) == b"\x01\x77"


def test_setne_to_ah():
    # setne %ah
    cpu = step(b"\x0f\x95\xc4", eax=0x12345678)
    assert cpu.r[EAX] == 0x12340178


def test_cmove_false_leaves_the_destination():
    # cmove %ebx,%eax
    cpu = step(b"\x0f\x44\xc3", eax=0x11111111, ebx=0x22222222)
    assert cpu.r[EAX] == 0x11111111


def test_cmove_from_memory():
    # cmove (%ebx),%eax
    cpu = step(b"\x0f\x44\x03", ebx=DATA, eflags=BASE_FLAGS | ZF, mem={DATA: b"\x09\x00\x00\x00"})
    assert cpu.r[EAX] == 9


def test_cmov_false_with_unmapped_source_still_faults():
    # cmove (%ebx),%eax    (the SDM reads the source whatever the condition)
    cpu = step(b"\x0f\x44\x03", ebx=UNMAPPED, eax=3)
    assert cpu.stop.reason == TRAP
    assert (cpu.stop.trapno, cpu.stop.err, cpu.stop.va) == (14, 4, UNMAPPED)
    assert cpu.r[EAX] == 3


def test_cmov_word_keeps_upper_half():
    # cmove %bx,%ax
    cpu = step(b"\x66\x0f\x44\xc3", eax=0x11112222, ebx=0x33334444, eflags=BASE_FLAGS | ZF)
    assert cpu.r[EAX] == 0x11114444


def test_cmov_does_not_change_flags():
    # cmovne %ebx,%eax
    cpu = step(b"\x0f\x45\xc3", ebx=1, eflags=BASE_FLAGS | CF | SF)
    assert cpu.r[EAX] == 1
    assert cpu.eflags & ARITH == CF | SF


# -- jmp ------------------------------------------------------------------------------------

def test_jmp_rel8_to_itself():
    # jmp .
    cpu = step(b"\xeb\xfe")
    assert cpu.eip == CODE


def test_jmp_rel32_forward():
    # jmp .+0x1005
    cpu = step(b"\xe9\x00\x10\x00\x00")
    assert cpu.eip == CODE + 0x1005


def test_jmp_indirect_register():
    # jmp *%eax
    cpu = step(b"\xff\xe0", eax=CODE + 0x40)
    assert cpu.eip == CODE + 0x40
    assert cpu.r[EAX] == CODE + 0x40


def test_jmp_indirect_memory():
    # jmp *(%ebx)
    cpu = step(b"\xff\x23", ebx=DATA, mem={DATA: (CODE + 0x30).to_bytes(4, "little")})
    assert cpu.eip == CODE + 0x30


def test_jmp_through_a_switch_table():
    # jmp *0x900000(,%eax,4)
    table = b"".join((CODE + 0x10 * k).to_bytes(4, "little") for k in range(4))
    cpu = step(b"\xff\x24\x85\x00\x00\x90\x00", eax=2, mem={DATA: table})
    assert cpu.eip == CODE + 0x20


def test_jmp_rel8_with_operand_size_prefix_truncates_eip():
    # data16 jmp .+3       (a 16-bit operand size keeps only the low 16 bits)
    cpu = step(b"\x66\xeb\x00")
    assert cpu.eip == 0x0003


def test_jmp_does_not_push():
    # jmp .+0x1005
    cpu = step(b"\xe9\x00\x10\x00\x00")
    assert cpu.r[4] == step(b"\x90").r[4]


# -- loop, jecxz ---------------------------------------------------------------------------

def test_loop_decrements_ecx_and_branches_while_nonzero():
    # loop .
    cpu = step(b"\xe2\xfe", ecx=3)
    assert cpu.r[ECX] == 2
    assert cpu.eip == CODE


def test_loop_falls_through_when_ecx_reaches_zero():
    # loop .
    cpu = step(b"\xe2\xfe", ecx=1)
    assert cpu.r[ECX] == 0
    assert cpu.eip == CODE + 2


def test_loop_with_ecx_zero_wraps_and_branches():
    # loop .
    cpu = step(b"\xe2\xfe", ecx=0)
    assert cpu.r[ECX] == 0xFFFFFFFF
    assert cpu.eip == CODE


def test_loop_does_not_change_flags():
    # loop .
    cpu = step(b"\xe2\xfe", ecx=1, eflags=BASE_FLAGS | SF)
    assert cpu.eflags & ARITH == SF


def test_loop_runs_a_counted_loop():
    # inc %eax ; loop .-1
    cpu = step(b"\x40\xe2\xfd", ecx=5, n=10)
    assert cpu.r[EAX] == 5
    assert cpu.r[ECX] == 0
    assert cpu.eip == CODE + 3


def test_loope_branches_while_zf_set():
    # loope .
    cpu = step(b"\xe1\xfe", ecx=2, eflags=BASE_FLAGS | ZF)
    assert (cpu.r[ECX], cpu.eip) == (1, CODE)


def test_loope_falls_through_when_zf_clear():
    # loope .
    cpu = step(b"\xe1\xfe", ecx=2)
    assert (cpu.r[ECX], cpu.eip) == (1, CODE + 2)


def test_loopne_branches_while_zf_clear():
    # loopne .
    cpu = step(b"\xe0\xfe", ecx=2)
    assert (cpu.r[ECX], cpu.eip) == (1, CODE)


def test_loopne_falls_through_when_zf_set():
    # loopne .
    cpu = step(b"\xe0\xfe", ecx=2, eflags=BASE_FLAGS | ZF)
    assert (cpu.r[ECX], cpu.eip) == (1, CODE + 2)


def test_jecxz_taken_when_ecx_is_zero():
    # jecxz .+0x12
    cpu = step(b"\xe3\x10", ecx=0)
    assert cpu.eip == CODE + 0x12


def test_jecxz_not_taken_otherwise_and_ecx_unchanged():
    # jecxz .+0x12
    cpu = step(b"\xe3\x10", ecx=0x10000)
    assert cpu.eip == CODE + 2
    assert cpu.r[ECX] == 0x10000


def test_branches_leave_ebx():
    # jmp .
    cpu = step(b"\xeb\xfe", ebx=9)
    assert cpu.r[EBX] == 9
