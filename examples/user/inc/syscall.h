/* System call numbers (eax for int $0x30). */
#ifndef JOS_INC_SYSCALL_H
#define JOS_INC_SYSCALL_H

enum {
	/* JOS lab 4: numbers 0-12. */
	SYS_cputs = 0,
	SYS_cgetc,
	SYS_getenvid,
	SYS_env_destroy,
	SYS_page_alloc,
	SYS_page_map,
	SYS_page_unmap,
	SYS_exofork,
	SYS_env_set_status,
	SYS_env_set_pgfault_upcall,
	SYS_yield,
	SYS_ipc_try_send,
	SYS_ipc_recv,

	/* jmig additions, at numbers JOS does not use. */
	SYS_time_msec = 32,
	SYS_sleep_msec = 33,

	NSYSCALLS
};

#endif /* !JOS_INC_SYSCALL_H */
