/* Execute a breakpoint instruction (trap 3). */

#include <inc/lib.h>

void
umain(int argc, char **argv)
{
	asm volatile("int $3");
}
