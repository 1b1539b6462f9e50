"""Every bundled program under the differential harness: each slice of every
env it creates runs on the block translator (the default engine), whose
state is recorded at every block boundary; then the same slice runs again
from the same state on jmig's interpreter and on a Unicorn shadow of that
env in lockstep, compared after every instruction, and must pass through
every state the translator recorded and end where it ended -- registers,
flags, stop, page contents and page tables.  The kernel answers the system
calls once for both (tests/kernel/lockstep.py explains how; the comparison
and its exclusions are tests/x86/unicorn_ref.py's).

For each program: the lockstep run must find no difference, and its console
output and instruction count must equal a normal run's with the same
instruction limit (the default engine and the interpreter, which count
alike), so the run that Unicorn checked is the real one.  Programs that end
run to completion; the long ones run to an instruction limit that still
covers their main loops (memtest and printbench get small arguments so that
they complete).  Sleeps take no time (runner.VirtualClock).

A few minutes in all (Unicorn stepping costs ~20 us an instruction); the
per-program counts and times are printed (`-s`).  The long programs are
marked slow (`python3 dev.py test --fast` leaves them out).
"""
from __future__ import annotations

import time

import attrs
import pytest

from jmig import programs
from jmig.kernel.runner import run_program

from .lockstep import Lockstep, TranslatorLockstep, run_program_lockstep


@attrs.frozen
class Case:
    args: tuple = ()               # argv[1:] (argv[0] is the name)
    limit: int | None = None       # None: runs to completion (within 2,000,000)
    expect: tuple = ()             # console text that shows the main loop ran
    uncompared: tuple = ()         # instruction bytes Unicorn cannot run as JOS does


CASES = {
    "args": Case(("one", "two words"), expect=("argv[2] = two words",)),
    # mov %ax,%ds: a segment register load (JOS: #GP, selector 0x28).
    "badsegment": Case(expect=("  trap 0x0000000d General Protection",), uncompared=("8ed8",)),
    "breakpoint": Case(expect=("  trap 0x00000003 Breakpoint",)),
    "burn": Case(("1000",), limit=200_000, expect=("burn 00001000: 1 (",)),
    "buggyhello": Case(expect=("user_mem_check assertion failure for va 00000001",)),
    "cowstress": Case(("1",), limit=600_000),   # fork x2, parent and children fill (COW faults)
    "divzero": Case(expect=("  trap 0x00000000 Divide error",)),
    "dumbfork": Case(expect=("1: I am the parent!", "19: I am the child!")),
    "evilhello": Case(expect=("user_mem_check assertion failure for va f010000c",)),
    "faultalloc": Case(expect=("this string was faulted in at deadbeef",)),
    "faultallocbad": Case(expect=("user_mem_check assertion failure for va deadbeef",)),
    "faultbadhandler": Case(),
    "faultdie": Case(expect=("i faulted at va deadbeef, err 6",)),
    "faultevilhandler": Case(),
    "faultnest": Case(),
    "faultnostack": Case(),
    "faultread": Case(expect=("  trap 0x0000000e Page Fault",)),
    "faultregs": Case(expect=("Registers in UTrapframe OK",)),
    "faultwrite": Case(expect=("  trap 0x0000000e Page Fault",)),
    "forktree": Case(expect=("I am '111'",)),
    "hello": Case(expect=("hello, world",)),
    "ipcbench": Case(("20", "0", "10"), expect=("ipcbench: 20 round trips in ",)),
    "loop": Case(("10",), limit=20_000, expect=("Test Program, Env ID: 4096, Counter: 10",)),
    "memtest": Case(("2", "2", "10", "3"), expect=("memtest: pass 3 ok, 2 pages verified, 2 rewritten",
                                                   "memtest: done")),
    "pingpong": Case(expect=("1001 got 10 from 1000",)),
    "primes": Case(limit=150_000, expect=("\n2\n", "\n3\n", "\n5\n")),
    "printbench": Case(("40",), expect=("printbench: 40 lines, checksum cbf84cda",)),
    "scansched": Case(limit=200_000),             # forkscan's walk over uvpd/uvpt
    "scantree": Case(limit=200_000),
    "sendpage": Case(expect=("child received correct message", "parent received correct message")),
    "sleeper": Case(expect=("sleeper: slept",)),
    # int $14: `int n` other than 3 and 0x30 (JOS: #GP, error code (14 << 3) | 2).
    "softint": Case(expect=("  trap 0x0000000d General Protection",), uncompared=("cd0e",)),
    "spin": Case(expect=("I am the parent.  Killing the child...",)),
    "stresssched": Case(limit=200_000),           # forks and the children's envs[] polling
    "waitchild": Case(("30",), expect=("waitchild: child 00001001 done",)),
    "yield": Case(expect=("All done in environment 00001000.",)),
}

COMPLETION_LIMIT = 2_000_000


def test_every_bundled_program_has_a_case():
    assert sorted(CASES) == programs.names()


SLOW = {"cowstress", "forktree", "memtest", "pingpong", "primes", "printbench", "scansched",
        "scantree", "spin", "stresssched", "dumbfork", "loop", "yield", "faultdie",
        "faultalloc", "faultbadhandler", "faultevilhandler"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in sorted(CASES)])
def test_program_runs_in_lockstep_with_unicorn(name):
    case = CASES[name]
    elf = programs.load(name)
    argv = [name, *case.args]
    limit = case.limit or COMPLETION_LIMIT
    ls = TranslatorLockstep(program=name)
    t0 = time.perf_counter()
    out = run_program_lockstep(ls, elf, argv, name, max_instructions=limit, virtual_time=True)
    seconds = time.perf_counter() - t0
    print(f"\n{name}: {out.instructions} instructions ({out.reason}), {ls.compared} compared "
          f"steps, {len(ls.uncompared)} uncompared, {ls.slices} slices, {ls.boundaries} block "
          f"boundaries, {ls.shadows} Unicorn shadows, {ls.page_copies} page copies into "
          f"shadows, {ls.window_maps} JOS window pages mapped; {seconds:.2f} s "
          f"({seconds / max(out.instructions, 1) * 1e6:.1f} us/insn)")

    assert ls.differences == []
    assert out.instructions == ls.instructions
    # Every instruction compared with Unicorn but the listed ones (a faulting
    # step is compared too, and counts no instruction).
    assert sorted(b for _, b, _ in ls.uncompared) == sorted(case.uncompared), ls.uncompared
    assert ls.compared + len(ls.uncompared) >= out.instructions
    assert ls.overshoots == 0
    # Every block boundary inside a slice was passed through (the last one
    # of a slice is its end, compared as the end).
    assert ls.checked >= ls.boundaries - ls.slices
    if case.limit is None:
        assert out.reason == "idle", "did not run to completion"
    else:
        assert out.reason == "limit" and out.instructions == case.limit

    # The checked run is the real one: a normal run on either engine prints
    # the same and counts the same.
    for engine in ("interp", "blocks"):
        normal = run_program(elf, argv, name, max_instructions=limit, virtual_time=True,
                             engine=engine)
        assert out.console == normal.console, engine
        assert out.instructions == normal.instructions, engine
    for want in case.expect:
        assert want in out.console, f"{want!r} not printed"


# -- the harness is not vacuous: a wrong core or MMU is caught ----------------------------------

def _lockstep_hello():
    ls = Lockstep(program="hello")
    run_program_lockstep(ls, programs.load("hello"), ["hello"], "hello",
                         max_instructions=COMPLETION_LIMIT)
    return ls


def test_a_wrong_byte_store_is_caught(monkeypatch):
    from jmig.kernel.pmap import AddressSpace
    real = AddressSpace.wr8

    def wr8(self, va, v):
        real(self, va, v ^ 0x20)            # every byte store flips a bit

    monkeypatch.setattr(AddressSpace, "wr8", wr8)
    with pytest.raises(AssertionError, match=r"byte at 0x[0-9a-f]+: ours=0x[0-9a-f]+ unicorn="):
        _lockstep_hello()


def test_a_wrong_envs_read_is_caught(monkeypatch):
    # The MMU's fast path for envs[i] fields (what `thisenv->env_id` reads)
    # against the packed struct Env that the shadow is given.
    from jmig.kernel.kernel import Kernel
    real = Kernel._window_word

    def window_word(self, va):
        v = real(self, va)
        return None if v is None else v ^ 0x100

    monkeypatch.setattr(Kernel, "_window_word", window_word)
    with pytest.raises(AssertionError, match=r"register e[a-z]+: ours=0x[0-9a-f]+ unicorn="):
        _lockstep_hello()


def test_a_wrong_flag_is_caught(monkeypatch):
    from jmig.kernel.x86 import cpu as core
    real = core.compile_insn

    def compile_insn(insn):
        fn = real(insn)
        if insn.op != "test":
            return fn

        def wrong(cpu, r, m):               # `test` sets CF (it must clear it)
            nxt = fn(cpu, r, m)
            cpu.ef = cpu.eflags | 1
            cpu.fk = 0
            return nxt
        wrong.insn = insn
        return wrong

    monkeypatch.setattr(core, "compile_insn", compile_insn)
    monkeypatch.setattr(core, "_COMPILED", {})
    with pytest.raises(AssertionError, match=r"flag CF: ours=1 unicorn=0"):
        _lockstep_hello()


def test_a_wrong_translation_is_caught(monkeypatch):
    # The translator compiles `cmp` then `je` as one comparison of the two
    # operands; turn it into the opposite one.
    from jmig.kernel.x86 import translate
    real = translate.RegionGen._static_cond

    def wrong(self, c):
        expr = real(self, c)
        return f"(not {expr})" if c == 2 and self.fs[0] == "k" and expr else expr

    monkeypatch.setattr(translate.RegionGen, "_static_cond", wrong)
    monkeypatch.setattr(translate, "_COMPILED", {})
    monkeypatch.setattr(translate, "_BY_HEAD", {})
    ls = TranslatorLockstep(program="hello")
    with pytest.raises(AssertionError, match=r"the translator differs"):
        run_program_lockstep(ls, programs.load("hello"), ["hello"], "hello",
                             max_instructions=COMPLETION_LIMIT)


# -- the JOS windows, where the shadow needs the kernel's bytes -----------------------------------

WINDOWS = r"""
_start:
    sys SYS_getenvid
    and $0x3ff, %eax
    imul $ENV_SIZE, %eax, %ebx
    add $UENVS, %ebx               # ebx = &envs[ENVX(id)], this env's own struct
    mov $0x11111111, %esi
    mov $0x22222222, %edi
    .globl read_eip
read_eip:
    mov 48(%ebx), %eax             # its trap frame is its live registers: tf_eip
    save 3                         # is this instruction
    mov 0(%ebx), %eax
    save 0
    mov 4(%ebx), %eax
    save 1
    mov 28(%ebx), %eax             # reg_eax: eax before this instruction
    save 2
    mov 60(%ebx), %eax             # tf_esp
    save 4
    mov ENV_ID(%ebx), %eax
    save 5
    mov ENV_ID-2(%ebx), %eax       # unaligned, across two fields
    save 6
    push %ebx
    sys SYS_page_alloc, $0, $0x500000, $PTE_U|PTE_W|PTE_P
    pop %ebx
    mov %esp, %ebp
    mov $0x501000, %esp
    push UVPT + 0x500 * 4          # reads the PTE, then stores into its page (A, D)
    pop %eax
    mov %ebp, %esp
    save 7
    mov UVPT + 0x500 * 4, %eax     # now with A and D
    save 8
    mov UVPD + (0x500000 >> 22) * 4, %eax
    save 9
    mov UPAGES + 8, %eax
    save 10
    lea out + 64 * 4, %edi         # rep movs out of envs[]
    mov %ebx, %esi
    mov $(ENV_SIZE / 4), %ecx
    cld
    rep movsl
    sys SYS_page_alloc, $0, $UXSTACKTOP-PGSIZE, $PTE_U|PTE_W|PTE_P
    movl $0xabcd1234, UXSTACKTOP-4
    mov UTOP - 2, %eax             # across the exception stack's end and UENVS
    save 11
    halt
"""

WINDOW_FAULT = r"""
_start:
    mov UVPD, %eax                 # readable
    mov UENVS + 1024 * ENV_SIZE, %eax   # past envs[]: a protection fault
    exit
"""


def test_jos_window_reads_in_lockstep():
    from .asm import assemble
    prog = assemble(WINDOWS)
    ls = Lockstep(program="windows")
    out = run_program_lockstep(ls, prog.elf, None, "windows", max_instructions=100_000)
    assert ls.differences == [] and ls.uncompared == []
    assert ls.window_maps >= 5
    e = next(e for e in out.kernel.envs.values() if e.env_id == 0x1000)
    a = e.aspace
    w = [int.from_bytes(a.read(prog.out_va + 4 * k, 4), "little") for k in range(12)]
    assert w[:6] == [0x22222222, 0x11111111, 0x11111111, prog.addr("read_eip"), 0xEEBFE000,
                     0x1000]
    assert w[6] == 0x1000 << 16
    assert w[7] & 0xFFF == 0x007 and w[8] & 0xFFF == 0x067 and w[7] >> 12 == w[8] >> 12
    assert w[9] & 0xFFF == 0x007
    assert w[11] == 0x0000ABCD | (w[11] & 0xFFFF0000)
    copied = a.read(prog.out_va + 64 * 4, ENV_SIZE_BYTES)
    assert copied[72:76] == (0x1000).to_bytes(4, "little")


ENV_SIZE_BYTES = 0x7C


def test_jos_window_fault_in_lockstep():
    from .asm import assemble
    prog = assemble(WINDOW_FAULT)
    ls = Lockstep(program="windowfault")
    out = run_program_lockstep(ls, prog.elf, None, "windowfault", max_instructions=100_000)
    assert ls.differences == []
    assert "[00001000] user fault va eec1f000 ip 00800025" in out.console
    assert "  err  0x00000005 [user, read, protection]" in out.console
