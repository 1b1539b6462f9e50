"""Loops whose turn passes through several heads of a region.

A fork that scans the page tables turns through three heads (advance,
test the PDE through UVPD, test the PTE through UVPT), each entered from
more than one place.  The translator compiles such a loop into one inner
`while` loop of the loop head's tree (translate.py, _short_loops): the heads
on the way are followed inline.  These programs check that the result and
the instruction count stay exact however the scheduler's slices cut
through the turns.
"""
from __future__ import annotations

import random

import pytest

from jmig.kernel.x86 import translate

from .asm import Machine, assemble

SCAN = assemble(r"""
_start:
    xor %esi, %esi              # present pages seen
    xor %edi, %edi              # a checksum of the PTEs seen
    mov $UTEXT, %ebx
    jmp pde                     # enter the loop at its second head
next:                           # head: the loop's header
    add $PGSIZE, %ebx
    cmp $UTEXT + 0x800000, %ebx   # 2,048 turns: enough to be compiled and cut
    je done
pde:                            # head: reached from next and from the entry
    mov %ebx, %eax
    shr $22, %eax
    mov UVPD(,%eax,4), %edx
    rol $3, %edi
    test $1, %dl
    je next
pte:                            # head: reached from pde and from the bottom of the loop
    mov %ebx, %eax
    shr $12, %eax
    mov UVPT(,%eax,4), %eax
    xor %eax, %edi
    add %eax, %edi
    test $PTE_P, %al
    je next
    inc %esi
    cmp $UTEXT + 0x3000, %ebx   # a second way into pte: look at the next page now
    jae next
    add $PGSIZE, %ebx
    jmp pte
done:
    mov %esi, %eax
    save 0
    mov %edi, %eax
    save 1
    halt
""")


def _scan(monkeypatch, engine: str, slice: int) -> tuple[list[int], int]:
    monkeypatch.setenv("JMIG_ENGINE", engine)
    m = Machine(slice=slice)
    p = m.spawn(SCAN)
    res = m.run(50_000_000)
    return p.outs(2), res.executed


@pytest.mark.parametrize("slice", [1, 2, 3, 5, 7, 11, 13, 17, 10_000])
def test_a_loop_through_three_heads_counts_exactly_at_every_cut(monkeypatch, slice):
    """The same results and the same instruction count as the interpreter
    given the same slices (the count at the end depends on where the last
    slice ends, on either engine)."""
    outs, executed = _scan(monkeypatch, "blocks", slice)
    assert (outs, executed) == _scan(monkeypatch, "interp", slice)
    assert outs[0] == 2                 # its text and its out[] page


class _Block:
    def __init__(self, succ: list[int], size: int):
        self.succ = succ
        self.insns = [None] * size


def test_short_loops_are_the_strongly_connected_components_that_loop():
    """translate._short_loops against the definition, on random graphs:
    b is in a's loops iff each reaches the other, the component is a
    loop (two blocks or more, or a block branching to itself) and holds
    at most MAX_LOOP instructions."""
    rng = random.Random(15)
    for _ in range(500):
        addrs = rng.sample(range(1000), rng.randint(1, 30))
        bbs = {a: _Block([rng.choice(addrs + [5000]) for _ in range(rng.randint(0, 2))],
                         rng.randint(1, 12)) for a in addrs}
        reach = {}
        for a in bbs:
            seen, todo = {a}, [a]
            while todo:
                for s in bbs[todo.pop()].succ:
                    if s in bbs and s not in seen:
                        seen.add(s)
                        todo.append(s)
            reach[a] = seen
        loops = translate._short_loops(bbs)
        for a in bbs:
            comp = frozenset(b for b in bbs if b in reach[a] and a in reach[b])
            loop = len(comp) > 1 or a in bbs[a].succ
            short = sum(len(bbs[b].insns) for b in comp) <= translate.MAX_LOOP
            assert loops.get(a) == (comp if loop and short else None)
