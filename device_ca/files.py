"""The one way device-ca writes a file that others read: whole or not at all.

The bytes go to a temporary name of this process and thread in the same directory (opened with
O_NOFOLLOW, so a planted link is never followed), get their mode, and are renamed over the target;
a reader sees the old file or the new one, never a part. ``durable`` also fsyncs the file and the
directory, so the rename survives a crash (CRLs, CA files). ``try_lock`` is the one exclusive
lock between processes (janitor, batch runners).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from pathlib import Path
from typing import IO, Iterator

PRIVATE, PUBLIC = 0o600, 0o644


@contextlib.contextmanager
def atomic_writer(path: Path, mode: int = PRIVATE, durable: bool = False, text: bool = False) -> Iterator[IO]:
    """A file object whose content replaces ``path`` when the block ends without an error."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "w" if text else "wb", **({"newline": ""} if text else {})) as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, mode)                  # whatever the umask took away
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def write_atomically(path: Path, data: bytes, mode: int = PRIVATE, durable: bool = False) -> None:
    """``data`` under ``path`` whole or not at all (see the module doc)."""
    with atomic_writer(path, mode, durable) as f:
        f.write(data)


def publish(path: Path, data: bytes) -> None:
    """A file of public content kept in the state directory (CRL, CA certificates): durable, and
    like every file there readable by the CA's own user only (relying parties fetch them over
    HTTP: /ca/*.crt, /crl/issuing.crl)."""
    write_atomically(path, data, PRIVATE, durable=True)


STATE_DIR_MODE = 0o700
_SQLITE_FILES = ("device-ca.db", "device-ca.db-wal", "device-ca.db-shm", "device-ca.db-journal")


def secure_state_dir(home: Path) -> None:
    """The state directory exists with mode 0700, and everything this process creates from now on
    is readable by its user only, whatever the umask it was started with (the SQLite database, its
    WAL and SHM files, locks, batch outputs: pending CSRs, token digests and the audit log live
    there). A directory or database files left open by an older version are closed down too."""
    os.umask(0o077)
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True, mode=STATE_DIR_MODE)
    if home.stat().st_mode & 0o777 != STATE_DIR_MODE:
        os.chmod(home, STATE_DIR_MODE)
    for name in _SQLITE_FILES:
        with contextlib.suppress(FileNotFoundError):
            if (home / name).stat().st_mode & 0o077:
                os.chmod(home / name, PRIVATE)


def try_lock(path: Path) -> int | None:
    """A file descriptor holding an exclusive flock on ``path``, or None if another holder has it
    (another process, or another open of the file in this one). The kernel releases it when the
    holder exits, however it exits; ``unlock`` releases it before."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def unlock(fd: int) -> None:
    os.close(fd)                      # closing the one description releases its flock
