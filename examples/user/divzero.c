/* Integer division by zero: the kernel should kill us (trap 0). */

#include <inc/lib.h>

/* Both operands come from memory: gcc rewrites a literal 1/x as a
 * comparison, which would never execute a divide instruction. */
volatile int zero = 0;
volatile int one = 1;

void
umain(int argc, char **argv)
{
	cprintf("1/0 is %08x!\n", one / zero);
}
