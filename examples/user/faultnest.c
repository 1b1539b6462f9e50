/*
 * Nested user page faults.  umain touches an unmapped page (OUTER_VA)
 * with every register and most flags set to known values; the handler,
 * while handling that fault, touches a second unmapped page (INNER_VA),
 * so the kernel must push a second UTrapframe on the exception stack
 * (4 bytes below the first handler's esp).  The inner handler maps its
 * page, the outer handler then maps its own, and the original access is
 * restarted.  Afterwards every register, the flags and both pages'
 * contents must be what the program expects.
 */

#include <inc/lib.h>

#define OUTER_VA	0xa0000000	/* both well away from anything mapped */
#define INNER_VA	0xb0000000
#define OUTER_WORD	0x10		/* offsets of the faulting accesses */
#define INNER_WORD	0x8
#define OUTER_VALUE	0x12345678
#define INNER_VALUE	0x600df00d

/* Flags set around the outer access: CF PF AF ZF SF DF OF. */
#define TEST_FLAGS	(FL_CF | FL_PF | FL_AF | FL_ZF | FL_SF | FL_DF | FL_OF)

/* Register snapshots taken by the asm in umain (found by name). */
struct PushRegs fn_before, fn_after;
uint32_t fn_flags_before, fn_flags_after;

static int depth, outer_faults, inner_faults;

static void
handler(struct UTrapframe *utf)
{
	uint32_t va = utf->utf_fault_va;
	int r;

	depth++;
	if (depth == 1) {
		/* The outer fault: the first frame sits at the very top of
		 * the exception stack. */
		outer_faults++;
		if ((uintptr_t) utf != UXSTACKTOP - sizeof(struct UTrapframe))
			panic("outer UTrapframe at %08x, expected %08x",
			      utf, UXSTACKTOP - sizeof(struct UTrapframe));
		if (va != OUTER_VA + OUTER_WORD || !(utf->utf_err & FEC_WR))
			panic("outer fault at va %08x err %x, expected a write to %08x",
			      va, utf->utf_err, OUTER_VA + OUTER_WORD);

		/* Fault again, on the exception stack. */
		*(volatile uint32_t *) (INNER_VA + INNER_WORD) = INNER_VALUE;

		cprintf("outer fault %x\n", va);
		if ((r = sys_page_alloc(0, (void *) OUTER_VA, PTE_P | PTE_U | PTE_W)) < 0)
			panic("sys_page_alloc: %e", r);
	} else {
		/* The nested fault: trap-time esp is on the exception
		 * stack and the new frame leaves one scratch word below it. */
		inner_faults++;
		if (utf->utf_esp < UXSTACKTOP - PGSIZE || utf->utf_esp >= UXSTACKTOP)
			panic("nested fault: trap-time esp %08x not on the exception stack",
			      utf->utf_esp);
		if ((uintptr_t) utf != utf->utf_esp - 4 - sizeof(struct UTrapframe))
			panic("nested UTrapframe at %08x, expected %08x (esp %08x - 4 - %d)",
			      utf, utf->utf_esp - 4 - sizeof(struct UTrapframe),
			      utf->utf_esp, sizeof(struct UTrapframe));
		if (va != INNER_VA + INNER_WORD || !(utf->utf_err & FEC_WR))
			panic("nested fault at va %08x err %x, expected a write to %08x",
			      va, utf->utf_err, INNER_VA + INNER_WORD);

		cprintf("nested fault %x\n", va);
		if ((r = sys_page_alloc(0, (void *) INNER_VA, PTE_P | PTE_U | PTE_W)) < 0)
			panic("sys_page_alloc: %e", r);
	}
	depth--;
}

#define STR(x)	#x
#define XSTR(x)	STR(x)

/* Store all eight registers (esp in the oesp slot) into a PushRegs. */
#define SAVE_REGS(sym)				\
	"movl %%edi, " sym "+0\n\t"		\
	"movl %%esi, " sym "+4\n\t"		\
	"movl %%ebp, " sym "+8\n\t"		\
	"movl %%esp, " sym "+12\n\t"		\
	"movl %%ebx, " sym "+16\n\t"		\
	"movl %%edx, " sym "+20\n\t"		\
	"movl %%ecx, " sym "+24\n\t"		\
	"movl %%eax, " sym "+28\n\t"

static void
check_reg(const char *name, uint32_t before, uint32_t after, int *bad)
{
	if (before != after) {
		cprintf("faultnest: %s was %08x before the fault, %08x after\n",
			name, before, after);
		*bad = 1;
	}
}

void
umain(int argc, char **argv)
{
	int bad = 0;

	set_pgfault_handler(handler);

	asm volatile(
		"pushal\n\t"
		"pushfl\n\t"
		"movl $0x01010101, %%edi\n\t"
		"movl $0x02020202, %%esi\n\t"
		"movl $0x03030303, %%ebp\n\t"
		"movl $0x05050505, %%ebx\n\t"
		"movl $0x06060606, %%edx\n\t"
		"movl $0x07070707, %%ecx\n\t"
		"movl $0x08080808, %%eax\n\t"
		"pushl $" XSTR(TEST_FLAGS) "\n\t"
		"popfl\n\t"
		"pushfl\n\t"
		"popl fn_flags_before\n\t"
		SAVE_REGS("fn_before")
		/* The faulting access. */
		"movl $" XSTR(OUTER_VALUE) ", " XSTR(OUTER_VA + OUTER_WORD) "\n\t"
		"pushfl\n\t"
		"popl fn_flags_after\n\t"
		SAVE_REGS("fn_after")
		"popfl\n\t"
		"popal\n\t"
		::: "memory", "cc");

	check_reg("edi", fn_before.reg_edi, fn_after.reg_edi, &bad);
	check_reg("esi", fn_before.reg_esi, fn_after.reg_esi, &bad);
	check_reg("ebp", fn_before.reg_ebp, fn_after.reg_ebp, &bad);
	check_reg("esp", fn_before.reg_oesp, fn_after.reg_oesp, &bad);
	check_reg("ebx", fn_before.reg_ebx, fn_after.reg_ebx, &bad);
	check_reg("edx", fn_before.reg_edx, fn_after.reg_edx, &bad);
	check_reg("ecx", fn_before.reg_ecx, fn_after.reg_ecx, &bad);
	check_reg("eax", fn_before.reg_eax, fn_after.reg_eax, &bad);
	check_reg("eflags", fn_flags_before, fn_flags_after, &bad);
	if ((fn_flags_before & TEST_FLAGS) != TEST_FLAGS) {
		cprintf("faultnest: popfl set eflags %08x, wanted bits %08x\n",
			fn_flags_before, TEST_FLAGS);
		bad = 1;
	}
	if (fn_before.reg_eax != 0x08080808 || fn_before.reg_edi != 0x01010101) {
		cprintf("faultnest: register setup failed\n");
		bad = 1;
	}
	if (outer_faults != 1 || inner_faults != 1) {
		cprintf("faultnest: %d outer and %d nested faults, expected 1 and 1\n",
			outer_faults, inner_faults);
		bad = 1;
	}
	if (*(volatile uint32_t *) (OUTER_VA + OUTER_WORD) != OUTER_VALUE
	    || *(volatile uint32_t *) (INNER_VA + INNER_WORD) != INNER_VALUE) {
		cprintf("faultnest: page contents %08x %08x, expected %08x %08x\n",
			*(volatile uint32_t *) (OUTER_VA + OUTER_WORD),
			*(volatile uint32_t *) (INNER_VA + INNER_WORD),
			OUTER_VALUE, INNER_VALUE);
		bad = 1;
	}
	if (bad)
		panic("faultnest failed");

	cprintf("faultnest: ok\n");
}
