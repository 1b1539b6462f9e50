"""The cluster secret: a file of random bytes that every node and jmigctl
of a cluster share.  Without --secret-file or JMIG_SECRET_FILE both use
DEFAULT_PATH, which the first node to start creates (mode 0600), so a local
cluster needs no set-up.  A secret file must be private to its owner
(mode 0600 or stricter); anything else is refused."""
from __future__ import annotations

import os
import secrets
from pathlib import Path

MAX_SECRET_FILE = 4096
MIN_SECRET_LEN = 16
ENV_VAR = "JMIG_SECRET_FILE"


class SecretError(Exception):
    pass


def default_path(environ=os.environ) -> Path:
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(environ.get("HOME", "/tmp"), ".config")
    return Path(base) / "jmig" / "secret"


def resolve_path(explicit: str | None, environ=os.environ) -> tuple[Path, bool]:
    """(path, explicit?): --secret-file, else $JMIG_SECRET_FILE, else the default."""
    if explicit:
        return Path(explicit), True
    if environ.get(ENV_VAR):
        return Path(environ[ENV_VAR]), True
    return default_path(environ), False


def read_secret(path: Path) -> bytes:
    """The secret in path.  Refuses a file that group or others may access,
    as ssh refuses such a private key."""
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if mode & 0o077:
                raise SecretError(f"secret file {path} has mode {mode & 0o777:04o}: group or "
                                  f"others can access it; run `chmod 600 {path}`")
            data = f.read(MAX_SECRET_FILE + 1)
    except FileNotFoundError:
        raise SecretError(f"secret file {path} does not exist") from None
    except OSError as exc:
        raise SecretError(f"cannot read secret file {path}: {exc.strerror}") from None
    if len(data) > MAX_SECRET_FILE:
        raise SecretError(f"secret file {path} is larger than {MAX_SECRET_FILE} bytes")
    data = data.strip()
    if len(data) < MIN_SECRET_LEN:
        raise SecretError(f"secret file {path} holds {len(data)} bytes; at least "
                          f"{MIN_SECRET_LEN} are needed")
    return data


def create(path: Path) -> bytes:
    """Write a new random secret to path (which must not exist), mode 0600;
    returns it.  Raises FileExistsError, or SecretError if it cannot."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise
    except OSError as exc:
        raise SecretError(f"cannot create secret file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    return read_secret(path)


def load_or_create(explicit: str | None, environ=os.environ) -> bytes:
    """The node's secret.  An explicitly named file must exist; the default
    one is created if absent."""
    path, is_explicit = resolve_path(explicit, environ)
    if is_explicit or path.exists():
        return read_secret(path)
    try:
        return create(path)
    except FileExistsError:
        return read_secret(path)
