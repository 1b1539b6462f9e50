"""A bug in a system call's kernel code (an exception where JOS would
return an error) kills the env that made the call with "jmig internal
error" and nothing else: the other envs and the kernel go on.  On the block
translator a system call reached from compiled code runs without leaving
the core (core.run_blocks' syscall()); the report must be the same there
as on the interpreter, where every system call returns to the kernel."""
from __future__ import annotations

import pytest

from jmig import programs
from jmig.kernel import syscall
from jmig.kernel.env import ENV_FREE
from jmig.kernel.syscall import SYS_getenvid
from jmig.kernel.runner import run_program


@pytest.mark.parametrize("engine", ["blocks", "interp"])
def test_a_system_call_that_raises_kills_only_its_env(monkeypatch, engine):
    # primes: a chain of envs, each calling sys_getenvid in ipc_recv.  The
    # 100th call (from compiled code, on the translator) raises.
    real = syscall.SYSCALLS[SYS_getenvid]
    calls = []

    def getenvid(k, e, *args):
        calls.append(e.env_id)
        if len(calls) == 100:
            raise RuntimeError("planted kernel bug")
        return real(k, e, *args)

    monkeypatch.setitem(syscall.SYSCALLS, SYS_getenvid, getenvid)
    out = run_program(programs.load("primes"), ["primes"], "primes",
                      max_instructions=2_000_000, engine=engine)
    victim = calls[99]
    assert out.console.count("jmig internal error") == 1
    assert f"[{victim:08x}] jmig internal error at eip " in out.console
    assert "RuntimeError: planted kernel bug" in out.console
    # The victim is gone and the others run on: its parent's next send to
    # it finds no such env (JOS's ipc_send panics on that), and the run
    # ends when no env can run, not with an exception; the kernel's books
    # balance.
    k = out.kernel
    assert [e.status for e in k.envs.values() if e.env_id == victim] == [ENV_FREE]
    assert f"ipc_send: sending to {victim:08x}: bad environment" in out.console
    assert victim not in calls[100:]
    assert out.reason == "idle"
    k.check_invariants()
