"""String instructions: movs, stos, lods, cmps, scas, with rep/repe/repne.

Per the SDM: esi/edi step by the element size, backwards when DF is set; a
rep prefix repeats while ecx != 0, decrementing it per element (repe/repne
also stop on the first mismatch/match, after counting that element).  A
fault part-way leaves the registers describing the completed elements and
eip at the instruction, so it can be restarted.

A rep instruction may also stop between elements when the core yields (a
long copy, a page boundary); tests of those end the code with int3 and run
until it.
"""
from .insn_helpers import (
    AF, ARITH, BASE_FLAGS, CF, CODE, DATA, DF, EAX, ECX, EDI, ESI, PF, SF, TRAP, ZF, step,
)

SRC = DATA
DST = DATA + 0x100


def arith(cpu):
    return cpu.eflags & ARITH


def run_to_int3(code, **kw):
    cpu = step(code + b"\xcc", n=1000, **kw)
    assert cpu.stop.reason == TRAP and cpu.stop.trapno == 3, cpu.stop
    return cpu


# -- movs -----------------------------------------------------------------------------

def test_movsb_copies_one_byte_and_advances():
    # movsb %ds:(%esi),%es:(%edi)
    cpu = step(b"\xa4", esi=SRC, edi=DST, mem={SRC: b"\x42"})
    assert cpu.rd8(DST) == 0x42
    assert (cpu.r[ESI], cpu.r[EDI]) == (SRC + 1, DST + 1)


def test_movsl_with_df_set_steps_backwards():
    # movsl %ds:(%esi),%es:(%edi)
    cpu = step(b"\xa5", esi=SRC + 8, edi=DST + 8, eflags=BASE_FLAGS | DF,
               mem={SRC + 8: b"\x01\x02\x03\x04"})
    assert cpu.read(DST + 8, 4) == b"\x01\x02\x03\x04"
    assert (cpu.r[ESI], cpu.r[EDI]) == (SRC + 4, DST + 4)


def test_movsw_moves_two_bytes():
    # movsw %ds:(%esi),%es:(%edi)
    cpu = step(b"\x66\xa5", esi=SRC, edi=DST, mem={SRC: b"\x01\x02\x03"})
    assert cpu.read(DST, 3) == b"\x01\x02\x00"
    assert (cpu.r[ESI], cpu.r[EDI]) == (SRC + 2, DST + 2)


def test_rep_movsb_copies_ecx_bytes():
    # rep movsb %ds:(%esi),%es:(%edi)
    cpu = step(b"\xf3\xa4", esi=SRC, edi=DST, ecx=10, mem={SRC: bytes(range(1, 11))})
    assert cpu.read(DST, 11) == bytes(range(1, 11)) + b"\x00"
    assert (cpu.r[ECX], cpu.r[ESI], cpu.r[EDI]) == (0, SRC + 10, DST + 10)
    assert cpu.eip == CODE + 2


def test_rep_movsb_with_ecx_zero_does_nothing():
    # rep movsb %ds:(%esi),%es:(%edi)
    cpu = step(b"\xf3\xa4", esi=SRC, edi=DST, ecx=0, mem={SRC: b"\x99"})
    assert cpu.rd8(DST) == 0
    assert (cpu.r[ESI], cpu.r[EDI]) == (SRC, DST)
    assert cpu.eip == CODE + 2


def test_rep_movsb_with_df_set_copies_backwards():
    # rep movsb %ds:(%esi),%es:(%edi)
    cpu = step(b"\xf3\xa4", esi=SRC + 9, edi=DST + 9, ecx=10, eflags=BASE_FLAGS | DF,
               mem={SRC: bytes(range(1, 11))})
    assert cpu.read(DST, 10) == bytes(range(1, 11))
    assert (cpu.r[ECX], cpu.r[ESI], cpu.r[EDI]) == (0, SRC - 1, DST - 1)


def test_rep_movsl_copies_dwords():
    # rep movsl %ds:(%esi),%es:(%edi)
    data = bytes(range(16))
    cpu = step(b"\xf3\xa5", esi=SRC, edi=DST, ecx=4, mem={SRC: data})
    assert cpu.read(DST, 16) == data
    assert (cpu.r[ECX], cpu.r[ESI], cpu.r[EDI]) == (0, SRC + 16, DST + 16)


def test_rep_movsb_overlapping_forward_copy_replicates_the_first_byte():
    # rep movsb %ds:(%esi),%es:(%edi)    (element by element, as the SDM defines it)
    cpu = step(b"\xf3\xa4", esi=SRC, edi=SRC + 1, ecx=7, mem={SRC: b"\xab" + bytes(7)})
    assert cpu.read(SRC, 8) == b"\xab" * 8


def test_rep_movsl_across_a_page_boundary():
    # rep movsl %ds:(%esi),%es:(%edi) ; int3
    data = bytes(range(64))
    cpu = run_to_int3(b"\xf3\xa5", esi=SRC, edi=DATA + 0xFE0, ecx=16, mem={SRC: data})
    assert cpu.read(DATA + 0xFE0, 64) == data
    assert (cpu.r[ECX], cpu.r[EDI]) == (0, DATA + 0x1020)


def test_rep_movsb_fault_midway_keeps_the_progress():
    # rep movsb %ds:(%esi),%es:(%edi)    (the destination runs off the mapped pages)
    end = DATA + 0x2000
    cpu = step(b"\xf3\xa4", esi=SRC, edi=end - 4, ecx=8, mem={SRC: b"ABCDEFGH"}, n=5)
    assert cpu.stop.reason == TRAP
    assert (cpu.stop.trapno, cpu.stop.err, cpu.stop.va) == (14, 6, end)
    assert cpu.read(end - 4, 4) == b"ABCD"
    assert (cpu.r[ECX], cpu.r[ESI], cpu.r[EDI]) == (4, SRC + 4, end)
    assert cpu.eip == CODE


def test_movsb_with_es_override_on_the_source():
    # movsb %es:(%esi),%es:(%edi)
    cpu = step(b"\x26\xa4", esi=SRC, edi=DST, mem={SRC: b"\x33"})
    assert cpu.rd8(DST) == 0x33


# -- stos -----------------------------------------------------------------------------

def test_rep_stosb_fills_with_al():
    # rep stos %al,%es:(%edi)
    cpu = step(b"\xf3\xaa", eax=0x1234565A, edi=DST, ecx=16)
    assert cpu.read(DST, 17) == b"\x5a" * 16 + b"\x00"
    assert (cpu.r[ECX], cpu.r[EDI]) == (0, DST + 16)


def test_rep_stosl_fills_with_eax():
    # rep stos %eax,%es:(%edi)
    cpu = step(b"\xf3\xab", eax=0x12345678, edi=DST, ecx=3)
    assert cpu.read(DST, 12) == b"\x78\x56\x34\x12" * 3
    assert cpu.r[EDI] == DST + 12


def test_stosw_stores_ax():
    # stos %ax,%es:(%edi)
    cpu = step(b"\x66\xab", eax=0xAAAA1234, edi=DST)
    assert cpu.read(DST, 3) == b"\x34\x12\x00"
    assert cpu.r[EDI] == DST + 2


def test_rep_stosb_with_df_set_fills_downwards():
    # rep stos %al,%es:(%edi)
    cpu = step(b"\xf3\xaa", eax=0x77, edi=DST + 3, ecx=4, eflags=BASE_FLAGS | DF)
    assert cpu.read(DST - 1, 6) == b"\x00\x77\x77\x77\x77\x00"
    assert cpu.r[EDI] == DST - 1


def test_rep_stosl_across_a_page_boundary():
    # rep stos %eax,%es:(%edi) ; int3
    cpu = run_to_int3(b"\xf3\xab", eax=0xDEADBEEF, edi=DATA + 0xFF8, ecx=4)
    assert cpu.read(DATA + 0xFF8, 16) == b"\xef\xbe\xad\xde" * 4


def test_stos_leaves_flags_and_esi():
    # stos %al,%es:(%edi)
    cpu = step(b"\xaa", edi=DST, esi=5, eflags=BASE_FLAGS | ZF)
    assert arith(cpu) == ZF
    assert cpu.r[ESI] == 5


# -- lods -----------------------------------------------------------------------------

def test_lodsb_loads_al_and_advances_esi():
    # lods %ds:(%esi),%al
    cpu = step(b"\xac", eax=0x11111111, esi=SRC, mem={SRC: b"\x99"})
    assert cpu.r[EAX] == 0x11111199
    assert cpu.r[ESI] == SRC + 1


def test_lodsl_with_df_set_steps_back():
    # lods %ds:(%esi),%eax
    cpu = step(b"\xad", esi=SRC + 4, eflags=BASE_FLAGS | DF, mem={SRC + 4: b"\x01\x02\x03\x04"})
    assert cpu.r[EAX] == 0x04030201
    assert cpu.r[ESI] == SRC


def test_rep_lodsb_leaves_the_last_byte():
    # rep lods %ds:(%esi),%al
    cpu = step(b"\xf3\xac", esi=SRC, ecx=3, mem={SRC: b"\x01\x02\x03"})
    assert cpu.r[EAX] & 0xFF == 3
    assert (cpu.r[ECX], cpu.r[ESI]) == (0, SRC + 3)


# -- cmps -----------------------------------------------------------------------------

def test_cmpsb_sets_flags_of_source_minus_destination():
    # cmpsb %es:(%edi),%ds:(%esi)
    cpu = step(b"\xa6", esi=SRC, edi=DST, mem={SRC: b"\x05", DST: b"\x07"})
    assert arith(cpu) == CF | SF | AF
    assert (cpu.r[ESI], cpu.r[EDI]) == (SRC + 1, DST + 1)


def test_repe_cmpsb_stops_at_the_first_difference():
    # repz cmpsb %es:(%edi),%ds:(%esi)
    cpu = step(b"\xf3\xa6", esi=SRC, edi=DST, ecx=10, mem={SRC: b"abcX", DST: b"abcY"})
    assert (cpu.r[ECX], cpu.r[ESI], cpu.r[EDI]) == (6, SRC + 4, DST + 4)
    assert arith(cpu) == CF | SF | PF | AF
    assert cpu.eip == CODE + 2


def test_repe_cmpsb_all_equal_runs_out_with_zf_set():
    # repz cmpsb %es:(%edi),%ds:(%esi)
    cpu = step(b"\xf3\xa6", esi=SRC, edi=DST, ecx=4, mem={SRC: b"same", DST: b"same"})
    assert cpu.r[ECX] == 0
    assert arith(cpu) == ZF | PF


def test_repne_cmpsb_stops_on_the_first_equal_pair():
    # repnz cmpsb %es:(%edi),%ds:(%esi)
    cpu = step(b"\xf2\xa6", esi=SRC, edi=DST, ecx=10, mem={SRC: b"abcd", DST: b"xycz"})
    assert (cpu.r[ECX], cpu.r[ESI]) == (7, SRC + 3)
    assert arith(cpu) & ZF


def test_repe_cmpsl_compares_dwords():
    # repz cmpsl %es:(%edi),%ds:(%esi)
    cpu = step(b"\xf3\xa7", esi=SRC, edi=DST, ecx=3,
               mem={SRC: b"\x01\x00\x00\x00\x02\x00\x00\x00", DST: b"\x01\x00\x00\x00\x03\x00\x00\x00"})
    assert (cpu.r[ECX], cpu.r[ESI]) == (1, SRC + 8)
    assert arith(cpu) == CF | SF | PF | AF


def test_rep_cmpsb_with_ecx_zero_leaves_flags():
    # repz cmpsb %es:(%edi),%ds:(%esi)
    cpu = step(b"\xf3\xa6", esi=SRC, edi=DST, ecx=0, eflags=BASE_FLAGS | ARITH)
    assert arith(cpu) == ARITH
    assert (cpu.r[ESI], cpu.r[EDI]) == (SRC, DST)


# -- scas -----------------------------------------------------------------------------

def test_scasb_compares_al_with_memory():
    # scas %es:(%edi),%al
    cpu = step(b"\xae", eax=0x10, edi=DST, mem={DST: b"\x20"})
    assert arith(cpu) == CF | SF | PF
    assert cpu.r[EDI] == DST + 1


def test_repne_scasb_stops_on_match():
    # repnz scas %es:(%edi),%al          (the strlen idiom)
    cpu = step(b"\xf2\xae", eax=0, edi=DST, ecx=0xFFFFFFFF, mem={DST: b"hello\x00"})
    assert cpu.r[EDI] == DST + 6
    assert cpu.r[ECX] == 0xFFFFFFF9
    assert arith(cpu) & ZF


def test_repne_scasb_without_match_exhausts_ecx():
    # repnz scas %es:(%edi),%al
    cpu = step(b"\xf2\xae", eax=0, edi=DST, ecx=3, mem={DST: b"abc"})
    assert (cpu.r[ECX], cpu.r[EDI]) == (0, DST + 3)
    assert not arith(cpu) & ZF


def test_repe_scasl_skips_equal_dwords():
    # repz scas %es:(%edi),%eax
    cpu = step(b"\xf3\xaf", eax=7, edi=DST, ecx=5,
               mem={DST: b"\x07\x00\x00\x00\x07\x00\x00\x00\x08\x00\x00\x00"})
    assert (cpu.r[ECX], cpu.r[EDI]) == (2, DST + 12)
    assert not arith(cpu) & ZF


def test_scas_with_df_set_steps_back():
    # scas %es:(%edi),%al
    cpu = step(b"\xae", eax=0x41, edi=DST, eflags=BASE_FLAGS | DF, mem={DST: b"A"})
    assert cpu.r[EDI] == DST - 1
    assert arith(cpu) == ZF | PF
