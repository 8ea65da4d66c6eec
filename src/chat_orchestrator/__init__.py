"""chat-orchestrator: typed, stateful chatbots as state machines.

Everything public is one import away: ``from chat_orchestrator import Conversation, Turn,
state, ChatOrchestrator, ConversationTester, RecordingSender``. The pieces that need an
optional driver are imported on first use, here and from their packages:
``RedisStateManager`` (extra ``redis``), ``MongoDBStateManager`` (extra ``mongo``),
``PostgresStateManager`` (extra ``postgres``) and ``WhatsAppSender`` (extra ``whatsapp``);
without the driver that first use raises MissingDependencyError naming the extra. The
WhatsApp webhook pieces (``WhatsAppBot``, ``WhatsAppWebhook``, ``inbound_message``) need no
driver and load on first use too.
"""

from typing import TYPE_CHECKING

from chat_orchestrator._lazy import lazy_attributes
from chat_orchestrator.conversation import Conversation, Turn, state
from chat_orchestrator.errors import (
    ChatImportError,
    ChatOrchestratorError,
    ContextError,
    ContextSerializationError,
    ContextValidationError,
    ConversationDefinitionError,
    CorruptStateError,
    DuplicateStepError,
    InvalidChatIdError,
    InvalidClaimKeyError,
    InvalidClaimTTLError,
    InvalidMessageError,
    InvalidStateIdError,
    InvalidStepResultError,
    LockTimeoutError,
    MissingDependencyError,
    PipelineError,
    SenderError,
    SenderTimeoutError,
    StateManagerError,
    StateManagerUnavailableError,
    StepError,
    StoreCapabilityError,
    StoreURLError,
    TelegramAPIError,
    TransitionError,
    TurnError,
    UnknownStateError,
    VersionConflictError,
    WebhookError,
    WhatsAppAPIError,
)
from chat_orchestrator.orchestrator import (
    AsyncStepFunction,
    AsyncTypedStepFunction,
    ChatOrchestrator,
    StepFunction,
    StepResult,
    TypedStepFunction,
)
from chat_orchestrator.senders import AsyncMessageSender, ConsoleMessageSender, MessageSender
from chat_orchestrator.senders.base import Pacing
from chat_orchestrator.state_managers import (
    AsyncStateManager,
    AsyncTurnLease,
    ChatInfo,
    FileStateManager,
    InMemoryStateManager,
    RecordStateManager,
    SQLiteStateManager,
    StateManager,
    StateRecord,
    StateUpdate,
    TurnLease,
)
from chat_orchestrator.stores import open_store, register_store
from chat_orchestrator.testing import ConversationTester, RecordingSender, SentMessage

if TYPE_CHECKING:
    from chat_orchestrator.channels import (
        WhatsAppBot as WhatsAppBot,
    )
    from chat_orchestrator.channels import (
        WhatsAppWebhook as WhatsAppWebhook,
    )
    from chat_orchestrator.channels import (
        inbound_message as inbound_message,
    )
    from chat_orchestrator.channels.events import ChannelEvent as ChannelEvent
    from chat_orchestrator.pipeline.events import Event as Event
    from chat_orchestrator.pipeline.scope import cancel_timer as cancel_timer
    from chat_orchestrator.pipeline.scope import current_event as current_event
    from chat_orchestrator.pipeline.scope import schedule_timer as schedule_timer
    from chat_orchestrator.pipeline.worker import Worker as Worker
    from chat_orchestrator.senders.whatsapp import WhatsAppSender as WhatsAppSender
    from chat_orchestrator.senders.whatsapp_async import (
        AsyncWhatsAppSender as AsyncWhatsAppSender,
    )
    from chat_orchestrator.state_managers.mongodb import MongoDBStateManager as MongoDBStateManager
    from chat_orchestrator.state_managers.postgres import (
        PostgresStateManager as PostgresStateManager,
    )
    from chat_orchestrator.state_managers.redis import RedisStateManager as RedisStateManager

__version__ = "0.1.0"

__all__ = [
    "AsyncMessageSender",
    "AsyncStateManager",
    "AsyncStepFunction",
    "AsyncTurnLease",
    "AsyncTypedStepFunction",
    "ChatImportError",
    "ChatInfo",
    "ChatOrchestrator",
    "ChatOrchestratorError",
    "ConsoleMessageSender",
    "ContextError",
    "ContextSerializationError",
    "ContextValidationError",
    "Conversation",
    "ConversationDefinitionError",
    "ConversationTester",
    "CorruptStateError",
    "DuplicateStepError",
    "FileStateManager",
    "InMemoryStateManager",
    "InvalidChatIdError",
    "InvalidClaimKeyError",
    "InvalidClaimTTLError",
    "InvalidMessageError",
    "InvalidStateIdError",
    "InvalidStepResultError",
    "LockTimeoutError",
    "MessageSender",
    "MissingDependencyError",
    "Pacing",
    "PipelineError",
    "RecordStateManager",
    "RecordingSender",
    "SQLiteStateManager",
    "SenderError",
    "SenderTimeoutError",
    "SentMessage",
    "StateManager",
    "StateManagerError",
    "StateManagerUnavailableError",
    "StateRecord",
    "StateUpdate",
    "StepError",
    "StepFunction",
    "StepResult",
    "StoreCapabilityError",
    "StoreURLError",
    "TelegramAPIError",
    "TransitionError",
    "Turn",
    "TurnError",
    "TurnLease",
    "TypedStepFunction",
    "UnknownStateError",
    "VersionConflictError",
    "WebhookError",
    "WhatsAppAPIError",
    "__version__",
    "open_store",
    "register_store",
    "state",
]

#: Names loaded on first use (an optional driver, or modules most users never need).
OPTIONAL = {
    "ChannelEvent": "chat_orchestrator.channels.events",
    "MongoDBStateManager": "chat_orchestrator.state_managers.mongodb",
    "PostgresStateManager": "chat_orchestrator.state_managers.postgres",
    "RedisStateManager": "chat_orchestrator.state_managers.redis",
    "WhatsAppBot": "chat_orchestrator.channels",
    "Worker": "chat_orchestrator.pipeline.worker",
    "Event": "chat_orchestrator.pipeline.events",
    "schedule_timer": "chat_orchestrator.pipeline.scope",
    "cancel_timer": "chat_orchestrator.pipeline.scope",
    "current_event": "chat_orchestrator.pipeline.scope",
    "WhatsAppSender": "chat_orchestrator.senders.whatsapp",
    "AsyncWhatsAppSender": "chat_orchestrator.senders.whatsapp_async",
    "WhatsAppWebhook": "chat_orchestrator.channels",
    "inbound_message": "chat_orchestrator.channels",
}
__getattr__, __dir__ = lazy_attributes(__name__, OPTIONAL, __all__)
