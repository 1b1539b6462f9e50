/* C-level start of every program: find our struct Env, name the
 * program, run umain, exit. */

#include <inc/lib.h>

extern void umain(int argc, char **argv);

const volatile struct Env *thisenv;
const char *binaryname = "<unknown>";

void libmain(int argc, char **argv);

void
libmain(int argc, char **argv)
{
	thisenv = &envs[ENVX(sys_getenvid())];

	/* argv[0] names the program when the kernel passed arguments. */
	if (argc > 0 && argv != NULL && argv[0] != NULL)
		binaryname = argv[0];

	umain(argc, argv);

	exit();
}
