"""The bundled user programs: gcc-built JOS ELFs shipped as package data
(built from examples/user by its Makefile; running jmig never needs a compiler)."""
from __future__ import annotations

from importlib import resources


def names() -> list[str]:
    """Names of the bundled programs, sorted."""
    return sorted(p.name[:-4] for p in resources.files(__name__).iterdir()
                  if p.name.endswith(".elf"))


def exists(name: str) -> bool:
    return name in names()


def load(name: str) -> bytes:
    """The ELF bytes of a bundled program; KeyError if there is none."""
    if not name.isidentifier() or not exists(name):
        raise KeyError(name)
    return resources.files(__name__).joinpath(f"{name}.elf").read_bytes()
