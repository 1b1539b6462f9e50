"""Environments (JOS processes): struct Env, envids, the free list.

    envid:  | generation (20 bits, from bit 12) | ENVX: slot index (10 bits) |

A new env in slot i gets `gen = (old_id + 0x1000) & ~0x3ff` (or 0x1000 when
that is <= 0) and id `gen | i`; free slots are kept in index order with a
freed slot pushed back on the head, so the first env is 0x1000 and a freed
slot is reused first (jos-abi.md).
"""
from __future__ import annotations

import struct

from .memlayout import USER_CS, USER_DS
from .x86.cpu import Cpu

NENV = 1024
ENVGENSHIFT = 12

ENV_FREE = 0
ENV_DYING = 1
ENV_RUNNABLE = 2
ENV_RUNNING = 3
ENV_NOT_RUNNABLE = 4
ENV_TYPE_USER = 0

STATUS_NAMES = {ENV_FREE: "Free", ENV_DYING: "Dying", ENV_RUNNABLE: "Runnable",
                ENV_RUNNING: "Running", ENV_NOT_RUNNABLE: "Sleeping"}

ENV_SIZE = 0x7C
ENVS_KVA = 0xF0300000          # where a JOS kernel would keep envs[] (printed addresses)


def ENVX(envid: int) -> int:
    return envid & (NENV - 1)


class Blocked(Exception):
    """A kernel access to user memory hit a remote page (owner env, va):
    the env waits for the page and the operation is retried."""

    def __init__(self, owner: "Env", va: int):
        self.owner = owner
        self.va = va


_NEVER_RAN = Cpu()      # the registers of every slot never allocated (never changed)


class Env:
    """One slot of envs[]: JOS's struct Env plus jmig's own bookkeeping.

    Every field starts as the class attribute below (1,024 instances
    with thirty fields each took 3 ms to make); assigning one gives the
    slot its own value."""

    # JOS fields (struct Env), guarded by the kernel.
    env_id = 0                  # 0 while never used
    parent_id = 0
    type = ENV_TYPE_USER
    status = ENV_FREE
    runs = 0
    cpunum = 0
    pgfault_upcall = 0
    ipc_recving = 0
    ipc_dstva = 0
    ipc_value = 0
    ipc_from = 0
    ipc_perm = 0
    cpu: Cpu = _NEVER_RAN       # trapframe registers, eip, eflags (env_alloc sets it)
    trapno = 0                  # tf_trapno / tf_err of the last trap
    err = 0
    aspace = None               # AddressSpace (pgdir) while allocated
    # jmig's own state.
    name = ""                   # program name, for ps
    paused = False              # stopped by the operator (status shows NOT_RUNNABLE)
    saved_status = ENV_FREE     # status to restore on resume
    wake_at: int | None = None  # sys_sleep_msec deadline (kernel ms clock)
    blocked_on: tuple[int, int] | None = None   # (owner envid, va) remote page
    frozen = ""                 # node-held reason not to run ("serving pages", ...)
    executed = 0                # instructions run here (for load balancing)
    away = False                # free here because it lives on another node now

    def __init__(self, index: int):
        self.index = index

    @property
    def window_status(self) -> int:
        """env_status as envs[] shows it: an env that lives on another node
        now shows as RUNNABLE in its old slot (docs/kernel.md)."""
        return ENV_RUNNABLE if self.away and self.status == ENV_FREE else self.status

    def pack(self, link: int) -> bytes:
        """The 124 bytes of struct Env as user code sees them at UENVS
        (link: env_link, the next free slot's address, or 0)."""
        c = self.cpu
        r = c.r
        tf = struct.pack(
            "<8I HH HH II I HH I I HH",
            r[7], r[6], r[5], 0, r[3], r[2], r[1], r[0],
            USER_DS, 0, USER_DS, 0, self.trapno, self.err,
            c.eip, USER_CS, 0, c.eflags, r[4], USER_DS, 0)
        pgdir = (0xF0000000 + (self.aspace.pgdir_pfn << 12)) if self.aspace else 0
        rest = struct.pack(
            "<IIIIIIIIIB3xIIII",
            link, self.env_id, self.parent_id, self.type, self.window_status, self.runs,
            self.cpunum, pgdir, self.pgfault_upcall, self.ipc_recving, self.ipc_dstva,
            self.ipc_value, self.ipc_from, self.ipc_perm)
        out = tf + rest
        assert len(out) == ENV_SIZE
        return out


class EnvSlots(dict):
    """envs[]: slot number -> Env, each made the first time it is asked
    for.  A kernel boots with none made: making all 1,024 was most of a
    boot (0.6 of its 0.7 ms) and left as many objects for the garbage
    collector to scan.  Iterate over .values() (the slots made so far, in
    no particular order); Kernel.live_envs gives the allocated ones in
    slot order."""
    __slots__ = ()

    def __missing__(self, i: int) -> Env:
        if not 0 <= i < NENV:
            raise IndexError(f"env slot {i} is not in 0..{NENV - 1}")
        e = self[i] = Env(i)
        return e


