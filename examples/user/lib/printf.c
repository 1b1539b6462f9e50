/*
 * cprintf: formatted output to the console.  Characters collect in a
 * buffer on the caller's stack that goes to the kernel in one sys_cputs
 * at the end of the call (and whenever it fills up), so a short message
 * reaches the console in one piece.
 */

#include <inc/types.h>
#include <inc/stdio.h>
#include <inc/stdarg.h>
#include <inc/lib.h>

#define PRINTBUF_SIZE	256

struct printbuf {
	int idx;		/* characters waiting in buf */
	int cnt;		/* characters produced so far */
	char buf[PRINTBUF_SIZE];
};

static void
putch(int ch, void *arg)
{
	struct printbuf *b = arg;

	b->buf[b->idx++] = ch;
	if (b->idx == PRINTBUF_SIZE) {
		sys_cputs(b->buf, b->idx);
		b->idx = 0;
	}
	b->cnt++;
}

int
vcprintf(const char *fmt, va_list ap)
{
	struct printbuf b;

	b.idx = 0;
	b.cnt = 0;
	vprintfmt(putch, &b, fmt, ap);
	if (b.idx > 0)
		sys_cputs(b.buf, b.idx);
	return b.cnt;
}

int
cprintf(const char *fmt, ...)
{
	va_list ap;
	int cnt;

	va_start(ap, fmt);
	cnt = vcprintf(fmt, ap);
	va_end(ap);
	return cnt;
}
