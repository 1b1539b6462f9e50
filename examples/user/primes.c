/*
 * Concurrent prime sieve (after Doug McIlroy): a chain of environments
 * connected by IPC.  The first env generates 2, 3, 4, ...; each filter
 * env owns the first number that reaches it, which is prime, prints
 * it, forks the next filter and passes on only the numbers its prime
 * does not divide.  Runs until the env slots run out.
 *
 * `primes MS [LIMIT]`: the generator sleeps MS ms before each number and
 * stops after LIMIT (so that a test can move the filters while it runs,
 * and knows which primes must come out).
 */

#include <inc/lib.h>

static void __attribute__((noreturn))
filter(void)
{
	envid_t from, next;
	uint32_t p, n;

	for (;;) {
		/* The first number to reach this env is its prime. */
		p = ipc_recv(&from, NULL, NULL);
		cprintf("%d\n", p);

		if ((next = fork()) < 0)
			panic("fork: %e", next);
		if (next != 0)
			break;
		/* The child becomes the next filter in the chain. */
	}

	for (;;) {
		n = ipc_recv(&from, NULL, NULL);
		if (n % p != 0)
			ipc_send(next, n, NULL, 0);
	}
}

void
umain(int argc, char **argv)
{
	envid_t first;
	uint32_t n;
	unsigned ms = argc > 1 ? strtol(argv[1], NULL, 0) : 0;
	uint32_t limit = argc > 2 ? strtol(argv[2], NULL, 0) : 0;

	if ((first = fork()) < 0)
		panic("fork: %e", first);
	if (first == 0)
		filter();

	for (n = 2; limit == 0 || n <= limit; n++) {
		if (ms)
			sys_sleep_msec(ms);
		ipc_send(first, n, NULL, 0);
	}
	cprintf("primes: generated 2..%d\n", limit);
}
