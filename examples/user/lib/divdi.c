/*
 * 64-bit division for a 32-bit target without libgcc.  gcc turns a / b
 * and a % b on (unsigned) long long into calls to these helpers.
 *
 * A 32-bit divisor takes two divl instructions (high word, then the
 * remainder with the low word).  A wider divisor means the quotient
 * fits in 32 bits; it is found by shift-and-subtract.
 */

#include <inc/types.h>

uint64_t __udivdi3(uint64_t n, uint64_t d);
uint64_t __umoddi3(uint64_t n, uint64_t d);
int64_t __divdi3(int64_t n, int64_t d);
int64_t __moddi3(int64_t n, int64_t d);

/* (hi:lo) / d with hi < d, so the quotient fits in 32 bits. */
static inline uint32_t
divl(uint32_t hi, uint32_t lo, uint32_t d, uint32_t *rem)
{
	uint32_t q, r;

	asm("divl %4" : "=a" (q), "=d" (r) : "a" (lo), "d" (hi), "rm" (d) : "cc");
	*rem = r;
	return q;
}

static uint64_t
udivmod64(uint64_t n, uint64_t d, uint64_t *rem)
{
	uint32_t nhi = (uint32_t) (n >> 32), nlo = (uint32_t) n;
	uint32_t dhi = (uint32_t) (d >> 32), dlo = (uint32_t) d;

	if (dhi == 0) {
		uint32_t qhi, qlo, r;

		if (dlo == 0) {
			/* Division by zero: raise the divide error as the
			 * hardware instruction would. */
			volatile uint32_t zero = 0;
			*rem = nlo / zero;
			return 0;
		}
		if (nhi == 0) {
			*rem = nlo % dlo;
			return nlo / dlo;
		}
		qhi = nhi / dlo;
		qlo = divl(nhi % dlo, nlo, dlo, &r);
		*rem = r;
		return ((uint64_t) qhi << 32) | qlo;
	}

	if (n < d) {
		*rem = n;
		return 0;
	}

	/* d >= 2^32 and n >= d: line d up with n's top bit, then take
	 * off one quotient bit per step. */
	{
		uint32_t q = 0;
		int shift = 0;

		while ((d & (1ULL << 63)) == 0 && (d << 1) <= n) {
			d <<= 1;
			shift++;
		}
		for (; shift >= 0; shift--) {
			q <<= 1;
			if (n >= d) {
				n -= d;
				q |= 1;
			}
			d >>= 1;
		}
		*rem = n;
		return q;
	}
}

uint64_t
__udivdi3(uint64_t n, uint64_t d)
{
	uint64_t r;

	return udivmod64(n, d, &r);
}

uint64_t
__umoddi3(uint64_t n, uint64_t d)
{
	uint64_t r;

	udivmod64(n, d, &r);
	return r;
}

/* Signed versions truncate toward zero; the remainder takes the sign
 * of the dividend. */
int64_t
__divdi3(int64_t n, int64_t d)
{
	uint64_t un = n < 0 ? -(uint64_t) n : (uint64_t) n;
	uint64_t ud = d < 0 ? -(uint64_t) d : (uint64_t) d;
	uint64_t r, q = udivmod64(un, ud, &r);

	return (int64_t) (((n < 0) != (d < 0)) ? -q : q);
}

int64_t
__moddi3(int64_t n, int64_t d)
{
	uint64_t un = n < 0 ? -(uint64_t) n : (uint64_t) n;
	uint64_t ud = d < 0 ? -(uint64_t) d : (uint64_t) d;
	uint64_t r;

	udivmod64(un, ud, &r);
	return (int64_t) (n < 0 ? -r : r);
}
