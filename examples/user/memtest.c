/*
 * memtest: the memory oracle for migration tests.
 *
 *   memtest NPAGES [DIRTY [SLEEP_MS [PASSES]]]
 *
 * Maps NPAGES (1..16384) fresh pages at 0x10000000 and fills each with
 * a pattern that depends on the page's address and on a per-page
 * generation number kept in .bss: word i of the page at va with
 * generation g is
 *
 *	(va + 4*i) * 2654435761 + g * 0x9e3779b9	(mod 2^32)
 *
 * so every word of every page differs, and a page left over from an
 * older generation, or moved, or shifted, cannot pass for the right one.
 *
 * Then pass after pass: verify every word of every page, rewrite DIRTY
 * pages (default NPAGES; round robin, so all pages get rewritten over
 * time) with their next generation, print one line, sleep SLEEP_MS
 * (default 0).  Stop after PASSES passes (0 or absent: run forever).
 * The first wrong word is reported and the program panics.
 */

#include <inc/lib.h>

#define MT_BASE		0x10000000
#define MT_MAXPAGES	16384
#define MT_WORDS	(PGSIZE / 4)
#define ADDR_MULT	2654435761u	/* odd: different addresses, different words */
#define GEN_MULT	0x9e3779b9u	/* odd: different generations, different pages */

static uint32_t generation[MT_MAXPAGES];

static inline uint32_t
page_va(int k)
{
	return MT_BASE + (uint32_t) k * PGSIZE;
}

/* The expected first word of a page; each next word adds 4 * ADDR_MULT. */
static inline uint32_t
first_word(uint32_t va, uint32_t gen)
{
	return va * ADDR_MULT + gen * GEN_MULT;
}

static void
fill_page(uint32_t va, uint32_t gen)
{
	uint32_t *p = (uint32_t *) va;
	uint32_t x = first_word(va, gen);
	const uint32_t step = 4 * ADDR_MULT;

	for (int i = 0; i < MT_WORDS; i += 4) {
		p[i] = x;
		x += step;
		p[i + 1] = x;
		x += step;
		p[i + 2] = x;
		x += step;
		p[i + 3] = x;
		x += step;
	}
}

/* Index of the first wrong word of the page, or -1 if all are right. */
static int
verify_page(uint32_t va, uint32_t gen)
{
	const uint32_t *p = (const uint32_t *) va;
	uint32_t x = first_word(va, gen);
	const uint32_t step = 4 * ADDR_MULT;

	for (int i = 0; i < MT_WORDS; i += 4) {
		if (p[i] != x)
			return i;
		x += step;
		if (p[i + 1] != x)
			return i + 1;
		x += step;
		if (p[i + 2] != x)
			return i + 2;
		x += step;
		if (p[i + 3] != x)
			return i + 3;
		x += step;
	}
	return -1;
}

static long
argnum(int argc, char **argv, int i, long dflt)
{
	return argc > i ? strtol(argv[i], NULL, 0) : dflt;
}

void
umain(int argc, char **argv)
{
	long npages, dirty, sleep_ms, passes;
	int pass, k, cursor, r;

	if (argc < 2) {
		cprintf("usage: memtest NPAGES [DIRTY [SLEEP_MS [PASSES]]]\n");
		return;
	}
	npages = argnum(argc, argv, 1, 0);
	dirty = argnum(argc, argv, 2, npages);
	sleep_ms = argnum(argc, argv, 3, 0);
	passes = argnum(argc, argv, 4, 0);
	if (npages < 1 || npages > MT_MAXPAGES)
		panic("memtest: NPAGES must be 1..%d, not %d", MT_MAXPAGES, npages);
	if (dirty < 0 || dirty > npages)
		panic("memtest: DIRTY must be 0..%d, not %d", npages, dirty);
	if (sleep_ms < 0 || passes < 0)
		panic("memtest: SLEEP_MS and PASSES must not be negative");

	for (k = 0; k < npages; k++) {
		if ((r = sys_page_alloc(0, (void *) page_va(k), PTE_P | PTE_U | PTE_W)) < 0)
			panic("memtest: sys_page_alloc at %08x: %e", page_va(k), r);
		generation[k] = 0;
		fill_page(page_va(k), 0);
	}

	cursor = 0;
	for (pass = 1; ; pass++) {
		for (k = 0; k < npages; k++) {
			int i = verify_page(page_va(k), generation[k]);

			if (i >= 0) {
				uint32_t va = page_va(k);
				uint32_t want = first_word(va, generation[k])
					+ (uint32_t) i * 4 * ADDR_MULT;

				cprintf("memtest: MISMATCH page %08x word %d expected %08x got %08x (pass %d)\n",
					va, i, want, ((uint32_t *) va)[i], pass);
				panic("memtest: page %08x (generation %u) is corrupt",
				      va, generation[k]);
			}
		}

		for (k = 0; k < dirty; k++) {
			generation[cursor]++;
			fill_page(page_va(cursor), generation[cursor]);
			if (++cursor == npages)
				cursor = 0;
		}

		cprintf("memtest: pass %d ok, %d pages verified, %d rewritten\n",
			pass, npages, dirty);

		if (passes > 0 && pass >= passes)
			break;
		if (sleep_ms > 0)
			sys_sleep_msec(sleep_ms);
	}

	cprintf("memtest: done\n");
}
