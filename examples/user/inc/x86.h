/* The few x86 instructions the library and programs wrap (all unprivileged). */
#ifndef JOS_INC_X86_H
#define JOS_INC_X86_H

#include <inc/types.h>

/* Trap into the kernel with T_BRKPT. */
static inline void
breakpoint(void)
{
	asm volatile("int3");
}

/* Spin-wait hint (a plain nop on processors that predate it). */
static inline void
cpu_pause(void)
{
	asm volatile("pause" ::: "memory");
}

#endif /* !JOS_INC_X86_H */
