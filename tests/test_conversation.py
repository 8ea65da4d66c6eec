"""The class API from a user's side: the onboarding example, typed contexts, run-time checks."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest
from examples.onboarding import Onboarding, Signup
from pydantic import BaseModel, ConfigDict

from chat_orchestrator.conversation import Conversation, Turn, state
from chat_orchestrator.errors import ContextValidationError, StepError, TransitionError
from chat_orchestrator.state_managers.base import StateManager
from chat_orchestrator.testing import ConversationTester, RecordingSender
from tests.helpers import ROOT, run_python


def test_onboarding_example_in_the_console() -> None:
    result = run_python(
        ROOT / "examples" / "onboarding.py", stdin="Ada\nabc\n-3\n37\nmaybe\nyes\nhi\nquit\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("> ") == [
        "(type quit or press Ctrl-D to leave)\nHi! What's your name?\n",
        "Nice to meet you, Ada! How old are you?\n",
        "Please answer with a number (try 2).\n",
        "Please answer with a number (try 3).\n",
        "So you are Ada, 37 years old. Is that right? (yes/no)\n  1. Yes\n  2. No\n",
        "Please answer yes or no.\n",
        "All set, Ada. Welcome aboard!\n",
        "You're already signed up, Ada.\n",
        "",
    ]


def test_onboarding_with_the_tester_gives_typed_context() -> None:
    tester = ConversationTester(Onboarding)
    before_first_turn = tester.state
    assert before_first_turn is None
    assert tester.send(None) == ["Hi! What's your name?"]
    assert tester.send("  ") == ["Please tell me your name."]
    tester.send("Ada")
    assert tester.state == "got_age"
    tester.send("forty")
    tester.send("200")
    assert tester.context == Signup(name="Ada", age=None, age_retries=2)
    replies = tester.send_full("41")
    assert replies[0].options == {
        "buttons": [{"id": "yes", "title": "Yes"}, {"id": "no", "title": "No"}]
    }
    tester.send("no")
    assert (tester.state, tester.context) == ("got_name", Signup())
    tester.send("Bea")
    tester.send("7")
    assert tester.send("yes") == ["All set, Bea. Welcome aboard!"]
    assert tester.state == "done"
    context: Signup = tester.context
    assert (context.name, context.age) == ("Bea", 7)


def test_onboarding_runs_on_every_backend(manager: StateManager) -> None:
    tester = ConversationTester(Onboarding, state_manager=manager, chat_id="ünï😀")
    for text in [None, "Ada", "x", "30", "yes"]:
        tester.send(text)
    record = manager.load("ünï😀")
    assert record is not None
    assert record.state_id == "done"
    assert record.context == {"name": "Ada", "age": 30, "age_retries": 1}


class Counter(BaseModel):
    model_config = ConfigDict(validate_assignment=True)
    n: int = 0


class Loose(BaseModel):
    n: int = 0


class Other(BaseModel):
    n: int = 0


class Tricky(Conversation[Counter]):
    @state(initial=True)
    def start(self, turn: Turn[Counter]) -> Literal["start"]:
        turn.context.n += 1
        if turn.text == "jump":
            return "elsewhere"  # type: ignore[return-value]  # the run-time check's job
        if turn.text == "str-into-int":
            turn.context.n = "many"  # type: ignore[assignment]
        if turn.text == "wrong-model":
            turn.context = Other()  # type: ignore[assignment]
        if turn.text == "raise":
            raise LookupError("no such thing")
        if turn.text == "bad-other-model":
            Other.model_validate({"n": "x"})
        return "start"


def test_run_time_errors_store_nothing() -> None:
    tester = ConversationTester(Tricky)
    tester.send("ok")
    record = tester.state_manager.load(tester.chat_id)
    cases: list[tuple[str, type[Exception], str]] = [
        ("jump", TransitionError, "returned 'elsewhere', declared only \\[start\\]"),
        ("str-into-int", ContextValidationError, "made the context invalid"),
        ("wrong-model", ContextValidationError, "must be a Counter, got Other"),
        ("raise", StepError, "LookupError: no such thing"),
        ("bad-other-model", StepError, "ValidationError"),
    ]
    for text, error, message in cases:
        with pytest.raises(error, match=message) as raised:
            tester.send(text)
        assert raised.value.chat_id == tester.chat_id  # type: ignore[attr-defined]
        assert tester.state_manager.load(tester.chat_id) == record, text
    assert tester.context.n == 1


class LooseFlow(Conversation[Loose]):
    @state(initial=True)
    def start(self, turn: Turn[Loose]) -> Literal["start"]:
        turn.context.n = "not a number"  # type: ignore[assignment]
        return "start"


def test_invalid_context_without_validate_assignment_is_not_stored() -> None:
    tester = ConversationTester(LooseFlow)
    with pytest.raises(ContextValidationError, match="would not load back into Loose"):
        tester.send(None)
    assert tester.state is None


class V1(BaseModel):
    name: str = ""


class V2(BaseModel):
    name: str = ""
    locale: str = "en"


def _echo_flow(model: type[BaseModel]) -> type[Conversation[BaseModel]]:
    class Echo(Conversation[model]):  # type: ignore[valid-type]
        @state(initial=True, to=["start"])
        def start(self, turn: Turn[BaseModel]) -> str:
            turn.send(repr(turn.context))
            return "start"

    return Echo


def test_adding_a_field_with_a_default_keeps_old_records_loading() -> None:
    sender = RecordingSender()
    manager_tester = ConversationTester(_echo_flow(V1))
    manager_tester.send(None)
    manager = manager_tester.state_manager
    manager.set_state(manager_tester.chat_id, "start", {"name": "Ada"})
    new = _echo_flow(V2)(manager, sender)
    new.handle_message(manager_tester.chat_id, "hi")
    assert sender.texts() == ["V2(name='Ada', locale='en')"]


def test_a_stored_record_that_no_longer_fits_is_reported_and_kept() -> None:
    tester = ConversationTester(Onboarding)
    tester.state_manager.set_state(tester.chat_id, "got_age", {"name": ["not", "a", "str"]})
    before = tester.state_manager.load(tester.chat_id)
    with pytest.raises(ContextValidationError, match="does not fit Signup") as raised:
        tester.send("30")
    assert raised.value.chat_id == tester.chat_id
    assert tester.state_manager.load(tester.chat_id) == before


@pytest.mark.parametrize("text", ["", "x" * 100_000, "\x00\x07\x1b[2J\r\n\t", "😀" * 10])
def test_hostile_user_input_reaches_the_state_unchanged(text: str) -> None:
    seen: list[str | None] = []

    class Spy(Conversation[Counter]):
        @state(initial=True)
        def start(self, turn: Turn[Counter]) -> Literal["start"]:
            seen.append(turn.text)
            return "start"

    ConversationTester(Spy).send(text)
    assert seen == [text]


def test_no_statemachine_instance_is_built_per_message(monkeypatch: pytest.MonkeyPatch) -> None:
    import statemachine

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a python-statemachine instance was built during a turn")

    monkeypatch.setattr(statemachine.StateMachine, "__init__", refuse)
    monkeypatch.setattr(statemachine.StateChart, "__init__", refuse)
    tester = ConversationTester(Onboarding)
    for text in [None, "Ada", "30", "yes"]:
        tester.send(text)
    assert tester.state == "done"


MYPY_BAD = """
from typing import Literal
from pydantic import BaseModel
from chat_orchestrator.conversation import Conversation, Turn, state

class Ctx(BaseModel):
    n: int = 0

class Flow(Conversation[Ctx]):
    @state(initial=True)
    def start(self, turn: Turn[Ctx]) -> Literal["start", "end"]:
        if turn.text:
            return "somewhere_else"
        turn.context.n = "many"
        return "end"

    @state(final=True)
    def end(self, turn: Turn[Ctx]) -> Literal["end"]:
        return "end"
"""


@pytest.mark.parametrize("kind", ["def", "async def"])
def test_mypy_catches_an_undeclared_target_and_a_mistyped_context(
    tmp_path: Path, kind: str
) -> None:
    bad = tmp_path / "bad_flow.py"
    # The same checks hold for async states: mypy sees the Literal return of the coroutine.
    bad.write_text(MYPY_BAD.replace("    def start(", f"    {kind} start("))
    result = run_python(
        f"import sys; from mypy import api; out = api.run(['--strict', {str(bad)!r}]); "
        "print(out[0]); sys.exit(out[2])",
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert (
        "bad_flow.py:13: error: Incompatible return value type (got \"Literal['somewhere_else']\""
        in result.stdout
    )
    assert "bad_flow.py:14: error: Incompatible types in assignment" in result.stdout
    assert result.stdout.count("error:") == 2


class MaybeFloat(BaseModel):
    x: float | None = None


class NaNFlow(Conversation[MaybeFloat]):
    @state(initial=True)
    def start(self, turn: Turn[MaybeFloat]) -> Literal["start"]:
        turn.context.x = float("nan")  # pydantic's JSON writes NaN as null
        return "start"


def test_every_backend_stores_what_pydantic_encoded(manager: StateManager) -> None:
    tester = ConversationTester(NaNFlow, state_manager=manager)
    tester.send(None)
    assert manager.get_state(tester.chat_id) == ("start", {"x": None})
