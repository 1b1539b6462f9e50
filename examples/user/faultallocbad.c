/* The kernel's own accesses to user memory do not go through the page
 * fault upcall: sys_cputs on an unmapped address must be refused
 * (user_mem_check) even though a handler that would map it is set. */

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
	sys_cputs((char *) 0xDEADBEEF, 4);
}
