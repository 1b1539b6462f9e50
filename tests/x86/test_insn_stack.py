"""The stack: push, pop, pushf/popf, pusha/popa, call, ret, enter, leave.

Expected values from the Intel SDM.  Faults are precise: a push or call
that faults leaves esp, eip and memory as they were.
"""
from jmig.kernel.memlayout import PGSIZE, USTACKTOP

from .insn_helpers import (
    AF, ARITH, BASE_FLAGS, CF, CODE, DATA, DF, EAX, EBP, EBX, ECX, EDI, EDX, ESI, ESP, IF,
    OF, PF, RO, SF, STACK, TF, TRAP, UNMAPPED, ZF, step,
)


def u32(v):
    return (v & 0xFFFFFFFF).to_bytes(4, "little")


# -- push / pop -------------------------------------------------------------------------

def test_push_register_decrements_esp_and_stores():
    # push %ebx
    cpu = step(b"\x53", ebx=0x12345678)
    assert cpu.r[ESP] == STACK - 4
    assert cpu.rd32(STACK - 4) == 0x12345678


def test_push_esp_pushes_old_value():
    # push %esp
    cpu = step(b"\x54")
    assert cpu.r[ESP] == STACK - 4
    assert cpu.rd32(STACK - 4) == STACK


def test_pop_register_increments_esp():
    # pop %eax
    cpu = step(b"\x58", mem={STACK: u32(0xCAFEBABE)})
    assert cpu.r[EAX] == 0xCAFEBABE
    assert cpu.r[ESP] == STACK + 4


def test_pop_esp_loads_popped_value():
    # pop %esp
    cpu = step(b"\x5c", mem={STACK: u32(0x11223344)})
    assert cpu.r[ESP] == 0x11223344


def test_push_imm8_is_sign_extended():
    # push $0xffffffff
    cpu = step(b"\x6a\xff")
    assert cpu.rd32(STACK - 4) == 0xFFFFFFFF


def test_push_imm32():
    # push $0x12345678
    cpu = step(b"\x68\x78\x56\x34\x12")
    assert cpu.rd32(STACK - 4) == 0x12345678
    assert cpu.r[ESP] == STACK - 4


def test_push_memory():
    # push (%ebx)
    cpu = step(b"\xff\x33", ebx=DATA, mem={DATA: u32(0x600DF00D)})
    assert cpu.rd32(STACK - 4) == 0x600DF00D


def test_push_memory_through_esp_reads_before_the_decrement():
    # push (%esp)
    cpu = step(b"\xff\x34\x24", mem={STACK: u32(0xAABBCCDD)})
    assert cpu.rd32(STACK - 4) == 0xAABBCCDD
    assert cpu.r[ESP] == STACK - 4


def test_pop_memory():
    # pop (%ebx)
    cpu = step(b"\x8f\x03", ebx=DATA, mem={STACK: u32(0x5A5A5A5A)})
    assert cpu.rd32(DATA) == 0x5A5A5A5A
    assert cpu.r[ESP] == STACK + 4


def test_pop_memory_with_esp_base_uses_the_incremented_esp():
    # pop 0x4(%esp)
    cpu = step(b"\x8f\x44\x24\x04", mem={STACK: u32(0x77777777)})
    assert cpu.r[ESP] == STACK + 4
    assert cpu.rd32(STACK + 8) == 0x77777777


def test_push_word_register_moves_esp_by_two():
    # push %bx
    cpu = step(b"\x66\x53", ebx=0x12345678, mem={STACK - 4: b"\xff\xff\xff\xff"})
    assert cpu.r[ESP] == STACK - 2
    assert cpu.read(STACK - 4, 4) == b"\xff\xff\x78\x56"


def test_pop_word_register_keeps_upper_half():
    # pop %ax
    cpu = step(b"\x66\x58", eax=0xAAAAAAAA, mem={STACK: b"\x34\x12\x99\x99"})
    assert cpu.r[EAX] == 0xAAAA1234
    assert cpu.r[ESP] == STACK + 2


def test_pushw_imm8_sign_extended_to_16_bits():
    # pushw $0xffff
    cpu = step(b"\x66\x6a\xff", mem={STACK - 4: bytes(4)})
    assert cpu.r[ESP] == STACK - 2
    assert cpu.read(STACK - 4, 4) == b"\x00\x00\xff\xff"


def test_push_segment_register_moves_esp_by_four():
    # push %ds             (the low word is the selector; the SDM allows either
    #                       a zero-extended push or a 16-bit store)
    cpu = step(b"\x1e")
    assert cpu.r[ESP] == STACK - 4
    assert cpu.rd16(STACK - 4) == 0x23


def test_pop_ds_accepts_the_user_data_selector():
    # pop %ds
    cpu = step(b"\x1f", mem={STACK: u32(0x23)})
    assert cpu.stop.reason == "budget"
    assert cpu.r[ESP] == STACK + 4


def test_pop_ds_with_bad_selector_traps_gp_with_selector_error():
    # pop %ds
    cpu = step(b"\x1f", mem={STACK: u32(0x28)})
    assert cpu.stop.reason == TRAP
    assert (cpu.stop.trapno, cpu.stop.err) == (13, 0x28)
    assert cpu.r[ESP] == STACK
    assert cpu.eip == CODE


# -- pushf / popf ------------------------------------------------------------------------

def test_pushf_pushes_flags_with_if_and_reserved_bit():
    # pushf
    cpu = step(b"\x9c", eflags=BASE_FLAGS | CF | ZF)
    assert cpu.rd32(STACK - 4) == 0x243
    assert cpu.r[ESP] == STACK - 4


def test_pushf_after_arithmetic_pushes_computed_flags():
    # add %ebx,%eax ; pushf
    cpu = step(b"\x01\xd8\x9c", eax=0xFFFFFFFF, ebx=1, n=2)
    assert cpu.rd32(STACK - 4) == 0x202 | CF | PF | AF | ZF


def test_popf_keeps_if_and_iopl():
    # popf                 (CPL 3, IOPL 0: IF and IOPL are not writable)
    cpu = step(b"\x9d", eflags=BASE_FLAGS | ARITH | DF, mem={STACK: u32(0x3000)})
    assert cpu.eflags == 0x202
    assert cpu.r[ESP] == STACK + 4


def test_popf_restores_arithmetic_flags_and_df():
    # popf
    cpu = step(b"\x9d", mem={STACK: u32(ARITH | DF | IF)})
    assert cpu.eflags == 0x202 | ARITH | DF


def test_pushf_popf_round_trip_carries_every_arithmetic_flag():
    # pushf ; popf
    flags = BASE_FLAGS | CF | PF | AF | ZF | SF | OF | DF
    cpu = step(b"\x9c\x9d", eflags=flags, n=2)
    assert cpu.eflags == flags
    assert cpu.r[ESP] == STACK


def test_popf_leaves_tf_clear_by_jmig_choice():
    # popf                 (TF is writable at CPL 3 on hardware; jmig has no
    #                       single-step trap, so popf keeps TF clear: docs/cpu.md)
    cpu = step(b"\x9d", mem={STACK: u32(TF | IF | 2)})
    assert not cpu.eflags & TF
    assert cpu.stop.reason == "budget"


def test_popf_can_set_ac_and_id():
    # popf
    cpu = step(b"\x9d", mem={STACK: u32(0x240000 | IF | 2)})
    assert cpu.eflags & 0x240000 == 0x240000


def test_pushf_word_pushes_16_bits():
    # pushfw
    cpu = step(b"\x66\x9c", eflags=BASE_FLAGS | SF, mem={STACK - 4: b"\xee\xee\xee\xee"})
    assert cpu.r[ESP] == STACK - 2
    assert cpu.read(STACK - 4, 4) == b"\xee\xee\x82\x02"


def test_popf_word_sets_the_low_flags():
    # popfw
    cpu = step(b"\x66\x9d", eflags=BASE_FLAGS | ZF, mem={STACK: b"\x01\x00"})
    assert cpu.eflags == 0x203
    assert cpu.r[ESP] == STACK + 2


# -- pusha / popa -------------------------------------------------------------------------

def test_pusha_pushes_all_registers_with_original_esp():
    # pusha
    cpu = step(b"\x60", eax=1, ecx=2, edx=3, ebx=4, ebp=6, esi=7, edi=8)
    assert cpu.r[ESP] == STACK - 32
    words = [cpu.rd32(STACK - 32 + 4 * k) for k in range(8)]
    assert words == [8, 7, 6, STACK, 4, 3, 2, 1]


def test_popa_restores_registers_but_skips_esp():
    # popa
    image = b"".join(u32(v) for v in (8, 7, 6, 0x99999999, 4, 3, 2, 1))
    cpu = step(b"\x61", mem={STACK: image})
    assert cpu.r == [1, 2, 3, 4, STACK + 32, 6, 7, 8]


def test_pushaw_pushes_16_bit_registers():
    # pushaw
    cpu = step(b"\x66\x60", eax=0x10001, ecx=0x20002, edx=0x30003, ebx=0x40004,
               ebp=0x60006, esi=0x70007, edi=0x80008)
    assert cpu.r[ESP] == STACK - 16
    words = [cpu.rd16(STACK - 16 + 2 * k) for k in range(8)]
    assert words == [8, 7, 6, STACK & 0xFFFF, 4, 3, 2, 1]


def test_pusha_on_a_partly_unmapped_stack_writes_nothing():
    # pusha
    top = USTACKTOP - PGSIZE + 8            # 8 bytes above the unmapped page
    cpu = step(b"\x60", esp=top, eax=0x11111111, ecx=0x22222222,
               mem={top - 8: b"\x55" * 8})
    assert cpu.stop.reason == TRAP and cpu.stop.trapno == 14
    assert cpu.stop.va < USTACKTOP - PGSIZE
    assert cpu.r[ESP] == top
    assert cpu.read(top - 8, 8) == b"\x55" * 8


# -- call / ret ---------------------------------------------------------------------------

def test_call_rel32_pushes_the_return_address():
    # call .+0x15
    cpu = step(b"\xe8\x10\x00\x00\x00")
    assert cpu.eip == CODE + 0x15
    assert cpu.r[ESP] == STACK - 4
    assert cpu.rd32(STACK - 4) == CODE + 5


def test_call_rel32_backwards():
    # call .-0x100
    cpu = step(b"\xe8\xfb\xfe\xff\xff", eip=CODE + 0x200)
    assert cpu.eip == CODE + 0x100
    assert cpu.rd32(STACK - 4) == CODE + 0x205


def test_call_indirect_register():
    # call *%eax
    cpu = step(b"\xff\xd0", eax=CODE + 0x80)
    assert cpu.eip == CODE + 0x80
    assert cpu.rd32(STACK - 4) == CODE + 2


def test_call_indirect_memory():
    # call *(%ebx)
    cpu = step(b"\xff\x13", ebx=DATA, mem={DATA: u32(CODE + 0x44)})
    assert cpu.eip == CODE + 0x44
    assert cpu.rd32(STACK - 4) == CODE + 2


def test_call_indirect_through_esp_reads_before_the_push():
    # call *(%esp)
    cpu = step(b"\xff\x14\x24", mem={STACK: u32(CODE + 0x40)})
    assert cpu.eip == CODE + 0x40
    assert cpu.rd32(STACK - 4) == CODE + 3
    assert cpu.rd32(STACK) == CODE + 0x40


def test_ret_pops_eip():
    # ret
    cpu = step(b"\xc3", mem={STACK: u32(CODE + 0x100)})
    assert cpu.eip == CODE + 0x100
    assert cpu.r[ESP] == STACK + 4


def test_ret_imm16_releases_the_arguments():
    # ret $0x8
    cpu = step(b"\xc2\x08\x00", mem={STACK: u32(CODE + 0x100)})
    assert cpu.eip == CODE + 0x100
    assert cpu.r[ESP] == STACK + 12


def test_call_then_ret_comes_back():
    # call .+7 ; int3 ; nop ; ret
    cpu = step(b"\xe8\x02\x00\x00\x00\xcc\x90\xc3", n=2)
    assert cpu.eip == CODE + 5
    assert cpu.r[ESP] == STACK


def test_call_with_unmapped_stack_faults_before_jumping():
    # call .+0x15
    cpu = step(b"\xe8\x10\x00\x00\x00", esp=UNMAPPED + 0x10)
    assert cpu.stop.reason == TRAP
    assert (cpu.stop.trapno, cpu.stop.err, cpu.stop.va) == (14, 6, UNMAPPED + 0xC)
    assert cpu.eip == CODE
    assert cpu.r[ESP] == UNMAPPED + 0x10


def test_ret_from_unmapped_stack_faults():
    # ret
    cpu = step(b"\xc3", esp=UNMAPPED)
    assert (cpu.stop.trapno, cpu.stop.err, cpu.stop.va) == (14, 4, UNMAPPED)
    assert cpu.eip == CODE
    assert cpu.r[ESP] == UNMAPPED


def test_push_to_unmapped_stack_faults_without_change():
    # push %eax
    cpu = step(b"\x50", eax=1, esp=UNMAPPED + 0x10)
    assert (cpu.stop.trapno, cpu.stop.err, cpu.stop.va) == (14, 6, UNMAPPED + 0xC)
    assert cpu.r[ESP] == UNMAPPED + 0x10


def test_pop_into_readonly_memory_faults_and_keeps_esp():
    # pop (%ebx)
    cpu = step(b"\x8f\x03", ebx=RO, mem={STACK: u32(1)})
    assert (cpu.stop.trapno, cpu.stop.err, cpu.stop.va) == (14, 7, RO)
    assert cpu.r[ESP] == STACK


# -- enter / leave -----------------------------------------------------------------------

def test_leave_restores_the_callers_frame():
    # leave
    cpu = step(b"\xc9", ebp=STACK + 0x10, mem={STACK + 0x10: u32(0xAAAA)})
    assert cpu.r[ESP] == STACK + 0x14
    assert cpu.r[EBP] == 0xAAAA


def test_enter_without_nesting_builds_a_frame():
    # enter $0x8,$0x0
    cpu = step(b"\xc8\x08\x00\x00", ebp=0x1111)
    assert cpu.rd32(STACK - 4) == 0x1111
    assert cpu.r[EBP] == STACK - 4
    assert cpu.r[ESP] == STACK - 12


def test_enter_level_1_pushes_the_frame_pointer():
    # enter $0x0,$0x1
    cpu = step(b"\xc8\x00\x00\x01", ebp=0x2222)
    assert cpu.rd32(STACK - 4) == 0x2222
    assert cpu.rd32(STACK - 8) == STACK - 4
    assert cpu.r[EBP] == STACK - 4
    assert cpu.r[ESP] == STACK - 8


def test_enter_level_2_copies_the_outer_frame_pointer():
    # enter $0x4,$0x2
    outer = DATA + 0x100
    cpu = step(b"\xc8\x04\x00\x02", ebp=outer, mem={outer - 4: u32(0xD1D1D1D1)})
    assert cpu.rd32(STACK - 4) == outer
    assert cpu.rd32(STACK - 8) == 0xD1D1D1D1
    assert cpu.rd32(STACK - 12) == STACK - 4
    assert cpu.r[EBP] == STACK - 4
    assert cpu.r[ESP] == STACK - 16


def test_enter_then_leave_is_balanced():
    # enter $0x10,$0x0 ; leave
    cpu = step(b"\xc8\x10\x00\x00\xc9", ebp=0x3333, n=2)
    assert cpu.r[ESP] == STACK
    assert cpu.r[EBP] == 0x3333


def test_stack_operations_leave_other_registers_alone():
    # push %eax ; pop %ecx
    cpu = step(b"\x50\x59", eax=5, edx=6, ebx=7, esi=8, edi=9, n=2)
    assert cpu.r[ECX] == 5
    assert (cpu.r[EDX], cpu.r[EBX], cpu.r[ESI], cpu.r[EDI]) == (6, 7, 8, 9)


# -- 16-bit operand size --------------------------------------------------------------------

def test_pushw_memory():
    # pushw (%ebx)
    cpu = step(b"\x66\xff\x33", ebx=DATA, mem={DATA: b"\xef\xbe\x11\x11"})
    assert cpu.r[ESP] == STACK - 2
    assert cpu.rd16(STACK - 2) == 0xBEEF


def test_popw_memory_writes_two_bytes():
    # popw (%ebx)
    cpu = step(b"\x66\x8f\x03", ebx=DATA, mem={STACK: b"\x34\x12", DATA: b"\xff\xff\xff"})
    assert cpu.read(DATA, 3) == b"\x34\x12\xff"
    assert cpu.r[ESP] == STACK + 2


def test_pop_into_esp_addressed_memory_uses_the_new_esp():
    # pop (%esp)
    cpu = step(b"\x8f\x04\x24", mem={STACK: u32(0x99887766)})
    assert cpu.r[ESP] == STACK + 4
    assert cpu.rd32(STACK + 4) == 0x99887766


def test_pushw_segment_register():
    # pushw %ds
    cpu = step(b"\x66\x1e")
    assert cpu.r[ESP] == STACK - 2
    assert cpu.rd16(STACK - 2) == 0x23


def test_leave_word_pops_bp_only():
    # leavew
    cpu = step(b"\x66\xc9", ebp=STACK + 0x10, mem={STACK + 0x10: b"\xef\xbe"})
    assert cpu.r[ESP] == STACK + 0x12
    assert cpu.r[EBP] == ((STACK + 0x10) & 0xFFFF0000) | 0xBEEF


def test_ret_word_pops_a_16_bit_ip():
    # retw
    cpu = step(b"\x66\xc3", mem={STACK: b"\x34\x12\xff\xff"})
    assert cpu.eip == 0x1234
    assert cpu.r[ESP] == STACK + 2


def test_ret_word_imm16():
    # retw $0x4
    cpu = step(b"\x66\xc2\x04\x00", mem={STACK: b"\x34\x12"})
    assert cpu.eip == 0x1234
    assert cpu.r[ESP] == STACK + 6


def test_call_word_pushes_16_bit_ip_and_truncates_eip():
    # callw .+0x14
    cpu = step(b"\x66\xe8\x10\x00")
    assert cpu.eip == (CODE + 0x14) & 0xFFFF
    assert cpu.r[ESP] == STACK - 2
    assert cpu.rd16(STACK - 2) == (CODE + 4) & 0xFFFF
