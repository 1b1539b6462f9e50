/* An upcall at an unmapped address: the upcall itself faults, again
 * and again, until the exception stack overflows and the kernel
 * destroys us. */

#include <inc/lib.h>

void
umain(int argc, char **argv)
{
	sys_page_alloc(0, (void *) (UXSTACKTOP - PGSIZE), PTE_P | PTE_U | PTE_W);
	sys_env_set_pgfault_upcall(0, (void *) 0xDeadBeef);
	*(volatile int *) 0 = 0;
}
