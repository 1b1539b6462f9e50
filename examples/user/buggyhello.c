/* Hand the kernel a bad pointer: user_mem_check should catch it. */

#include <inc/lib.h>

void
umain(int argc, char **argv)
{
	sys_cputs((char *) 1, 1);
}
