/* Read a line from the console with simple echo and backspace. */

#include <inc/stdio.h>
#include <inc/error.h>

#define LINE_MAX	1024

static char line[LINE_MAX];

char *
readline(const char *prompt)
{
	int n = 0, echo = iscons(0);

	if (prompt != NULL)
		cprintf("%s", prompt);

	for (;;) {
		int c = getchar();

		if (c < 0) {
			if (c != -E_EOF)
				cprintf("read error: %e\n", c);
			return NULL;
		} else if ((c == '\b' || c == '\x7f') && n > 0) {
			if (echo)
				cputchar('\b');
			n--;
		} else if (c >= ' ' && n < LINE_MAX - 1) {
			if (echo)
				cputchar(c);
			line[n++] = c;
		} else if (c == '\n' || c == '\r') {
			if (echo)
				cputchar('\n');
			line[n] = '\0';
			return line;
		}
	}
}
