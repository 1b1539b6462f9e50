/*
 * forktree with forkscan(), the fork most students write (lib/forkscan.c):
 * a binary tree of environments down to depth 3, each printing its id
 * and its path from the root.  Fourteen forks of about 8 million
 * instructions each.
 */

#include <inc/lib.h>

#define DEPTH 3

static void scantree(const char *path);

static void
forkchild(const char *path, char branch)
{
	char child[DEPTH + 1];

	if (strlen(path) >= DEPTH)
		return;

	snprintf(child, sizeof(child), "%s%c", path, branch);
	if (forkscan() == 0) {
		scantree(child);
		exit();
	}
}

static void
scantree(const char *path)
{
	cprintf("%04x: I am '%s'\n", sys_getenvid(), path);

	forkchild(path, '0');
	forkchild(path, '1');
}

void
umain(int argc, char **argv)
{
	scantree("");
}
