"""State managers: where each chat's state id, context and version live.

Backends with optional drivers (``redis``, ``mongodb``) are imported from their own modules,
so importing this package never needs a driver.
"""

from chat_orchestrator.state_managers.base import (
    RecordStateManager,
    StateManager,
    StateRecord,
    TurnLease,
)
from chat_orchestrator.state_managers.file import FileStateManager
from chat_orchestrator.state_managers.inmemory import InMemoryStateManager

__all__ = [
    "FileStateManager",
    "InMemoryStateManager",
    "RecordStateManager",
    "StateManager",
    "StateRecord",
    "TurnLease",
]
