"""Stopping background tasks."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog

log = structlog.get_logger("omniroute.tasks")

# How long a cancelled task may take to end before stopping goes on without it. A task
# cancelled while PyMongo waits for a server or a connection can stay "cancelling" for
# good on Python 3.11 (asyncio.wait_for around a Condition.wait that cannot get its lock
# back); a shutdown must not hang on it — the process is leaving, and what the task held
# is released by lease (docs/store.md).
STOP_GRACE_S = 10.0


async def cancel(*tasks: asyncio.Task[Any] | None, grace_s: float = STOP_GRACE_S) -> None:
    """Cancel ``tasks`` (``None`` ones are skipped) and wait until each has ended, at most
    ``grace_s`` in all; a task ending in ``CancelledError`` is the expected end, any other
    error is raised. A task still running after the grace is logged and left behind."""
    live = [t for t in tasks if t is not None]
    for t in live:
        t.cancel()
    if not live:
        return
    done, pending = await asyncio.wait(live, timeout=grace_s)
    for t in pending:
        log.warning("task.did_not_stop", task=t.get_name(), grace_s=grace_s)
    for t in live:
        if t in done:
            with contextlib.suppress(asyncio.CancelledError):
                t.result()
