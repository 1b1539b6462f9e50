/* Error codes.  System calls and library functions return them negated. */
#ifndef JOS_INC_ERROR_H
#define JOS_INC_ERROR_H

enum {
	E_UNSPECIFIED	= 1,	/* something went wrong; no better code */
	E_BAD_ENV	= 2,	/* no such env, or the caller may not touch it */
	E_INVAL		= 3,	/* an argument is out of range */
	E_NO_MEM	= 4,	/* no physical page (or page table) left */
	E_NO_FREE_ENV	= 5,	/* all NENV env slots are in use */
	E_FAULT		= 6,	/* bad memory reference */
	E_IPC_NOT_RECV	= 7,	/* target env is not blocked in ipc_recv */
	E_EOF		= 8,	/* input ended early */

	MAXERROR
};

#endif /* !JOS_INC_ERROR_H */
