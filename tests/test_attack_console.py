"""Attacks on the console's resume files in ``state_dir/.console`` that once got through."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from chat_orchestrator.senders.console import ConsoleMessage, LastMessages

HI = [ConsoleMessage("hi", None)]


def _name(chat_id: str) -> str:
    return hashlib.sha256(chat_id.encode()).hexdigest() + ".json"


def test_a_symlinked_console_directory_is_never_written_through(tmp_path: Path) -> None:
    # Before: the resume file was written into the symlink's target, outside state_dir.
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / ".console").symlink_to(outside)
    with pytest.raises(NotADirectoryError):
        LastMessages(tmp_path / ".console").save("c", HI, 1)
    assert os.listdir(outside) == []
    assert LastMessages(tmp_path / ".console").load("c", 1) == []


def test_a_symlink_planted_at_the_temp_name_never_overwrites_its_target(tmp_path: Path) -> None:
    # Before: the temp name was predictable (".<sha>.json.<pid>.tmp") and opened following
    # symlinks, so whoever could write in state_dir made the console overwrite any file.
    directory = tmp_path / ".console"
    directory.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (directory / f".{_name('c')}.{os.getpid()}.tmp").symlink_to(victim)
    LastMessages(directory).save("c", HI, 1)
    assert victim.read_text() == "precious"
    assert LastMessages(directory).load("c", 1) == HI


def test_a_fifo_in_place_of_a_resume_file_does_not_hang_the_console(tmp_path: Path) -> None:
    directory = tmp_path / ".console"
    directory.mkdir()
    os.mkfifo(directory / _name("c"))
    found: list[list[ConsoleMessage]] = []
    reader = threading.Thread(target=lambda: found.append(LastMessages(directory).load("c", 1)))
    reader.daemon = True
    reader.start()
    reader.join(5)  # before: blocked in open() forever, waiting for a writer
    assert found == [[]]


def test_options_that_are_not_json_are_kept_as_text_and_leave_no_temp_file(
    tmp_path: Path,
) -> None:
    # Before: json.dumps raised TypeError, which the CLI does not catch (the turn was stored,
    # then `run` died with a traceback).
    kept = LastMessages(tmp_path / ".console")
    kept.save("c", [ConsoleMessage("pick", {"buttons": ["A"], "tag": {1}})], 2)
    (loaded,) = kept.load("c", 2)
    assert loaded.text == "pick"
    assert loaded.options == {"buttons": ["A"], "tag": "{1}"}
    assert [p.name for p in (tmp_path / ".console").iterdir()] == [_name("c")]


def test_a_symlinked_resume_file_is_not_read(tmp_path: Path) -> None:
    directory = tmp_path / ".console"
    directory.mkdir()
    LastMessages(tmp_path / "real").save("c", HI, 1)
    (directory / _name("c")).symlink_to(tmp_path / "real" / _name("c"))
    assert LastMessages(directory).load("c", 1) == []
