"""Shifts and rotates: shl/sal, shr, sar, rol, ror, rcl, rcr, shld, shrd.

Expected values from the Intel SDM.  The count is masked to 5 bits; a
masked count of 0 changes nothing, flags included.  Where the SDM leaves a
flag undefined (OF for counts other than 1, AF for any shift, CF for shl/shr
counts at or above the operand width) the tests check flags.py's choices.
"""
from .insn_helpers import (
    AF, ARITH, BASE_FLAGS, CF, DATA, EAX, EBX, OF, PF, SF, ZF, step,
)

NO_AF = ARITH & ~AF          # AF is undefined after any shift; masked where not checked


def arith(cpu):
    return cpu.eflags & ARITH


# -- shl / sal ------------------------------------------------------------------------

def test_shl_by_one_moves_msb_into_carry():
    # shl %eax
    cpu = step(b"\xd1\xe0", eax=0xC0000001)
    assert cpu.r[EAX] == 0x80000002
    assert cpu.eflags & NO_AF == CF | SF


def test_shl_by_one_sets_overflow_when_the_sign_changes():
    # shl %eax
    cpu = step(b"\xd1\xe0", eax=0x40000000)
    assert cpu.r[EAX] == 0x80000000
    assert cpu.eflags & NO_AF == OF | SF | PF


def test_shl_by_imm_carries_the_last_bit_out_and_clears_af():
    # shl $0x4,%eax        (OF: MSB(result) XOR CF; AF: 0 -- both undefined in the SDM)
    cpu = step(b"\xc1\xe0\x04", eax=0x12345678, eflags=BASE_FLAGS | AF)
    assert cpu.r[EAX] == 0x23456780
    assert arith(cpu) == CF | OF


def test_shl_by_cl_zero_leaves_flags():
    # shl %cl,%eax
    cpu = step(b"\xd3\xe0", eax=0x12345678, ecx=0, eflags=BASE_FLAGS | ARITH)
    assert cpu.r[EAX] == 0x12345678
    assert arith(cpu) == ARITH


def test_shl_by_cl_masks_the_count_to_five_bits():
    # shl %cl,%eax         (33 & 31 = 1)
    cpu = step(b"\xd3\xe0", eax=1, ecx=33)
    assert cpu.r[EAX] == 2
    assert cpu.eflags & NO_AF == 0


def test_shl_by_imm_32_is_a_no_op():
    # shl $0x20,%eax       (32 & 31 = 0)
    cpu = step(b"\xc1\xe0\x20", eax=0x12345678, eflags=BASE_FLAGS | CF | ZF)
    assert cpu.r[EAX] == 0x12345678
    assert arith(cpu) == CF | ZF


def test_sal_is_shl():
    # shl %eax             (d1 /6, the sal encoding)
    cpu = step(b"\xd1\xf0", eax=0x81)
    assert cpu.r[EAX] == 0x102


def test_shl_byte_by_cl_8_shifts_everything_out():
    # shl %cl,%al          (CF: the last bit out, bit 0; OF: MSB XOR CF)
    cpu = step(b"\xd2\xe0", eax=0x11223301, ecx=8)
    assert cpu.r[EAX] == 0x11223300
    assert arith(cpu) == CF | ZF | PF | OF


def test_shl_byte_by_cl_9_gives_zero_and_no_carry():
    # shl %cl,%al          (CF for counts past the width: bit of the zero-extended value)
    cpu = step(b"\xd2\xe0", eax=0xFF, ecx=9)
    assert cpu.r[EAX] == 0
    assert arith(cpu) == ZF | PF


def test_shl_word_by_imm_keeps_upper_half():
    # shl $0x4,%ax
    cpu = step(b"\x66\xc1\xe0\x04", eax=0xAAAA1234)
    assert cpu.r[EAX] == 0xAAAA2340
    assert arith(cpu) == CF | OF


def test_shl_word_by_cl_16_carries_out_bit_0():
    # shl %cl,%ax
    cpu = step(b"\x66\xd3\xe0", eax=0x55550001, ecx=16)
    assert cpu.r[EAX] == 0x55550000
    assert arith(cpu) == CF | ZF | PF | OF


def test_shll_memory_by_one():
    # shll (%eax)
    cpu = step(b"\xd1\x20", eax=DATA, mem={DATA: b"\x00\x00\x00\x80"})
    assert cpu.rd32(DATA) == 0
    assert cpu.eflags & NO_AF == CF | ZF | PF | OF


def test_shlb_memory_by_cl():
    # shlb %cl,(%eax)
    cpu = step(b"\xd2\x20", eax=DATA, ecx=3, mem={DATA: b"\x21\x99"})
    assert cpu.read(DATA, 2) == b"\x08\x99"
    assert arith(cpu) == CF | OF


# -- shr ------------------------------------------------------------------------------

def test_shr_by_one_sets_overflow_to_the_old_msb():
    # shr %eax
    cpu = step(b"\xd1\xe8", eax=0x80000001)
    assert cpu.r[EAX] == 0x40000000
    assert cpu.eflags & NO_AF == CF | OF | PF


def test_shr_by_imm_clears_overflow():
    # shr $0x4,%eax        (OF: MSB of the value before the last step, 0)
    cpu = step(b"\xc1\xe8\x04", eax=0x8000000F, eflags=BASE_FLAGS | OF | AF)
    assert cpu.r[EAX] == 0x08000000
    assert arith(cpu) == CF | PF


def test_shr_by_31_leaves_the_msb_in_bit_0():
    # shr $0x1f,%eax
    cpu = step(b"\xc1\xe8\x1f", eax=0xC0000000)
    assert cpu.r[EAX] == 1
    assert arith(cpu) == CF


def test_shr_byte_by_cl_8_carries_out_bit_7():
    # shr %cl,%al
    cpu = step(b"\xd2\xe8", eax=0x80, ecx=8)
    assert cpu.r[EAX] == 0
    assert arith(cpu) == CF | ZF | PF


def test_shr_by_cl_zero_leaves_flags():
    # shr %cl,%eax
    cpu = step(b"\xd3\xe8", eax=0x10, ecx=0x20, eflags=BASE_FLAGS | SF | OF)
    assert cpu.r[EAX] == 0x10
    assert arith(cpu) == SF | OF


# -- sar ------------------------------------------------------------------------------

def test_sar_by_one_keeps_the_sign_and_clears_overflow():
    # sar %eax
    cpu = step(b"\xd1\xf8", eax=0x80000001, eflags=BASE_FLAGS | OF)
    assert cpu.r[EAX] == 0xC0000000
    assert cpu.eflags & NO_AF == CF | SF | PF


def test_sar_by_31_spreads_the_sign():
    # sar $0x1f,%eax
    cpu = step(b"\xc1\xf8\x1f", eax=0x80000000)
    assert cpu.r[EAX] == 0xFFFFFFFF
    assert arith(cpu) == SF | PF


def test_sar_positive_value_by_cl():
    # sar %cl,%eax
    cpu = step(b"\xd3\xf8", eax=0x7FFFFFFF, ecx=30)
    assert cpu.r[EAX] == 1
    assert arith(cpu) == CF


def test_sar_byte_by_3_keeps_upper_bits():
    # sar $0x3,%al
    cpu = step(b"\xc0\xf8\x03", eax=0x11223380)
    assert cpu.r[EAX] == 0x112233F0
    assert arith(cpu) == SF | PF


def test_sar_byte_by_cl_10_fills_with_the_sign():
    # sar %cl,%al
    cpu = step(b"\xd2\xf8", eax=0x80, ecx=10)
    assert cpu.r[EAX] == 0xFF
    assert arith(cpu) == CF | SF | PF


def test_sarl_memory_by_imm():
    # sarl $0x8,(%eax)
    cpu = step(b"\xc1\x38\x08", eax=DATA, mem={DATA: b"\x00\x00\x00\xf0"})
    assert cpu.rd32(DATA) == 0xFFF00000


# -- rol / ror -------------------------------------------------------------------------

def test_rol_by_one_changes_only_cf_and_of():
    # rol %eax
    cpu = step(b"\xd1\xc0", eax=0x80000001, eflags=BASE_FLAGS | ZF | SF)
    assert cpu.r[EAX] == 0x00000003
    assert arith(cpu) == CF | OF | ZF | SF


def test_rol_by_imm_8():
    # rol $0x8,%eax
    cpu = step(b"\xc1\xc0\x08", eax=0x12345678, eflags=BASE_FLAGS | CF | OF)
    assert cpu.r[EAX] == 0x34567812
    assert arith(cpu) == 0


def test_rol_by_cl_zero_leaves_flags():
    # rol %cl,%eax
    cpu = step(b"\xd3\xc0", eax=0x80000000, ecx=0, eflags=BASE_FLAGS | OF)
    assert cpu.r[EAX] == 0x80000000
    assert arith(cpu) == OF


def test_rol_byte_by_8_sets_cf_from_lsb_and_keeps_value():
    # rol %cl,%al          (OF: MSB(result) XOR CF)
    cpu = step(b"\xd2\xc0", eax=0x01, ecx=8)
    assert cpu.r[EAX] == 0x01
    assert arith(cpu) == CF | OF


def test_rol_word_by_4():
    # rol $0x4,%ax
    cpu = step(b"\x66\xc1\xc0\x04", eax=0xFFFF1234)
    assert cpu.r[EAX] == 0xFFFF2341
    assert arith(cpu) & CF


def test_ror_by_one_sets_cf_from_the_new_msb():
    # ror %eax
    cpu = step(b"\xd1\xc8", eax=0x00000001)
    assert cpu.r[EAX] == 0x80000000
    assert arith(cpu) == CF | OF


def test_ror_by_imm_4():
    # ror $0x4,%eax        (OF: bit 31 XOR bit 30 of the result)
    cpu = step(b"\xc1\xc8\x04", eax=0x12345678)
    assert cpu.r[EAX] == 0x81234567
    assert arith(cpu) == CF | OF


def test_ror_word_by_one_keeps_upper_half():
    # ror %ax
    cpu = step(b"\x66\xd1\xc8", eax=0xFFFF0002, eflags=BASE_FLAGS | CF)
    assert cpu.r[EAX] == 0xFFFF0001
    assert arith(cpu) == 0


def test_roll_memory_by_one():
    # roll (%eax)
    cpu = step(b"\xd1\x00", eax=DATA, mem={DATA: b"\x00\x00\x00\x80"})
    assert cpu.rd32(DATA) == 1
    assert arith(cpu) == CF | OF


# -- rcl / rcr ---------------------------------------------------------------------------

def test_rcl_by_one_shifts_the_carry_in():
    # rcl %eax
    cpu = step(b"\xd1\xd0", eax=0x80000000, eflags=BASE_FLAGS | CF)
    assert cpu.r[EAX] == 0x00000001
    assert arith(cpu) == CF | OF


def test_rcl_by_9_on_byte_is_identity():
    # rcl %cl,%al          (9 mod 9 = 0: value and CF unchanged)
    cpu = step(b"\xd2\xd0", eax=0x81, ecx=9)
    assert cpu.r[EAX] == 0x81
    assert cpu.eflags & CF == 0


def test_rcl_byte_by_2_rotates_through_carry():
    # rcl $0x2,%al         (OF: MSB(result) XOR CF)
    cpu = step(b"\xc0\xd0\x02", eax=0x40)
    assert cpu.r[EAX] == 0x00
    assert arith(cpu) == CF | OF


def test_rcl_by_cl_zero_leaves_flags():
    # rcl %cl,%eax
    cpu = step(b"\xd3\xd0", eax=0x80000000, ecx=0, eflags=BASE_FLAGS | CF | ZF)
    assert cpu.r[EAX] == 0x80000000
    assert arith(cpu) == CF | ZF


def test_rcr_by_one_shifts_the_carry_into_the_msb():
    # rcr %eax
    cpu = step(b"\xd1\xd8", eax=0x00000001, eflags=BASE_FLAGS | CF)
    assert cpu.r[EAX] == 0x80000000
    assert arith(cpu) == CF | OF


def test_rcr_word_by_17_is_identity():
    # rcr %cl,%ax          (17 mod 17 = 0)
    cpu = step(b"\x66\xd3\xd8", eax=0x12348001, ecx=17, eflags=BASE_FLAGS | CF)
    assert cpu.r[EAX] == 0x12348001
    assert cpu.eflags & CF


def test_rcr_by_2_rotates_the_carry_through_the_top():
    # rcr $0x2,%eax
    cpu = step(b"\xc1\xd8\x02", eax=0x00000003, eflags=BASE_FLAGS | CF)
    assert cpu.r[EAX] == 0xC0000000
    assert cpu.eflags & CF


# -- shld / shrd -----------------------------------------------------------------------

def test_shld_imm_shifts_in_the_source_bits():
    # shld $0x4,%ebx,%eax
    cpu = step(b"\x0f\xa4\xd8\x04", eax=0x12345678, ebx=0x9ABCDEF0)
    assert cpu.r[EAX] == 0x23456789
    assert cpu.r[EBX] == 0x9ABCDEF0
    assert arith(cpu) == CF


def test_shld_by_one_sets_overflow_when_the_sign_changes():
    # shld $0x1,%ebx,%eax
    cpu = step(b"\x0f\xa4\xd8\x01", eax=0x40000000, ebx=0x80000000)
    assert cpu.r[EAX] == 0x80000001
    assert cpu.eflags & NO_AF == OF | SF


def test_shld_count_zero_leaves_everything():
    # shld $0x0,%ebx,%eax
    cpu = step(b"\x0f\xa4\xd8\x00", eax=0x12345678, ebx=0xFFFFFFFF,
               eflags=BASE_FLAGS | CF | PF)
    assert cpu.r[EAX] == 0x12345678
    assert arith(cpu) == CF | PF


def test_shrd_by_cl_shifts_in_the_source_from_the_top():
    # shrd %cl,%ebx,%eax   (OF: the sign changed)
    cpu = step(b"\x0f\xad\xd8", eax=0x12345678, ebx=0x9ABCDEF0, ecx=8)
    assert cpu.r[EAX] == 0xF0123456
    assert arith(cpu) == SF | PF | OF


def test_shrd_imm_into_memory():
    # shrd $0x4,%eax,(%ebx)
    cpu = step(b"\x0f\xac\x03\x04", eax=0xF, ebx=DATA, mem={DATA: b"\x78\x56\x34\x12"})
    assert cpu.rd32(DATA) == 0xF1234567
    assert cpu.eflags & CF


def test_shld_word_by_4():
    # shld $0x4,%bx,%ax
    cpu = step(b"\x66\x0f\xa4\xd8\x04", eax=0xAAAA1234, ebx=0x5678)
    assert cpu.r[EAX] == 0xAAAA2345
    assert arith(cpu) & CF == 1


def test_shld_word_count_above_16_shifts_dest_src_dest():
    # shld $0x14,%bx,%ax   (flags.py: the 48-bit concatenation ax:bx:ax)
    cpu = step(b"\x66\x0f\xa4\xd8\x14", eax=0x1234, ebx=0x5678)
    assert cpu.r[EAX] == 0x6781


def test_shrd_word_count_above_16_shifts_dest_src_dest():
    # shrd $0x14,%bx,%ax   (flags.py: the 48-bit concatenation ax:bx:ax)
    cpu = step(b"\x66\x0f\xac\xd8\x14", eax=0x1234, ebx=0x5678)
    assert cpu.r[EAX] == 0x4567


# -- more 8- and 16-bit forms ---------------------------------------------------------------

def test_shl_byte_by_one_sets_overflow():
    # shl %al
    cpu = step(b"\xd0\xe0", eax=0x40)
    assert cpu.r[EAX] == 0x80
    assert cpu.eflags & NO_AF == OF | SF


def test_shr_word_by_cl_16_carries_out_bit_15():
    # shr %cl,%ax
    cpu = step(b"\x66\xd3\xe8", eax=0x77778001, ecx=16)
    assert cpu.r[EAX] == 0x77770000
    assert arith(cpu) & (CF | ZF | PF) == CF | ZF | PF


def test_sar_word_by_cl_20_fills_with_the_sign():
    # sar %cl,%ax
    cpu = step(b"\x66\xd3\xf8", eax=0x55558000, ecx=20)
    assert cpu.r[EAX] == 0x5555FFFF
    assert arith(cpu) & CF


def test_rcr_byte_by_10_rotates_by_one():
    # rcr $0xa,%al         (10 mod 9 = 1)
    cpu = step(b"\xc0\xd8\x0a", eax=0x02, eflags=BASE_FLAGS | CF)
    assert cpu.r[EAX] == 0x81
    assert not cpu.eflags & CF


def test_rol_word_by_16_sets_cf_from_lsb():
    # rol %cl,%ax
    cpu = step(b"\x66\xd3\xc0", eax=0x8001, ecx=16)
    assert cpu.r[EAX] == 0x8001
    assert cpu.eflags & CF
