/*
 * waitchild: a parent watches its child through envs[], as JOS's wait()
 * does: the child runs for MS ms (default 500) and exits; the parent polls
 * envs[ENVX(child)] every 10 ms until the slot no longer holds the child,
 * then says so.
 *
 *   waitchild [MS]
 */

#include <inc/lib.h>

void
umain(int argc, char **argv)
{
	unsigned ms = argc > 1 ? strtol(argv[1], NULL, 0) : 500;
	const volatile struct Env *e;
	envid_t child;
	unsigned polls = 0;

	if ((child = fork()) < 0)
		panic("fork: %e", child);
	if (child == 0) {
		sys_sleep_msec(ms);
		cprintf("waitchild: child %08x done\n", sys_getenvid());
		return;
	}
	e = &envs[ENVX(child)];
	while (e->env_id == child && e->env_status != ENV_FREE) {
		sys_sleep_msec(10);
		polls++;
	}
	cprintf("waitchild: child %08x is gone (%u polls)\n", child, polls);
}
