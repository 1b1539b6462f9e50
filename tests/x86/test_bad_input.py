"""Garbage, undefined and cut-off instructions.

  - Random bytes: every run completes instructions or stops with a trap or
    a syscall; never INTERNAL (a core bug) and never a Python exception.
    The same bytes also run in lockstep with Unicorn for as long as the
    instructions are ones both model alike (see `comparable`).
  - Undefined or unimplemented opcodes raise #UD (trap 6) with eip on the
    instruction and nothing changed.
  - An instruction cut off by an unmapped page faults with va = the start
    of that page, eip on the instruction.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jmig.kernel.memlayout import FEC_U, PGSIZE, PTE_U, PTE_W
from jmig.kernel.pmap import AddressSpace, PhysMem
from jmig.kernel.x86.cpu import BUDGET, INTERNAL, REMOTE, SYSCALL, TRAP, Cpu, run
from jmig.kernel.x86.decode import STRING_OPS
from jmig.kernel.x86.insn import SREG

from .unicorn_ref import Comparer, Machine, make_machine, run_both

CODE = 0x800000
DATA = 0x900000

_SETTINGS = settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))


def _machine(code: bytes, regs, writable_code: bool) -> tuple[Cpu, AddressSpace]:
    ph = PhysMem(32)
    a = AddressSpace(ph)
    for va, w in ((CODE, writable_code), (CODE + PGSIZE, writable_code), (DATA, True),
                  (DATA + PGSIZE, True), (DATA + 2 * PGSIZE, False)):
        pfn = ph.page_alloc()
        base = pfn << 12
        if va == CODE:
            ph.mem[base:base + len(code)] = code
        else:
            ph.mem[base:base + PGSIZE] = bytes((k * 13 + 7) & 0xFF for k in range(PGSIZE))
        assert a.page_insert(pfn, va, PTE_U | (PTE_W if w else 0))
    return Cpu(regs, CODE), a


REGS = st.lists(st.one_of(st.integers(0, 2**32 - 1), st.integers(DATA, DATA + 3 * PGSIZE),
                          st.integers(0, 64)), min_size=8, max_size=8)


@pytest.mark.slow
@_SETTINGS
@given(st.binary(min_size=1, max_size=200), REGS, st.booleans(), st.integers(0, 0xFFF))
def test_garbage_never_breaks_the_core(code, regs, writable_code, flags):
    """Run up to 400 instructions of random bytes; after a fault, skip one
    byte and go on, as a handler might.  The code pages are writable in
    half the runs, so garbage also rewrites itself."""
    regs[4] = DATA + PGSIZE + (regs[4] & 0x7FC)       # a usable stack, usually
    c, a = _machine(code, regs, writable_code)
    c.eflags = 0x202 | (flags & 0xCD5)
    left = 400
    while left > 0:
        try:
            st_ = run(c, a, left)
        except Exception as e:                      # run() must never raise
            raise AssertionError(f"run() raised {type(e).__name__}: {e} at eip {c.eip:#x} "
                                 f"on {code.hex()}") from e
        assert st_.reason != INTERNAL, f"core bug at eip {c.eip:#x}: {st_.detail} ({code.hex()})"
        assert st_.reason in (BUDGET, SYSCALL, TRAP), st_
        assert 0 <= c.eip <= 0xFFFFFFFF and all(0 <= v <= 0xFFFFFFFF for v in c.r)
        assert 0 <= c.eflags <= 0xFFFFFFFF and c.eflags & 2
        left -= max(st_.count, 1)
        if st_.reason == TRAP and st_.trapno not in (3,):
            c.eip = (c.eip + 1) & 0xFFFFFFFF


def comparable(insn) -> bool:
    """Instructions that jmig's core (a JOS env at CPL 3) and Unicorn (CPL 0,
    its own segments, a newer CPU) are meant to execute alike.  "(bad)"
    ones are left to the comparer (its rule: ours #UD/#GP ends the run)."""
    raw = insn.raw
    op = insn.op
    if op == "(bad)":
        return True
    if op == "movsr" or any(o.kind == SREG for o in insn.ops):
        return False                     # segment registers: JOS's selectors
    if op == "int" and insn.ops[0].imm not in (3, 0x30):
        return False                     # #GP in a JOS env
    k = 0
    rep = False
    while raw[k] in (0x66, 0xF2, 0xF3, 0xF0, 0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65):
        rep |= raw[k] in (0xF2, 0xF3)
        k += 1
    if rep and op not in STRING_OPS and op != "pause" and raw[-4:] != b"\xf3\x0f\x1e\xfb":
        return False                     # f2/f3 make other instructions on newer CPUs
    opc = raw[k:k + 2]
    if op == "bswap" and insn.size == 2:
        return False                     # undefined
    if opc[:1] in (b"\xf6", b"\xf7") and (opc[1] >> 3) & 7 == 1:
        return False                     # undocumented test alias; Unicorn: #UD
    if opc in (b"\x0f\x0d",) or (opc == b"\x0f\x18" and opc[1:] and raw[k + 2] >> 6 == 3):
        return False                     # prefetch hint space: model-specific
    if op == "nop" and opc[:1] == b"\x0f" and opc[1:2] == b"\x1e":
        return False                     # 0f 1e: CET instructions on newer CPUs
    return True


@pytest.mark.slow
@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(min_size=1, max_size=64), REGS, st.integers(0, 0xFFF))
def test_garbage_agrees_with_unicorn(code, regs, flags):
    regs[4] = DATA + PGSIZE + (regs[4] & 0x7FC)
    data = {DATA + k * PGSIZE: (bytes((j * 13 + 7) & 0xFF for j in range(PGSIZE)), k < 2)
            for k in range(3)}
    m = make_machine(code + bytes(PGSIZE - len(code)), data=data, regs=regs,
                     eflags=0x202 | (flags & 0xCD5))
    m.code = (CODE, code)
    cmp = Comparer(m)
    cmp.comparable = comparable
    cmp.run(60)


# -- undefined opcodes ----------------------------------------------------------------------

UNDEFINED = [
    "0f0b",                 # ud2
    "d8c0", "d9e8", "da00", "dbe3", "dc0b", "ddd8", "de c9", "dfe0",       # x87
    "0fa2", "0f31", "0f34", "0f05", "0f0b",                 # cpuid rdtsc sysenter syscall ud2
    "27", "2f", "37", "3f", "d40a", "d50a",                 # BCD adjust
    "6200", "6300", "c400", "c500",                         # bound arpl les lds
    "9a000000002300", "ea000000002300", "ca0400", "cb",     # far call/jmp/ret
    "ce", "f1",                                             # into icebp
    "678b03", "8dc0", "c6c800", "c7c800000000", "8fc8",     # 67 prefix, lea reg, bad /r
    "fe10", "ff18", "ff28", "ff38", "0fbac000", "0f1000", "0f6f00", "0fc708", "0fff",
    "f0 01c0", "f0 8b03", "f0 90",                          # misplaced lock
]


@pytest.mark.parametrize("code", UNDEFINED)
def test_undefined_opcodes_are_ud(code):
    raw = bytes.fromhex(code.replace(" ", ""))
    regs = [1, 2, 3, DATA, DATA + 0x800, 6, DATA + 0x100, DATA + 0x200]
    c, a = _machine(raw, regs, False)
    before = (list(c.r), c.eflags, a.read(DATA, 2 * PGSIZE))
    st_ = run(c, a, 1)
    assert (st_.reason, st_.trapno, st_.count) == (TRAP, 6, 0), st_
    assert c.eip == CODE
    assert (list(c.r), c.eflags, a.read(DATA, 2 * PGSIZE)) == before


@pytest.mark.parametrize("code", ["0f0b", "8dc0", "f0 01c0", "f0 3903"])
def test_undefined_opcodes_agree_with_unicorn(code):
    m = make_machine(bytes.fromhex(code.replace(" ", "")),
                     data={DATA: (None, True)}, regs=[0, 0, 0, DATA, DATA + 0x800, 0, 0, 0])
    res = run_both(m, 5)
    assert (res.reason, res.outcome.trapno) == ("fault", 6)


# -- instructions cut off by an unmapped page -----------------------------------------------

CUT = [
    "b8 11223344",          # mov $imm32, %eax
    "8b 83 44332211",       # mov disp32(%ebx), %eax
    "8b 04 8d 00009000",    # mov 0x900000(,%ecx,4), %eax
    "66 c7 03 3412",        # movw $imm16, (%ebx)
    "0f 84 00000000",       # je rel32
    "0f af c1",             # imul %ecx, %eax
    "f3 a5",                # rep movsl
    "66 f3 0f 1e fb",       # prefixes, then endbr32
    "e8 00000000",          # call
    "c2 0800",              # ret $8
    "c8 0800 01",           # enter
    "69 c0 44332211",       # imul $imm32, %eax, %eax
]


@pytest.mark.parametrize("code", CUT)
def test_instruction_cut_off_by_an_unmapped_page(code):
    raw = bytes.fromhex(code.replace(" ", ""))
    for cut in range(1, len(raw)):
        start = CODE + PGSIZE - cut
        page = bytearray(b"\x90" * PGSIZE)
        page[PGSIZE - cut:] = raw[:cut]
        m = Machine(eip=start, regs=[0, 1, 0, DATA, DATA + 0x800, DATA + 0x800, DATA, DATA + 8],
                    eflags=0x246)
        m.map(CODE, bytes(page), False)
        m.map(DATA, None, True)
        m.code = (start, raw[:cut])
        res = run_both(m, 5)
        out = res.outcome
        assert res.reason == "fault" and res.steps == 0, (code, cut, res.reason)
        assert (out.trapno, out.va, out.write, out.present) == (14, CODE + PGSIZE, False, False)
        c = res.ours.cpu
        assert c.eip == start and c.r == m.regs and c.eflags == m.eflags
        # And the core alone reports the FEC bits of a user read.
        c2 = Cpu(m.regs, start, m.eflags)
        ph = PhysMem(8)
        a = AddressSpace(ph)
        pfn = ph.page_alloc()
        ph.mem[pfn << 12:(pfn + 1) << 12] = page
        a.page_insert(pfn, CODE, PTE_U)
        st_ = run(c2, a, 1)
        assert (st_.reason, st_.trapno, st_.va, st_.err) == (TRAP, 14, CODE + PGSIZE, FEC_U)
        assert c2.eip == start


def test_instruction_ending_exactly_at_the_page_end_runs():
    """A 5-byte mov whose last byte is the page's last byte completes; the
    next fetch then faults at the start of the unmapped page."""
    page = bytearray(b"\x90" * PGSIZE)
    page[PGSIZE - 5:] = bytes.fromhex("b844332211")
    m = Machine(eip=CODE + PGSIZE - 5, regs=[0] * 8, eflags=0x202)
    m.map(CODE, bytes(page), False)
    res = run_both(m, 5)
    assert res.reason == "fault" and res.steps == 1
    assert res.ours.cpu.r[0] == 0x11223344 and res.ours.cpu.eip == CODE + PGSIZE
    assert res.outcome.va == CODE + PGSIZE


def test_straddling_instruction_sees_its_second_page_change():
    """An instruction cached from two pages re-reads its second page: a
    new byte there, or the page unmapped, takes effect."""
    ph = PhysMem(16)
    a = AddressSpace(ph)
    frames = {}
    for va in (CODE, CODE + PGSIZE):
        frames[va] = ph.page_alloc()
        a.page_insert(frames[va], va, PTE_U | PTE_W)
    start = CODE + PGSIZE - 2
    a.write(start, bytes.fromhex("b8 11223344 cd30"))
    c = Cpu([0] * 8, start)
    assert run(c, a, 5).reason == SYSCALL and c.r[0] == 0x44332211
    a.write(CODE + PGSIZE, b"\x55")                # the second page: new immediate byte
    c.eip = start
    assert run(c, a, 5).reason == SYSCALL and c.r[0] == 0x44335511
    a.page_remove(CODE + PGSIZE)
    c.eip = start
    st_ = run(c, a, 5)
    assert (st_.reason, st_.trapno, st_.va, st_.err) == (TRAP, 14, CODE + PGSIZE, FEC_U)
    assert c.eip == start and c.r[0] == 0x44335511


def test_an_instruction_already_run_is_decoded_again_once_its_bytes_change():
    """The interpreter caches a decoded instruction in its frame and marks
    its bytes as code; a store over them (the guest's own, or the
    kernel's) drops the cache, so the next run executes the new bytes."""
    ph = PhysMem(16)
    a = AddressSpace(ph)
    a.page_insert(ph.page_alloc(), CODE, PTE_U | PTE_W)
    start = CODE + 0x100                              # mid-page
    # mov $0x44332211,%eax; int $0x30; movb $0x55,1(%ebx); int $0x30
    a.write(start, bytes.fromhex("b8 11223344 cd30" "c6 43 01 55 cd30"))
    c = Cpu([0, 0, 0, start, 0, 0, 0, 0], start)
    assert run(c, a, 5).reason == SYSCALL and c.r[0] == 0x44332211
    c.eip = start + 7                                 # the guest's store over the mov's immediate
    assert run(c, a, 5).reason == SYSCALL
    c.eip = start
    assert run(c, a, 5).reason == SYSCALL and c.r[0] == 0x44332255
    a.write(start + 4, b"\x66")                       # the kernel's write (e.g. a restored page)
    c.eip = start
    assert run(c, a, 5).reason == SYSCALL and c.r[0] == 0x66332255


def test_self_modifying_code_agrees_with_unicorn():
    """A store into the next instruction: both execute the new bytes."""
    # mov $0x90909090, 6(%eip-relative via ebx) ; the patched instruction
    code = bytes.fromhex("c7 43 0a b8 78 56 34" "66 90" "90" "b8 11223344" "cd30")
    # ebx = CODE: movl $0x345678b8, 0xa(%ebx) rewrites the 4 bytes at CODE+0xa:
    # `b8 11223344` becomes `b8 78563444`.
    m = make_machine(code, regs=[0, 0, 0, CODE, DATA + 0x800, 0, 0, 0], ro_code=False)
    res = run_both(m, 20)
    assert res.reason == "syscall"
    assert res.ours.cpu.r[0] == 0x44345678


def test_remote_stop_is_never_seen_without_remote_pages():
    c, a = _machine(bytes.fromhex("8b03cd30"), [0, 0, 0, DATA, DATA + 0x800, 0, 0, 0], False)
    st_ = run(c, a, 5)
    assert st_.reason == SYSCALL and st_.reason != REMOTE


@pytest.mark.parametrize("frame_parity", [0, 1])
def test_fetch_near_the_page_end_in_odd_and_even_frames(frame_parity):
    """The last bytes of a page decode the same whatever frame holds it
    (AddressSpace.fetch once cut the page short for odd frame numbers)."""
    ph = PhysMem(16)
    a = AddressSpace(ph)
    pfn = ph.page_alloc()
    if pfn % 2 != frame_parity:
        pfn = ph.page_alloc()
    page = bytearray(b"\x90" * PGSIZE)
    page[PGSIZE - 7:] = bytes.fromhex("b844332211" "cd30")
    ph.mem[pfn << 12:(pfn + 1) << 12] = page
    assert a.page_insert(pfn, CODE, PTE_U)
    c = Cpu([0] * 8, CODE + PGSIZE - 7)
    st_ = run(c, a, 5)
    assert st_.reason == SYSCALL and c.r[0] == 0x11223344
