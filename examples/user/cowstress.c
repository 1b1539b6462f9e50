/*
 * Copy-on-write stress: `cowstress [ROUNDS]` (default 8).
 *
 * Each round the parent fills a 64 KiB global array (16 pages) with a
 * pattern and forks two children.  Each child checks that it sees the
 * parent's pattern, although the parent overwrites its own copy right
 * after forking, then writes its own pattern to every page, yields,
 * checks it, and reports to the parent over IPC.  The parent checks
 * that none of the children's writes reached its copy.
 */

#include <inc/lib.h>

#define NPAGES		16
#define NWORDS		(NPAGES * PGSIZE / 4)
#define NCHILD		2

/* Who wrote a pattern. */
enum { PARENT_BEFORE = 1, PARENT_AFTER = 2, CHILD0 = 3 };

static uint32_t arr[NWORDS] __attribute__((aligned(PGSIZE)));

/* Word i of the pattern written by `who` in round `round`. */
static inline uint32_t
pattern(int who, int round, int i)
{
	return (uint32_t) i ^ ((uint32_t) round << 16) ^ ((uint32_t) who << 28);
}

static void
fill(int who, int round)
{
	for (int i = 0; i < NWORDS; i++)
		arr[i] = pattern(who, round, i);
}

/* 0 if arr holds who's pattern for round, else report and return -1. */
static int
check(int who, int round, const char *what)
{
	for (int i = 0; i < NWORDS; i++) {
		if (arr[i] != pattern(who, round, i)) {
			cprintf("cowstress: MISMATCH %s, round %d, word %d (va %08x): "
				"expected %08x got %08x\n",
				what, round, i, &arr[i], pattern(who, round, i), arr[i]);
			return -1;
		}
	}
	return 0;
}

static void __attribute__((noreturn))
child(envid_t parent, int k, int round)
{
	int ok = 1;

	if (check(PARENT_BEFORE, round, "child sees parent's pre-fork data") < 0)
		ok = 0;
	fill(CHILD0 + k, round);
	sys_yield();
	sys_yield();
	if (ok && check(CHILD0 + k, round, "child's own writes") < 0)
		ok = 0;
	ipc_send(parent, ok, NULL, 0);
	if (!ok)
		panic("cowstress: child %d of round %d saw a mismatch", k, round);
	exit();
}

void
umain(int argc, char **argv)
{
	envid_t parent = sys_getenvid();
	envid_t kids[NCHILD];
	int rounds = 8;

	if (argc > 1)
		rounds = strtol(argv[1], NULL, 0);

	for (int round = 1; round <= rounds; round++) {
		fill(PARENT_BEFORE, round);

		for (int k = 0; k < NCHILD; k++) {
			kids[k] = fork();
			if (kids[k] < 0)
				panic("cowstress: fork: %e", kids[k]);
			if (kids[k] == 0)
				child(parent, k, round);
		}

		/* The children must not see this. */
		fill(PARENT_AFTER, round);
		sys_yield();

		for (int k = 0; k < NCHILD; k++) {
			envid_t from;
			int ok = ipc_recv(&from, NULL, NULL);

			if (from != kids[0] && from != kids[1])
				panic("cowstress: message from unexpected env %08x", from);
			if (!ok)
				panic("cowstress: child %08x reported a mismatch", from);
		}

		if (check(PARENT_AFTER, round, "parent's data after the children wrote") < 0)
			panic("cowstress: parent saw a mismatch in round %d", round);

		cprintf("cowstress: round %d ok\n", round);
	}
	cprintf("cowstress: done\n");
}
