"""The benchmark run: an embedded store, the service in this process, load from another.

One run:

1. start an ephemeral, file-backed embedded store (SecantusDB with ``--sync-on-commit``,
   as the zero-setup production default runs it) in a temp dir;
2. calibration: one message through the service, whose stored intake record becomes the
   template of the raw insert baseline;
3. raw baseline: ``insert_one`` of that record with the Store's client settings
   (w=majority, j=true), sequentially and from C tasks, into a fresh collection;
4. new-lead path (fresh database): lockstep messages at concurrency 1, then N messages
   from N new senders at concurrency C;
5. steady-state path (fresh database): K senders write once (warm-up, not measured),
   then lockstep messages at concurrency 1, then N messages spread over the K
   conversations at concurrency C.

The service (aiohttp ``AppRunner`` + ``running_service``) runs in this process with a
command listener on its client; the load generator is a separate process
(benchmarks/loadgen.py).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import multiprocessing
import os
import platform
import resource
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from aiohttp import web

from benchmarks import loadgen
from benchmarks.counting import CommandCounter, per_message, split_background
from benchmarks.loadgen import Acked, Job, JobResult, proc_status_kib
from benchmarks.workload import ACCOUNT, SECRET, SECRET_ENV, body, bson_size
from config.loader import load_config
from config.models import AppConfig
from config.settings import DEFAULT_CONFIG_DIR, Settings
from crm_store.embedded import EmbeddedStore, pick_free_port
from crm_store.store import Document, Store
from ingest.app import create_app
from ingest.logging import configure_logging
from ingest.service import running_service

if TYPE_CHECKING:  # only for annotations: where Service lives has moved before
    from ingest.context import Service

T = TypeVar("T")
PHASE_TIMEOUT_S = 300.0
SERVICE_CPU = 0
LOADGEN_CPU = 1


@dataclass(frozen=True, slots=True)
class Options:
    messages: int
    concurrency: int
    sequential_messages: int
    steady_senders: int
    raw_seconds: float
    runs: int
    pin: bool
    quick: bool


# ---------------------------------------------------------------------------- helpers


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    s = sorted(values)
    rank = max(1, min(len(s), int(-(-q * len(s) // 100))))
    return s[rank - 1]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def mib(kib: int) -> float:
    return round(kib / 1024, 1)


def cpu_seconds_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cpu_seconds_of(pid: int | None) -> float:
    """utime + stime of a process (all its threads) from /proc; 0 when unknown."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def system_busy_seconds() -> float:
    """CPU time the whole machine spent busy (all CPUs, incl. steal), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    # user nice system idle iowait irq softirq steal (guest time is inside user)
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")


def pin_all_threads(cpus: set[int]) -> None:
    """Pin every thread of this process (affinity is per thread on Linux)."""
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(tid), cpus)


async def recv(conn: Connection) -> Any:
    """Await the next object from a pipe without blocking the event loop."""
    loop = asyncio.get_running_loop()
    if not conn.poll():
        ready: asyncio.Future[None] = loop.create_future()
        fd = conn.fileno()

        def on_ready() -> None:
            loop.remove_reader(fd)
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(fd, on_ready)
        try:
            await ready
        finally:
            loop.remove_reader(fd)
    return conn.recv()


async def timed(coro: Awaitable[T], what: str) -> T:
    try:
        return await asyncio.wait_for(coro, PHASE_TIMEOUT_S)
    except TimeoutError:
        raise RuntimeError(f"benchmark phase {what!r} timed out after {PHASE_TIMEOUT_S}s") from None


# ---------------------------------------------------------------------------- service


class Progress:
    """Knows when messages are routed, without querying the store.

    There is no product hook for "a batch was routed", so this wraps
    ``RoutingWorker.route`` on the instance (the work loop and the recovery sweep both call
    it): when a call returns, its records are routed — intake ``status: routed`` included —
    or counted in ``omniroute_routing_failures_total``. It keeps the distinct intake ids
    routed, so a record routed twice (its lease ran out while it waited in the queue, and
    the recovery sweep claimed it) is counted once here and shows up as ``routed_again``.
    """

    def __init__(self, svc: Service) -> None:
        self.svc = svc
        self.changed = asyncio.Event()
        self.routed_ids: set[str] = set()
        self.timeline: list[tuple[float, int]] = []
        self.batches: list[int] = []
        original = svc.worker.route

        async def route(batch: list[Any], *, rerun: bool = False) -> None:
            done = False
            try:
                await original(batch, rerun=rerun)
                done = True
            finally:
                if done:
                    self.routed_ids.update(d.id for d in batch)
                if not rerun:
                    self.batches.append(len(batch))
                self.timeline.append((time.monotonic(), len(self.routed_ids)))
                self.changed.set()

        svc.worker.route = route  # type: ignore[method-assign]

    def routed(self) -> int:
        """Distinct intake records routed so far."""
        return len(self.routed_ids)

    def routings(self) -> int:
        """Routing outcomes so far (the service's counter: a record routed twice counts 2)."""
        return sum(self.by_rule().values())

    def _sum(self, metric: Any, name: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for m in metric.collect():
            for s in m.samples:
                if s.name == name:
                    out[s.labels.get("rule", "")] = s.value
        return out

    def by_rule(self) -> dict[str, int]:
        rules = self._sum(self.svc.metrics.routed, "omniroute_routed_total")
        return {k: int(v) for k, v in rules.items()}

    def failures(self) -> int:
        f = self._sum(self.svc.metrics.routing_failures, "omniroute_routing_failures_total")
        return int(sum(f.values()))

    async def reached(self, target: int) -> float:
        """The monotonic time at which the routed count first reached ``target``."""
        while True:
            # The routed count only grows along the timeline: find the first entry >= target.
            i = bisect.bisect_left(self.timeline, target, key=lambda e: e[1])
            if i < len(self.timeline):
                return self.timeline[i][0]
            if self.failures():
                raise RuntimeError(f"routing failed for {self.failures()} message(s)")
            self.changed.clear()
            await self.changed.wait()


@dataclass(slots=True)
class Served:
    svc: Service
    store: Store
    url: str
    progress: Progress


@asynccontextmanager
async def serving(
    uri: str, db_name: str, config: AppConfig, counter: CommandCounter | None
) -> AsyncIterator[Served]:
    """The service on a free port of this process, its client watched by ``counter``."""
    listeners = [counter] if counter is not None else []
    store = Store.open(uri, db_name, event_listeners=listeners)
    port = pick_free_port()
    settings = Settings(mongodb_uri=uri, db_name=db_name, host="127.0.0.1", port=port)
    try:
        async with running_service(settings, config, store) as svc:
            progress = Progress(svc)
            runner = web.AppRunner(create_app(svc), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            try:
                yield Served(
                    svc, store, f"http://127.0.0.1:{port}/webhooks/api/{ACCOUNT}", progress
                )
            finally:
                await runner.cleanup()
    finally:
        await store.close()


# ---------------------------------------------------------------------------- phases


@dataclass(slots=True)
class Bench:
    opts: Options
    conn: Connection
    config: AppConfig
    counter: CommandCounter
    poll: Store  # a separate client: the benchmark's own queries are never counted
    store_pid: int | None
    settings_seen: dict[str, Any] = field(default_factory=dict)

    async def post(self, s: Served, bodies: list[bytes], concurrency: int) -> JobResult:
        self.conn.send(Job(s.url, SECRET, bodies, concurrency))
        result: JobResult = await recv(self.conn)
        return result

    async def settle(self, s: Served, bodies: list[bytes], concurrency: int, what: str) -> None:
        """Post and wait until routed; nothing measured (warm-up, calibration)."""
        target = s.progress.routed() + len(bodies)
        result = await timed(self.post(s, bodies, concurrency), what)
        ok = result.statuses.get(200, 0)
        if ok != len(bodies):
            raise RuntimeError(f"{what}: {result.statuses} {result.errors}")
        await timed(s.progress.reached(target), what)

    async def phase(
        self, s: Served, bodies: list[bytes], concurrency: int, *, lockstep: bool, what: str
    ) -> dict[str, Any]:
        p = s.progress
        n = len(bodies)
        base = p.routed()
        routings0 = p.routings()
        rules0 = p.by_rule()
        batches0 = len(p.batches)
        commands0 = self.counter.snapshot()
        written0 = self.counter.written()
        cpu0 = (cpu_seconds_self(), cpu_seconds_of(self.store_pid), system_busy_seconds())
        wall0 = time.monotonic()
        e2e: list[float] = []

        async def drive_lockstep() -> JobResult:
            done = 0
            for _ in range(n):
                acked: Acked = await recv(self.conn)
                if acked.status == 200:
                    done += 1
                    t = await p.reached(base + done)
                    e2e.append(t - acked.started)
                self.conn.send(True)
            result: JobResult = await recv(self.conn)
            return result

        self.conn.send(Job(s.url, SECRET, bodies, concurrency, lockstep=lockstep))
        if lockstep:
            result = await timed(drive_lockstep(), what)
        else:
            result = await timed(recv(self.conn), what)
        ok = result.statuses.get(200, 0)
        finished = await timed(p.reached(base + ok), what)
        commands1 = self.counter.snapshot()
        written = self.counter.written() - written0
        cpu1 = (cpu_seconds_self(), cpu_seconds_of(self.store_pid), system_busy_seconds())
        wall = time.monotonic() - wall0
        service_cpu, store_cpu = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
        # Whatever else ran on the machine meanwhile (other processes, hypervisor steal).
        foreign = cpu1[2] - cpu0[2] - service_cpu - store_cpu - result.cpu_s
        foreign_share = max(0.0, foreign / (wall * (os.cpu_count() or 1)))

        delta = commands1 - commands0
        per_msg, background = split_background(delta)
        by_origin: Counter[str] = Counter()
        for (who, key), count in delta.items():
            if per_message(who, key):
                by_origin[who] += count
        round_trips = sum(per_msg.values())
        batches = p.batches[batches0:]
        rules1 = p.by_rule()
        intake = self.poll.client[s.store.db.name]["intake"]
        pending = await intake.count_documents({"status": "pending"})
        elapsed = finished - result.first_start
        lat = result.latencies
        out: dict[str, Any] = {
            "messages": n,
            "concurrency": 1 if lockstep else concurrency,
            "lockstep": lockstep,
            "ok": ok,
            "statuses": {str(k): v for k, v in sorted(result.statuses.items())},
            "errors": result.errors,
            "elapsed_s": round(elapsed, 3),
            "routed_per_s": round(ok / elapsed, 1),
            "acked_per_s": round(n / (result.last_end - result.first_start), 1),
            "routing_lag_ms": ms(finished - result.last_end),
            "ack_ms": {
                "p50": ms(percentile(lat, 50)),
                "p95": ms(percentile(lat, 95)),
                "p99": ms(percentile(lat, 99)),
                "max": ms(max(lat)),
                "mean": ms(sum(lat) / len(lat)),
            },
            "round_trips_per_msg": round(round_trips / n, 2),
            "round_trips": round_trips,
            "commands_per_msg": {
                k: round(v / n, 3) for k, v in sorted(per_msg.items(), key=lambda kv: -kv[1])
            },
            "round_trips_per_msg_by_origin": {
                who: round(by_origin[who] / n, 3) for who in ("http", "routing", "recovery")
            },
            "background_commands": dict(sorted(background.items())),
            "documents_written_per_msg": round(
                sum(v for (who, key), v in written.items() if per_message(who, key)) / n, 2
            ),
            "batches": {
                "count": len(batches),
                "mean_size": round(sum(batches) / len(batches), 1) if batches else 0,
                "max_size": max(batches, default=0),
            },
            "cpu_ms_per_msg": {
                "service": round(service_cpu * 1000 / n, 2),
                "store": round(store_cpu * 1000 / n, 2),
                "load_generator": round(result.cpu_s * 1000 / n, 2),
            },
            "other_cpu_share": round(foreign_share, 3),
            "rules": {k: v - rules0.get(k, 0) for k, v in rules1.items() if v - rules0.get(k, 0)},
            "intake_pending_after": pending,
            "routed_again": p.routings() - routings0 - (p.routed() - base),
            "loadgen_rss_mib": mib(result.rss_kib),
        }
        if e2e:
            out["post_to_routed_ms"] = {
                "p50": ms(percentile(e2e, 50)),
                "p95": ms(percentile(e2e, 95)),
                "max": ms(max(e2e)),
            }
        return out

    # ------------------------------------------------------------------ the runs

    async def calibrate(self, uri: str) -> Document:
        """One message through a throwaway service; its intake record, as stored."""
        async with serving(uri, "bench_calibrate", self.config, None) as s:
            await self.settle(s, [body("calibrate-0", 9_999_999)], 1, "calibration")
            doc = await s.store.intake.find_one({})
            self.settings_seen = {
                "route_batch_size": s.svc.worker.batch_size,
                "routing_workers": s.svc.worker.workers,
                "recovery_interval_s": s.svc.worker.recovery_interval_s,
                "intake_lease_s": s.svc.worker.lease_s,
            }
        assert doc is not None
        return doc

    async def raw_inserts(self, uri: str, template: Document) -> dict[str, Any]:
        """insert_one of the stored intake record, with the Store's client settings."""
        store = Store.open(uri, "bench_raw")
        seq = 0
        store_cpu: dict[str, float] = {}

        async def rate(coll: str, tasks: int, indexed: bool) -> tuple[float, list[float]]:
            nonlocal seq
            collection = store[coll]
            if indexed:  # intake's secondary indexes, as the service's insert maintains
                await collection.create_index([("status", 1), ("lease_until", 1)])
                await collection.create_index([("received_at", 1)])
            await collection.insert_one({**template, "_id": "warm-up"})
            lat: list[float] = []
            deadline = time.monotonic() + self.opts.raw_seconds
            count = 0

            async def one_task() -> None:
                nonlocal seq, count
                while time.monotonic() < deadline:
                    seq += 1
                    t = time.monotonic()
                    await collection.insert_one({**template, "_id": f"raw-{seq}"})
                    lat.append(time.monotonic() - t)
                    count += 1

            started = time.monotonic()
            cpu0 = cpu_seconds_of(self.store_pid)
            await asyncio.gather(*(one_task() for _ in range(tasks)))
            store_cpu[coll] = (cpu_seconds_of(self.store_pid) - cpu0) * 1000 / max(1, count)
            return count / (time.monotonic() - started), lat

        try:
            c = self.opts.concurrency
            seq_rate, seq_lat = await rate("raw_seq", 1, False)
            conc_rate, conc_lat = await rate("raw_conc", c, False)
            iseq_rate, _ = await rate("raw_seq_indexed", 1, True)
            iconc_rate, _ = await rate("raw_conc_indexed", c, True)
        finally:
            await store.close()
        return {
            "doc_bytes": bson_size(template),
            "seconds_each": self.opts.raw_seconds,
            "sequential_docs_per_s": round(seq_rate, 1),
            "sequential_ms": {
                "p50": ms(percentile(seq_lat, 50)),
                "p99": ms(percentile(seq_lat, 99)),
            },
            "concurrency": c,
            "concurrent_docs_per_s": round(conc_rate, 1),
            "concurrent_ms": {
                "p50": ms(percentile(conc_lat, 50)),
                "p99": ms(percentile(conc_lat, 99)),
            },
            "store_cpu_ms_per_doc": {k: round(v, 2) for k, v in store_cpu.items()},
            "indexed_sequential_docs_per_s": round(iseq_rate, 1),
            "indexed_concurrent_docs_per_s": round(iconc_rate, 1),
        }

    async def new_lead(self, uri: str) -> dict[str, Any]:
        o = self.opts
        async with serving(uri, "bench_new_lead", self.config, self.counter) as s:
            # Every message from a sender never seen before: a contact and a lead each.
            seq_bodies = [body(f"nl-seq-{i}", i) for i in range(o.sequential_messages)]
            first = o.sequential_messages
            bodies = [body(f"nl-{i}", first + i) for i in range(o.messages)]
            sequential = await self.phase(s, seq_bodies, 1, lockstep=True, what="new lead c=1")
            concurrent = await self.phase(
                s, bodies, o.concurrency, lockstep=False, what="new lead c=C"
            )
            leads = await self.poll.client["bench_new_lead"]["leads"].count_documents({})
        concurrent["leads_created_total"] = leads
        return {"sequential": sequential, "concurrent": concurrent}

    async def steady(self, uri: str) -> dict[str, Any]:
        o = self.opts
        k = o.steady_senders
        base = 1_000_000

        def msg(tag: str, i: int) -> bytes:
            sender = i % k
            return body(f"st-{tag}-{i}", base + sender, thread=f"chat-{sender}")

        async with serving(uri, "bench_steady", self.config, self.counter) as s:
            # Warm-up (not measured): K conversations, each with an open lead.
            t = time.monotonic()
            await self.settle(s, [msg("warm", i) for i in range(k)], o.concurrency, "warm-up")
            warm_s = time.monotonic() - t
            db = self.poll.client["bench_steady"]
            leads0 = await db["leads"].count_documents({})
            seq_bodies = [msg("seq", i) for i in range(o.sequential_messages)]
            bodies = [msg("c", i) for i in range(o.messages)]
            sequential = await self.phase(s, seq_bodies, 1, lockstep=True, what="steady c=1")
            concurrent = await self.phase(
                s, bodies, o.concurrency, lockstep=False, what="steady c=C"
            )
            leads1 = await db["leads"].count_documents({})
        return {
            "senders": k,
            "warmup": {"messages": k, "seconds": round(warm_s, 2), "leads": leads0},
            "sequential": sequential,
            "concurrent": concurrent,
            "leads_created_during_phases": leads1 - leads0,
        }


async def one_run(
    opts: Options, conn: Connection, config: AppConfig, cpus: set[int]
) -> dict[str, Any]:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="omniroute-bench-") as tmp:
        embedded = EmbeddedStore(storage_path=Path(tmp) / "mongo")
        # The store keeps every CPU; only this process's threads are pinned afterwards.
        if opts.pin:
            pin_all_threads(cpus)
        await embedded.start()
        if opts.pin:
            pin_all_threads({SERVICE_CPU})
        counter = CommandCounter()
        poll = Store.open(embedded.uri, "bench_poll")
        try:
            bench = Bench(opts, conn, config, counter, poll, embedded.pid)
            template = await bench.calibrate(embedded.uri)
            raw = await bench.raw_inserts(embedded.uri, template)
            new_lead = await bench.new_lead(embedded.uri)
            steady = await bench.steady(embedded.uri)
            store_rss = proc_status_kib(embedded.pid or "self")
            store_affinity = (
                sorted(os.sched_getaffinity(embedded.pid))
                if embedded.pid and hasattr(os, "sched_getaffinity")
                else None
            )
        finally:
            await poll.close()
            await embedded.stop()
    me = proc_status_kib()
    return {
        "wall_s": round(time.monotonic() - started, 1),
        "service_settings": bench.settings_seen,
        "raw_insert": raw,
        "new_lead": new_lead,
        "steady": steady,
        "rss_mib": {
            "service_now": mib(me.get("VmRSS", 0)),
            "service_peak": mib(me.get("VmHWM", 0)),
            "store_now": mib(store_rss.get("VmRSS", 0)),
            "store_peak": mib(store_rss.get("VmHWM", 0)),
        },
        "store_affinity": store_affinity,
        "command_failures": counter.failed_count,
    }


# ---------------------------------------------------------------------------- summary


def headline(run: dict[str, Any]) -> dict[str, float]:
    """The flat figures a run is judged by (medians are taken over these)."""
    raw = run["raw_insert"]
    h: dict[str, float] = {
        "raw_sequential_docs_per_s": raw["sequential_docs_per_s"],
        "raw_concurrent_docs_per_s": raw["concurrent_docs_per_s"],
    }
    for path in ("new_lead", "steady"):
        c = run[path]["concurrent"]
        s = run[path]["sequential"]
        h[f"{path}_routed_per_s"] = c["routed_per_s"]
        h[f"{path}_acked_per_s"] = c["acked_per_s"]
        h[f"{path}_ratio_to_raw_sequential"] = round(
            c["routed_per_s"] / raw["sequential_docs_per_s"], 2
        )
        h[f"{path}_ratio_to_raw_concurrent"] = round(
            c["routed_per_s"] / raw["concurrent_docs_per_s"], 2
        )
        for q in ("p50", "p95", "p99"):
            h[f"{path}_ack_{q}_ms"] = c["ack_ms"][q]
        h[f"{path}_round_trips_per_msg"] = c["round_trips_per_msg"]
        h[f"{path}_round_trips_per_msg_c1"] = s["round_trips_per_msg"]
        h[f"{path}_mean_batch"] = c["batches"]["mean_size"]
        h[f"{path}_docs_written_per_msg"] = c["documents_written_per_msg"]
        h[f"{path}_service_cpu_ms_per_msg"] = c["cpu_ms_per_msg"]["service"]
        h[f"{path}_store_cpu_ms_per_msg"] = c["cpu_ms_per_msg"]["store"]
        h[f"{path}_c1_post_to_routed_p50_ms"] = s.get("post_to_routed_ms", {}).get("p50", 0.0)
        h[f"{path}_c1_routed_per_s"] = s["routed_per_s"]
        h[f"{path}_other_cpu_share"] = c["other_cpu_share"]
    h["service_rss_peak_mib"] = run["rss_mib"]["service_peak"]
    h["store_rss_mib"] = run["rss_mib"]["store_now"]
    return h


def median(values: list[float]) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else round((s[mid - 1] + s[mid]) / 2, 2)


def targets(m: dict[str, float]) -> list[dict[str, Any]]:
    raw = m["raw_sequential_docs_per_s"]
    out: list[dict[str, Any]] = []
    for path, label in (("new_lead", "new lead"), ("steady", "steady state")):
        v = m[f"{path}_routed_per_s"]
        out.append(
            {
                "target": f"{label}: routed msgs/s ≥ 0.5 × raw sequential insert rate",
                "value": v,
                "limit": round(0.5 * raw, 1),
                "pass": v >= 0.5 * raw,
            }
        )
    for path, label, limit in (("steady", "steady-state", 3.0), ("new_lead", "new-lead", 6.0)):
        v = m[f"{path}_round_trips_per_msg"]
        out.append(
            {
                "target": f"≤ {limit:g} store round trips per {label} message (concurrency C)",
                "value": v,
                "limit": limit,
                "pass": v <= limit,
            }
        )
    # Issue #23 (docs/scaling.md): new leads in batches, the steady state, memory.
    ratio = m["new_lead_routed_per_s"] / raw if raw else 0.0
    steady = m["steady_routed_per_s"] / raw if raw else 0.0
    cpu = m["new_lead_service_cpu_ms_per_msg"]
    rss = m["service_rss_peak_mib"]
    out += [
        {
            "target": "#23 steady state: routed msgs/s ≥ 0.3 × raw sequential insert rate",
            "value": round(steady, 3),
            "limit": 0.3,
            "pass": steady >= 0.3,
        },
        {
            "target": "#23 new lead: routed msgs/s ≥ 0.25 × raw sequential insert rate",
            "value": round(ratio, 3),
            "limit": 0.25,
            "pass": ratio >= 0.25,
        },
        {
            "target": "#23 new lead: service CPU ms / msg ≤ 2",
            "value": cpu,
            "limit": 2.0,
            "pass": cpu <= 2.0,
        },
        {
            "target": "#23 service RSS peak ≤ 150 MiB per process",
            "value": rss,
            "limit": 150.0,
            "pass": rss <= 150.0,
        },
    ]
    return out


def machine(pinned: bool, loadgen_affinity: list[int] | None) -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    commit: str | None = None
    dirty: bool | None = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        root = Path(__file__).resolve().parent.parent
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=root,
        )
        commit = head.stdout.strip() or None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=root,
        )
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_mib": mib(mem_kib),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "pymongo": version("pymongo"),
        "aiohttp": version("aiohttp"),
        "secantusdb": version("secantusdb"),
        "git_commit": commit,
        "git_uncommitted_changes": dirty,
        "affinity": {
            "pinned": pinned,
            "service": sorted(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else None,
            "load_generator": loadgen_affinity,
        },
    }


# ---------------------------------------------------------------------------- entry


def quiet_logging(log_path: Path) -> None:
    """The production JSON log setup (INFO), written to a file instead of stderr."""
    log_file = log_path.open("a")  # kept open for the life of the process
    with contextlib.redirect_stderr(log_file):
        configure_logging("json", "INFO")
    structlog.contextvars.clear_contextvars()


async def run_all(opts: Options, progress: Callable[[str], None]) -> dict[str, Any]:
    os.environ[SECRET_ENV] = SECRET  # the api/site account's HMAC key, for this process only
    config = load_config(DEFAULT_CONFIG_DIR)
    can_pin = opts.pin and hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2
    cpus = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set()
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    gen = ctx.Process(
        target=loadgen.main,
        args=(child, LOADGEN_CPU if can_pin else None),
        name="omniroute-bench-loadgen",
        daemon=True,
    )
    gen.start()
    opts = dataclasses.replace(opts, pin=can_pin)
    runs: list[dict[str, Any]] = []
    try:
        loadgen_affinity: list[int] | None = await recv(parent)
        for i in range(opts.runs):
            progress(f"run {i + 1}/{opts.runs} …")
            runs.append(await one_run(opts, parent, config, cpus))
            progress(f"run {i + 1}/{opts.runs} done in {runs[-1]['wall_s']} s")
        info = machine(can_pin, loadgen_affinity)
    finally:
        loadgen.stop(parent, gen)
    heads = [headline(r) for r in runs]
    med = {k: median([h[k] for h in heads]) for k in heads[0]}
    spread = {k: [min(h[k] for h in heads), max(h[k] for h in heads)] for k in heads[0]}
    return {
        "schema": 1,
        "generated_at": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "machine": info,
        "options": {
            "messages": opts.messages,
            "concurrency": opts.concurrency,
            "sequential_messages": opts.sequential_messages,
            "steady_senders": opts.steady_senders,
            "raw_seconds": opts.raw_seconds,
            "runs": opts.runs,
            "quick": opts.quick,
        },
        "store": {
            "kind": "embedded SecantusDB (secantusd-py), file-backed in a temp dir",
            "sync_on_commit": True,
            "cache_size": "64M",
            "write_concern": {"w": "majority", "j": True},
            "started_fresh_per_run": True,
        },
        "median": med,
        "spread": spread if len(runs) > 1 else None,
        "targets": targets(med),
        "runs": runs,
    }
