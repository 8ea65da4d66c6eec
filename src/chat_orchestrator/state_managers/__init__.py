"""State managers: where each chat's state id, context and version live.

``RedisStateManager`` (extra ``redis``), ``MongoDBStateManager`` (extra ``mongo``) and
``PostgresStateManager`` (extra ``postgres``) are imported on first use, so importing this
package never needs a driver; without the driver that first use raises MissingDependencyError
naming the extra.
"""

from typing import TYPE_CHECKING

from chat_orchestrator._lazy import lazy_attributes
from chat_orchestrator.state_managers.async_base import AsyncStateManager, AsyncTurnLease
from chat_orchestrator.state_managers.base import (
    ChatInfo,
    RecordStateManager,
    StateManager,
    StateRecord,
    StateUpdate,
    TurnLease,
)
from chat_orchestrator.state_managers.file import FileStateManager
from chat_orchestrator.state_managers.inmemory import InMemoryStateManager
from chat_orchestrator.state_managers.sqlite import SQLiteStateManager

if TYPE_CHECKING:
    from chat_orchestrator.state_managers.mongodb import MongoDBStateManager as MongoDBStateManager
    from chat_orchestrator.state_managers.postgres import (
        PostgresStateManager as PostgresStateManager,
    )
    from chat_orchestrator.state_managers.redis import RedisStateManager as RedisStateManager

__all__ = [
    "AsyncStateManager",
    "AsyncTurnLease",
    "ChatInfo",
    "FileStateManager",
    "InMemoryStateManager",
    "RecordStateManager",
    "SQLiteStateManager",
    "StateManager",
    "StateRecord",
    "StateUpdate",
    "TurnLease",
]

#: Names whose module needs an optional driver, by module.
OPTIONAL = {
    "MongoDBStateManager": "chat_orchestrator.state_managers.mongodb",
    "PostgresStateManager": "chat_orchestrator.state_managers.postgres",
    "RedisStateManager": "chat_orchestrator.state_managers.redis",
}
__getattr__, __dir__ = lazy_attributes(__name__, OPTIONAL, __all__)
