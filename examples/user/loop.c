/*
 * The original project's test program: print a counter forever, pausing
 * between lines.  `loop MS` sets the pause (default 200 ms).
 */

#include <inc/lib.h>

void
umain(int argc, char **argv)
{
	unsigned ms = 200;
	int counter = 0;

	if (argc > 1)
		ms = strtol(argv[1], NULL, 0);

	for (;;) {
		/* sys_getenvid(), not thisenv: after a load or a migration
		 * the process may have a new env id. */
		cprintf("Test Program, Env ID: %d, Counter: %d\n",
			sys_getenvid(), counter);
		counter++;
		sys_sleep_msec(ms);
	}
}
