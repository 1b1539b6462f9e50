"""Differential tests: random instruction sequences on jmig's core and on Unicorn.

Each case is a random sequence of instructions from the subset the core
implements (insngen.py: ALU ops in 8/16/32-bit forms with register, memory
and immediate operands and every ModR/M and SIB form, inc/dec/neg/not,
mov/movzx/movsx, lea, xchg/xadd/cmpxchg, push/pop of registers, immediates
and memory, pusha/popa, pushf/popf, lahf/sahf, cbw/cwde/cwd/cdq,
mul/imul/div/idiv, shifts and rotates by 1/imm/cl, shld/shrd, bt/bts/btr/btc,
bsf/bsr, bswap, setcc/cmovcc/jcc, string instructions with and without
rep/repe/repne and DF set or clear, cmc/clc/stc/cld/std, enter/leave,
call/ret/ret imm16, jmp, loop/loope/loopne/jecxz, nop/pause/endbr32/nopl,
xlat, int3, 0x66 forms) followed by `int $0x30`, run from random
registers, flags and memory on both, compared after every instruction
(unicorn_ref.py describes exactly what is compared and the few narrow
exclusions).  A run ends at the `int $0x30`, at the first fault (which
must be the same fault on both: trap number, eip, fault address and
not-present/protection and read/write kind), or after a step limit
(backward branches may loop).

The default run (CI) is 8,000 cases (about 80 s of CPU; the examples are
shared out among the six tests below by SHARES).  More, e.g. a million
(hours of CPU):

    JMIG_DIFF_RANDOM=1 JMIG_DIFF_EXAMPLES=1000000 .venv/bin/python -m pytest tests/x86/test_differential.py

or several smaller runs side by side, one per core, each with its own
`-k` selection.  The same variable scales the check of the block
translator (run_blocks) against the interpreter: JMIG_DIFF_EXAMPLES / 20
cases, no Unicorn involved.

Hypothesis shrinks a failure to a short sequence; the assertion message
shows the instruction bytes, jmig's and objdump's disassembly, the first
differing register, flag or memory byte with both values, and the initial
machine.

What Unicorn cannot model as a JOS env sees it is not generated and is
tested here against the core directly instead: segment register loads
and stores (JOS's selectors 0x1b/0x23 and #GP on a bad selector; Unicorn
runs with its own selectors and GDT), privileged and I/O instructions
(#GP: Unicorn runs at CPL 0 and executes them), `int n` other than 3 and
0x30 (#GP with the IDT error code; Unicorn just reports the interrupt),
`lock` on an instruction that cannot take it (#UD; Unicorn executes e.g.
`lock mov`), popf's treatment of IF/IOPL at CPL 3.
"""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jmig.kernel.memlayout import PTE_U, PTE_W
from jmig.kernel.pmap import AddressSpace, PhysMem
from jmig.kernel.x86.cpu import SYSCALL, TRAP, Cpu, run, run_blocks

from .insngen import FAMILIES, build_from_blocks
from .unicorn_ref import Ours, make_machine, run_both

TOTAL = int(os.environ.get("JMIG_DIFF_EXAMPLES", "8000"))
# CI runs the same cases every time (a failure is then a change, not luck);
# JMIG_DIFF_RANDOM=1 explores new ones, as the million-case runs do.
DERANDOMIZE = os.environ.get("JMIG_DIFF_RANDOM", "") != "1"

# Share of the examples per test (sums to 1).
SHARES = {
    "alu_moves": 0.16,
    "muldiv_shifts_bits": 0.16,
    "stack_control": 0.16,
    "strings": 0.14,
    "conditions_flags": 0.12,
    "everything": 0.26,
}


def _settings(name: str):
    return settings(max_examples=max(1, round(TOTAL * SHARES[name])), deadline=None,
                    suppress_health_check=list(HealthCheck), print_blob=True,
                    derandomize=DERANDOMIZE)


def cases(weights: dict[str, int], max_blocks: int = 12):
    """Hypothesis strategy: (blocks, state seed) for insngen.build_from_blocks."""
    fams = [f for f, w in weights.items() for _ in range(w)]
    block = st.tuples(st.sampled_from(fams), st.integers(0, 2**32 - 1))
    return st.tuples(st.lists(block, min_size=1, max_size=max_blocks), st.integers(0, 2**32 - 1))


def _run(case):
    blocks, seed = case
    machine, steps = build_from_blocks(blocks, seed)
    run_both(machine, steps, pooled=True)


@pytest.mark.slow
@_settings("alu_moves")
@given(cases({"alu": 4, "incdec": 1, "unary": 1, "mov": 2, "movx": 1, "lea": 1, "xchg": 2,
              "flags": 1, "cond": 1}))
def test_alu_and_moves(case):
    _run(case)


@pytest.mark.slow
@_settings("muldiv_shifts_bits")
@given(cases({"unary": 2, "imul": 1, "shift": 3, "shxd": 2, "bits": 3, "alu": 1, "flags": 1,
              "cond": 1}))
def test_muldiv_shifts_and_bits(case):
    _run(case)


@pytest.mark.slow
@_settings("stack_control")
@given(cases({"stack": 4, "control": 4, "cond": 2, "alu": 1, "mov": 1, "misc": 1}))
def test_stack_and_control(case):
    _run(case)


@pytest.mark.slow
@_settings("strings")
@given(cases({"string": 6, "flags": 1, "alu": 1, "cond": 1, "mov": 1}))
def test_strings(case):
    _run(case)


@pytest.mark.slow
@_settings("conditions_flags")
@given(cases({"cond": 5, "flags": 2, "alu": 2, "shift": 1, "unary": 1, "stack": 1, "bits": 1}))
def test_conditions_and_flags(case):
    _run(case)


@pytest.mark.slow
@_settings("everything")
@given(cases({f: 1 for f in FAMILIES}, max_blocks=16))
def test_everything(case):
    _run(case)


# -- the block translator against the interpreter ----------------------------------------------

def _drive(runner, machine, cap, budget):
    """Run to the end in slices of at most `budget` (int3 traps continue);
    the stops and the final state."""
    o = Ours(machine)
    stops = []
    n = 0
    while n < cap:
        st_ = runner(o.cpu, o.mmu, min(budget, cap - n))
        n += st_.count
        stops.append(st_)
        if st_.reason == TRAP and st_.trapno == 3 or st_.reason == "budget":
            continue
        break
    return stops, n, o.state(), o.pages()


@pytest.mark.slow
@settings(max_examples=max(1, TOTAL // 20), deadline=None,
          suppress_health_check=list(HealthCheck), derandomize=DERANDOMIZE)
@given(cases({f: 1 for f in FAMILIES}, max_blocks=16), st.sampled_from([0, 1]),
       st.integers(1, 40))
def test_block_translator_agrees_with_the_interpreter(case, hot, budget):
    """run_blocks (translate.py) from the same random machines: the same
    stops (reason, count, trapno, err, va) and the same registers, flags
    and memory as run(), which the tests above check against Unicorn --
    with regions compiled at the first run of a block (hot=0, all the code
    statically reachable) or at the second (hot=1, the blocks that ran),
    and the run cut into slices of `budget` instructions, which both
    engines must count exactly."""
    machine, cap = build_from_blocks(*case)
    interp = _drive(run, machine, cap, budget)
    blocks = _drive(lambda c, m, b: run_blocks(c, m, b, hot=hot), machine, cap, budget)
    assert blocks[0] == interp[0], machine.describe()
    assert blocks[1:] == interp[1:], machine.describe()


# -- what Unicorn cannot model: the core alone ---------------------------------------------

def _core(code: bytes, regs=None, eflags=0x202):
    ph = PhysMem(32)
    a = AddressSpace(ph)
    for va, w in ((0x800000, False), (0x900000, True)):
        pfn = ph.page_alloc()
        assert a.page_insert(pfn, va, PTE_U | (PTE_W if w else 0))
    base = a.pte[0x800000 >> 12] >> 12 << 12
    ph.mem[base:base + len(code)] = code
    c = Cpu(regs or [0, 0, 0, 0x900100, 0x900800, 0x900800, 0x900200, 0x900300], 0x800000, eflags)
    return c, a


@pytest.mark.parametrize("code,sel,err", [
    ("8ed8", 0x10, 0x10),     # mov %eax,%ds: the kernel data segment (DPL 0)
    ("8ec0", 0x08, 0x08),     # mov %eax,%es: the kernel text segment
    ("8ed0", 0x00, 0x00),     # mov %eax,%ss: the null selector
    ("8ed0", 0x1B, 0x18),     # mov %eax,%ss: the user code segment
    ("8ee0", 0x28, 0x28),     # mov %eax,%fs: the TSS
    ("8ee8", 0x10, 0x10),     # mov %eax,%gs
    ("1f", 0x10, 0x10),       # pop %ds
    ("07", 0x08, 0x08),       # pop %es
    ("17", 0x00, 0x00),       # pop %ss
])
def test_segment_loads_of_a_bad_selector_are_gp(code, sel, err):
    c, a = _core(bytes.fromhex(code), regs=[sel, 0, 0, 0, 0x900800, 0, 0, 0])
    a.write(0x900800, sel.to_bytes(4, "little"))
    before = (list(c.r), c.eflags)
    st_ = run(c, a, 1)
    assert (st_.reason, st_.trapno, st_.err) == (TRAP, 13, err)
    assert c.eip == 0x800000 and (c.r, c.eflags) == before


@pytest.mark.parametrize("code", ["8ed8", "8ec0", "8ed0", "1f", "07", "17"])
def test_segment_loads_of_the_user_data_selector(code):
    c, a = _core(bytes.fromhex(code), regs=[0x23, 0, 0, 0, 0x900800, 0, 0, 0])
    a.write(0x900800, (0x23).to_bytes(4, "little"))
    st_ = run(c, a, 1)
    assert st_.reason == "budget" and c.eip == 0x800000 + len(code) // 2


@pytest.mark.parametrize("code,value", [
    ("0e", 0x1b), ("16", 0x23), ("1e", 0x23), ("06", 0x23),       # push cs/ss/ds/es
    ("8cc8", 0x1b), ("8cd8", 0x23),                                 # mov %cs/%ds,%eax
])
def test_segment_register_reads(code, value):
    c, a = _core(bytes.fromhex(code), regs=[0xAAAAAAAA, 0, 0, 0, 0x900800, 0, 0, 0])
    st_ = run(c, a, 1)
    assert st_.reason == "budget"
    if code.startswith("8c"):
        assert c.r[0] == value
    else:
        assert c.r[4] == 0x9007FC
        assert int.from_bytes(a.read(0x9007FC, 4), "little") == value


@pytest.mark.parametrize("code", [
    "f4", "fa", "fb", "cf", "e460", "e560", "e660", "e760", "ec", "ed", "ee", "ef",
    "6c", "6d", "6e", "6f", "f36c", "0f20c0", "0f22c0", "0f21c0", "0f23c0", "0f0110",
    "0f0118", "0f0130", "0f0138", "0f0010", "0f0018", "0f06", "0f08", "0f09", "0f30", "0f32",
    "0f33",
])
def test_privileged_and_io_instructions_are_gp(code):
    c, a = _core(bytes.fromhex(code))
    before = (list(c.r), c.eflags)
    st_ = run(c, a, 1)
    assert (st_.reason, st_.trapno, st_.err) == (TRAP, 13, 0)
    assert c.eip == 0x800000 and (c.r, c.eflags) == before


@pytest.mark.parametrize("n", [0, 1, 2, 4, 5, 0x20, 0x21, 0x2f, 0x31, 0x80, 0xff])
def test_int_n_other_than_3_and_0x30_is_gp(n):
    c, a = _core(bytes((0xCD, n)))
    st_ = run(c, a, 1)
    assert (st_.reason, st_.trapno, st_.err) == (TRAP, 13, n * 8 + 2)
    assert c.eip == 0x800000


def test_int_3_and_0x30():
    c, a = _core(bytes.fromhex("cd03cd30cc"))
    st_ = run(c, a, 5)
    assert (st_.reason, st_.count, st_.trapno) == (TRAP, 1, 3) and c.eip == 0x800002
    assert run(c, a, 5).reason == SYSCALL and c.eip == 0x800004
    st_ = run(c, a, 5)
    assert (st_.reason, st_.trapno) == (TRAP, 3) and c.eip == 0x800005


@pytest.mark.parametrize("code", [
    "f08b03", "f089 03", "f03903", "f08503", "f0 0fa303", "f0 01c3", "f0 90", "f0 f7 23",
    "f0 8d03", "f0 c3", "f0 a4", "f0 f7 33",
])
def test_lock_where_it_is_not_allowed_is_ud(code):
    c, a = _core(bytes.fromhex(code.replace(" ", "")))
    st_ = run(c, a, 1)
    assert (st_.reason, st_.trapno) == (TRAP, 6) and c.eip == 0x800000


@pytest.mark.parametrize("size_prefix", ["", "66"])
def test_popf_keeps_tf_if_iopl_at_cpl3(size_prefix):
    # The popped value tries to clear IF and set IOPL 3 (and VM, RF, VIF,
    # VIP); a CPL 3 popf with IOPL 0 changes none of them (SDM, POPF) but
    # takes every arithmetic flag, DF, NT, AC and ID.  (TF is writable at
    # CPL 3; whether the core models single-stepping is not tested here.)
    value = 0x3F7FFF & ~0x200 if not size_prefix else 0xFFFF & ~0x200
    code = b"\x68" + value.to_bytes(4, "little") + bytes.fromhex(size_prefix + "9d")
    c, a = _core(code, eflags=0x202)
    assert run(c, a, 2).reason == "budget"
    fl = c.eflags
    assert fl & 0x200 and fl & 0x3000 == 0
    assert fl & 0x30000 == 0 and fl & 0x180000 == 0
    assert fl & 0xCD5 == 0xCD5
    if size_prefix:
        assert fl & 0x244000 == 0x4000          # 16 bits: only NT of NT/AC/ID
    else:
        assert fl & 0x244000 == 0x244000


# -- where Unicorn is wrong, the core follows the SDM (unicorn_ref excludes these) ---------------

def test_lock_neg_sets_flags_like_neg():
    # lock negb (%ebx) with [ebx] = 1: result 0xff; CF (source != 0), PF, AF, SF.
    c, a = _core(bytes.fromhex("f0f61b"))
    a.write(0x900100, b"\x01")
    assert run(c, a, 1).reason == "budget"
    assert a.read(0x900100, 1) == b"\xff"
    assert c.eflags & 0x8D5 == 0x95


def test_ret_imm16_is_an_unsigned_count():
    # ret $0x9000: pops eip, then releases 0x9000 bytes (QEMU: sign-extends).
    c, a = _core(bytes.fromhex("c20090"))
    a.write(0x900800, (0x800000).to_bytes(4, "little"))
    assert run(c, a, 1).reason == "budget"
    assert c.r[4] == 0x900800 + 4 + 0x9000


def test_enter_16bit_writes_only_bp():
    # enterw $4,$0: push bp; BP <- SP (16 bits); SP -= 4 -- EBP's upper half stays.
    c, a = _core(bytes.fromhex("66c8040000"),
                 regs=[0, 0, 0, 0, 0x900800, 0x12345678, 0, 0])
    assert run(c, a, 1).reason == "budget"
    assert a.read(0x9007FE, 2) == b"\x78\x56"
    assert c.r[5] == 0x123407FE and c.r[4] == 0x9007FA


# -- regressions for core bugs the differential tests found -----------------------------------

def _lockstep(code_hex: str, regs, data=None):
    m = make_machine(bytes.fromhex(code_hex.replace(" ", "")) + b"\xcd\x30",
                     data={va: (content, True) for va, content in (data or {}).items()}
                     | {0x900000: (bytes(range(256)) * 16, True)},
                     regs=regs)
    res = run_both(m, 50)
    assert res.reason == "syscall", res.outcome
    return res


def test_lone_scaled_index_wraps_at_4gib():
    # mov (,%ecx,8),%eax with ecx = 0x20120010: 0x100900080 wraps to 0x900080.
    res = _lockstep("8b04cd00000000", [0, 0x20120010, 0, 0, 0x900800, 0, 0, 0])
    assert res.ours.cpu.r[0] == int.from_bytes(bytes(range(0x80, 0x84)), "little")


def test_enter_display_reads_what_it_pushed():
    # enter $0,$3 with esp == ebp: the display loads [ebp-4] and [ebp-8]
    # after the pushes stored there (SDM order), so they read the pushed values.
    res = _lockstep("c8000003", [0, 0, 0, 0, 0x900800, 0x900800, 0, 0])
    assert res.ours.cpu.r[5] == 0x9007FC and res.ours.cpu.r[4] == 0x9007F0
    page = res.ours.page(0x900000)
    words = [int.from_bytes(page[a:a + 4], "little") for a in (0x7FC, 0x7F8, 0x7F4, 0x7F0)]
    assert words == [0x900800, 0x900800, 0x900800, 0x9007FC], words


@pytest.mark.parametrize("code,regs", [
    ("6699", [0x8000, 0, 0x7FFFFFFF, 0, 0x900800, 0, 0, 0]),        # cwd: edx's upper half stays
    ("0fb00b", [0x12345678, 0xAB, 0, 0x900010, 0x900800, 0, 0, 0]),  # cmpxchg %cl,(%ebx), unequal
    ("660fb10b", [0x12345678, 0xABCD, 0, 0x900010, 0x900800, 0, 0, 0]),
])
def test_partial_register_writes_keep_the_rest(code, regs):
    res = _lockstep(code, regs)
    assert res.ours.cpu.r[0] >> 16 == regs[0] >> 16 and res.ours.cpu.r[2] >> 16 == regs[2] >> 16


def test_shift_by_zero_still_needs_write_access():
    # shlb $0x20,(%ebx): a masked count of 0 changes nothing, but the operand
    # is read and written back, as with a zero count in cl: a read-only page faults.
    m = make_machine(bytes.fromhex("c02320") + b"\xcd\x30",
                     data={0x900000: (None, False)}, regs=[0, 0, 0, 0x900010, 0x900800, 0, 0, 0])
    res = run_both(m, 5)
    assert res.reason == "fault" and (res.outcome.va, res.outcome.write) == (0x900010, True)


# -- register aliases in regions (translate.RegionGen.alias) ------------------------------------

@pytest.mark.parametrize("code_hex", [
    "89d8 b001",              # mov %ebx,%eax; mov $1,%al: a partial write of the alias
    "89d8 b301",              # mov %ebx,%eax; mov $1,%bl: a partial write of its source
    "89d8 b701",              # mov %ebx,%eax; mov $1,%bh
    "89d8 6689c3",            # mov %ebx,%eax; mov %ax,%bx
    "89d8 83c301 01c1",       # mov %ebx,%eax; add $1,%ebx; add %eax,%ecx
    "89d8 89c1 83c001 01c8",  # mov %ebx,%eax; mov %eax,%ecx; add $1,%eax; add %ecx,%eax
    "89d8 89c3 43",           # mov %ebx,%eax; mov %eax,%ebx; inc %ebx
    "89d8 c1e816 8b048500009000",   # mov %ebx,%eax; shr $22,%eax; mov 0x900000(,%eax,4),%eax
    "89d8 8b0b 01c1",         # mov %ebx,%eax; mov (%ebx),%ecx (may fault); add %eax,%ecx
    "89d8 93 01c1",           # mov %ebx,%eax; xchg %eax,%ebx; add %eax,%ecx
    "89d8 39c1 7402 40 40",   # mov %ebx,%eax; cmp %eax,%ecx; je +2; inc %eax; inc %eax
    "89e5 83ec10 89ec",       # mov %esp,%ebp; sub $16,%esp; mov %ebp,%esp
])
def test_register_aliases_give_the_interpreters_registers(code_hex):
    """A `mov %src,%dst` in a region leaves dst's local unwritten and reads
    src instead until either changes, a fault is possible or the path
    ends: every case ends with the interpreter's registers, flags and
    memory, with the code compiled at its first run and cut at every
    instruction."""
    _regions_agree(code_hex, [0x11223344, 0x5, 0x77, 0x900010, 0x900800, 0x900900, 6, 7])


def _regions_agree(code_hex: str, regs) -> None:
    """The code (then int $0x30), compiled at its first run and cut after
    1, 2, 3 and 100 instructions, ends with the interpreter's stops,
    registers, flags and memory."""
    code = bytes.fromhex(code_hex.replace(" ", "")) + b"\xcd\x30"
    for budget in (1, 2, 3, 100):
        m = make_machine(code, data={0x900000: (bytes(range(256)) * 16, True)}, regs=regs)
        interp = _drive(run, m, 50, budget)
        blocks = _drive(lambda c, a, b: run_blocks(c, a, b, hot=0), m, 50, budget)
        assert blocks == interp, (code_hex, budget)


def test_a_store_from_a_region_into_a_frame_holding_code():
    """The write TLB never holds a frame with decoded code: its miss must
    come back as a KeyError (a restart through the interpreter, which drops
    the frame's code), not recurse in the TLB's own miss handler (found by
    test_block_translator_agrees_with_the_interpreter: RecursionError,
    reported as an internal error)."""
    # mov $0x800040,%ebx; shll (%ebx); addl $1,4(%ebx); int $0x30, code page writable
    code = bytes.fromhex("bb40008000 d123 83430401") + b"\xcd\x30"
    m = make_machine(code, ro_code=False)
    for budget in (1, 2, 100):
        interp = _drive(run, m, 50, budget)
        blocks = _drive(lambda c, a, b: run_blocks(c, a, b, hot=0), m, 50, budget)
        assert blocks == interp
        assert interp[0][-1].reason == SYSCALL


# -- flags in regions that refer to registers (translate.RegionGen.commit, _flags) -----------

@pytest.mark.parametrize("code_hex,regs", [
    # cmp %eax,%ebx; mov $1,%ah; je +2; inc %ecx; inc %ecx: the flags refer to
    # eax, which changes in part before je reads them (equal: je is taken)
    ("39c3 b401 7402 41 41", [0x11223344, 0, 0, 0x11223344, 0x900800, 0, 0, 0]),
    # cmp %ebx,%eax; mov $1,%bl; je: the same with bl
    ("39d8 b301 7402 41 41", [0x11223344, 0, 0, 0x11223344, 0x900800, 0, 0, 0]),
    # cmp %ecx,%eax; mov 1(%ebx),%edx (misaligned: restarted in the
    # interpreter, the symbolic flags written back); jb +2; inc %esi; inc %esi
    ("39c8 8b5301 7202 46 46", [5, 7, 0, 0x900010, 0x900800, 0, 0, 0]),
    # the same with eax above ecx (jb not taken)
    ("39c8 8b5301 7202 46 46", [9, 7, 0, 0x900010, 0x900800, 0, 0, 0]),
])
def test_flags_that_refer_to_registers_give_the_interpreters_branch(code_hex, regs):
    """A flag state kept as expressions of registers survives a partial
    write of such a register and a restart in the interpreter: every cut
    ends with the interpreter's registers, flags and memory."""
    _regions_agree(code_hex, regs)
