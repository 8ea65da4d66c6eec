"""One JSON file per chat in a directory, safe across threads, processes and crashes (POSIX).

* File names are the SHA-256 of the chat id, so no id can name a path outside ``state_dir``,
  two ids never share a file (case, unicode normalisation and ``CON`` included), and the file
  keeps the id itself to prove it.
* Each turn holds an exclusive ``flock`` on the chat's ``.lock`` file; the kernel drops it if
  the process dies, so a crash cannot leave a chat locked. A lock file lives only while its
  chat has a record: whoever releases the lock of a chat without one (deleted, or a first turn
  that failed) unlinks it while still holding it, and whoever acquires a lock checks that the
  path still names the file it locked (else it retries on the new file). Orphans of a crash
  are removed when a manager opens the directory.
* Nothing inside ``state_dir`` is opened through a symlink (``O_NOFOLLOW``); ``state_dir`` is
  created 0700 and a warning is logged if another user owns it or anyone may write to it.
* Writes go to a temp file that is fsynced, renamed over the record and followed by an fsync
  of the directory: a reader sees the old record or the new one, never a torn file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from chat_orchestrator._jsonctx import checked_context, load_json
from chat_orchestrator.errors import (
    CorruptStateError,
    StateManagerError,
    describe_chat_id,
)
from chat_orchestrator.state_managers._file_claims import ClaimMarkers
from chat_orchestrator.state_managers._file_io import (
    NOFOLLOW,
    STALE_TEMP_SECONDS,
    flock_until,
    make_private_dir,
    read_all,
    remove_if_old,
    same_file,
    warn_if_exposed,
    write_all,
)
from chat_orchestrator.state_managers.base import (
    ChatInfo,
    RecordStateManager,
    StateRecord,
    keep_chat,
    validate_chat_id,
    validate_claim_key,
    validate_claim_ttl,
    validate_write,
)

__all__ = ["FileStateManager"]

logger = logging.getLogger(__name__)

_FORMAT = 1


class FileStateManager(RecordStateManager):
    """Stores each chat as ``<state_dir>/<sha256 of id>.json``.

    ``fsync=False`` trades durability on power loss for speed (atomicity is kept).
    ``lock_timeout=None`` (default) waits for a busy chat as long as it takes; the kernel
    releases the lock of a process that dies.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str] = "chat_states",
        *,
        fsync: bool = True,
        lock_timeout: float | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self._fsync = fsync
        self._lock_timeout = lock_timeout
        try:
            make_private_dir(self.state_dir)
            # A fresh random name with O_EXCL: nothing planted in advance can be opened.
            probe = self.state_dir / f".probe-{secrets.token_hex(8)}"
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o600))
            probe.unlink()
        except OSError as exc:
            raise StateManagerError(
                f"state_dir {str(self.state_dir)!r} is not a writable directory: {exc.strerror}"
            ) from exc
        warn_if_exposed(self.state_dir)
        self._markers = ClaimMarkers(self.state_dir / "claims")
        try:
            self._sweep()
        except OSError as exc:
            raise StateManagerError(
                f"cannot list state_dir {str(self.state_dir)!r}: {exc.strerror}"
            ) from exc

    def __repr__(self) -> str:
        return f"FileStateManager(state_dir={str(self.state_dir)!r})"

    # -- paths ------------------------------------------------------------------------------
    def _stem(self, chat_id: str) -> str:
        # Every public path to a file goes through here: validating the id here refuses
        # non-str ids and lone surrogates before any file is opened.
        return hashlib.sha256(validate_chat_id(chat_id).encode("utf-8")).hexdigest()

    def path_for(self, chat_id: str) -> Path:
        """The record file of ``chat_id`` (it may not exist)."""
        return self.state_dir / f"{self._stem(chat_id)}.json"

    # -- seed methods -----------------------------------------------------------------------
    def set_state(self, chat_id: str, state_id: str, context: dict[str, Any]) -> None:
        text = validate_write(chat_id, state_id, context)
        with self.lock(chat_id):
            current = self.load(chat_id)
            self._write(chat_id, state_id, text, 1 if current is None else current.version + 1)

    def delete_state(self, chat_id: str) -> None:
        # Releasing the lock of a chat without a record also removes its lock file.
        with self.lock(chat_id):
            self._unlink_record(chat_id)

    # -- versioned records ------------------------------------------------------------------
    def load(self, chat_id: str) -> StateRecord | None:
        path = self.path_for(chat_id)
        try:
            fd = os.open(path, os.O_RDONLY | NOFOLLOW)
            try:
                raw = read_all(fd)
            finally:
                os.close(fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            reason = "it is a symlink" if exc.errno == errno.ELOOP else exc.strerror
            raise StateManagerError(
                f"cannot read the record of chat {describe_chat_id(chat_id)}: {reason}"
            ) from exc
        return _parse(chat_id, path, raw)

    def compare_and_set(
        self,
        chat_id: str,
        state_id: str,
        context: dict[str, Any],
        *,
        expected_version: int,
        encoded: str | None = None,
    ) -> int:
        text = validate_write(chat_id, state_id, context, encoded)
        # The flock is held, but a writer that ignores it (a person editing files, an old
        # process) could have replaced the file: re-read the version instead of trusting it.
        current = self.load(chat_id)
        self._check_version(chat_id, 0 if current is None else current.version, expected_version)
        self._write(chat_id, state_id, text, expected_version + 1)
        return expected_version + 1

    @contextlib.contextmanager
    def lock(self, chat_id: str) -> Iterator[None]:
        stem = self._stem(chat_id)
        lock_path = self.state_dir / f"{stem}.lock"
        fd = self._acquire(lock_path, chat_id)
        try:
            yield
        finally:
            try:
                if not _exists(self.state_dir / f"{stem}.json"):
                    with contextlib.suppress(OSError):  # we hold it: nobody else can swap it
                        os.unlink(lock_path)
            finally:
                os.close(fd)  # closing the only descriptor releases the flock

    def _acquire(self, lock_path: Path, chat_id: str) -> int:
        timeout = self._lock_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | NOFOLLOW, 0o600)
            except OSError as exc:
                reason = "it is a symlink" if exc.errno == errno.ELOOP else exc.strerror
                raise StateManagerError(
                    f"cannot open the lock of chat {describe_chat_id(chat_id)}: {reason}"
                ) from exc
            try:
                flock_until(fd, deadline, f"chat {describe_chat_id(chat_id)}", timeout)
                # The holder we waited for may have unlinked this file (its chat had no
                # record): then our lock guards nothing and we lock the path's new file.
                if same_file(fd, lock_path):
                    return fd
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)

    # -- once-only markers -----------------------------------------------------------------
    def claim(self, key: str, ttl: float) -> bool:
        """A marker file per key in ``state_dir/claims``, linked complete or not at all."""
        return self._markers.claim(validate_claim_key(key), validate_claim_ttl(ttl))

    def release_claim(self, key: str) -> None:
        """Forget ``key``'s marker (no error if there is none): the next claim wins."""
        self._markers.release(validate_claim_key(key))

    # -- writing ----------------------------------------------------------------------------
    def _write(self, chat_id: str, state_id: str, context_text: str, version: int) -> None:
        body = (
            f'{{"format":{_FORMAT},"chat_id":{json.dumps(chat_id)},'
            f'"state_id":{json.dumps(state_id)},"version":{version},"context":{context_text}}}'
        ).encode()
        stem = self._stem(chat_id)
        tmp = self.state_dir / f".{stem}.{os.getpid()}.{time.monotonic_ns()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o600)
            try:
                write_all(fd, body)
                if self._fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.state_dir / f"{stem}.json")
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise StateManagerError(
                f"cannot write the record of chat {describe_chat_id(chat_id)}: {exc.strerror}"
            ) from exc
        self._sync_dir(chat_id)

    def _sync_dir(self, chat_id: str) -> None:
        # The rename is durable only once the directory entry is on disk.
        if not self._fsync:
            return
        try:
            fd = os.open(self.state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StateManagerError(
                f"cannot make the change to chat {describe_chat_id(chat_id)} durable: "
                f"{exc.strerror}"
            ) from exc

    def _sweep(self) -> None:
        # What dead processes leave behind. A writer killed between creating and renaming its
        # temp file leaves it: only old ones go, a young one may be a live writer's. A process
        # killed while holding the lock of a chat without a record leaves that lock file.
        dir_fd = os.open(self.state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            with os.scandir(dir_fd) as entries:
                names = {entry.name for entry in entries}
            cutoff = time.time() - STALE_TEMP_SECONDS
            for name in names:
                if name.endswith(".tmp") and name.startswith("."):
                    remove_if_old(name, dir_fd, cutoff)
                elif name.endswith(".lock") and f"{name[:-5]}.json" not in names:
                    _remove_orphan_lock(dir_fd, name)
        finally:
            os.close(dir_fd)

    # -- operator tools ----------------------------------------------------------------------
    def _unlink_record(self, chat_id: str) -> None:
        # The caller holds the chat's lock.
        try:
            with contextlib.suppress(FileNotFoundError):
                self.path_for(chat_id).unlink()
        except OSError as exc:
            raise StateManagerError(
                f"cannot delete the record of chat {describe_chat_id(chat_id)}: {exc.strerror}"
            ) from exc
        self._sync_dir(chat_id)

    def delete_if(self, chat_id: str, *, expected_version: int) -> None:
        with self.lock(chat_id):  # delete_state takes the lock itself: flock is not reentrant
            current = self.load(chat_id)
            found = 0 if current is None else current.version
            self._check_version(chat_id, found, expected_version)
            if current is not None:
                self._unlink_record(chat_id)

    def _scan_chats(self, state: str | None, cutoff: float | None) -> Iterator[ChatInfo]:
        # os.scandir streams the directory; a record's last update is its file's mtime (the
        # rename of a write gives the new file a fresh one).
        try:
            entries = os.scandir(self.state_dir)
        except OSError as exc:
            raise StateManagerError(
                f"cannot list state_dir {str(self.state_dir)!r}: {exc.strerror}"
            ) from exc
        with entries:
            for entry in entries:
                name = entry.name
                if len(name) != 69 or not name.endswith(".json") or name.startswith("."):
                    continue
                info = self._read_info(entry)
                if info is not None and keep_chat(info, state, cutoff):
                    yield info

    def _read_info(self, entry: os.DirEntry[str]) -> ChatInfo | None:
        path = Path(entry.path)
        got = _read_with_mtime(path, f"{path.name} in state_dir")
        if got is None:
            return None  # deleted while we listed
        raw, mtime = got
        try:
            chat_id = load_json(raw).get("chat_id")
        except (ValueError, AttributeError) as exc:
            raise CorruptStateError(f"{path.name} in state_dir is not a chat record") from exc
        if not isinstance(chat_id, str) or self._stem(chat_id) != path.name[:-5]:
            raise CorruptStateError(f"{path.name} in state_dir does not hold its own chat's record")
        record = _parse(chat_id, path, raw)
        return ChatInfo(chat_id, record.state_id, record.version, mtime)

    def chat_info(self, chat_id: str) -> ChatInfo | None:
        path = self.path_for(chat_id)
        got = _read_with_mtime(path, f"the record of chat {describe_chat_id(chat_id)}")
        if got is None:
            return None
        record = _parse(chat_id, path, got[0])
        return ChatInfo(chat_id, record.state_id, record.version, got[1])


def _read_with_mtime(path: Path, what: str) -> tuple[bytes, float] | None:
    """The file's bytes and mtime, both from one open file (never a symlink), or None."""
    try:
        fd = os.open(path, os.O_RDONLY | NOFOLLOW)
        try:
            return read_all(fd), os.fstat(fd).st_mtime
        finally:
            os.close(fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        reason = "it is a symlink" if exc.errno == errno.ELOOP else exc.strerror
        raise StateManagerError(f"cannot read {what}: {reason}") from exc


def _remove_orphan_lock(dir_fd: int, name: str) -> None:
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
        if same_file(fd, name, dir_fd) and not _exists(f"{name[:-5]}.json", dir_fd):
            os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass  # busy (a live turn) or vanished: not an orphan
    finally:
        os.close(fd)


def _exists(path: str | Path, dir_fd: int | None = None) -> bool:
    try:
        os.lstat(path, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


def _parse(chat_id: str, path: Path, raw: bytes) -> StateRecord:
    who = f"chat {describe_chat_id(chat_id)}"
    try:
        data = load_json(raw)  # strict: NaN and over-deep nesting are ValueErrors here
    except ValueError as exc:
        raise CorruptStateError(
            f"the record of {who} ({path.name}) is not valid JSON: {exc}"
        ) from exc
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise CorruptStateError(f"the record of {who} ({path.name}) is not a format-1 record")
    state_id, version, context = data.get("state_id"), data.get("version"), data.get("context")
    if data.get("chat_id") != chat_id:
        raise CorruptStateError(f"{path.name} holds another chat's record, not {who}")
    if (
        not isinstance(state_id, str)
        or type(version) is not int
        or version < 1
        or not isinstance(context, dict)
    ):
        raise CorruptStateError(f"the record of {who} ({path.name}) has missing or bad fields")
    try:
        checked_context(context, raw, outer=1)  # the record's own braces are not the context's
    except ValueError as exc:
        raise CorruptStateError(f"the record of {who} ({path.name}) cannot be read: {exc}") from exc
    return StateRecord(state_id, context, version)
