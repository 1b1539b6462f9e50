"""Every system call, its failures and its successes, as JOS lab 4 defines
them, driven by real `int $0x30` from small assembled programs (asm.py).

Each program stores what the kernel returned into out[] and halts; the
tests read out[] back and look at what the console printed."""
import pytest

from jmig.kernel.env import ENV_NOT_RUNNABLE, NENV
from jmig.kernel.memlayout import FL_CF, FL_DF, PGSIZE, PTE_P, PTE_U, PTE_W, USTACKTOP

from .asm import Machine, assemble, needs_binutils

pytestmark = needs_binutils

# JOS's inc/error.h: the numbers compiled into every JOS program.  Written
# out here rather than imported from jmig (memlayout.py), so that a change
# of jmig's constants fails these tests instead of changing them too.
E_BAD_ENV, E_INVAL, E_NO_MEM, E_NO_FREE_ENV, E_IPC_NOT_RECV = 2, 3, 4, 5, 7

FIRST = 0x1000                 # the first env's id on a fresh kernel
SECOND = 0x1001
NEVER = 0x12345                # slot 0x345: never allocated on a fresh kernel
PAGE = 0x500000                # a free page-aligned user address
URW = PTE_U | PTE_P | PTE_W
UR = PTE_U | PTE_P


def run_body(body: str, *, memory=None, budget=200_000, before=()):
    """Assemble `_start: body; halt`, boot it on a fresh kernel (after the
    programs in `before`) and run until nothing is runnable."""
    m = Machine() if memory is None else Machine(memory=memory)
    for other in before:
        m.spawn(assemble(other))
    p = m.spawn(assemble("_start:\n" + body + "\n    halt\n"))
    m.run(budget)
    return m, p


def unmapped(p, va):
    return p.pte(va) is None


# -- -E_BAD_ENV --------------------------------------------------------------------

BAD_ENV_CALLS = {
    "env_destroy": "sys SYS_env_destroy, $ENV",
    "page_alloc": "sys SYS_page_alloc, $ENV, $0x500000, $PTE_U|PTE_P",
    "page_map_src": "sys SYS_page_map, $ENV, $UTEXT, $0, $0x500000, $PTE_U|PTE_P",
    "page_map_dst": "sys SYS_page_map, $0, $UTEXT, $ENV, $0x500000, $PTE_U|PTE_P",
    "page_unmap": "sys SYS_page_unmap, $ENV, $UTEXT",
    "env_set_status": "sys SYS_env_set_status, $ENV, $ENV_RUNNABLE",
    "env_set_pgfault_upcall": "sys SYS_env_set_pgfault_upcall, $ENV, $_start",
}


@pytest.mark.parametrize("call", list(BAD_ENV_CALLS.values()), ids=list(BAD_ENV_CALLS))
@pytest.mark.parametrize("envid", [NEVER, 0xFFFFFFFF, FIRST + 1], ids=["never", "minus1", "slot1"])
def test_syscall_naming_a_nonexistent_env_returns_e_bad_env(call, envid):
    m, p = run_body(f".set ENV, {envid:#x}\n" + call + "\nsave 0")
    assert p.out(0) == -E_BAD_ENV
    assert p.alive
    assert unmapped(p, PAGE)


def test_ipc_try_send_to_a_nonexistent_env_returns_e_bad_env():
    m, p = run_body(f"sys SYS_ipc_try_send, ${NEVER:#x}, $1, $UTOP, $0\nsave 0")
    assert p.out(0) == -E_BAD_ENV


def test_envid_of_a_destroyed_child_is_stale_even_after_its_slot_is_reused():
    m, p = run_body("""
        sys SYS_exofork
        save 0
        mov %eax, %ebp
        sys SYS_env_destroy, %ebp
        save 1
        sys SYS_page_alloc, %ebp, $0x500000, $PTE_U|PTE_P
        save 2
        sys SYS_env_set_status, %ebp, $ENV_RUNNABLE
        save 3
        sys SYS_exofork
        save 4
        sys SYS_env_destroy, %ebp
        save 5
    """)
    first, destroyed, alloc, status, second, again = p.outs(6)
    assert first == SECOND and destroyed == 0
    assert alloc == status == -E_BAD_ENV
    # JOS: gen = (old id + 0x1000) & ~0x3ff, same slot.
    assert second == 0x2001
    assert again == -E_BAD_ENV
    assert m.proc(0x2001).alive
    assert "[00001000] destroying 00001001" in m.lines
    assert "[00001000] free env 00001001" in m.lines


# -- permission: only self and children ------------------------------------------------

OTHER_ENV_CALLS = dict(BAD_ENV_CALLS,
                       env_set_status="sys SYS_env_set_status, $ENV, $ENV_NOT_RUNNABLE")


@pytest.mark.parametrize("call", list(OTHER_ENV_CALLS.values()), ids=list(OTHER_ENV_CALLS))
def test_syscall_on_an_env_that_is_not_a_child_is_refused_with_e_bad_env(call):
    # env 0x1000 just sits there; env 0x1001 (not its parent) reaches for it.
    m, p = run_body(f".set ENV, {FIRST:#x}\n" + call + "\nsave 0", before=["_start: halt"])
    other = m.proc(FIRST)
    assert p.envid == SECOND
    assert p.out(0) == -E_BAD_ENV
    assert other.alive
    assert unmapped(p, PAGE) and unmapped(other, PAGE)
    assert other.env.pgfault_upcall == 0


def test_child_cannot_touch_its_parent():
    # The parent shares its text and out pages with the child and starts it;
    # the child tries to allocate a page in its parent.
    m, p = run_body("""
        sys SYS_exofork
        test %eax, %eax
        jz child
        mov %eax, %ebp
        sys SYS_page_map, $0, $UTEXT, %ebp, $UTEXT, $PTE_U|PTE_P
        sys SYS_page_map, $0, $out, %ebp, $out, $PTE_U|PTE_P|PTE_W
        sys SYS_env_set_status, %ebp, $ENV_RUNNABLE
        save 0
        jmp done
    child:
        sys SYS_page_alloc, $0x1000, $0x500000, $PTE_U|PTE_P
        save 1
        sys SYS_env_set_status, $0x1000, $ENV_RUNNABLE
        save 2
        halt
    done:
    """)
    assert p.outs(3) == [0, -E_BAD_ENV, -E_BAD_ENV]
    assert unmapped(p, PAGE)


def test_every_permission_checked_syscall_succeeds_on_own_child():
    m, p = run_body("""
        sys SYS_exofork
        mov %eax, %ebp
        sys SYS_page_alloc, %ebp, $0x500000, $PTE_U|PTE_P|PTE_W
        save 0
        sys SYS_page_map, %ebp, $0x500000, $0, $0x600000, $PTE_U|PTE_P
        save 1
        sys SYS_page_map, $0, $UTEXT, %ebp, $UTEXT, $PTE_U|PTE_P
        save 2
        sys SYS_env_set_pgfault_upcall, %ebp, $0x800123
        save 3
        sys SYS_env_set_status, %ebp, $ENV_NOT_RUNNABLE
        save 4
        sys SYS_page_unmap, %ebp, $0x500000
        save 5
        sys SYS_env_destroy, %ebp
        save 6
    """)
    assert p.outs(7) == [0] * 7
    assert p.pte(0x600000) is not None           # the frame lives on through our mapping
    assert "[00001000] destroying 00001001" in m.lines
    assert "[00001000] free env 00001001" in m.lines
    assert len(m.k.live_envs()) == 1


def test_ipc_try_send_may_target_any_env():
    # 0x1000 waits in ipc_recv; 0x1001, not related, sends to it.
    receiver = """
    _start:
        sys SYS_ipc_recv, $UTOP
        save 0
        halt
    """
    m, p = run_body("""
    again:
        sys SYS_ipc_try_send, $0x1000, $0x77, $UTOP, $0
        cmp $-7, %eax
        jne sent
        sys SYS_yield
        jmp again
    sent:
        save 0
    """, before=[receiver])
    r = m.proc(FIRST, assemble(receiver))
    assert p.out(0) == 0
    assert r.out(0) == 0
    assert (r.env.ipc_value, r.env.ipc_from, r.env.ipc_perm) == (0x77, SECOND, 0)


# -- -E_INVAL: addresses ---------------------------------------------------------------

BAD_VA_CALLS = {
    "alloc_unaligned": "sys SYS_page_alloc, $0, $0x500001, $PTE_U|PTE_P",
    "alloc_utop": "sys SYS_page_alloc, $0, $UTOP, $PTE_U|PTE_P",
    "alloc_kernel": "sys SYS_page_alloc, $0, $0xf0000000, $PTE_U|PTE_P",
    "map_src_unaligned": "sys SYS_page_map, $0, $UTEXT+4, $0, $0x500000, $PTE_U|PTE_P",
    "map_src_utop": "sys SYS_page_map, $0, $UTOP, $0, $0x500000, $PTE_U|PTE_P",
    "map_src_uvpt": "sys SYS_page_map, $0, $UVPT, $0, $0x500000, $PTE_U|PTE_P",
    "map_dst_unaligned": "sys SYS_page_map, $0, $UTEXT, $0, $0x500800, $PTE_U|PTE_P",
    "map_dst_utop": "sys SYS_page_map, $0, $UTEXT, $0, $UTOP, $PTE_U|PTE_P",
    "map_dst_ulim": "sys SYS_page_map, $0, $UTEXT, $0, $ULIM, $PTE_U|PTE_P",
    "unmap_unaligned": "sys SYS_page_unmap, $0, $UTEXT+0x20",
    "unmap_utop": "sys SYS_page_unmap, $0, $UTOP",
    "unmap_uvpt": "sys SYS_page_unmap, $0, $UVPT",
}


@pytest.mark.parametrize("call", list(BAD_VA_CALLS.values()), ids=list(BAD_VA_CALLS))
def test_unaligned_or_kernel_address_returns_e_inval(call):
    m, p = run_body(call + "\nsave 0")
    assert p.out(0) == -E_INVAL
    assert unmapped(p, PAGE)
    assert p.pte(0x800000) is not None          # the text page was not unmapped


# -- -E_INVAL: permissions -------------------------------------------------------------

BAD_PERMS = {"zero": 0, "no_user": PTE_P | PTE_W, "not_present": PTE_U | PTE_W,
             "pwt": UR | 0x8, "pcd": UR | 0x10, "accessed": UR | 0x20, "dirty": UR | 0x40,
             "ps": UR | 0x80, "global": UR | 0x100, "bit12": UR | 0x1000,
             "high": UR | 0x80000000}


@pytest.mark.parametrize("perm", list(BAD_PERMS.values()), ids=list(BAD_PERMS))
@pytest.mark.parametrize("call", [
    "sys SYS_page_alloc, $0, $0x500000, $PERM",
    "sys SYS_page_map, $0, $UTEXT, $0, $0x500000, $PERM",
], ids=["page_alloc", "page_map"])
def test_perm_without_u_and_p_or_outside_pte_syscall_returns_e_inval(call, perm):
    m, p = run_body(f".set PERM, {perm:#x}\n" + call + "\nsave 0")
    assert p.out(0) == -E_INVAL
    assert unmapped(p, PAGE)


def test_perm_may_carry_w_and_the_avail_bits():
    m, p = run_body("""
        sys SYS_page_alloc, $0, $0x500000, $PTE_U|PTE_P|PTE_W|0xe00
        save 0
        sys SYS_page_map, $0, $0x500000, $0, $0x600000, $PTE_U|PTE_P|0x800
        save 1
        mov UVPT + (0x500000 >> 12) * 4, %eax
        save 2
        mov UVPT + (0x600000 >> 12) * 4, %eax
        save 3
    """)
    assert p.outs(2) == [0, 0]
    assert p.out(2) & 0xE07 == 0xE07
    assert p.out(3) & 0xE07 == 0x805
    assert p.out(2) >> 12 == p.out(3) >> 12


def test_page_map_of_an_unmapped_source_returns_e_inval():
    m, p = run_body("sys SYS_page_map, $0, $0x700000, $0, $0x500000, $PTE_U|PTE_P\nsave 0")
    assert p.out(0) == -E_INVAL
    assert unmapped(p, PAGE)


def test_page_map_cannot_add_write_permission_to_a_read_only_page():
    m, p = run_body("""
        sys SYS_page_alloc, $0, $0x500000, $PTE_U|PTE_P
        save 0
        sys SYS_page_map, $0, $0x500000, $0, $0x600000, $PTE_U|PTE_P|PTE_W
        save 1
        sys SYS_page_map, $0, $0x500000, $0, $0x600000, $PTE_U|PTE_P
        save 2
    """)
    assert p.outs(3) == [0, -E_INVAL, 0]
    assert p.pte(0x600000) & PTE_W == 0


@pytest.mark.parametrize("status", [0, 1, 3, 5, 0xFFFFFFFF],
                         ids=["free", "dying", "running", "five", "minus1"])
def test_env_set_status_other_than_runnable_or_not_runnable_returns_e_inval(status):
    m, p = run_body(f"""
        sys SYS_exofork
        mov %eax, %ebp
        sys SYS_env_set_status, %ebp, ${status:#x}
        save 0
        sys SYS_env_set_status, $0, ${status:#x}
        save 1
    """)
    assert p.outs(2) == [-E_INVAL, -E_INVAL]
    child = m.proc(SECOND)
    assert child.env.status == ENV_NOT_RUNNABLE


def test_env_set_status_runnable_on_self_returns_zero_and_keeps_running():
    m, p = run_body("sys SYS_env_set_status, $0, $ENV_RUNNABLE\nsave 0\nmovl $1, out+4")
    assert p.outs(2) == [0, 1]


# -- resource exhaustion ------------------------------------------------------------------

FILL_MEMORY = """
        mov $0x400000, %ebp
    more:
        sys SYS_page_alloc, $0, %ebp, $PTE_U|PTE_P|PTE_W
        test %eax, %eax
        jnz full
        add $0x1000, %ebp
        cmp $0x800000, %ebp
        jb more
    full:
        save 0
        mov %ebp, %eax
        save 1
"""


def test_page_alloc_runs_out_of_memory_with_e_no_mem_and_the_env_can_free_and_go_on():
    m = Machine(memory=40 * PGSIZE)
    p = m.spawn(assemble("_start:\n" + FILL_MEMORY + """
        sys SYS_exofork
        save 2
        sub $0x1000, %ebp
        sys SYS_page_unmap, $0, %ebp
        save 3
        sys SYS_page_alloc, $0, %ebp, $PTE_U|PTE_P|PTE_W
        save 4
        movl $0x5a5a5a5a, (%ebp)
        mov (%ebp), %eax
        save 5
        halt
    """))
    free_at_start = m.k.phys.nfree
    m.run()
    nomem, stop_va, fork, unmap, alloc, word = p.outs(6)
    assert nomem == -E_NO_MEM
    # One frame went to the page table for 0x400000..0x7fffff, the rest to pages.
    assert (stop_va - 0x400000) // PGSIZE == free_at_start - 1
    assert fork == -E_NO_MEM                    # no frame for the child's page directory
    assert unmap == 0 and alloc == 0 and word == 0x5A5A5A5A
    assert m.k.phys.nfree == 0
    assert len(m.k.live_envs()) == 1
    m.k.check_invariants()
    m.kill_all()
    assert m.all_frames_free()


def test_allocation_needing_a_page_table_fails_cleanly_with_one_frame_left():
    m = Machine(memory=40 * PGSIZE)
    p = m.spawn(assemble("_start:\n" + FILL_MEMORY + """
        sub $0x1000, %ebp
        sys SYS_page_unmap, $0, %ebp
        save 2
        # One frame is free; a page in a new 4 MB region needs two.
        sys SYS_page_alloc, $0, $0x1000000, $PTE_U|PTE_P|PTE_W
        save 3
        # The failed call must have given its frame back: a page table fits.
        sys SYS_page_map, $0, $0x400000, $0, $0x1000000, $PTE_U|PTE_P
        save 4
        sys SYS_page_map, $0, $0x400000, $0, $0x1400000, $PTE_U|PTE_P
        save 5
        halt
    """))
    m.run()
    assert p.out(0) == -E_NO_MEM
    assert p.outs(6)[2:] == [0, -E_NO_MEM, 0, -E_NO_MEM]
    assert m.k.phys.nfree == 0
    assert p.pte(0x1000000) >> 12 == p.pte(0x400000) >> 12
    assert unmapped(p, 0x1400000)
    m.k.check_invariants()


def test_exofork_runs_out_of_envs_with_e_no_free_env_after_1024():
    m, p = run_body(memory=8 << 20, body="""
        xor %ebp, %ebp
    fork:
        sys SYS_exofork
        test %eax, %eax
        jz fork                  # never reached: children stay NOT_RUNNABLE
        js full
        inc %ebp
        jmp fork
    full:
        save 0
        mov %ebp, %eax
        save 1
    """)
    assert p.outs(2) == [-E_NO_FREE_ENV, NENV - 1]
    assert len(m.k.live_envs()) == NENV
    assert m.k.envs[NENV - 1].env_id == 0x1000 + NENV - 1
    m.k.check_invariants()
    m.kill_all()
    assert m.all_frames_free()


# -- IPC ----------------------------------------------------------------------------------

WAITER = "_start: halt"


def test_ipc_try_send_to_an_env_that_is_not_receiving_returns_e_ipc_not_recv():
    m, p = run_body("""
        sys SYS_ipc_try_send, $0x1000, $1, $UTOP, $0
        save 0
        sys SYS_ipc_try_send, $0, $1, $UTOP, $0
        save 1
    """, before=[WAITER])
    assert p.outs(2) == [-E_IPC_NOT_RECV, -E_IPC_NOT_RECV]
    assert m.proc(FIRST).env.ipc_from == 0


def test_ipc_recv_with_an_unaligned_dstva_below_utop_returns_e_inval_without_blocking():
    m, p = run_body("sys SYS_ipc_recv, $0x500010\nsave 0\nmovl $1, out+4")
    assert p.outs(2) == [-E_INVAL, 1]
    assert p.env.ipc_recving == 0


def test_ipc_recv_blocks_until_a_send():
    m, p = run_body("sys SYS_ipc_recv, $0xffffffff\nsave 0")
    assert p.alive and p.env.ipc_recving == 1
    assert p.env.status == ENV_NOT_RUNNABLE
    assert p.out(0) == 0 and p.env.cpu.r[0] == 12     # still inside the call


RECEIVE_PAGE = """
_start:
    sys SYS_ipc_recv, $0x600000
    save 0
    mov 0x600000, %eax
    save 1
    movl $0x12345678, 0x600004
    halt
"""


def send_page_from(perm: str) -> str:
    return f"""
        sys SYS_page_alloc, $0, $0x500000, $PTE_U|PTE_P|PTE_W
        movl $0xfeedface, 0x500000
    again:
        sys SYS_ipc_try_send, $0x1000, $42, $0x500000, ${perm}
        cmp $-7, %eax
        jne sent
        sys SYS_yield
        jmp again
    sent:
        save 0
    """


def test_ipc_with_a_page_maps_the_senders_frame_at_dstva_with_perm():
    m, s = run_body(send_page_from("PTE_U|PTE_P|PTE_W"), before=[RECEIVE_PAGE])
    r = m.proc(FIRST, assemble(RECEIVE_PAGE))
    assert s.out(0) == 0
    assert r.out(0) == 0
    assert r.word(r.prog.out_va + 4) == 0xFEEDFACE
    assert (r.env.ipc_value, r.env.ipc_from, r.env.ipc_perm) == (42, SECOND, URW)
    assert r.pte(0x600000) >> 12 == s.pte(0x500000) >> 12
    assert s.word(0x500004) == 0x12345678             # the receiver's write, seen by the sender


def test_ipc_with_a_read_only_page_gives_the_receiver_a_read_only_mapping():
    m, s = run_body(send_page_from("PTE_U|PTE_P"), before=[RECEIVE_PAGE])
    assert s.out(0) == 0
    # The receiver read the page, then its write faulted: a protection
    # fault (present, read-only) on a write from user mode.
    assert not m.k.envs[0].status
    assert any(l.startswith("[00001000] user fault va 00600004 ip ") for l in m.lines)
    assert "  err  0x00000007 [user, write, protection]" in m.lines
    assert s.word(0x500004) == 0
    assert s.word(0x500000) == 0xFEEDFACE


def test_ipc_page_to_a_receiver_that_wants_none_sends_only_the_value():
    receiver = "_start:\n sys SYS_ipc_recv, $UTOP\n save 0\n halt\n"
    m, s = run_body(send_page_from("PTE_U|PTE_P"), before=[receiver])
    r = m.proc(FIRST)
    assert s.out(0) == 0
    assert (r.env.ipc_value, r.env.ipc_perm) == (42, 0)
    assert r.pte(0x500000) is None and r.pte(0x600000) is None


def test_ipc_try_send_checks_the_page_it_would_send():
    receiver = "_start:\n sys SYS_ipc_recv, $0x600000\n save 0\n halt\n"
    m, s = run_body("""
        sys SYS_page_alloc, $0, $0x500000, $PTE_U|PTE_P
        sys SYS_yield
        sys SYS_ipc_try_send, $0x1000, $1, $0x500010, $PTE_U|PTE_P
        save 0
        sys SYS_ipc_try_send, $0x1000, $1, $0x700000, $PTE_U|PTE_P
        save 1
        sys SYS_ipc_try_send, $0x1000, $1, $0x500000, $PTE_U|PTE_P|PTE_W
        save 2
        sys SYS_ipc_try_send, $0x1000, $1, $0x500000, $PTE_P
        save 3
        sys SYS_ipc_try_send, $0x1000, $1, $0x500000, $PTE_U|PTE_P|0x10
        save 4
        sys SYS_ipc_try_send, $0x1000, $9, $0x500000, $PTE_U|PTE_P
        save 5
    """, before=[receiver])
    r = m.proc(FIRST)
    assert s.outs(6) == [-E_INVAL] * 5 + [0]
    assert (r.env.ipc_value, r.env.ipc_perm) == (9, UR)


# -- the rest ---------------------------------------------------------------------------

def test_unknown_syscall_numbers_return_e_inval():
    m, p = run_body("""
        sys 13
        save 0
        sys 31
        save 1
        sys 34
        save 2
        sys 0x100
        save 3
        sys 0xffffffff
        save 4
    """)
    assert p.outs(5) == [-E_INVAL] * 5


def test_page_alloc_gives_a_zeroed_page_even_when_the_frame_is_reused():
    m, p = run_body("""
        sys SYS_page_alloc, $0, $0x500000, $PTE_U|PTE_P|PTE_W
        save 0
        mov UVPT + (0x500000 >> 12) * 4, %eax
        save 1
        mov $0x500000, %edi
        mov $-1, %eax
        mov $1024, %ecx
        rep stosl
        sys SYS_page_unmap, $0, $0x500000
        sys SYS_page_alloc, $0, $0x500000, $PTE_U|PTE_P|PTE_W
        save 2
        mov UVPT + (0x500000 >> 12) * 4, %eax
        save 3
        mov $0x500000, %esi
        xor %edx, %edx
        mov $1024, %ecx
    scan:
        or (%esi), %edx
        add $4, %esi
        dec %ecx
        jnz scan
        mov %edx, %eax
        save 4
    """)
    alloc1, pte1, alloc2, pte2, ored = p.outs(5)
    assert alloc1 == alloc2 == 0
    assert (pte1 >> 12) == (pte2 >> 12), "expected the freed frame to be handed out again"
    assert ored == 0


def test_page_map_shares_the_frame_between_both_mappings():
    m, p = run_body("""
        sys SYS_page_alloc, $0, $0x500000, $PTE_U|PTE_P|PTE_W
        sys SYS_page_map, $0, $0x500000, $0, $0x600000, $PTE_U|PTE_P|PTE_W
        save 0
        movl $0xcafe, 0x600ffc
        mov 0x500ffc, %eax
        save 1
        sys SYS_page_unmap, $0, $0x500000
        mov 0x600ffc, %eax
        save 2
    """)
    assert p.outs(3) == [0, 0xCAFE, 0xCAFE]


def test_page_unmap_then_access_faults_and_destroys_the_env():
    m, p = run_body("""
        sys SYS_page_alloc, $0, $0x500000, $PTE_U|PTE_P|PTE_W
        movl $1, 0x500000
        sys SYS_page_unmap, $0, $0x500000
        save 0
    touch:
        mov 0x500000, %eax
        save 1
    """)
    touch = p.prog.addr("touch")
    assert not p.alive
    assert f"[00001000] user fault va 00500000 ip {touch:08x}" in m.lines
    assert "  err  0x00000004 [user, read, not-present]" in m.lines
    assert m.lines[-1] == "[00001000] free env 00001000"
    assert m.all_frames_free()


def test_page_unmap_of_an_unmapped_page_succeeds():
    m, p = run_body("sys SYS_page_unmap, $0, $0x500000\nsave 0")
    assert p.out(0) == 0


def test_exofork_child_starts_with_eax_zero_and_the_parents_registers():
    m, p = run_body("""
        mov $0x11111111, %ebx
        mov $0x22222222, %ecx
        mov $0x33333333, %edx
        mov $0x44444444, %esi
        mov $0x55555555, %edi
        mov $0x66666666, %ebp
        stc
        mov $SYS_exofork, %eax
        int $0x30
    after:
        save 0
    """)
    child_id = p.out(0)
    assert child_id == SECOND
    c = m.proc(child_id).env
    assert c.cpu.r == [0, 0x22222222, 0x33333333, 0x11111111, USTACKTOP,
                       0x66666666, 0x44444444, 0x55555555]
    assert c.cpu.eip == p.prog.addr("after")
    assert c.cpu.eflags & FL_CF
    assert c.status == ENV_NOT_RUNNABLE and c.parent_id == FIRST
    assert "[00001000] new env 00001001" in m.lines


def test_exofork_child_given_pages_and_set_runnable_runs_from_the_fork_point():
    m, p = run_body("""
        mov $0x1234, %ebx
        sys SYS_exofork
        test %eax, %eax
        jz child
        mov %eax, %ebp
        sys SYS_page_map, $0, $UTEXT, %ebp, $UTEXT, $PTE_U|PTE_P
        sys SYS_page_map, $0, $out, %ebp, $out, $PTE_U|PTE_P|PTE_W
        sys SYS_env_set_status, %ebp, $ENV_RUNNABLE
        save 0
        jmp done
    child:
        save 1
        mov %ebx, %eax
        save 2
        sys SYS_getenvid
        save 3
        halt
    done:
    """)
    assert p.outs(4) == [0, 0, 0x1234, SECOND]


def test_getenvid_returns_each_envs_own_id():
    body = "_start:\n sys SYS_getenvid\n save 0\n halt\n"
    m = Machine()
    a = m.spawn(assemble(body))
    b = m.spawn(assemble(body))
    m.run()
    assert (a.out(0), b.out(0)) == (FIRST, SECOND)


def test_envid_zero_means_the_calling_env():
    m, p = run_body("""
        sys SYS_page_alloc, $0, $0x500000, $PTE_U|PTE_P|PTE_W
        save 0
        sys SYS_page_map, $0, $0x500000, $0x1000, $0x600000, $PTE_U|PTE_P
        save 1
        sys SYS_env_set_pgfault_upcall, $0, $0x800abc
        save 2
        sys SYS_env_set_status, $0, $ENV_RUNNABLE
        save 3
    """)
    assert p.outs(4) == [0, 0, 0, 0]
    assert p.pte(0x500000) >> 12 == p.pte(0x600000) >> 12
    assert p.env.pgfault_upcall == 0x800ABC


def test_env_destroy_zero_exits_gracefully():
    m, p = run_body("sys SYS_env_destroy, $0\nsave 0")
    assert not p.alive
    assert m.lines == ["[00000000] new env 00001000", "[00001000] exiting gracefully",
                       "[00001000] free env 00001000"]
    assert m.all_frames_free()


def test_time_msec_and_sleep_msec_follow_the_virtual_clock():
    m = Machine(start_ms=5000)
    p = m.spawn(assemble("""
    _start:
        sys SYS_time_msec
        save 0
        sys SYS_sleep_msec, $250
        save 1
        sys SYS_time_msec
        save 2
        movl $1, out+12
        halt
    """))
    m.clock.ms = 5040
    r = m.run()
    assert r.idle and r.next_wake == 5290
    assert p.out(0) == 40 and p.out(3) == 0          # asleep
    m.clock.ms = 5289
    assert m.run().idle and p.out(3) == 0
    m.clock.ms = 5290
    m.run()
    assert p.outs(4) == [40, 0, 290, 1]


def test_sleep_msec_zero_returns_at_once():
    m, p = run_body("sys SYS_sleep_msec, $0\nsave 0\nmovl $1, out+4")
    assert p.outs(2) == [0, 1]


def test_cputs_prints_the_callers_text():
    m, p = run_body("sys SYS_cputs, $msg, $6\nsave 0\njmp end\nmsg: .ascii \"hello!xx\"\nend:")
    assert p.out(0) == 0
    assert m.user_output(FIRST) == "hello!"


@pytest.mark.parametrize("va,length,bad", [
    (0x10, 5, 0x10),
    (0xF0100000, 4, 0xF0100000),
    (USTACKTOP - 2, 10, USTACKTOP),     # runs off the stack page into the guard page
    (0x500000, 1, 0x500000),            # an unmapped user page
])
def test_cputs_with_a_bad_pointer_fails_user_mem_check_and_destroys_the_caller(va, length, bad):
    m, p = run_body(f"""
        sys SYS_cputs, $msg, $3
        sys SYS_cputs, ${va:#x}, ${length}
        save 0
        jmp end
    msg: .ascii "ok\\n"
    end:
    """)
    assert not p.alive
    assert m.lines == ["[00000000] new env 00001000", "ok",
                       f"[00001000] user_mem_check assertion failure for va {bad:08x}",
                       "[00001000] free env 00001000"]
    assert m.all_frames_free()


def test_cputs_from_the_user_readable_uenvs_window_prints_it():
    # JOS maps UENVS with PTE_U|PTE_P, so user_mem_check lets it through:
    # the caller reads its own struct Env (env_id at offset 72) back.
    m, p = run_body("sys SYS_cputs, $UENVS + 72, $4\nsave 0")
    assert p.alive and p.out(0) == 0
    assert m.user_output(FIRST) == FIRST.to_bytes(4, "little").decode("latin-1")


# -- registers across a syscall -----------------------------------------------------

@pytest.mark.parametrize("num,eax", [
    (1, {0}),                       # cgetc: no input
    (2, {FIRST}),                   # getenvid
    (3, {-E_BAD_ENV}),              # env_destroy(0x22222222)
    (4, {-E_BAD_ENV}),              # page_alloc
    (5, {-E_BAD_ENV}),              # page_map
    (6, {-E_BAD_ENV}),              # page_unmap
    (7, {SECOND}),                  # exofork
    (8, {-E_BAD_ENV, -E_INVAL}),    # env_set_status(bad env, bad status): either check first
    (9, {-E_BAD_ENV}),              # env_set_pgfault_upcall
    (10, {10}),                     # yield: eax keeps the number
    (11, {-E_BAD_ENV}),             # ipc_try_send
    (12, {-E_INVAL}),               # ipc_recv(0x22222222): unaligned
    (32, {0}),                      # time_msec
    (99, {-E_INVAL}),               # unknown
], ids=lambda v: str(v) if isinstance(v, int) else None)
def test_syscall_preserves_every_register_but_eax(num, eax):
    m = Machine()
    p = m.spawn(assemble(f"""
    _start:
        mov $0x11111111, %ecx
        mov $0x22222222, %edx
        mov $0x33333333, %ebx
        mov $0x44444444, %esp
        mov $0x55555555, %ebp
        mov $0x66666666, %esi
        mov $0x77777777, %edi
        stc
        std
        mov ${num}, %eax
        int $0x30
    spin:
        jmp spin
    """))
    m.run(5_000)
    assert p.alive
    r = p.regs
    assert {k: v for k, v in r.items() if k != "eax"} == {
        "ecx": 0x11111111, "edx": 0x22222222, "ebx": 0x33333333, "esp": 0x44444444,
        "ebp": 0x55555555, "esi": 0x66666666, "edi": 0x77777777}
    assert r["eax"] - (1 << 32) * (r["eax"] >> 31) in eax
    assert p.env.cpu.eflags & (FL_CF | FL_DF) == FL_CF | FL_DF
    assert p.env.cpu.eip == p.prog.addr("spin")


def test_registers_survive_a_blocking_recv_while_another_env_clobbers_them():
    sender = """
    _start:
        mov $0xdeadbeef, %ebp
        mov $0xdeadbeef, %esi
    again:
        sys SYS_ipc_try_send, $0x1001, $7, $UTOP, $0
        cmp $-7, %eax
        jne sent
        sys SYS_yield
        jmp again
    sent:
        halt
    """
    m = Machine()
    m.spawn(assemble(sender))
    p = m.spawn(assemble("""
    _start:
        mov $0x11111111, %ecx
        mov $0x22222222, %edx
        mov $0x33333333, %ebx
        mov $0x44444444, %esp
        mov $0x55555555, %ebp
        mov $0x66666666, %esi
        mov $0x77777777, %edi
        mov $0xffffffff, %edx       # dstva >= UTOP: no page
        mov $SYS_ipc_recv, %eax
        int $0x30
    spin:
        jmp spin
    """))
    m.run(5_000)
    assert p.regs == {"eax": 0, "ecx": 0x11111111, "edx": 0xFFFFFFFF, "ebx": 0x33333333,
                      "esp": 0x44444444, "ebp": 0x55555555, "esi": 0x66666666,
                      "edi": 0x77777777}
    assert p.env.ipc_value == 7 and p.env.ipc_from == FIRST


def test_exofork_child_does_not_inherit_the_pgfault_upcall():
    m, p = run_body("""
        sys SYS_env_set_pgfault_upcall, $0, $0x800123
        sys SYS_exofork
        save 0
    """)
    assert p.env.pgfault_upcall == 0x800123
    assert m.proc(p.out(0)).env.pgfault_upcall == 0
