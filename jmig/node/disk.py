"""A node's disk: its data directory, holding uploaded programs and images.

    DATA_DIR/programs/NAME          ELF files (spawnable by NAME)
    DATA_DIR/images/NAME.img        process images (save/load)

Names are 1-64 characters of letters, digits, '.', '_' and '-', not
starting with '.'.  Writes are atomic: a temporary file in the same
directory, fsync, rename, fsync of the directory.  Every file is written
mode 0600 (owner only): an image holds a process's memory, which may hold
its secrets.  Temporary names are hidden (a leading '.', never listed)
and unique, so that two writes of the same name at once never share one.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from ..errors import Error

NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$")
MAX_PROGRAM = 16 << 20
IMAGE_SUFFIX = ".img"


class DiskError(Error):
    def __init__(self, code: str, message: str):
        super().__init__(message, code=code)


def check_name(name: str, what: str = "name") -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise DiskError("bad-name", f"bad {what} {name!r}: use 1-64 letters, digits, '.', '_' "
                        "or '-', not starting with '.'")
    return name


class DataDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.programs = self.root / "programs"
        self.images = self.root / "images"

    def prepare(self) -> None:
        """Create the directories; raises OSError if that is impossible."""
        for d in (self.root, self.programs, self.images):
            d.mkdir(parents=True, exist_ok=True)
        probe = self.root / ".jmig-write-test"
        probe.write_bytes(b"")
        probe.unlink()

    # -- programs ------------------------------------------------------------------
    def program_path(self, name: str) -> Path:
        return self.programs / check_name(name, "program name")

    def read_program(self, name: str) -> bytes | None:
        p = self.program_path(name)
        if not p.is_file():
            return None
        size = p.stat().st_size
        if size > MAX_PROGRAM:
            raise DiskError("too-large", f"program {name} is {size} bytes; the limit is {MAX_PROGRAM}")
        with open(p, "rb") as f:
            return f.read(MAX_PROGRAM + 1)

    def write_program(self, name: str, data: bytes) -> None:
        atomic_write(self.program_path(name), [data])

    def list_programs(self) -> list[dict]:
        return _listing(self.programs, "")

    # -- images --------------------------------------------------------------------
    def image_path(self, name: str) -> Path:
        return self.images / (check_name(name, "image name") + IMAGE_SUFFIX)

    def list_images(self) -> list[dict]:
        return _listing(self.images, IMAGE_SUFFIX)


def _listing(d: Path, suffix: str) -> list[dict]:
    out = []
    try:
        entries = sorted(d.iterdir())
    except OSError:
        return out
    for p in entries:
        if not p.is_file() or not p.name.endswith(suffix) or p.name.startswith("."):
            continue
        st = p.stat()
        out.append({"name": p.name[:len(p.name) - len(suffix)] if suffix else p.name,
                    "size": st.st_size, "mtime": st.st_mtime})
    return out


def hidden_file(path: Path, tag: str) -> tuple[int, Path]:
    """(fd open for writing, its path): a new file of mode 0600 beside
    path, hidden (".NAME.XXXXXXXX.tag") and of a name no other write has."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".{tag}", dir=path.parent)
    return fd, Path(tmp)


def atomic_write(path: Path, chunks) -> int:
    """Write chunks to path atomically (all or nothing); returns bytes written."""
    fd, tmp = hidden_file(path, "tmp")
    n = 0
    try:
        with open(fd, "wb") as f:
            for c in chunks:
                f.write(c)
                n += len(c)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    fsync_dir(path.parent)
    return n


def fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
