"""What every part of the migration engine shares: its error, the reasons
a node holds an env back, and the deadlines."""
from __future__ import annotations

import enum

from ...errors import Error

PROGRESS_TIMEOUT = 10.0     # a migration's send or receive that makes no progress this long fails
PREPARED_TIMEOUT = 5.0      # a destination holding a prepared env waits this long for the commit
COMMIT_TIMEOUT = 5.0        # a source waits this long for "committed" before it asks, then aborts
STATUS_TIMEOUT = 3.0        # one status question to another node
HANDOVER_TIMEOUT = 5.0      # a source waits this long for "started" after Go (informative only)
KEEPALIVE = (5, 2, 3)       # TCP keepalive on migration links: idle s, interval s, probes


def deadlines() -> dict:
    """The deadlines above, as `jmigctl info` shows them (docs/protocol.md)."""
    idle, interval, probes = KEEPALIVE
    return {"progress_s": PROGRESS_TIMEOUT, "prepared_s": PREPARED_TIMEOUT,
            "commit_s": COMMIT_TIMEOUT, "status_s": STATUS_TIMEOUT,
            "handover_s": HANDOVER_TIMEOUT,
            "keepalive": {"idle_s": idle, "interval_s": interval, "probes": probes}}


class MigrationError(Error):
    """A migration, save or load failed.  Codes: unreachable, refused,
    timeout, link-lost, cancelled, failed, bad-request, bad-state, and the
    codes a peer's refusal carries."""

    def __init__(self, code: str, message: str):
        super().__init__(message, code=code)


class Hold(enum.StrEnum):
    """Why the node keeps an env from running (the kernel's `frozen`; ps
    shows the value)."""
    INCOMING = "incoming"                  # being built by a migration or load; not in ps
    MIGRATING = "migrating"                # paused at the source while it moves
    ARRIVING = "arriving"                  # committed here, waiting for the source's go
    SERVING = "serving pages"              # a pgfault origin: the pages live here
    SAVING = "saving"


class SourceCopy:
    """The source's own copy of the env, for the methods that stop it here
    (normal, pgfault, pre-copy): what the hand-over and a roll back do with
    it.  The method has node, envid, keep and paused_here (it paused the
    env itself)."""
    give_up = False                 # GO decided: destroy ours once the destination is told
    forwards = True                 # GO: the env is the destination's (IPC follows it)

    def prepared(self, out) -> None:
        """The destination holds the env, verified (before the commit)."""

    def keep_or_give_up(self) -> None:
        """GO: --keep leaves ours paused and free; otherwise it stays frozen
        until released(), after the destination was told, so freeing its
        frames is not part of the downtime."""
        if self.keep:
            self.node.kernel.get_env(self.envid).frozen = ""
            self.node.log.info("migration kept source copy", envid=self.envid)
        else:
            self.give_up = True

    def released(self, out) -> None:
        """After the hand-over (whether or not the destination answered)."""
        if self.give_up:
            k = self.node.kernel
            k.env_destroy(k.get_env(self.envid), 0, f"migrated to {out.target}")
            self.node.dispatch_events()

    def give_back(self):
        """ABORT: the env is ours again, as it was before (resumed if this
        migration paused it).  Returns it, or None if it is gone."""
        node, k = self.node, self.node.kernel
        node.migrations.busy.pop(self.envid, None)
        e = k.live_env(self.envid)
        if e is None:
            return None
        e.frozen = ""
        if self.paused_here and e.paused:
            k.resume(self.envid)
            node.poke()
        return e
