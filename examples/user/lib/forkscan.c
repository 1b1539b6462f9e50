/*
 * forkscan: copy-on-write fork written the way most students write it
 * in JOS lab 4.  Where lib/fork.c skips a whole 4 MiB region when its
 * page table is absent, this fork looks at every page below USTACKTOP
 * (about 978,000 of them): for each it reads uvpd[PDX(va)] and, when
 * the page table is there, uvpt[PGNUM(va)], through the kernel's
 * read-only windows.  The result is the same child as fork()'s; only
 * the cost differs (about 8 million instructions per fork).
 */

#include <inc/lib.h>

extern void _pgfault_upcall(void);

static void
pgfault(struct UTrapframe *utf)
{
	void *addr = (void *) utf->utf_fault_va;
	uint32_t err = utf->utf_err;
	int r;

	if (!((err & FEC_WR) && (uvpd[PDX(addr)] & PTE_P)
	      && (uvpt[PGNUM(addr)] & PTE_P) && (uvpt[PGNUM(addr)] & PTE_COW)))
		panic("forkscan pgfault: va %08x eip %08x err %x is not a copy-on-write write",
		      utf->utf_fault_va, utf->utf_eip, err);

	addr = ROUNDDOWN(addr, PGSIZE);
	if ((r = sys_page_alloc(0, PFTEMP, PTE_P | PTE_U | PTE_W)) < 0)
		panic("forkscan pgfault: sys_page_alloc: %e", r);
	memcpy(PFTEMP, addr, PGSIZE);
	if ((r = sys_page_map(0, PFTEMP, 0, addr, PTE_P | PTE_U | PTE_W)) < 0)
		panic("forkscan pgfault: sys_page_map: %e", r);
	if ((r = sys_page_unmap(0, PFTEMP)) < 0)
		panic("forkscan pgfault: sys_page_unmap: %e", r);
}

static int
duppage(envid_t envid, unsigned pn)
{
	void *addr = (void *) (pn * PGSIZE);
	int r;

	if ((uvpt[pn] & PTE_W) || (uvpt[pn] & PTE_COW)) {
		if ((r = sys_page_map(0, addr, envid, addr, PTE_P | PTE_U | PTE_COW)) < 0)
			return r;
		if ((r = sys_page_map(0, addr, 0, addr, PTE_P | PTE_U | PTE_COW)) < 0)
			return r;
	} else if ((r = sys_page_map(0, addr, envid, addr, PTE_P | PTE_U)) < 0)
		return r;
	return 0;
}

envid_t
forkscan(void)
{
	envid_t envid;
	uintptr_t addr;
	int r;

	set_pgfault_handler(pgfault);
	envid = sys_exofork();
	if (envid < 0)
		return envid;
	if (envid == 0) {
		thisenv = &envs[ENVX(sys_getenvid())];
		return 0;
	}

	for (addr = 0; addr < USTACKTOP; addr += PGSIZE)
		if ((uvpd[PDX(addr)] & PTE_P) && (uvpt[PGNUM(addr)] & PTE_P)
		    && (uvpt[PGNUM(addr)] & PTE_U))
			if ((r = duppage(envid, PGNUM(addr))) < 0)
				panic("forkscan: duppage %08x: %e", addr, r);

	if ((r = sys_page_alloc(envid, (void *) (UXSTACKTOP - PGSIZE), PTE_P | PTE_U | PTE_W)) < 0)
		panic("forkscan: exception stack: %e", r);
	if ((r = sys_env_set_pgfault_upcall(envid, _pgfault_upcall)) < 0)
		panic("forkscan: upcall: %e", r);
	if ((r = sys_env_set_status(envid, ENV_RUNNABLE)) < 0)
		panic("forkscan: sys_env_set_status: %e", r);
	return envid;
}
