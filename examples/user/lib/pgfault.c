/*
 * User-level page fault handling.  The kernel runs the assembly upcall
 * _pgfault_upcall (lib/pfentry.S) on the exception stack; it calls the
 * C handler installed here and then resumes the faulting code.
 */

#include <inc/lib.h>

/* Assembly-language upcall entry point (lib/pfentry.S). */
extern void _pgfault_upcall(void);

/* The C handler the upcall calls; read by lib/pfentry.S. */
void (*_pgfault_handler)(struct UTrapframe *utf);

/*
 * Install handler as the page fault handler.  The first call also
 * allocates the exception stack page [UXSTACKTOP-PGSIZE, UXSTACKTOP)
 * and registers the upcall with the kernel.  (A child made by fork()
 * inherits the handler; fork() sets up its stack and upcall.)
 */
void
set_pgfault_handler(void (*handler)(struct UTrapframe *utf))
{
	int r;

	if (_pgfault_handler == NULL) {
		if ((r = sys_page_alloc(0, (void *) (UXSTACKTOP - PGSIZE),
					PTE_P | PTE_U | PTE_W)) < 0)
			panic("set_pgfault_handler: allocating the exception stack: %e", r);
		/* The handler must be in place before the first fault can
		 * reach the upcall. */
		_pgfault_handler = handler;
		if ((r = sys_env_set_pgfault_upcall(0, _pgfault_upcall)) < 0)
			panic("set_pgfault_handler: registering the upcall: %e", r);
	}

	_pgfault_handler = handler;
}
