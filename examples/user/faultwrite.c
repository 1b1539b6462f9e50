/* Write to address 0: the kernel should kill us. */

#include <inc/lib.h>

void
umain(int argc, char **argv)
{
	*(volatile unsigned *) 0 = 0;
}
