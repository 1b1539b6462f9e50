/*
 * printbench N: a printf-heavy workload for benchmarks.  Formats N lines
 * with snprintf (decimal, hex, strings, padding, 64-bit numbers) and
 * prints every 64th with cprintf; ends with a checksum of everything it
 * formatted, so that two CPUs can be compared on the result.
 */

#include <inc/lib.h>

void
umain(int argc, char **argv)
{
	char buf[128];
	int i, n = 2000, len;
	uint32_t sum = 0;
	unsigned long long big = 0x123456789ULL;

	if (argc > 1)
		n = strtol(argv[1], NULL, 0);
	for (i = 0; i < n; i++) {
		len = snprintf(buf, sizeof buf, "%d: %08x %-6s|%5d %llu %c",
			       i, i * 2654435761u, (i & 1) ? "odd" : "even",
			       -i, big * i, 'a' + i % 26);
		sum = sum * 31 + len;
		for (len--; len >= 0; len--)
			sum += (unsigned char) buf[len];
		if ((i & 63) == 0)
			cprintf("%s\n", buf);
	}
	cprintf("printbench: %d lines, checksum %08x\n", n, sum);
}
