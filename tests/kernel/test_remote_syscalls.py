"""The kernel's side of syscalls on envs of other nodes (the node's side,
on real daemons, is tests/node/test_remote_ipc.py): a send or a destroy
naming an env that is not here holds the caller with an event for the
node, whose answer becomes its eax; a send from another node is
delivered as JOS delivers a local one, a page as a copy; a destroy or a
status change from another node applies to the caller's child only.  A
kernel without a node keeps JOS's -E_BAD_ENV."""
from jmig.kernel import events as ev
from jmig.kernel.env import ENV_FREE, ENV_NOT_RUNNABLE, ENV_RUNNABLE, ENV_SIZE
from jmig.kernel.kernel import WAITING_FOR, Kernel
from jmig.kernel.memlayout import (E_BAD_ENV, E_IPC_NOT_RECV, PGSIZE, PTE_P, PTE_U, PTE_W,
                                   UENVS)

from .asm import Machine, assemble, needs_binutils

pytestmark = needs_binutils

ABSENT = 0x1005                  # an env id no env of these tests has
PAGE_VA = 0x00a00000

SENDER = f"""
_start:
    sys SYS_page_alloc, $0, ${PAGE_VA:#x}, $7
    movl $0x5a5a1234, {PAGE_VA:#x}
    sys SYS_ipc_try_send, ${ABSENT:#x}, $77, ${PAGE_VA:#x}, $7
    save 0
    movl $1, out+4
    halt
"""

RECEIVER = f"""
_start:
    sys SYS_ipc_recv, ${PAGE_VA:#x}
    save 0
    movl $1, out+4
    halt
"""


def events_of(m, kind):
    return [e for e in m.events if isinstance(e, kind)]


def test_a_lone_kernel_answers_a_send_to_an_absent_env_with_bad_env():
    m = Machine()
    s = m.spawn(assemble(SENDER))
    m.run()
    assert s.outs(2) == [-E_BAD_ENV, 1]
    assert not events_of(m, ev.IpcSend)


def test_a_send_to_an_env_not_here_holds_the_sender_until_the_node_answers():
    m = Machine()
    m.k.remote_ipc = True
    s = m.spawn(assemble(SENDER))
    assert m.run().idle
    [sent] = events_of(m, ev.IpcSend)
    assert (sent.src, sent.dst, sent.value, sent.perm) == (s.envid, ABSENT, 77, 7)
    assert len(sent.page) == PGSIZE and sent.page[:4] == (0x5a5a1234).to_bytes(4, "little")
    assert s.env.frozen.startswith(WAITING_FOR) and s.out(1) == 0      # held, not run on
    assert m.k.network_result(s.envid, -E_IPC_NOT_RECV)
    m.run()
    assert s.outs(2) == [-E_IPC_NOT_RECV, 1] and not s.env.frozen
    assert not m.k.network_result(s.envid, 0)                        # no longer waiting


def test_a_value_only_send_to_an_env_not_here_offers_no_page_and_waits():
    # srcva = UTOP is JOS's "no page" (lib/ipc.c passes it with perm 0): the
    # send goes to the node with the value alone, not refused for its perm.
    m = Machine()
    m.k.remote_ipc = True
    s = m.spawn(assemble(f"""
    _start:
        sys SYS_ipc_try_send, ${ABSENT:#x}, $78, $UTOP, $0
        save 0
        movl $1, out+4
        halt
    """))
    assert m.run().idle
    [sent] = events_of(m, ev.IpcSend)
    assert (sent.src, sent.dst, sent.value, sent.page, sent.perm) == (s.envid, ABSENT, 78, None, 0)
    assert s.env.frozen.startswith(WAITING_FOR) and s.out(1) == 0
    assert m.k.network_result(s.envid, 0)
    m.run()
    assert s.outs(2) == [0, 1]


def test_a_send_from_another_node_is_delivered_with_a_copy_of_its_page():
    m = Machine()
    m.k.remote_ipc = True
    r = m.spawn(assemble(RECEIVER))
    page = bytes(range(256)) * 16
    assert m.k.ipc_deliver(0x2001, ABSENT, 1, None, 0) == -E_BAD_ENV
    m.k.pause(r.envid)
    assert m.k.ipc_deliver(0x2001, r.envid, 1, None, 0) == -E_IPC_NOT_RECV   # not yet receiving
    m.k.resume(r.envid)
    m.run()
    r.env.frozen = "migrating"                                        # held by a migration
    assert m.k.ipc_deliver(0x2001, r.envid, 1, page, PTE_P | PTE_U | PTE_W) == -E_IPC_NOT_RECV
    r.env.frozen = ""
    assert m.k.ipc_deliver(0x2001, r.envid, 42, page, PTE_P | PTE_U | PTE_W) == 0
    m.run()
    assert r.outs(2) == [0, 1]
    assert (r.env.ipc_from, r.env.ipc_value, r.env.ipc_perm) == (0x2001, 42, PTE_P | PTE_U | PTE_W)
    assert r.read(PAGE_VA, PGSIZE) == page
    assert m.k.ipc_deliver(0x2001, r.envid, 43, None, 0) == -E_IPC_NOT_RECV  # received already
    m.k.check_invariants()


def test_a_send_from_another_node_without_a_page_leaves_the_receiver_no_perm():
    # The receiver learns whether a page came from env_ipc_perm (lib/ipc.c's
    # perm_store): 0 for a value alone, and for a page it did not ask for.
    m = Machine()
    m.k.remote_ipc = True
    r = m.spawn(assemble(RECEIVER))
    m.run()
    assert m.k.ipc_deliver(0x2001, r.envid, 42, None, 0) == 0
    m.run()
    assert r.outs(2) == [0, 1]
    assert (r.env.ipc_from, r.env.ipc_value, r.env.ipc_perm) == (0x2001, 42, 0)
    assert r.pte(PAGE_VA) is None
    value_only = m.spawn(assemble("""
    _start:
        sys SYS_ipc_recv, $UTOP
        save 0
        halt
    """))
    m.run()
    page = bytes(PGSIZE)
    assert m.k.ipc_deliver(0x2001, value_only.envid, 43, page, PTE_P | PTE_U | PTE_W) == 0
    assert (value_only.env.ipc_value, value_only.env.ipc_perm) == (43, 0)
    m.k.check_invariants()


def test_destroy_and_set_status_from_another_node_apply_to_the_callers_child_only():
    m = Machine()
    m.k.remote_ipc = True
    parent = 0x2001
    c = m.spawn(assemble(RECEIVER), parent_id=parent)
    m.run()
    assert m.k.env_call(0x2002, c.envid, "destroy") == -E_BAD_ENV      # not its child
    assert m.k.env_call(parent, c.envid, "set_status", 99) < 0
    assert m.k.env_call(parent, c.envid, "set_status", ENV_NOT_RUNNABLE) == 0
    assert m.k.env_call(parent, c.envid, "destroy") == 0
    m.drain()
    assert not c.alive
    assert f"[{parent:08x}] destroying {c.envid:08x}" in m.console
    m.k.check_invariants()


def test_a_destroy_of_a_child_not_here_waits_for_the_node():
    m = Machine()
    m.k.remote_ipc = True
    p = m.spawn(assemble(f"""
    _start:
        sys SYS_env_destroy, ${ABSENT:#x}
        save 0
        halt
    """))
    m.run()
    [call] = events_of(m, ev.EnvCall)
    assert (call.src, call.dst, call.op) == (p.envid, ABSENT, "destroy")
    assert m.k.network_result(p.envid, 0)
    m.run()
    assert p.out(0) == 0


def test_the_slot_of_an_env_that_left_shows_it_until_it_ends_elsewhere():
    k = Kernel(memory=4 << 20, slots=range(0, 4))
    e = k.env_alloc(0)
    envid = e.env_id

    def word() -> int:                      # envs[e.index].env_status as user code reads it
        return k._window_word(UENVS + e.index * ENV_SIZE + 84)
    k.elsewhere.add(envid)                  # the node: a migration decided go
    k.env_destroy(e, 0, "migrated")
    assert e.status == ENV_FREE and word() == ENV_RUNNABLE
    others = [k.env_alloc(0) for _ in range(3)]
    assert e.index not in {o.index for o in others}         # its slot is not given out
    back = k.env_alloc(0, envid)                              # it comes back, same id
    assert back is e and word() == ENV_RUNNABLE and envid not in k.elsewhere
    k.elsewhere.add(envid)
    k.env_destroy(e, 0, "migrated again")
    k.env_gone(envid)                                          # it ended elsewhere
    assert word() == ENV_FREE and k.env_alloc(0).index == e.index
    k.check_invariants()


def test_a_fork_in_progress_is_seen_until_the_child_is_made_runnable():
    m = Machine()
    p = m.spawn(assemble("""
    _start:
        sys SYS_exofork
        save 0
        halt
    """))
    m.run()
    child = p.out(0)
    assert child > 0 and m.k.forking(p.envid)        # the child exists, not yet runnable
    assert not m.k.forking(child)
    m.k.set_status(m.k.envs[child & 0x3FF], ENV_RUNNABLE)    # what fork() does last
    assert not m.k.forking(p.envid)
