"""``chat-orchestrator chats ...`` and ``run --store``, as an operator types them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from chat_orchestrator.cli import main
from chat_orchestrator.state_managers.base import StateManager
from chat_orchestrator.stores import open_store, register_store
from tests.helpers import ROOT, DictSeedManager, run_python
from tests.servers import NxServer

SECRET = "s3cr3t-Pw"
ONBOARDING = "examples/onboarding.py:Onboarding"


def chats(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["chats", *args])
    out, err = capsys.readouterr()
    return code, out, err


def fill(url: str) -> StateManager:
    store = open_store(url)
    store.save(
        "alice", "got_name", {"name": None, "age": None, "age_retries": 0}, expected_version=0
    )
    store.save(
        "bob\tx", "confirm", {"name": "Bob", "age": 30, "age_retries": 1}, expected_version=0
    )
    return store


def test_list_show_set_and_reset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path}/chats.db"
    store = fill(url)
    code, out, _ = chats("list", "--store", url, capsys=capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "chat_id\tstate\tversion\tupdated"
    assert sorted(lines[1:]) == sorted(
        [
            f'"alice"\tgot_name\t1\t{lines[1].split()[-1]}',
            f'"bob\\tx"\tconfirm\t1\t{lines[2].split()[-1]}',
        ]
    )
    code, out, _ = chats("list", "--store", url, "--state", "confirm", "--json", capsys=capsys)
    assert [json.loads(line)["chat_id"] for line in out.splitlines()] == ["bob\tx"]
    code, out, _ = chats("list", "--store", url, "--idle-for", "1h", capsys=capsys)
    assert out.splitlines()[1:] == []
    code, out, err = chats("export", "--store", url, "--state", "confirm", capsys=capsys)
    assert [json.loads(line)["chat_id"] for line in out.splitlines()] == ["bob\tx"]
    assert err == "exported 1 chats\n"
    code, out, _ = chats("show", "--store", url, "bob\tx", capsys=capsys)
    assert json.loads(out)["context"] == {"name": "Bob", "age": 30, "age_retries": 1}
    code, _, err = chats("show", "--store", url, "nobody", capsys=capsys)
    assert code == 1
    assert "no record" in err

    # set: checked against the flow; nothing written when the state does not exist.
    code, _, err = chats(
        "set", "--store", url, "alice", "nowhere", "--flow", ONBOARDING, capsys=capsys
    )
    assert code == 1
    assert "no state 'nowhere'" in err
    assert store.get_state("alice") == ("got_name", {"name": None, "age": None, "age_retries": 0})
    code, out, _ = chats(
        "set", "--store", url, "alice", "done", "--flow", ONBOARDING, capsys=capsys
    )
    assert code == 0, out
    assert "version 2" in out
    record = store.load("alice")
    assert record is not None
    assert (record.state_id, record.version) == ("done", 2)
    # A stale version (what the operator saw before someone else changed it) is refused.
    code, _, err = chats(
        "set", "--store", url, "alice", "ask_name", "--expected-version", "1", capsys=capsys
    )
    assert code == 1
    assert "version 2" in err
    code, _, err = chats("reset", "--store", url, "alice", "--expected-version", "1", capsys=capsys)
    assert code == 1
    assert store.load("alice") is not None
    code, out, _ = chats("reset", "--store", url, "alice", capsys=capsys)
    assert (code, out) == (0, "chat 'alice' was reset\n")
    assert store.load("alice") is None


def test_export_and_import_move_chats_between_servers(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    redis_url: str,
    nx_server: NxServer,
) -> None:
    source = f"sqlite:///{tmp_path}/chats.db"
    fill(source)
    dump = tmp_path / "chats.jsonl"
    code, _, err = chats("export", "--store", source, "-o", str(dump), capsys=capsys)
    assert (code, err) == (0, "exported 2 chats\n")
    mongo = f"{nx_server.uri}/cli_{os.getpid()}"
    for target in (redis_url, mongo):
        code, out, _ = chats("import", "--store", target, str(dump), capsys=capsys)
        assert code == 0
        assert out.startswith("2 created, 0 updated, 0 unchanged")
        again = tmp_path / "again.jsonl"
        chats("export", "--store", target, "-o", str(again), capsys=capsys)
        contexts = {
            json.loads(line)["chat_id"]: line.split(',"context":', 1)[1]
            for line in again.read_text(encoding="utf-8").splitlines()
        }
        originals = {
            json.loads(line)["chat_id"]: line.split(',"context":', 1)[1]
            for line in dump.read_text(encoding="utf-8").splitlines()
        }
        assert contexts == originals  # byte for byte
    # A newer record in the target is kept unless --force.
    store = open_store(redis_url)
    record = store.load("alice")
    assert record is not None
    store.save("alice", "confirm", {"changed": True}, expected_version=record.version)
    code, out, err = chats("import", "--store", redis_url, str(dump), capsys=capsys)
    assert out.startswith("0 created, 0 updated, 1 unchanged, 1 skipped")
    assert "--force overwrites" in err
    assert store.get_state("alice") == ("confirm", {"changed": True})
    code, out, _ = chats("import", "--store", redis_url, str(dump), "--force", capsys=capsys)
    assert out.startswith("0 created, 1 updated")
    assert store.get_state("alice") == ("got_name", {"name": None, "age": None, "age_retries": 0})


def test_store_from_the_environment_and_command_line_mistakes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CHAT_STORE", raising=False)
    code, _, err = chats("list", capsys=capsys)
    assert code == 2
    assert "pass --store URL or set CHAT_STORE" in err
    code, _, err = chats(
        "list", "--store", f"redis://user:{SECRET}@127.0.0.1:notaport/0", capsys=capsys
    )
    assert code in {1, 2}
    assert SECRET not in err
    code, _, err = chats("list", "--store", "cassandra://db/x", capsys=capsys)
    assert code == 2
    assert "unknown scheme" in err
    url = f"sqlite:///{tmp_path}/env.db"
    fill(url)
    monkeypatch.setenv("CHAT_STORE", url)
    code, out, _ = chats("list", capsys=capsys)
    assert code == 0
    assert len(out.splitlines()) == 3
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{nope\n", encoding="utf-8")
    code, _, err = chats("import", str(bad), capsys=capsys)
    assert code == 1
    assert "line 1" in err


def test_a_seed_only_store_says_it_cannot_list_chats(capsys: pytest.CaptureFixture[str]) -> None:
    seed = DictSeedManager()
    seed.set_state("a", "s", {})
    register_store("seedonly", lambda url: seed, replace=True)
    for action in ("list", "export"):
        code, _, err = chats(action, "--store", "seedonly:", capsys=capsys)
        assert code == 1
        assert "cannot list chats" in err
        assert "Traceback" not in err
    code, out, _ = chats("show", "--store", "seedonly:", "a", capsys=capsys)
    assert code == 0
    assert json.loads(out)["state_id"] == "s"


def test_run_and_the_example_take_a_store_url(tmp_path: Path) -> None:
    exe = shutil.which("chat-orchestrator")
    assert exe is not None
    url = f"sqlite:///{tmp_path}/run.db"
    result = subprocess.run(
        [exe, "run", "examples/greeting_bot.py:orchestrator", "--store", url, "--chat-id", "u1"],
        input="Bob\nquit\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert open_store(url).get_state("u1") == ("start", {})
    # The example itself: CHAT_STORE, then --store on its command line.
    script = ROOT / "examples" / "greeting_bot.py"
    env_url = f"sqlite:///{tmp_path}/env.db"
    first = run_python(script, stdin="quit\n", env={"CHAT_STORE": env_url})
    assert first.returncode == 0, first.stderr
    assert open_store(env_url).get_state("console_user") == ("get_name", {})
    argv_url = f"sqlite:///{tmp_path}/argv.db"
    second = run_python(
        f"import runpy, sys; sys.argv = ['greeting_bot.py', '--store', {argv_url!r}]; "
        f"runpy.run_path({str(script)!r}, run_name='__main__')",
        stdin="quit\n",
        cwd=ROOT,
    )
    assert second.returncode == 0, second.stderr
    assert open_store(argv_url).get_state("console_user") == ("get_name", {})


def test_whatsapp_example_defaults_to_sqlite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from examples.whatsapp_bot import state_manager_from_env

    from chat_orchestrator.state_managers.sqlite import SQLiteStateManager

    for name in ("CHAT_STORE", "REDIS_URL", "CHAT_STATE_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CHAT_DB", str(tmp_path / "bot.db"))
    store = state_manager_from_env()
    assert isinstance(store, SQLiteStateManager)
    assert store.path == tmp_path / "bot.db"
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CHAT_DB")
    default = state_manager_from_env()
    assert isinstance(default, SQLiteStateManager)
    assert default.path == Path("chats.db")
    assert isinstance(state_manager_from_env(["--store", "memory:"]), type(open_store("memory:")))
