"""Context schema versions and migrations of the class API, and the state rename check.

Design (issue 11, "Flows that change after deployment"):

* **Where the version lives.** Inside the stored context JSON, under the reserved key
  :data:`VERSION_KEY`. Every backend already stores that JSON as it is given, so no backend
  changes its schema. The key is stripped before the model validates the context (the model
  never sees it) and written after the model is dumped. A record without the key is version 1,
  and a flow still at version 1 never writes it: flows that declare no version store exactly
  what they stored before.
* **What a migration is.** A plain function per step, ``migrations = {1: v1_to_v2, ...}``,
  from the raw JSON dict of version N to the dict of version N+1. Pydantic's own hooks (a
  ``model_validator(mode="before")``) were considered and not chosen: they run on *every*
  validation (the turn validates twice), cannot see a version the model is not allowed to
  see, mix "what the data was" with "what the data must be" in one model, and would have to
  keep every old field alive on the current model. A dict-to-dict step works on records the
  current model can no longer parse (removed, renamed or retyped fields), is pure and testable
  on its own, and steps compose: a version 1 record under version 4 runs 1->2, 2->3, 3->4.
* **Failure.** A migration that raises, returns something other than a dict, or whose result
  does not validate is a :class:`ContextValidationError` naming the chat; nothing is written.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError

from chat_orchestrator.errors import ContextSerializationError, ContextValidationError

__all__ = ["VERSION_KEY", "Migration", "Schema", "check_aliases"]

logger = logging.getLogger(__name__)

#: The reserved context key holding the record's schema version (absent: version 1).
VERSION_KEY = "__schema_version__"

#: One step: the raw stored context dict of version N -> the dict of version N+1.
Migration: TypeAlias = Callable[[dict[str, Any]], dict[str, Any]]


class Schema:
    """A conversation's context model with its version and migrations: load and dump."""

    __slots__ = ("migrations", "model", "version")

    def __init__(
        self, model: type[BaseModel], version: int, migrations: Mapping[int, Migration]
    ) -> None:
        self.model = model
        self.version = version
        self.migrations = dict(migrations)

    @staticmethod
    def check(model: type[BaseModel] | None, version: object, migrations: object) -> list[str]:
        """The definition problems of ``schema_version`` and ``migrations`` (class creation)."""
        problems: list[str] = []
        if type(version) is not int or version < 1:
            problems.append(f"schema_version must be an int >= 1, got {version!r}")
            return problems
        if not isinstance(migrations, Mapping):
            problems.append(
                "migrations must be a mapping {version: function}, got "
                f"{type(migrations).__name__}"
            )
            return problems
        needed = set(range(1, version))
        for key, function in migrations.items():
            if type(key) is not int or key not in needed:
                problems.append(
                    f"migrations has key {key!r}: with schema_version {version} the steps are "
                    f"{sorted(needed) or 'none'} (key N migrates version N to N+1)"
                )
            elif not callable(function):
                problems.append(f"migrations[{key}] is not callable: {function!r}")
        missing = sorted(needed - set(migrations))
        if missing:
            problems.append(
                f"schema_version is {version} but migrations lacks the steps from version(s) "
                f"{missing}: an old record could not be brought up to date"
            )
        if model is not None:
            for name, field in model.model_fields.items():
                if VERSION_KEY in (name, field.alias, field.validation_alias):
                    problems.append(
                        f"context field {name!r} uses the reserved key {VERSION_KEY!r} "
                        "(it holds the record's schema version)"
                    )
        return problems

    def stored_version(self, data: Mapping[str, Any], chat_id: str, state_id: str) -> int:
        """The schema version of a stored context dict (no key: version 1)."""
        found = data.get(VERSION_KEY, 1)
        if type(found) is not int or found < 1:
            raise ContextValidationError(
                f"the stored schema version {found!r} is not an int >= 1",
                chat_id=chat_id,
                state_id=state_id,
            )
        if found > self.version:
            raise ContextValidationError(
                f"the stored context is at schema version {found}, newer than this flow's "
                f"{self.version} (was it written by a newer deployment?)",
                chat_id=chat_id,
                state_id=state_id,
            )
        return found

    def upgrade(self, data: dict[str, Any], chat_id: str, state_id: str) -> dict[str, Any]:
        """The stored dict brought to the current version, without the version key.

        ``data`` itself is never changed: migrations get a deep copy, so a failure leaves
        whatever the caller holds (a record) exactly as it was.
        """
        found = self.stored_version(data, chat_id, state_id)
        if VERSION_KEY in data:
            data = {key: value for key, value in data.items() if key != VERSION_KEY}
        if found == self.version:
            return data
        data = copy.deepcopy(data)
        for step in range(found, self.version):
            try:
                result = self.migrations[step](data)
            except Exception as exc:
                raise ContextValidationError(
                    f"migration {step}->{step + 1} raised {type(exc).__name__}: {exc}",
                    chat_id=chat_id,
                    state_id=state_id,
                ) from exc
            if type(result) is not dict:
                raise ContextValidationError(
                    f"migration {step}->{step + 1} must return a dict, got {type(result).__name__}",
                    chat_id=chat_id,
                    state_id=state_id,
                )
            data = result
            data.pop(VERSION_KEY, None)  # the version is ours to write, not the migration's
        logger.debug("migrated a context from schema version %d to %d", found, self.version)
        return data

    def load(self, data: dict[str, Any], chat_id: str, state_id: str) -> BaseModel:
        """The stored dict, migrated, as the model (ContextValidationError if it cannot be)."""
        upgraded = self.upgrade(data, chat_id, state_id)
        try:
            return self.model.model_validate(upgraded)
        except ValidationError as exc:
            raise ContextValidationError(
                f"the stored context does not fit {self.model.__name__}: {exc}",
                chat_id=chat_id,
                state_id=state_id,
            ) from exc

    def dump(self, context: BaseModel, chat_id: str, state_id: str) -> tuple[dict[str, Any], str]:
        """``context`` as the dict and JSON text to store, stamped with the schema version."""
        model = self.model
        try:
            encoded = context.model_dump_json(warnings=False)
            # Without validate_assignment a field can hold anything; refuse to store what
            # would not load back into the model next turn.
            stored = model.model_validate_json(encoded)
        except PydanticSerializationError as exc:  # lone surrogate, nesting too deep...
            raise ContextSerializationError(
                f"the context cannot be stored as JSON: {exc}", chat_id=chat_id, state_id=state_id
            ) from exc
        except ValidationError as exc:
            raise ContextValidationError(
                f"the context would not load back into {model.__name__}: {exc}",
                chat_id=chat_id,
                state_id=state_id,
            ) from exc
        # The dict (for managers that store dicts) comes from what was encoded, so every
        # backend stores the same thing (pydantic's JSON turns NaN into null, for one).
        dumped: dict[str, Any] = stored.model_dump(mode="json")
        if type(dumped) is not dict:
            return dumped, encoded  # a root model of a non-object: the engine refuses it
        if VERSION_KEY in dumped:  # only through extra="allow": it would be read as a version
            raise ContextSerializationError(
                f"the context holds the reserved key {VERSION_KEY!r}",
                chat_id=chat_id,
                state_id=state_id,
            )
        if self.version == 1:
            return dumped, encoded
        # Written first, by hand: pydantic's text is kept as it is (one encoding per turn).
        head = f'{{"{VERSION_KEY}":{self.version}'
        text = head + "}" if encoded == "{}" else f"{head},{encoded[1:]}"
        return {VERSION_KEY: self.version, **dumped}, text


def check_aliases(aliases: object, states: Mapping[str, object] | set[str]) -> list[str]:
    """The problems of a ``{"old state": "new state"}`` mapping against the current states."""
    if not isinstance(aliases, Mapping):
        return [f"renamed_states must be a mapping {{old: new}}, got {type(aliases).__name__}"]
    problems: list[str] = []
    for old, new in aliases.items():
        if not isinstance(old, str) or not isinstance(new, str):
            problems.append(f"renamed_states entry {old!r}: {new!r} must map a str to a str")
        elif old in states:
            problems.append(
                f"renamed_states maps {old!r}, which is still a state: remove the entry or "
                "the state"
            )
        elif new not in states:
            problems.append(
                f"renamed_states maps {old!r} to {new!r}, which is not a state "
                f"(states: {', '.join(sorted(states))})"
            )
    return problems
