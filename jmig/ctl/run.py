"""jmigctl run PROGRAM|ELF [ARGS]: boot an in-process kernel with one
program and print its console, as `make run-NAME` does for JOS.  Options
go before PROGRAM: everything after it is the program's (a warning says
so when one of them looks like an option of run)."""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import programs
from ..kernel.events import KernelError
from ..kernel.runner import run_program
from ..node.main import parse_size
from .exits import CtlError, UsageError

RUN_OPTIONS = ("--cpus", "--max-instructions", "--memory", "--json")


def run(ctx) -> int:
    a = ctx.args
    try:
        memory = parse_size(a.memory)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"--memory: {exc}") from None
    for arg in a.args:
        if arg.split("=")[0] in RUN_OPTIONS:
            ctx.note(f"jmigctl: warning: {arg!r} comes after the program, so it is the "
                     f"program's argument; put run's options before PROGRAM "
                     f"(jmigctl run {arg} ... {a.program})")
    name = a.program
    if programs.exists(name):
        elf = programs.load(name)
    else:
        p = Path(name)
        try:
            if p.stat().st_size > 64 << 20:
                raise CtlError(f"{name} is too large to be a JOS program", code="bad-elf")
            elf = p.read_bytes()
        except OSError:
            raise CtlError(f"no bundled program or file {name!r} "
                           f"(bundled: {', '.join(programs.names())})",
                           code="no-such-program") from None
        name = p.name.removesuffix(".elf")

    def show(text):
        if not ctx.json:
            ctx.out.write(text)
            ctx.out.flush()
    try:
        out = run_program(elf, [name, *a.args], name, ncpus=a.cpus,
                          max_instructions=a.max_instructions, memory=memory,
                          virtual_time=False, on_console=show)
    except KernelError as exc:
        raise CtlError(f"cannot run {a.program}: {exc.message}", code=exc.code) from None
    if ctx.json:
        ctx.emit({"program": name, "args": a.args, "console": out.console,
                  "instructions": out.instructions, "reason": out.reason})
    elif out.reason == "limit":
        ctx.note(f"jmigctl: stopped after {out.instructions} instructions (--max-instructions)")
    return 0
