/* Sleep 100 ms and check that the clock moved at least that much. */

#include <inc/lib.h>

void
umain(int argc, char **argv)
{
	unsigned start, now;

	start = sys_time_msec();
	cprintf("sleeper: start %u\n", start);
	sys_sleep_msec(100);
	now = sys_time_msec();
	cprintf("sleeper: slept\n");
	if (now - start < 100)
		panic("sleeper: clock advanced only %u ms during a 100 ms sleep",
		      now - start);
}
