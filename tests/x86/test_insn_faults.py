"""Faults: invalid and privileged instructions, segment loads, interrupts
other than 3 and 0x30, page faults, and the precise-fault guarantee.

A faulting instruction changes nothing (jos-abi.md, "Traps"): registers,
flags and memory are as before and eip is the faulting instruction, so it
can be restarted.  Error codes per the SDM: a segment-load #GP reports the
selector with its RPL bits cleared; a #GP from `int n` through a DPL-0 gate
reports n*8+2 (IDT bit); page faults report FEC_PR|FEC_WR|FEC_U.
"""
import pytest

from jmig.kernel.memlayout import KERNBASE, PGSIZE, ULIM

from .insn_helpers import (
    ARITH, BASE_FLAGS, CF, CODE, DATA, EAX, ECX, RO, STACK, TRAP, UNMAPPED, ZF, step,
)

FEC_PR, FEC_WR, FEC_U = 1, 2, 4


def assert_fault(cpu, trapno, err=0):
    assert cpu.stop.reason == TRAP, cpu.stop
    assert (cpu.stop.trapno, cpu.stop.err) == (trapno, err)
    assert cpu.eip == CODE
    assert cpu.stop.count == 0


# -- invalid opcodes (#UD, trap 6) -------------------------------------------------------

def test_lock_prefix_on_register_form_is_ud():
    # lock add %eax,%eax
    cpu = step(b"\xf0\x01\xc0", eax=1)
    assert_fault(cpu, 6)
    assert cpu.r[EAX] == 1


def test_lock_prefix_on_mov_is_ud():
    # lock mov %eax,(%ebx)
    cpu = step(b"\xf0\x89\x03", ebx=DATA, eax=5)
    assert_fault(cpu, 6)
    assert cpu.rd32(DATA) == 0


def test_lock_prefix_on_cmp_is_ud():
    # lock cmp %eax,(%ebx)
    cpu = step(b"\xf0\x39\x03", ebx=DATA)
    assert_fault(cpu, 6)


def test_ud2_is_ud():
    # ud2
    assert_fault(step(b"\x0f\x0b"), 6)


def test_x87_instruction_is_ud():
    # fld1
    assert_fault(step(b"\xd9\xe8"), 6)


def test_bcd_adjust_is_ud():
    # daa
    assert_fault(step(b"\x27"), 6)


def test_address_size_prefix_is_ud():
    # addr16 mov (%bx,%si),%eax
    assert_fault(step(b"\x67\x8b\x00"), 6)


def test_lea_with_register_operand_is_ud():
    # lea %eax,%eax        (8d c0 has no memory operand)
    assert_fault(step(b"\x8d\xc0"), 6)


def test_mov_to_cs_is_ud():
    # mov %eax,%cs
    assert_fault(step(b"\x8e\xc8", eax=0x1B), 6)


def test_sysenter_is_ud():
    # sysenter
    assert_fault(step(b"\x0f\x34"), 6)


# -- privileged and I/O instructions (#GP(0), trap 13) ---------------------------------

@pytest.mark.parametrize("code", [
    b"\xe4\x60",        # in $0x60,%al
    b"\xec",            # in (%dx),%al
    b"\xe6\x80",        # out %al,$0x80
    b"\xee",            # out %al,(%dx)
    b"\x6c",            # insb (%dx),%es:(%edi)
    b"\x6e",            # outsb %ds:(%esi),(%dx)
], ids=["in-imm", "in-dx", "out-imm", "out-dx", "ins", "outs"])
def test_in_traps_gp(code):
    cpu = step(code, eax=0x1234, edx=0x60)
    assert_fault(cpu, 13, 0)
    assert cpu.r[EAX] == 0x1234


def test_hlt_traps_gp():
    # hlt
    assert_fault(step(b"\xf4"), 13, 0)


def test_cli_traps_gp():
    # cli
    cpu = step(b"\xfa")
    assert_fault(cpu, 13, 0)
    assert cpu.eflags & 0x200


def test_sti_traps_gp():
    # sti
    assert_fault(step(b"\xfb"), 13, 0)


def test_lgdt_traps_gp():
    # lgdtl (%eax)
    assert_fault(step(b"\x0f\x01\x10", eax=DATA), 13, 0)


def test_mov_to_cr3_traps_gp():
    # mov %eax,%cr3
    assert_fault(step(b"\x0f\x22\xd8"), 13, 0)


def test_wrmsr_traps_gp():
    # wrmsr
    assert_fault(step(b"\x0f\x30"), 13, 0)


# -- software interrupts --------------------------------------------------------------------

def test_int_0x80_traps_gp_with_idt_error_code():
    # int $0x80
    cpu = step(b"\xcd\x80", eax=1)
    assert_fault(cpu, 13, 0x80 * 8 + 2)
    assert cpu.r[EAX] == 1


def test_int_0x0e_traps_gp_rather_than_faking_a_page_fault():
    # int $0xe
    assert_fault(step(b"\xcd\x0e"), 13, 0x0E * 8 + 2)


def test_int_0_traps_gp():
    # int $0x0
    assert_fault(step(b"\xcd\x00"), 13, 2)


# -- segment loads --------------------------------------------------------------------------

def test_mov_0x28_to_ds_traps_gp_with_selector_error():
    # mov %eax,%ds
    cpu = step(b"\x8e\xd8", eax=0x28)
    assert_fault(cpu, 13, 0x28)


def test_mov_selector_with_rpl_to_ds_reports_the_index_bits():
    # mov %eax,%ds
    assert_fault(step(b"\x8e\xd8", eax=0x2B), 13, 0x28)


def test_mov_kernel_data_selector_to_es_traps_gp():
    # mov %eax,%es
    assert_fault(step(b"\x8e\xc0", eax=0x10), 13, 0x10)


def test_mov_null_selector_to_ds_traps_gp_by_jmig_choice():
    # mov %eax,%ds         (the SDM lets a null selector into ds/es/fs/gs and faults
    #                       only on a later access; jmig keeps segments flat and does
    #                       not track selectors, so it refuses the load: docs/cpu.md)
    cpu = step(b"\x8e\xd8", eax=0)
    assert cpu.stop.reason == "trap"
    assert cpu.stop.trapno == 13 and cpu.stop.err == 0
    assert cpu.eip == CODE


def test_mov_null_selector_to_ss_traps_gp():
    # mov %eax,%ss
    assert_fault(step(b"\x8e\xd0", eax=0), 13, 0)


def test_pop_ss_with_the_code_selector_traps_gp():
    # pop %ss
    cpu = step(b"\x17", mem={STACK: b"\x1b\x00\x00\x00"})
    assert_fault(cpu, 13, 0x18)
    assert cpu.r[4] == STACK


def test_mov_to_ds_from_unmapped_memory_page_faults():
    # mov (%ebx),%ds
    cpu = step(b"\x8e\x1b", ebx=UNMAPPED)
    assert_fault(cpu, 14, FEC_U)


# -- page faults ---------------------------------------------------------------------------

def test_read_of_unmapped_page_faults_user_not_present():
    # mov (%ebx),%eax
    cpu = step(b"\x8b\x03", ebx=UNMAPPED + 0x10, eax=7)
    assert_fault(cpu, 14, FEC_U)
    assert cpu.stop.va == UNMAPPED + 0x10
    assert cpu.r[EAX] == 7


def test_write_to_unmapped_page_faults_with_write_bit():
    # mov %eax,(%ebx)
    cpu = step(b"\x89\x03", ebx=UNMAPPED)
    assert_fault(cpu, 14, FEC_U | FEC_WR)
    assert cpu.stop.va == UNMAPPED


def test_write_to_readonly_page_faults_with_protection_bit():
    # mov %eax,(%ebx)
    cpu = step(b"\x89\x03", ebx=RO + 8, eax=0xFFFFFFFF)
    assert_fault(cpu, 14, FEC_PR | FEC_WR | FEC_U)
    assert cpu.stop.va == RO + 8
    assert cpu.read(RO + 8, 4) == b"\x08\x09\x0a\x0b"


def test_read_of_readonly_page_is_allowed():
    # mov (%ebx),%eax
    cpu = step(b"\x8b\x03", ebx=RO + 4)
    assert cpu.r[EAX] == 0x07060504


def test_read_of_kernel_memory_faults_with_protection_bit():
    # mov (%ebx),%eax
    cpu = step(b"\x8b\x03", ebx=KERNBASE)
    assert_fault(cpu, 14, FEC_PR | FEC_U)
    assert cpu.stop.va == KERNBASE


def test_read_at_ulim_faults():
    # mov (%ebx),%eax
    cpu = step(b"\x8b\x03", ebx=ULIM)
    assert cpu.stop.trapno == 14
    assert cpu.stop.err & FEC_U


def test_add_to_readonly_memory_leaves_flags_and_memory():
    # add %eax,(%ebx)
    cpu = step(b"\x01\x03", ebx=RO, eax=1, eflags=BASE_FLAGS | ZF | CF)
    assert_fault(cpu, 14, FEC_PR | FEC_WR | FEC_U)
    assert cpu.eflags & ARITH == ZF | CF
    assert cpu.rd8(RO) == 0


def test_xchg_with_readonly_memory_keeps_the_register():
    # xchg %eax,(%ebx)
    cpu = step(b"\x87\x03", ebx=RO, eax=0x55555555)
    assert_fault(cpu, 14, FEC_PR | FEC_WR | FEC_U)
    assert cpu.r[EAX] == 0x55555555


def test_straddling_write_with_unmapped_second_page_writes_nothing():
    # mov %eax,(%ebx)
    end = DATA + 2 * PGSIZE
    cpu = step(b"\x89\x03", ebx=end - 2, eax=0x44332211, mem={end - 2: b"\xaa\xbb"})
    assert_fault(cpu, 14, FEC_U | FEC_WR)
    assert cpu.stop.va == end
    assert cpu.read(end - 2, 2) == b"\xaa\xbb"


def test_straddling_read_with_unmapped_second_page_faults_at_the_second_page():
    # mov (%ebx),%eax
    end = DATA + 2 * PGSIZE
    cpu = step(b"\x8b\x03", ebx=end - 1)
    assert_fault(cpu, 14, FEC_U)
    assert cpu.stop.va == end


def test_cmpxchg_fault_leaves_eax():
    # cmpxchg %ecx,(%ebx)
    cpu = step(b"\x0f\xb1\x0b", ebx=RO, eax=0x03020100, ecx=9)
    assert_fault(cpu, 14, FEC_PR | FEC_WR | FEC_U)
    assert cpu.r[EAX] == 0x03020100


# -- instruction fetch ---------------------------------------------------------------------

def test_execute_from_unmapped_page_faults_at_eip():
    cpu = step(b"", eip=UNMAPPED)
    assert cpu.stop.reason == TRAP
    assert (cpu.stop.trapno, cpu.stop.err, cpu.stop.va) == (14, FEC_U, UNMAPPED)
    assert cpu.eip == UNMAPPED


def test_instruction_running_into_an_unmapped_page_faults_on_that_page():
    # mov $0x...,%eax      (only its first two bytes are mapped)
    end = DATA + 2 * PGSIZE
    cpu = step(b"\xb8\x01", eip=end - 2, eax=3)
    assert cpu.stop.reason == TRAP
    assert (cpu.stop.trapno, cpu.stop.va) == (14, end)
    assert cpu.eip == end - 2
    assert cpu.r[EAX] == 3


def test_instruction_longer_than_15_bytes_traps_gp():
    # es es ... es nop     (16 bytes)
    cpu = step(b"\x26" * 15 + b"\x90")
    assert_fault(cpu, 13, 0)


def test_fifteen_byte_instruction_is_fine():
    # es es ... es nop     (15 bytes)
    cpu = step(b"\x26" * 14 + b"\x90")
    assert cpu.stop.reason == "budget"
    assert cpu.eip == CODE + 15


def test_fault_in_the_second_instruction_keeps_the_first():
    # mov $0x5,%eax ; mov (%ebx),%ecx
    cpu = step(b"\xb8\x05\x00\x00\x00\x8b\x0b", ebx=UNMAPPED, ecx=1, n=2)
    assert cpu.stop.reason == TRAP
    assert cpu.stop.count == 1
    assert cpu.eip == CODE + 5
    assert (cpu.r[EAX], cpu.r[ECX]) == (5, 1)


def test_divide_error_after_flag_setting_keeps_those_flags():
    # stc ; div %ecx
    cpu = step(b"\xf9\xf7\xf1", ecx=0, n=2)
    assert cpu.stop.trapno == 0
    assert cpu.eip == CODE + 1
    assert cpu.eflags & CF
