/* Trap numbers and the saved-register frames of the JOS ABI. */
#ifndef JOS_INC_TRAP_H
#define JOS_INC_TRAP_H

/* Processor-defined trap numbers. */
#define T_DIVIDE	0	/* divide error */
#define T_DEBUG		1	/* debug exception */
#define T_NMI		2	/* non-maskable interrupt */
#define T_BRKPT		3	/* breakpoint */
#define T_OFLOW		4	/* overflow */
#define T_BOUND		5	/* bounds check */
#define T_ILLOP		6	/* illegal opcode */
#define T_DEVICE	7	/* device not available */
#define T_DBLFLT	8	/* double fault */
/* 9 is reserved */
#define T_TSS		10	/* invalid task switch segment */
#define T_SEGNP		11	/* segment not present */
#define T_STACK		12	/* stack exception */
#define T_GPFLT		13	/* general protection fault */
#define T_PGFLT		14	/* page fault */
/* 15 is reserved */
#define T_FPERR		16	/* floating point error */
#define T_ALIGN		17	/* alignment check */
#define T_MCHK		18	/* machine check */
#define T_SIMDERR	19	/* SIMD floating point error */

/* Software-chosen numbers. */
#define T_SYSCALL	48	/* system call: int $0x30 */
#define T_DEFAULT	500	/* catch-all */

#define IRQ_OFFSET	32	/* IRQ 0 is vector 32 */

/* Hardware IRQ numbers. */
#define IRQ_TIMER	0
#define IRQ_KBD		1
#define IRQ_SERIAL	4
#define IRQ_SPURIOUS	7
#define IRQ_IDE		14
#define IRQ_ERROR	19

#ifndef __ASSEMBLER__

#include <inc/types.h>

/* The general registers in the order pushal stores them (lowest address
 * first). */
struct PushRegs {
	uint32_t reg_edi;
	uint32_t reg_esi;
	uint32_t reg_ebp;
	uint32_t reg_oesp;	/* esp as it was before pushal; popal ignores it */
	uint32_t reg_ebx;
	uint32_t reg_edx;
	uint32_t reg_ecx;
	uint32_t reg_eax;
} __attribute__((packed));

/* What the kernel saves when a trap enters it (68 bytes). */
struct Trapframe {
	struct PushRegs tf_regs;
	uint16_t tf_es;
	uint16_t tf_padding1;
	uint16_t tf_ds;
	uint16_t tf_padding2;
	uint32_t tf_trapno;
	/* Pushed by the processor. */
	uint32_t tf_err;
	uintptr_t tf_eip;
	uint16_t tf_cs;
	uint16_t tf_padding3;
	uint32_t tf_eflags;
	/* Present only on a privilege change (always, for user traps). */
	uintptr_t tf_esp;
	uint16_t tf_ss;
	uint16_t tf_padding4;
} __attribute__((packed));

/* What the kernel pushes on the user exception stack before running
 * the page fault upcall (52 bytes). */
struct UTrapframe {
	uint32_t utf_fault_va;	/* faulting address (cr2) */
	uint32_t utf_err;	/* FEC_* bits */
	struct PushRegs utf_regs;
	uintptr_t utf_eip;
	uint32_t utf_eflags;
	uintptr_t utf_esp;	/* trap-time stack pointer */
} __attribute__((packed));

_Static_assert(sizeof(struct PushRegs) == 32, "struct PushRegs is 32 bytes");
_Static_assert(offsetof(struct PushRegs, reg_edi) == 0, "PushRegs.edi at 0");
_Static_assert(offsetof(struct PushRegs, reg_esi) == 4, "PushRegs.esi at 4");
_Static_assert(offsetof(struct PushRegs, reg_ebp) == 8, "PushRegs.ebp at 8");
_Static_assert(offsetof(struct PushRegs, reg_oesp) == 12, "PushRegs.oesp at 12");
_Static_assert(offsetof(struct PushRegs, reg_ebx) == 16, "PushRegs.ebx at 16");
_Static_assert(offsetof(struct PushRegs, reg_edx) == 20, "PushRegs.edx at 20");
_Static_assert(offsetof(struct PushRegs, reg_ecx) == 24, "PushRegs.ecx at 24");
_Static_assert(offsetof(struct PushRegs, reg_eax) == 28, "PushRegs.eax at 28");

_Static_assert(sizeof(struct Trapframe) == 68, "struct Trapframe is 68 bytes");
_Static_assert(offsetof(struct Trapframe, tf_regs) == 0, "Trapframe.regs at 0");
_Static_assert(offsetof(struct Trapframe, tf_es) == 32, "Trapframe.es at 32");
_Static_assert(offsetof(struct Trapframe, tf_padding1) == 34, "Trapframe.padding1 at 34");
_Static_assert(offsetof(struct Trapframe, tf_ds) == 36, "Trapframe.ds at 36");
_Static_assert(offsetof(struct Trapframe, tf_padding2) == 38, "Trapframe.padding2 at 38");
_Static_assert(offsetof(struct Trapframe, tf_trapno) == 40, "Trapframe.trapno at 40");
_Static_assert(offsetof(struct Trapframe, tf_err) == 44, "Trapframe.err at 44");
_Static_assert(offsetof(struct Trapframe, tf_eip) == 48, "Trapframe.eip at 48");
_Static_assert(offsetof(struct Trapframe, tf_cs) == 52, "Trapframe.cs at 52");
_Static_assert(offsetof(struct Trapframe, tf_padding3) == 54, "Trapframe.padding3 at 54");
_Static_assert(offsetof(struct Trapframe, tf_eflags) == 56, "Trapframe.eflags at 56");
_Static_assert(offsetof(struct Trapframe, tf_esp) == 60, "Trapframe.esp at 60");
_Static_assert(offsetof(struct Trapframe, tf_ss) == 64, "Trapframe.ss at 64");
_Static_assert(offsetof(struct Trapframe, tf_padding4) == 66, "Trapframe.padding4 at 66");

_Static_assert(sizeof(struct UTrapframe) == 52, "struct UTrapframe is 52 bytes");
_Static_assert(offsetof(struct UTrapframe, utf_fault_va) == 0, "UTrapframe.fault_va at 0");
_Static_assert(offsetof(struct UTrapframe, utf_err) == 4, "UTrapframe.err at 4");
_Static_assert(offsetof(struct UTrapframe, utf_regs) == 8, "UTrapframe.regs at 8");
_Static_assert(offsetof(struct UTrapframe, utf_eip) == 40, "UTrapframe.eip at 40");
_Static_assert(offsetof(struct UTrapframe, utf_eflags) == 44, "UTrapframe.eflags at 44");
_Static_assert(offsetof(struct UTrapframe, utf_esp) == 48, "UTrapframe.esp at 48");

#endif /* !__ASSEMBLER__ */

/* Offsets for assembly (lib/pfentry.S). */
#define UTF_FAULT_VA	0
#define UTF_ERR		4
#define UTF_REGS	8
#define UTF_EIP		40
#define UTF_EFLAGS	44
#define UTF_ESP		48
#define UTF_SIZE	52

#endif /* !JOS_INC_TRAP_H */
