"""FileStateManager on the async path: waiting without threads, cancellation, processes."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest

from chat_orchestrator.errors import LockTimeoutError
from chat_orchestrator.orchestrator import ChatOrchestrator
from chat_orchestrator.senders.base import AsyncMessageSender, MessageSender
from chat_orchestrator.state_managers.base import StateUpdate
from chat_orchestrator.state_managers.file import FileStateManager
from chat_orchestrator.testing import RecordingSender
from tests.helpers import counter_orchestrator, run_together

T = TypeVar("T")


def run_with_threads(workers: int, main: Callable[[], Awaitable[T]]) -> T:
    """Run ``main`` on a loop whose default executor has only ``workers`` threads."""

    async def wrapped() -> T:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(workers))
        return await main()

    return asyncio.run(wrapped())


def lock_is_free(manager: FileStateManager, chat_id: str) -> bool:
    """Try the chat's flock from a new open file description, as another process would."""
    path = manager.path_for(chat_id).with_suffix(".lock")
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return True  # a chat without a record keeps no lock file once released
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def gated_counter(manager: FileStateManager, gate: asyncio.Event) -> ChatOrchestrator:
    """Counts; the turn at n=0 waits for ``gate`` (it holds the chat meanwhile)."""
    bot = ChatOrchestrator(manager, RecordingSender())

    @bot.register_step("start")
    async def count(
        chat_id: str, text: str | None, context: dict[str, Any], sender: AsyncMessageSender
    ) -> tuple[str, dict[str, Any]]:
        if text == "hold":
            await gate.wait()
        return "start", {"n": context.get("n", 0) + 1}

    return bot


def test_tasks_waiting_for_a_busy_chat_leave_the_threads_to_its_holder(tmp_path: Path) -> None:
    # The old default ran the blocking begin_turn in a worker thread: the waiters took both
    # threads, the holder's commit found none, and the waiters timed out.
    manager = FileStateManager(tmp_path, fsync=False, lock_timeout=3)
    gate = asyncio.Event()
    bot = gated_counter(manager, gate)

    async def main() -> int:
        holder = asyncio.create_task(bot.handle_message_async("c", "hold"))
        await asyncio.sleep(0.05)
        waiters = [asyncio.create_task(bot.handle_message_async("c", "x")) for _ in range(8)]
        ticks = 0
        for _ in range(20):  # the loop keeps running while the waiters poll
            await asyncio.sleep(0.01)
            ticks += 1
        gate.set()
        await asyncio.gather(holder, *waiters)
        return ticks

    started = time.monotonic()
    assert run_with_threads(2, main) == 20
    assert time.monotonic() - started < 3  # nobody waited for a lock timeout
    record = manager.load("c")
    assert record is not None
    assert record.context == {"n": 9}


def test_a_turn_cancelled_mid_step_frees_the_chat_at_once_even_with_no_free_thread(
    tmp_path: Path,
) -> None:
    manager = FileStateManager(tmp_path, fsync=False)
    gate = asyncio.Event()
    bot = gated_counter(manager, gate)

    @bot.register_step("blocking")
    def blocking(
        chat_id: str, text: str | None, context: dict[str, Any], sender: MessageSender
    ) -> tuple[str, dict[str, Any]]:
        time.sleep(1.0)  # a sync step holding the only worker thread
        return "blocking", context

    async def main() -> None:
        await bot.handle_message_async("c", "x")  # n=1 stored
        before = manager.path_for("c").read_bytes()
        manager.set_state("busy", "blocking", {})
        busy = asyncio.create_task(bot.handle_message_async("busy", "x"))
        for name in ("c", "new-chat"):
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await bot.handle_message_async(name, "hold")
            assert lock_is_free(manager, name), f"{name} stayed locked after cancellation"
        assert not busy.done(), "the thread was free after all: the test proves nothing"
        assert manager.path_for("c").read_bytes() == before
        assert manager.load("new-chat") is None
        assert not manager.path_for("new-chat").with_suffix(".lock").exists()
        await busy

    run_with_threads(1, main)


def test_a_caller_cancelled_while_waiting_for_a_chat_leaks_no_lock(tmp_path: Path) -> None:
    # A lock is a bare descriptor here (nothing closes it when garbage collected): a try
    # that took it for a caller cancelled meanwhile must give it back.
    manager = FileStateManager(tmp_path, fsync=False)
    manager.set_state("c", "s", {"n": 1})
    lock_path = manager.path_for("c").with_suffix(".lock")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        fds = open_fds()
        for wait in [0.02] * 10 + [0.0] * 30:
            other = os.open(lock_path, os.O_RDWR)  # another process's turn holds the chat
            fcntl.flock(other, fcntl.LOCK_EX)
            task = asyncio.create_task(manager.begin_turn_async("c"))
            await asyncio.sleep(wait)  # 0: cancelled while its first try is queued or runs
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            os.close(other)
            # One thread runs calls in order: once this one returns, any try has returned
            # and a lock it took for nobody has been dropped.
            await loop.run_in_executor(None, lambda: None)
            await asyncio.sleep(0.01)
            await loop.run_in_executor(None, lambda: None)
            assert lock_is_free(manager, "c")
        assert open_fds() == fds
        async with await manager.begin_turn_async("c") as turn:
            assert turn.record is not None
            await turn.commit(StateUpdate("s", {"n": 2}, '{"n":2}'))
        assert manager.get_state("c") == ("s", {"n": 2})

    run_with_threads(1, main)


def test_a_caller_cancelled_during_its_commit_still_frees_the_chat(tmp_path: Path) -> None:
    manager = FileStateManager(tmp_path)  # fsync: the commit's call takes a while

    async def main() -> None:
        fds = open_fds()
        last = None
        for i in range(20):
            turn = await manager.begin_turn_async("c")
            commit = asyncio.create_task(turn.commit(StateUpdate("s", {"i": i}, f'{{"i":{i}}}')))
            await asyncio.sleep(0)
            commit.cancel()
            with pytest.raises(asyncio.CancelledError):
                await commit
            await turn.close()  # what the engine does; the running call owns the release
            async with asyncio.timeout(5):
                async with await manager.begin_turn_async("c") as next_turn:
                    got = None if next_turn.record is None else next_turn.record.context
            # Cancelled before a thread took it, the write never ran; else it completed.
            assert got in (last, {"i": i})
            last = got
        assert open_fds() == fds

    asyncio.run(main())


def test_an_async_turn_times_out_on_a_chat_held_by_another_process(tmp_path: Path) -> None:
    manager = FileStateManager(tmp_path, lock_timeout=0.3)
    manager.set_state("c", "s", {})
    fd = os.open(manager.path_for("c").with_suffix(".lock"), os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another open file description: another process's lock

    async def main() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        with pytest.raises(LockTimeoutError, match=r"'c' stayed locked for more than 0\.3 s"):
            await manager.begin_turn_async("c")
        with pytest.raises(LockTimeoutError):
            await manager.delete_state_async("c")
        task.cancel()
        return ticks

    try:
        assert run_with_threads(1, main) >= 30
    finally:
        os.close(fd)
    assert manager.get_state("c") == ("s", {})


def test_async_delete_claim_and_load_run_the_sync_paths_calls(tmp_path: Path) -> None:
    manager = FileStateManager(tmp_path, fsync=False)
    other = FileStateManager(tmp_path, fsync=False)  # a sync worker on the same directory

    async def main() -> None:
        assert await manager.claim_async("wa:1", 60) is True
        assert other.claim("wa:1", 60) is False
        await manager.release_claim_async("wa:1")
        assert other.claim("wa:1", 60) is True
        assert await manager.claim_async("wa:1", 60) is False
        other.set_state("c", "s", {"a": 1})
        record = await manager.load_async("c")
        assert record is not None
        assert (record.state_id, record.context, record.version) == ("s", {"a": 1}, 1)
        await manager.delete_state_async("c")
        assert other.load("c") is None
        assert list(tmp_path.glob("*.lock")) == []  # the delete removed the lock file too

    asyncio.run(main())


def test_thousand_chats_five_turns_sixty_four_at_a_time(tmp_path: Path) -> None:
    manager = FileStateManager(tmp_path, fsync=False)
    bot = counter_orchestrator(manager, RecordingSender())

    async def main() -> None:
        gate = asyncio.Semaphore(64)

        async def one(chat: str) -> None:
            async with gate:
                await bot.handle_message_async(chat, "x")

        await asyncio.gather(*(one(f"chat-{i}") for _ in range(5) for i in range(1000)))

    asyncio.run(main())
    wrong = [i for i in range(1000) if manager.get_state(f"chat-{i}") != ("start", {"n": 5})]
    assert wrong == []


MIXED_WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from chat_orchestrator.state_managers.file import FileStateManager
    from chat_orchestrator.testing import RecordingSender
    from tests.helpers import counter_orchestrator
    bot = counter_orchestrator(FileStateManager(state_dir=sys.argv[1]), RecordingSender())
    count = int(sys.argv[3])

    async def run_async() -> None:
        for _ in range(count):
            await bot.handle_message_async("shared", "tick")

    print("ready", flush=True)
    sys.stdin.readline()
    if sys.argv[2] == "async":
        asyncio.run(run_async())
    else:
        for _ in range(count):
            bot.handle_message("shared", "tick")
    """
)


@pytest.mark.slow
def test_sync_and_async_processes_on_one_chat_lose_no_update(tmp_path: Path) -> None:
    state_dir = tmp_path / "s"
    commands = [
        [sys.executable, "-c", MIXED_WORKER, str(state_dir), mode, "150"]
        for mode in ("sync", "async", "sync", "async")
    ]
    run_together(commands, timeout=240)
    record = FileStateManager(state_dir=state_dir).load("shared")
    assert record is not None
    assert (record.context, record.version) == ({"n": 600}, 600)
