/*
 * ipcbench: IPC round trips between a parent and its child, timed.
 *
 *   ipcbench N [WAIT_MS [BATCH]]
 *
 * The parent forks, waits WAIT_MS ms (default 0: so that a benchmark can
 * move the child to another node first), then sends the child 1..N, each
 * answered with the value + 1 (a round trip), and prints the milliseconds
 * of every BATCH round trips (default 100) and of all N:
 *
 *	ipcbench: batch 3: 100 round trips in 12 ms
 *	ipcbench: 1000 round trips in 118 ms
 */

#include <inc/lib.h>

void
umain(int argc, char **argv)
{
	unsigned n = argc > 1 ? strtol(argv[1], NULL, 0) : 1000;
	unsigned wait = argc > 2 ? strtol(argv[2], NULL, 0) : 0;
	unsigned batch = argc > 3 ? strtol(argv[3], NULL, 0) : 100;
	envid_t child, from;
	unsigned i, v, t0, tb;

	if (batch == 0)
		batch = 100;
	if ((child = fork()) < 0)
		panic("fork: %e", child);
	if (child == 0) {
		for (;;) {
			v = ipc_recv(&from, NULL, NULL);
			ipc_send(from, v + 1, NULL, 0);
			if (v >= n)
				return;
		}
	}
	if (wait)
		sys_sleep_msec(wait);
	t0 = tb = sys_time_msec();
	for (i = 1; i <= n; i++) {
		ipc_send(child, i, NULL, 0);
		v = ipc_recv(&from, NULL, NULL);
		if (v != i + 1 || from != child)
			panic("ipcbench: sent %u to %08x, got %u from %08x", i, child, v, from);
		if (i % batch == 0) {
			unsigned now = sys_time_msec();
			cprintf("ipcbench: batch %u: %u round trips in %u ms\n", i / batch, batch,
				now - tb);
			tb = now;
		}
	}
	cprintf("ipcbench: %u round trips in %u ms\n", n, sys_time_msec() - t0);
}
