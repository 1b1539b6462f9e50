"""Word accesses that share one TLB lookup (groups.py).

In a block, the translator puts the aligned word accesses at constant
offsets from one register value (a prologue's pushes, an epilogue's pops,
a frame's arguments) into a group whose first access looks the page up
once, under a key that misses unless the whole group lies in one page,
aligned; the others are then plain indexes.  A miss restarts that first
access in the interpreter.

These programs call a function with a frame many times, with the stack
where the groups fit in a page, where they straddle two pages (the stack
pointer sweeps across the boundary), misaligned, and with the lower page
taken away or made read-only part-way: every run must give the
interpreter's results, instruction count and console (a fault reported at
the push that touches the bad page, not at the group's first access),
however the slices cut it.
"""
from __future__ import annotations

import pytest

from jmig.kernel.x86 import cpu as core
from jmig.kernel.x86 import groups, translate
from jmig.kernel.x86.decode import decode

from .asm import Machine, assemble, flat

# f(a, b, c) = ((a * 3) ^ b) + c, through a frame: four saved registers,
# locals below them, the arguments read through %ebp.
FUNC = r"""
f:
    push %ebp
    mov %esp, %ebp
    push %edi
    push %esi
    push %ebx
    sub $0x10, %esp
    mov 8(%ebp), %eax
    mov 12(%ebp), %ebx
    mov 16(%ebp), %ecx
    mov %eax, -0x10(%ebp)
    mov %ebx, -0x14(%ebp)
    lea (%eax,%eax,2), %esi
    xor -0x14(%ebp), %esi
    add %ecx, %esi
    mov %esi, -0x18(%ebp)
    mov -0x18(%ebp), %eax
    add $0x10, %esp
    pop %ebx
    pop %esi
    pop %edi
    pop %ebp
    ret
"""

# The loop: esp = base - 4 * (i % sweep), then f(i, i * 7, sum); 3000 turns.
LOOP = r"""
    xor %edi, %edi              # i
    xor %ebp, %ebp              # sum
1:  mov %edi, %eax
    xor %edx, %edx
    mov $SWEEP, %ecx
    div %ecx
    shl $2, %edx
    mov $BASE, %esp
    sub %edx, %esp
    lea (,%edi,8), %eax
    sub %edi, %eax
args:
    push %ebp
    push %eax
third:
    push %edi
    call f
    add $12, %esp
    mov %eax, %ebp
CHANGE
    inc %edi
    cmp $3000, %edi
    jne 1b
    mov %ebp, %eax
    save 0
    xor %eax, %eax              # out[1]: a checksum of the words on the two pages
    mov $0x500000, %esi
3:  add (%esi), %eax
    rol $3, %eax
    add $4, %esi
    cmp $0x502000, %esi
    jne 3b
    save 1
    halt
"""

# Two stack pages whose frames are not in order (a group that spans both
# must not index the lower one through the upper one's frame).
TWO_PAGES = r"""
    sys SYS_page_alloc, $0, $0x501000, $PTE_P|PTE_U|PTE_W
    sys SYS_page_alloc, $0, $0x600000, $PTE_P|PTE_U|PTE_W
    sys SYS_page_alloc, $0, $0x500000, $PTE_P|PTE_U|PTE_W
"""


def program(base: str, sweep: int, setup: str = "", change: str = "") -> str:
    loop = LOOP.replace("SWEEP", str(sweep)).replace("BASE", base).replace("CHANGE", change)
    return "_start:\n" + setup + loop + FUNC


# After 1000 turns the page below the boundary goes away (or becomes read-only);
# in turn 1001 (1001 % 24 = 17) esp starts at 0x50104c - 68 = 0x501008: the
# first two pushes of the arguments are on the good page, the third is not.
UNMAP = r"""
    cmp $1000, %edi
    jne 2f
    sys SYS_page_unmap, $0, $0x500000
2:
"""
READ_ONLY = r"""
    cmp $1000, %edi
    jne 2f
    push %edi
    sys SYS_page_map, $0, $0x500000, $0, $0x500000, $PTE_P|PTE_U
    pop %edi
2:
"""

# g's pushes after `sub $0x14, %esp` are group members whose esp updates
# wait for the next other instruction: pushf there must see the flags of
# the sub (parity and sign of esp - 0x14, esp moved by 4 * (i % 8) each
# turn), and ebp (aliased to esp by the mov) the old esp; h's setb, after
# three such pushes, the carry of `cmp %esp, %ecx` with the esp before them
# (ecx = esp - 8: 1; with esp - 12 it would be 0).
DEFERRED = r"""
_start:
    xor %edi, %edi
    xor %ebp, %ebp
1:  mov %esp, %esi
    mov %edi, %eax
    and $7, %eax
    shl $2, %eax
    sub %eax, %esp
    call g
    mov %esi, %esp
    add %eax, %ebp
    call h
    add %eax, %ebp
    rol $5, %ebp
    inc %edi
    cmp $2000, %edi
    jne 1b
    mov %ebp, %eax
    save 0
    halt
g:
    push %ebp
    mov %esp, %ebp
    sub $0x14, %esp
    push %esi
    push %edi
    push %ebx
    pushf
    pop %eax
    and $0x8d5, %eax
    mov %ebp, %ecx
    sub %esp, %ecx
    shl $12, %ecx
    add %ecx, %eax
    add %edi, %eax
    pop %ebx
    pop %edi
    pop %esi
    mov %ebp, %esp
    pop %ebp
    ret
h:
    push %ebp
    lea -8(%esp), %ecx
    cmp %esp, %ecx
    push %esi
    push %edi
    push %ebx
    setb %al
    movzbl %al, %eax
    pop %ebx
    pop %edi
    pop %esi
    pop %ebp
    ret
"""

# Registers the model must follow exactly (each used as a group's base
# after it changes): `leave` sets esp to ebp + 4 (then `ret` reads there);
# `lea (%esp,%ecx,4)` is not esp plus a constant; `and $0xf0,%bh` changes
# ebx (to lower in the same page).
MODEL = r"""
_start:
    xor %edi, %edi
    xor %ebp, %ebp
1:  mov %edi, %ecx
    and $3, %ecx
    call k
    add %eax, %ebp
    rol $3, %ebp
    inc %edi
    cmp $2000, %edi
    jne 1b
    mov %ebp, %eax
    save 0
    halt
k:
    push %ebp
    mov %esp, %ebp
    sub $0x20, %esp
    mov %edi, -4(%ebp)
    movl $0x11, -8(%ebp)
    movl $0x22, -12(%ebp)
    movl $0x33, -16(%ebp)
    lea (%esp,%ecx,4), %edx
    mov 4(%edx), %eax
    add 8(%edx), %eax
    add 12(%edx), %eax
    mov %esp, %ebx
    and $0xf0, %bh
    add 16(%ebx), %eax
    add 20(%ebx), %eax
    add 24(%ebx), %eax
    add -4(%ebp), %eax
    leave
    ret
"""

# `add %edi, 4(%esi)` reads 4(%esi) into a group that stays too small (it
# is dropped) and writes it in one that is kept (with 100 and 104): the
# read goes through the TLB, the write through the group.
HALF_GROUPED = r"""
_start:
    xor %edi, %edi
1:  call f
    inc %edi
    cmp $2000, %edi
    jne 1b
    mov out + 20, %eax
    save 0
    halt
f:
    mov $out + 16, %esi
    mov 0(%esi), %eax
    mov %eax, 100(%esi)
    add %edi, 4(%esi)
    mov %eax, 104(%esi)
    mov 4(%esi), %eax
    ret
"""

PROGRAMS = {
    "flags and an alias across deferred pushes": DEFERRED,
    "a read-modify-write with only its write grouped": HALF_GROUPED,
    "leave, lea with an index, a high byte": MODEL,
    "frames in one page": program("0x501800", 16, TWO_PAGES),
    # the frame (about 0x30 bytes) sweeps across 0x501000 in steps of 4
    "frames across a page boundary": program("0x501030", 24, TWO_PAGES),
    "a misaligned stack": program("0x501032", 24, TWO_PAGES),
    "the lower page unmapped": program("0x50104c", 24, TWO_PAGES, UNMAP),
    "the lower page made read-only": program("0x50104c", 24, TWO_PAGES, READ_ONLY),
}


@pytest.fixture(autouse=True)
def fresh_slow(monkeypatch):
    """Each test starts with no instruction on slow memory: the programs
    share their layout, and another's restarts must not hide a group."""
    monkeypatch.setattr(core, "SLOW", set())


def _run(monkeypatch, name: str, engine: str, slice: int):
    monkeypatch.setenv("JMIG_ENGINE", engine)
    m = Machine(slice=slice)
    p = m.spawn(assemble(PROGRAMS[name]))
    res = m.run(5_000_000)
    return (p.outs(2) if p.alive else None), res.executed, m.console


@pytest.mark.parametrize("slice", [1, 5, 97, 10_000])
@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_grouped_frames_give_the_interpreters_results_at_every_cut(monkeypatch, name, slice):
    """The same result, instruction count and console as the interpreter."""
    blocks = _run(monkeypatch, name, "blocks", slice)
    assert blocks == _run(monkeypatch, name, "interp", slice)
    if "lower page" in name:
        assert blocks[0] is None and "user fault va 00500" in blocks[2], blocks[2]
    else:
        assert blocks[0] is not None and blocks[0][0] != 0


@pytest.mark.parametrize("name", ["the lower page unmapped", "the lower page made read-only"])
def test_the_fault_is_reported_at_the_push_into_the_bad_page(monkeypatch, name):
    """The three pushes of the arguments are a group whose first access
    is on the good page; the fault is the third push's."""
    _, _, console = _run(monkeypatch, name, "blocks", 10_000)
    prog = assemble(PROGRAMS[name])
    faults = [ln for ln in console.splitlines() if "user fault" in ln]
    assert len(faults) == 1 and f"va 00500ffc ip {prog.addr('third'):08x}" in faults[0], console


def test_a_functions_frame_is_one_lookup(monkeypatch):
    """White box: f's 17 word accesses (pushes, locals, arguments, pops,
    ret) go through one TLB lookup, in WR (its reads join the group of its
    writes: a page in WR is readable)."""
    translate._COMPILED.clear()
    translate._BY_HEAD.clear()
    _run(monkeypatch, "frames in one page", "blocks", 10_000)
    f = assemble(PROGRAMS["frames in one page"]).addr("f")
    trees = []
    for fn in translate._COMPILED.values():
        src = fn.src
        at = src.find(f"pc == {f:#x}:")
        if at >= 0:
            end = src.find("pc == 0x", at + 10)
            trees.append(src[at:end if end >= 0 else len(src)])
    assert trees, "f was not compiled as a head"
    tree = trees[0]
    assert tree.count("WR[") == 1 and tree.count("RD[") == 0, tree
    assert tree.count("M32[_g0") == 17, tree


# -- the plan itself ---------------------------------------------------------------

def _insns(source: str) -> list:
    code = flat("_start:\n" + source, 0x800000)
    out, at = [], 0
    while at < len(code):
        insn = decode(code[at:at + 15], 0x800000 + at)
        out.append(insn)
        at += insn.length
    return out


def _plan(source: str, slow=frozenset()):
    """{instruction index: {kind: (group, word, leader?)}} of one block."""
    bb = translate.Bb(0x800000, _insns(source))
    accs, _ = groups.plan(bb, {bb.start: bb}, {bb.start}, slow, (bb.start,))
    return {k: {kind: (a.name, a.word, a.lead is not None) for kind, a in acc.items()}
            for (_, k), acc in accs.items()}


def test_a_prologue_and_its_frame_reads_form_groups():
    plan = _plan(r"""
        push %ebp
        mov %esp, %ebp
        push %edi
        push %esi
        push %ebx
        mov 8(%ebp), %eax
        mov 12(%ebp), %ecx
        add 16(%ebp), %eax
    """)
    # pushes at -4 .. -16 from esp: a write group, words 3 2 1 0
    assert [plan[k]["w"] for k in (0, 2, 3, 4)] == [
        ("_g0", 3, True), ("_g0", 2, False), ("_g0", 1, False), ("_g0", 0, False)]
    # arguments at esp + 4, 8, 12 (ebp = esp - 4) join it: words 5 6 7
    assert [plan[k]["r"] for k in (5, 6, 7)] == [
        ("_g0", 5, False), ("_g0", 6, False), ("_g0", 7, False)]


def test_an_unmodelled_instruction_ends_the_groups():
    """xchg gives every register a new value: two pushes on each side of it
    are not a group (fewer than MIN_GROUP each)."""
    assert _plan(r"""
        push %eax
        push %ebx
        xchg %eax, %ecx
        push %ecx
        push %edx
    """) == {}


def test_groups_keep_to_one_alignment_span_and_kind():
    plan = _plan(r"""
        mov 0(%esi), %eax
        mov 2(%esi), %eax
        mov 4(%esi), %eax
        mov 6(%esi), %eax
        mov %eax, 8(%esi)
        mov 0x200(%esi), %eax
        mov 8(%esi), %eax
    """)
    # 0, 4, 8 (read): a group; 2, 6: another alignment, too few; the write
    # at 8 alone; 0x200 is past MAX_SPAN from 0
    assert plan == {0: {"r": ("_g0", 0, True)}, 2: {"r": ("_g0", 1, False)},
                    6: {"r": ("_g0", 2, False)}}


def test_slow_instructions_are_left_out():
    src = "push %eax\npush %ebx\npush %ecx\npush %edx\n"
    first = _insns(src)[0].addr
    plan = _plan(src, slow={first})
    assert 0 not in plan and plan[1]["w"] == ("_g0", 2, True)


def _blocks(source: str) -> dict:
    """The basic blocks of straight code with branches: {start: Bb}."""
    insns = _insns(source)
    starts = {insns[0].addr}
    for i in insns:
        if i.op in translate.ENDS_BB:
            starts.add(i.next)
            if i.ops and i.ops[0].kind == 3:          # REL: a direct target
                starts.add(i.ops[0].imm)
    bbs, cur = {}, []
    for i in insns:
        if i.addr in starts and cur:
            bbs[cur[0].addr] = translate.Bb(cur[0].addr, cur)
            cur = []
        cur.append(i)
    bbs[cur[0].addr] = translate.Bb(cur[0].addr, cur)
    return bbs


def test_blocks_after_a_branch_join_the_group_their_path_started():
    """Both sides of a branch read through the group the pushes before it
    lead (its span covers them all); the block after them is a head (two
    predecessors), where nothing is known."""
    bbs = _blocks(r"""
        push %ebp
        push %esi
        test %eax, %eax
        je 1f
        mov 4(%esp), %ecx
        mov 8(%esp), %edx
        jmp 2f
    1:  mov 12(%esp), %ecx
    2:  mov 4(%esp), %eax
        mov 8(%esp), %eax
        mov 12(%esp), %eax
        ret
    """)
    a, b, c, d = sorted(bbs)
    accs, ends = groups.plan(bbs[a], bbs, {a, d}, frozenset(), (a,))
    got = {(place[-1], k): {kind: (x.name, x.word, x.lead is not None) for kind, x in acc.items()}
           for (place, k), acc in accs.items()}
    # esp0 - 4, esp0 - 8 pushed; then esp0 - 4, esp0 (one side), esp0 + 4 (other)
    assert got == {(a, 0): {"w": ("_g0", 1, True)}, (a, 1): {"w": ("_g0", 0, False)},
                   (b, 0): {"r": ("_g0", 1, False)}, (b, 1): {"r": ("_g0", 2, False)},
                   (c, 0): {"r": ("_g0", 3, False)}}
    assert (a, b) in ends and (a, c) in ends and (a, c, d) not in ends


def test_a_followed_call_reads_its_arguments_through_the_callers_group():
    """The callee's plan starts from the caller's state: its reads within
    the caller's group join it (the span is fixed: one past it does not),
    its own pushes make a new group with the next name."""
    caller = _blocks(r"""
        push %eax
        push %ebx
        push %ecx
        call .+0x100
    """)
    (a,) = caller
    _, ends = groups.plan(caller[a], caller, {a}, frozenset(), (a,))
    callee = _blocks(r"""
        mov 4(%esp), %eax
        mov 12(%esp), %edx
        mov 16(%esp), %ecx
        push %ebp
        push %edi
        push %esi
        ret
    """)
    (f,) = callee
    accs, _ = groups.plan(callee[f], callee, {f}, frozenset(), (a, f), ends[(a,)])
    got = {k: {kind: (x.name, x.word, x.lead is not None) for kind, x in acc.items()}
           for (_, k), acc in accs.items()}
    # caller: pushes at esp0-4, -8, -12, the return address at -16 (words 3..0);
    # callee (esp = esp0 - 16): 4(%esp) = esp0-12, 12(%esp) = esp0-4, 16(%esp) = esp0;
    # ret reads what the last push wrote (esp0-28: word 0 of the callee's group)
    assert got[0] == {"r": ("_g0", 1, False)} and got[1] == {"r": ("_g0", 3, False)}
    assert 2 not in got                                   # esp0: past the caller's span
    assert [got[k]["w"] for k in (3, 4, 5)] == [("_g1", 2, True), ("_g1", 1, False),
                                                ("_g1", 0, False)]
    assert got[6] == {"r": ("_g1", 0, False)}


def test_a_callee_reads_the_lowest_word_of_the_callers_group():
    """The return address, the lowest word of the caller's group (whose
    span is fixed), is read through it."""
    caller = _blocks("push %eax\npush %ebx\ncall .+0x100\n")
    (a,) = caller
    _, ends = groups.plan(caller[a], caller, {a}, frozenset(), (a,))
    callee = _blocks("mov 0(%esp), %eax\n")
    (f,) = callee
    accs, _ = groups.plan(callee[f], callee, {f}, frozenset(), (a, f), ends[(a,)])
    assert {k: (x["r"].name, x["r"].word) for (_, k), x in accs.items()} == {0: ("_g0", 0)}


def test_the_path_after_a_followed_calls_ret_keeps_the_callers_groups():
    """call, the callee's ret, then the caller reads its pushes again:
    esp is the caller's value again, so the reads join its group."""
    caller = _blocks(r"""
        push %eax
        push %ebx
        push %ecx
        call .+0x100
    """)
    (a,) = caller
    _, ends = groups.plan(caller[a], caller, {a}, frozenset(), (a,))
    callee = _blocks("ret\n")
    (f,) = callee
    _, ends2 = groups.plan(callee[f], callee, {f}, frozenset(), (a, f), ends[(a,)])
    after = _blocks(r"""
        mov 0(%esp), %eax
        mov 4(%esp), %edx
        mov 8(%esp), %ecx
    """)
    (r,) = after
    accs, _ = groups.plan(after[r], after, {r}, frozenset(), (a, f, r), ends2[(a, f)])
    got = {k: {kind: (x.name, x.word, x.lead is not None) for kind, x in acc.items()}
           for (_, k), acc in accs.items()}
    # the pushes were at esp0-4, -8, -12 (words 2, 1, 0 above the return address)
    assert got == {0: {"r": ("_g0", 1, False)}, 1: {"r": ("_g0", 2, False)},
                   2: {"r": ("_g0", 3, False)}}


def test_lea_of_one_register_is_that_value_plus_its_displacement():
    """`lea -8(%esp), %ecx` makes ecx esp - 8: reads through it join the
    group of the pushes; with an index register it is a new value."""
    plan = _plan(r"""
        push %eax
        push %ebx
        lea -8(%esp), %ecx
        mov %eax, 8(%ecx)
        mov %ebx, 12(%ecx)
        lea (%esp,%eax,4), %esi
        mov 0(%esi), %edx
        mov 4(%esi), %edx
        mov 8(%esi), %edx
        lea 0x10, %edi
        mov 0(%edi), %edx
        mov 4(%edi), %edx
        mov 8(%edi), %edx
    """)
    # pushes at esp0-4, -8; ecx = esp0-16: 8(%ecx) = esp0-8, 12(%ecx) = esp0-4;
    # esi (an index) and edi (a constant) are new values: a group each
    assert plan == {0: {"w": ("_g0", 1, True)}, 1: {"w": ("_g0", 0, False)},
                    3: {"w": ("_g0", 0, False)}, 4: {"w": ("_g0", 1, False)},
                    6: {"r": ("_g1", 0, True)}, 7: {"r": ("_g1", 1, False)},
                    8: {"r": ("_g1", 2, False)},
                    10: {"r": ("_g2", 0, True)}, 11: {"r": ("_g2", 1, False)},
                    12: {"r": ("_g2", 2, False)}}


def test_add_and_sub_of_an_immediate_move_the_register():
    """sub $8 then add $4 to esp, and eax as a base register."""
    plan = _plan(r"""
        push %ebx
        push %ecx
        sub $8, %esp
        mov %edx, 12(%esp)
        add $4, %esp
        mov 4(%esp), %edx
        mov 0(%eax), %edx
        mov 4(%eax), %edx
        mov 8(%eax), %edx
    """)
    # pushes at esp0-4, -8; after sub 12(%esp) = esp0-4; after add 4(%esp) = esp0-8
    assert plan == {0: {"w": ("_g0", 1, True)}, 1: {"w": ("_g0", 0, False)},
                    3: {"w": ("_g0", 1, False)}, 5: {"r": ("_g0", 0, False)},
                    6: {"r": ("_g1", 0, True)}, 7: {"r": ("_g1", 1, False)},
                    8: {"r": ("_g1", 2, False)}}


def test_the_model_follows_each_kind_of_register_write():
    """A register loaded anew is a new value; an unmodelled instruction
    (xchg) makes every register one; ALU ops write their memory
    destination, not their source; leave reads (%ebp) and ret then reads
    above it; lea of eax is eax plus a constant; a span of exactly
    MAX_SPAN bytes is one group."""
    def kinds(source):
        return {k: {kind: (n, w) for kind, (n, w, _) in acc.items()}
                for k, acc in _plan(source).items()}

    reload = kinds(r"""
        mov 0(%eax), %ecx
        mov 4(%eax), %ecx
        mov 8(%eax), %ecx
        mov 0(%ebx), %eax
        mov 0(%eax), %edx
        mov 4(%eax), %edx
        mov 8(%eax), %edx
    """)
    assert [reload[k]["r"] for k in (4, 5, 6)] == [("_g1", 0), ("_g1", 1), ("_g1", 2)]
    assert kinds(r"""
        mov 0(%eax), %edx
        mov 4(%eax), %edx
        xchg %ebx, %ecx
        mov 8(%eax), %edx
        mov 12(%eax), %edx
    """) == {}
    alu = kinds(r"""
        add %ecx, 0(%esi)
        add %ecx, 4(%esi)
        add %ecx, 8(%esi)
        add 12(%edi), %ecx
    """)
    assert alu == {0: {"r": ("_g0", 0), "w": ("_g1", 0)}, 1: {"r": ("_g0", 1), "w": ("_g1", 1)},
                   2: {"r": ("_g0", 2), "w": ("_g1", 2)}}
    frame = kinds(r"""
        push %ebp
        mov %esp, %ebp
        push %esi
        leave
        ret
    """)
    assert frame == {0: {"w": ("_g0", 1)}, 2: {"w": ("_g0", 0)}, 3: {"r": ("_g0", 1)},
                     4: {"r": ("_g0", 2)}}
    lea = kinds(r"""
        mov 0(%eax), %edx
        lea 4(%eax), %ecx
        mov 0(%ecx), %edx
        mov 4(%ecx), %edx
    """)
    assert lea == {0: {"r": ("_g0", 0)}, 2: {"r": ("_g0", 1)}, 3: {"r": ("_g0", 2)}}
    wide = kinds(f"""
        mov 0(%eax), %edx
        mov 4(%eax), %edx
        mov {groups.MAX_SPAN}(%eax), %edx
    """)
    assert wide[2]["r"] == ("_g0", groups.MAX_SPAN // 4)
