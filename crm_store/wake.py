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

Demand: a reader that only serves listeners (the live hubs serve open sockets and long
polls) declares with :func:`demand` when it has any, and says :data:`WANTED` when it gets
its first; the change-stream watcher (ingest/event_watch.py) follows the stream only while
:func:`wanted` says someone listens, so a process without sockets reads nothing for them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import structlog

log = structlog.get_logger("omniroute.wake")

EVENTS = "events"
CALLS_DUE = "calls_due"
OUTBOX = "outbox"
WANTED = "wanted"  # a reader of EVENTS got its first listener: start following

# This process, as the ``writer`` of the events it appends: its own events wake its hubs
# directly, so its change-stream watcher (ingest/event_watch.py) asks only for others'.
PROCESS = uuid.uuid4().hex

_listeners: dict[str, list[Callable[[], None]]] = {}
_demand: dict[str, list[Callable[[], bool]]] = {}


def _add(registry: dict[str, list[Any]], topic: str, item: Any) -> Callable[[], None]:
    """Put ``item`` on ``topic``'s list; returns what takes it off again."""
    registry.setdefault(topic, []).append(item)

    def remove() -> None:
        items = registry.get(topic, [])
        if item in items:
            items.remove(item)

    return remove


def subscribe(topic: str, callback: Callable[[], None]) -> Callable[[], None]:
    """Call ``callback`` on each :func:`notify` of ``topic``; returns the unsubscribe."""
    return _add(_listeners, topic, callback)


def notify(topic: str) -> None:
    for callback in list(_listeners.get(topic, ())):
        try:
            callback()
        except Exception:  # a listener's bug must never fail the writer
            log.exception("wake.listener_failed", topic=topic)


def listeners(topic: str) -> int:
    return len(_listeners.get(topic, ()))


def demand(topic: str, listening: Callable[[], bool]) -> Callable[[], None]:
    """Count ``listening()`` among those who want ``topic`` followed; returns the undo."""
    return _add(_demand, topic, listening)


def wanted(topic: str) -> bool:
    """Whether any reader of ``topic`` in this process has a listener now."""
    return any(listening() for listening in _demand.get(topic, ()))


class Interest:
    """A reader's listeners on ``topic``: active while it has any and for ``linger_s``
    after the last left (a long-polling client comes back within seconds; following the
    feed again costs a page read). Registered with :func:`demand` while started."""

    def __init__(self, topic: str, has_listeners: Callable[[], bool], linger_s: float) -> None:
        self.topic = topic
        self.has_listeners = has_listeners
        self.linger_s = linger_s
        self._last = float("-inf")
        self._withdraw: Callable[[], None] | None = None

    def start(self) -> None:
        self._withdraw = demand(self.topic, self.active)

    def stop(self) -> None:
        if self._withdraw is not None:
            self._withdraw()
            self._withdraw = None

    def active(self) -> bool:
        now = time.monotonic()
        if self.has_listeners():
            self._last = now
            return True
        return now - self._last < self.linger_s

    def heard(self) -> None:
        """A listener arrived: active from now on; the watcher starts if it was idle."""
        was = self.active()
        self._last = time.monotonic()
        if not was:
            notify(WANTED)
