"""Bit operations: bt, bts, btr, btc, bsf, bsr, bswap.

Per the SDM, bt* copy the selected bit into CF, leave ZF alone and leave
OF SF AF PF undefined (the core leaves them unchanged).  With a register bit
offset and a memory operand the offset is a signed bit index from the
operand's address and may reach outside the addressed dword; an immediate
offset is taken modulo the operand size.  bsf/bsr set ZF when the source is
zero and leave the destination undefined (the core leaves it unchanged, as
AMD documents); CF OF SF AF PF are undefined (left unchanged).
"""
from .insn_helpers import (
    AF, ARITH, BASE_FLAGS, CF, DATA, EAX, EDI, OF, PF, SF, ZF, step,
)

BASE = DATA + 0x10


def arith(cpu):
    return cpu.eflags & ARITH


# -- bt / bts / btr / btc with registers ------------------------------------------------

def test_bt_register_copies_the_bit_into_cf():
    # bt %ebx,%eax
    cpu = step(b"\x0f\xa3\xd8", eax=0x10, ebx=4)
    assert arith(cpu) == CF
    assert cpu.r[EAX] == 0x10


def test_bt_register_clear_bit_clears_cf():
    # bt %ebx,%eax
    cpu = step(b"\x0f\xa3\xd8", eax=0x10, ebx=3, eflags=BASE_FLAGS | CF)
    assert arith(cpu) == 0


def test_bt_register_offset_is_taken_mod_32():
    # bt %ebx,%eax
    cpu = step(b"\x0f\xa3\xd8", eax=0x10, ebx=36)
    assert arith(cpu) == CF


def test_bt_leaves_the_other_flags():
    # bt %ebx,%eax
    flags = ZF | SF | OF | PF | AF
    cpu = step(b"\x0f\xa3\xd8", eax=1, ebx=0, eflags=BASE_FLAGS | flags)
    assert arith(cpu) == flags | CF


def test_bts_sets_the_bit_and_returns_the_old_one():
    # bts %ebx,%eax
    cpu = step(b"\x0f\xab\xd8", eax=0, ebx=5)
    assert cpu.r[EAX] == 0x20
    assert arith(cpu) == 0


def test_btr_clears_the_bit():
    # btr %ebx,%eax
    cpu = step(b"\x0f\xb3\xd8", eax=0xFF, ebx=0)
    assert cpu.r[EAX] == 0xFE
    assert arith(cpu) == CF


def test_btc_complements_a_set_bit():
    # btc %ebx,%eax
    cpu = step(b"\x0f\xbb\xd8", eax=1, ebx=0)
    assert cpu.r[EAX] == 0
    assert arith(cpu) == CF


def test_btc_complements_a_clear_bit():
    # btc %ebx,%eax
    cpu = step(b"\x0f\xbb\xd8", eax=0x80000000, ebx=30)
    assert cpu.r[EAX] == 0xC0000000
    assert arith(cpu) == 0


def test_bt_imm_bit_31():
    # bt $0x1f,%eax
    cpu = step(b"\x0f\xba\xe0\x1f", eax=0x80000000)
    assert arith(cpu) == CF


def test_bts_imm_offset_is_taken_mod_32():
    # bts $0x21,%eax
    cpu = step(b"\x0f\xba\xe8\x21", eax=0)
    assert cpu.r[EAX] == 2


def test_bt_word_register_offset_is_taken_mod_16():
    # bt %bx,%ax
    cpu = step(b"\x66\x0f\xa3\xd8", eax=0x0002, ebx=17)
    assert arith(cpu) == CF


# -- with a memory operand -----------------------------------------------------------

def test_bt_mem_with_positive_register_offset_beyond_the_dword():
    # bt %eax,(%ebx)       (bit 35 = bit 3 of the dword 4 bytes up)
    cpu = step(b"\x0f\xa3\x03", eax=35, ebx=BASE, mem={BASE: bytes(4) + b"\x08\x00\x00\x00"})
    assert arith(cpu) == CF


def test_bt_mem_with_negative_register_offset():
    # bt %eax,(%ebx)       (bit -1 = bit 7 of the byte just below)
    cpu = step(b"\x0f\xa3\x03", eax=0xFFFFFFFF, ebx=BASE, mem={BASE - 4: b"\x00\x00\x00\x80"})
    assert arith(cpu) == CF


def test_bts_mem_with_negative_register_offset_sets_the_bit_below():
    # bts %eax,(%ebx)      (bit -9 = bit 7 of the byte at -2)
    cpu = step(b"\x0f\xab\x03", eax=0xFFFFFFF7, ebx=BASE)
    assert cpu.read(BASE - 4, 8) == b"\x00\x00\x80\x00" + bytes(4)
    assert arith(cpu) == 0


def test_bt_imm_with_memory_uses_only_the_addressed_dword():
    # btl $0x23,(%ebx)     (35 mod 32 = 3)
    cpu = step(b"\x0f\xba\x23\x23", ebx=BASE, mem={BASE: b"\x08\x00\x00\x00" + bytes(4)})
    assert arith(cpu) == CF


def test_bt_word_memory_with_negative_offset():
    # bt %ax,(%ebx)        (bit -1 = bit 15 of the word just below)
    cpu = step(b"\x66\x0f\xa3\x03", eax=0x1234FFFF, ebx=BASE, mem={BASE - 2: b"\x00\x80"})
    assert arith(cpu) == CF


def test_btr_imm_memory():
    # btrl $0x0,(%ebx)
    cpu = step(b"\x0f\xba\x33\x00", ebx=BASE, mem={BASE: b"\xff\x00\x00\x00"})
    assert cpu.rd32(BASE) == 0xFE
    assert arith(cpu) == CF


def test_lock_bts_memory():
    # lock bts %eax,(%ebx)
    cpu = step(b"\xf0\x0f\xab\x03", eax=8, ebx=BASE, mem={BASE: bytes(4)})
    assert cpu.rd32(BASE) == 0x100
    assert arith(cpu) == 0


def test_btc_memory_with_large_offset():
    # btc %eax,(%ebx)      (bit 100 = bit 4 of the dword at +12)
    cpu = step(b"\x0f\xbb\x03", eax=100, ebx=BASE, mem={BASE + 12: b"\x10"})
    assert cpu.rd8(BASE + 12) == 0
    assert arith(cpu) == CF


# -- bsf / bsr -----------------------------------------------------------------------

def test_bsf_finds_the_lowest_set_bit():
    # bsf %ebx,%eax
    cpu = step(b"\x0f\xbc\xc3", ebx=0xF0, eflags=BASE_FLAGS | ZF)
    assert cpu.r[EAX] == 4
    assert arith(cpu) == 0


def test_bsr_finds_the_highest_set_bit():
    # bsr %ebx,%eax
    cpu = step(b"\x0f\xbd\xc3", ebx=0xF0)
    assert cpu.r[EAX] == 7


def test_bsf_bit_31():
    # bsf %ebx,%eax
    cpu = step(b"\x0f\xbc\xc3", ebx=0x80000000)
    assert cpu.r[EAX] == 31


def test_bsr_of_all_ones_is_31():
    # bsr %ebx,%eax
    cpu = step(b"\x0f\xbd\xc3", ebx=0xFFFFFFFF)
    assert cpu.r[EAX] == 31


def test_bsf_zero_source_sets_zf_and_leaves_destination():
    # bsf %ebx,%eax
    cpu = step(b"\x0f\xbc\xc3", ebx=0, eax=0x1234)
    assert cpu.r[EAX] == 0x1234
    assert arith(cpu) == ZF


def test_bsr_zero_source_sets_zf_and_leaves_destination():
    # bsr %ebx,%eax
    cpu = step(b"\x0f\xbd\xc3", ebx=0, eax=0x5678)
    assert cpu.r[EAX] == 0x5678
    assert arith(cpu) == ZF


def test_bsf_leaves_the_other_flags():
    # bsf %ebx,%eax
    flags = CF | OF | SF | AF | PF
    cpu = step(b"\x0f\xbc\xc3", ebx=1, eflags=BASE_FLAGS | flags | ZF)
    assert arith(cpu) == flags


def test_bsf_word_writes_the_low_half():
    # bsf %bx,%ax
    cpu = step(b"\x66\x0f\xbc\xc3", eax=0x12340000, ebx=0xFFFF8000)
    assert cpu.r[EAX] == 0x1234000F


def test_bsr_from_memory():
    # bsr (%ebx),%eax
    cpu = step(b"\x0f\xbd\x03", ebx=BASE, mem={BASE: b"\x00\x01\x00\x00"})
    assert cpu.r[EAX] == 8


# -- bswap ------------------------------------------------------------------------------

def test_bswap_reverses_the_bytes():
    # bswap %eax
    cpu = step(b"\x0f\xc8", eax=0x12345678)
    assert cpu.r[EAX] == 0x78563412


def test_bswap_edi():
    # bswap %edi
    cpu = step(b"\x0f\xcf", edi=0xAABBCCDD)
    assert cpu.r[EDI] == 0xDDCCBBAA


def test_bswap_leaves_flags():
    # bswap %eax
    cpu = step(b"\x0f\xc8", eax=0, eflags=BASE_FLAGS | CF | SF)
    assert arith(cpu) == CF | SF


def test_bswap_16bit_clears_low_word():
    # bswap %ax            (undefined in the SDM; flags.py: the low word becomes 0)
    cpu = step(b"\x66\x0f\xc8", eax=0x12345678)
    assert cpu.r[EAX] == 0x12340000
