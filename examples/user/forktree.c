/*
 * A binary tree of environments made with fork(): every env prints its
 * id and its path from the root ("", "0", "01", ...), then forks a
 * child for branch '0' and one for branch '1', down to depth 3.
 */

#include <inc/lib.h>

#define DEPTH 3

static void forktree(const char *path);

static void
forkchild(const char *path, char branch)
{
	char child[DEPTH + 1];

	if (strlen(path) >= DEPTH)
		return;

	snprintf(child, sizeof(child), "%s%c", path, branch);
	if (fork() == 0) {
		forktree(child);
		exit();
	}
}

static void
forktree(const char *path)
{
	cprintf("%04x: I am '%s'\n", sys_getenvid(), path);

	forkchild(path, '0');
	forkchild(path, '1');
}

void
umain(int argc, char **argv)
{
	forktree("");
}
