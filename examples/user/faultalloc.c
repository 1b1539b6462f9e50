/*
 * Demand allocation from a user page fault handler: touching an
 * unmapped address maps a fresh page there and writes a message into
 * it.  The second string straddles a page boundary, so writing it
 * faults again from inside the handler (a nested fault).
 */

#include <inc/lib.h>

static void
handler(struct UTrapframe *utf)
{
	void *addr = (void *) utf->utf_fault_va;
	int r;

	cprintf("fault %x\n", addr);
	if ((r = sys_page_alloc(0, ROUNDDOWN(addr, PGSIZE),
				PTE_P | PTE_U | PTE_W)) < 0)
		panic("allocating at %x in page fault handler: %e", addr, r);
	snprintf((char *) addr, 100, "this string was faulted in at %x", addr);
}

void
umain(int argc, char **argv)
{
	set_pgfault_handler(handler);
	cprintf("%s\n", (char *) 0xDeadBeef);
	cprintf("%s\n", (char *) 0xCafeBffe);
}
