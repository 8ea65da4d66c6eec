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
* Sync and async methods run the same operations (``chat_orchestrator._io``): each yields
  short blocking calls, made directly on the sync path and in worker threads on the async
  path (``_file_turns``). A busy chat is waited for by retrying a non-blocking ``flock``
  with back-off inside the operation, so waiting tasks never hold a thread; only the sync
  path without a ``lock_timeout`` waits in the kernel, as it always did.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from chat_orchestrator._io import Op, Sleep, run_async, run_sync
from chat_orchestrator._jsonctx import load_json
from chat_orchestrator.errors import (
    CorruptStateError,
    LockTimeoutError,
    StateManagerError,
    describe_chat_id,
)
from chat_orchestrator.state_managers._file_claims import ClaimMarkers
from chat_orchestrator.state_managers._file_io import (
    NOFOLLOW,
    STALE_TEMP_SECONDS,
    make_private_dir,
    read_all,
    remove_if_old,
    remove_orphan_lock,
    same_file,
    try_flock,
    warn_if_exposed,
    write_all,
)
from chat_orchestrator.state_managers._file_records import encode_record, parse_record
from chat_orchestrator.state_managers._file_turns import (
    AsyncFileTurn,
    FileTurn,
    Held,
    ThenRelease,
    in_thread,
)
from chat_orchestrator.state_managers._locks import check_lock_timeout
from chat_orchestrator.state_managers.base import (
    ChatInfo,
    RecordStateManager,
    StateRecord,
    StateUpdate,
    keep_chat,
    validate_chat_id,
    validate_claim_key,
    validate_claim_ttl,
    validate_write,
)

__all__ = ["FileStateManager"]

logger = logging.getLogger(__name__)
T = TypeVar("T")


def _call(command: Callable[[], Any]) -> Any:
    """The sync I/O layer: a command is a blocking call, made right here."""
    return command()


class FileStateManager(RecordStateManager):
    """Stores each chat as ``<state_dir>/<sha256 of id>.json``.

    ``fsync=False`` trades durability on power loss for speed (atomicity is kept).
    ``lock_timeout=None`` (default) waits for a busy chat as long as it takes; the kernel
    releases the lock of a process that dies. The ``..._async`` methods never block the
    event loop: file calls run in worker threads, and a busy chat is retried every 0.5 to
    20 ms (backing off) with no thread held while it waits.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str] = "chat_states",
        *,
        fsync: bool = True,
        lock_timeout: float | None = None,
    ) -> None:
        if type(fsync) is not bool:  # "no" would be truthy: fsync on when asked off
            raise TypeError(f"fsync must be True or False, not {fsync!r}")
        self.state_dir = Path(state_dir)
        self._fsync = fsync
        self._lock_timeout = check_lock_timeout(lock_timeout)  # NaN waited forever
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
        self._run(self._locked_op(chat_id, True, partial(self._overwrite, chat_id, state_id, text)))

    def delete_state(self, chat_id: str) -> None:
        # Releasing the lock of a chat without a record also removes its lock file.
        validate_chat_id(chat_id)
        self._run(self._locked_op(chat_id, True, partial(self._unlink_record, chat_id)))

    # -- versioned records ------------------------------------------------------------------
    def load(self, chat_id: str) -> StateRecord | None:
        return self._read(validate_chat_id(chat_id))

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
        return self._write_checked(chat_id, expected_version, state_id, text)

    @contextlib.contextmanager
    def lock(self, chat_id: str) -> Iterator[None]:
        held = self._run(self._lock_op(validate_chat_id(chat_id), block=True, read=False))
        try:
            yield
        finally:
            held.release()

    def begin_turn(self, chat_id: str) -> FileTurn:
        held = self._run(self._lock_op(validate_chat_id(chat_id), block=True, read=True))
        return FileTurn(self, chat_id, held)

    # -- once-only markers -----------------------------------------------------------------
    def claim(self, key: str, ttl: float) -> bool:
        """A marker file per key in ``state_dir/claims``, linked complete or not at all."""
        return self._markers.claim(validate_claim_key(key), validate_claim_ttl(ttl))

    def release_claim(self, key: str) -> None:
        """Forget ``key``'s marker (no error if there is none): the next claim wins."""
        self._markers.release(validate_claim_key(key))

    # -- the async path: the same operations and calls, run in worker threads -----------------
    async def begin_turn_async(self, chat_id: str) -> AsyncFileTurn:
        held = await self._run_async(
            self._lock_op(validate_chat_id(chat_id), block=False, read=True)
        )
        return AsyncFileTurn(self, chat_id, held)

    async def load_async(self, chat_id: str) -> StateRecord | None:
        return await in_thread(partial(self._read, validate_chat_id(chat_id)))

    async def delete_state_async(self, chat_id: str) -> None:
        validate_chat_id(chat_id)
        await self._run_async(
            self._locked_op(chat_id, False, partial(self._unlink_record, chat_id))
        )

    async def claim_async(self, key: str, ttl: float) -> bool:
        # The claims directory's flock is held only around a check and a link (never across a
        # wait for a turn), so a thread waiting on it waits microseconds.
        key, ttl = validate_claim_key(key), validate_claim_ttl(ttl)
        return await in_thread(partial(self._markers.claim, key, ttl))

    async def release_claim_async(self, key: str) -> None:
        await in_thread(partial(self._markers.release, validate_claim_key(key)))

    # -- operations: the decisions, once; ``block`` says whether the caller may wait in a call --
    def _run(self, op: Op[T]) -> T:
        return run_sync(op, _call)

    async def _run_async(self, op: Op[T]) -> T:
        return await run_async(op, in_thread)

    def _lock_op(self, chat_id: str, *, block: bool, read: bool) -> Op[Held]:
        """Take the chat's flock (and, with ``read``, load its record under it)."""
        stem = self._stem(chat_id)
        timeout = self._lock_timeout
        # Only a sync caller with no timeout to honour waits inside the call (in the kernel).
        try_lock = partial(
            self._try_lock,
            chat_id,
            self.state_dir / f"{stem}.lock",
            self.state_dir / f"{stem}.json",
            block and timeout is None,
            read,
        )
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.0005
        while True:
            held: Held | None = yield try_lock
            if held is not None:
                return held
            if deadline is not None and time.monotonic() >= deadline:
                raise LockTimeoutError(
                    f"chat {describe_chat_id(chat_id)} stayed locked for more than {timeout} s"
                )
            yield Sleep(pause)
            pause = min(pause * 2, 0.02)

    def _locked_op(self, chat_id: str, block: bool, action: Callable[[], T]) -> Op[T]:
        """Run ``action`` under the chat's flock; the call that runs it also releases it."""
        held = yield from self._lock_op(chat_id, block=block, read=False)
        return (yield from self._handed_over(held, action))

    def _commit_op(
        self, held: Held, chat_id: str, record: StateRecord | None, update: StateUpdate
    ) -> Op[int]:
        """A turn's conditional write; it releases the turn's flock in the same call."""
        try:
            text = validate_write(chat_id, update.state_id, update.context, update.context_json)
        except BaseException:
            held.release()
            raise
        expected = 0 if record is None else record.version
        write = partial(self._write_checked, chat_id, expected, update.state_id, text)
        return (yield from self._handed_over(held, write))

    @staticmethod
    def _handed_over(held: Held, action: Callable[[], T]) -> Op[T]:
        try:
            return (yield ThenRelease(held, action))  # type: ignore[no-any-return]
        except Exception:
            # The call may never have run (no thread left to run it): release is idempotent.
            # A cancellation (not an Exception) leaves the release to the running call.
            held.release()
            raise

    # -- the blocking calls -----------------------------------------------------------------
    def _try_lock(
        self, chat_id: str, lock_path: Path, record_path: Path, block: bool, read: bool
    ) -> Held | None:
        """One try at the chat's flock (``None``: busy), reading the record once it is held."""
        while True:
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | NOFOLLOW, 0o600)
            except OSError as exc:
                reason = "it is a symlink" if exc.errno == errno.ELOOP else exc.strerror
                raise StateManagerError(
                    f"cannot open the lock of chat {describe_chat_id(chat_id)}: {reason}"
                ) from exc
            try:
                locked = try_flock(fd, block)
                # The holder we waited for may have unlinked this file (its chat had no
                # record): then our lock guards nothing and we lock the path's new file.
                if locked and same_file(fd, lock_path):
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
            if not locked:
                return None
        held = Held(fd, lock_path, record_path, None)
        if read:
            try:
                held.record = self._read(chat_id, record_path)
            except BaseException:
                held.release()
                raise
        return held

    def _read(self, chat_id: str, path: Path | None = None) -> StateRecord | None:
        path = self.path_for(chat_id) if path is None else path
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
        return parse_record(chat_id, path, raw)

    def _write_checked(self, chat_id: str, expected: int, state_id: str, text: str) -> int:
        # The flock is held, but a writer that ignores it (a person editing files, an old
        # process) could have replaced the file: re-read the version instead of trusting it.
        current = self._read(chat_id)
        self._check_version(chat_id, 0 if current is None else current.version, expected)
        self._write(chat_id, state_id, text, expected + 1)
        return expected + 1

    def _overwrite(self, chat_id: str, state_id: str, text: str) -> None:
        current = self._read(chat_id)
        self._write(chat_id, state_id, text, 1 if current is None else current.version + 1)

    def _unlink_record(self, chat_id: str) -> None:
        try:
            with contextlib.suppress(FileNotFoundError):
                self.path_for(chat_id).unlink()
        except OSError as exc:
            raise StateManagerError(
                f"cannot delete the record of chat {describe_chat_id(chat_id)}: {exc.strerror}"
            ) from exc
        self._sync_dir(chat_id)

    # -- writing ----------------------------------------------------------------------------
    def _write(self, chat_id: str, state_id: str, context_text: str, version: int) -> None:
        body = encode_record(chat_id, state_id, version, context_text)
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
                    remove_orphan_lock(dir_fd, name)
        finally:
            os.close(dir_fd)

    # -- operator tools ----------------------------------------------------------------------
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
        record = parse_record(chat_id, path, raw)
        return ChatInfo(chat_id, record.state_id, record.version, mtime)

    def chat_info(self, chat_id: str) -> ChatInfo | None:
        path = self.path_for(chat_id)
        got = _read_with_mtime(path, f"the record of chat {describe_chat_id(chat_id)}")
        if got is None:
            return None
        record = parse_record(chat_id, path, got[0])
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
