"""Counting the service's store round trips with a PyMongo command listener.

The listener is attached only to the client the service under test uses
(``Store.open(..., event_listeners=[counter])``); the benchmark's own polling and checks go
through a separate client, so they are never counted. Server heartbeats are not commands
and are not counted either.

PyMongo's async client publishes a command's events inside the task that runs it, so each
command is attributed to its origin:

- ``http``: an aiohttp request handler, or the group-commit task that writes the intake
  of the waiting requests (the intake insert before the 2xx);
- ``routing``: the routing work loop (tasks ``route-N``), and the tasks it starts to
  overlap store calls (``crm_store.store.together`` of crm_store/routing_store.py calls:
  their coroutines are defined there);
- anything else — the recovery sweep, the outbox poller, future background loops — by its
  task name. Those run whether messages arrive or not and are reported apart; the
  per-message round trips are ``http`` + ``routing``, plus whatever the recovery sweep
  does beyond its periodic poll (``find intake``): when it claims records whose lease ran
  out it routes them again, and that is work spent on the measured messages.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Mapping
from typing import Any

from pymongo import monitoring

from crm_store.intake import COMMIT_TASK

PER_MESSAGE_ORIGINS = frozenset({"http", "routing"})
RECOVERY = "recovery"
RECOVERY_POLL = "find intake"


def per_message(who: str, key: str) -> bool:
    return who in PER_MESSAGE_ORIGINS or (who == RECOVERY and key != RECOVERY_POLL)


def command_key(name: str, command: Mapping[str, Any]) -> str:
    """``"<command> <collection>"``, e.g. ``"insert intake"``, ``"getMore messages"``."""
    target = command.get("collection") if name == "getMore" else command.get(name)
    return f"{name} {target}" if isinstance(target, str) else name


def origin() -> str:
    """Who is issuing the current command (see the module docstring)."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running loop in this thread
        return "no-task"
    if task is None:
        return "no-task"
    name = task.get_name()
    if name.startswith("route-") or _routing_store_call(task):
        return "routing"
    if name == COMMIT_TASK:  # the shared intake write the webhook requests wait for
        return "http"
    coro = getattr(task.get_coro(), "__qualname__", "")
    if coro.startswith("RequestHandler."):
        return "http"
    return name if not name.startswith("Task-") else coro or name


def _routing_store_call(task: asyncio.Task[Any]) -> bool:
    frame = getattr(task.get_coro(), "cr_frame", None)
    return frame is not None and frame.f_globals.get("__name__") == "crm_store.routing_store"


WRITE_COMMANDS = frozenset({"insert", "update", "delete", "findAndModify"})


class CommandCounter(monitoring.CommandListener):
    """Counts started commands by (origin, ``"<command> <collection>"``), and the documents
    written by write commands (the reply's ``n``; 1 per find-and-modify); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()
        self._written: Counter[tuple[str, str]] = Counter()
        self.failed_count = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        key = (origin(), command_key(event.command_name, event.command))
        with self._lock:
            self._counts[key] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        name = event.command_name
        if name not in WRITE_COMMANDS:
            return
        n = 1 if name == "findAndModify" else event.reply.get("n", 0)
        if isinstance(n, int) and n > 0:
            # The event carries no command body: attribute to the command name only.
            with self._lock:
                self._written[(origin(), name)] += n

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        with self._lock:
            self.failed_count += 1

    def snapshot(self) -> Counter[tuple[str, str]]:
        with self._lock:
            return Counter(self._counts)

    def written(self) -> Counter[tuple[str, str]]:
        with self._lock:
            return Counter(self._written)


def split_background(delta: Counter[tuple[str, str]]) -> tuple[Counter[str], Counter[str]]:
    """(per-message commands by command key, background commands by origin + key)."""
    fg: Counter[str] = Counter()
    bg: Counter[str] = Counter()
    for (who, key), n in delta.items():
        if n <= 0:
            continue
        if per_message(who, key):
            fg[key] += n
        else:
            bg[f"{who}: {key}"] += n
    return fg, bg
