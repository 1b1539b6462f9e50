/* Raise the page fault vector by software: user code may not, so this
 * must be a general protection fault. */

#include <inc/lib.h>

void
umain(int argc, char **argv)
{
	asm volatile("int $14");
}
