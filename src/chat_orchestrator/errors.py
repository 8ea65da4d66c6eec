"""Every exception chat-orchestrator raises, in one tree.

::

    ChatOrchestratorError
     ├── ConversationDefinitionError      a flow is wrong as written (found before any message)
     │    └── DuplicateStepError (ValueError)  a second step registered for one state
     ├── InvalidChatIdError (ValueError)  a chat id that no backend may store
     │    ├── InvalidClaimKeyError         a once-only claim key (same rules as chat ids)
     │    └── InvalidStateIdError          a state id to store: not a non-empty str
     ├── InvalidClaimTTLError (ValueError)  a claim's ttl: not a positive, finite, bounded number
     ├── TurnError                        one turn failed; .chat_id and .state_id say where
     │    ├── StepError                   the step raised (original chained as __cause__)
     │    ├── InvalidStepResultError      the step returned something that is not (str, context)
     │    ├── UnknownStateError           no step is registered for a returned or stored state
     │    ├── TransitionError             the step returned a target it did not declare
     │    └── ContextError
     │         ├── ContextSerializationError   the new context is not plain JSON
     │         └── ContextValidationError      a context does not fit the conversation's model
     ├── StateManagerError                the state backend failed
     │    ├── StateManagerUnavailableError     it cannot be reached (host/port named, no secrets)
     │    ├── CorruptStateError                a stored record cannot be read
     │    ├── VersionConflictError             a conditional write lost against another writer
     │    ├── LockTimeoutError                 the chat's lock could not be had in time
     │    ├── StoreURLError (ValueError)       a store URL that cannot be opened (no secrets)
     │    ├── StoreCapabilityError             the store cannot do that (list chats: seed-only)
     │    └── ChatImportError (ValueError)     a line of a chats export that cannot be imported
     ├── SenderError                      a message could not be sent
     │    ├── InvalidMessageError (ValueError) refused before any HTTP (too long, 4 buttons...)
     │    ├── SenderTimeoutError               no answer in time: it may or may not have been sent
     │    ├── WhatsAppAPIError                 the Graph API answered with an error body
     │    └── TelegramAPIError                 the Bot API answered ``ok: false`` (or no JSON)
     ├── WebhookError                     an inbound request was refused; .status is the answer
     └── MissingDependencyError (ImportError)  an optional driver is not installed; names the extra

A turn that fails with any of these leaves the stored record exactly as it was.
"""

from __future__ import annotations

__all__ = [
    "ChatImportError",
    "ChatOrchestratorError",
    "ContextError",
    "ContextSerializationError",
    "ContextValidationError",
    "ConversationDefinitionError",
    "CorruptStateError",
    "DuplicateStepError",
    "InvalidChatIdError",
    "InvalidClaimKeyError",
    "InvalidClaimTTLError",
    "InvalidMessageError",
    "InvalidStateIdError",
    "InvalidStepResultError",
    "LockTimeoutError",
    "MissingDependencyError",
    "PipelineError",
    "SenderError",
    "SenderTimeoutError",
    "StateManagerError",
    "StateManagerUnavailableError",
    "StepError",
    "StoreCapabilityError",
    "StoreURLError",
    "TelegramAPIError",
    "TransitionError",
    "TurnError",
    "UnknownStateError",
    "VersionConflictError",
    "WebhookError",
    "WhatsAppAPIError",
    "describe_chat_id",
]


def describe_chat_id(chat_id: object, limit: int = 60) -> str:
    """A short printable form of a chat id for messages (ids may be 10,000 chars or hold NUL)."""
    text = repr(chat_id)
    return text if len(text) <= limit else f"{text[: limit - 12]}...(len {len(str(chat_id))})"


class ChatOrchestratorError(Exception):
    """Root of every error raised by chat-orchestrator."""


class ConversationDefinitionError(ChatOrchestratorError):
    """A conversation or orchestrator definition is invalid; ``problems`` lists every finding."""

    def __init__(self, owner: str, problems: list[str]) -> None:
        self.owner = owner
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        count = f"{len(self.problems)} problem{'' if len(self.problems) == 1 else 's'}"
        super().__init__(f"{owner} is not a valid conversation ({count}):\n{lines}")


class DuplicateStepError(ConversationDefinitionError, ValueError):
    """A step is already registered for the state (a ValueError too, as it used to be)."""


class InvalidChatIdError(ChatOrchestratorError, ValueError):
    """A chat id was not a non-empty ``str`` that every backend can store.

    Its subclasses say the same of the other ids a manager stores (claim keys, state ids).
    """


class InvalidClaimKeyError(InvalidChatIdError):
    """A claim key was not a non-empty, bounded, valid-Unicode ``str``; nothing was claimed."""


class InvalidStateIdError(InvalidChatIdError):
    """A state id to store was not a non-empty, bounded, valid-Unicode ``str``; nothing stored."""


class InvalidClaimTTLError(ChatOrchestratorError, ValueError):
    """A claim's ``ttl`` was not a positive, finite number of seconds in range; nothing claimed."""


class TurnError(ChatOrchestratorError):
    """One turn for one chat failed; nothing was stored."""

    def __init__(self, message: str, *, chat_id: str, state_id: str | None) -> None:
        self.chat_id = chat_id
        self.state_id = state_id
        where = f"chat {describe_chat_id(chat_id)}"
        if state_id is not None:
            where += f", state {state_id!r}"
        super().__init__(f"{message} ({where})")


class StepError(TurnError):
    """The step function raised; the original exception is ``__cause__``."""


class InvalidStepResultError(TurnError):
    """The step returned something other than ``(next_state_id: str, context)``."""


class UnknownStateError(TurnError):
    """A state id (returned by a step, or found in storage) has no registered step."""


class TransitionError(TurnError):
    """The step returned a next state outside the targets it declared."""


class ContextError(TurnError):
    """A conversation context could not be stored or loaded."""


class ContextSerializationError(ContextError):
    """The context a step returned cannot be stored as plain JSON."""


class ContextValidationError(ContextError):
    """A context (stored or returned) does not validate against the conversation's model."""


class StateManagerError(ChatOrchestratorError):
    """A state manager could not do what was asked."""


class StateManagerUnavailableError(StateManagerError):
    """The backend cannot be reached. The message names the address, never credentials."""


class CorruptStateError(StateManagerError):
    """A stored record exists but cannot be read; it is left untouched."""


class VersionConflictError(StateManagerError):
    """A conditional write found a different version than the one it was based on."""


class LockTimeoutError(StateManagerError):
    """The chat's lock was not acquired within the configured time."""


class StoreURLError(StateManagerError, ValueError):
    """A store URL is malformed, of an unknown scheme or has bad options; credentials redacted."""


class StoreCapabilityError(StateManagerError):
    """The store cannot do what was asked (a user's seed-only manager cannot list its chats)."""


class PipelineError(ChatOrchestratorError, ValueError):
    """An event, timer or outbound message the message pipeline cannot accept or read."""


class ChatImportError(StateManagerError, ValueError):
    """A line of a JSON Lines chats export is malformed; the message names the line."""


class SenderError(ChatOrchestratorError):
    """A message sender failed to deliver a message to its channel.

    Every sender error says what a delivery loop should do with it: ``permanent`` (a retry
    only repeats the failure: a bad request, a blocked user) or transient (the default), and
    ``retry_after``, the seconds the channel asked us to wait (a rate limit), if it said.
    """

    #: The class's default; an instance's own value is set by ``__init__``.
    default_permanent: bool = False

    def __init__(
        self, *args: object, permanent: bool | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(*args)
        self.permanent: bool = self.default_permanent if permanent is None else permanent
        self.retry_after: float | None = retry_after


class InvalidMessageError(SenderError, ValueError):
    """The message breaks a channel limit; nothing was sent (permanent: resending cannot help)."""

    default_permanent = True


class SenderTimeoutError(SenderError):
    """The channel did not answer in time after the request was sent: it may have been delivered.

    Not retried automatically, since a retry could send the message twice.
    """


class WhatsAppAPIError(SenderError):
    """The WhatsApp Cloud API answered with an error body."""

    def __init__(
        self,
        message: str,
        *,
        http_status: int,
        code: int | None,
        error_subcode: int | None = None,
        type: str | None = None,  # shadows the builtin: it is the Graph API field name
        fbtrace_id: str | None = None,
        details: str | None = None,
        is_transient: bool = False,
        retryable: bool = False,
    ) -> None:
        self.http_status = http_status
        self.code = code
        self.error_subcode = error_subcode
        self.type = type
        self.fbtrace_id = fbtrace_id
        self.details = details
        self.is_transient = is_transient
        #: Whether a later retry may cure it (classified by ``code`` when it was built).
        self.retryable = retryable
        super().__init__(
            message, permanent=not retryable, retry_after=_WHATSAPP_WAITS.get(code or -1)
        )


#: Seconds to wait for WhatsApp's rate-limit codes: 131056 (same pair too fast: Meta's 4^n
#: backoff starts near 6 s in practice), 130429 (throughput), 131048 (spam rate limit) and
#: 80007 (the account's rate limit, counted per hour: a minute before trying again).
_WHATSAPP_WAITS = {131056: 6.0, 130429: 5.0, 131048: 60.0, 80007: 60.0}


class TelegramAPIError(SenderError):
    """The Telegram Bot API answered ``{"ok": false, "error_code", "description", ...}``.

    ``error_code`` is the Bot API's (it mirrors the HTTP status). ``retry_after`` comes from
    ``parameters.retry_after`` (429); ``migrate_to_chat_id`` from a group turned supergroup.
    403 (the bot was blocked, kicked, or may not write first) and 400 are permanent; 429, 5xx
    and answers that are not Bot API JSON are transient. The token never appears here.
    """

    def __init__(
        self,
        message: str,
        *,
        http_status: int,
        error_code: int | None,
        description: str | None = None,
        retry_after: float | None = None,
        migrate_to_chat_id: int | None = None,
        permanent: bool = False,
    ) -> None:
        self.http_status = http_status
        self.error_code = error_code
        self.description = description
        self.migrate_to_chat_id = migrate_to_chat_id
        super().__init__(message, permanent=permanent, retry_after=retry_after)

    @property
    def blocked(self) -> bool:
        """403: the user blocked the bot (or it was removed from the group)."""
        return self.error_code == 403


class WebhookError(ChatOrchestratorError):
    """An inbound webhook request was refused; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, *, status: int) -> None:
        self.status = status
        super().__init__(message)


class MissingDependencyError(ChatOrchestratorError, ImportError):
    """An optional dependency is missing; the message names the extra that installs it."""

    def __init__(self, package: str, extra: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"{package} is not installed; install it with "
            f'`pip install "chat-orchestrator[{extra}]"`',
            name=package,
        )
