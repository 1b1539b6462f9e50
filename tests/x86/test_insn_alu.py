"""Integer arithmetic and logic, moves, exchanges and sign extension.

One instruction per test, its assembly written above the bytes.  Expected
results are worked out by hand from the Intel SDM (Vol. 2); where the SDM
leaves a flag undefined the test checks the choice flags.py documents.
"""
from .insn_helpers import (
    AF, ARITH, BASE_FLAGS, CF, DATA, EAX, EBX, ECX, EDX, ESI, OF, PF, SF, UNMAPPED,
    ZF, step,
)


def arith(cpu):
    return cpu.eflags & ARITH


# -- add ------------------------------------------------------------------------------

def test_add_eax_ebx_sets_carry_on_unsigned_overflow():
    # add %ebx,%eax
    cpu = step(b"\x01\xd8", eax=0xFFFFFFFF, ebx=1)
    assert cpu.r[EAX] == 0
    assert arith(cpu) == CF | ZF | PF | AF


def test_add_sets_overflow_on_signed_overflow():
    # add %ebx,%eax
    cpu = step(b"\x01\xd8", eax=0x7FFFFFFF, ebx=1)
    assert cpu.r[EAX] == 0x80000000
    assert arith(cpu) == OF | SF | PF | AF


def test_add_parity_counts_only_the_low_byte():
    # add %ebx,%eax        0x100 + 3 = 0x103: three bits set, two in the low byte
    cpu = step(b"\x01\xd8", eax=0x100, ebx=3)
    assert cpu.r[EAX] == 0x103
    assert arith(cpu) == PF


def test_add_recomputes_every_arithmetic_flag():
    # add %ebx,%eax
    cpu = step(b"\x01\xd8", eax=0x100, ebx=0x200, eflags=BASE_FLAGS | ARITH)
    assert cpu.r[EAX] == 0x300
    assert arith(cpu) == PF


def test_add_al_bl_wraps_and_keeps_upper_bits():
    # add %bl,%al
    cpu = step(b"\x00\xd8", eax=0x123456FF, ebx=0x01)
    assert cpu.r[EAX] == 0x12345600
    assert arith(cpu) == CF | ZF | PF | AF


def test_add_byte_sets_overflow_at_0x7f_plus_1():
    # add %bl,%al
    cpu = step(b"\x00\xd8", eax=0x7F, ebx=0x01)
    assert cpu.r[EAX] == 0x80
    assert arith(cpu) == OF | SF | AF


def test_add_ah_to_bh_uses_the_high_bytes():
    # add %ah,%bh
    cpu = step(b"\x00\xe7", eax=0x2000, ebx=0x1000)
    assert cpu.r[EBX] == 0x3000
    assert cpu.r[EAX] == 0x2000
    assert arith(cpu) == PF


def test_add_word_carries_out_of_bit_15_and_keeps_upper_half():
    # add %bx,%ax
    cpu = step(b"\x66\x01\xd8", eax=0xAAAAFFFF, ebx=0x00000001)
    assert cpu.r[EAX] == 0xAAAA0000
    assert arith(cpu) == CF | ZF | PF | AF


def test_add_sign_extended_imm8_minus_one():
    # add $0xffffffff,%eax
    cpu = step(b"\x83\xc0\xff", eax=5)
    assert cpu.r[EAX] == 4
    assert arith(cpu) == CF | AF


def test_add_imm32_to_eax_short_form():
    # add $0x12345678,%eax
    cpu = step(b"\x05\x78\x56\x34\x12", eax=0x11111111)
    assert cpu.r[EAX] == 0x23456789


def test_add_register_to_memory():
    # add %eax,(%ebx)
    cpu = step(b"\x01\x03", eax=0x20, ebx=DATA, mem={DATA: (0x10).to_bytes(4, "little")})
    assert cpu.rd32(DATA) == 0x30
    assert cpu.r[EAX] == 0x20


def test_add_memory_to_register():
    # add (%ebx),%eax
    cpu = step(b"\x03\x03", eax=0x20, ebx=DATA, mem={DATA: (0x10).to_bytes(4, "little")})
    assert cpu.r[EAX] == 0x30


def test_lock_add_to_memory():
    # lock add %eax,(%ebx)
    cpu = step(b"\xf0\x01\x03", eax=1, ebx=DATA, mem={DATA: b"\xff\xff\xff\xff"})
    assert cpu.rd32(DATA) == 0
    assert arith(cpu) == CF | ZF | PF | AF


# -- adc ------------------------------------------------------------------------------

def test_adc_adds_the_carry_in():
    # adc %ebx,%eax
    cpu = step(b"\x11\xd8", eax=1, ebx=2, eflags=BASE_FLAGS | CF)
    assert cpu.r[EAX] == 4
    assert arith(cpu) == 0


def test_adc_carry_in_makes_carry_out():
    # adc %ebx,%eax
    cpu = step(b"\x11\xd8", eax=0xFFFFFFFF, ebx=0, eflags=BASE_FLAGS | CF)
    assert cpu.r[EAX] == 0
    assert arith(cpu) == CF | ZF | PF | AF


def test_adc_without_carry_is_add():
    # adc %ebx,%eax
    cpu = step(b"\x11\xd8", eax=0xFFFFFFFF, ebx=0)
    assert cpu.r[EAX] == 0xFFFFFFFF
    assert arith(cpu) == SF | PF


def test_adc_carry_in_sets_overflow():
    # adc %ebx,%eax
    cpu = step(b"\x11\xd8", eax=0x7FFFFFFF, ebx=0, eflags=BASE_FLAGS | CF)
    assert cpu.r[EAX] == 0x80000000
    assert arith(cpu) == OF | SF | AF | PF


def test_adc_byte_with_carry_wraps_to_zero():
    # adc %bl,%al
    cpu = step(b"\x10\xd8", eax=0x80, ebx=0x7F, eflags=BASE_FLAGS | CF)
    assert cpu.r[EAX] == 0
    assert arith(cpu) == CF | ZF | PF | AF


def test_adc_sign_extended_imm8_with_carry():
    # adc $0x0,%edx        (the high half of a 64-bit add)
    cpu = step(b"\x83\xd2\x00", edx=7, eflags=BASE_FLAGS | CF)
    assert cpu.r[EDX] == 8


# -- sub, sbb, cmp ----------------------------------------------------------------------

def test_sub_sets_carry_on_borrow():
    # sub %ebx,%eax
    cpu = step(b"\x29\xd8", eax=1, ebx=2)
    assert cpu.r[EAX] == 0xFFFFFFFF
    assert arith(cpu) == CF | SF | PF | AF


def test_sub_sets_overflow_on_signed_overflow():
    # sub %ebx,%eax
    cpu = step(b"\x29\xd8", eax=0x80000000, ebx=1)
    assert cpu.r[EAX] == 0x7FFFFFFF
    assert arith(cpu) == OF | PF | AF


def test_sub_equal_operands_sets_zero():
    # sub %ebx,%eax
    cpu = step(b"\x29\xd8", eax=0x1234, ebx=0x1234)
    assert cpu.r[EAX] == 0
    assert arith(cpu) == ZF | PF


def test_sub_byte_borrows_and_keeps_upper_bits():
    # sub %bl,%al
    cpu = step(b"\x28\xd8", eax=0xABCDEF00, ebx=0x01)
    assert cpu.r[EAX] == 0xABCDEFFF
    assert arith(cpu) == CF | SF | PF | AF


def test_sub_word_overflow():
    # sub %bx,%ax
    cpu = step(b"\x66\x29\xd8", eax=0x55558000, ebx=1)
    assert cpu.r[EAX] == 0x55557FFF
    assert arith(cpu) == OF | PF | AF


def test_subl_imm8_from_memory():
    # subl $0x1,(%ebx)
    cpu = step(b"\x83\x2b\x01", ebx=DATA, mem={DATA: bytes(4)})
    assert cpu.rd32(DATA) == 0xFFFFFFFF
    assert arith(cpu) == CF | SF | PF | AF


def test_sbb_subtracts_the_borrow_in():
    # sbb %ebx,%eax
    cpu = step(b"\x19\xd8", eax=5, ebx=2, eflags=BASE_FLAGS | CF)
    assert cpu.r[EAX] == 2
    assert arith(cpu) == 0


def test_sbb_eax_eax_with_carry_gives_all_ones_and_keeps_carry():
    # sbb %eax,%eax
    cpu = step(b"\x19\xc0", eax=0x1234, eflags=BASE_FLAGS | CF)
    assert cpu.r[EAX] == 0xFFFFFFFF
    assert arith(cpu) == CF | SF | PF | AF


def test_sbb_without_carry_is_sub():
    # sbb %eax,%eax
    cpu = step(b"\x19\xc0", eax=0x1234)
    assert cpu.r[EAX] == 0
    assert arith(cpu) == ZF | PF


def test_sbb_byte_borrow_in_reaching_zero_clears_carry():
    # sbb %bl,%al          0x10 - 0x0f - 1 = 0
    cpu = step(b"\x18\xd8", eax=0x10, ebx=0x0F, eflags=BASE_FLAGS | CF)
    assert cpu.r[EAX] == 0
    assert arith(cpu) == ZF | PF | AF


def test_cmp_sets_flags_without_writing():
    # cmp %ebx,%eax
    cpu = step(b"\x39\xd8", eax=3, ebx=5)
    assert cpu.r[EAX] == 3
    assert cpu.r[EBX] == 5
    assert arith(cpu) == CF | SF | AF


def test_cmpb_imm_with_memory_equal():
    # cmpb $0x2f,0x8(%ebp)
    cpu = step(b"\x80\x7d\x08\x2f", ebp=DATA, mem={DATA + 8: b"\x2f"})
    assert arith(cpu) == ZF | PF
    assert cpu.rd8(DATA + 8) == 0x2F


def test_cmp_al_imm_signed_overflow():
    # cmp $0x7f,%al        -128 - 127 overflows
    cpu = step(b"\x3c\x7f", eax=0x80)
    assert arith(cpu) == OF | AF


def test_cmpl_imm8_is_sign_extended():
    # cmp $0xffffffff,%ebx
    cpu = step(b"\x83\xfb\xff", ebx=0xFFFFFFFF)
    assert arith(cpu) == ZF | PF


# -- logic ------------------------------------------------------------------------------

def test_and_clears_carry_overflow_and_af():
    # and %ebx,%eax        (AF is undefined; the core clears it)
    cpu = step(b"\x21\xd8", eax=0xF0F0F0F0, ebx=0xFF00FF00, eflags=BASE_FLAGS | CF | OF | AF)
    assert cpu.r[EAX] == 0xF000F000
    assert arith(cpu) == SF | PF


def test_or_sets_sign():
    # or %ebx,%eax
    cpu = step(b"\x09\xd8", eax=0x80000000, ebx=1)
    assert cpu.r[EAX] == 0x80000001
    assert arith(cpu) == SF


def test_xor_eax_eax_zeroes_and_clears_carry():
    # xor %eax,%eax
    cpu = step(b"\x31\xc0", eax=0x12345678, eflags=BASE_FLAGS | CF | OF | AF | SF)
    assert cpu.r[EAX] == 0
    assert arith(cpu) == ZF | PF


def test_xor_imm8_byte():
    # xor $0xff,%al
    cpu = step(b"\x34\xff", eax=0x1234560F)
    assert cpu.r[EAX] == 0x123456F0
    assert arith(cpu) == SF | PF


def test_and_imm8_into_al_keeps_upper_bits():
    # and $0xf,%al
    cpu = step(b"\x24\x0f", eax=0x123456F3)
    assert cpu.r[EAX] == 0x12345603
    assert arith(cpu) == PF


def test_or_sign_extended_imm8_to_memory():
    # orl $0xffffff80,(%ebx)
    cpu = step(b"\x83\x0b\x80", ebx=DATA, mem={DATA: b"\x01\x00\x00\x00"})
    assert cpu.rd32(DATA) == 0xFFFFFF81
    assert arith(cpu) == SF | PF


def test_test_does_not_write_its_operands():
    # test %eax,%ebx
    cpu = step(b"\x85\xc3", eax=0x0F, ebx=0xF0)
    assert (cpu.r[EAX], cpu.r[EBX]) == (0x0F, 0xF0)
    assert arith(cpu) == ZF | PF


def test_test_word_looks_only_at_low_half():
    # test %ax,%ax
    cpu = step(b"\x66\x85\xc0", eax=0x80000000)
    assert arith(cpu) == ZF | PF


def test_testb_imm_memory():
    # testb $0x80,(%eax)
    cpu = step(b"\xf6\x00\x80", eax=DATA, mem={DATA: b"\x80"})
    assert arith(cpu) == SF


def test_testb_imm_high_byte_register():
    # test $0x1,%ah with ah = 1 (al = 0): result 1, not zero, odd parity
    cpu = step(b"\xf6\xc4\x01", eax=0x0100)
    assert arith(cpu) == 0


def test_cmpb_high_byte_register_as_source():
    # cmp %ah,%bl: bl - ah = 5 - 5
    cpu = step(b"\x38\xe3", eax=0x0500, ebx=0x05)
    assert arith(cpu) == ZF | PF


def test_cmpb_high_byte_register_as_destination():
    # cmp %al,%bh: bh - al = 3 - 3
    cpu = step(b"\x38\xc7", eax=0x03, ebx=0x0300)
    assert arith(cpu) == ZF | PF


def test_testl_imm32_with_register():
    # test $0x80000000,%edx
    cpu = step(b"\xf7\xc2\x00\x00\x00\x80", edx=0x7FFFFFFF, eflags=BASE_FLAGS | CF | OF)
    assert arith(cpu) == ZF | PF


# -- inc, dec, neg, not ---------------------------------------------------------------

def test_inc_preserves_carry():
    # inc %eax
    cpu = step(b"\x40", eax=0xFFFFFFFF, eflags=BASE_FLAGS | CF)
    assert cpu.r[EAX] == 0
    assert arith(cpu) == CF | ZF | PF | AF


def test_inc_does_not_set_carry():
    # inc %eax
    cpu = step(b"\x40", eax=0xFFFFFFFF)
    assert cpu.r[EAX] == 0
    assert arith(cpu) == ZF | PF | AF


def test_inc_sets_overflow_at_int_max():
    # inc %eax
    cpu = step(b"\x40", eax=0x7FFFFFFF)
    assert cpu.r[EAX] == 0x80000000
    assert arith(cpu) == OF | SF | AF | PF


def test_dec_preserves_carry():
    # dec %eax
    cpu = step(b"\x48", eax=1, eflags=BASE_FLAGS | CF)
    assert cpu.r[EAX] == 0
    assert arith(cpu) == CF | ZF | PF


def test_dec_sets_overflow_at_int_min():
    # dec %eax
    cpu = step(b"\x48", eax=0x80000000)
    assert cpu.r[EAX] == 0x7FFFFFFF
    assert arith(cpu) == OF | AF | PF


def test_dec_ebx_short_form():
    # dec %ebx
    cpu = step(b"\x4b", ebx=0x10)
    assert cpu.r[EBX] == 0x0F
    assert arith(cpu) == AF | PF


def test_inc_byte_register_wraps_without_touching_upper_bits():
    # inc %al
    cpu = step(b"\xfe\xc0", eax=0x123456FF)
    assert cpu.r[EAX] == 0x12345600
    assert arith(cpu) == ZF | PF | AF


def test_inc_word_register_wraps_within_16_bits():
    # inc %ax
    cpu = step(b"\x66\x40", eax=0x1234FFFF)
    assert cpu.r[EAX] == 0x12340000
    assert arith(cpu) == ZF | PF | AF


def test_incl_memory():
    # incl (%eax)
    cpu = step(b"\xff\x00", eax=DATA, mem={DATA: b"\x41\x00\x00\x00"})
    assert cpu.rd32(DATA) == 0x42


def test_decb_memory_wraps():
    # decb (%eax)
    cpu = step(b"\xfe\x08", eax=DATA, mem={DATA: b"\x00\x77"})
    assert cpu.read(DATA, 2) == b"\xff\x77"
    assert arith(cpu) == SF | PF | AF


def test_neg_sets_carry_for_nonzero():
    # neg %eax
    cpu = step(b"\xf7\xd8", eax=1)
    assert cpu.r[EAX] == 0xFFFFFFFF
    assert arith(cpu) == CF | SF | PF | AF


def test_neg_zero_clears_carry():
    # neg %eax
    cpu = step(b"\xf7\xd8", eax=0, eflags=BASE_FLAGS | CF)
    assert cpu.r[EAX] == 0
    assert arith(cpu) == ZF | PF


def test_neg_int_min_overflows_to_itself():
    # neg %eax
    cpu = step(b"\xf7\xd8", eax=0x80000000)
    assert cpu.r[EAX] == 0x80000000
    assert arith(cpu) == CF | OF | SF | PF


def test_neg_byte_register():
    # neg %al
    cpu = step(b"\xf6\xd8", eax=0x11223380)
    assert cpu.r[EAX] == 0x11223380
    assert arith(cpu) == CF | OF | SF


def test_negl_memory():
    # negl (%eax)
    cpu = step(b"\xf7\x18", eax=DATA, mem={DATA: b"\x05\x00\x00\x00"})
    assert cpu.rd32(DATA) == 0xFFFFFFFB


def test_not_leaves_flags_alone():
    # not %eax
    cpu = step(b"\xf7\xd0", eax=0x0F0F0F0F, eflags=BASE_FLAGS | ARITH)
    assert cpu.r[EAX] == 0xF0F0F0F0
    assert arith(cpu) == ARITH


def test_not_byte_register():
    # not %al
    cpu = step(b"\xf6\xd0", eax=0x12345600)
    assert cpu.r[EAX] == 0x123456FF
    assert arith(cpu) == 0


def test_notl_memory():
    # notl (%eax)
    cpu = step(b"\xf7\x10", eax=DATA, mem={DATA: b"\x00\xff\x00\xff"})
    assert cpu.read(DATA, 4) == b"\xff\x00\xff\x00"


# -- mov --------------------------------------------------------------------------------

def test_mov_register_to_register():
    # mov %ebx,%eax
    cpu = step(b"\x89\xd8", ebx=0xCAFEBABE)
    assert cpu.r[EAX] == 0xCAFEBABE


def test_mov_load_with_disp8_from_ebp():
    # mov 0x8(%ebp),%eax
    cpu = step(b"\x8b\x45\x08", ebp=DATA, mem={DATA + 8: b"\x78\x56\x34\x12"})
    assert cpu.r[EAX] == 0x12345678


def test_mov_store_byte_touches_only_that_byte():
    # mov %al,-0x1(%ebp)
    cpu = step(b"\x88\x45\xff", eax=0xAB, ebp=DATA + 4,
               mem={DATA: b"\x11\x22\x33\x44\x55\x66"})
    assert cpu.read(DATA, 6) == b"\x11\x22\x33\xab\x55\x66"


def test_mov_imm8_to_ah_keeps_the_rest_of_eax():
    # mov $0x80,%ah
    cpu = step(b"\xb4\x80", eax=0x12345678)
    assert cpu.r[EAX] == 0x12348078


def test_mov_imm16_to_ax_keeps_upper_half():
    # mov $0x1234,%ax
    cpu = step(b"\x66\xb8\x34\x12", eax=0xFFFFFFFF)
    assert cpu.r[EAX] == 0xFFFF1234


def test_mov_imm32_to_ebx():
    # mov $0x12345678,%ebx
    cpu = step(b"\xbb\x78\x56\x34\x12")
    assert cpu.r[EBX] == 0x12345678


def test_movl_imm_to_memory():
    # movl $0xdeadbeef,(%eax)
    cpu = step(b"\xc7\x00\xef\xbe\xad\xde", eax=DATA)
    assert cpu.rd32(DATA) == 0xDEADBEEF


def test_movb_imm_to_memory():
    # movb $0x1,(%eax)
    cpu = step(b"\xc6\x00\x01", eax=DATA, mem={DATA: b"\xff\xff"})
    assert cpu.read(DATA, 2) == b"\x01\xff"


def test_movw_imm_to_memory():
    # movw $0x1234,(%eax)
    cpu = step(b"\x66\xc7\x00\x34\x12", eax=DATA, mem={DATA: b"\xff\xff\xff"})
    assert cpu.read(DATA, 3) == b"\x34\x12\xff"


def test_mov_word_register_keeps_upper_half():
    # mov %ax,%bx
    cpu = step(b"\x66\x89\xc3", eax=0x11112222, ebx=0x33334444)
    assert cpu.r[EBX] == 0x33332222


def test_mov_moffs_load_eax():
    # mov 0x900010,%eax
    cpu = step(b"\xa1\x10\x00\x90\x00", mem={DATA + 0x10: b"\x01\x02\x03\x04"})
    assert cpu.r[EAX] == 0x04030201


def test_mov_moffs_store_al():
    # mov %al,0x900010
    cpu = step(b"\xa2\x10\x00\x90\x00", eax=0x12345678)
    assert cpu.rd8(DATA + 0x10) == 0x78


def test_mov_does_not_change_flags():
    # mov %ebx,%eax
    cpu = step(b"\x89\xd8", ebx=0, eflags=BASE_FLAGS | CF | SF)
    assert arith(cpu) == CF | SF


def test_mov_base_index_scale_disp8():
    # mov 0x10(%eax,%ebx,4),%eax
    cpu = step(b"\x8b\x44\x98\x10", eax=DATA, ebx=3, mem={DATA + 0x1C: b"\x99\x88\x77\x66"})
    assert cpu.r[EAX] == 0x66778899


def test_mov_index_without_base_uses_disp32():
    # mov 0x900000(,%eax,4),%ecx
    cpu = step(b"\x8b\x0c\x85\x00\x00\x90\x00", eax=2, mem={DATA + 8: b"\x2a\x00\x00\x00"})
    assert cpu.r[ECX] == 42


def test_mov_disp32_absolute():
    # mov 0x900004,%ebx
    cpu = step(b"\x8b\x1d\x04\x00\x90\x00", mem={DATA + 4: b"\x07\x00\x00\x00"})
    assert cpu.r[EBX] == 7


def test_mov_from_esp_base_needs_sib():
    # mov 0x4(%esp),%eax
    cpu = step(b"\x8b\x44\x24\x04", esp=DATA, mem={DATA + 4: b"\x05\x00\x00\x00"})
    assert cpu.r[EAX] == 5


def test_mov_negative_displacement_wraps_the_address():
    # mov -0x1(%ebx),%eax
    cpu = step(b"\x8b\x43\xff", ebx=DATA + 1, mem={DATA: b"\x11\x22\x33\x44"})
    assert cpu.r[EAX] == 0x44332211


def test_mov_dword_straddling_two_pages():
    # mov (%ebx),%eax
    cpu = step(b"\x8b\x03", ebx=DATA + 0xFFE, mem={DATA + 0xFFE: b"\x01\x02\x03\x04"})
    assert cpu.r[EAX] == 0x04030201


def test_mov_store_dword_straddling_two_pages():
    # mov %eax,(%ebx)
    cpu = step(b"\x89\x03", eax=0x04030201, ebx=DATA + 0xFFD)
    assert cpu.read(DATA + 0xFFD, 4) == b"\x01\x02\x03\x04"


# -- movzx, movsx ------------------------------------------------------------------------

def test_movzbl_zero_extends_a_byte_register():
    # movzbl %bl,%eax
    cpu = step(b"\x0f\xb6\xc3", eax=0xFFFFFFFF, ebx=0x123456F0)
    assert cpu.r[EAX] == 0xF0


def test_movzbl_from_bh():
    # movzbl %bh,%eax
    cpu = step(b"\x0f\xb6\xc7", ebx=0x0000AB00)
    assert cpu.r[EAX] == 0xAB


def test_movsbl_sign_extends_negative_byte():
    # movsbl %bl,%eax
    cpu = step(b"\x0f\xbe\xc3", ebx=0x80)
    assert cpu.r[EAX] == 0xFFFFFF80


def test_movsbl_keeps_positive_byte():
    # movsbl %bl,%eax
    cpu = step(b"\x0f\xbe\xc3", eax=0xFFFFFFFF, ebx=0x7F)
    assert cpu.r[EAX] == 0x7F


def test_movzwl_from_memory():
    # movzwl (%ebx),%eax
    cpu = step(b"\x0f\xb7\x03", eax=0xFFFFFFFF, ebx=DATA, mem={DATA: b"\xff\xff\x12"})
    assert cpu.r[EAX] == 0xFFFF


def test_movswl_from_memory_sign_extends():
    # movswl (%ebx),%eax
    cpu = step(b"\x0f\xbf\x03", ebx=DATA, mem={DATA: b"\x00\x80"})
    assert cpu.r[EAX] == 0xFFFF8000


def test_movsbw_writes_only_the_low_word():
    # movsbw %bl,%ax
    cpu = step(b"\x66\x0f\xbe\xc3", eax=0x12345678, ebx=0x80)
    assert cpu.r[EAX] == 0x1234FF80


def test_movzbw_writes_only_the_low_word():
    # movzbw %bl,%ax
    cpu = step(b"\x66\x0f\xb6\xc3", eax=0x12345678, ebx=0x80)
    assert cpu.r[EAX] == 0x12340080


def test_movzx_does_not_change_flags():
    # movzbl %bl,%eax
    cpu = step(b"\x0f\xb6\xc3", ebx=0, eflags=BASE_FLAGS | OF | CF)
    assert arith(cpu) == OF | CF


# -- lea ---------------------------------------------------------------------------------

def test_lea_computes_the_address_without_touching_memory():
    # lea 0x10(%eax,%ebx,4),%eax     (the address is not mapped)
    cpu = step(b"\x8d\x44\x98\x10", eax=UNMAPPED, ebx=3, eflags=BASE_FLAGS | ZF)
    assert cpu.r[EAX] == UNMAPPED + 0x1C
    assert cpu.stop.reason == "budget"
    assert arith(cpu) == ZF


def test_lea_multiplies_by_three():
    # lea (%eax,%eax,2),%eax
    cpu = step(b"\x8d\x04\x40", eax=5)
    assert cpu.r[EAX] == 15


def test_lea_wraps_around_4g():
    # lea -0x1(%ebx),%eax
    cpu = step(b"\x8d\x43\xff", ebx=0)
    assert cpu.r[EAX] == 0xFFFFFFFF


def test_lea_word_destination_keeps_upper_half():
    # lea 0x1(%ebx),%ax
    cpu = step(b"\x66\x8d\x43\x01", eax=0xAAAAAAAA, ebx=0x1234FFFF)
    assert cpu.r[EAX] == 0xAAAA0000


# -- xchg, xadd, cmpxchg --------------------------------------------------------------

def test_xchg_eax_ebx_short_form():
    # xchg %eax,%ebx
    cpu = step(b"\x93", eax=1, ebx=2)
    assert (cpu.r[EAX], cpu.r[EBX]) == (2, 1)


def test_xchg_register_with_memory():
    # xchg %eax,(%ebx)
    cpu = step(b"\x87\x03", eax=0x11111111, ebx=DATA, mem={DATA: b"\x22\x22\x22\x22"})
    assert cpu.r[EAX] == 0x22222222
    assert cpu.rd32(DATA) == 0x11111111


def test_xchg_al_ah():
    # xchg %ah,%al
    cpu = step(b"\x86\xe0", eax=0xAABB1234)
    assert cpu.r[EAX] == 0xAABB3412


def test_xchg_word_registers_keep_upper_halves():
    # xchg %bx,%ax
    cpu = step(b"\x66\x87\xd8", eax=0x11112222, ebx=0x33334444)
    assert cpu.r[EAX] == 0x11114444
    assert cpu.r[EBX] == 0x33332222


def test_xadd_exchanges_and_adds():
    # xadd %ebx,%eax
    cpu = step(b"\x0f\xc1\xd8", eax=5, ebx=7)
    assert cpu.r[EAX] == 12
    assert cpu.r[EBX] == 5
    assert arith(cpu) == PF


def test_xadd_to_memory():
    # xadd %eax,(%ebx)
    cpu = step(b"\x0f\xc1\x03", eax=0x20, ebx=DATA, mem={DATA: b"\x10\x00\x00\x00"})
    assert cpu.rd32(DATA) == 0x30
    assert cpu.r[EAX] == 0x10


def test_xadd_same_register_doubles_it():
    # xadd %eax,%eax       (TEMP = SRC + DEST; SRC = DEST; DEST = TEMP)
    cpu = step(b"\x0f\xc1\xc0", eax=3)
    assert cpu.r[EAX] == 6


def test_lock_xadd_sets_add_flags():
    # lock xadd %eax,(%ebx)
    cpu = step(b"\xf0\x0f\xc1\x03", eax=1, ebx=DATA, mem={DATA: b"\xff\xff\xff\xff"})
    assert cpu.rd32(DATA) == 0
    assert cpu.r[EAX] == 0xFFFFFFFF
    assert arith(cpu) == CF | ZF | PF | AF


def test_cmpxchg_equal_stores_source():
    # cmpxchg %ecx,(%ebx)
    cpu = step(b"\x0f\xb1\x0b", eax=5, ecx=9, ebx=DATA, mem={DATA: b"\x05\x00\x00\x00"})
    assert cpu.rd32(DATA) == 9
    assert cpu.r[EAX] == 5
    assert arith(cpu) == ZF | PF


def test_cmpxchg_not_equal_loads_accumulator():
    # cmpxchg %ecx,(%ebx)
    cpu = step(b"\x0f\xb1\x0b", eax=5, ecx=9, ebx=DATA, mem={DATA: b"\x07\x00\x00\x00"})
    assert cpu.rd32(DATA) == 7
    assert cpu.r[EAX] == 7
    assert arith(cpu) == CF | SF | AF


def test_cmpxchg_register_destination_equal():
    # cmpxchg %ecx,%ebx
    cpu = step(b"\x0f\xb1\xcb", eax=1, ebx=1, ecx=0x55)
    assert cpu.r[EBX] == 0x55
    assert cpu.r[EAX] == 1


def test_cmpxchg_with_eax_as_destination_takes_source():
    # cmpxchg %ecx,%eax
    cpu = step(b"\x0f\xb1\xc8", eax=0x1234, ecx=0x55)
    assert cpu.r[EAX] == 0x55
    assert arith(cpu) & ZF


def test_cmpxchg_byte():
    # cmpxchg %cl,(%ebx)
    cpu = step(b"\x0f\xb0\x0b", eax=0x12345605, ecx=0x09, ebx=DATA, mem={DATA: b"\x05\x66"})
    assert cpu.read(DATA, 2) == b"\x09\x66"
    assert cpu.r[EAX] == 0x12345605


def test_lock_cmpxchg_not_equal_byte_loads_al_only():
    # lock cmpxchg %cl,(%ebx)
    cpu = step(b"\xf0\x0f\xb0\x0b", eax=0x12345605, ecx=0x09, ebx=DATA, mem={DATA: b"\x07"})
    assert cpu.r[EAX] == 0x12345607
    assert cpu.rd8(DATA) == 0x07


# -- sign extension of the accumulator ---------------------------------------------------

def test_cwtl_sign_extends_ax():
    # cwtl
    cpu = step(b"\x98", eax=0x12348000)
    assert cpu.r[EAX] == 0xFFFF8000


def test_cwtl_clears_upper_half_for_positive_ax():
    # cwtl
    cpu = step(b"\x98", eax=0xFFFF7FFF)
    assert cpu.r[EAX] == 0x00007FFF


def test_cbtw_sign_extends_al_into_ax_only():
    # cbtw
    cpu = step(b"\x66\x98", eax=0x12345680)
    assert cpu.r[EAX] == 0x1234FF80


def test_cltd_fills_edx_with_sign_of_eax():
    # cltd
    cpu = step(b"\x99", eax=0x80000000, edx=0)
    assert cpu.r[EDX] == 0xFFFFFFFF


def test_cltd_clears_edx_for_positive_eax():
    # cltd
    cpu = step(b"\x99", eax=0x7FFFFFFF, edx=0x12345678)
    assert cpu.r[EDX] == 0


def test_cwtd_fills_dx_only():
    # cwtd
    cpu = step(b"\x66\x99", eax=0x8000, edx=0x12345678)
    assert cpu.r[EDX] == 0x1234FFFF


def test_sign_extension_leaves_flags_and_other_registers():
    # cltd
    cpu = step(b"\x99", eax=0x80000000, esi=7, eflags=BASE_FLAGS | ZF)
    assert arith(cpu) == ZF
    assert cpu.r[ESI] == 7


# -- more 8- and 16-bit forms ---------------------------------------------------------------

def test_adc_word_with_carry_wraps_within_16_bits():
    # adc %bx,%ax
    cpu = step(b"\x66\x11\xd8", eax=0x1234FFFF, ebx=0, eflags=BASE_FLAGS | CF)
    assert cpu.r[EAX] == 0x12340000
    assert arith(cpu) == CF | ZF | PF | AF


def test_sbb_word_borrow_in_from_zero():
    # sbb %bx,%ax
    cpu = step(b"\x66\x19\xd8", eax=0xABCD0000, ebx=0, eflags=BASE_FLAGS | CF)
    assert cpu.r[EAX] == 0xABCDFFFF
    assert arith(cpu) == CF | SF | PF | AF


def test_cmp_word_imm_signed_overflow():
    # cmp $0x8000,%ax
    cpu = step(b"\x66\x3d\x00\x80", eax=0x7FFF)
    assert arith(cpu) == CF | OF | SF | PF


def test_dec_word_overflow_keeps_upper_half():
    # dec %ax
    cpu = step(b"\x66\x48", eax=0x55558000)
    assert cpu.r[EAX] == 0x55557FFF
    assert arith(cpu) == OF | AF | PF


def test_inc_byte_sets_overflow_at_0x7f():
    # inc %bl
    cpu = step(b"\xfe\xc3", ebx=0x7F)
    assert cpu.r[EBX] == 0x80
    assert arith(cpu) == OF | SF | AF


def test_neg_word_keeps_upper_half():
    # neg %ax
    cpu = step(b"\x66\xf7\xd8", eax=0x12340001)
    assert cpu.r[EAX] == 0x1234FFFF
    assert arith(cpu) == CF | SF | PF | AF


def test_not_word_keeps_upper_half():
    # not %ax
    cpu = step(b"\x66\xf7\xd0", eax=0x12340F0F)
    assert cpu.r[EAX] == 0x1234F0F0


def test_and_word_keeps_upper_half():
    # and %bx,%ax
    cpu = step(b"\x66\x21\xd8", eax=0xFFFFFFFF, ebx=0x0000F00F)
    assert cpu.r[EAX] == 0xFFFFF00F
    assert arith(cpu) == SF | PF


def test_test_byte_register_looks_only_at_al():
    # test %al,%al
    cpu = step(b"\x84\xc0", eax=0x100)
    assert arith(cpu) == ZF | PF


def test_or_byte_register_to_memory():
    # or %al,(%ebx)
    cpu = step(b"\x08\x03", eax=0x0F, ebx=DATA, mem={DATA: b"\xf0\x11"})
    assert cpu.read(DATA, 2) == b"\xff\x11"
    assert arith(cpu) == SF | PF


def test_xadd_byte():
    # xadd %bl,%al
    cpu = step(b"\x0f\xc0\xd8", eax=0xF0, ebx=0x20)
    assert (cpu.r[EAX], cpu.r[EBX]) == (0x10, 0xF0)
    assert arith(cpu) == CF


def test_cmpxchg_word_equal():
    # cmpxchg %cx,(%ebx)
    cpu = step(b"\x66\x0f\xb1\x0b", eax=0xFFFF1234, ecx=0x5678, ebx=DATA,
               mem={DATA: b"\x34\x12\x99"})
    assert cpu.read(DATA, 3) == b"\x78\x56\x99"
    assert arith(cpu) & ZF


def test_lock_incl_memory():
    # lock incl (%ebx)
    cpu = step(b"\xf0\xff\x03", ebx=DATA, mem={DATA: b"\xff\x00\x00\x00"})
    assert cpu.rd32(DATA) == 0x100


def test_mov_moffs_load_word():
    # mov 0x900000,%ax
    cpu = step(b"\x66\xa1\x00\x00\x90\x00", eax=0xAAAAAAAA, mem={DATA: b"\x11\x22\x33"})
    assert cpu.r[EAX] == 0xAAAA2211


def test_xchg_word_short_form():
    # xchg %ax,%bx
    cpu = step(b"\x66\x93", eax=0x11112222, ebx=0x33334444)
    assert cpu.r[EAX] == 0x11114444
    assert cpu.r[EBX] == 0x33332222
