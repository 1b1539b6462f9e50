"""jmigctl run PROGRAM|ELF [ARGS]: boot an in-process kernel with one
program and print its console, as `make run-NAME` does for JOS."""
from __future__ import annotations

from pathlib import Path

from .. import programs
from ..kernel.events import KernelError
from ..kernel.runner import run_program


def run(ctx) -> int:
    a = ctx.args
    from ..node.main import parse_size
    try:
        memory = parse_size(a.memory)
    except Exception as exc:
        print(f"jmigctl: {exc}", file=ctx.err)
        return 2
    name = a.program
    if programs.exists(name):
        elf = programs.load(name)
    else:
        p = Path(name)
        try:
            if p.stat().st_size > 64 << 20:
                print(f"jmigctl: {name} is too large to be a JOS program", file=ctx.err)
                return 1
            elf = p.read_bytes()
        except OSError:
            print(f"jmigctl: no bundled program or file {name!r} "
                  f"(bundled: {', '.join(programs.names())})", file=ctx.err)
            return 1
        name = p.name.removesuffix(".elf")
    if not 1 <= a.cpus <= 64:
        print("jmigctl: --cpus must be 1..64", file=ctx.err)
        return 2

    def show(text):
        ctx.out.write(text)
        ctx.out.flush()
    try:
        out = run_program(elf, [name, *a.args], name, ncpus=a.cpus,
                          max_instructions=a.max_instructions, memory=memory,
                          virtual_time=False, on_console=show)
    except KernelError as exc:
        print(f"jmigctl: cannot run {a.program}: {exc.message}", file=ctx.err)
        return 1
    if out.reason == "limit":
        print(f"jmigctl: stopped after {out.instructions} instructions (--max-instructions)",
              file=ctx.err)
    return 0
