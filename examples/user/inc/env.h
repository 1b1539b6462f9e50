/* User environments (processes) as the kernel exposes them at UENVS. */
#ifndef JOS_INC_ENV_H
#define JOS_INC_ENV_H

#include <inc/types.h>
#include <inc/trap.h>
#include <inc/memlayout.h>

/*
 * envid_t layout: bits 0-9 are the slot index in envs[] (ENVX), bits
 * 12-30 are a generation number that changes whenever the slot is
 * reused, and the sign bit is clear (negative values are errors).
 * envid 0 names the calling environment in system calls.
 */
#define LOG2NENV		10
#define NENV			(1 << LOG2NENV)
#define ENVX(envid)		((envid) & (NENV - 1))
#define ENVGENSHIFT		12	/* >= LOG2NENV */

/* env_status values. */
enum {
	ENV_FREE = 0,
	ENV_DYING,
	ENV_RUNNABLE,
	ENV_RUNNING,
	ENV_NOT_RUNNABLE
};

/* env_type values. */
enum EnvType {
	ENV_TYPE_USER = 0,
};

struct Env {
	struct Trapframe env_tf;	/* saved registers */
	struct Env *env_link;		/* next free Env */
	envid_t env_id;			/* unique environment identifier */
	envid_t env_parent_id;		/* env_id of this env's parent */
	enum EnvType env_type;		/* special system environments */
	unsigned env_status;		/* ENV_* status */
	uint32_t env_runs;		/* number of times scheduled */
	int env_cpunum;			/* CPU it runs (or last ran) on */

	/* Address space */
	pde_t *env_pgdir;		/* kernel virtual address of page dir */

	/* Exception handling */
	void *env_pgfault_upcall;	/* page fault upcall entry point */

	/* IPC */
	bool env_ipc_recving;		/* blocked in sys_ipc_recv */
	void *env_ipc_dstva;		/* where to map a received page */
	uint32_t env_ipc_value;		/* value sent to us */
	envid_t env_ipc_from;		/* envid of the sender */
	int env_ipc_perm;		/* perm of the received page, 0 if none */
};

_Static_assert(sizeof(struct Env) == 124, "struct Env is 124 (0x7c) bytes");
_Static_assert(offsetof(struct Env, env_tf) == 0, "Env.tf at 0");
_Static_assert(offsetof(struct Env, env_link) == 68, "Env.link at 68");
_Static_assert(offsetof(struct Env, env_id) == 72, "Env.env_id at 72");
_Static_assert(offsetof(struct Env, env_parent_id) == 76, "Env.parent_id at 76");
_Static_assert(offsetof(struct Env, env_type) == 80, "Env.type at 80");
_Static_assert(offsetof(struct Env, env_status) == 84, "Env.status at 84");
_Static_assert(offsetof(struct Env, env_runs) == 88, "Env.runs at 88");
_Static_assert(offsetof(struct Env, env_cpunum) == 92, "Env.cpunum at 92");
_Static_assert(offsetof(struct Env, env_pgdir) == 96, "Env.pgdir at 96");
_Static_assert(offsetof(struct Env, env_pgfault_upcall) == 100, "Env.pgfault_upcall at 100");
_Static_assert(offsetof(struct Env, env_ipc_recving) == 104, "Env.ipc_recving at 104");
_Static_assert(sizeof(((struct Env *) 0)->env_ipc_recving) == 1, "Env.ipc_recving is 1 byte");
_Static_assert(offsetof(struct Env, env_ipc_dstva) == 108, "Env.ipc_dstva at 108");
_Static_assert(offsetof(struct Env, env_ipc_value) == 112, "Env.ipc_value at 112");
_Static_assert(offsetof(struct Env, env_ipc_from) == 116, "Env.ipc_from at 116");
_Static_assert(offsetof(struct Env, env_ipc_perm) == 120, "Env.ipc_perm at 120");
_Static_assert(NENV * sizeof(struct Env) <= PTSIZE, "envs[] fits below UPAGES");

#endif /* !JOS_INC_ENV_H */
