/* x86 paging constants as seen by JOS user code.  Usable from assembly. */
#ifndef JOS_INC_MMU_H
#define JOS_INC_MMU_H

#ifndef __ASSEMBLER__
#include <inc/types.h>
#endif

/*
 * A 32-bit linear address splits into
 *   | page directory index (10) | page table index (10) | offset (12) |
 * PGNUM(la) is the top 20 bits: the index into uvpt[].
 */
#define PGNUM(la)	(((uintptr_t) (la)) >> PTXSHIFT)
#define PDX(la)		((((uintptr_t) (la)) >> PDXSHIFT) & 0x3FF)
#define PTX(la)		((((uintptr_t) (la)) >> PTXSHIFT) & 0x3FF)
#define PGOFF(la)	(((uintptr_t) (la)) & 0xFFF)
#define PGADDR(d, t, o)	((void *) ((d) << PDXSHIFT | (t) << PTXSHIFT | (o)))

#define NPDENTRIES	1024		/* entries per page directory */
#define NPTENTRIES	1024		/* entries per page table */

#define PGSIZE		4096		/* bytes in a page */
#define PGSHIFT		12		/* log2(PGSIZE) */

#define PTSIZE		(PGSIZE*NPTENTRIES) /* bytes one PDE maps */
#define PTSHIFT		22		/* log2(PTSIZE) */

#define PTXSHIFT	12
#define PDXSHIFT	22

/* Page table / directory entry flags. */
#define PTE_P		0x001	/* present */
#define PTE_W		0x002	/* writeable */
#define PTE_U		0x004	/* user */
#define PTE_PWT		0x008	/* write-through */
#define PTE_PCD		0x010	/* cache-disable */
#define PTE_A		0x020	/* accessed */
#define PTE_D		0x040	/* dirty */
#define PTE_PS		0x080	/* page size */
#define PTE_G		0x100	/* global */

/* The three AVAIL bits belong to software; the kernel keeps them. */
#define PTE_AVAIL	0xE00

/* The only flags a user may pass to sys_page_alloc / sys_page_map. */
#define PTE_SYSCALL	(PTE_AVAIL | PTE_P | PTE_W | PTE_U)

/* User-library conventions inside AVAIL. */
#define PTE_SHARE	0x400	/* share the frame across fork */
#define PTE_COW		0x800	/* copy-on-write */

/* Physical address held in a PTE or PDE. */
#define PTE_ADDR(pte)	((physaddr_t) (pte) & ~0xFFF)

/* Page fault error code bits. */
#define FEC_PR		0x1	/* protection violation (page was present) */
#define FEC_WR		0x2	/* the access was a write */
#define FEC_U		0x4	/* the access came from user mode */

/* EFLAGS bits. */
#define FL_CF		0x00000001	/* carry */
#define FL_PF		0x00000004	/* parity */
#define FL_AF		0x00000010	/* auxiliary carry */
#define FL_ZF		0x00000040	/* zero */
#define FL_SF		0x00000080	/* sign */
#define FL_TF		0x00000100	/* trap */
#define FL_IF		0x00000200	/* interrupt enable */
#define FL_DF		0x00000400	/* direction */
#define FL_OF		0x00000800	/* overflow */
#define FL_IOPL_MASK	0x00003000	/* I/O privilege level */
#define FL_IOPL_0	0x00000000
#define FL_IOPL_1	0x00001000
#define FL_IOPL_2	0x00002000
#define FL_IOPL_3	0x00003000
#define FL_NT		0x00004000	/* nested task */
#define FL_RF		0x00010000	/* resume */
#define FL_VM		0x00020000	/* virtual 8086 mode */
#define FL_AC		0x00040000	/* alignment check */
#define FL_VIF		0x00080000	/* virtual interrupt flag */
#define FL_VIP		0x00100000	/* virtual interrupt pending */
#define FL_ID		0x00200000	/* ID flag */

#endif /* !JOS_INC_MMU_H */
