"""The Kernel's own limits: what a node may configure (CPUs, its share of
envs[]) and how a run's instruction budget is shared among the CPUs."""
import pytest

from jmig.kernel.env import NENV
from jmig.kernel.kernel import Kernel

from .asm import Machine, assemble, needs_binutils

SPIN = """
_start:
    addl $1, out
    jmp _start
"""


@pytest.mark.parametrize("ncpus", [0, 65, -1])
def test_a_kernel_refuses_a_cpu_count_outside_1_to_64(ncpus):
    with pytest.raises(ValueError, match="ncpus"):
        Kernel(memory=1 << 20, ncpus=ncpus)


def test_a_kernel_takes_1_and_64_cpus():
    assert Kernel(memory=1 << 20, ncpus=1).ncpus == 1
    assert Kernel(memory=1 << 20, ncpus=64).ncpus == 64


@pytest.mark.parametrize("i", [-1, NENV])
def test_envs_has_no_slot_outside_0_to_1023(i):
    """envs[] makes a slot the first time it is asked for, but only one of
    its 1,024: an index outside them is a bug, never a new slot."""
    k = Kernel(memory=1 << 20)
    with pytest.raises(IndexError, match=f"env slot {i} is not in 0..1023"):
        k.envs[i]
    assert k.envs[0].index == 0 and k.envs[NENV - 1].index == NENV - 1


@pytest.mark.parametrize("slots", [range(5, 5), range(6, 5), range(-1, 4), range(1000, 1025)],
                         ids=["empty", "reversed", "negative", "past_nenv"])
def test_a_kernel_refuses_a_share_of_envs_that_is_empty_or_outside_envs(slots):
    with pytest.raises(ValueError, match="slots"):
        Kernel(memory=1 << 20, slots=slots)


def test_a_kernel_takes_one_slot_or_all_of_envs():
    k = Kernel(memory=1 << 20, slots=range(7, 8))
    assert k.env_alloc(0).index == 7
    assert Kernel(memory=1 << 20, slots=range(0, 1024)).env_alloc(0).index == 0


@needs_binutils
def test_a_budget_used_up_by_the_first_cpu_gives_the_others_no_run():
    # Two CPUs, two spinning envs, a budget of exactly one slice: the first
    # CPU's env runs it all; the second env never ran, and says so (ps's RUNS).
    m = Machine(ncpus=2, slice=100)
    a = m.spawn(assemble(SPIN))
    b = m.spawn(assemble(SPIN))
    r = m.k.run(100)
    assert r.executed == 100 and not r.idle
    assert (a.env.runs, b.env.runs) == (1, 0)
    assert [row["runs"] for row in m.k.ps()] == [1, 0]
    assert m.k.curenv[1] is None
    m.k.run(200)
    assert (a.env.runs, b.env.runs) == (2, 1)


def test_a_kernel_needs_16_pages_of_memory():
    assert Kernel(memory=16 * 4096).phys.nframes == 16
    with pytest.raises(ValueError, match="memory"):
        Kernel(memory=16 * 4096 - 1)
