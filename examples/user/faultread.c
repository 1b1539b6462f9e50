/* Read from address 0: the kernel should kill us before we print. */

#include <inc/lib.h>

void
umain(int argc, char **argv)
{
	cprintf("I read %08x from location 0!\n", *(volatile unsigned *) 0);
}
