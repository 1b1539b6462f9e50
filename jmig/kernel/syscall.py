"""System calls: JOS lab 4's thirteen, with JOS's checks, plus jmig's own.

`int $0x30` with eax = number and arguments a1..a5 in edx, ecx, ebx, edi,
esi; the result goes back in eax (negative: -E_*).

jmig's additions, on numbers JOS lab 4 does not use:

    32  SYS_time_msec   -> milliseconds since the node started (uint32, wraps)
    33  SYS_sleep_msec  ms: the env does not run for ms milliseconds; returns 0

A syscall whose arguments touch a page that still lives on another node
(demand-paging migration) does nothing yet: the env blocks until the page
arrives and then executes the `int $0x30` again.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .env import ENV_NOT_RUNNABLE, ENV_RUNNABLE, Blocked as _Blocked, Env
from .memlayout import (
    E_BAD_ENV, E_INVAL, E_IPC_NOT_RECV, E_NO_FREE_ENV, E_NO_MEM, PGSIZE, PTE_P, PTE_REMOTE,
    PTE_SYSCALL, PTE_U, PTE_W, UTOP,
)
from . import events as ev

if TYPE_CHECKING:
    from .kernel import Kernel

SYS_cputs = 0
SYS_cgetc = 1
SYS_getenvid = 2
SYS_env_destroy = 3
SYS_page_alloc = 4
SYS_page_map = 5
SYS_page_unmap = 6
SYS_exofork = 7
SYS_env_set_status = 8
SYS_env_set_pgfault_upcall = 9
SYS_yield = 10
SYS_ipc_try_send = 11
SYS_ipc_recv = 12
SYS_time_msec = 32
SYS_sleep_msec = 33

MAX_SLEEP_MS = 24 * 3600 * 1000


class _NetWait(Exception):
    """The syscall's answer comes from another node: the env waits."""

    def __init__(self, event):
        self.event = event


class _Stop(Exception):
    """The caller gives up the CPU (yield, block, destroyed)."""


STOP = object()      # returned instead of raising _Stop by the frequent ones


def _perm_ok(perm: int) -> bool:
    return perm & (PTE_U | PTE_P) == (PTE_U | PTE_P) and perm & ~PTE_SYSCALL == 0


def _va_ok(va: int) -> bool:
    return va < UTOP and va % PGSIZE == 0


def sys_cputs(k: Kernel, e: Env, s: int, length: int, *_):
    if not k.user_mem_assert(e, s, length, PTE_U):
        raise _Stop
    k.need_local(e, s, length)
    data = e.aspace.read(s, length) if length else b""
    k.events.append(ev.Console(data.decode("latin-1"), e.env_id))
    return 0


def sys_cgetc(k, e, *_):
    return 0                    # jmig nodes have no console input


def sys_getenvid(k, e, *_):
    return e.env_id


def _elsewhere(k: Kernel, e: Env, envid: int) -> bool:
    """Whether a syscall naming envid must ask another node: it is not
    here (or lives elsewhere now) and the node can ask (Kernel.remote_ipc)."""
    return k.remote_ipc and envid not in (0, e.env_id) and (
        envid in k.elsewhere or k.envid2env(envid, None, False) is None)


def sys_env_destroy(k: Kernel, e: Env, envid: int, *_):
    t = k.envid2env(envid, e, True)
    if _elsewhere(k, e, envid):
        raise _NetWait(ev.EnvCall(e.env_id, envid, "destroy"))
    if t is None:
        return -E_BAD_ENV
    if t is e:
        k.cprintf(f"[{e.env_id:08x}] exiting gracefully\n")
        k.env_destroy(t, e.env_id, "exit")
        raise _Stop
    k.cprintf(f"[{e.env_id:08x}] destroying {t.env_id:08x}\n")
    k.env_destroy(t, e.env_id, f"destroyed by {e.env_id:08x}")
    return 0


def sys_page_alloc(k: Kernel, e: Env, envid: int, va: int, perm: int, *_):
    t = k.envid2env(envid, e, True)
    if t is None:
        return -E_BAD_ENV
    if not _va_ok(va) or not _perm_ok(perm):
        return -E_INVAL
    pfn = k.phys.page_alloc()
    if pfn is None:
        return -E_NO_MEM
    if not t.aspace.page_insert(pfn, va, perm):
        k.phys.page_free(pfn)
        return -E_NO_MEM
    return 0


def sys_page_map(k: Kernel, e: Env, srcenvid: int, srcva: int, dstenvid: int, dstva: int,
                 perm: int):
    src = k.envid2env(srcenvid, e, True)
    dst = k.envid2env(dstenvid, e, True)
    if src is None or dst is None:
        return -E_BAD_ENV
    if not _va_ok(srcva) or not _va_ok(dstva):
        return -E_INVAL
    pte = src.aspace.page_lookup(srcva)
    if pte is None:
        return -E_INVAL
    if not _perm_ok(perm):
        return -E_INVAL
    if perm & PTE_W and not pte & PTE_W:
        return -E_INVAL
    if pte & PTE_REMOTE:
        raise _Blocked(src, srcva)
    if not dst.aspace.page_insert(pte >> 12 & 0xFFFFF, dstva, perm):
        return -E_NO_MEM
    return 0


def sys_page_unmap(k: Kernel, e: Env, envid: int, va: int, *_):
    t = k.envid2env(envid, e, True)
    if t is None:
        return -E_BAD_ENV
    if not _va_ok(va):
        return -E_INVAL
    t.aspace.page_remove(va)
    return 0


def sys_exofork(k: Kernel, e: Env, *_):
    try:
        child = k.env_alloc(e.env_id)
    except ev.KernelError as exc:
        return -E_NO_MEM if exc.code == ev.NO_MEMORY else -E_NO_FREE_ENV
    child.status = ENV_NOT_RUNNABLE
    child.cpu = e.cpu.copy()
    child.cpu.r[0] = 0
    child.name = e.name
    k.events.append(ev.EnvCreated(child.env_id, e.env_id, child.name))
    return child.env_id


def sys_env_set_status(k: Kernel, e: Env, envid: int, status: int, *_):
    if status not in (ENV_RUNNABLE, ENV_NOT_RUNNABLE):
        return -E_INVAL
    t = k.envid2env(envid, e, True)
    if _elsewhere(k, e, envid):
        raise _NetWait(ev.EnvCall(e.env_id, envid, "set_status", status))
    if t is None:
        return -E_BAD_ENV
    k.set_status(t, status)
    return 0


def sys_env_set_pgfault_upcall(k: Kernel, e: Env, envid: int, func: int, *_):
    t = k.envid2env(envid, e, True)
    if t is None:
        return -E_BAD_ENV
    t.pgfault_upcall = func
    return 0


def sys_yield(k, e, *_):
    return STOP                          # eax keeps the syscall number, as on JOS


def _offered_page(e: Env, srcva: int, perm: int) -> int:
    """JOS's checks of the page a send offers at srcva (below UTOP): its
    PTE, or -E_INVAL."""
    if srcva % PGSIZE or not _perm_ok(perm):
        return -E_INVAL
    pte = e.aspace.page_lookup(srcva)
    if pte is None or (perm & PTE_W and not pte & PTE_W):
        return -E_INVAL
    return pte


def sys_ipc_try_send(k: Kernel, e: Env, envid: int, value: int, srcva: int, perm: int, *_):
    t = k.envid2env(envid, e, False)
    if _elsewhere(k, e, envid):
        page = None
        if srcva < UTOP:
            pte = _offered_page(e, srcva, perm)
            if pte < 0:
                return pte
            if pte & PTE_REMOTE:
                raise _Blocked(e, srcva)
            base = (pte >> 12 & 0xFFFFF) << 12
            page = bytes(k.phys.mem[base:base + PGSIZE])
        # Another node answers: e waits in the kernel (Kernel.network_result).
        raise _NetWait(ev.IpcSend(e.env_id, envid, value, page, perm if page else 0))
    if t is None:
        return -E_BAD_ENV
    if t.frozen:
        return -E_IPC_NOT_RECV          # held by a migration: try again once it settles
    if not t.ipc_recving:
        return -E_IPC_NOT_RECV
    sent_perm = 0
    if srcva < UTOP:
        pte = _offered_page(e, srcva, perm)
        if pte < 0:
            return pte
        if t.ipc_dstva < UTOP:
            if pte & PTE_REMOTE:
                raise _Blocked(e, srcva)
            if not t.aspace.page_insert(pte >> 12 & 0xFFFFF, t.ipc_dstva, perm):
                return -E_NO_MEM
            sent_perm = perm
    t.ipc_recving = 0
    t.ipc_from = e.env_id
    t.ipc_value = value
    t.ipc_perm = sent_perm
    t.cpu.r[0] = 0                       # the receiver's sys_ipc_recv returns 0
    k.set_status(t, ENV_RUNNABLE)
    return 0


def sys_ipc_recv(k: Kernel, e: Env, dstva: int, *_):
    if dstva < UTOP and dstva % PGSIZE:
        return -E_INVAL
    e.ipc_recving = 1
    e.ipc_dstva = dstva
    k.set_status(e, ENV_NOT_RUNNABLE)
    return STOP


def sys_time_msec(k: Kernel, e, *_):
    return int(k.now() - k.boot_ms) & 0xFFFFFFFF


def sys_sleep_msec(k: Kernel, e: Env, ms: int, *_):
    ms = min(ms, MAX_SLEEP_MS)
    e.cpu.r[0] = 0
    if ms == 0:
        raise _Stop
    e.wake_at = k.now() + ms
    raise _Stop


SYSCALLS = {
    SYS_cputs: sys_cputs, SYS_cgetc: sys_cgetc, SYS_getenvid: sys_getenvid,
    SYS_env_destroy: sys_env_destroy, SYS_page_alloc: sys_page_alloc,
    SYS_page_map: sys_page_map, SYS_page_unmap: sys_page_unmap, SYS_exofork: sys_exofork,
    SYS_env_set_status: sys_env_set_status,
    SYS_env_set_pgfault_upcall: sys_env_set_pgfault_upcall, SYS_yield: sys_yield,
    SYS_ipc_try_send: sys_ipc_try_send, SYS_ipc_recv: sys_ipc_recv,
    SYS_time_msec: sys_time_msec, SYS_sleep_msec: sys_sleep_msec,
}


def dispatch(k: Kernel, e: Env) -> bool:
    """Run the syscall e just trapped into.  True if e keeps the CPU."""
    r = e.cpu.r
    fn = SYSCALLS.get(r[0])
    if fn is None:
        r[0] = -E_INVAL & 0xFFFFFFFF
        return True
    try:
        ret = fn(k, e, r[2], r[1], r[3], r[7], r[6])
    except _Stop:
        return False
    except _NetWait as w:
        k.wait_for_network(e, w.event)
        return False
    except _Blocked as b:
        # Nothing happened yet: run the int $0x30 again once the page is here.
        e.cpu.eip = (e.cpu.eip - 2) & 0xFFFFFFFF
        k._block(e, b.owner, b.va)
        return False
    if ret is STOP:
        return False
    r[0] = ret & 0xFFFFFFFF
    return True
