"""POSIX helpers of the file backend: private directories, no symlink ever followed.

Everything the backend opens inside ``state_dir`` is opened with ``O_NOFOLLOW``: whoever can
plant a symlink there must not make us truncate, create or lock a file somewhere else.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
from pathlib import Path

__all__ = [
    "NOFOLLOW",
    "STALE_TEMP_SECONDS",
    "exists",
    "make_private_dir",
    "read_all",
    "remove_if_old",
    "remove_orphan_lock",
    "same_file",
    "try_flock",
    "warn_if_exposed",
    "write_all",
]

logger = logging.getLogger(__name__)

#: Flags added to every open inside ``state_dir``.
NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC

#: A temp file this old belongs to a writer that died (a live one renames it within ms).
STALE_TEMP_SECONDS = 3600.0


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) if missing; the directory itself is 0700."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def warn_if_exposed(path: Path) -> None:
    """Log a warning when someone else could plant or replace files in ``path``.

    Only a warning: a shared directory may be deliberate (one service user, a group), and
    every open already refuses symlinks, but the operator should know records can be forged.
    """
    try:
        info = os.stat(path)
    except OSError:
        return  # the caller's own probe reports an unusable directory
    if info.st_uid != os.geteuid():
        logger.warning(
            "state_dir %s is owned by uid %d, not by this process (uid %d): its owner can "
            "read, forge or delete chat records",
            path,
            info.st_uid,
            os.geteuid(),
        )
    if info.st_mode & stat.S_IWOTH:
        logger.warning(
            "state_dir %s is writable by any user (mode %o): anyone can forge or delete chat "
            "records; use chmod 700",
            path,
            stat.S_IMODE(info.st_mode),
        )


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def same_file(fd: int, path: str | Path, dir_fd: int | None = None) -> bool:
    """True if ``path`` (not followed) still names the file open as ``fd``."""
    try:
        there = os.lstat(path, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    here = os.fstat(fd)
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def try_flock(fd: int, block: bool) -> bool:
    """Exclusive flock on ``fd``: True once held, False if busy and ``block`` is False.

    ``block=True`` waits in the kernel (the sync path without a lock timeout: the kernel
    wakes the waiter the moment the holder closes, which polling cannot match). Every other
    caller polls: its operation sleeps between tries, so no thread waits on another's lock.
    """
    if block:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def exists(path: str | Path, dir_fd: int | None = None) -> bool:
    """True if ``path`` names anything (a symlink included: it is not followed)."""
    try:
        os.lstat(path, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


def remove_if_old(name: str, dir_fd: int, cutoff: float) -> bool:
    """Unlink ``name`` (never followed) if it was last modified before ``cutoff``."""
    with contextlib.suppress(OSError):
        if os.lstat(name, dir_fd=dir_fd).st_mtime < cutoff:
            os.unlink(name, dir_fd=dir_fd)
            return True
    return False


def remove_orphan_lock(dir_fd: int, name: str) -> None:
    """Unlink lock file ``name`` if nobody holds it and its chat still has no record."""
    try:
        fd = os.open(name, os.O_RDWR | NOFOLLOW, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a planted symlink: unlinking it never touches its target
            logger.warning("removing symlink %s planted in state_dir", name)
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=dir_fd)
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # Holding the lock, no record can appear; the path must still be the file we locked.
        if same_file(fd, name, dir_fd) and not exists(f"{name[:-5]}.json", dir_fd):
            os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass  # busy (a live turn) or vanished: not an orphan
    finally:
        os.close(fd)
