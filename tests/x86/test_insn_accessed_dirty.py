"""The accessed (A) and dirty (D) bits of the PTEs an instruction touches.

Pre-copy migration sends again exactly the pages whose D bit a write set
(pmap.take_changes), so a write that sets A and not D loses data
silently.  Each case runs one instruction on every engine
(tests/x86/conftest.py) with A and D clear on the data, read-only and
stack pages (step(fresh_ad=True)), then reads the PTEs back both from the
kernel's page tables and as a user program sees them at UVPT: D on the
pages written, A on the pages read or written, neither elsewhere.

The property test runs random instruction sequences (insngen.py) on
every engine: a page whose contents changed has D and A, D never without
A or W, and the translator sets the same bits as the interpreter.

    DATA   0x00900000, DATA2 = DATA + 0x1000   writable
    RO     0x00a00000                          read-only
    STK    the page of STACK (esp)             writable
"""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jmig.kernel.memlayout import PGSIZE, PTE_A, PTE_D, PTE_W, UVPT
from jmig.kernel.x86.cpu import run, run_blocks

from .insn_helpers import AD_PAGES, BUDGET, DATA, RO, STACK, step
from .insngen import build_from_blocks
from .unicorn_ref import Ours

DATA2 = DATA + PGSIZE
STK = STACK & ~0xFFF
NAMES = {DATA: "DATA", DATA2: "DATA2", RO: "RO", STK: "STK"}
REGS = dict(eax=3, ecx=16, ebx=DATA + 0x100, esi=DATA2 + 0x200, edi=DATA + 0x300)

# (assembly, bytes, register overrides, pages written, pages only read)
CASES = [
    ("mov %eax,(%ebx)", "8903", {}, {DATA}, set()),
    ("movw %ax,(%ebx)", "668903", {}, {DATA}, set()),
    ("movb $1,(%esi)", "c60601", {}, {DATA2}, set()),
    ("mov %eax,0xffe(%ebx)  (straddles DATA|DATA2)", "8983fe0f0000", {"ebx": DATA},
     {DATA, DATA2}, set()),
    ("mov (%ebx),%eax", "8b03", {}, set(), {DATA}),
    ("mov (%eax),%ecx  (eax = RO)", "8b08", {"eax": RO + 8}, set(), {RO}),
    ("addl $1,(%ebx)", "830301", {}, {DATA}, set()),
    ("cmpl $1,(%ebx)", "833b01", {}, set(), {DATA}),
    ("test %eax,(%ebx)", "8503", {}, set(), {DATA}),
    ("incl (%ebx)", "ff03", {}, {DATA}, set()),
    ("negl (%ebx)", "f71b", {}, {DATA}, set()),
    ("shll (%ebx)", "d123", {}, {DATA}, set()),
    ("xchg %eax,(%ebx)", "8703", {}, {DATA}, set()),
    ("xadd %eax,(%ebx)", "0fc103", {}, {DATA}, set()),
    ("cmpxchg %ecx,(%ebx)  (equal: eax = [ebx] = 0)", "0fb10b", {"eax": 0}, {DATA}, set()),
    ("sete (%ebx)", "0f9403", {}, {DATA}, set()),
    ("bts %eax,(%ebx)", "0fab03", {}, {DATA}, set()),
    ("bt %eax,(%ebx)", "0fa303", {}, set(), {DATA}),
    ("push %eax", "50", {}, {STK}, set()),
    ("pop %eax", "58", {}, set(), {STK}),
    ("pushl (%esi)", "ff36", {}, {STK}, {DATA2}),
    ("popl (%ebx)", "8f03", {}, {DATA}, {STK}),
    ("call .+5", "e800000000", {}, {STK}, set()),
    ("pusha", "60", {}, {STK}, set()),
    ("enter $8,$0", "c8080000", {}, {STK}, set()),
    ("movsl  (DATA2 -> DATA)", "a5", {}, {DATA}, {DATA2}),
    ("rep movsb  (16 bytes)", "f3a4", {}, {DATA}, {DATA2}),
    ("stosl", "ab", {}, {DATA}, set()),
    ("rep stosb  (16 bytes)", "f3aa", {}, {DATA}, set()),
    ("lodsl", "ad", {}, set(), {DATA2}),
    ("cmpsl", "a7", {}, set(), {DATA, DATA2}),
    ("lea (%ebx),%eax", "8d03", {}, set(), set()),
    ("add %ebx,%eax", "01d8", {}, set(), set()),
]


def _bits(cpu, va):
    """(A, D) of va's page in the kernel's page tables; the word a user
    program reads at UVPT must agree."""
    vpn = va >> 12
    pte = cpu.mem.pte[vpn]
    seen = int.from_bytes(cpu.mem.read(UVPT + 4 * vpn, 4), "little")
    assert seen & (PTE_A | PTE_D) == pte & (PTE_A | PTE_D), f"uvpt[{vpn:#x}] differs"
    return bool(pte & PTE_A), bool(pte & PTE_D)


@pytest.mark.parametrize("asm,code,regs,written,read", CASES, ids=[c[0] for c in CASES])
def test_an_access_sets_a_and_a_write_sets_d_on_exactly_its_pages(asm, code, regs, written,
                                                                    read):
    cpu = step(bytes.fromhex(code), fresh_ad=True, **(REGS | regs))
    assert cpu.stop.reason == BUDGET, cpu.stop
    got = {NAMES[va]: _bits(cpu, va) for va in AD_PAGES}
    want = {NAMES[va]: (va in written or va in read, va in written) for va in AD_PAGES}
    assert got == want, f"{asm}: (A, D) per page"
    cpu.mem.check_mirror()


def test_a_write_after_a_read_of_the_same_page_sets_d():
    # mov (%ebx),%eax ; mov %eax,4(%ebx)      the read fills the TLB without D
    cpu = step(bytes.fromhex("8b03 894304".replace(" ", "")), n=2, fresh_ad=True, **REGS)
    assert _bits(cpu, DATA) == (True, True)


def test_a_write_after_d_was_cleared_sets_it_again():
    # mov %eax,(%ebx) ; [clear_dirty] ; mov %eax,4(%ebx): pre-copy's next round
    cpu = step(bytes.fromhex("8903"), fresh_ad=True, **REGS)
    assert cpu.mem.clear_dirty(DATA >> 12)
    assert _bits(cpu, DATA) == (True, False)
    cpu.mem.write(DATA + 4, b"\x01")
    assert _bits(cpu, DATA) == (True, True)


# -- random sequences -------------------------------------------------------------------------

FAMILIES = {"mov": 3, "alu": 2, "stack": 2, "string": 2, "xchg": 1, "unary": 1, "shift": 1,
            "bits": 1, "control": 1}


def _ad_run(machine, cap, engine):
    o = Ours(machine)
    before = o.pages()
    if engine == "interp":
        run(o.cpu, o.mmu, cap)
    else:
        # blocks-mid differs from blocks only in the per-instruction snippets.
        run_blocks(o.cpu, o.mmu, cap, hot=0)
    after = o.pages()
    bits = {va: o.mmu.pte[va >> 12] for va in before}
    o.mmu.check_mirror()
    return before, after, bits


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(blocks=st.lists(st.tuples(st.sampled_from([f for f, w in FAMILIES.items()
                                                   for _ in range(w)]),
                                 st.integers(0, 2**32 - 1)), min_size=1, max_size=10),
       seed=st.integers(0, 2**32 - 1))
def test_random_sequences_set_d_on_every_page_they_change(insn_engine, blocks, seed):
    machine, cap = build_from_blocks(blocks, seed)
    before, after, bits = _ad_run(machine, cap, insn_engine)
    for va, pte in bits.items():
        if after[va] != before[va]:
            assert pte & PTE_D and pte & PTE_A, f"page {va:#x} changed without D|A\n" + \
                machine.describe()
        if pte & PTE_D:
            assert pte & PTE_A and pte & PTE_W, f"page {va:#x}: D without A or W"
    if insn_engine != "interp":
        _, _, ref = _ad_run(machine, cap, "interp")
        diff = {hex(va): (bits[va] & (PTE_A | PTE_D), ref[va] & (PTE_A | PTE_D))
                for va in bits if (bits[va] ^ ref[va]) & (PTE_A | PTE_D)}
        assert not diff, f"(translator, interpreter) A|D differ: {diff}\n" + machine.describe()

