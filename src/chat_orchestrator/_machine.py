"""Definition-time checks and diagrams, through python-statemachine (its only importer).

A flow (class API or decorator API) is described as a :class:`FlowSpec`. :func:`check_flow`
finds *every* problem at once: python-statemachine's own checks stop at the first one, so each
check here runs on its own over python-statemachine ``State`` graphs using its graph helpers,
and when the structure is sound the real ``StateMachine`` class is built as a last check.
Nothing here runs per message: the engine uses the precomputed target sets.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

from statemachine import State, StateMachine
from statemachine.exceptions import InvalidDefinition
from statemachine.factory import StateMachineMetaclass
from statemachine.graph import disconnected_states, states_without_path_to_final_states
from statemachine.transition_list import TransitionList

__all__ = [
    "UNDECLARED_NOTE",
    "FlowSpec",
    "StateSpec",
    "check_flow",
    "compile_machine",
    "mermaid",
]


@dataclass(frozen=True, slots=True)
class StateSpec:
    #: Declared next states; None means undeclared (decorator API): may go anywhere.
    targets: frozenset[str] | None
    initial: bool = False
    final: bool = False


@dataclass(frozen=True, slots=True)
class FlowSpec:
    name: str
    states: dict[str, StateSpec]


def _initials(spec: FlowSpec) -> list[str]:
    return [name for name, state in spec.states.items() if state.initial]


def _structural_problems(spec: FlowSpec, not_states: frozenset[str]) -> list[str]:
    problems: list[str] = []
    initials = _initials(spec)
    if not initials:
        problems.append("no initial state: mark exactly one state initial")
    elif len(initials) > 1:
        problems.append(f"more than one initial state: {initials}")
    for name, state in spec.states.items():
        unknown = sorted((state.targets or frozenset()) - spec.states.keys())
        if unknown:
            hints = [_hint(target, spec.states.keys(), not_states) for target in unknown]
            shown = "; ".join(hint for hint in hints if hint)
            problems.append(
                f"state {name!r} declares unknown target(s) {unknown}"
                + (f" ({shown})" if shown else "")
            )
        if state.final and state.targets and state.targets - {name}:
            others = sorted(state.targets - {name})
            problems.append(
                f"final state {name!r} declares transitions to {others}; a final state can "
                "only stay where it is (drop final=True to let it move on)"
            )
    return problems


def _hint(target: str, states: Iterable[str], not_states: frozenset[str]) -> str:
    """Why ``target`` is unknown, in words: a method without @state, or the likely typo."""
    if target in not_states:
        return f"{target!r} is a method without @state"
    close = difflib.get_close_matches(target, list(states), n=1)
    return f"did you mean {close[0]!r}?" if close else ""


def _graph(
    spec: FlowSpec, *, undeclared_anywhere: bool = True
) -> tuple[dict[str, State], dict[str, TransitionList]]:
    """python-statemachine States wired with the declared transitions, and those transitions.

    For checks, an undeclared step may go to any state; a diagram draws declared edges only.
    A final state's stay-in-place is implicit: python-statemachine forbids transitions out of
    final states.
    """
    states = {
        name: State(name=name, value=name, initial=s.initial, final=s.final)
        for name, s in spec.states.items()
    }
    events: dict[str, TransitionList] = {}
    for i, (name, state_spec) in enumerate(spec.states.items()):
        if state_spec.final:
            continue
        if state_spec.targets is not None:
            targets: Iterable[str] = state_spec.targets
        else:
            targets = spec.states.keys() if undeclared_anywhere else ()
        for j, target in enumerate(sorted(targets)):
            if target in states:
                events[f"go_{i}_{j}"] = states[name].to(states[target])
    return states, events


def check_flow(spec: FlowSpec, *, not_states: Iterable[str] = ()) -> list[str]:
    """Every problem with ``spec``, each naming the offending state ids; [] if it is sound.

    ``not_states`` names attributes of the flow that are not states (methods without
    ``@state``), so a target naming one can say so. The graph checks run on the well-formed
    part of the flow even when there are structural problems: unknown targets are left out,
    and a state declaring one is not blamed again as a trap (its intent is unknown).
    """
    if not spec.states:
        return ["no states: decorate at least one method with @state"]
    problems = _structural_problems(spec, frozenset(not_states))
    structural = bool(problems)
    states, _ = _graph(spec)
    has_unknown = {
        name for name, s in spec.states.items() if (s.targets or frozenset()) - spec.states.keys()
    }
    initials = _initials(spec)
    if len(initials) == 1:  # reachability needs the one start
        initial = states[initials[0]]
        unreachable = sorted(s.value for s in disconnected_states(initial, set(states.values())))
        if unreachable:
            problems.append(f"unreachable state(s) from {initial.value!r}: {unreachable}")
    traps = sorted(
        s.value
        for s in states.values()
        if not s.final and not s.transitions and s.value not in has_unknown
    )
    if traps:
        problems.append(f"non-final state(s) with no way out: {traps} (declare a target)")
    if any(s.final for s in states.values()):
        stuck = sorted(s.value for s in states_without_path_to_final_states(states.values()))
        stuck = [name for name in stuck if name not in traps and name not in has_unknown]
        if stuck:
            problems.append(f"state(s) with no path to a final state: {stuck}")
    if not problems and not structural:
        try:
            compile_machine(spec)
        except InvalidDefinition as exc:  # anything python-statemachine finds that we did not
            problems.append(str(exc))
    return problems


def compile_machine(spec: FlowSpec, *, declared_only: bool = False) -> type[StateMachine]:
    """The python-statemachine class of a sound flow (for diagrams and tooling).

    ``declared_only`` draws only declared edges (decorator steps without ``to=`` have none),
    and then skips the graph checks that such a partial picture would fail.
    """
    states, events = _graph(spec, undeclared_anywhere=not declared_only)
    attrs: dict[str, Any] = {f"state_{i}": state for i, state in enumerate(states.values())}
    attrs.update(events)
    if declared_only:
        attrs.update(
            validate_trap_states=False,
            validate_final_reachability=False,
            validate_disconnected_states=False,
        )
    # StateMachine, not StateChart: errors in callbacks raise, unknown events are refused.
    machine = StateMachineMetaclass(_identifier(spec.name), (StateMachine,), attrs)
    return cast("type[StateMachine]", machine)


_SAFE_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _identifier(name: str) -> str:
    cleaned = re.sub(r"\W", "_", name)
    return cleaned if cleaned and not cleaned[0].isdigit() else f"Flow_{cleaned}"


_LABEL_BREAKS = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")


def _aliases(names: list[str]) -> dict[str, str]:
    """Each state's Mermaid id: its name when that is a safe id, else ``s<i>``, never the
    name of another state (a state "a b" drawn as s0 beside a state named s0 merged them)."""
    taken = {name for name in names if _SAFE_ID.match(name)}
    alias: dict[str, str] = {}
    for i, name in enumerate(names):
        if name in taken:
            alias[name] = name
            continue
        candidate = f"s{i}"
        while candidate in taken:
            candidate = f"_{candidate}"
        taken.add(candidate)
        alias[name] = candidate
    return alias


def mermaid(spec: FlowSpec) -> str:
    """A Mermaid ``stateDiagram-v2`` of the flow, read off its python-statemachine class."""
    machine = compile_machine(spec, declared_only=True)
    names = [state.value for state in machine.states]
    alias = _aliases(names)
    lines = ["stateDiagram-v2"]
    for name in names:
        if alias[name] != name:
            # A line break would end the label and start a Mermaid statement of its own.
            label = _LABEL_BREAKS.sub(" ", name.replace('"', "'"))
            lines.append(f'    state "{label}" as {alias[name]}')
    for state in machine.states:
        if state.initial:
            lines.append(f"    [*] --> {alias[state.value]}")
    for state in machine.states:
        for transition in state.transitions:
            lines.append(f"    {alias[state.value]} --> {alias[transition.target.value]}")
        if state.final:
            lines.append(f"    {alias[state.value]} --> [*]")
    # A decorator step without to= has no edges to draw; a note keeps it on the diagram and
    # says why it has no arrows (it may go to any state).
    for name in names:
        if spec.states[name].targets is None and not spec.states[name].final:
            lines.append(f"    note right of {alias[name]} : {UNDECLARED_NOTE}")
    return "\n".join(lines) + "\n"


#: The note drawn on a state whose step declared no targets.
UNDECLARED_NOTE = "no to= declared: may go to any state"
