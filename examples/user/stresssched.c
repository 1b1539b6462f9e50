/*
 * Scheduler stress: 20 children each yield and count in turn; a
 * child's private counter must come out exactly right, which fails if
 * one env ever ran on two CPUs at once.
 */

#include <inc/lib.h>
#include <inc/x86.h>

volatile int counter;

void
umain(int argc, char **argv)
{
	envid_t parent = sys_getenvid();
	int i, j;

	/* Fork 20 children; each leaves the loop at once. */
	for (i = 0; i < 20; i++)
		if (fork() == 0)
			break;
	if (i == 20) {
		sys_yield();
		return;
	}

	/* Wait until the parent has finished forking and gone. */
	while (envs[ENVX(parent)].env_status != ENV_FREE)
		cpu_pause();

	for (i = 0; i < 10; i++) {
		sys_yield();
		for (j = 0; j < 10000; j++)
			counter++;
	}

	if (counter != 10 * 10000)
		panic("ran on two CPUs at once (counter is %d)", counter);

	cprintf("[%08x] stresssched on CPU %d\n", thisenv->env_id, thisenv->env_cpunum);
}
