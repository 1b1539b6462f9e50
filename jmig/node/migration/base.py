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
