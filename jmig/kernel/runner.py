"""Run a program on an in-process kernel until nothing is runnable
(`jmigctl run`, and the tests' way of booting a program)."""
from __future__ import annotations

import time
from typing import Callable

import attrs

from . import events as ev
from .kernel import DEFAULT_MEMORY, DEFAULT_SLICE, Kernel


class VirtualClock:
    """Milliseconds that advance only when told to: sleeps take no real time."""

    def __init__(self, start: float = 0.0):
        self.ms = start

    def __call__(self) -> float:
        return self.ms


@attrs.frozen
class RunOutcome:
    console: str
    instructions: int
    reason: str                  # "idle" (nothing left to run) or "limit"
    kernel: Kernel


def run_program(elf: bytes, argv: list[str] | None, name: str = "", *, ncpus: int = 1,
                max_instructions: int = 100_000_000, memory: int = DEFAULT_MEMORY,
                slice: int = DEFAULT_SLICE, virtual_time: bool = True, engine: str | None = None,
                on_console: Callable[[str], None] | None = None,
                background_compile: bool = False) -> RunOutcome:
    """Boot `elf` as the first env and run until no env can ever run again
    or `max_instructions` have run.  Raises KernelError for a bad ELF.

    With virtual_time, sleeping envs wake as soon as nothing else can run
    (the clock jumps); otherwise the caller really waits."""
    clock = VirtualClock() if virtual_time else None
    k = Kernel(memory=memory, ncpus=ncpus, slice=slice, clock=clock, engine=engine,
               background_compile=background_compile)
    k.env_create(elf, argv, name=name)
    out: list[str] = []
    total = 0
    reason = "idle"

    def drain():
        for e in k.take_events():
            if isinstance(e, ev.Console):
                out.append(e.text)
                if on_console:
                    on_console(e.text)

    drain()
    while True:
        if total >= max_instructions:
            reason = "limit"
            break
        r = k.run(min(1_000_000, max_instructions - total))
        total += r.executed
        drain()
        if r.idle:
            if r.next_wake is None:
                break
            if clock is not None:
                clock.ms = max(clock.ms, r.next_wake)
            else:
                time.sleep(max(0.0, (r.next_wake - k.now()) / 1000.0))
    return RunOutcome("".join(out), total, reason, k)
