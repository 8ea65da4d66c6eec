"""Module ``__getattr__`` for names whose module needs an optional driver (PEP 562).

``from chat_orchestrator.state_managers import RedisStateManager`` imports the Redis module only
then; without redis-py that import raises MissingDependencyError naming the extra. These names
stay out of ``__all__`` so ``from package import *`` never needs a driver.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_attributes"]


def lazy_attributes(
    package: str, names: Mapping[str, str], eager: list[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``names`` maps a name to its module."""

    def get_attribute(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    def list_names() -> list[str]:
        return sorted({*eager, *names})

    return get_attribute, list_names
