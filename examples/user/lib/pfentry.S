/*
 * _pgfault_upcall: where the kernel sends a page fault when the env has
 * registered an upcall.  On entry esp points at a struct UTrapframe on
 * the exception stack:
 *
 *	 0 utf_fault_va		 4 utf_err
 *	 8 utf_regs (edi esi ebp oesp ebx edx ecx eax)
 *	40 utf_eip		44 utf_eflags		48 utf_esp
 *
 * After the C handler returns we resume the faulting code without
 * entering the kernel: the trap-time eip is written just below the
 * trap-time esp (on that stack), the saved esp is lowered by 4 to cover
 * it, and then popal / popfl / popl %esp / ret restore everything.
 *
 * The word below the trap-time esp is always free: on the normal stack
 * it is below the stack pointer, and when the fault happened on the
 * exception stack itself the kernel leaves one scratch word between the
 * trap-time esp and the new UTrapframe for exactly this purpose.
 */

#include <inc/mmu.h>
#include <inc/memlayout.h>
#include <inc/trap.h>

	.text
	.globl	_pgfault_upcall
_pgfault_upcall:
	/* The C handler gets a pointer to the UTrapframe.  It runs with
	 * the direction flag clear, whatever the faulting code had; popfl
	 * below restores the trap-time flags. */
	cld
	pushl	%esp
	movl	_pgfault_handler, %eax
	call	*%eax
	addl	$4, %esp

	/* Push the trap-time eip onto the trap-time stack. */
	movl	UTF_ESP(%esp), %eax
	subl	$4, %eax
	movl	UTF_EIP(%esp), %ebx
	movl	%ebx, (%eax)
	movl	%eax, UTF_ESP(%esp)

	/* Restore the general registers (popal skips the saved esp). */
	addl	$UTF_REGS, %esp
	popal

	/* Skip utf_eip, restore eflags.  Nothing after popfl may change
	 * the flags. */
	addl	$4, %esp
	popfl

	/* Switch to the trap-time stack (now pointing at the saved eip)
	 * and return to the faulting instruction. */
	popl	%esp
	ret

/* No executable stack wanted. */
	.section .note.GNU-stack, "", @progbits
