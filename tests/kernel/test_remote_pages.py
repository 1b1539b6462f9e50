"""An env whose pages are partly on another node (a pgfault migration's
destination): a syscall whose buffer reaches a remote page waits for that
page -- whichever page of the buffer it is -- and runs again once it is
installed (Kernel.need_local, Kernel._block)."""
import attrs

from jmig.kernel import events as ev
from jmig.kernel.env import ENV_RUNNABLE

from .asm import Machine, assemble, needs_binutils

pytestmark = needs_binutils

LOW, HIGH = 0x500000, 0x501000

# Writes "ABCD" at the last 4 bytes of LOW and "EFGH" at the start of HIGH,
# stops (the test moves it), then prints the 8 bytes across the boundary.
STRADDLE = f"""
_start:
    sys SYS_page_alloc, $0, ${LOW:#x}, $PTE_U|PTE_P|PTE_W
    sys SYS_page_alloc, $0, ${HIGH:#x}, $PTE_U|PTE_P|PTE_W
    movl $0x44434241, {HIGH - 4:#x}
    movl $0x48474645, {HIGH:#x}
    sys SYS_env_set_status, $0, $ENV_NOT_RUNNABLE
    sys SYS_yield
    sys SYS_cputs, ${HIGH - 4:#x}, $8
    save 0
    halt
"""


def moved_with_remote(m, envid, remote_vas):
    """envid moved into a new env here, runnable, with the pages at
    remote_vas on another node and the rest local: (the new env, {va:
    data} of its remote pages)."""
    h = attrs.evolve(m.k.header(envid), status=ENV_RUNNABLE)
    pages = [(x.va, x.perm, bytes(m.k.page_data(envid, x.va))) for x in m.k.env_pages(envid)]
    m.k.kill(envid)
    m.drain()
    e = m.k.create_from(h)
    for va, perm, data in pages:
        m.k.restore_page(e, va, perm, None if va in remote_vas else data)
    m.k.commit_incoming(e, resume=True)
    return e, {va: data for va, _, data in pages if va in remote_vas}


def test_a_syscall_whose_buffer_ends_in_a_remote_page_waits_for_that_page():
    m = Machine()
    p = m.spawn(assemble(STRADDLE))
    m.run()
    e, remote = moved_with_remote(m, p.envid, {HIGH})
    m.run()
    assert m.of_type(ev.EnvBlocked) == [ev.EnvBlocked(e.env_id, e.env_id, HIGH)]
    assert e.blocked_on == (e.env_id, HIGH)
    assert m.user_output(e.env_id) == ""                  # nothing printed yet
    assert m.k.env_info(e)["state"] == "waiting for pages"
    assert m.k.install_page(e.env_id, HIGH, remote[HIGH])
    assert e.blocked_on is None and not m.k.waiters
    m.run()
    assert m.user_output(e.env_id) == "ABCDEFGH"
    q = m.proc(e.env_id, p.prog)
    assert q.out(0) == 0
    m.k.check_invariants()

