/*
 * Two environments pass a counter back and forth over IPC.  The parent
 * sends 0; whoever receives a value prints it and sends value+1; both
 * stop once 10 has gone across.  `pingpong MS`: each waits MS ms before
 * passing the counter on (so that a test can move one of them mid-game).
 */

#include <inc/lib.h>

void
umain(int argc, char **argv)
{
	envid_t peer;
	unsigned ms = argc > 1 ? strtol(argv[1], NULL, 0) : 0;

	if ((peer = fork()) < 0)
		panic("fork: %e", peer);
	if (peer != 0) {
		/* Parent: start the game. */
		cprintf("send 0 from %x to %x\n", sys_getenvid(), peer);
		ipc_send(peer, 0, NULL, 0);
	}

	for (;;) {
		envid_t from;
		uint32_t v = ipc_recv(&from, NULL, NULL);

		cprintf("%x got %d from %x\n", sys_getenvid(), v, from);
		if (v == 10)
			return;
		v++;
		if (ms)
			sys_sleep_msec(ms);
		ipc_send(from, v, NULL, 0);
		if (v == 10)
			return;
	}
}
