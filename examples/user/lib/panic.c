/* panic() and warn() for user programs. */

#include <inc/lib.h>
#include <inc/x86.h>

/*
 * Print "[ENVID] user panic in PROGRAM at FILE:LINE: MESSAGE" and stop
 * with a breakpoint trap, which the kernel turns into the env's end.
 */
void
_panic(const char *file, int line, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	cprintf("[%08x] user panic in %s at %s:%d: ",
		sys_getenvid(), binaryname, file, line);
	vcprintf(fmt, ap);
	cprintf("\n");
	va_end(ap);

	/* Should the kernel ever resume us, trap again. */
	for (;;)
		breakpoint();
}

/* Print "[ENVID] user warning in PROGRAM at FILE:LINE: MESSAGE". */
void
_warn(const char *file, int line, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	cprintf("[%08x] user warning in %s at %s:%d: ",
		sys_getenvid(), binaryname, file, line);
	vcprintf(fmt, ap);
	cprintf("\n");
	va_end(ap);
}
