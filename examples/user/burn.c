/*
 * burn: a CPU-bound process for load balancing.  It computes forever and
 * prints a line every EVERY iterations (default 524288, about 10 million
 * instructions):
 *
 *	burn 00001003: 7
 *
 * (its env id, then how many lines it has printed), so that a process that
 * moved can be seen to go on from where it was.
 */

#include <inc/lib.h>

void
umain(int argc, char **argv)
{
	unsigned every = 1u << 19;
	unsigned n = 0, lines = 0;
	uint32_t x = 1;

	if (argc > 1)
		every = strtol(argv[1], NULL, 0);
	if (every == 0)
		every = 1;
	for (;;) {
		x = x * 1103515245u + 12345u;
		if (++n == every) {
			n = 0;
			cprintf("burn %08x: %u (%08x)\n", sys_getenvid(), ++lines, x);
		}
	}
}
