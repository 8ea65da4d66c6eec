"""The message pipeline: a durable inbox, a transactional outbox, durable timers, workers.

* ``events.Event``: what the inbox holds; ``store.PipelineStore``: inbox, work index and dead
  letters, one per store (``manager.pipeline_store()``);
* ``section``: the pipeline's part of a chat's record, written with the turn;
* ``worker.Worker``: takes ready chats and runs their turns and deliveries;
* ``scope``: what a step may ask while it runs (``schedule_timer``, ``current_event``).

Names load lazily, so the engine can use ``section`` without loading the workers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from chat_orchestrator._lazy import lazy_attributes

if TYPE_CHECKING:
    from chat_orchestrator.pipeline.events import Event as Event
    from chat_orchestrator.pipeline.scope import cancel_timer as cancel_timer
    from chat_orchestrator.pipeline.scope import current_event as current_event
    from chat_orchestrator.pipeline.scope import schedule_timer as schedule_timer
    from chat_orchestrator.pipeline.store import DeadLetter as DeadLetter
    from chat_orchestrator.pipeline.store import PipelineStore as PipelineStore
    from chat_orchestrator.pipeline.worker import Worker as Worker
    from chat_orchestrator.pipeline.worker import WorkerSettings as WorkerSettings

__all__: list[str] = []

_NAMES = {
    "Event": "chat_orchestrator.pipeline.events",
    "DeadLetter": "chat_orchestrator.pipeline.store",
    "PipelineStore": "chat_orchestrator.pipeline.store",
    "Worker": "chat_orchestrator.pipeline.worker",
    "WorkerSettings": "chat_orchestrator.pipeline.worker",
    "cancel_timer": "chat_orchestrator.pipeline.scope",
    "current_event": "chat_orchestrator.pipeline.scope",
    "schedule_timer": "chat_orchestrator.pipeline.scope",
}
__getattr__, __dir__ = lazy_attributes(__name__, _NAMES, __all__)
