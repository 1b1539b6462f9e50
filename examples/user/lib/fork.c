/*
 * Copy-on-write fork.
 *
 * The parent maps each of its writable pages into the child with
 * PTE_COW instead of PTE_W, and remaps them the same way in itself.
 * The first write by either side faults; pgfault() below then gives the
 * writer a private copy.
 */

#include <inc/lib.h>

extern void _pgfault_upcall(void);

/* Page fault handler installed by fork() in parent and child. */
static void
pgfault(struct UTrapframe *utf)
{
	void *addr = (void *) utf->utf_fault_va;
	uint32_t err = utf->utf_err;
	void *page = ROUNDDOWN(addr, PGSIZE);
	int r;

	if (!(err & FEC_WR))
		panic("pgfault: read of va %08x at eip %08x (err %x): "
		      "only writes to copy-on-write pages are handled",
		      utf->utf_fault_va, utf->utf_eip, err);
	if (!(uvpd[PDX(addr)] & PTE_P) || !(uvpt[PGNUM(addr)] & PTE_P)
	    || !(uvpt[PGNUM(addr)] & PTE_COW))
		panic("pgfault: write to va %08x at eip %08x, err %x: "
		      "not a copy-on-write page",
		      utf->utf_fault_va, utf->utf_eip, err);

	/* Copy the page into a fresh one at PFTEMP, then put the copy in
	 * its place, writable. */
	if ((r = sys_page_alloc(0, PFTEMP, PTE_P | PTE_U | PTE_W)) < 0)
		panic("pgfault: sys_page_alloc: %e", r);
	memmove(PFTEMP, page, PGSIZE);
	if ((r = sys_page_map(0, PFTEMP, 0, page, PTE_P | PTE_U | PTE_W)) < 0)
		panic("pgfault: sys_page_map: %e", r);
	if ((r = sys_page_unmap(0, PFTEMP)) < 0)
		panic("pgfault: sys_page_unmap: %e", r);
}

/*
 * Give envid the page number pn as the caller has it:
 *  - PTE_SHARE pages are shared as they are (same frame, same perms);
 *  - writable or copy-on-write pages become copy-on-write in both;
 *  - read-only pages are shared read-only.
 * The child's mapping is made first: once the parent's own PTE loses
 * PTE_W, a write by the parent (e.g. to this very stack) copies the page.
 */
static int
duppage(envid_t envid, unsigned pn)
{
	void *va = (void *) (pn * PGSIZE);
	pte_t pte = uvpt[pn];
	int r;

	if (pte & PTE_SHARE) {
		if ((r = sys_page_map(0, va, envid, va, pte & PTE_SYSCALL)) < 0)
			return r;
	} else if (pte & (PTE_W | PTE_COW)) {
		if ((r = sys_page_map(0, va, envid, va, PTE_P | PTE_U | PTE_COW)) < 0)
			return r;
		if ((r = sys_page_map(0, va, 0, va, PTE_P | PTE_U | PTE_COW)) < 0)
			return r;
	} else {
		if ((r = sys_page_map(0, va, envid, va, PTE_P | PTE_U)) < 0)
			return r;
	}
	return 0;
}

/*
 * Create a child that is a copy of the caller.
 * Returns the child's envid to the parent, 0 to the child, and < 0 if
 * no env could be made.
 */
envid_t
fork(void)
{
	envid_t envid;
	uintptr_t va;
	int r;

	set_pgfault_handler(pgfault);

	envid = sys_exofork();
	if (envid < 0)
		return envid;
	if (envid == 0) {
		/* The child: our envid differs from the parent's. */
		thisenv = &envs[ENVX(sys_getenvid())];
		return 0;
	}

	/* Every present page below the normal stack top; whole 4 MiB
	 * regions without a page table are skipped at once. */
	for (va = 0; va < USTACKTOP; ) {
		if (!(uvpd[PDX(va)] & PTE_P)) {
			va = ROUNDDOWN(va, PTSIZE) + PTSIZE;
			continue;
		}
		if (uvpt[PGNUM(va)] & PTE_P) {
			if ((r = duppage(envid, PGNUM(va))) < 0)
				panic("fork: mapping va %08x into %08x: %e", va, envid, r);
		}
		va += PGSIZE;
	}

	/* The exception stack is never shared: the child gets its own. */
	if ((r = sys_page_alloc(envid, (void *) (UXSTACKTOP - PGSIZE),
				PTE_P | PTE_U | PTE_W)) < 0)
		panic("fork: child exception stack: %e", r);
	if ((r = sys_env_set_pgfault_upcall(envid, _pgfault_upcall)) < 0)
		panic("fork: child upcall: %e", r);

	if ((r = sys_env_set_status(envid, ENV_RUNNABLE)) < 0)
		panic("fork: sys_env_set_status: %e", r);

	return envid;
}

/* Shared-memory fork: not implemented (as in JOS lab 4). */
envid_t
sfork(void)
{
	panic("sfork not implemented");
	return -E_INVAL;
}
