/*
 * Register state across a user page fault: with every register and the
 * arithmetic flags set to known values, write to the unmapped page
 * UTEMP.  The handler checks that the UTrapframe holds exactly those
 * values (and the faulting eip), maps the page, and after the restarted
 * write umain checks that every register and flag came back unchanged.
 * Prints JOS's lines "Registers in UTrapframe OK" and
 * "Registers after page-fault OK".
 */

#include <inc/lib.h>

#define FAULT_VA	0x400000	/* UTEMP */

/* CF PF AF ZF SF OF set; DF is exercised by faultnest. */
#define TEST_FLAGS	(FL_CF | FL_PF | FL_AF | FL_ZF | FL_SF | FL_OF)

/* The full user-visible state at one moment. */
struct regstate {
	struct PushRegs regs;	/* reg_oesp holds esp */
	uint32_t eflags;
};

/* Filled in by the asm in umain (found by name). */
struct regstate fr_before, fr_after;
extern char fr_fault_insn[];	/* address of the faulting instruction */

static int
compare(const char *when, const struct regstate *want, const struct regstate *got,
	uint32_t want_eip, uint32_t got_eip)
{
	static const char *const name[8] = {
		"edi", "esi", "ebp", "esp", "ebx", "edx", "ecx", "eax"
	};
	const uint32_t *w = (const uint32_t *) &want->regs;
	const uint32_t *g = (const uint32_t *) &got->regs;
	int bad = 0;

	for (int i = 0; i < 8; i++) {
		if (w[i] != g[i]) {
			cprintf("    %-6s %08x %08x MISMATCH\n", name[i], w[i], g[i]);
			bad = 1;
		}
	}
	if (want->eflags != got->eflags) {
		cprintf("    %-6s %08x %08x MISMATCH\n", "eflags", want->eflags, got->eflags);
		bad = 1;
	}
	if (want_eip != got_eip) {
		cprintf("    %-6s %08x %08x MISMATCH\n", "eip", want_eip, got_eip);
		bad = 1;
	}
	cprintf("Registers %s %s\n", when, bad ? "MISMATCH" : "OK");
	return bad;
}

static int handler_bad;

static void
handler(struct UTrapframe *utf)
{
	struct regstate during;
	int r;

	if (utf->utf_fault_va != FAULT_VA)
		panic("page fault at va %08x, expected %08x", utf->utf_fault_va, FAULT_VA);

	during.regs = utf->utf_regs;
	during.regs.reg_oesp = utf->utf_esp;	/* pusha's esp slot is meaningless */
	during.eflags = utf->utf_eflags;
	handler_bad = compare("in UTrapframe", &fr_before, &during,
			      (uint32_t) fr_fault_insn, utf->utf_eip);

	if ((r = sys_page_alloc(0, (void *) FAULT_VA, PTE_P | PTE_U | PTE_W)) < 0)
		panic("sys_page_alloc: %e", r);
}

#define STR(x)	#x
#define XSTR(x)	STR(x)

#define SAVE_STATE(sym)				\
	"movl %%edi, " sym "+0\n\t"		\
	"movl %%esi, " sym "+4\n\t"		\
	"movl %%ebp, " sym "+8\n\t"		\
	"movl %%esp, " sym "+12\n\t"		\
	"movl %%ebx, " sym "+16\n\t"		\
	"movl %%edx, " sym "+20\n\t"		\
	"movl %%ecx, " sym "+24\n\t"		\
	"movl %%eax, " sym "+28\n\t"		\
	"pushfl\n\t"				\
	"popl " sym "+32\n\t"

void
umain(int argc, char **argv)
{
	set_pgfault_handler(handler);

	asm volatile(
		"pushal\n\t"
		"pushfl\n\t"
		"movl $0xdeadbee1, %%edi\n\t"
		"movl $0xdeadbee2, %%esi\n\t"
		"movl $0xdeadbee3, %%ebp\n\t"
		"movl $0xdeadbee5, %%ebx\n\t"
		"movl $0xdeadbee6, %%edx\n\t"
		"movl $0xdeadbee7, %%ecx\n\t"
		"movl $0xdeadbee8, %%eax\n\t"
		"pushl $" XSTR(TEST_FLAGS) "\n\t"
		"popfl\n\t"
		SAVE_STATE("fr_before")
		".globl fr_fault_insn\n"
		"fr_fault_insn:\n\t"
		"movl $42, " XSTR(FAULT_VA) "\n\t"
		SAVE_STATE("fr_after")
		"popfl\n\t"
		"popal\n\t"
		::: "memory", "cc");

	if ((fr_before.eflags & TEST_FLAGS) != TEST_FLAGS)
		cprintf("faultregs: popfl gave eflags %08x, wanted bits %08x set\n",
			fr_before.eflags, TEST_FLAGS);
	if (*(volatile uint32_t *) FAULT_VA != 42)
		cprintf("faultregs: the restarted write stored %d, not 42\n",
			*(volatile uint32_t *) FAULT_VA);

	compare("after page-fault", &fr_before, &fr_after, 0, 0);
	USED(handler_bad);
}
