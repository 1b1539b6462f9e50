"""JOS's memory layout, page-table bits, error codes and flags: the numbers
of the JOS lab-4 ABI (inc/memlayout.h, mmu.h, error.h) that jmig's code
reads, with JOS's names (docs/kernel.md has the ABI in words).  Trap
numbers are the x86 manual's; trap.py names them all.

    4 GiB +------------------------------+
          |  (kernel: never user-visible)|
    ULIM  +------------------------------+ 0xef800000
          |  UVPT: current page table    | R-/R-   PTSIZE
    UVPT  +------------------------------+ 0xef400000
          |  UPAGES: struct PageInfo[]   | R-/R-   PTSIZE
    UPAGES+------------------------------+ 0xef000000
          |  UENVS: struct Env[NENV]     | R-/R-   PTSIZE
    UTOP  +------------------------------+ 0xeec00000 = UXSTACKTOP
          |  user exception stack        | RW/RW   PGSIZE
          +------------------------------+ 0xeebff000
          |  empty (guard page)          |
 USTACKTOP+------------------------------+ 0xeebfe000
          |  normal user stack, heap,    | RW/RW
          |  program text and data       |
    UTEXT +------------------------------+ 0x00800000
    PFTEMP+------------------------------+ 0x007ff000
    UTEMP +------------------------------+ 0x00400000
          |  unmapped                    |
        0 +------------------------------+
"""

PGSHIFT = 12
PGSIZE = 1 << PGSHIFT            # bytes per page
PDXSHIFT = 22
PTSIZE = 1 << PDXSHIFT           # bytes mapped by one page directory entry
NPTENTRIES = 1024
NPDENTRIES = 1024
CHUNK = 1024                     # a page travels as four chunks, sequence 1..4

UTEMP = 0x00400000
PFTEMP = 0x007FF000
UTEXT = 0x00800000
USTACKTOP = 0xEEBFE000
UXSTACKTOP = 0xEEC00000
UTOP = 0xEEC00000
UENVS = 0xEEC00000
UPAGES = 0xEF000000
UVPT = 0xEF400000
UVPD = UVPT + (UVPT >> 12) * 4   # 0xef7bd000
ULIM = 0xEF800000
KERNBASE = 0xF0000000

# Page table entry bits.
PTE_P = 0x001
PTE_W = 0x002
PTE_U = 0x004
PTE_A = 0x020
PTE_D = 0x040
PTE_AVAIL = 0xE00
PTE_SHARE = 0x400
PTE_COW = 0x800
PTE_SYSCALL = PTE_AVAIL | PTE_P | PTE_W | PTE_U   # 0xe07: the bits a user may pass

# jmig's kernel-private PTE state, kept above bit 31 so that no 32-bit PTE
# value ever shows it: the page is present in the process but its contents
# live on another node (demand-paging migration).  Reads through uvpt see
# (perm | PTE_P) with frame 0.
PTE_REMOTE = 1 << 32

# Page-fault error code bits.
FEC_PR = 0x1
FEC_WR = 0x2
FEC_U = 0x4

# EFLAGS bits.
FL_CF = 0x001
FL_PF = 0x004
FL_AF = 0x010
FL_ZF = 0x040
FL_SF = 0x080
FL_TF = 0x100
FL_IF = 0x200
FL_DF = 0x400
FL_OF = 0x800
FL_RESERVED1 = 0x002              # always reads 1

# The page-fault trap (the x86 manual's #PF).
T_PGFLT = 14

# Error codes (syscalls return them negated).
E_BAD_ENV = 2
E_INVAL = 3
E_NO_MEM = 4
E_NO_FREE_ENV = 5
E_IPC_NOT_RECV = 7

# Segment selectors.
GD_UT = 0x18
GD_UD = 0x20
USER_CS = GD_UT | 3               # 0x1b
USER_DS = GD_UD | 3               # 0x23


def PGNUM(va: int) -> int:
    return va >> PGSHIFT


def PDX(va: int) -> int:
    return (va >> PDXSHIFT) & 0x3FF


def PGOFF(va: int) -> int:
    return va & 0xFFF


def ROUNDDOWN(a: int, n: int) -> int:
    return a - a % n


def ROUNDUP(a: int, n: int) -> int:
    return ROUNDDOWN(a + n - 1, n)
