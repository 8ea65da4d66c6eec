"""chat-orchestrator: typed, stateful chatbots as state machines.

Backends with optional drivers live in their own modules and are not imported here:
``chat_orchestrator.state_managers.redis`` (extra ``redis``),
``chat_orchestrator.state_managers.mongodb`` (extra ``mongo``) and
``chat_orchestrator.senders.whatsapp`` (extra ``whatsapp``).
"""

from chat_orchestrator.errors import (
    ChatOrchestratorError,
    ContextError,
    ContextSerializationError,
    ContextValidationError,
    ConversationDefinitionError,
    CorruptStateError,
    InvalidChatIdError,
    InvalidClaimKeyError,
    InvalidMessageError,
    InvalidStateIdError,
    InvalidStepResultError,
    LockTimeoutError,
    MissingDependencyError,
    SenderError,
    SenderTimeoutError,
    StateManagerError,
    StateManagerUnavailableError,
    StepError,
    TransitionError,
    TurnError,
    UnknownStateError,
    VersionConflictError,
    WebhookError,
    WhatsAppAPIError,
)
from chat_orchestrator.orchestrator import ChatOrchestrator, StepFunction, StepResult
from chat_orchestrator.senders import ConsoleMessageSender, MessageSender
from chat_orchestrator.state_managers import (
    FileStateManager,
    InMemoryStateManager,
    StateManager,
    StateRecord,
    TurnLease,
)

__version__ = "0.1.0"

__all__ = [
    "ChatOrchestrator",
    "ChatOrchestratorError",
    "ConsoleMessageSender",
    "ContextError",
    "ContextSerializationError",
    "ContextValidationError",
    "ConversationDefinitionError",
    "CorruptStateError",
    "FileStateManager",
    "InMemoryStateManager",
    "InvalidChatIdError",
    "InvalidClaimKeyError",
    "InvalidMessageError",
    "InvalidStateIdError",
    "InvalidStepResultError",
    "LockTimeoutError",
    "MessageSender",
    "MissingDependencyError",
    "SenderError",
    "SenderTimeoutError",
    "StateManager",
    "StateManagerError",
    "StateManagerUnavailableError",
    "StateRecord",
    "StepError",
    "StepFunction",
    "StepResult",
    "TransitionError",
    "TurnError",
    "TurnLease",
    "UnknownStateError",
    "VersionConflictError",
    "WebhookError",
    "WhatsAppAPIError",
    "__version__",
]
