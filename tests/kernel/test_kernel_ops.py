"""The operations a node performs on its kernel (pause, resume, kill, copy,
snapshot and restore, ps, vmmap), and the read-only windows (UENVS, UPAGES,
UVPT) through which user programs watch the kernel."""
import attrs
import pytest

from jmig.kernel import events as ev
from jmig.kernel.env import ENV_NOT_RUNNABLE, ENV_RUNNABLE
from jmig.kernel.memlayout import PGSIZE, PTE_P, PTE_U, PTE_W, UENVS, UPAGES, USTACKTOP, UVPD, UVPT

from .asm import Machine, assemble, needs_binutils

pytestmark = needs_binutils

FIRST = 0x1000
SECOND = 0x1001

# Counts in out[0] forever; ebx counts too, so registers move.
COUNTER = """
_start:
    addl $1, out
    inc %ebx
    jmp _start
"""

RECEIVER = """
_start:
    sys SYS_ipc_recv, $UTOP
    save 0
    movl $1, out+4
    halt
"""


def counting(m=None, budget=3_000):
    m = m or Machine()
    p = m.spawn(assemble(COUNTER), name="counter")
    m.run(budget)
    assert p.out(0) > 0
    return m, p


# -- refusals ---------------------------------------------------------------------------

OPS = ["pause", "resume", "kill", "copy", "header", "vmmap", "env_pages", "get_env"]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("envid", [SECOND, 0x2000, 0, -1, 0x1_0000_1000],
                         ids=["never", "stale", "zero", "negative", "too_big"])
def test_operation_on_an_unknown_env_is_refused_with_no_such_env(op, envid):
    m, p = counting()
    m.k.kill(p.envid)
    m.k.env_create(assemble(COUNTER).elf, None)      # slot 0 again, as 0x2000
    if envid == 0x2000:
        envid = FIRST                                 # the killed env's old id
    free = m.k.phys.nfree
    with pytest.raises(ev.KernelError) as exc:
        getattr(m.k, op)(envid)
    assert exc.value.code == ev.NO_SUCH_ENV
    assert len(m.k.live_envs()) == 1 and m.k.phys.nfree == free


def test_pausing_a_paused_env_is_refused_with_bad_state():
    m, p = counting()
    m.k.pause(p.envid)
    with pytest.raises(ev.KernelError) as exc:
        m.k.pause(p.envid)
    assert exc.value.code == ev.BAD_STATE
    assert p.env.paused


def test_resuming_a_running_env_is_refused_with_bad_state():
    m, p = counting()
    with pytest.raises(ev.KernelError) as exc:
        m.k.resume(p.envid)
    assert exc.value.code == ev.BAD_STATE
    assert not p.env.paused


# -- pause, resume, kill --------------------------------------------------------------

def test_pause_stops_an_env_and_resume_continues_it():
    m, p = counting()
    m.k.pause(p.envid)
    n = p.out(0)
    assert m.run(5_000).idle
    assert p.out(0) == n
    m.k.resume(p.envid)
    m.run(3_000)
    assert p.out(0) > n


def test_resume_restores_the_jos_status_so_a_receiver_stays_blocked():
    m = Machine()
    r = m.spawn(assemble(RECEIVER))
    m.run()
    m.k.pause(r.envid)
    m.k.resume(r.envid)
    assert m.run().idle
    assert r.env.status == ENV_NOT_RUNNABLE and r.env.ipc_recving
    assert r.out(1) == 0


def test_ipc_to_a_paused_receiver_is_delivered_and_it_runs_after_resume():
    m = Machine()
    r = m.spawn(assemble(RECEIVER))
    m.run()
    m.k.pause(r.envid)
    s = m.spawn(assemble("""
    _start:
        sys SYS_ipc_try_send, $0x1000, $99, $UTOP, $0
        save 0
        halt
    """))
    m.run()
    assert s.out(0) == 0
    assert r.env.ipc_value == 99 and r.env.paused
    assert r.out(1) == 0                              # still paused
    m.k.resume(r.envid)
    m.run()
    assert r.outs(2) == [0, 1]


def test_kill_destroys_the_env_like_jos_and_frees_its_frames():
    m, p = counting()
    m.drain()
    m.events.clear()
    m.k.kill(p.envid)
    m.drain()
    assert m.lines == ["[00000000] destroying 00001000", "[00000000] free env 00001000"]
    assert m.of_type(ev.EnvDestroyed) == [ev.EnvDestroyed(FIRST, "killed")]
    assert m.all_frames_free()


def test_kill_of_a_paused_env_works():
    m, p = counting()
    m.k.pause(p.envid)
    m.k.kill(p.envid)
    assert not p.alive and m.all_frames_free()


# -- copy ------------------------------------------------------------------------------

def test_copy_is_a_paused_twin_with_its_own_frames():
    m, p = counting()
    m.k.pause(p.envid)
    c = m.k.copy(p.envid)
    m.drain()
    assert c.env_id == SECOND and c.parent_id == FIRST
    assert c.paused and c.status == ENV_NOT_RUNNABLE
    assert c.cpu.r == p.env.cpu.r and c.cpu.eip == p.env.cpu.eip
    assert c.cpu.eflags == p.env.cpu.eflags
    mine = m.k.env_pages(p.envid)
    theirs = m.k.env_pages(c.env_id)
    assert [(x.va, x.perm) for x in theirs] == [(x.va, x.perm) for x in mine]
    for x in mine:
        assert bytes(m.k.page_data(c.env_id, x.va)) == bytes(m.k.page_data(p.envid, x.va))
    frames = {va >> 12: pte >> 12 for va, pte in p.env.aspace.pte.items()}
    copy_frames = {va >> 12: pte >> 12 for va, pte in c.aspace.pte.items()}
    assert not set(frames.values()) & set(copy_frames.values())
    assert "[00001000] new env 00001001" in m.lines
    assert ev.EnvCreated(SECOND, FIRST, "counter") in m.events
    m.k.check_invariants()


def test_running_the_copy_does_not_change_the_original():
    m, p = counting()
    m.k.pause(p.envid)
    n = p.out(0)
    c = m.proc(m.k.copy(p.envid).env_id, p.prog)
    assert c.out(0) == n
    m.k.resume(c.envid)
    m.run(3_000)
    assert c.out(0) > n
    assert p.out(0) == n


def test_copy_of_a_receiving_env_is_receiving_too():
    m = Machine()
    r = m.spawn(assemble(RECEIVER))
    m.run()
    c = m.proc(m.k.copy(r.envid).env_id, r.prog)
    m.k.resume(c.envid)
    assert m.run().idle
    assert c.env.ipc_recving and c.out(1) == 0
    s = m.spawn(assemble(f"""
    _start:
        sys SYS_ipc_try_send, ${c.envid:#x}, $5, $UTOP, $0
        halt
    """))
    m.run()
    assert c.outs(2) == [0, 1] and c.env.ipc_value == 5
    assert r.out(1) == 0


def test_copy_without_enough_memory_is_refused_and_creates_nothing():
    m = Machine(memory=16 * PGSIZE)
    p = m.spawn(assemble(COUNTER))
    while m.k.phys.nfree > 3:                          # leave too little for a copy
        m.k.phys.incref(m.k.phys.page_alloc())
    free = m.k.phys.nfree
    with pytest.raises(ev.KernelError) as exc:
        m.k.copy(p.envid)
    assert exc.value.code == ev.NO_MEMORY
    assert len(m.k.live_envs()) == 1 and m.k.phys.nfree == free


# -- snapshot and restore --------------------------------------------------------------

def snapshot(m, envid):
    h = m.k.header(envid)
    pages = [(x.va, x.perm, bytes(m.k.page_data(envid, x.va))) for x in m.k.env_pages(envid)]
    return h, pages


def arrived_remote(m, envid):
    """Env envid moved into a new env whose pages are all remote, as a
    pgfault migration's destination has it after the commit: (the new
    env, [(va, perm, data)] of the pages it lacks)."""
    m.k.pause(envid)
    h, pages = snapshot(m, envid)
    m.k.kill(envid)
    e = m.k.create_from(h)
    for va, perm, _ in pages:
        m.k.restore_page(e, va, perm, None)
    m.k.commit_incoming(e)
    return e, pages


def restore(m, h, pages, **kw):
    e = m.k.create_from(h, **kw)
    for va, perm, data in pages:
        m.k.restore_page(e, va, perm, data)
    return m.k.commit_incoming(e)


def test_snapshot_and_restore_round_trips_registers_and_memory_keeping_the_id():
    m, p = counting()
    m.k.pause(p.envid)
    h, pages = snapshot(m, p.envid)
    n = p.out(0)
    m.k.kill(p.envid)
    m.drain()
    e = restore(m, h, pages)
    m.drain()
    assert e.env_id == FIRST
    assert m.k.header(FIRST) == h
    assert snapshot(m, FIRST)[1] == pages
    assert e.paused and not e.frozen
    assert ev.EnvCreated(FIRST, 0, "counter") in m.events
    m.k.resume(FIRST)
    q = m.proc(FIRST, p.prog)
    m.run(3_000)
    assert q.out(0) > n
    assert q.env.cpu.r[3] - h.regs[3] == q.out(0) - n     # ebx kept counting along
    m.k.kill(FIRST)
    assert m.all_frames_free()


def test_restore_takes_a_new_id_when_the_old_one_is_in_use_or_not_wanted():
    m, p = counting()
    m.k.pause(p.envid)
    h, pages = snapshot(m, p.envid)
    busy = restore(m, h, pages)
    assert busy.env_id == SECOND
    m.k.kill(p.envid)
    fresh = restore(m, h, pages, keep_id=False)
    assert fresh.env_id not in (FIRST, SECOND)
    assert m.k.header(fresh.env_id).regs == h.regs


def test_an_incoming_env_cannot_be_resumed_before_commit():
    m, p = counting()
    h, pages = snapshot(m, p.envid)
    e = m.k.create_from(h, keep_id=False)
    with pytest.raises(ev.KernelError) as exc:
        m.k.resume(e.env_id)
    assert exc.value.code == ev.BAD_STATE
    m.k.commit_incoming(e, resume=True)
    assert not e.paused


@pytest.mark.parametrize("va,perm", [(0x500004, PTE_U | PTE_P), (0xEEC00000, PTE_U | PTE_P),
                                     (0x500000, PTE_P), (0x500000, PTE_U | PTE_P | 0x40)],
                         ids=["unaligned", "at_utop", "without_u", "beyond_pte_syscall"])
def test_restore_page_refuses_a_bad_page_with_bad_snapshot(va, perm):
    m, p = counting()
    e = m.k.create_from(m.k.header(p.envid), keep_id=False)
    with pytest.raises(ev.KernelError) as exc:
        m.k.restore_page(e, va, perm, bytes(PGSIZE))
    assert exc.value.code == ev.BAD_SNAPSHOT


def test_restore_page_refuses_a_page_given_twice():
    m, p = counting()
    e = m.k.create_from(m.k.header(p.envid), keep_id=False)
    m.k.restore_page(e, 0x500000, PTE_U | PTE_P, bytes(PGSIZE))
    with pytest.raises(ev.KernelError) as exc:
        m.k.restore_page(e, 0x500000, PTE_U | PTE_P, bytes(PGSIZE))
    assert exc.value.code == ev.BAD_SNAPSHOT


@pytest.mark.parametrize("size", [0, 100, PGSIZE - 1, PGSIZE + 1])
def test_restore_page_refuses_data_that_is_not_one_page_with_bad_snapshot(size):
    m, p = counting()
    e = m.k.create_from(m.k.header(p.envid), keep_id=False)
    free = m.k.phys.nfree
    with pytest.raises(ev.KernelError) as exc:
        m.k.restore_page(e, 0x500000, PTE_U | PTE_P, b"x" * size)
    assert exc.value.code == ev.BAD_SNAPSHOT
    assert e.aspace.pte.get(0x500) is None, "a page was mapped with another env's old contents"
    assert m.k.phys.nfree == free
    m.k.check_invariants()


@pytest.mark.parametrize("size", [10, PGSIZE + 1])
def test_install_page_refuses_data_that_is_not_one_page_and_keeps_the_page_remote(size):
    m, p = counting()
    m.k.pause(p.envid)
    h, pages = snapshot(m, p.envid)
    e = m.k.create_from(h, keep_id=False)
    for va, perm, _ in pages:
        m.k.restore_page(e, va, perm, None)
    m.k.commit_incoming(e)
    free = m.k.phys.nfree
    with pytest.raises(ev.KernelError):
        m.k.install_page(e.env_id, pages[0][0], b"y" * size)
    assert m.k.remote_pages(e.env_id) == [va for va, _, _ in pages]
    assert m.k.phys.nfree == free
    m.k.check_invariants()
    assert m.k.install_page(e.env_id, pages[0][0], pages[0][2])


def test_install_page_of_a_page_already_local_changes_nothing():
    # A late or duplicate page (the pager sent it twice, or after the env
    # had it and wrote to it): the env's own contents win.
    m, p = counting()
    e, pages = arrived_remote(m, p.envid)
    for va, _, data in pages:
        assert m.k.install_page(e.env_id, va, data)
    m.k.resume(e.env_id)
    q = m.proc(e.env_id, p.prog)
    before = q.out(0)
    m.run(3_000)
    now = q.out(0)
    assert now > before
    out_page = q.prog.out_va & ~0xFFF
    stale = dict((va, data) for va, _, data in pages)[out_page]
    free = m.k.phys.nfree
    assert not m.k.install_page(e.env_id, out_page, stale)
    assert not m.k.install_page(e.env_id, out_page, b"\xff" * PGSIZE)
    assert q.out(0) == now, "a late page overwrote what the env wrote"
    assert m.k.phys.nfree == free
    m.k.check_invariants()


def test_create_from_refuses_a_header_with_a_bad_status():
    m, p = counting()
    h = attrs.evolve(m.k.header(p.envid), status=3)
    with pytest.raises(ev.KernelError) as exc:
        m.k.create_from(h)
    assert exc.value.code == ev.BAD_SNAPSHOT
    assert len(m.k.live_envs()) == 1


def test_abort_incoming_leaves_no_env_and_no_frame_behind():
    m, p = counting()
    m.k.pause(p.envid)
    h, pages = snapshot(m, p.envid)
    free = m.k.phys.nfree
    m.drain()
    e = m.k.create_from(h, keep_id=False)
    for va, perm, data in pages:
        m.k.restore_page(e, va, perm, data)
    m.k.restore_page(e, 0x10000000, PTE_U | PTE_P | PTE_W, None)    # remote: a page table only
    m.k.abort_incoming(e)
    assert m.k.phys.nfree == free
    assert [x.env_id for x in m.k.live_envs()] == [FIRST]
    assert not any(isinstance(x, ev.EnvCreated) for x in m.drain())
    m.k.check_invariants()


def test_abort_incoming_after_commit_does_nothing():
    m, p = counting()
    h, pages = snapshot(m, p.envid)
    e = restore(m, h, pages, keep_id=False)
    m.k.abort_incoming(e)
    assert m.proc(e.env_id).alive


# -- ps and vmmap -----------------------------------------------------------------------

def ps_of(m, envid):
    (row,) = [r for r in m.k.ps() if r["envid"] == envid]
    return row


def test_ps_reports_statuses_with_paused_envs_as_sleeping():
    m, p = counting()
    r = m.spawn(assemble(RECEIVER), name="recv")
    m.run(3_000)
    row = ps_of(m, p.envid)
    assert row["status"] in ("Running", "Runnable") and row["name"] == "counter"
    assert row["parent"] == 0 and row["pages"] == 3 and row["state"] == ""
    assert ps_of(m, r.envid)["status"] == "Sleeping"
    assert ps_of(m, r.envid)["state"] == "ipc_recv"
    m.k.pause(p.envid)
    assert ps_of(m, p.envid)["status"] == "Sleeping"
    assert ps_of(m, p.envid)["state"] == "paused"
    m.k.resume(p.envid)
    assert ps_of(m, p.envid)["status"] in ("Running", "Runnable")


def test_ps_shows_a_sleeping_env_and_its_time_left():
    m = Machine()
    p = m.spawn(assemble("_start:\n sys SYS_sleep_msec, $500\n halt\n"))
    m.run()
    assert "sleeping 500ms" in ps_of(m, p.envid)["state"]


def test_vmmap_merges_pages_with_the_same_perm_and_state():
    m = Machine()
    p = m.spawn(assemble("""
    _start:
        sys SYS_page_alloc, $0, $0x500000, $PTE_U|PTE_P|PTE_W
        sys SYS_page_alloc, $0, $0x501000, $PTE_U|PTE_P|PTE_W
        sys SYS_page_alloc, $0, $0x502000, $PTE_U|PTE_P|PTE_W
        sys SYS_page_alloc, $0, $0x503000, $PTE_U|PTE_P|PTE_W
        sys SYS_page_alloc, $0, $0x504000, $PTE_U|PTE_P
        sys SYS_page_alloc, $0, $0x600000, $PTE_U|PTE_P|PTE_W|0x400
        movl $1, 0x502000
        halt
    """))
    m.run()
    got = [(r["start"], r["end"], r["perm"], r["state"], r["pages"])
           for r in m.k.vmmap(p.envid) if r["start"] < 0x800000]
    assert got == [
        (0x500000, 0x502000, 7, "present", 2),
        (0x502000, 0x503000, 7, "dirty", 1),
        (0x503000, 0x504000, 7, "present", 1),
        (0x504000, 0x505000, 5, "present", 1),
        (0x600000, 0x601000, 0x407, "present", 1),
    ]
    assert m.k.vmmap(p.envid)[-1]["end"] == USTACKTOP


# -- the windows user programs read -------------------------------------------------------

def test_uenvs_shows_live_env_id_parent_and_status():
    m = Machine()
    p = m.spawn(assemble("""
    _start:
        sys SYS_getenvid
        and $0x3ff, %eax
        imul $ENV_SIZE, %eax, %esi
        add $UENVS, %esi                # esi = &envs[ENVX(me)]
        mov ENV_ID(%esi), %eax
        save 0
        mov ENV_PARENT_ID(%esi), %eax
        save 1
        mov ENV_STATUS(%esi), %eax
        save 2
        sys SYS_exofork
        save 3
        mov %eax, %ebp
        and $0x3ff, %eax
        imul $ENV_SIZE, %eax, %esi      # esi = &envs[ENVX(child)]
        add $UENVS, %esi
        mov ENV_STATUS(%esi), %eax
        save 4
        mov ENV_PARENT_ID(%esi), %eax
        save 5
        mov ENV_ID(%esi), %eax
        save 6
        sys SYS_env_set_status, %ebp, $ENV_RUNNABLE
        mov ENV_STATUS(%esi), %eax
        save 7
        sys SYS_env_destroy, %ebp
        mov ENV_STATUS(%esi), %eax
        save 8
    """ + "\n halt\n"))
    m.run()
    assert p.outs(9) == [FIRST, 0, 3,            # me: RUNNING while I read it
                         SECOND, 4, FIRST, SECOND,  # the child: NOT_RUNNABLE, mine
                         2,                         # after env_set_status
                         0]                         # after env_destroy: FREE


def test_uenvs_shows_a_stopped_childs_trapframe():
    m = Machine()
    p = m.spawn(assemble("""
    _start:
        mov $0x12345678, %esi
        sys SYS_exofork
    forked:
        and $0x3ff, %eax
        imul $ENV_SIZE, %eax, %ebp
        add $UENVS, %ebp                # ebp = &envs[ENVX(child)]
        mov 28(%ebp), %eax              # tf_regs.reg_eax
        save 0
        mov 4(%ebp), %eax               # tf_regs.reg_esi
        save 1
        mov 48(%ebp), %eax              # tf_eip
        save 2
        movzwl 52(%ebp), %eax           # tf_cs
        save 3
        mov 56(%ebp), %eax              # tf_eflags
        save 4
        mov 60(%ebp), %eax              # tf_esp
        save 5
        movzwl 64(%ebp), %eax           # tf_ss
        save 6
        movzwl 36(%ebp), %eax           # tf_ds
        save 7
        halt
    """))
    m.run()
    eax, esi, eip, cs, eflags, esp, ss, ds = p.outs(8)
    assert (eax, esi, eip) == (0, 0x12345678, p.prog.addr("forked"))
    assert (cs, ss, ds) == (0x1B, 0x23, 0x23)
    assert eflags & 0x202 == 0x202 and esp & 0xFFFFFFFF == USTACKTOP


def test_uenvs_shows_a_paused_env_as_not_runnable_while_paused():
    m = Machine(slice=500)
    watched = m.spawn(assemble(COUNTER))
    watcher = m.spawn(assemble("""
    _start:
        mov UENVS + ENV_STATUS, %eax
        save 0
        sys SYS_yield
        jmp _start
    """))
    m.run(3_000)
    assert watcher.out(0) == ENV_RUNNABLE
    m.k.pause(watched.envid)
    m.run(3_000)
    assert watcher.out(0) == ENV_NOT_RUNNABLE
    m.k.resume(watched.envid)
    m.run(3_000)
    assert watcher.out(0) == ENV_RUNNABLE


def test_upages_shows_each_frames_pp_ref():
    m = Machine()
    p = m.spawn(assemble("""
    _start:
        sys SYS_page_alloc, $0, $0x500000, $PTE_U|PTE_P|PTE_W
        mov UVPT + (0x500000 >> 12) * 4, %eax
        shr $12, %eax
        lea UPAGES + 4(,%eax,8), %ebp   # &pages[PGNUM(pa)].pp_ref
        movzwl (%ebp), %eax
        save 0
        sys SYS_page_map, $0, $0x500000, $0, $0x600000, $PTE_U|PTE_P
        movzwl (%ebp), %eax
        save 1
        sys SYS_exofork
        save 9
        sys SYS_page_map, $0, $0x500000, out+36, $0x500000, $PTE_U|PTE_P
        movzwl (%ebp), %eax
        save 2
        sys SYS_page_unmap, $0, $0x600000
        movzwl (%ebp), %eax
        save 3
        sys SYS_env_destroy, out+36
        movzwl (%ebp), %eax
        save 4
        halt
    """))
    m.run()
    assert p.outs(5) == [1, 2, 3, 2, 1]
    pfn = p.pte(0x500000) >> 12
    assert m.k.phys.ref[pfn] == 1


@pytest.mark.parametrize("va", [UENVS, UENVS + 0x7C + 84, UPAGES + 8, UVPT, UVPD,
                                UVPT + (0x800000 >> 12) * 4],
                         ids=["uenvs", "an_env_status", "upages", "uvpt", "uvpd", "uvpt_of_utext"])
def test_writing_to_a_read_only_window_is_a_user_write_protection_fault(va):
    m = Machine()
    p = m.spawn(assemble(f"_start:\n movl $1, {va:#x}\n halt\n"))
    m.run()
    assert not p.alive
    assert f"[00001000] user fault va {va:08x} ip 00800020" in m.lines
    assert "  err  0x00000007 [user, write, protection]" in m.lines
    assert m.of_type(ev.EnvFaulted)[0].err == 7
    assert m.all_frames_free()


def test_reading_at_ulim_is_a_user_read_protection_fault():
    m = Machine()
    p = m.spawn(assemble("_start:\n mov 0xef800000, %eax\n halt\n"))
    m.run()
    assert "[00001000] user fault va ef800000 ip 00800020" in m.lines
    assert "  err  0x00000005 [user, read, protection]" in m.lines
