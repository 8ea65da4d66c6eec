"""Once-only markers of the file backend: one file per key in ``<state_dir>/claims``.

* A marker holds its own deadline and appears complete or not at all: it is written to a temp
  file and hard-linked to its name (``link`` fails if the name exists, like ``O_EXCL``). So a
  full disk or a crash never leaves an empty marker that would make a message a permanent
  duplicate.
* Replacing an expired marker (check, unlink, link) runs under an exclusive ``flock`` on the
  claims directory, so of many re-claimers exactly one wins. Creating a missing marker needs
  no lock: ``link`` is atomic, and a re-claimer whose ``link`` then fails has simply lost.
* Expired markers are swept when the manager opens and then at most every
  :data:`SWEEP_SECONDS` on a claim, under the same lock, so the directory holds only live keys.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import time
from pathlib import Path

from chat_orchestrator.errors import StateManagerError, describe_chat_id
from chat_orchestrator.state_managers._file_io import (
    NOFOLLOW,
    STALE_TEMP_SECONDS,
    make_private_dir,
    read_all,
    remove_if_old,
    write_all,
)

__all__ = ["SWEEP_SECONDS", "ClaimMarkers"]

logger = logging.getLogger(__name__)

#: Seconds between two sweeps of expired markers triggered by claims.
SWEEP_SECONDS = 600.0

# A marker that cannot be parsed was not written by this module (which links only complete
# files): an old version's empty marker, or damage. Older than this, it counts as expired.
_UNREADABLE_GRACE_SECONDS = STALE_TEMP_SECONDS

_HEX_DIGITS = frozenset("0123456789abcdef")


class ClaimMarkers:
    """The markers in one directory; safe across threads and processes."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._next_sweep = time.monotonic() + SWEEP_SECONDS
        try:
            make_private_dir(directory)
        except OSError as exc:
            raise StateManagerError(
                f"cannot create the claims directory {str(directory)!r}: {exc.strerror}"
            ) from exc
        self.sweep()

    def claim(self, key: str, ttl: float) -> bool:
        name = hashlib.sha256(key.encode("utf-8")).hexdigest()
        dir_fd = self._open_dir(key)
        try:
            won = self._claim_in(dir_fd, name, key, time.time() + ttl)
        finally:
            os.close(dir_fd)  # also drops the directory's flock, if taken
        if time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + SWEEP_SECONDS
            try:
                self.sweep()
            except StateManagerError as exc:  # the claim itself is decided; retry next time
                logger.warning("sweeping expired claim markers failed: %s", exc)
        return won

    def release(self, key: str) -> None:
        name = hashlib.sha256(key.encode("utf-8")).hexdigest()
        dir_fd = self._open_dir(key)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dir_fd)
        except OSError as exc:
            raise StateManagerError(
                f"cannot release key {describe_chat_id(key)}: {exc.strerror}"
            ) from exc
        finally:
            os.close(dir_fd)

    def sweep(self) -> int:
        """Remove expired markers and dead claimers' temp files; returns how many went."""
        dir_fd = self._open_dir(None)
        removed = 0
        try:
            fcntl.flock(dir_fd, fcntl.LOCK_EX)  # no re-claimer between our check and unlink
            now = time.time()
            with os.scandir(dir_fd) as entries:
                names = [entry.name for entry in entries]
            for name in names:
                if name.startswith("."):
                    removed += remove_if_old(name, dir_fd, now - STALE_TEMP_SECONDS)
                    continue
                if not _is_marker_name(name):
                    continue  # not ours: never delete what we did not write
                with contextlib.suppress(OSError):
                    if _expired(dir_fd, name, now):
                        os.unlink(name, dir_fd=dir_fd)
                        removed += 1
        except OSError as exc:
            raise StateManagerError(
                f"cannot sweep the claims directory {str(self.directory)!r}: {exc.strerror}"
            ) from exc
        finally:
            os.close(dir_fd)
        if removed:
            logger.info("removed %d expired claim markers from %s", removed, self.directory)
        return removed

    # -- internals --------------------------------------------------------------------------
    def _open_dir(self, key: str | None) -> int:
        flags = os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW
        try:
            try:
                return os.open(self.directory, flags)
            except FileNotFoundError:  # removed by hand while we run: recreate it
                make_private_dir(self.directory)
                return os.open(self.directory, flags)
        except OSError as exc:
            what = "" if key is None else f" for key {describe_chat_id(key)}"
            # O_NOFOLLOW | O_DIRECTORY answers ENOTDIR for a symlink, even to a directory.
            bad = exc.errno in (errno.ELOOP, errno.ENOTDIR)
            reason = "it is a symlink or not a directory" if bad else exc.strerror
            raise StateManagerError(
                f"cannot open the claims directory {str(self.directory)!r}{what}: {reason}"
            ) from exc

    def _claim_in(self, dir_fd: int, name: str, key: str, deadline: float) -> bool:
        tmp = f".{name}.{os.getpid()}.{time.monotonic_ns()}.tmp"
        try:
            try:
                fd = os.open(
                    tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o600, dir_fd=dir_fd
                )
                try:
                    write_all(fd, repr(deadline).encode())
                finally:
                    os.close(fd)
            except OSError:
                # A full disk still knows its duplicates: a live marker needs no new file.
                if not _expired(dir_fd, name, time.time()):
                    with contextlib.suppress(OSError):
                        os.unlink(tmp, dir_fd=dir_fd)
                    return False
                raise
            try:
                if _link(dir_fd, tmp, name):
                    return True
                # Taken. Replace it only if expired, and only one re-claimer at a time.
                fcntl.flock(dir_fd, fcntl.LOCK_EX)
                if not _expired(dir_fd, name, time.time()):
                    return False
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=dir_fd)
                logger.debug("claim marker %s expired; re-claiming key", name)
                return _link(dir_fd, tmp, name)  # False: a new claimer linked it first
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dir_fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise StateManagerError(
                f"cannot record key {describe_chat_id(key)}: {exc.strerror}"
            ) from exc


def _is_marker_name(name: str) -> bool:
    return len(name) == 64 and set(name) <= _HEX_DIGITS


def _link(dir_fd: int, tmp: str, name: str) -> bool:
    try:
        os.link(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    except FileExistsError:
        return False
    return True


def _expired(dir_fd: int, name: str, now: float) -> bool:
    try:
        fd = os.open(name, os.O_RDONLY | NOFOLLOW, dir_fd=dir_fd)
    except FileNotFoundError:
        return True
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        # A symlink is never a marker of ours: removing it (not its target) is safe.
        logger.warning("removing symlink %s planted among the claim markers", name)
        return True
    try:
        raw = read_all(fd)
        try:
            return float(raw) < now
        except ValueError:
            return os.fstat(fd).st_mtime < now - _UNREADABLE_GRACE_SECONDS
    finally:
        os.close(fd)
