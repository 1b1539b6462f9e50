"""The ELF loader: every malformed file is refused with a message naming the
problem and leaves no trace; well-formed files load exactly (odd file
offsets, shared pages, zeroed bss) with JOS's initial stack and registers."""
import struct

import pytest

from jmig import programs
from jmig.kernel import events as ev
from jmig.kernel.elf import MAX_ELF_SIZE, MAX_PHNUM, ElfError, parse_elf
from jmig.kernel.kernel import Kernel
from jmig.kernel.memlayout import PGSIZE, PTE_P, PTE_U, PTE_W, USTACKTOP, UTOP

from .asm import Machine, assemble, flat, needs_binutils

HELLO = programs.load("hello")
E_PHOFF = 28
E_PHNUM = 44


def patch(data: bytes, offset: int, fmt: str, *values) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


def phdr(data: bytes, i: int) -> int:
    """File offset of program header i."""
    return struct.unpack_from("<I", data, E_PHOFF)[0] + 32 * i


def phdr_fields(data: bytes, i: int) -> list[int]:
    """type offset vaddr paddr filesz memsz flags align"""
    return list(struct.unpack_from("<8I", data, phdr(data, i)))


def set_phdr(data: bytes, i: int, **changes) -> bytes:
    names = ["type", "offset", "vaddr", "paddr", "filesz", "memsz", "flags", "align"]
    f = phdr_fields(data, i)
    for k, v in changes.items():
        f[names.index(k)] = v
    return patch(data, phdr(data, i), "<8I", *f)


def test_hello_has_the_layout_these_patches_assume():
    assert [phdr_fields(HELLO, i)[:6] for i in range(3)] == [
        [1, 0x1020, 0x800020, 0x800020, 0x1465, 0x1465],
        [1, 0x3000, 0x802000, 0x802000, 0x6E4, 0x6E4],
        [1, 0x4000, 0x803000, 0x803000, 0x4, 0x8],
    ]


BAD_ELVES = {
    "truncated_header": (HELLO[:40], "truncated ELF header"),
    "header_one_byte_short": (HELLO[:51], "truncated ELF header: 51 bytes, need 52"),
    "header_only": (HELLO[:52], "program headers at 0x34 run past the end of the file"),
    "empty_file": (b"", "truncated ELF header"),
    "bad_magic": (patch(HELLO, 0, "4s", b"\x7fELG"), "bad magic"),
    "class_64": (patch(HELLO, 4, "B", 2), r"not a 32-bit ELF \(class 2\)"),
    "big_endian": (patch(HELLO, 5, "B", 2), r"not little-endian \(data encoding 2\)"),
    "machine_x86_64": (patch(HELLO, 18, "<H", 62), "wrong machine 62"),
    "shared_object": (patch(HELLO, 16, "<H", 3), "not an executable"),
    "relocatable": (patch(HELLO, 16, "<H", 1), "not an executable"),
    "no_program_headers": (patch(HELLO, E_PHNUM, "<H", 0), "no program headers"),
    "too_many_program_headers": (patch(HELLO, E_PHNUM, "<H", 1000), "too many program headers"),
    "bad_phentsize": (patch(HELLO, 42, "<H", 40), "bad program header size"),
    "phdrs_past_end": (patch(HELLO, E_PHOFF, "<I", len(HELLO) - 40),
                       "run past the end of the file"),
    "phoff_huge": (patch(HELLO, E_PHOFF, "<I", 0xFFFFFFF0), "run past the end of the file"),
    "segment_past_end": (set_phdr(HELLO, 1, offset=len(HELLO) - 0x10),
                         "beyond the end of the file"),
    "segment_offset_huge": (set_phdr(HELLO, 1, offset=0xFFFFF000), "beyond the end of the file"),
    "filesz_over_memsz": (set_phdr(HELLO, 2, filesz=0x10, memsz=0x8), "exceeds memory size"),
    "segment_above_utop": (set_phdr(HELLO, 1, vaddr=UTOP - 0x100), "above UTOP"),
    "segment_at_kernel": (set_phdr(HELLO, 1, vaddr=0xF0000000), "above UTOP"),
    "segment_wraps_around": (set_phdr(HELLO, 1, vaddr=0xFFFFF000, memsz=0x2000, filesz=0x6E4),
                             "above UTOP"),
    "segments_overlap": (set_phdr(HELLO, 1, vaddr=0x801000), "segments overlap"),
    "bss_overlaps_next": (set_phdr(HELLO, 0, memsz=0x2000), "segments overlap"),
    "entry_outside": (patch(HELLO, 24, "<I", 0x900000), "outside every loadable segment"),
    "entry_in_a_gap": (patch(HELLO, 24, "<I", 0x801800), "outside every loadable segment"),
    "entry_just_past_a_segment": (patch(HELLO, 24, "<I", 0x803008),
                                  "outside every loadable segment"),
    "no_load_segments": (set_phdr(set_phdr(set_phdr(HELLO, 0, type=4), 1, type=4), 2, type=4),
                         "no loadable segments"),
}


@pytest.mark.parametrize("data,message", list(BAD_ELVES.values()), ids=list(BAD_ELVES))
def test_parse_elf_refuses_a_malformed_file_naming_the_problem(data, message):
    with pytest.raises(ElfError, match=message):
        parse_elf(data)


@pytest.mark.parametrize("data,message", list(BAD_ELVES.values()), ids=list(BAD_ELVES))
def test_env_create_refuses_a_malformed_file_and_creates_nothing(data, message):
    k = Kernel(memory=1 << 20)
    free = k.phys.nfree
    with pytest.raises(ev.KernelError, match=message) as exc:
        k.env_create(data, ["bad"], name="bad")
    assert exc.value.code == ev.BAD_ELF
    assert k.live_envs() == []
    assert k.take_events() == []
    assert k.phys.nfree == free
    k.check_invariants()
    # The free slot list is untouched: the next env is still the first.
    assert k.env_create(HELLO, None).env_id == 0x1000


def test_segments_that_touch_or_share_a_page_are_accepted():
    ends_at_next = set_phdr(HELLO, 0, memsz=0x802000 - 0x800020)       # ends where 1 starts
    assert [s.vaddr + s.memsz for s in parse_elf(ends_at_next).segments][:1] == [0x802000]
    shares = set_phdr(HELLO, 1, vaddr=0x801800)                          # in 0's last page
    assert parse_elf(shares).segments[1].vaddr == 0x801800
    k = Kernel(memory=1 << 20)
    for elf in (ends_at_next, shares):
        e = k.env_create(elf, None)
        assert k.env_pages(e.env_id)[0].va == 0x800000
    k.check_invariants()


@pytest.mark.parametrize("elf,pages", [
    (HELLO, [0x800, 0x801, 0x802, 0x803]),
    (set_phdr(HELLO, 2, vaddr=0x803F00, memsz=0x200), [0x800, 0x801, 0x802, 0x803, 0x804]),
    (set_phdr(HELLO, 1, vaddr=0x801800), [0x800, 0x801, 0x803]),        # shares 0's last page
    # At an odd address, one byte into its second page.
    (set_phdr(HELLO, 2, vaddr=0x803001, memsz=0x1000), [0x800, 0x801, 0x802, 0x803, 0x804]),
], ids=["hello", "straddles_a_page_boundary", "shares_a_page", "odd_start_one_byte_over"])
def test_pages_counts_every_page_a_segment_touches_once(elf, pages):
    assert parse_elf(elf).pages() == len(pages)
    k = Kernel(memory=1 << 20)
    e = k.env_create(elf, None)
    mapped = [p.va >> 12 for p in k.env_pages(e.env_id)]
    assert mapped == pages + [(USTACKTOP >> 12) - 1]                    # and the stack page


def test_file_over_the_size_limit_is_refused_unread():
    big = HELLO + bytes(MAX_ELF_SIZE + 1 - len(HELLO))
    with pytest.raises(ElfError, match="limit"):
        parse_elf(big)
    k = Kernel(memory=1 << 20)
    with pytest.raises(ev.KernelError) as exc:
        k.env_create(big, None)
    assert exc.value.code == ev.BAD_ELF and "limit" in exc.value.message
    assert k.live_envs() == [] and k.phys.nfree == k.phys.nframes - 1


def test_a_file_exactly_at_the_size_limit_is_accepted():
    assert MAX_ELF_SIZE == 64 << 20                     # docs/security.md
    assert parse_elf(HELLO + bytes(MAX_ELF_SIZE - len(HELLO))).entry == 0x800020


def test_an_empty_load_segment_is_skipped_and_the_ones_after_it_load():
    # hello's first segment made empty (memsz 0) and moved out of the way:
    # the other two still load, and its pages are not mapped.
    elf = set_phdr(patch(HELLO, 24, "<I", 0x802000), 0, filesz=0, memsz=0, vaddr=0x700000)
    assert [(s.vaddr, s.memsz) for s in parse_elf(elf).segments] == [(0x802000, 0x6E4),
                                                                      (0x803000, 0x8)]
    k = Kernel(memory=1 << 20)
    e = k.env_create(elf, None)
    assert [p.va >> 12 for p in k.env_pages(e.env_id)] == [0x802, 0x803, (USTACKTOP >> 12) - 1]


def test_program_too_big_for_memory_is_refused_with_no_memory_and_nothing_created():
    k = Kernel(memory=16 * PGSIZE)
    big = set_phdr(HELLO, 2, memsz=0x40000)            # 64 pages of bss
    with pytest.raises(ev.KernelError) as exc:
        k.env_create(big, None)
    assert exc.value.code == ev.NO_MEMORY
    assert k.live_envs() == [] and k.phys.nfree == k.phys.nframes - 1
    assert k.take_events() == []


def test_running_out_of_memory_while_loading_leaks_nothing():
    # Eleven one-byte segments, each in its own 4 MB region: the up-front
    # estimate passes, the page tables then run the memory out.
    segs = [(0x800020, b"\xeb\xfe", 2, 0x200)]
    segs += [(0x1000000 * i, b"x", 1, 0x200 + 2 + i) for i in range(1, 12)]
    elf = build_elf(0x800020, segs)
    k = Kernel(memory=20 * PGSIZE)
    with pytest.raises(ev.KernelError) as exc:
        k.env_create(elf, None)
    assert exc.value.code == ev.NO_MEMORY
    assert k.live_envs() == [] and k.phys.nfree == k.phys.nframes - 1
    assert not any(isinstance(x, ev.EnvCreated) for x in k.take_events())
    k.check_invariants()


def test_arguments_that_do_not_fit_the_stack_page_are_refused():
    k = Kernel(memory=1 << 20)
    with pytest.raises(ev.KernelError, match="initial stack page") as exc:
        k.env_create(HELLO, ["x" * 5000])
    assert exc.value.code == ev.BAD_STATE
    assert k.live_envs() == [] and k.phys.nfree == k.phys.nframes - 1


# -- what a good file loads as -----------------------------------------------------------

def build_elf(entry: int, segments: list[tuple[int, bytes, int, int]]) -> bytes:
    """An ELF with PT_LOAD segments (vaddr, file bytes, memsz, file offset)."""
    n = len(segments)
    size = max([52 + 32 * n] + [off + len(data) for _, data, _, off in segments])
    out = bytearray(b"\xAA" * size)          # junk between segments must never load
    struct.pack_into("<4s5B7x", out, 0, b"\x7fELF", 1, 1, 1, 0, 0)
    struct.pack_into("<HHIIIIIHHHHHH", out, 16, 2, 3, 1, entry, 52, 0, 0, 52, 32, n, 40, 0, 0)
    for i, (vaddr, data, memsz, off) in enumerate(segments):
        struct.pack_into("<8I", out, 52 + 32 * i, 1, off, vaddr, vaddr, len(data), memsz, 7, 1)
        out[off:off + len(data)] = data
    return bytes(out)


def with_phnum(phnum: int) -> bytes:
    """A one-segment program (xor %eax,%eax; int $0x30 at 0x800000) with
    phnum program headers, at the end of the file: PT_NULL ones, then the
    PT_LOAD."""
    code = b"\x31\xc0\xcd\x30"
    phoff = 52 + len(code)
    out = bytearray(phoff + 32 * phnum)
    struct.pack_into("<4s5B7x", out, 0, b"\x7fELF", 1, 1, 1, 0, 0)
    struct.pack_into("<HHIIIIIHHHHHH", out, 16, 2, 3, 1, 0x800000, phoff, 0, 0, 52, 32, phnum,
                     40, 0, 0)
    out[52:phoff] = code
    struct.pack_into("<8I", out, phoff + 32 * (phnum - 1), 1, 52, 0x800000, 0x800000, len(code),
                     len(code), 5, 1)
    return bytes(out)


def test_headers_that_end_the_file_and_a_load_after_other_kinds_are_read():
    # The program headers' last byte is the file's; the PT_LOAD comes after
    # a PT_NULL, which is skipped.
    elf = with_phnum(2)
    assert len(elf) == 52 + 4 + 2 * 32
    assert [(s.vaddr, s.filesz) for s in parse_elf(elf).segments] == [(0x800000, 4)]


def test_a_segment_that_ends_at_utop_is_accepted():
    top = set_phdr(HELLO, 2, vaddr=UTOP - 0x8)            # hello's 8-byte bss, up to UTOP
    assert parse_elf(top).segments[-1].vaddr + parse_elf(top).segments[-1].memsz == UTOP


def test_program_headers_up_to_the_limit_are_read_and_one_more_is_refused():
    assert MAX_PHNUM == 64
    assert [s.vaddr for s in parse_elf(with_phnum(MAX_PHNUM)).segments] == [0x800000]
    with pytest.raises(ElfError, match=r"too many program headers \(65 > 64\)"):
        parse_elf(with_phnum(MAX_PHNUM + 1))


DIRTY_PAGES = """
_start:
    mov $0x400000, %ebp
more:
    sys SYS_page_alloc, $0, %ebp, $PTE_U|PTE_P|PTE_W
    mov %ebp, %edi
    mov $-1, %eax
    mov $1024, %ecx
    rep stosl
    add $0x1000, %ebp
    cmp $0x410000, %ebp
    jb more
    exit
"""

PRINT_DATA = """
_start:
    sys SYS_cputs, $0x801008, $5
    sys SYS_cputs, $0x800800, $4
    halt
"""


@needs_binutils
def test_segments_at_unaligned_file_offsets_load_with_zeroed_bss_on_reused_frames():
    m = Machine(memory=64 * PGSIZE)
    m.spawn(assemble(DIRTY_PAGES))
    m.run()
    assert m.all_frames_free()
    code = flat(PRINT_DATA, 0x800020)
    text_off = 0xA1                                     # after the headers, unaligned
    data_off = text_off + len(code) + 0x13
    elf = build_elf(0x800020, [
        (0x800020, code, len(code) + 0x10, text_off),     # vaddr and offset not congruent
        (0x801008, b"hello", 0x2000, data_off),           # data + bss over two pages
        (0x800800, b"ABCD", 8, data_off + 5 + 7),         # shares the text page
    ])
    p = m.spawn(elf, name="odd")
    assert p.read(0x800020, len(code)) == code
    assert p.read(0x800020 + len(code), 0x10) == bytes(0x10)
    assert p.read(0x800800, 8) == b"ABCD" + bytes(4)
    assert p.read(0x801008, 5) == b"hello"
    assert p.read(0x80100D, 0x2000 - 5) == bytes(0x2000 - 5)           # bss
    # The rest of the pages the loader mapped is zero too (no junk, no old data).
    assert p.read(0x800000, 0x20) == bytes(0x20)
    assert p.read(0x801000, 8) == bytes(8)
    assert p.read(0x803008, PGSIZE - 8) == bytes(PGSIZE - 8)
    m.run()
    assert m.user_output(p.envid) == "helloABCD"


@needs_binutils
def test_ld_output_with_an_unaligned_segment_offset_runs():
    prog = assemble("_start:\n sys SYS_cputs, $msg, $2\n halt\nmsg: .ascii \"ok\"\n")
    (seg,) = parse_elf(prog.elf).segments
    assert seg.offset % PGSIZE != 0 and seg.vaddr == 0x800020
    m = Machine()
    p = m.spawn(prog)
    m.run()
    assert m.user_output(p.envid) == "ok"


def test_loaded_pages_and_the_stack_page_are_user_writable():
    k = Kernel(memory=1 << 20)
    e = k.env_create(HELLO, None)
    pages = {vpn << 12: pte & 0xFFF for vpn, pte in e.aspace.pte.items()}
    assert sorted(pages) == [0x800000, 0x801000, 0x802000, 0x803000, USTACKTOP - PGSIZE]
    assert all(perm & (PTE_U | PTE_W | PTE_P) == PTE_U | PTE_W | PTE_P for perm in pages.values())
    assert e.aspace.read(USTACKTOP - PGSIZE, PGSIZE) == bytes(PGSIZE)
    # Segment bytes are the file's bytes; the bss word after .data is zero.
    assert e.aspace.read(0x800020, 0x1465) == HELLO[0x1020:0x1020 + 0x1465]
    assert e.aspace.read(0x803000, 8) == HELLO[0x4000:0x4004] + bytes(4)


def test_new_env_registers_are_jos_initial_trapframe():
    k = Kernel(memory=1 << 20)
    e = k.env_create(HELLO, None)
    assert e.cpu.r == [0, 0, 0, 0, USTACKTOP, 0, 0, 0]
    assert e.cpu.eip == 0x800020
    assert e.cpu.eflags == 0x202


def test_without_argv_the_stack_pointer_is_ustacktop():
    k = Kernel(memory=1 << 20)
    e = k.env_create(HELLO, None)
    assert e.cpu.r[4] == USTACKTOP


@pytest.mark.parametrize("argv", [["prog"], ["prog", "a", "bc"], ["args", "", "two words", "ü"]])
def test_argv_is_laid_out_as_argc_argv_with_the_strings_above(argv):
    k = Kernel(memory=1 << 20)
    e = k.env_create(HELLO, argv)
    sp = e.cpu.r[4]

    def word(va):
        return int.from_bytes(e.aspace.read(va, 4), "little")

    assert word(sp) == len(argv)
    arr = word(sp + 4)
    assert arr == sp + 8 and arr % 4 == 0
    ptrs = [word(arr + 4 * i) for i in range(len(argv) + 1)]
    assert ptrs[-1] == 0                             # argv[argc] == NULL
    for ptr, want in zip(ptrs, argv):
        raw = want.encode()
        assert arr + 4 * (len(argv) + 1) <= ptr < USTACKTOP
        assert e.aspace.read(ptr, len(raw) + 1) == raw + b"\0"
    assert USTACKTOP - PGSIZE <= sp < USTACKTOP


def test_empty_argv_gives_argc_zero():
    k = Kernel(memory=1 << 20)
    e = k.env_create(HELLO, [])
    sp = e.cpu.r[4]
    assert sp < USTACKTOP
    assert e.aspace.read(sp, 4) == bytes(4)
    arr = int.from_bytes(e.aspace.read(sp + 4, 4), "little")
    assert e.aspace.read(arr, 4) == bytes(4)


def test_created_env_is_announced_like_jos():
    k = Kernel(memory=1 << 20)
    k.env_create(HELLO, None, name="hello")
    got = k.take_events()
    assert got == [ev.Console("[00000000] new env 00001000\n", 0),
                   ev.EnvCreated(0x1000, 0, "hello")]
