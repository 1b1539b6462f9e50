"""run_program (`jmigctl run`, and many tests' way of booting a program):
it runs until nothing can ever run again or the instruction limit, counts
exactly the instructions that ran, and lets sleepers wake -- at once on
the virtual clock, after really waiting on the real one."""
import time

from jmig.kernel.kernel import Kernel
from jmig.kernel.memlayout import PGSIZE
from jmig.kernel.runner import VirtualClock, run_program

from .asm import assemble, needs_binutils

pytestmark = needs_binutils

SPIN = """
_start:
    addl $1, out
    jmp _start
"""

# Prints "a", sleeps 60 ms, prints the milliseconds the sleep took, exits.
SLEEPER = """
_start:
    sys SYS_cputs, $a, $1
    sys SYS_time_msec
    mov %eax, %ebp
    sys SYS_sleep_msec, $60
    sys SYS_time_msec
    sub %ebp, %eax
    save 0
    sys SYS_cputs, $b, $1
    exit
a:  .ascii "a"
b:  .ascii "b"
"""


def test_the_limit_stops_a_program_after_exactly_that_many_instructions():
    out = run_program(assemble(SPIN).elf, None, "spin", max_instructions=12_345)
    assert out.reason == "limit"
    assert out.instructions == 12_345 == out.kernel.instructions


def test_a_program_that_ends_is_idle_with_every_instruction_counted():
    out = run_program(assemble("_start:\n" + "    nop\n" * 10 + "    exit\n").elf, None, "nops")
    assert out.reason == "idle"
    assert out.instructions == out.kernel.instructions == 10 + 3      # and exit: two movs and int $0x30
    assert out.console.endswith("[00001000] free env 00001000\n")


def test_on_the_virtual_clock_a_sleeper_wakes_without_waiting():
    seen = []
    t0 = time.monotonic()
    out = run_program(assemble(SLEEPER).elf, None, "sleeper", on_console=seen.append)
    assert time.monotonic() - t0 < 1.0
    assert out.reason == "idle" and "ab" in "".join(seen)
    assert out.kernel.live_envs() == []


def test_on_the_real_clock_a_sleeper_wakes_after_its_time():
    t0 = time.monotonic()
    out = run_program(assemble(SLEEPER).elf, None, "sleeper", virtual_time=False)
    took = time.monotonic() - t0
    assert out.reason == "idle" and "ab" in out.console
    assert took >= 0.06


# A parent that forks a child spinning like itself, each on a counter page
# of its own at 0x500000: two envs sharing the CPU slice by slice.
TWO_SPINNERS = """
_start:
    sys SYS_exofork
    test %eax, %eax
    jz spin
    mov %eax, %ebp
    sys SYS_page_map, $0, $UTEXT, %ebp, $UTEXT, $PTE_U|PTE_P
    sys SYS_page_alloc, %ebp, $0x500000, $PTE_U|PTE_P|PTE_W
    sys SYS_page_alloc, $0, $0x500000, $PTE_U|PTE_P|PTE_W
    sys SYS_env_set_status, %ebp, $ENV_RUNNABLE
spin:
    addl $1, 0x500000
    jmp spin
"""


def counters(k):
    return [int.from_bytes(e.aspace.read(0x500000, 4), "little") for e in k.live_envs()]


def test_running_in_pieces_shares_the_cpu_as_one_run_would():
    # run_program gives the kernel a million instructions at a time: the
    # pieces end on slice boundaries, so the envs' turns are those of one
    # run of the whole limit.
    elf = assemble(TWO_SPINNERS).elf
    out = run_program(elf, None, "two", max_instructions=1_500_000)
    k = Kernel(memory=out.kernel.phys.nframes * PGSIZE, clock=VirtualClock())
    k.env_create(elf, None, name="two")
    assert k.run(1_500_000).executed == 1_500_000
    assert len(counters(k)) == 2 and min(counters(k)) > 0
    assert counters(out.kernel) == counters(k)
    assert [e.runs for e in out.kernel.live_envs()] == [e.runs for e in k.live_envs()]
