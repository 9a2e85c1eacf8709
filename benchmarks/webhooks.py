"""Webhook delivery: ``python -m benchmarks.webhooks`` — see docs/benchmarks.md.

How fast the service pushes events to a consumer, and how late they arrive:

1. start a fast consumer in another process (benchmarks/consumer.py): an aiohttp server
   on a free loopback port that answers 200 at once and records when each event arrived;
2. for 1 and for 4 subscriptions (``crm_store.subscriptions.create``, all event types,
   every subscription posting to the same consumer), each phase on a fresh ephemeral,
   file-backed embedded store (as ``python -m benchmarks`` starts it):

   a. **backlog drain** — append N ÷ k events (``crm_store.events.append``, in batches)
      while no worker runs, so N deliveries for k subscriptions; then start the
      service's ``DeliveryWorker`` in this process and measure deliveries per second until
      the consumer has every event, for every subscription;
   b. **steady load** — with the worker running and caught up, append events at a fixed
      rate for a few seconds and measure the delivery lag: consumer arrival time − the
      event's ``written_at`` (set by ``append`` just before its insert), p50/p95/p99;

3. after every phase, check what the consumer received: every event, once, in sequence
   order per subscription, correctly signed; and what the store says (each delivery
   logged ``delivered`` after one attempt, each cursor at the last event).

The worker is built exactly as ``ingest.service.running_service`` builds it (its settings
from ``OMNIROUTE_WEBHOOK_*``), without the routing worker and outbox poller beside it: the
events are appended directly, so nothing else in the process competes for the CPU. A
PyMongo command listener on the worker's client counts its store commands and their
latency; the appends and the checks use another client.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from pymongo import monitoring

from benchmarks import consumer, loadgen
from benchmarks.consumer import Arrivals, Collect, Ready
from benchmarks.counting import command_key
from benchmarks.loadgen import proc_status_kib
from benchmarks.report import num, write_json
from benchmarks.run import (
    cpu_seconds_of,
    cpu_seconds_self,
    machine,
    median,
    mib,
    ms,
    percentile,
    pin_all_threads,
    quiet_logging,
    recv,
    system_busy_seconds,
)
from config.settings import Settings
from crm_store import events as event_log
from crm_store import subscriptions as subs
from crm_store.embedded import EmbeddedStore
from crm_store.store import Document, Store
from ingest.deliveries import DeliveryWorker

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "webhooks.json"
LOG_NAME = "omniroute-bench-webhooks.log"
WORKER_CPU = 0
CONSUMER_CPU = 1
SECRET = "whsec_bench-webhooks"
COLLECT_TIMEOUT_S = 300.0
WARMUP_EVENTS = 20
DB_NAME = "bench_webhooks"


@dataclass(frozen=True, slots=True)
class WebhookOptions:
    events: int = 2000  # backlog: deliveries per case (N ÷ subscriptions events)
    append_batch: int = 100  # events per append() call while building the backlog
    subscriptions: tuple[int, ...] = (1, 4)
    rates: tuple[float, ...] = (20.0, 100.0)  # steady load, events appended per second
    steady_seconds: float = 10.0
    tick_s: float = 0.1  # the appender appends what is due every tick (a routing batch)
    runs: int = 1
    pin: bool = True
    quick: bool = False


QUICK = WebhookOptions(events=1000, rates=(20.0,), steady_seconds=5.0, quick=True)


# ---------------------------------------------------------------------------- helpers


class CommandTimer(monitoring.CommandListener):
    """Counts the worker's store commands and sums their latency (send → reply, as the
    driver sees it), by ``"<command> <collection>"``; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[tuple[Any, int], str] = {}
        self._count: Counter[str] = Counter()
        self._micros: Counter[str] = Counter()
        self.failed_count = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        key = command_key(event.command_name, event.command)
        with self._lock:
            self._pending[(event.connection_id, event.request_id)] = key
            self._count[key] += 1

    def _done(
        self, event: monitoring.CommandSucceededEvent | monitoring.CommandFailedEvent
    ) -> None:
        with self._lock:
            key = self._pending.pop((event.connection_id, event.request_id), event.command_name)
            self._micros[key] += event.duration_micros

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self._done(event)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._done(event)
        with self._lock:
            self.failed_count += 1

    def snapshot(self) -> tuple[Counter[str], Counter[str]]:
        with self._lock:
            return Counter(self._count), Counter(self._micros)


def make_events(n: int, tag: str) -> list[Document]:
    """``message.attached`` events shaped like the router's (refs, decision, ~420 bytes)."""
    out: list[Document] = []
    for i in range(n):
        intake_id = f"api:site:{tag}-{i}"
        refs: dict[str, str | None] = {
            "contact_id": f"ct_{tag}_{i % 500:04d}",
            "lead_id": f"ld_{tag}_{i % 500:04d}",
            "conversation_id": f"cv_{tag}_{i % 500:04d}",
            "message_id": intake_id,
        }
        data = {
            "channel": "api",
            "rule": "conversation",
            "reason": "the conversation's lead is open",
            "automatic": False,
        }
        out.append(event_log.event("message.attached", refs, data, key=[intake_id]))
    return out


def written_wall(doc: Document) -> float:
    at: datetime = doc["written_at"]
    return at.timestamp()


def stats_ms(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0}
    v = list(values)
    return {
        "p50": ms(percentile(v, 50)),
        "p95": ms(percentile(v, 95)),
        "p99": ms(percentile(v, 99)),
        "max": ms(max(v)),
        "mean": ms(sum(v) / len(v)),
    }


# ---------------------------------------------------------------------------- one phase


@dataclass(slots=True)
class Phase:
    """One measured phase: a fresh store, its subscriptions and a delivery worker."""

    opts: WebhookOptions
    conn: Connection
    k: int  # subscriptions
    store: Store  # the worker's client (counted)
    feeder: Store  # appends and checks (not counted)
    subs: list[Document]
    worker: DeliveryWorker
    timer: CommandTimer
    store_pid: int | None

    async def collect(self, expected: int) -> Arrivals:
        self.conn.send(Collect(expected, COLLECT_TIMEOUT_S))
        arrivals: Arrivals = await recv(self.conn)
        return arrivals

    def worker_settings(self) -> dict[str, float]:
        w = self.worker
        return {
            "poll_s": w.poll_s,
            "lease_s": w.lease_s,
            "batch": w.batch,
            "concurrency": w.concurrency,
            "timeout_s": w.timeout_s,
            "retry_base_s": w.retry_base_s,
        }


@asynccontextmanager
async def fresh_phase(
    opts: WebhookOptions, conn: Connection, consumer_url: str, k: int, cpus: set[int]
) -> AsyncIterator[Phase]:
    """A fresh file-backed store with ``k`` subscriptions and a worker (not started yet).

    Fresh for every phase: the embedded store's cost per write grows with the writes it
    has taken since it started (docs/benchmarks.md), so phases must not inherit each
    other's history.
    """
    with tempfile.TemporaryDirectory(prefix="omniroute-bench-webhooks-") as tmp:
        embedded = EmbeddedStore(storage_path=Path(tmp) / "mongo")
        if opts.pin:  # the store keeps every CPU; this process is pinned afterwards
            pin_all_threads(cpus)
        await embedded.start()
        if opts.pin:
            pin_all_threads({WORKER_CPU})
        timer = CommandTimer()
        store = Store.open(embedded.uri, DB_NAME, event_listeners=[timer])
        feeder = Store.open(embedded.uri, DB_NAME)
        worker: DeliveryWorker | None = None
        try:
            await feeder.ensure_indexes()
            sub_docs = [
                await subs.create(feeder, f"{consumer_url}/hook/{i}", [], secret=SECRET)
                for i in range(k)
            ]
            settings = Settings()
            # As ingest.service.running_service builds it.
            worker = DeliveryWorker(
                store,
                owner=f"bench-webhooks:{os.getpid()}",
                timeout_s=settings.webhook_timeout_s,
                retry_base_s=settings.webhook_retry_base_s,
                poll_s=settings.webhook_poll_s,
                lease_s=settings.webhook_lease_s,
            )
            yield Phase(opts, conn, k, store, feeder, sub_docs, worker, timer, embedded.pid)
        finally:
            if worker is not None:
                await worker.stop()
            await feeder.close()
            await store.close()
            await embedded.stop()


@dataclass(slots=True)
class Usage:
    """CPU and store commands from the start of a phase."""

    phase: Phase
    cpu0: tuple[float, float, float]
    commands0: tuple[Counter[str], Counter[str]]
    wall0: float

    @classmethod
    def start(cls, ph: Phase) -> Usage:
        return cls(
            ph,
            (cpu_seconds_self(), cpu_seconds_of(ph.store_pid), system_busy_seconds()),
            ph.timer.snapshot(),
            time.monotonic(),
        )

    def end(self, deliveries: int, arrivals: Arrivals) -> dict[str, Any]:
        ph = self.phase
        cpu1 = (cpu_seconds_self(), cpu_seconds_of(ph.store_pid), system_busy_seconds())
        count1, micros1 = ph.timer.snapshot()
        count = count1 - self.commands0[0]
        micros = micros1 - self.commands0[1]
        wall = time.monotonic() - self.wall0
        worker_cpu, store_cpu = cpu1[0] - self.cpu0[0], cpu1[1] - self.cpu0[1]
        foreign = cpu1[2] - self.cpu0[2] - worker_cpu - store_cpu - arrivals.cpu_s
        n = max(1, deliveries)
        return {
            "store_round_trips_per_delivery": round(sum(count.values()) / n, 3),
            "store_ms_per_delivery": round(sum(micros.values()) / 1000 / n, 3),
            "commands_per_delivery": {
                k: round(v / n, 3) for k, v in sorted(count.items(), key=lambda kv: -kv[1])
            },
            "command_ms_per_delivery": {
                k: round(v / 1000 / n, 3) for k, v in sorted(micros.items(), key=lambda kv: -kv[1])
            },
            "cpu_ms_per_delivery": {
                "worker_process": round(worker_cpu * 1000 / n, 3),
                "store": round(store_cpu * 1000 / n, 3),
                "consumer": round(arrivals.cpu_s * 1000 / n, 3),
            },
            "other_cpu_share": round(max(0.0, foreign / (wall * (os.cpu_count() or 1))), 3),
            "store_rss_mib": mib(proc_status_kib(ph.store_pid or "self").get("VmRSS", 0)),
        }


async def drain(ph: Phase) -> dict[str, Any]:
    """Backlog drain: N deliveries in all — N ÷ k events, appended before the worker starts."""
    o = ph.opts
    evs = make_events(max(1, o.events // ph.k), f"drain{ph.k}")
    t = time.monotonic()
    for i in range(0, len(evs), o.append_batch):
        await event_log.append(ph.feeder, evs[i : i + o.append_batch])
    append_s = time.monotonic() - t
    expected = ph.k * len(evs)
    usage = Usage.start(ph)
    t0 = time.monotonic()
    await ph.worker.start()
    arrivals = await ph.collect(expected)
    out = usage.end(expected, arrivals)
    mono = arrivals.mono
    last = max(mono, default=t0)
    per_sub_last: dict[int, float] = {}
    for sub, at in zip(arrivals.subscription, mono, strict=True):
        per_sub_last[sub] = max(per_sub_last.get(sub, t0), at)
    gaps = [b - a for a, b in itertools.pairwise(mono)]
    elapsed = last - t0
    per_sub = sorted(len(evs) / (v - t0) for v in per_sub_last.values() if v > t0)
    # The rate in each fifth of the deliveries: does it hold up as the store fills?
    fifths: list[float] = []
    edges = [round(len(mono) * i / 5) for i in range(6)]
    for a, b in itertools.pairwise(edges):
        start = t0 if a == 0 else mono[a - 1]
        if b > a and mono[b - 1] > start:
            fifths.append(round((b - a) / (mono[b - 1] - start), 1))
    checks = await verify(ph, evs, arrivals)
    return {
        "events": len(evs),
        "deliveries_expected": expected,
        "append_batch": o.append_batch,
        "append_events_per_s": round(len(evs) / append_s, 1),
        "elapsed_s": round(elapsed, 3),
        "delivered_per_s": round(len(mono) / elapsed, 1) if elapsed > 0 else 0.0,
        "delivered_per_s_by_fifth": fifths,
        "per_subscription_per_s": {
            "min": round(per_sub[0], 1) if per_sub else 0.0,
            "median": round(median(per_sub), 1) if per_sub else 0.0,
            "max": round(per_sub[-1], 1) if per_sub else 0.0,
        },
        # One subscription's chain: it delivers one event at a time, in order.
        "wall_ms_per_delivery_per_subscription": round(1000 / median(per_sub), 2)
        if per_sub
        else 0.0,
        "first_delivery_ms": ms(min(mono) - t0) if mono else None,
        "gap_between_deliveries_ms": {
            "p50": ms(percentile(gaps, 50)) if gaps else 0.0,
            "p99": ms(percentile(gaps, 99)) if gaps else 0.0,
            "max": ms(max(gaps)) if gaps else 0.0,
        },
        **out,
        "checks": checks,
        "consumer_rss_mib": mib(arrivals.rss_kib),
    }


async def steady(ph: Phase, rate: float) -> dict[str, Any]:
    """Steady load: the worker runs and is caught up; events are appended at ``rate``."""
    o = ph.opts
    await ph.worker.start()
    # Warm-up, not measured: connections open, the worker back in its idle poll cycle.
    warm = make_events(WARMUP_EVENTS, f"warm{ph.k}")
    await event_log.append(ph.feeder, warm)
    warm_arrivals = await ph.collect(ph.k * len(warm))
    if warm_arrivals.timed_out:
        raise RuntimeError("webhook warm-up: the consumer did not get every event")
    total = max(1, round(rate * o.steady_seconds))
    evs = make_events(total, f"steady{ph.k}-{rate:g}")
    visible = [0.0] * total  # monotonic: append() returned
    appends: list[float] = []
    usage = Usage.start(ph)

    async def appender(start: float) -> None:
        i = tick = 0
        while i < total:
            due = min(total, int((time.monotonic() - start) * rate) + 1)
            if due > i:
                t = time.monotonic()
                await event_log.append(ph.feeder, evs[i:due])
                done = time.monotonic()
                appends.append(done - t)
                visible[i:due] = [done] * (due - i)
                i = due
            tick += 1
            await asyncio.sleep(max(0.0, start + tick * o.tick_s - time.monotonic()))

    t0 = time.monotonic()
    feeding = asyncio.create_task(appender(t0))
    arrivals = await ph.collect(ph.k * total)
    await feeding
    out = usage.end(ph.k * total, arrivals)
    last_visible = max(visible)
    index = {e["_id"]: n for n, e in enumerate(evs)}
    lag: list[float] = []
    lag_visible: list[float] = []
    by_event: dict[int, list[float]] = {}
    for eid, wall, mono in zip(arrivals.event_id, arrivals.wall, arrivals.mono, strict=True):
        n = index.get(eid)
        if n is None:
            continue
        late = wall - written_wall(evs[n])
        lag.append(late)
        lag_visible.append(mono - visible[n])
        by_event.setdefault(n, []).append(late)
    # Did delivery keep up? The lag of the last fifth of the events against the first
    # fifth's: it grows when the worker falls behind the appender.
    fifth = max(1, total // 5)
    head = [x for n in range(fifth) for x in by_event.get(n, [])]
    tail = [x for n in range(total - fifth, total) for x in by_event.get(n, [])]
    growth = (median(tail) - median(head)) if head and tail else 0.0
    last_arrival = max(arrivals.mono, default=t0)
    checks = await verify(ph, evs, arrivals)
    return {
        "rate_target_per_s": rate,
        "seconds": o.steady_seconds,
        "events": total,
        "deliveries_expected": ph.k * total,
        "append_rate_per_s": round(total / (last_visible - t0), 1) if last_visible > t0 else 0.0,
        "append_calls": len(appends),
        "append_ms": stats_ms(appends),
        "lag_ms": stats_ms(lag),
        "lag_after_append_returned_ms": stats_ms(lag_visible),
        "delivered_per_s": round(len(arrivals.event_id) / (last_arrival - t0), 1)
        if last_arrival > t0
        else 0.0,
        "lag_growth_ms": ms(growth),
        "last_delivery_after_last_append_ms": ms(last_arrival - last_visible),
        **out,
        "checks": checks,
    }


async def verify(ph: Phase, evs: list[Document], arrivals: Arrivals) -> dict[str, Any]:
    """Every event to every subscription, once, in order, signed; logged delivered."""
    seq_of = {e["_id"]: int(e["seq"]) for e in evs}
    received: dict[int, list[int]] = {i: [] for i in range(ph.k)}
    unexpected = 0
    for sub, eid in zip(arrivals.subscription, arrivals.event_id, strict=True):
        seq = seq_of.get(eid)
        if seq is None or sub not in received:
            unexpected += 1
        else:
            received[sub].append(seq)
    missing = duplicates = out_of_order = 0
    for seqs in received.values():
        distinct = set(seqs)
        missing += len(seq_of) - len(distinct)
        duplicates += len(seqs) - len(distinct)
        out_of_order += sum(1 for a, b in itertools.pairwise(seqs) if b <= a)
    first, last = min(seq_of.values()), max(seq_of.values())
    ids = [s["_id"] for s in ph.subs]
    log = ph.feeder.db["deliveries"]
    span = {"subscription_id": {"$in": ids}, "seq": {"$gte": first, "$lte": last}}
    logged = await log.count_documents({**span, "status": "delivered"})
    retried = await log.count_documents({**span, "attempts": {"$gt": 1}})
    post_ms: list[float] = []
    async for d in log.find(span, {"history.ms": 1}):
        post_ms.extend(float(h["ms"]) for h in d.get("history", []))
    cursors = [
        int(d["cursor"]) async for d in ph.feeder.db["subscriptions"].find({"_id": {"$in": ids}})
    ]
    expected = ph.k * len(evs)
    at_end = cursors == [last] * ph.k
    ok = (
        not (missing or duplicates or out_of_order or unexpected or arrivals.bad_signatures)
        and not arrivals.timed_out
        and logged == expected
        and not retried
        and at_end
    )
    return {
        "ok": ok,
        "received": len(arrivals.event_id),
        "expected": expected,
        "missing": missing,
        "duplicates": duplicates,
        "out_of_order": out_of_order,
        "unexpected": unexpected,
        "bad_signatures": arrivals.bad_signatures,
        "timed_out": arrivals.timed_out,
        "logged_delivered": logged,
        "retried": retried,
        "cursors_at_last_event": at_end,
        "post_ms": stats_ms([x / 1000 for x in post_ms]),
    }


# ---------------------------------------------------------------------------- a run


async def one_run(
    opts: WebhookOptions, conn: Connection, consumer_url: str, cpus: set[int]
) -> dict[str, Any]:
    started = time.monotonic()
    cases: list[dict[str, Any]] = []
    settings: dict[str, float] = {}
    for k in opts.subscriptions:
        async with fresh_phase(opts, conn, consumer_url, k, cpus) as ph:
            settings = ph.worker_settings()
            drained = await drain(ph)
            store_affinity = (
                sorted(os.sched_getaffinity(ph.store_pid))
                if ph.store_pid and hasattr(os, "sched_getaffinity")
                else None
            )
        loaded: dict[str, Any] = {}
        for rate in opts.rates:
            async with fresh_phase(opts, conn, consumer_url, k, cpus) as ph:
                loaded[f"{rate:g}"] = await steady(ph, rate)
        cases.append({"subscriptions": k, "drain": drained, "steady": loaded})
    me = proc_status_kib()
    return {
        "wall_s": round(time.monotonic() - started, 1),
        "worker_settings": settings,
        "cases": cases,
        "worker_process_rss_peak_mib": mib(me.get("VmHWM", 0)),
        "store_affinity": store_affinity,
    }


def headline(run: dict[str, Any]) -> dict[str, float]:
    """The flat figures a run is judged by (medians are taken over these)."""
    h: dict[str, float] = {}
    for case in run["cases"]:
        k = case["subscriptions"]
        d = case["drain"]
        p = f"drain_{k}sub_"
        h[p + "delivered_per_s"] = d["delivered_per_s"]
        h[p + "per_subscription_per_s"] = d["per_subscription_per_s"]["median"]
        fifths = d["delivered_per_s_by_fifth"] or [0.0]
        h[p + "first_fifth_per_s"] = fifths[0]
        h[p + "last_fifth_per_s"] = fifths[-1]
        h[p + "first_delivery_ms"] = d["first_delivery_ms"] or 0.0
        h[p + "max_gap_ms"] = d["gap_between_deliveries_ms"]["max"]
        h[p + "round_trips_per_delivery"] = d["store_round_trips_per_delivery"]
        h[p + "store_ms_per_delivery"] = d["store_ms_per_delivery"]
        for cmd in ("update deliveries", "update subscriptions", "find events"):
            h[p + cmd.replace(" ", "_") + "_ms"] = d["command_ms_per_delivery"].get(cmd, 0.0)
        h[p + "post_ms_mean"] = d["checks"]["post_ms"]["mean"]
        h[p + "wall_ms_per_delivery"] = d["wall_ms_per_delivery_per_subscription"]
        h[p + "other_ms"] = round(
            max(
                0.0,
                d["wall_ms_per_delivery_per_subscription"]
                - d["store_ms_per_delivery"]
                - d["checks"]["post_ms"]["mean"],
            ),
            2,
        )
        for who, v in d["cpu_ms_per_delivery"].items():
            h[p + who + "_cpu_ms"] = v
        h[p + "other_cpu_share"] = d["other_cpu_share"]
        for rate, s in case["steady"].items():
            q = f"steady_{k}sub_{rate}_"
            h[q + "append_rate_per_s"] = s["append_rate_per_s"]
            for pct in ("p50", "p95", "p99", "max"):
                h[q + f"lag_{pct}_ms"] = s["lag_ms"][pct]
            h[q + "lag_after_append_p50_ms"] = s["lag_after_append_returned_ms"]["p50"]
            h[q + "delivered_per_s"] = s["delivered_per_s"]
            h[q + "lag_growth_ms"] = s["lag_growth_ms"]
            h[q + "tail_ms"] = s["last_delivery_after_last_append_ms"]
            h[q + "round_trips_per_delivery"] = s["store_round_trips_per_delivery"]
            h[q + "worker_process_cpu_ms"] = s["cpu_ms_per_delivery"]["worker_process"]
            h[q + "store_cpu_ms"] = s["cpu_ms_per_delivery"]["store"]
            h[q + "other_cpu_share"] = s["other_cpu_share"]
    return h


def allowed_cpus() -> set[int]:
    """The CPUs this process may use (before anything pinned it)."""
    return set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set()


async def run_webhooks(
    opts: WebhookOptions, progress: Callable[[str], None], cpus: set[int] | None = None
) -> dict[str, Any]:
    """``cpus``: the CPUs the store may use — by default this process's affinity, which
    must not be pinned yet (``python -m benchmarks`` passes the set it saw at start)."""
    can_pin = opts.pin and hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2
    cpus = allowed_cpus() if cpus is None else cpus
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(
        target=consumer.main,
        args=(child, CONSUMER_CPU if can_pin else None, SECRET),
        name="omniroute-bench-consumer",
        daemon=True,
    )
    proc.start()
    opts = dataclasses.replace(opts, pin=can_pin)
    runs: list[dict[str, Any]] = []
    try:
        ready: Ready = await recv(parent)
        url = f"http://127.0.0.1:{ready.port}"
        for i in range(opts.runs):
            progress(f"webhooks run {i + 1}/{opts.runs} …")
            runs.append(await one_run(opts, parent, url, cpus))
            progress(f"webhooks run {i + 1}/{opts.runs} done in {runs[-1]['wall_s']} s")
        info = machine(can_pin, ready.affinity)
    finally:
        loadgen.stop(parent, proc)
    affinity = info["affinity"]
    affinity["worker"] = affinity.pop("service")
    affinity["consumer"] = affinity.pop("load_generator")
    heads = [headline(r) for r in runs]
    med = {k: median([h[k] for h in heads]) for k in heads[0]}
    spread = {k: [min(h[k] for h in heads), max(h[k] for h in heads)] for k in heads[0]}
    problems = problem_list(runs)
    correct = all(
        p["checks"]["ok"]
        for r in runs
        for case in r["cases"]
        for p in [case["drain"], *case["steady"].values()]
    )
    return {
        "schema": 1,
        "benchmark": "webhooks",
        "generated_at": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "machine": info,
        "options": {
            "events": opts.events,
            "append_batch": opts.append_batch,
            "subscriptions": list(opts.subscriptions),
            "rates_per_s": list(opts.rates),
            "steady_seconds": opts.steady_seconds,
            "tick_s": opts.tick_s,
            "runs": opts.runs,
            "quick": opts.quick,
        },
        "store": {
            "kind": "embedded SecantusDB (secantusd-py), file-backed in a temp dir",
            "sync_on_commit": True,
            "cache_size": "64M",
            "write_concern": {"w": "majority", "j": True},
            "started_fresh_per_phase": True,
        },
        "worker_settings": runs[0]["worker_settings"],
        "correct": correct,
        "problems": problems,
        "median": med,
        "spread": spread if len(runs) > 1 else None,
        "runs": runs,
    }


def problem_list(runs: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for i, r in enumerate(runs, 1):
        for case in r["cases"]:
            phases = [("drain", case["drain"])] + [
                (f"steady {rate}/s", s) for rate, s in case["steady"].items()
            ]
            for name, p in phases:
                c = p["checks"]
                where = f"run {i}, {case['subscriptions']} subscription(s), {name}"
                if not c["ok"]:
                    detail = ", ".join(
                        f"{key} {c[key]}"
                        for key in (
                            "missing",
                            "duplicates",
                            "out_of_order",
                            "unexpected",
                            "bad_signatures",
                            "retried",
                        )
                        if c[key]
                    )
                    out.append(
                        f"{where}: {c['received']}/{c['expected']} received, "
                        f"{c['logged_delivered']} logged delivered"
                        + (f", {detail}" if detail else "")
                        + (", timed out" if c["timed_out"] else "")
                        + ("" if c["cursors_at_last_event"] else ", cursor not at the end")
                    )
                if p["other_cpu_share"] > 0.1:
                    out.append(
                        f"{where}: other processes used {p['other_cpu_share']:.0%} of the "
                        "machine's CPU — figures are noisy"
                    )
    return out


# ---------------------------------------------------------------------------- table


def table(result: dict[str, Any]) -> str:
    m: dict[str, float] = result["median"]
    spread: dict[str, list[float]] | None = result["spread"]
    o = result["options"]
    mach = result["machine"]
    runs = result["runs"]
    ws = result["worker_settings"]
    ks: list[int] = o["subscriptions"]
    rates = [f"{r:g}" for r in o["rates_per_s"]]

    def f(key: str) -> str:
        if key not in m:
            return "–"
        text = num(m[key])
        if spread:
            lo, hi = spread[key]
            text += f" [{num(lo)}–{num(hi)}]"
        return text

    lines: list[str] = []
    add = lines.append
    add(
        f"omniroute webhook delivery benchmark · {result['generated_at']} · "
        f"{mach['cpu_count']} CPU ({mach['cpu_model'] or 'unknown CPU'}) · "
        f"Python {mach['python']} · pymongo {mach['pymongo']} · aiohttp {mach['aiohttp']} · "
        f"SecantusDB {mach['secantusdb']}"
    )
    if mach.get("git_commit"):
        dirty = " + uncommitted changes" if mach.get("git_uncommitted_changes") else ""
        add(f"code: {mach['git_commit']}{dirty}")
    add(
        "store: embedded SecantusDB, file-backed in a temp dir, --sync-on-commit, "
        "w=majority j=true, fresh per phase"
    )
    aff = mach["affinity"]
    if aff["pinned"]:
        add(
            f"CPUs: delivery worker + appender {aff['worker']}, consumer {aff['consumer']}, "
            f"store {runs[0]['store_affinity']} (unpinned)"
        )
    else:
        add("CPUs: not pinned")
    add(
        f"DeliveryWorker: poll {ws['poll_s']:g} s, page {ws['batch']}, lease {ws['lease_s']:g} s, "
        f"timeout {ws['timeout_s']:g} s; consumer answers 200 at once"
    )
    n_runs = o["runs"]
    add(f"{n_runs} run(s){' — medians [min–max]' if n_runs > 1 else ''}")
    add("")
    w = 26
    head = "".join(f"{f'{k} subscription' + ('s' if k > 1 else ''):<{w}}" for k in ks)

    def row(label: str, key: str) -> None:
        """``key`` names a headline figure, with ``{k}`` for the subscription count."""
        add(f"  {label:<44}" + "".join(f"{f(key.format(k=k)):<{w}}" for k in ks))

    add(
        f"Backlog drain: {o['events']:,} deliveries per case ({o['events']:,} ÷ subscriptions "
        "events appended), then the worker starts; a fresh store per phase"
    )
    add(f"  {'':<44}{head}")
    row("deliveries/s (all subscriptions)", "drain_{k}sub_delivered_per_s")
    row("  in the first fifth of the deliveries", "drain_{k}sub_first_fifth_per_s")
    row("  in the last fifth", "drain_{k}sub_last_fifth_per_s")
    row("deliveries/s per subscription", "drain_{k}sub_per_subscription_per_s")
    row("first delivery after start (ms)", "drain_{k}sub_first_delivery_ms")
    row("longest pause between deliveries (ms)", "drain_{k}sub_max_gap_ms")
    row("store round trips / delivery", "drain_{k}sub_round_trips_per_delivery")
    add("  where one subscription's time goes (ms per delivery):")
    row("  wall time (1000 ÷ its deliveries/s)", "drain_{k}sub_wall_ms_per_delivery")
    row("  store commands (latency, all)", "drain_{k}sub_store_ms_per_delivery")
    row("    update deliveries (record_attempt)", "drain_{k}sub_update_deliveries_ms")
    row("    update subscriptions (advance)", "drain_{k}sub_update_subscriptions_ms")
    row("    find events (feed.read)", "drain_{k}sub_find_events_ms")
    row("  POST, mean (deliveries log)", "drain_{k}sub_post_ms_mean")
    row("  the rest (worker Python, scheduling)", "drain_{k}sub_other_ms")
    row("worker process CPU ms / delivery", "drain_{k}sub_worker_process_cpu_ms")
    row("store CPU ms / delivery", "drain_{k}sub_store_cpu_ms")
    row("consumer CPU ms / delivery", "drain_{k}sub_consumer_cpu_ms")
    row("other processes' CPU share", "drain_{k}sub_other_cpu_share")
    add("")
    add(
        f"Steady load: events appended at a fixed rate for {o['steady_seconds']:g} s "
        f"(every {o['tick_s'] * 1000:g} ms); lag = consumer arrival − event written_at"
    )
    add(f"  {'':<44}{head}")
    for r in rates:
        q = "steady_{k}sub_" + r + "_"
        row(f"{r}/s: append rate achieved", q + "append_rate_per_s")
        for pct in ("p50", "p95", "p99", "max"):
            row(f"{r}/s: lag {pct} (ms)", q + f"lag_{pct}_ms")
        row(f"{r}/s: deliveries/s", q + "delivered_per_s")
        row(f"{r}/s: lag growth, last−first fifth (ms)", q + "lag_growth_ms")
        row(f"{r}/s: last delivery after last append (ms)", q + "tail_ms")
        row(f"{r}/s: store round trips / delivery", q + "round_trips_per_delivery")
        row(f"{r}/s: other processes' CPU share", q + "other_cpu_share")
    add("")
    first = runs[0]["cases"]
    add("Store commands per delivery (run 1, backlog drain):")
    for case in first:
        d = case["drain"]
        add(
            f"  {case['subscriptions']} sub: "
            + " · ".join(f"{k} {v:.2f}" for k, v in d["commands_per_delivery"].items())
        )
    add("")
    add("Correctness (every event to every subscription once, in order, signed, logged):")
    for i, r in enumerate(runs, 1):
        for case in r["cases"]:
            phases = [("drain", case["drain"])] + [
                (f"{rate}/s", s) for rate, s in case["steady"].items()
            ]
            add(
                f"  run {i}, {case['subscriptions']} sub: "
                + " · ".join(
                    f"{name} {p['checks']['received']}/{p['checks']['expected']} "
                    + ("OK" if p["checks"]["ok"] else "FAILED")
                    for name, p in phases
                )
            )
    if result["problems"]:
        add("")
        add("PROBLEMS:")
        lines.extend(f"  {p}" for p in result["problems"])
    return "\n".join(lines)


# ---------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """The webhook benchmark's sizes (``prefix``: ``"webhooks-"`` inside ``python -m
    benchmarks``, which runs the quick form)."""
    d, q = WebhookOptions(), QUICK

    def both(full: object, quick: object) -> str:
        return f"{full}; quick {quick}" if prefix == "" else f"{quick}"

    def listed(values: Sequence[float]) -> str:
        return ",".join(f"{v:g}" for v in values)

    p.add_argument(
        f"--{prefix}events",
        type=int,
        help="backlog drain: deliveries per case, N (N ÷ subscriptions events are appended) "
        f"({both(d.events, q.events)})",
    )
    p.add_argument(
        f"--{prefix}subscriptions",
        help="comma-separated subscription counts, one case each "
        f"({both(listed(d.subscriptions), listed(q.subscriptions))})",
    )
    p.add_argument(
        f"--{prefix}rates",
        help="comma-separated steady append rates, events/s "
        f"({both(listed(d.rates), listed(q.rates))})",
    )
    p.add_argument(
        f"--{prefix}steady-seconds",
        type=float,
        help=f"length of each steady phase, s ({both(d.steady_seconds, q.steady_seconds)})",
    )


def options_from(
    args: argparse.Namespace, *, quick: bool, runs: int, pin: bool, prefix: str = ""
) -> WebhookOptions:
    base = QUICK if quick else WebhookOptions()
    attr = prefix.replace("-", "_")

    def arg(name: str) -> Any:
        return getattr(args, attr + name)

    def ints(text: str | None, default: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(int(x) for x in text.split(",")) if text else default

    def floats(text: str | None, default: tuple[float, ...]) -> tuple[float, ...]:
        return tuple(float(x) for x in text.split(",")) if text else default

    opts = dataclasses.replace(
        base,
        events=arg("events") if arg("events") is not None else base.events,
        subscriptions=ints(arg("subscriptions"), base.subscriptions),
        rates=floats(arg("rates"), base.rates),
        steady_seconds=(
            arg("steady_seconds") if arg("steady_seconds") is not None else base.steady_seconds
        ),
        runs=max(1, runs),
        pin=pin,
    )
    if min(opts.events, *opts.subscriptions) < 1 or min(opts.rates) <= 0:
        raise SystemExit(f"--{prefix}events, --{prefix}subscriptions, --{prefix}rates must be > 0")
    if opts.steady_seconds <= 0:
        raise SystemExit(f"--{prefix}steady-seconds must be positive")
    return opts


def run_and_report(opts: WebhookOptions, out: Path, cpus: set[int] | None = None) -> dict[str, Any]:
    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    result = asyncio.run(run_webhooks(opts, progress, cpus))
    write_json(result, out)
    print(table(result))
    print(f"\nJSON: {out}")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.webhooks",
        description=(
            "Webhook delivery benchmark: an embedded file-backed store, the DeliveryWorker "
            "in this process, a consumer in another. Prints a table and writes JSON."
        ),
    )
    p.add_argument("--quick", action="store_true", help="a short run (~45 s idle)")
    add_arguments(p)
    p.add_argument("--runs", type=int, default=1, help="repeat everything; report medians")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output file")
    args = p.parse_args(argv)
    opts = options_from(args, quick=args.quick, runs=args.runs, pin=not args.no_pin)
    log_path = Path(tempfile.gettempdir()) / LOG_NAME
    quiet_logging(log_path)
    print(f"worker log: {log_path}", file=sys.stderr, flush=True)
    result = run_and_report(opts, args.out)
    return 0 if result["correct"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
