/*
 * Formatted output, independent of where the characters go: vprintfmt
 * hands each output character to putch(ch, putdat).
 *
 * Conversions: %d %i %u %x %X %o %c %s %p %e %%.
 * Flags: '-' (left-justify), '0' (zero-pad), '#' (for %s: show
 * non-printable characters as '?', as JOS does).
 * Width and precision: digits or '*'.  Precision truncates %s and sets
 * the minimum number of digits for integers.
 * Length: 'l' (long, 32 bits here), 'll' (long long, 64 bits), 'z'.
 * %p prints 0x and eight hex digits.  %e takes an int error code (either
 * sign) and prints its message.
 */

#include <inc/types.h>
#include <inc/stdio.h>
#include <inc/stdarg.h>
#include <inc/string.h>
#include <inc/error.h>

static const char *const error_string[MAXERROR] = {
	[E_UNSPECIFIED]		= "unspecified error",
	[E_BAD_ENV]		= "bad environment",
	[E_INVAL]		= "invalid parameter",
	[E_NO_MEM]		= "out of memory",
	[E_NO_FREE_ENV]		= "out of environments",
	[E_FAULT]		= "segmentation fault",
	[E_IPC_NOT_RECV]	= "env is not recving",
	[E_EOF]			= "unexpected end of file",
};

/* Everything a single conversion needs to know about its flags. */
struct spec {
	int width;		/* minimum field width, 0 if none */
	int prec;		/* precision, -1 if none */
	bool left;		/* '-' */
	bool zero;		/* '0' */
	bool alt;		/* '#' */
};

static void
pad(void (*putch)(int, void *), void *putdat, char c, int n)
{
	while (n-- > 0)
		putch(c, putdat);
}

/* Print num in the given base; neg adds a leading '-'. */
static void
print_number(void (*putch)(int, void *), void *putdat, const struct spec *sp,
	     uint64_t num, unsigned base, bool upper, bool neg)
{
	const char *digit = upper ? "0123456789ABCDEF" : "0123456789abcdef";
	char buf[24];		/* 22 octal digits cover 64 bits */
	int ndig = 0, nzero, len;

	if ((num >> 32) == 0) {
		/* Common case: stay in 32-bit arithmetic. */
		uint32_t v = (uint32_t) num;
		do {
			buf[ndig++] = digit[v % base];
			v /= base;
		} while (v != 0);
	} else {
		do {
			buf[ndig++] = digit[num % base];
			num /= base;
		} while (num != 0);
	}

	/* Minimum digits from the precision, or from a zero pad. */
	nzero = 0;
	if (sp->prec >= 0) {
		if (sp->prec > ndig)
			nzero = sp->prec - ndig;
	} else if (sp->zero && !sp->left) {
		if (sp->width > ndig + neg)
			nzero = sp->width - ndig - neg;
	}

	len = ndig + nzero + (neg ? 1 : 0);
	if (!sp->left)
		pad(putch, putdat, ' ', sp->width - len);
	if (neg)
		putch('-', putdat);
	pad(putch, putdat, '0', nzero);
	while (ndig > 0)
		putch(buf[--ndig], putdat);
	if (sp->left)
		pad(putch, putdat, ' ', sp->width - len);
}

static void
print_string(void (*putch)(int, void *), void *putdat, const struct spec *sp,
	     const char *s)
{
	int len;

	if (s == NULL)
		s = "(null)";
	len = sp->prec >= 0 ? strnlen(s, sp->prec) : strlen(s);

	if (!sp->left)
		pad(putch, putdat, ' ', sp->width - len);
	for (int i = 0; i < len; i++) {
		char c = s[i];
		if (sp->alt && (c < ' ' || c > '~'))
			putch('?', putdat);
		else
			putch(c, putdat);
	}
	if (sp->left)
		pad(putch, putdat, ' ', sp->width - len);
}

void
vprintfmt(void (*putch)(int, void *), void *putdat, const char *fmt, va_list ap)
{
	for (;;) {
		const char *start;
		struct spec sp;
		int lng;		/* 0: int, 1: long, 2: long long */
		int ch;
		uint64_t u;
		int64_t s;
		unsigned base;
		int err;

		/* Copy plain text up to the next '%'. */
		while ((ch = (unsigned char) *fmt) != '%') {
			if (ch == '\0')
				return;
			putch(ch, putdat);
			fmt++;
		}
		fmt++;
		start = fmt;

		sp.width = 0;
		sp.prec = -1;
		sp.left = sp.zero = sp.alt = false;
		lng = 0;

		/* Flags. */
		for (;; fmt++) {
			if (*fmt == '-')
				sp.left = true;
			else if (*fmt == '0')
				sp.zero = true;
			else if (*fmt == '#')
				sp.alt = true;
			else
				break;
		}

		/* Width. */
		if (*fmt == '*') {
			sp.width = va_arg(ap, int);
			if (sp.width < 0) {
				sp.left = true;
				sp.width = -sp.width;
			}
			fmt++;
		} else {
			while (*fmt >= '0' && *fmt <= '9')
				sp.width = sp.width * 10 + (*fmt++ - '0');
		}

		/* Precision. */
		if (*fmt == '.') {
			fmt++;
			sp.prec = 0;
			if (*fmt == '*') {
				sp.prec = va_arg(ap, int);
				if (sp.prec < 0)
					sp.prec = -1;
				fmt++;
			} else {
				while (*fmt >= '0' && *fmt <= '9')
					sp.prec = sp.prec * 10 + (*fmt++ - '0');
			}
		}

		/* Length. */
		if (*fmt == 'l') {
			fmt++;
			lng = 1;
			if (*fmt == 'l') {
				fmt++;
				lng = 2;
			}
		} else if (*fmt == 'z') {
			fmt++;
			lng = 1;
		}

		switch (ch = (unsigned char) *fmt++) {
		case 'c':
			if (!sp.left)
				pad(putch, putdat, ' ', sp.width - 1);
			putch(va_arg(ap, int), putdat);
			if (sp.left)
				pad(putch, putdat, ' ', sp.width - 1);
			break;

		case 's':
			print_string(putch, putdat, &sp, va_arg(ap, const char *));
			break;

		case 'e':
			err = va_arg(ap, int);
			if (err < 0)
				err = -err;
			if (err > 0 && err < MAXERROR && error_string[err] != NULL) {
				print_string(putch, putdat, &sp, error_string[err]);
			} else {
				/* Unknown code: "error N", padded as a whole. */
				char msg[24];
				snprintf(msg, sizeof(msg), "error %d", err);
				print_string(putch, putdat, &sp, msg);
			}
			break;

		case 'd':
		case 'i':
			if (lng == 2)
				s = va_arg(ap, long long);
			else if (lng == 1)
				s = va_arg(ap, long);
			else
				s = va_arg(ap, int);
			if (s < 0)
				print_number(putch, putdat, &sp,
					     -(uint64_t) s, 10, false, true);
			else
				print_number(putch, putdat, &sp,
					     (uint64_t) s, 10, false, false);
			break;

		case 'u':
			base = 10;
			goto unsigned_number;
		case 'o':
			base = 8;
			goto unsigned_number;
		case 'x':
		case 'X':
			base = 16;
		unsigned_number:
			if (lng == 2)
				u = va_arg(ap, unsigned long long);
			else if (lng == 1)
				u = va_arg(ap, unsigned long);
			else
				u = va_arg(ap, unsigned int);
			print_number(putch, putdat, &sp, u, base, ch == 'X', false);
			break;

		case 'p':
			/* Always 0x and all eight hex digits. */
			u = (uintptr_t) va_arg(ap, void *);
			if (!sp.left)
				pad(putch, putdat, ' ', sp.width - 10);
			putch('0', putdat);
			putch('x', putdat);
			for (int shift = 28; shift >= 0; shift -= 4)
				putch("0123456789abcdef"[(u >> shift) & 0xf], putdat);
			if (sp.left)
				pad(putch, putdat, ' ', sp.width - 10);
			break;

		case '%':
			putch('%', putdat);
			break;

		default:
			/* Not a conversion we know (or the string ended):
			 * print the '%' and resume with the text after it. */
			putch('%', putdat);
			fmt = start;
			break;
		}
	}
}

void
printfmt(void (*putch)(int, void *), void *putdat, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vprintfmt(putch, putdat, fmt, ap);
	va_end(ap);
}

/* Output into a bounded buffer. */
struct sprintbuf {
	char *buf;	/* next free position */
	char *ebuf;	/* last position (reserved for the terminating NUL) */
	int cnt;	/* characters produced, stored or not */
};

static void
sprintputch(int ch, void *arg)
{
	struct sprintbuf *b = arg;

	b->cnt++;
	if (b->buf < b->ebuf)
		*b->buf++ = ch;
}

/* Like C's vsnprintf: stores at most size-1 characters and a NUL, and
 * returns the full length of the output.  -E_INVAL if there is no room
 * even for the NUL. */
int
vsnprintf(char *buf, int size, const char *fmt, va_list ap)
{
	struct sprintbuf b;

	if (buf == NULL || size < 1)
		return -E_INVAL;

	b.buf = buf;
	b.ebuf = buf + size - 1;
	b.cnt = 0;
	vprintfmt(sprintputch, &b, fmt, ap);
	*b.buf = '\0';
	return b.cnt;
}

int
snprintf(char *buf, int size, const char *fmt, ...)
{
	va_list ap;
	int r;

	va_start(ap, fmt);
	r = vsnprintf(buf, size, fmt, ap);
	va_end(ap);
	return r;
}
