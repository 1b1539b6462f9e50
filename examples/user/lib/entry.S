/* Program entry: the kernel jumps here with esp = USTACKTOP (no
 * arguments) or with [esp] = argc, [esp+4] = argv. */

#include <inc/mmu.h>
#include <inc/memlayout.h>

/* The read-only kernel structures every address space maps, as absolute
 * symbols: envs[NENV], pages[], and the page table self-map. */
	.globl	envs
	.set	envs, UENVS
	.globl	pages
	.set	pages, UPAGES
	.globl	uvpt
	.set	uvpt, UVPT
	.globl	uvpd
	.set	uvpd, UVPD

	.section .text.entry, "ax"
	.globl	_start
_start:
	/* Started without arguments?  Then make up argc = 0, argv = 0. */
	cmpl	$USTACKTOP, %esp
	jne	1f
	pushl	$0
	pushl	$0
1:
	call	libmain
	/* libmain does not return; if it ever does, stay here. */
2:
	jmp	2b

/* No executable stack wanted. */
	.section .note.GNU-stack, "", @progbits
