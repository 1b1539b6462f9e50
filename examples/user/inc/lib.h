/*
 * The JOS user library: everything a user program gets from
 * #include <inc/lib.h>.  A program defines umain(); lib/entry.S and
 * lib/libmain.c call it and exit when it returns.
 */
#ifndef JOS_INC_LIB_H
#define JOS_INC_LIB_H 1

#include <inc/types.h>
#include <inc/stdio.h>
#include <inc/stdarg.h>
#include <inc/string.h>
#include <inc/error.h>
#include <inc/assert.h>
#include <inc/env.h>
#include <inc/memlayout.h>
#include <inc/syscall.h>
#include <inc/trap.h>

#define USED(x)		(void)(x)

/* The program's entry point, called by libmain. */
void	umain(int argc, char **argv);

/* lib/libmain.c and lib/entry.S */
extern const char *binaryname;
extern const volatile struct Env *thisenv;
extern const volatile struct Env envs[NENV];
extern const volatile struct PageInfo pages[];

/* lib/exit.c */
void	exit(void) __attribute__((noreturn));

/* lib/pgfault.c */
void	set_pgfault_handler(void (*handler)(struct UTrapframe *utf));

/* lib/syscall.c */
void	sys_cputs(const char *string, size_t len);
int	sys_cgetc(void);
envid_t	sys_getenvid(void);
int	sys_env_destroy(envid_t env);
void	sys_yield(void);
int	sys_env_set_status(envid_t env, int status);
int	sys_env_set_pgfault_upcall(envid_t env, void *upcall);
int	sys_page_alloc(envid_t env, void *pg, int perm);
int	sys_page_map(envid_t src_env, void *src_pg,
		     envid_t dst_env, void *dst_pg, int perm);
int	sys_page_unmap(envid_t env, void *pg);
int	sys_ipc_try_send(envid_t to_env, uint32_t value, void *pg, int perm);
int	sys_ipc_recv(void *rcv_pg);
unsigned int sys_time_msec(void);
int	sys_sleep_msec(unsigned int msec);

/*
 * sys_exofork must be expanded inline: the child starts life returning
 * from this very int $0x30 with eax = 0 and the registers the parent had,
 * so it must not depend on a call frame the parent may since have reused.
 */
static inline envid_t __attribute__((always_inline))
sys_exofork(void)
{
	envid_t ret;
	asm volatile("int %2"
		     : "=a" (ret)
		     : "a" (SYS_exofork), "i" (T_SYSCALL)
		     : "cc", "memory");
	return ret;
}

/* lib/ipc.c */
void	ipc_send(envid_t to_env, uint32_t value, void *pg, int perm);
int32_t	ipc_recv(envid_t *from_env_store, void *pg, int *perm_store);
envid_t	ipc_find_env(enum EnvType type);

/* lib/fork.c */
envid_t	fork(void);
envid_t	sfork(void);	/* not implemented: panics */

/* lib/forkscan.c: fork() as students write it (scans every page) */
envid_t	forkscan(void);

#endif /* !JOS_INC_LIB_H */
