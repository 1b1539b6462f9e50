/* String and memory routines with JOS's signatures. */

#include <inc/string.h>

int
strlen(const char *s)
{
	int n = 0;

	while (s[n] != '\0')
		n++;
	return n;
}

int
strnlen(const char *s, size_t size)
{
	int n = 0;

	while ((size_t) n < size && s[n] != '\0')
		n++;
	return n;
}

char *
strcpy(char *dst, const char *src)
{
	char *d = dst;

	while ((*d++ = *src++) != '\0')
		;
	return dst;
}

/* Copy at most size bytes of src, then pad with NULs up to size bytes.
 * Like C's strncpy, dst is not terminated if src is size bytes or
 * longer. */
char *
strncpy(char *dst, const char *src, size_t size)
{
	size_t i;

	for (i = 0; i < size && src[i] != '\0'; i++)
		dst[i] = src[i];
	for (; i < size; i++)
		dst[i] = '\0';
	return dst;
}

char *
strcat(char *dst, const char *src)
{
	strcpy(dst + strlen(dst), src);
	return dst;
}

/* Copy src into dst[size], always NUL-terminating when size > 0.
 * Returns the number of characters copied (not counting the NUL). */
size_t
strlcpy(char *dst, const char *src, size_t size)
{
	size_t i = 0;

	if (size == 0)
		return 0;
	while (i < size - 1 && src[i] != '\0') {
		dst[i] = src[i];
		i++;
	}
	dst[i] = '\0';
	return i;
}

int
strcmp(const char *p, const char *q)
{
	while (*p != '\0' && *p == *q)
		p++, q++;
	return (int) (unsigned char) *p - (int) (unsigned char) *q;
}

int
strncmp(const char *p, const char *q, size_t n)
{
	for (; n > 0; n--, p++, q++) {
		if (*p != *q)
			return (int) (unsigned char) *p - (int) (unsigned char) *q;
		if (*p == '\0')
			return 0;
	}
	return 0;
}

/* First occurrence of c in s, or NULL. */
char *
strchr(const char *s, char c)
{
	for (; *s != '\0'; s++)
		if (*s == c)
			return (char *) s;
	return NULL;
}

/* First occurrence of c in s, or the terminating NUL. */
char *
strfind(const char *s, char c)
{
	while (*s != '\0' && *s != c)
		s++;
	return (char *) s;
}

/*
 * memset and memmove use the string instructions: 4 bytes at a time
 * when pointers and length are all multiples of 4, else byte by byte.
 */
void *
memset(void *v, int c, size_t n)
{
	void *d = v;

	if (n == 0)
		return v;
	if ((((uintptr_t) v | n) & 3) == 0) {
		uint32_t w = (uint8_t) c;
		size_t words = n / 4;

		w |= w << 8;
		w |= w << 16;
		asm volatile("cld; rep stosl"
			     : "+D" (d), "+c" (words)
			     : "a" (w)
			     : "cc", "memory");
	} else {
		asm volatile("cld; rep stosb"
			     : "+D" (d), "+c" (n)
			     : "a" (c)
			     : "cc", "memory");
	}
	return v;
}

void *
memmove(void *dst, const void *src, size_t n)
{
	const char *s = src;
	char *d = dst;
	bool aligned = (((uintptr_t) s | (uintptr_t) d | n) & 3) == 0;

	if (n == 0 || s == d)
		return dst;

	if (s < d && s + n > d) {
		/* dst overlaps the end of src: copy from the top down. */
		if (aligned) {
			size_t words = n / 4;
			s += n - 4;
			d += n - 4;
			asm volatile("std; rep movsl; cld"
				     : "+D" (d), "+S" (s), "+c" (words)
				     :
				     : "cc", "memory");
		} else {
			s += n - 1;
			d += n - 1;
			asm volatile("std; rep movsb; cld"
				     : "+D" (d), "+S" (s), "+c" (n)
				     :
				     : "cc", "memory");
		}
	} else {
		if (aligned) {
			size_t words = n / 4;
			asm volatile("cld; rep movsl"
				     : "+D" (d), "+S" (s), "+c" (words)
				     :
				     : "cc", "memory");
		} else {
			asm volatile("cld; rep movsb"
				     : "+D" (d), "+S" (s), "+c" (n)
				     :
				     : "cc", "memory");
		}
	}
	return dst;
}

/* The compiler may emit calls to memcpy for structure copies. */
void *
memcpy(void *dst, const void *src, size_t n)
{
	return memmove(dst, src, n);
}

int
memcmp(const void *v1, const void *v2, size_t n)
{
	const uint8_t *a = v1, *b = v2;

	for (; n > 0; n--, a++, b++)
		if (*a != *b)
			return (int) *a - (int) *b;
	return 0;
}

/* First byte equal to (unsigned char) c in [s, s+n), or s+n. */
void *
memfind(const void *s, int c, size_t n)
{
	const uint8_t *p = s, *end = p + n;

	for (; p < end; p++)
		if (*p == (uint8_t) c)
			break;
	return (void *) p;
}

/*
 * Parse an integer: leading blanks, an optional sign, then digits in the
 * given base.  Base 0 picks 16 for a "0x" prefix, 8 for a leading "0",
 * else 10; base 16 also accepts the "0x" prefix.  *endptr (if given)
 * is set just past the last digit used.
 */
long
strtol(const char *s, char **endptr, int base)
{
	bool neg = false;
	long val = 0;

	while (*s == ' ' || *s == '\t')
		s++;

	if (*s == '+')
		s++;
	else if (*s == '-') {
		neg = true;
		s++;
	}

	if ((base == 0 || base == 16) && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		s += 2;
		base = 16;
	} else if (base == 0 && s[0] == '0') {
		s++;
		base = 8;
	} else if (base == 0) {
		base = 10;
	}

	for (;; s++) {
		int dig;

		if (*s >= '0' && *s <= '9')
			dig = *s - '0';
		else if (*s >= 'a' && *s <= 'z')
			dig = *s - 'a' + 10;
		else if (*s >= 'A' && *s <= 'Z')
			dig = *s - 'A' + 10;
		else
			break;
		if (dig >= base)
			break;
		val = val * base + dig;
	}

	if (endptr != NULL)
		*endptr = (char *) s;
	return neg ? -val : val;
}
