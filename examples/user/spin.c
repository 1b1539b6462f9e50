/* A parent lets a child spin for a while, then kills it: preemption
 * must get the parent back.  `spin MS`: the parent sleeps MS ms instead of
 * yielding 8 times (so that a test can move the child meanwhile). */

#include <inc/lib.h>

void
umain(int argc, char **argv)
{
	envid_t child;
	int i, r;
	unsigned ms = argc > 1 ? strtol(argv[1], NULL, 0) : 0;

	cprintf("I am the parent.  Forking the child...\n");
	if ((child = fork()) < 0)
		panic("fork: %e", child);
	if (child == 0) {
		cprintf("I am the child.  Spinning...\n");
		for (;;)
			;	/* spin */
	}

	cprintf("I am the parent.  Running the child...\n");
	if (ms)
		sys_sleep_msec(ms);
	else
		for (i = 0; i < 8; i++)
			sys_yield();

	cprintf("I am the parent.  Killing the child...\n");
	if ((r = sys_env_destroy(child)) < 0)
		panic("sys_env_destroy: %e", r);
}
