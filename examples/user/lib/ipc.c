/* Inter-environment communication on top of sys_ipc_try_send/recv. */

#include <inc/lib.h>

/*
 * Wait for a message.  If pg is not NULL a page sent along is mapped
 * there (pg NULL asks for no page: UTOP).  The sender's envid and the
 * page's permissions (0 if none was mapped) are stored through the
 * non-NULL store pointers.  Returns the value sent, or < 0 on error
 * (then both stores get 0).
 */
int32_t
ipc_recv(envid_t *from_env_store, void *pg, int *perm_store)
{
	int r;

	if (pg == NULL)
		pg = (void *) UTOP;

	if ((r = sys_ipc_recv(pg)) < 0) {
		if (from_env_store != NULL)
			*from_env_store = 0;
		if (perm_store != NULL)
			*perm_store = 0;
		return r;
	}

	/* A process that moved to another node may live in another envs[]
	 * slot now: find our own slot again before reading the fields. */
	thisenv = &envs[ENVX(sys_getenvid())];
	if (from_env_store != NULL)
		*from_env_store = thisenv->env_ipc_from;
	if (perm_store != NULL)
		*perm_store = thisenv->env_ipc_perm;
	return thisenv->env_ipc_value;
}

/*
 * Send value (and the page at pg with perm, if pg is not NULL) to
 * to_env, retrying until it is receiving.  Any other error panics.
 */
void
ipc_send(envid_t to_env, uint32_t val, void *pg, int perm)
{
	int r;

	if (pg == NULL)
		pg = (void *) UTOP;

	while ((r = sys_ipc_try_send(to_env, val, pg, perm)) == -E_IPC_NOT_RECV)
		sys_yield();
	if (r < 0)
		panic("ipc_send: sending to %08x: %e", to_env, r);
}

/* The id of the first live env of the given type, or 0 if none. */
envid_t
ipc_find_env(enum EnvType type)
{
	for (int i = 0; i < NENV; i++)
		if (envs[i].env_status != ENV_FREE && envs[i].env_type == type)
			return envs[i].env_id;
	return 0;
}
