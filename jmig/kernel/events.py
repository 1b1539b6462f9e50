"""What the kernel tells its owner.  The kernel never prints or logs: it
appends these to Kernel.events, and the node (or `jmigctl run`) drains them."""
from __future__ import annotations

import attrs

from ..errors import Error


@attrs.frozen
class Console:
    """Text for the node's console: a user program's sys_cputs (envid is the
    writer) or a kernel message (envid 0)."""
    text: str
    envid: int = 0


@attrs.frozen
class EnvCreated:
    envid: int
    parent_id: int
    name: str


@attrs.frozen
class EnvDestroyed:
    envid: int
    reason: str            # "exit", "killed", "destroyed by 00001000", "fault", ...


@attrs.frozen
class EnvFaulted:
    """An unhandled trap that destroys the env (printed as JOS prints it)."""
    envid: int
    trapno: int
    err: int
    va: int
    eip: int


@attrs.frozen
class EnvBlocked:
    """`envid` touched a page of `owner` that lives on another node (or a
    syscall needs it); the env waits until Kernel.install_page(owner, va)."""
    envid: int
    owner: int
    va: int


@attrs.frozen
class IpcSend:
    """`src` called sys_ipc_try_send to `dst`, an env that lives on another
    node (Kernel.elsewhere) or not here at all.  `src` waits in the kernel
    until Kernel.network_result(src, result); `page` is the 4 KiB at its srcva
    (None when it sent none)."""
    src: int
    dst: int
    value: int
    page: bytes | None
    perm: int


@attrs.frozen
class EnvCall:
    """`src` called sys_env_destroy (op "destroy") or sys_env_set_status (op
    "set_status", arg the status) on `dst`, an env that is not here; `src`
    waits as for IpcSend."""
    src: int
    dst: int
    op: str
    arg: int = 0


class KernelError(Error):
    """An operation the node asked for was refused.  `code` is stable and
    machine-readable; `message` says what is wrong."""

    def __init__(self, code: str, message: str):
        super().__init__(message, code=code)


# KernelError codes.
NO_SUCH_ENV = "no-such-env"
BAD_STATE = "bad-state"
NO_MEMORY = "no-memory"
NO_FREE_ENV = "no-free-env"
BAD_ELF = "bad-elf"
BAD_SNAPSHOT = "bad-snapshot"
NO_SUCH_PROGRAM = "no-such-program"
