/* Ask the kernel to print kernel memory: user_mem_check should refuse. */

#include <inc/lib.h>

void
umain(int argc, char **argv)
{
	sys_cputs((char *) 0xf010000c, 100);
}
