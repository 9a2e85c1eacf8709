"""Event-loop lag: how late a short timer fires, sampled continuously.

Every handler, the routing worker and the background loops of a process share one event
loop; a callback that holds it (routing a batch, rendering a big response) delays every
acknowledgement waiting behind it. This probe makes that visible as
``omniroute_event_loop_lag_seconds`` (ingest/metrics.py).
"""

from __future__ import annotations

import asyncio
import time

from ingest.metrics import LOOP_PROBE_S, Metrics
from ingest.tasks import cancel


class LoopLagProbe:
    """A background task (``start``/``stop``) that observes the lag of a timer."""

    def __init__(self, metrics: Metrics, interval_s: float = LOOP_PROBE_S) -> None:
        self.metrics = metrics
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="loop-lag-probe")

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            due = time.perf_counter() + self.interval_s
            await asyncio.sleep(self.interval_s)
            self.metrics.loop_lag_seconds.observe(max(0.0, time.perf_counter() - due))
