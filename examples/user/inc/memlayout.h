/* The JOS virtual memory map, as far as user code can see it.
 * Usable from assembly (the C declarations are hidden there). */
#ifndef JOS_INC_MEMLAYOUT_H
#define JOS_INC_MEMLAYOUT_H

#ifndef __ASSEMBLER__
#include <inc/types.h>
#endif
#include <inc/mmu.h>

/*
 *  4 GB ----------------------------------------------
 *              kernel (not user-accessible)
 *  KERNBASE    0xf0000000
 *              kernel stacks, MMIO
 *  ULIM        0xef800000  -- nothing user-readable at or above --
 *  UVPT        0xef400000  page table self-map (R-)
 *  UPAGES      0xef000000  struct PageInfo pages[] (R-)
 *  UENVS       0xeec00000  struct Env envs[NENV] (R-)
 *  UTOP, UXSTACKTOP = UENVS
 *              user exception stack: one page [UXSTACKTOP-PGSIZE, UXSTACKTOP)
 *              empty guard page
 *  USTACKTOP   0xeebfe000  normal user stack grows down from here
 *              ...
 *  UTEXT       0x00800000  program text (ELF entry 0x800020)
 *  PFTEMP      0x007ff000  scratch page for user fault handlers
 *  UTEMP       0x00400000  scratch mappings
 *              0x00200000  (JOS: user STAB data)
 *  0           unmapped
 */

#define KERNBASE	0xF0000000

/* Kernel stacks, below KERNBASE (for reference only). */
#define KSTACKTOP	KERNBASE
#define KSTKSIZE	(8*PGSIZE)
#define KSTKGAP		(8*PGSIZE)

#define MMIOLIM		(KSTACKTOP - PTSIZE)
#define MMIOBASE	(MMIOLIM - PTSIZE)

#define ULIM		(MMIOBASE)

/* Read-only to users. */
#define UVPT		(ULIM - PTSIZE)		/* 0xef400000 */
#define UPAGES		(UVPT - PTSIZE)		/* 0xef000000 */
#define UENVS		(UPAGES - PTSIZE)	/* 0xeec00000 */

/* Top of user-writable memory. */
#define UTOP		UENVS
#define UXSTACKTOP	UTOP			/* 0xeec00000 */
/* One page of exception stack, then an empty guard page. */
#define USTACKTOP	(UTOP - 2*PGSIZE)	/* 0xeebfe000 */

#define UTEXT		(2*PTSIZE)		/* 0x00800000 */
#define UTEMP		((void *) PTSIZE)	/* 0x00400000 */
#define PFTEMP		(UTEMP + PTSIZE - PGSIZE) /* 0x007ff000 */
#define USTABDATA	(PTSIZE / 2)		/* 0x00200000 */

/* uvpd = UVPT + PDX(UVPT) * PGSIZE: the page directory seen through
 * the self-map. */
#define UVPD		(UVPT + (UVPT >> PGSHIFT) * 4)	/* 0xef7bd000 */

#ifndef __ASSEMBLER__

typedef uint32_t pte_t;
typedef uint32_t pde_t;

/*
 * Live views of the current address space's page tables (defined as
 * absolute symbols in lib/entry.S):
 *   uvpt[PGNUM(va)]  the PTE that maps va (valid only if uvpd[PDX(va)] & PTE_P)
 *   uvpd[PDX(va)]    the PDE covering va
 */
extern volatile pte_t uvpt[];
extern volatile pde_t uvpd[];

/* One entry of the read-only physical page array at UPAGES. */
struct PageInfo {
	struct PageInfo *pp_link;	/* next page on the free list */
	uint16_t pp_ref;		/* number of mappings of this page */
};

_Static_assert(sizeof(struct PageInfo) == 8, "struct PageInfo is 8 bytes");
_Static_assert(offsetof(struct PageInfo, pp_link) == 0, "PageInfo.pp_link at 0");
_Static_assert(offsetof(struct PageInfo, pp_ref) == 4, "PageInfo.pp_ref at 4");

#endif /* !__ASSEMBLER__ */

#endif /* !JOS_INC_MEMLAYOUT_H */
