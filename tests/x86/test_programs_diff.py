"""Whole programs, assembled with `as --32` (and compiled with `gcc -m32` if
it works), run to their `int $0x30` on jmig's core and on Unicorn in
lockstep (unicorn_ref.run_both: every instruction compared), and their
results checked against Python.

Each program is linked at 0x800000 into one flat binary (text, data and
bss together, so its pages are writable); 0x900000-0x90ffff is a zeroed
data area and the stack starts at 0x910000.
"""
from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

import pytest

from jmig.kernel.memlayout import PGSIZE

from .unicorn_ref import Machine, run_both

TEXT = 0x800000
DATA = 0x900000
STACK_TOP = 0x910000

LDSCRIPT = """
ENTRY(_start)
SECTIONS {
  . = 0x800000;
  .all : { *(.text.start) *(.text*) *(.rodata*) *(.data*) *(.bss*) *(COMMON) }
  /DISCARD/ : { *(.note*) *(.comment) *(.eh_frame*) *(.note.GNU-stack) }
}
"""

needs_binutils = pytest.mark.skipif(not (shutil.which("as") and shutil.which("ld")),
                                    reason="GNU as/ld not installed")


def _gcc_works() -> bool:
    if not shutil.which("gcc"):
        return False
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "t.c"
        src.write_text("int f(int a) { return a * 3; }\n")
        r = subprocess.run(["gcc", "-m32", "-c", "-ffreestanding", "-fno-pie", "-fno-pic", "-O2",
                            str(src), "-o", str(Path(d) / "t.o")], capture_output=True)
        return r.returncode == 0


def _sh(*args) -> None:
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    if r.returncode:
        raise AssertionError(f"{' '.join(map(str, args))} failed:\n{r.stdout}{r.stderr}")


def build(asm: str, c_source: str | None = None) -> bytes:
    """Assemble (and compile) and link at 0x800000 into a flat binary."""
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        (d / "prog.s").write_text(asm)
        (d / "link.ld").write_text(LDSCRIPT)
        objs = [d / "prog.o"]
        _sh("as", "--32", "-o", objs[0], d / "prog.s")
        if c_source is not None:
            (d / "funcs.c").write_text(c_source)
            objs.append(d / "funcs.o")
            _sh("gcc", "-m32", "-c", "-ffreestanding", "-fno-pie", "-fno-pic", "-O2",
                "-fno-asynchronous-unwind-tables", "-fcf-protection=none",
                "-fno-stack-protector", d / "funcs.c", "-o", objs[1])
        out = d / "prog.bin"
        _sh("ld", "-m", "elf_i386", "-T", d / "link.ld", "--oformat=binary", "-o", out, *objs)
        return out.read_bytes()


def program_machine(binary: bytes, data: bytes = b"", note: str = "") -> Machine:
    m = Machine(eip=TEXT, regs=[0, 0, 0, 0, STACK_TOP, 0, 0, 0], eflags=0x202)
    npages = (len(binary) + PGSIZE) // PGSIZE + 1
    image = binary + bytes(npages * PGSIZE - len(binary))
    for k in range(npages):
        m.map(TEXT + k * PGSIZE, image[k * PGSIZE:(k + 1) * PGSIZE], True)
    area = data + bytes(16 * PGSIZE - len(data))
    for k in range(16):
        m.map(DATA + k * PGSIZE, area[k * PGSIZE:(k + 1) * PGSIZE], True)
    m.code = (TEXT, binary[:512])
    m.note = note
    return m


def run_program(asm: str, data: bytes = b"", c_source: str | None = None, max_steps=200_000):
    binary = build(asm, c_source)
    m = program_machine(binary, data, note="program:\n" + asm)
    res = run_both(m, max_steps)
    assert res.reason == "syscall", (res.reason, res.outcome)
    return res


def mem(res, va: int, n: int) -> bytes:
    out = b""
    while n > 0:
        page = va & ~0xFFF
        take = min(n, page + PGSIZE - va)
        out += res.ours.page(page)[va - page:va - page + take]
        va += take
        n -= take
    return out


PROLOGUE = """
    .section .text.start, "ax"
    .globl _start
_start:
"""


@needs_binutils
def test_sum_loop():
    res = run_program(PROLOGUE + """
    xor %eax, %eax
    mov $100, %ecx
1:  add %ecx, %eax
    loop 1b
    mov $1000, %ecx
    xor %edx, %edx
2:  lea (%edx,%ecx,2), %edx
    dec %ecx
    jnz 2b
    int $0x30
""")
    assert res.ours.cpu.r[0] == 5050
    assert res.ours.cpu.r[2] == 2 * sum(range(1, 1001))


@needs_binutils
def test_memcpy_and_memmove_with_rep_movs():
    src = bytes((k * 37 + 11) & 0xFF for k in range(3000))
    res = run_program(PROLOGUE + f"""
    cld
    mov ${DATA:#x}, %esi
    mov ${DATA + 0x4000:#x}, %edi
    mov $(3000 / 4), %ecx
    rep movsl
    mov $(3000 % 4), %ecx
    rep movsb
    # memmove(DATA + 0x4000 + 5, DATA + 0x4000, 2000): overlapping, backwards
    std
    mov ${DATA + 0x4000 + 1999:#x}, %esi
    mov ${DATA + 0x4000 + 5 + 1999:#x}, %edi
    mov $2000, %ecx
    rep movsb
    cld
    # a word copy with a 16-bit operand size, across a page boundary
    mov ${DATA + 0x1FF0:#x}, %esi
    mov ${DATA + 0x8FFE:#x}, %edi
    mov $20, %ecx
    rep movsw
    int $0x30
""", data=src)
    want = bytearray(src)
    want[5:2005] = src[:2000]
    assert mem(res, DATA + 0x4000, 3000) == bytes(want)
    assert mem(res, DATA + 0x8FFE, 40) == (src + bytes(0x3000))[0x1FF0:0x1FF0 + 40]


@needs_binutils
def test_string_reverse():
    s = b"Hello, JOS world! 0123456789"
    res = run_program(PROLOGUE + f"""
    mov ${DATA:#x}, %edi
    xor %eax, %eax
    mov $-1, %ecx
    repne scasb
    not %ecx
    dec %ecx                      # strlen
    mov %ecx, %edx
    mov ${DATA:#x}, %esi
    lea -1(%esi,%ecx), %edi
1:  cmp %edi, %esi
    jae 2f
    movb (%esi), %al
    xchgb (%edi), %al
    movb %al, (%esi)
    inc %esi
    dec %edi
    jmp 1b
2:  int $0x30
""", data=s + b"\0")
    assert res.ours.cpu.r[2] == len(s)
    assert mem(res, DATA, len(s) + 1) == s[::-1] + b"\0"


@needs_binutils
def test_64bit_arithmetic():
    a, b = 0x123456789ABCDEF1, 0xFEDCBA9876543211
    data = struct.pack("<QQ", a, b)
    res = run_program(PROLOGUE + f"""
    mov ${DATA:#x}, %ebx
    # 64x64 -> 64 multiply
    mov 0(%ebx), %eax
    mull 8(%ebx)                  # lo1*lo2
    mov %eax, %esi
    mov %edx, %edi
    mov 4(%ebx), %eax
    imul 8(%ebx), %eax            # hi1*lo2
    add %eax, %edi
    mov 0(%ebx), %eax
    imul 12(%ebx), %eax           # lo1*hi2
    add %eax, %edi
    mov %esi, 16(%ebx)
    mov %edi, 20(%ebx)
    # 64-bit add and subtract
    mov 0(%ebx), %eax
    mov 4(%ebx), %edx
    add 8(%ebx), %eax
    adc 12(%ebx), %edx
    mov %eax, 24(%ebx)
    mov %edx, 28(%ebx)
    mov 0(%ebx), %eax
    mov 4(%ebx), %edx
    sub 8(%ebx), %eax
    sbb 12(%ebx), %edx
    mov %eax, 32(%ebx)
    mov %edx, 36(%ebx)
    # 64-bit shifts by 13 and by 45 (cl)
    mov 0(%ebx), %eax
    mov 4(%ebx), %edx
    shld $13, %eax, %edx
    shl $13, %eax
    mov %eax, 40(%ebx)
    mov %edx, 44(%ebx)
    mov 8(%ebx), %eax
    mov 12(%ebx), %edx
    mov $45, %ecx
    shrd %cl, %edx, %eax
    sar %cl, %edx
    test $32, %cl
    je 1f
    mov %edx, %eax
    sar $31, %edx
1:  mov %eax, 48(%ebx)
    mov %edx, 52(%ebx)
    # 64/32 division with remainder
    mov 4(%ebx), %eax
    xor %edx, %edx
    mov $1000003, %ecx
    div %ecx
    mov %eax, %edi
    mov 0(%ebx), %eax
    div %ecx
    mov %eax, 56(%ebx)
    mov %edi, 60(%ebx)
    mov %edx, 64(%ebx)
    int $0x30
""", data=data)
    M = (1 << 64) - 1
    out = struct.unpack("<QQQQQQI", mem(res, DATA + 16, 52))
    sb = b - (1 << 64) if b >> 63 else b
    assert out[0] == (a * b) & M
    assert out[1] == (a + b) & M
    assert out[2] == (a - b) & M
    assert out[3] == (a << 13) & M
    assert out[4] == (sb >> 45) & M
    assert out[5] == a // 1000003
    assert out[6] == a % 1000003


@pytest.mark.slow
@needs_binutils
def test_recursive_fibonacci():
    res = run_program(PROLOGUE + f"""
    mov ${STACK_TOP:#x}, %esp
    push $12
    call fib
    add $4, %esp
    mov %eax, {DATA:#x}
    push $9
    call fib_stdcall
    mov %eax, {DATA + 4:#x}
    int $0x30

fib:                              # cdecl, with a frame
    push %ebp
    mov %esp, %ebp
    push %ebx
    mov 8(%ebp), %eax
    cmp $2, %eax
    jb 1f
    dec %eax
    push %eax
    call fib
    mov %eax, %ebx
    mov 8(%ebp), %eax
    sub $2, %eax
    mov %eax, (%esp)
    call fib
    add $4, %esp
    add %ebx, %eax
1:  pop %ebx
    leave
    ret

fib_stdcall:                      # callee pops its argument: ret $4, enter
    enter $4, $0
    mov 8(%ebp), %eax
    cmp $1, %eax
    jbe 2f
    lea -1(%eax), %ecx
    mov %ecx, -4(%ebp)
    push %ecx
    call fib_stdcall
    xchg %eax, -4(%ebp)
    dec %eax
    push %eax
    call fib_stdcall
    add -4(%ebp), %eax
2:  leave
    ret $4
""")
    fib = [0, 1]
    for _ in range(20):
        fib.append(fib[-1] + fib[-2])
    assert struct.unpack("<II", mem(res, DATA, 8)) == (fib[12], fib[9])
    assert res.ours.cpu.r[4] == STACK_TOP


@needs_binutils
def test_flags_save_and_string_compare():
    res = run_program(PROLOGUE + f"""
    # pushf/popf round trip of every arithmetic flag, lahf/sahf, setcc
    mov $0x8d5, %eax
    push %eax
    popf
    pushf
    pop %ebx
    lahf
    mov $0, %al
    sahf
    setc %cl
    seto %ch
    pushf
    pop %edx
    mov %ebx, {DATA + 0x100:#x}
    mov %edx, {DATA + 0x104:#x}
    mov %cx, {DATA + 0x108:#x}
    # repe cmpsb: the first difference of two strings
    cld
    mov ${DATA:#x}, %esi
    mov ${DATA + 0x40:#x}, %edi
    mov $32, %ecx
    repe cmpsb
    mov %ecx, {DATA + 0x10C:#x}
    setb {DATA + 0x110:#x}
    int $0x30
""", data=b"the quick brown fox jumps over t" + bytes(32) + b"the quick brown fix jumps over t")
    fl, fl2, cx, left, below = struct.unpack("<IIH2xIB", mem(res, DATA + 0x100, 0x11))
    assert fl & 0x8D5 == 0x8D5 and fl & 0x202 == 0x202
    assert fl2 & 0x8D5 == 0x8D5              # sahf keeps OF; lahf/sahf carried the rest
    assert cx == 0x0101
    assert left == 32 - 18 and below == 0    # 'o' > 'i'


C_FUNCS = r"""
typedef unsigned int u32;

void bubble_sort(int *a, int n) {
    for (int i = 0; i < n; i++)
        for (int j = 0; j + 1 < n - i; j++)
            if (a[j] > a[j + 1]) { int t = a[j]; a[j] = a[j + 1]; a[j + 1] = t; }
}

u32 crc32(const unsigned char *p, int n) {
    u32 c = 0xFFFFFFFFu;
    while (n--) {
        c ^= *p++;
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xEDB88320u & -(c & 1));
    }
    return ~c;
}

u32 isqrt(u32 x) {
    u32 r = 0, bit = 1u << 30;
    while (bit > x) bit >>= 2;
    while (bit) {
        if (x >= r + bit) { x -= r + bit; r = (r >> 1) + bit; }
        else r >>= 1;
        bit >>= 2;
    }
    return r;
}

static int popcount(u32 x) {          /* no libgcc: __builtin_popcount calls it */
    int n = 0;
    while (x) { x &= x - 1; n++; }
    return n;
}

int popcount_sum(const u32 *v, int n) {
    int s = 0;
    for (int i = 0; i < n; i++) s += popcount(v[i]) + __builtin_ctz(v[i] | 0x80000000u)
                                     + (31 - __builtin_clz(v[i] | 1));
    return s;
}

long long mul64(long long a, long long b) { return a * b; }

void run_all(u32 *out, int *arr, int n, const unsigned char *buf, int len) {
    bubble_sort(arr, n);
    out[0] = crc32(buf, len);
    out[1] = isqrt(0xFFFFFFFFu);
    out[2] = isqrt(1000000007u);
    out[3] = isqrt(99);
    out[4] = popcount_sum((const u32 *)buf, len / 4);
    long long m = mul64(-123456789123LL, 987654321LL);
    out[5] = (u32)m;
    out[6] = (u32)(m >> 32);
}
"""

C_START = PROLOGUE + f"""
    mov ${STACK_TOP:#x}, %esp
    push $64                      # len
    push ${DATA + 0x200:#x}       # buf
    push $40                      # n
    push ${DATA + 0x100:#x}       # arr
    push ${DATA:#x}               # out
    call run_all
    add $20, %esp
    int $0x30
"""


@pytest.mark.slow
@needs_binutils
@pytest.mark.skipif(not _gcc_works(), reason="gcc -m32 not usable")
def test_gcc_compiled_functions():
    arr = [((k * 7919) % 1000) - 500 for k in range(40)]
    buf = bytes((k * 131 + 7) & 0xFF for k in range(64))
    data = bytearray(0x300)
    data[0x100:0x100 + 160] = struct.pack("<40i", *arr)
    data[0x200:0x240] = buf
    res = run_program(C_START, data=bytes(data), c_source=C_FUNCS)
    assert list(struct.unpack("<40i", mem(res, DATA + 0x100, 160))) == sorted(arr)
    out = struct.unpack("<7I", mem(res, DATA, 28))
    words = struct.unpack("<16I", buf)
    pc = sum(bin(w).count("1") + ((w | 0x80000000) & -(w | 0x80000000)).bit_length() - 1
             + (w | 1).bit_length() - 1 for w in words)
    m = (-123456789123 * 987654321) & ((1 << 64) - 1)
    assert out == (zlib.crc32(buf), 0xFFFF, 31622, 9, pc, m & 0xFFFFFFFF, m >> 32)
