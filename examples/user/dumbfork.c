/*
 * Fork without copy-on-write: the parent gives the child a private copy
 * of every page of the program and of its stack, using sys_page_alloc,
 * sys_page_map into its own UTEMP and memmove.
 */

#include <inc/lib.h>

/* First address past the program's .bss (from user.ld). */
extern char end[];

/* Give dstenv a fresh page at addr holding a copy of ours. */
static void
copypage(envid_t dstenv, void *addr)
{
	int r;

	if ((r = sys_page_alloc(dstenv, addr, PTE_P | PTE_U | PTE_W)) < 0)
		panic("sys_page_alloc: %e", r);
	if ((r = sys_page_map(dstenv, addr, 0, UTEMP, PTE_P | PTE_U | PTE_W)) < 0)
		panic("sys_page_map: %e", r);
	memmove(UTEMP, addr, PGSIZE);
	if ((r = sys_page_unmap(0, UTEMP)) < 0)
		panic("sys_page_unmap: %e", r);
}

static envid_t
dumbfork(void)
{
	envid_t envid;
	char *addr;
	int r;

	envid = sys_exofork();
	if (envid < 0)
		panic("sys_exofork: %e", envid);
	if (envid == 0) {
		/* The child. */
		thisenv = &envs[ENVX(sys_getenvid())];
		return 0;
	}

	/* Program text, data and bss... */
	for (addr = (char *) UTEXT; addr < end; addr += PGSIZE)
		copypage(envid, addr);
	/* ...and the stack, from the page holding this frame up. */
	for (addr = ROUNDDOWN((char *) &envid, PGSIZE);
	     (uintptr_t) addr < USTACKTOP; addr += PGSIZE)
		copypage(envid, addr);

	if ((r = sys_env_set_status(envid, ENV_RUNNABLE)) < 0)
		panic("sys_env_set_status: %e", r);

	return envid;
}

void
umain(int argc, char **argv)
{
	envid_t who;
	int i;

	who = dumbfork();

	for (i = 0; i < (who ? 10 : 20); i++) {
		cprintf("%d: I am the %s!\n", i, who ? "parent" : "child");
		sys_yield();
	}
}
