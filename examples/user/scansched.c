/*
 * stresssched with forkscan() (lib/forkscan.c), yield-heavy: the parent
 * forks 20 children; each child gives the CPU away until the parent has
 * gone, then yields N times (argv[1], default 1000), counting between
 * yields.  Its private counter must come out exactly right.
 */

#include <inc/lib.h>

#define NCHILD 20
#define STEP 100

volatile int counter;

void
umain(int argc, char **argv)
{
	envid_t parent = sys_getenvid();
	int i, j, rounds = 1000;

	if (argc > 1)
		rounds = strtol(argv[1], NULL, 0);

	for (i = 0; i < NCHILD; i++)
		if (forkscan() == 0)
			break;
	if (i == NCHILD)
		return;

	/* Wait until the parent has finished forking and gone. */
	while (envs[ENVX(parent)].env_status != ENV_FREE)
		sys_yield();

	for (i = 0; i < rounds; i++) {
		sys_yield();
		for (j = 0; j < STEP; j++)
			counter++;
	}

	if (counter != rounds * STEP)
		panic("counter is %d after %d rounds", counter, rounds);

	cprintf("[%08x] scansched: %d yields ok\n", thisenv->env_id, rounds);
}
