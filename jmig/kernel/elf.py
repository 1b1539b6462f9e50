"""ELF parsing and checking for JOS user programs (JOS's load_icode input).

`parse_elf(data)` checks everything a loader relies on and returns the entry
point and the PT_LOAD segments; a malformed file raises ElfError with a
message naming what is wrong.  Loading into an address space is the
kernel's job (kernel.py: load_icode).
"""
from __future__ import annotations

import struct

import attrs

from .memlayout import PGSIZE, UTOP

ELF_MAGIC = b"\x7fELF"
ELFCLASS32 = 1
ELFDATA2LSB = 1
ET_EXEC = 2
EM_386 = 3
PT_LOAD = 1
EHDR_SIZE = 52
PHDR_SIZE = 32
MAX_ELF_SIZE = 64 << 20          # bytes; a larger file is refused unread
MAX_PHNUM = 64


class ElfError(ValueError):
    """The file is not a loadable 32-bit x86 JOS ELF executable."""


@attrs.frozen
class Segment:
    vaddr: int
    memsz: int
    offset: int
    filesz: int
    flags: int


@attrs.frozen
class ElfImage:
    entry: int
    segments: tuple[Segment, ...]

    def pages(self) -> int:
        """Pages the segments need (shared pages counted once)."""
        vpns = set()
        for s in self.segments:
            for va in range(s.vaddr & ~(PGSIZE - 1), s.vaddr + s.memsz, PGSIZE):
                vpns.add(va >> 12)
        return len(vpns)


def parse_elf(data: bytes) -> ElfImage:
    """Check an ELF file and describe its loadable segments."""
    n = len(data)
    if n > MAX_ELF_SIZE:
        raise ElfError(f"file is {n} bytes; the limit is {MAX_ELF_SIZE}")
    if n < EHDR_SIZE:
        raise ElfError(f"truncated ELF header: {n} bytes, need {EHDR_SIZE}")
    if data[:4] != ELF_MAGIC:
        raise ElfError("not an ELF file (bad magic)")
    if data[4] != ELFCLASS32:
        raise ElfError(f"not a 32-bit ELF (class {data[4]})")
    if data[5] != ELFDATA2LSB:
        raise ElfError(f"not little-endian (data encoding {data[5]})")
    (e_type, e_machine, _version, e_entry, e_phoff, _shoff, _flags, _ehsize,
     e_phentsize, e_phnum, _shentsize, _shnum, _shstrndx) = struct.unpack_from(
        "<HHIIIIIHHHHHH", data, 16)
    if e_machine != EM_386:
        raise ElfError(f"wrong machine {e_machine} (need EM_386 = 3)")
    if e_type != ET_EXEC:
        raise ElfError(f"not an executable (e_type {e_type}, need ET_EXEC = 2)")
    if e_phnum == 0:
        raise ElfError("no program headers")
    if e_phnum > MAX_PHNUM:
        raise ElfError(f"too many program headers ({e_phnum} > {MAX_PHNUM})")
    if e_phentsize != PHDR_SIZE:
        raise ElfError(f"bad program header size {e_phentsize} (need {PHDR_SIZE})")
    if e_phoff + e_phnum * PHDR_SIZE > n:
        raise ElfError(f"program headers at {e_phoff:#x} run past the end of the file ({n} bytes)")
    segs = []
    for k in range(e_phnum):
        (p_type, p_offset, p_vaddr, _paddr, p_filesz, p_memsz, p_flags, _align) = \
            struct.unpack_from("<IIIIIIII", data, e_phoff + k * PHDR_SIZE)
        if p_type != PT_LOAD:
            continue
        if p_filesz > p_memsz:
            raise ElfError(f"segment {k}: file size {p_filesz:#x} exceeds memory size {p_memsz:#x}")
        if p_offset + p_filesz > n:
            raise ElfError(f"segment {k}: bytes {p_offset:#x}+{p_filesz:#x} lie beyond the end "
                           f"of the file ({n} bytes)")
        if p_vaddr + p_memsz > UTOP:
            raise ElfError(f"segment {k}: {p_vaddr:#x}+{p_memsz:#x} reaches above UTOP ({UTOP:#x})")
        if p_memsz == 0:
            continue
        segs.append(Segment(p_vaddr, p_memsz, p_offset, p_filesz, p_flags))
    if not segs:
        raise ElfError("no loadable segments")
    ordered = sorted(segs, key=lambda s: s.vaddr)
    for a, b in zip(ordered, ordered[1:]):
        if a.vaddr + a.memsz > b.vaddr:
            raise ElfError(f"segments overlap: {a.vaddr:#x}+{a.memsz:#x} and {b.vaddr:#x}")
    if not any(s.vaddr <= e_entry < s.vaddr + s.memsz for s in segs):
        raise ElfError(f"entry point {e_entry:#x} is outside every loadable segment")
    return ElfImage(e_entry, tuple(segs))
