"""Multiply and divide: mul, imul (one, two and three operands), div, idiv.

Per the SDM, mul/imul set CF = OF = 1 when the product does not fit the
destination (the high half is not the zero / sign extension of the low
half); SF ZF AF PF are undefined and flags.py takes SF ZF PF from the low
half and clears AF.  div/idiv leave every flag undefined; the core leaves
them unchanged.  A zero divisor or a quotient too large for the destination
is a divide error (#DE, trap 0) that changes nothing.
"""
from .insn_helpers import (
    ARITH, BASE_FLAGS, CF, CODE, DATA, EAX, EBX, EDX, OF, PF, SF, TRAP, ZF, step,
)


def arith(cpu):
    return cpu.eflags & ARITH


def assert_divide_error(cpu):
    assert cpu.stop.reason == TRAP
    assert cpu.stop.trapno == 0
    assert cpu.stop.count == 0
    assert cpu.eip == CODE


# -- mul ----------------------------------------------------------------------------

def test_mul_32_puts_the_high_half_in_edx_and_sets_cf_of():
    # mul %ebx
    cpu = step(b"\xf7\xe3", eax=0x80000000, ebx=4)
    assert (cpu.r[EDX], cpu.r[EAX]) == (2, 0)
    assert arith(cpu) == CF | OF | ZF | PF


def test_mul_32_without_a_high_half_clears_cf_of():
    # mul %ebx
    cpu = step(b"\xf7\xe3", eax=3, ebx=5, edx=0x1234, eflags=BASE_FLAGS | CF | OF)
    assert (cpu.r[EDX], cpu.r[EAX]) == (0, 15)
    assert arith(cpu) == PF


def test_mul_byte_writes_ax_only():
    # mul %bl
    cpu = step(b"\xf6\xe3", eax=0x12345680, ebx=0x02, edx=0x5555)
    assert cpu.r[EAX] == 0x12340100
    assert cpu.r[EDX] == 0x5555
    assert arith(cpu) == CF | OF | ZF | PF


def test_mul_byte_fitting_in_al_clears_cf_of():
    # mul %bl
    cpu = step(b"\xf6\xe3", eax=0x0F, ebx=0x11)
    assert cpu.r[EAX] == 0xFF
    assert arith(cpu) == SF | PF


def test_mul_word_writes_dx_ax_and_keeps_upper_halves():
    # mul %bx
    cpu = step(b"\x66\xf7\xe3", eax=0xAAAA8000, ebx=0x0002, edx=0xBBBBBBBB)
    assert cpu.r[EAX] == 0xAAAA0000
    assert cpu.r[EDX] == 0xBBBB0001
    assert arith(cpu) & (CF | OF) == CF | OF


def test_mull_memory():
    # mull (%ebx)
    cpu = step(b"\xf7\x23", eax=0x10, ebx=DATA, edx=9, mem={DATA: b"\x10\x00\x00\x00"})
    assert (cpu.r[EDX], cpu.r[EAX]) == (0, 0x100)


# -- imul ---------------------------------------------------------------------------

def test_imul_32_negative_product_that_fits_clears_cf_of():
    # imul %ebx
    cpu = step(b"\xf7\xeb", eax=0xFFFFFFFF, ebx=1)
    assert (cpu.r[EDX], cpu.r[EAX]) == (0xFFFFFFFF, 0xFFFFFFFF)
    assert arith(cpu) == SF | PF


def test_imul_32_overflow_sets_cf_of():
    # imul %ebx
    cpu = step(b"\xf7\xeb", eax=0x10000, ebx=0x10000)
    assert (cpu.r[EDX], cpu.r[EAX]) == (1, 0)
    assert arith(cpu) == CF | OF | ZF | PF


def test_imul_byte_minus_128_times_minus_1_overflows():
    # imul %bl
    cpu = step(b"\xf6\xeb", eax=0x80, ebx=0xFF)
    assert cpu.r[EAX] == 0x0080
    assert arith(cpu) == CF | OF | SF


def test_imul_word_negative():
    # imul %bx
    cpu = step(b"\x66\xf7\xeb", eax=0xFFFE, ebx=3, edx=0x12340000)
    assert cpu.r[EAX] == 0xFFFA
    assert cpu.r[EDX] == 0x1234FFFF
    assert arith(cpu) & (CF | OF) == 0


def test_imull_memory():
    # imull (%ebx)
    cpu = step(b"\xf7\x2b", eax=0xFFFFFFFE, ebx=DATA, mem={DATA: b"\xfe\xff\xff\xff"})
    assert (cpu.r[EDX], cpu.r[EAX]) == (0, 4)


def test_imul_two_operand_truncates_and_flags_overflow():
    # imul %ebx,%eax
    cpu = step(b"\x0f\xaf\xc3", eax=0x10000, ebx=0x10000)
    assert cpu.r[EAX] == 0
    assert arith(cpu) == CF | OF | ZF | PF


def test_imul_two_operand_negative_result():
    # imul %ebx,%eax
    cpu = step(b"\x0f\xaf\xc3", eax=0xFFFFFFFD, ebx=7)
    assert cpu.r[EAX] == 0xFFFFFFEB
    assert arith(cpu) == SF | PF


def test_imul_two_operand_from_memory():
    # imul (%ebx),%eax
    cpu = step(b"\x0f\xaf\x03", eax=6, ebx=DATA, mem={DATA: b"\x07\x00\x00\x00"})
    assert cpu.r[EAX] == 42


def test_imul_word_two_operand_keeps_upper_half():
    # imul %bx,%ax
    cpu = step(b"\x66\x0f\xaf\xc3", eax=0x12340100, ebx=0x100)
    assert cpu.r[EAX] == 0x12340000
    assert arith(cpu) & (CF | OF) == CF | OF


def test_imul_three_operand_imm8():
    # imul $0xa,%ebx,%eax
    cpu = step(b"\x6b\xc3\x0a", ebx=7, eax=0x5555)
    assert cpu.r[EAX] == 70
    assert cpu.r[EBX] == 7


def test_imul_three_operand_imm8_is_sign_extended():
    # imul $0xffffffff,%ebx,%eax
    cpu = step(b"\x6b\xc3\xff", ebx=5)
    assert cpu.r[EAX] == 0xFFFFFFFB
    assert arith(cpu) & (CF | OF) == 0


def test_imul_three_operand_imm32_overflow():
    # imul $0x3e8,%ebx,%eax
    cpu = step(b"\x69\xc3\xe8\x03\x00\x00", ebx=0x00400000)
    assert cpu.r[EAX] == 0xFA000000
    assert arith(cpu) == CF | OF | SF | PF


def test_imul_three_operand_from_memory():
    # imul $0x3,(%ebx),%eax
    cpu = step(b"\x6b\x03\x03", ebx=DATA, mem={DATA: b"\x0e\x00\x00\x00"})
    assert cpu.r[EAX] == 42


# -- div ----------------------------------------------------------------------------

def test_div_32_quotient_in_eax_remainder_in_edx():
    # div %ebx
    cpu = step(b"\xf7\xf3", edx=0, eax=100, ebx=7)
    assert (cpu.r[EAX], cpu.r[EDX]) == (14, 2)


def test_div_64_by_32():
    # div %ebx
    cpu = step(b"\xf7\xf3", edx=1, eax=0, ebx=2)
    assert (cpu.r[EAX], cpu.r[EDX]) == (0x80000000, 0)


def test_div_leaves_flags_unchanged():
    # div %ebx
    cpu = step(b"\xf7\xf3", edx=0, eax=100, ebx=7, eflags=BASE_FLAGS | ARITH)
    assert arith(cpu) == ARITH


def test_div_by_zero_traps_divide_error():
    # div %ebx
    cpu = step(b"\xf7\xf3", edx=3, eax=4, ebx=0, eflags=BASE_FLAGS | CF)
    assert_divide_error(cpu)
    assert (cpu.r[EAX], cpu.r[EDX]) == (4, 3)
    assert arith(cpu) == CF


def test_div_quotient_too_large_traps_divide_error():
    # div %ebx
    cpu = step(b"\xf7\xf3", edx=2, eax=0, ebx=2)
    assert_divide_error(cpu)
    assert (cpu.r[EAX], cpu.r[EDX]) == (0, 2)


def test_div_byte_puts_quotient_in_al_remainder_in_ah():
    # div %bl
    cpu = step(b"\xf6\xf3", eax=0xAABB0107, ebx=0x10, edx=0x77)
    assert cpu.r[EAX] == 0xAABB0710
    assert cpu.r[EDX] == 0x77


def test_div_byte_quotient_256_traps_divide_error():
    # div %bl
    cpu = step(b"\xf6\xf3", eax=0x1000, ebx=0x10)
    assert_divide_error(cpu)
    assert cpu.r[EAX] == 0x1000


def test_div_word_uses_dx_ax_and_keeps_upper_halves():
    # div %bx
    cpu = step(b"\x66\xf7\xf3", eax=0xAAAA0000, edx=0xBBBB0001, ebx=3)
    assert cpu.r[EAX] == 0xAAAA5555
    assert cpu.r[EDX] == 0xBBBB0001


def test_divl_memory():
    # divl (%ebx)
    cpu = step(b"\xf7\x33", edx=0, eax=10, ebx=DATA, mem={DATA: b"\x03\x00\x00\x00"})
    assert (cpu.r[EAX], cpu.r[EDX]) == (3, 1)


def test_divl_memory_by_zero_traps():
    # divl (%ebx)
    cpu = step(b"\xf7\x33", edx=0, eax=10, ebx=DATA, mem={DATA: bytes(4)})
    assert_divide_error(cpu)


# -- idiv ---------------------------------------------------------------------------

def test_idiv_rounds_toward_zero():
    # idiv %ebx            (-7 / 2 = -3 remainder -1)
    cpu = step(b"\xf7\xfb", edx=0xFFFFFFFF, eax=0xFFFFFFF9, ebx=2)
    assert (cpu.r[EAX], cpu.r[EDX]) == (0xFFFFFFFD, 0xFFFFFFFF)


def test_idiv_remainder_takes_the_sign_of_the_dividend():
    # idiv %ebx            (7 / -2 = -3 remainder 1)
    cpu = step(b"\xf7\xfb", edx=0, eax=7, ebx=0xFFFFFFFE)
    assert (cpu.r[EAX], cpu.r[EDX]) == (0xFFFFFFFD, 1)


def test_idiv_overflow_traps_divide_error():
    # idiv %ebx            (-2^31 / -1 = 2^31 does not fit)
    cpu = step(b"\xf7\xfb", edx=0xFFFFFFFF, eax=0x80000000, ebx=0xFFFFFFFF)
    assert_divide_error(cpu)
    assert (cpu.r[EAX], cpu.r[EDX]) == (0x80000000, 0xFFFFFFFF)


def test_idiv_most_negative_quotient_fits():
    # idiv %ebx            (-2^31 / 1)
    cpu = step(b"\xf7\xfb", edx=0xFFFFFFFF, eax=0x80000000, ebx=1)
    assert cpu.stop.reason == "budget"
    assert (cpu.r[EAX], cpu.r[EDX]) == (0x80000000, 0)


def test_idiv_by_zero_traps_divide_error():
    # idiv %ebx
    cpu = step(b"\xf7\xfb", edx=0, eax=1, ebx=0)
    assert_divide_error(cpu)


def test_idiv_byte_minus_128_by_minus_1_traps():
    # idiv %bl
    cpu = step(b"\xf6\xfb", eax=0xFF80, ebx=0xFF)
    assert_divide_error(cpu)


def test_idiv_byte():
    # idiv %bl             (-100 / 7 = -14 remainder -2)
    cpu = step(b"\xf6\xfb", eax=0x1234FF9C, ebx=7)
    assert cpu.r[EAX] == 0x1234FEF2


def test_idiv_word():
    # idiv %bx             (-1000 / 10 = -100 remainder 0)
    cpu = step(b"\x66\xf7\xfb", eax=0xFC18, edx=0xFFFF, ebx=10)
    assert cpu.r[EAX] == 0xFF9C
    assert cpu.r[EDX] == 0


def test_idiv_leaves_flags_unchanged():
    # idiv %ebx
    cpu = step(b"\xf7\xfb", edx=0, eax=9, ebx=3, eflags=BASE_FLAGS | ZF | OF)
    assert cpu.r[EAX] == 3
    assert arith(cpu) == ZF | OF


def test_imul_word_three_operand_keeps_upper_half():
    # imul $0xffff,%bx,%ax
    cpu = step(b"\x66\x6b\xc3\xff", eax=0x12340000, ebx=5)
    assert cpu.r[EAX] == 0x1234FFFB
    assert arith(cpu) & (CF | OF) == 0
