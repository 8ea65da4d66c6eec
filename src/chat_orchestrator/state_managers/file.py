"""One JSON file per chat in a directory, safe across threads, processes and crashes (POSIX).

* File names are the SHA-256 of the chat id, so no id can name a path outside ``state_dir``,
  two ids never share a file (case, unicode normalisation and ``CON`` included), and the file
  keeps the id itself to prove it.
* Each turn holds an exclusive ``flock`` on the chat's ``.lock`` file; the kernel drops it if
  the process dies, so a crash cannot leave a chat locked.
* Writes go to a temp file that is fsynced, renamed over the record and followed by an fsync
  of the directory: a reader sees the old record or the new one, never a torn file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from chat_orchestrator._jsonctx import checked_context, load_json
from chat_orchestrator.errors import (
    CorruptStateError,
    LockTimeoutError,
    StateManagerError,
    describe_chat_id,
)
from chat_orchestrator.state_managers.base import (
    RecordStateManager,
    StateRecord,
    validate_chat_id,
    validate_claim_key,
    validate_write,
)

__all__ = ["FileStateManager"]

_FORMAT = 1
_STALE_TEMP_SECONDS = 3600.0


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
            self.state_dir.mkdir(parents=True, exist_ok=True)
            probe = self.state_dir / f".probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise StateManagerError(
                f"state_dir {str(self.state_dir)!r} is not a writable directory: {exc.strerror}"
            ) from exc
        self._remove_stale_temp_files()

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
        with self.lock(chat_id):
            with contextlib.suppress(FileNotFoundError):
                self.path_for(chat_id).unlink()
            self._sync_dir()

    # -- versioned records ------------------------------------------------------------------
    def load(self, chat_id: str) -> StateRecord | None:
        path = self.path_for(chat_id)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateManagerError(
                f"cannot read the record of chat {describe_chat_id(chat_id)}: {exc.strerror}"
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
        lock_path = self.state_dir / f"{self._stem(chat_id)}.lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StateManagerError(
                f"cannot open the lock of chat {describe_chat_id(chat_id)}: {exc.strerror}"
            ) from exc
        try:
            self._flock(fd, chat_id)
            yield
        finally:
            os.close(fd)  # closing the only descriptor releases the flock

    def _flock(self, fd: int, chat_id: str) -> None:
        if self._lock_timeout is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return
        deadline = time.monotonic() + self._lock_timeout
        pause = 0.0005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockTimeoutError(
                        f"chat {describe_chat_id(chat_id)} stayed locked for more than "
                        f"{self._lock_timeout} s"
                    ) from None
                time.sleep(pause)
                pause = min(pause * 2, 0.02)

    # -- once-only markers -----------------------------------------------------------------
    def claim(self, key: str, ttl: float) -> bool:
        """A marker file per key in ``state_dir/claims``, created with O_EXCL (atomic)."""
        path = self._marker_path(key)
        path.parent.mkdir(exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                if not _claim_expired(path):
                    return False
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()  # expired: whoever re-creates it first claims the key again
                continue
            except OSError as exc:
                raise StateManagerError(f"cannot record key {key!r}: {exc.strerror}") from exc
            try:
                os.write(fd, repr(time.time() + ttl).encode())  # the marker's own deadline
            finally:
                os.close(fd)
            return True
        return False

    def release_claim(self, key: str) -> None:
        """Remove the key's marker so the key can be claimed again."""
        path = self._marker_path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StateManagerError(f"cannot release key {key!r}: {exc.strerror}") from exc

    def _marker_path(self, key: str) -> Path:
        digest = hashlib.sha256(validate_claim_key(key).encode("utf-8")).hexdigest()
        return self.state_dir / "claims" / digest

    # -- writing ----------------------------------------------------------------------------
    def _write(self, chat_id: str, state_id: str, context_text: str, version: int) -> None:
        body = (
            f'{{"format":{_FORMAT},"chat_id":{json.dumps(chat_id)},'
            f'"state_id":{json.dumps(state_id)},"version":{version},"context":{context_text}}}'
        ).encode()
        stem = self._stem(chat_id)
        tmp = self.state_dir / f".{stem}.{os.getpid()}.{time.monotonic_ns()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(body)
                while view:
                    view = view[os.write(fd, view) :]
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
        self._sync_dir()

    def _sync_dir(self) -> None:
        # The rename is durable only once the directory entry is on disk.
        if not self._fsync:
            return
        fd = os.open(self.state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _remove_stale_temp_files(self) -> None:
        # A writer killed between creating and renaming its temp file leaves it behind. Only
        # old ones are removed: a young one may belong to a live writer in another process.
        cutoff = time.time() - _STALE_TEMP_SECONDS
        for tmp in self.state_dir.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()


def _claim_expired(path: Path) -> bool:
    try:
        deadline = float(path.read_bytes())
    except FileNotFoundError:
        return True
    except (OSError, ValueError):
        return False  # being written by its creator right now: still live
    return deadline < time.time()


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
