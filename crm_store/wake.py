"""In-process wake-ups: a writer says "there is something new on this topic" and whoever
waits on it in the same process looks at once instead of at its next poll.

A wake-up carries no data and promises nothing: the woken reader still reads the store
(what other processes wrote it finds by its own polling). Callbacks run synchronously in
the notifier's task and must be cheap and never raise (setting an ``asyncio.Event``).

Topics: :data:`EVENTS` (crm_store/events.append wrote events: the live hubs of
inbox/live_api.py and inbox/webchat_hub.py) and :data:`CALLS_DUE` (a call report was
applied: the call announcer, ingest/call_announcer.py) and :data:`OUTBOX` (a message was
queued for sending — an operator's reply, a robot's message: the outbox worker,
ingest/outbox.py).
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

log = structlog.get_logger("omniroute.wake")

EVENTS = "events"
CALLS_DUE = "calls_due"
OUTBOX = "outbox"

_listeners: dict[str, list[Callable[[], None]]] = {}


def subscribe(topic: str, callback: Callable[[], None]) -> Callable[[], None]:
    """Call ``callback`` on each :func:`notify` of ``topic``; returns the unsubscribe."""
    _listeners.setdefault(topic, []).append(callback)

    def unsubscribe() -> None:
        listeners = _listeners.get(topic, [])
        if callback in listeners:
            listeners.remove(callback)

    return unsubscribe


def notify(topic: str) -> None:
    for callback in list(_listeners.get(topic, ())):
        try:
            callback()
        except Exception:  # a listener's bug must never fail the writer
            log.exception("wake.listener_failed", topic=topic)


def listeners(topic: str) -> int:
    return len(_listeners.get(topic, ()))
