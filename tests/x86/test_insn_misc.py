"""Everything else: nops, flag instructions, lahf/sahf, xlat, int3 and
int $0x30, segment register moves, and a short function as a whole.

Segment registers: a JOS env runs with cs = 0x1b and ds = es = ss = 0x23;
JOS's env_init_percpu() also leaves fs and gs holding the user data
selector 0x23 ("The kernel never uses GS or FS, so we leave those set to
the user data segment"), so fs/gs overrides address the same flat memory.
"""
from jmig.kernel.x86 import cpu as core
from jmig.kernel.x86.decode import decode

from .insn_helpers import (
    AF, ARITH, BASE_FLAGS, CF, CODE, DATA, DF, EAX, EBP, EBX, ECX, EDX, ESI, ESP, OF, PF,
    SF, STACK, SYSCALL, TRAP, UNMAPPED, ZF, step,
)


def arith(cpu):
    return cpu.eflags & ARITH


# -- nops -----------------------------------------------------------------------------

def test_nop_only_advances_eip():
    # nop
    cpu = step(b"\x90", eax=1, eflags=BASE_FLAGS | CF)
    assert cpu.eip == CODE + 1
    assert cpu.r[EAX] == 1
    assert arith(cpu) == CF


def test_xchg_ax_ax_is_a_two_byte_nop():
    # xchg %ax,%ax
    cpu = step(b"\x66\x90", eax=0x12345678)
    assert cpu.eip == CODE + 2
    assert cpu.r[EAX] == 0x12345678


def test_pause_is_a_nop():
    # pause
    cpu = step(b"\xf3\x90", eax=3)
    assert cpu.eip == CODE + 2
    assert cpu.r[EAX] == 3


def test_endbr32_is_a_nop():
    # endbr32
    cpu = step(b"\xf3\x0f\x1e\xfb", ebx=7)
    assert cpu.eip == CODE + 4
    assert cpu.r[EBX] == 7
    assert cpu.stop.reason == "budget"


def test_nopl_does_not_touch_its_memory_operand():
    # nopl 0x0(%eax)
    cpu = step(b"\x0f\x1f\x80\x00\x00\x00\x00", eax=UNMAPPED)
    assert cpu.stop.reason == "budget"
    assert cpu.eip == CODE + 7


def test_nopw_with_cs_prefix_is_ten_bytes():
    # nopw %cs:0x0(%eax,%eax,1)
    cpu = step(b"\x66\x2e\x0f\x1f\x84\x00\x00\x00\x00\x00")
    assert cpu.eip == CODE + 10


def test_lea_padding_leaves_esi():
    # lea 0x0(%esi,%eiz,1),%esi
    cpu = step(b"\x8d\xb4\x26\x00\x00\x00\x00", esi=0x1234)
    assert cpu.r[ESI] == 0x1234
    assert cpu.eip == CODE + 7


# -- flag instructions -------------------------------------------------------------------

def test_std_sets_df():
    # std
    cpu = step(b"\xfd")
    assert cpu.eflags & DF


def test_cld_clears_df():
    # cld
    cpu = step(b"\xfc", eflags=BASE_FLAGS | DF | CF)
    assert not cpu.eflags & DF
    assert arith(cpu) == CF


def test_stc_sets_only_cf():
    # stc
    cpu = step(b"\xf9", eflags=BASE_FLAGS | ZF)
    assert arith(cpu) == CF | ZF


def test_clc_clears_only_cf():
    # clc
    cpu = step(b"\xf8", eflags=BASE_FLAGS | CF | SF)
    assert arith(cpu) == SF


def test_cmc_complements_cf():
    # cmc
    cpu = step(b"\xf5", eflags=BASE_FLAGS | OF)
    assert arith(cpu) == OF | CF


def test_cmc_after_arithmetic_keeps_the_other_flags():
    # add %ebx,%eax ; cmc
    cpu = step(b"\x01\xd8\xf5", eax=0xFFFFFFFF, ebx=1, n=2)
    assert arith(cpu) == ZF | PF | AF


def test_clc_after_compare_keeps_the_other_flags():
    # cmp %ebx,%eax ; clc
    cpu = step(b"\x39\xd8\xf8", eax=1, ebx=2, n=2)
    assert arith(cpu) == SF | PF | AF


def test_lahf_loads_sf_zf_af_pf_cf_into_ah():
    # lahf
    cpu = step(b"\x9f", eax=0x12345678, eflags=BASE_FLAGS | SF | ZF | AF | PF | CF | OF)
    assert cpu.r[EAX] == 0x1234D778


def test_lahf_with_no_flags_has_only_bit_1():
    # lahf
    cpu = step(b"\x9f", eax=0xFFFFFFFF)
    assert cpu.r[EAX] == 0xFFFF02FF


def test_lahf_after_compare():
    # cmp %ebx,%eax ; lahf
    cpu = step(b"\x39\xd8\x9f", eax=5, ebx=5, n=2)
    assert (cpu.r[EAX] >> 8) & 0xFF == 0x46


def test_sahf_stores_ah_into_the_low_flags_and_keeps_of():
    # sahf
    cpu = step(b"\x9e", eax=0xFF00, eflags=BASE_FLAGS | OF)
    assert arith(cpu) == SF | ZF | AF | PF | CF | OF


def test_sahf_with_zero_clears_them():
    # sahf
    cpu = step(b"\x9e", eax=0x0000, eflags=BASE_FLAGS | ARITH)
    assert arith(cpu) == OF
    assert cpu.eflags & 2


# -- xlat -----------------------------------------------------------------------------

def test_xlat_looks_up_al_in_the_table_at_ebx():
    # xlat %ds:(%ebx)
    cpu = step(b"\xd7", eax=0xAABBCC05, ebx=DATA, mem={DATA: b"abcdefgh"})
    assert cpu.r[EAX] == 0xAABBCC66


def test_xlat_index_is_unsigned():
    # xlat %ds:(%ebx)
    cpu = step(b"\xd7", eax=0xFF, ebx=DATA, mem={DATA + 0xFF: b"\x42"})
    assert cpu.r[EAX] == 0x42


# -- int3, int $0x30 ----------------------------------------------------------------------

def test_int3_traps_after_the_instruction():
    # int3
    cpu = step(b"\xcc", eax=9)
    assert cpu.stop.reason == TRAP
    assert cpu.stop.trapno == 3
    assert cpu.stop.count == 1
    assert cpu.eip == CODE + 1
    assert cpu.r[EAX] == 9


def test_int_3_long_form_is_a_breakpoint():
    # int $0x3
    cpu = step(b"\xcd\x03")
    assert (cpu.stop.reason, cpu.stop.trapno) == (TRAP, 3)
    assert cpu.eip == CODE + 2


def test_int_0x30_is_a_syscall_with_eip_after():
    # int $0x30
    cpu = step(b"\xcd\x30", eax=2, edx=3, ecx=4, ebx=5, eflags=BASE_FLAGS | ZF)
    assert cpu.stop.reason == SYSCALL
    assert cpu.stop.count == 1
    assert cpu.eip == CODE + 2
    assert cpu.r[:4] == [2, 4, 3, 5]
    assert arith(cpu) == ZF


def test_syscall_after_other_instructions_counts_them():
    # mov $0x2,%eax ; int $0x30
    cpu = step(b"\xb8\x02\x00\x00\x00\xcd\x30", n=10)
    assert cpu.stop.reason == SYSCALL
    assert cpu.stop.count == 2
    assert cpu.r[EAX] == 2


# -- segment registers -------------------------------------------------------------------

def test_mov_ds_to_register_reads_the_user_selector():
    # mov %ds,%eax         (P6 and later zero the upper half)
    cpu = step(b"\x8c\xd8", eax=0xFFFFFFFF)
    assert cpu.r[EAX] == 0x23


def test_mov_cs_to_register_reads_the_user_code_selector():
    # mov %cs,%eax
    cpu = step(b"\x8c\xc8")
    assert cpu.r[EAX] == 0x1B


def test_mov_ss_to_memory_writes_16_bits():
    # mov %ss,(%ebx)
    cpu = step(b"\x8c\x13", ebx=DATA, mem={DATA: b"\xff\xff\xff\xff"})
    assert cpu.read(DATA, 4) == b"\x23\x00\xff\xff"


def test_mov_ds_to_word_register_keeps_upper_half():
    # mov %ds,%bx
    cpu = step(b"\x66\x8c\xdb", ebx=0xAAAAAAAA)
    assert cpu.r[EBX] == 0xAAAA0023


def test_mov_user_data_selector_to_ds():
    # mov %eax,%ds
    cpu = step(b"\x8e\xd8", eax=0x23)
    assert cpu.stop.reason == "budget"
    assert cpu.eip == CODE + 2


def test_mov_es_from_memory():
    # mov (%ebx),%es
    cpu = step(b"\x8e\x03", ebx=DATA, mem={DATA: b"\x23\x00"})
    assert cpu.stop.reason == "budget"


def test_mov_fs_to_register_reads_the_user_data_selector():
    # mov %fs,%eax         (JOS leaves fs = GD_UD|3)
    cpu = step(b"\x8c\xe0")
    assert cpu.r[EAX] == 0x23


def test_fs_override_addresses_flat_memory():
    # mov %fs:(%ebx),%eax
    cpu = step(b"\x64\x8b\x03", ebx=DATA, mem={DATA: b"\x11\x22\x33\x44"})
    assert cpu.stop.reason == "budget"
    assert cpu.r[EAX] == 0x44332211


def test_gs_override_addresses_flat_memory():
    # mov %eax,%gs:0x900000
    cpu = step(b"\x65\xa3\x00\x00\x90\x00", eax=0x01020304)
    assert cpu.stop.reason == "budget"
    assert cpu.rd32(DATA) == 0x01020304


def test_mov_user_data_selector_to_fs_is_allowed():
    # mov %eax,%fs
    cpu = step(b"\x8e\xe0", eax=0x23)
    assert cpu.stop.reason == "budget"


def test_other_segment_overrides_address_flat_memory():
    # mov %es:(%ebx),%eax ; mov %cs:0x4(%ebx),%ecx ; mov %ss:0x8(%ebx),%edx
    cpu = step(b"\x26\x8b\x03\x2e\x8b\x4b\x04\x36\x8b\x53\x08", ebx=DATA, n=3,
               mem={DATA: b"\x01\x00\x00\x00\x02\x00\x00\x00\x03\x00\x00\x00"})
    assert (cpu.r[EAX], cpu.r[ECX], cpu.r[EDX]) == (1, 2, 3)


# -- a whole function ----------------------------------------------------------------------

def test_a_small_function_runs_to_its_return():
    # int sum(int a, int b) { return a + b; } called as sum(2, 40):
    #   push $0x28 ; push $0x2 ; call .+0x7 ; int3 ; nop
    #   push %ebp ; mov %esp,%ebp ; mov 0xc(%ebp),%eax ; add 0x8(%ebp),%eax ; pop %ebp ; ret
    code = (b"\x6a\x28\x6a\x02\xe8\x02\x00\x00\x00\xcc\x90"
            b"\x55\x89\xe5\x8b\x45\x0c\x03\x45\x08\x5d\xc3")
    cpu = step(code, n=100, ebp=0x5555)
    assert (cpu.stop.reason, cpu.stop.trapno) == (TRAP, 3)
    assert cpu.r[EAX] == 42
    assert cpu.r[ESP] == STACK - 8
    assert cpu.r[EBP] == 0x5555
    assert cpu.stop.count == 10


def test_instructions_that_differ_in_literals_share_code_and_keep_their_own_values():
    """compile_insn compiles each shape once (cpu._SHAPES): `mov $imm, %eax`
    at two addresses is one code object with two sets of literals."""
    one = core.compile_insn(decode(bytes.fromhex("b801000000"), 0x800000))
    two = core.compile_insn(decode(bytes.fromhex("b8feffffff"), 0x900010))
    assert one.__code__ is two.__code__
    c = core.Cpu()
    assert one(c, c.r, None) == 0x800005 and c.r[0] == 1
    assert two(c, c.r, None) == 0x900015 and c.r[0] == 0xFFFFFFFE
