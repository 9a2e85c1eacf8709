"""Telephony: ``python -m benchmarks.calls`` — see docs/benchmarks.md.

How fast the service answers a PBX's "who is calling" (MegaFon ``cmd=contact``, in the
ring path) with many contacts stored, and how many call reports per second it takes.

1. A fresh ephemeral, file-backed embedded store (``--sync-on-commit``, as the other
   benchmarks start it). K contacts (default 100,000) are inserted with ``insert_many`` in
   batches, shaped as routing stores them (``identities: ["phone:+7…"]``, ``phones``,
   ``name``, ``responsible_id``) — the unique ``contacts.identities`` index is what the
   lookup reads.
2. The service runs in this process (``running_service`` behind an aiohttp ``AppRunner``,
   pinned to CPU 0) with a MegaFon account; a load generator in another process (pinned to
   CPU 1, aiohttp, keep-alive connections) posts the PBX's form-encoded requests.
3. **Who is calling**: ``cmd=contact`` POSTs (90 % numbers of stored contacts, 10 %
   unknown, in random order), in two kinds of load:

   * *open loop* — at a fixed arrival rate r (lookups/s; each sent on time whatever the
     previous ones are doing, up to 64 connections): the latency a PBX sees when that
     many calls start per second;
   * *closed loop* — c connections, each sending the next lookup as soon as it has its
     answer: the service and the store saturated, so latency ≈ c ÷ throughput.

   Latency is measured by the client (send → answer read): what the PBX waits for. Every
   answer is checked (the right contact's name, ``{}`` for an unknown number). A command
   listener on the service's client also times the store's ``find`` on ``contacts``.
4. **Call reports**: M calls, each INCOMING → ACCEPTED → COMPLETED → history (4 reports
   in order per call; C calls at once), half from stored contacts (a repeat lead each),
   half from unknown numbers (a new lead each). ``reports/s`` = 4M ÷ (last answer − first
   request); then the time until every call is routed. Checks: M calls, each ended and
   answered, M messages routed, one ``call.ended`` per call. Then M new calls in open loop
   at half that rate: the acknowledgement's p50/p99 on a service that is not saturated.
5. The same call phases against P service processes (``--processes``, default 1,3): P
   children sharing the store (``python -m benchmarks.calls --serve-child``: the service as
   step 2 runs it, not pinned), started and stopped as benchmarks/mix.py does its
   ``omniroute serve`` children, this process's service stopped first; report i goes to
   process i mod P (a round-robin balancer: a call's reports reach different processes).

The targets: lookup p99 ≤ 20 ms under concurrent load with 100k contacts (issue #5); call
report acknowledgement p99 at half the maximum rate ≤ 50 ms with 1 process, ≤ 80 ms with 3
(issue #23). The table prints PASS/MISS for each.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson
from aiohttp import web
from pymongo import monitoring

from benchmarks import loadgen, mix
from benchmarks.loadgen import cpu_seconds, pin, proc_status_kib
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
from config.loader import load_config
from config.models import AppConfig, ChannelAccount
from config.settings import DEFAULT_CONFIG_DIR, Settings
from crm_store.embedded import EmbeddedStore, pick_free_port
from crm_store.store import Document, Store
from ingest.app import create_app
from ingest.service import running_service

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "calls.json"
LOG_NAME = "omniroute-bench-calls.log"
DB_NAME = "bench_calls"
ACCOUNT = "bench"
TOKEN_ENV = "OMNIROUTE_BENCH_MEGAFON_CRM_TOKEN"
TOKEN = "bench-crm-token-0c1e2f"
SERVICE_CPU = 0
LOADGEN_CPU = 1
TARGET_P99_MS = 20.0
KNOWN_SHARE = 0.9
ROUTE_TIMEOUT_S = 600.0


@dataclass(frozen=True, slots=True)
class CallsOptions:
    contacts: int = 100_000
    insert_batch: int = 1000
    lookups: int = 2000  # per load level (open loop: at most rate × 10 s of them)
    rates: tuple[float, ...] = (20.0, 100.0, 200.0)  # open loop, lookups/s
    concurrency: tuple[int, ...] = (1, 8, 32)  # closed loop, connections
    calls: int = 300  # call lifecycles, 4 reports each
    calls_concurrency: int = 16
    # Call reports against 1 service process (this one) and against P processes (children
    # sharing the store), issue #23.
    processes: tuple[int, ...] = (1, 3)
    runs: int = 1
    pin: bool = True
    quick: bool = False


QUICK = CallsOptions(lookups=500, calls=100, quick=True)
OPEN_LOOP_CONNECTIONS = 64
OPEN_LOOP_SECONDS = 10.0


def phone(n: int) -> str:
    """The E.164 number of stored contact ``n`` (n < 10**7)."""
    return f"+7900{n:07d}"


def unknown_phone(n: int) -> str:
    return f"+7901{n:07d}"


# ---------------------------------------------------------------------------- load generator


@dataclass(frozen=True, slots=True)
class PostJob:
    url: str
    # Request bodies, grouped: one group is posted in order by one connection at a time.
    groups: list[list[bytes]]
    concurrency: int
    keep_bodies: bool = False
    # Open loop: start group i at i ÷ rate seconds, whatever the others are doing.
    rate: float | None = None
    # Several service processes: request i (in group order) goes to urls[i % len(urls)],
    # as a round-robin load balancer in front of them would send it.
    urls: tuple[str, ...] = ()

    def url_of(self, i: int) -> str:
        return self.urls[i % len(self.urls)] if self.urls else self.url


@dataclass(slots=True)
class PostResult:
    first_start: float = 0.0
    last_end: float = 0.0
    latencies: list[float] = field(default_factory=list)  # flattened in group order
    statuses: dict[int, int] = field(default_factory=dict)
    bodies: list[bytes] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    cpu_s: float = 0.0


async def _post_all(job: PostJob) -> PostResult:
    cpu0 = cpu_seconds()
    offsets: list[int] = []
    total = 0
    for g in job.groups:
        offsets.append(total)
        total += len(g)
    result = PostResult(latencies=[0.0] * total, bodies=[b""] * (total if job.keep_bodies else 0))
    statuses: Counter[int] = Counter()
    connector = aiohttp.TCPConnector(limit=job.concurrency, limit_per_host=job.concurrency)
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    next_group = iter(range(len(job.groups)))
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=60)
    ) as http:

        async def warm(url: str) -> None:
            async with http.get(url.split("/webhooks/")[0] + "/healthz") as r:
                await r.read()

        await asyncio.gather(
            *(warm(u) for u in job.urls or (job.url,) for _ in range(job.concurrency))
        )

        async def send(g: int) -> None:
            for k, body in enumerate(job.groups[g]):
                i = offsets[g] + k
                started = time.monotonic()
                try:
                    async with http.post(job.url_of(i), data=body, headers=headers) as r:
                        answer = await r.read()
                        status = r.status
                except (aiohttp.ClientError, TimeoutError) as exc:
                    status, answer = 0, b""
                    if len(result.errors) < 10:
                        result.errors.append(f"{type(exc).__name__}: {exc}")
                ended = time.monotonic()
                result.latencies[i] = ended - started
                if job.keep_bodies:
                    result.bodies[i] = answer
                statuses[status] += 1
                if result.first_start == 0.0 or started < result.first_start:
                    result.first_start = started
                result.last_end = max(result.last_end, ended)

        async def worker() -> None:
            for g in next_group:
                await send(g)

        if job.rate is None:
            await asyncio.gather(*(worker() for _ in range(job.concurrency)))
        else:
            t0 = time.monotonic()
            tasks: list[asyncio.Task[None]] = []
            for n in range(len(job.groups)):
                await asyncio.sleep(max(0.0, t0 + n / job.rate - time.monotonic()))
                tasks.append(asyncio.create_task(send(n)))
            await asyncio.gather(*tasks)
    result.statuses = dict(statuses)
    result.cpu_s = cpu_seconds() - cpu0
    return result


def loadgen_main(conn: Connection, cpu: int | None) -> None:
    """Child entry point: post jobs until the parent sends None."""
    conn.send(pin(cpu))
    while True:
        job = conn.recv()
        if job is None:
            return
        conn.send(asyncio.run(_post_all(job)))


# ---------------------------------------------------------------------------- store timing


class FindTimer(monitoring.CommandListener):
    """Durations of the service client's ``find`` commands on ``contacts`` (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[tuple[Any, int], bool] = {}
        self.durations: list[float] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        wanted = event.command_name == "find" and event.command.get("find") == "contacts"
        with self._lock:
            self._pending[(event.connection_id, event.request_id)] = wanted

    def _done(
        self, event: monitoring.CommandSucceededEvent | monitoring.CommandFailedEvent
    ) -> None:
        with self._lock:
            if self._pending.pop((event.connection_id, event.request_id), False):
                self.durations.append(event.duration_micros / 1e6)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self._done(event)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._done(event)

    def take(self) -> list[float]:
        with self._lock:
            out, self.durations = self.durations, []
            return out


# ---------------------------------------------------------------------------- one run


def bench_config() -> AppConfig:
    os.environ[TOKEN_ENV] = TOKEN  # this process only
    cfg = load_config(DEFAULT_CONFIG_DIR)
    account = ChannelAccount(
        channel="megafon", account=ACCOUNT, source="phone", secret_env=TOKEN_ENV
    )
    channels = cfg.channels.model_copy(update={"accounts": [*cfg.channels.accounts, account]})
    return cfg.model_copy(update={"channels": channels})


def contact_docs(start: int, stop: int) -> list[Document]:
    users = ["ivan.petrov", "anna.smirnova", "dmitry.kozlov"]
    at = datetime.now(UTC)
    return [
        {
            "_id": f"bench-contact-{n:07d}",
            "identities": [f"phone:{phone(n)}"],
            "phones": [phone(n)],
            "emails": [],
            "name": f"Customer {n}",
            "responsible_id": users[n % len(users)],
            "origin": "import",
            "spam": False,
            "created_at": at,
        }
        for n in range(start, stop)
    ]


def form(**fields: str) -> bytes:
    return urlencode({"crm_token": TOKEN, **fields}).encode()


@dataclass(slots=True)
class Served:
    url: str
    timer: FindTimer
    store: Store


def webhook_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/webhooks/megafon/{ACCOUNT}"


@asynccontextmanager
async def serving(uri: str, config: AppConfig, port: int | None = None) -> AsyncIterator[Served]:
    timer = FindTimer()
    store = Store.open(uri, DB_NAME, event_listeners=[timer])
    port = port or pick_free_port()
    settings = Settings(mongodb_uri=uri, db_name=DB_NAME, host="127.0.0.1", port=port)
    try:
        async with running_service(settings, config, store) as svc:
            runner = web.AppRunner(create_app(svc), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            try:
                yield Served(webhook_url(port), timer, store)
            finally:
                await runner.cleanup()
    finally:
        await store.close()


# ---------------------------------------------------------------------------- service children

SERVE_CHILD = "--serve-child"


def serve_child(argv: Sequence[str]) -> int:
    """Child entry point (``python -m benchmarks.calls --serve-child URI PORT CPUS LOG``):
    the service as this module runs it in-process (the same account and configuration),
    until SIGTERM. CPUS: the CPUs it may use (comma-separated; the parent is pinned)."""
    uri, port, cpus, log = argv
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
    quiet_logging(Path(log))

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        async with serving(uri, bench_config(), int(port)):
            await stop.wait()

    asyncio.run(serve())
    return 0


async def start_services(uri: str, count: int, tmp: Path, cpus: set[int]) -> list[mix.Child]:
    """``count`` service processes on the store at ``uri`` (as benchmarks/mix.py starts
    its ``omniroute serve`` children; stopped with ``mix.stop_children``)."""
    children: list[mix.Child] = []
    for _ in range(count):
        port = pick_free_port()
        log = tmp / f"service-{port}.log"
        argv = [SERVE_CHILD, uri, str(port), ",".join(map(str, sorted(cpus))), str(log)]
        with log.open("ab") as out:
            popen = subprocess.Popen(  # noqa: ASYNC220 - returns at once
                [sys.executable, "-m", "benchmarks.calls", *argv],
                cwd=mix.ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        children.append(mix.Child(port, log, log, popen))
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as http:
        for c in children:
            while True:
                if c.popen.poll() is not None:
                    await mix.stop_children(children)
                    raise RuntimeError(f"service exited: {c.log.read_text()[-3000:]}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{c.base}/healthz") as r:
                        if r.status == 200:
                            break
                if time.monotonic() > deadline:
                    await mix.stop_children(children)
                    raise RuntimeError(f"service on {c.port} not healthy in 60 s")
                await asyncio.sleep(0.1)
    return children


async def post(conn: Connection, job: PostJob) -> PostResult:
    conn.send(job)
    result: PostResult = await recv(conn)
    return result


def stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0}
    return {
        "p50": ms(percentile(values, 50)),
        "p95": ms(percentile(values, 95)),
        "p99": ms(percentile(values, 99)),
        "max": ms(max(values)),
        "mean": ms(sum(values) / len(values)),
    }


@dataclass(slots=True)
class Usage:
    store_pid: int | None
    cpu0: tuple[float, float, float] = (0.0, 0.0, 0.0)
    wall0: float = 0.0
    # The service's processes when they are children; none: this process.
    service_pids: tuple[int, ...] = ()

    def service_cpu(self) -> float:
        if not self.service_pids:
            return cpu_seconds_self()
        return sum(cpu_seconds_of(p) for p in self.service_pids)

    def start(self) -> None:
        self.cpu0 = (self.service_cpu(), cpu_seconds_of(self.store_pid), system_busy_seconds())
        self.wall0 = time.monotonic()

    def end(self, n: int, loadgen_cpu_s: float) -> dict[str, Any]:
        cpu1 = (self.service_cpu(), cpu_seconds_of(self.store_pid), system_busy_seconds())
        service, store = cpu1[0] - self.cpu0[0], cpu1[1] - self.cpu0[1]
        wall = time.monotonic() - self.wall0
        foreign = cpu1[2] - self.cpu0[2] - service - store - loadgen_cpu_s
        return {
            "cpu_ms_per_request": {
                "service": round(service * 1000 / max(1, n), 3),
                "store": round(store * 1000 / max(1, n), 3),
                "load_generator": round(loadgen_cpu_s * 1000 / max(1, n), 3),
            },
            "other_cpu_share": round(max(0.0, foreign / (wall * (os.cpu_count() or 1))), 3),
        }


def level_key(c: int | None, rate: float | None) -> str:
    return f"r{rate:g}" if rate is not None else f"c{c}"


async def lookups(
    opts: CallsOptions,
    conn: Connection,
    s: Served,
    rng: random.Random,
    pid: int | None,
    *,
    c: int | None = None,
    rate: float | None = None,
) -> dict[str, Any]:
    """One load level: ``c`` connections in a closed loop, or ``rate`` lookups/s."""
    count = opts.lookups if rate is None else min(opts.lookups, int(rate * OPEN_LOOP_SECONDS))
    asked: list[tuple[str, str | None]] = []
    for _ in range(count):
        if rng.random() < KNOWN_SHARE:
            n = rng.randrange(opts.contacts)
            asked.append((phone(n).lstrip("+"), f"Customer {n}"))
        else:
            asked.append((unknown_phone(rng.randrange(10**6)).lstrip("+"), None))
    key = level_key(c, rate)
    bodies = [[form(cmd="contact", phone=p, callid=f"{key}-{i}")] for i, (p, _) in enumerate(asked)]
    s.timer.take()
    usage = Usage(pid)
    usage.start()
    connections = c if c is not None else OPEN_LOOP_CONNECTIONS
    result = await post(conn, PostJob(s.url, bodies, connections, keep_bodies=True, rate=rate))
    out = usage.end(count, result.cpu_s)
    finds = s.timer.take()
    wrong = 0
    for (_, name), body in zip(asked, result.bodies, strict=True):
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            wrong += 1
            continue
        if (answer.get("contact_name") if name else answer) != (name if name else {}):
            wrong += 1
    elapsed = result.last_end - result.first_start
    lat = result.latencies
    return {
        "level": key,
        "load": "open" if rate is not None else "closed",
        "rate_per_s": rate,
        "concurrency": c,
        "lookups": count,
        "known_share": KNOWN_SHARE,
        "statuses": {str(k): v for k, v in sorted(result.statuses.items())},
        "errors": result.errors,
        "wrong_answers": wrong,
        "lookups_per_s": round(count / elapsed, 1) if elapsed > 0 else 0.0,
        "latency_ms": stats(lat),
        "store_find_ms": stats(finds),
        "store_finds": len(finds),
        "target_p99_ms": TARGET_P99_MS,
        "pass": ms(percentile(lat, 99)) <= TARGET_P99_MS,
        **out,
    }


def call_reports(i: int, number: str) -> list[bytes]:
    callid = f"bench-call-{i:06d}"
    digits = number.lstrip("+")
    common = {"phone": digits, "diversion": "74951234567", "callid": callid, "user": "smirnova"}
    return [
        form(cmd="event", type="INCOMING", direction="in", **common),
        form(cmd="event", type="ACCEPTED", **common),
        form(cmd="event", type="COMPLETED", **common),
        form(
            cmd="history",
            type="in",
            status="Success",
            start="20241120T101500Z",
            duration="95",
            link=f"https://pbx.example/rec/{callid}.mp3",
            **common,
        ),
    ]


async def counts(feeder: Store) -> dict[str, int]:
    calls = feeder["calls"]
    return {
        "calls": await calls.count_documents({}),
        "ended_answered": await calls.count_documents(
            {"status.value": "ended", "disposition.value": "answered"}
        ),
        "messages": await feeder.messages.count_documents({"provider_id": {"$regex": "^call:"}}),
        "call_ended_events": await feeder.events.count_documents({"type": "call.ended"}),
        "leads": await feeder.leads.count_documents({}),
        "intake_failed": await feeder.intake.count_documents({"status": "failed"}),
    }


def call_groups(opts: CallsOptions, first: int) -> list[list[bytes]]:
    """Calls ``first`` … ``first + opts.calls - 1``: even ones from stored contacts (a
    repeat lead each), odd ones from unknown numbers (a new lead each)."""
    return [
        call_reports(i, phone(i % opts.contacts) if i % 2 == 0 else unknown_phone(i))
        for i in range(first, first + opts.calls)
    ]


async def settle(feeder: Store) -> tuple[float, float]:
    """Wait until every call message is routed, then every call announced; when each was."""
    deadline = time.monotonic() + ROUTE_TIMEOUT_S
    while await feeder.intake.count_documents({"status": "pending"}):
        if time.monotonic() > deadline:
            raise RuntimeError("call messages not routed in time")
        await asyncio.sleep(0.05)
    routed_at = time.monotonic()
    # The call events are announced after the 2xx (ingest/call_announcer.py).
    while await feeder["calls"].count_documents({"announce_due": True}):
        if time.monotonic() > deadline:
            raise RuntimeError("call events not announced in time")
        await asyncio.sleep(0.05)
    return routed_at, time.monotonic()


async def call_events(
    opts: CallsOptions,
    conn: Connection,
    urls: Sequence[str],
    feeder: Store,
    pid: int | None,
    *,
    first: int = 0,
    service_pids: Sequence[int] = (),
) -> dict[str, Any]:
    """Closed loop (the maximum rate), checks, then open loop at half of it; ``urls``: one
    per service process (``service_pids``: the children's, none for this process)."""
    processes = len(urls)
    groups = call_groups(opts, first)
    n = sum(len(g) for g in groups)
    await settle(feeder)  # what an earlier phase left
    before = await counts(feeder)
    usage = Usage(pid, service_pids=tuple(service_pids))
    usage.start()
    job = PostJob(
        urls[0], groups, opts.calls_concurrency, urls=tuple(urls) if processes > 1 else ()
    )
    result = await post(conn, job)
    out = usage.end(n, result.cpu_s)
    routed_at, announced_at = await settle(feeder)
    after = await counts(feeder)
    checks: dict[str, Any] = {k: after[k] - before[k] for k in after}
    ok = (
        result.statuses.get(200, 0) == n
        and checks["calls"] == checks["ended_answered"] == opts.calls
        and checks["messages"] == checks["call_ended_events"] == opts.calls
        and after["intake_failed"] == 0
    )
    elapsed = result.last_end - result.first_start
    max_rate = n / elapsed if elapsed > 0 else 0.0
    half = await reports_at_half_rate(
        opts, conn, urls, max_rate, first=first + opts.calls, pid=pid, service_pids=service_pids
    )
    # Its calls too: each routed and announced, their reports all acknowledged.
    await settle(feeder)
    final = await counts(feeder)
    ok = (
        ok
        and half.get("statuses") == {"200": n}
        and final["calls"] - after["calls"] == opts.calls
        and final["call_ended_events"] - after["call_ended_events"] == opts.calls
        and final["intake_failed"] == 0
    )
    return {
        "processes": processes,
        "half_rate": half,
        "calls": opts.calls,
        "reports": n,
        "concurrency": opts.calls_concurrency,
        "statuses": {str(k): v for k, v in sorted(result.statuses.items())},
        "errors": result.errors,
        "reports_per_s": round(n / elapsed, 1) if elapsed > 0 else 0.0,
        "ack_ms": stats(result.latencies),
        "calls_routed_per_s": round(opts.calls / (routed_at - result.first_start), 1),
        "routing_lag_ms": ms(routed_at - result.last_end),
        "announce_lag_ms": ms(max(announced_at, routed_at) - result.last_end),
        "checks": {**checks, "ok": ok},
        **out,
    }


# Issue #23: a call report's acknowledgement p99 at half the maximum rate, with 1 service
# process and with 3 (more processes, more writers of one store: a looser bound).
TARGET_REPORT_ACK_P99_MS = 50.0
TARGET_REPORT_ACK_P99_MS_MULTI = 80.0


def report_target_ms(processes: int) -> float:
    return TARGET_REPORT_ACK_P99_MS if processes <= 1 else TARGET_REPORT_ACK_P99_MS_MULTI


async def reports_at_half_rate(
    opts: CallsOptions,
    conn: Connection,
    urls: Sequence[str],
    max_rate: float,
    *,
    first: int,
    pid: int | None,
    service_pids: Sequence[int] = (),
) -> dict[str, Any]:
    """New calls (the same mix) in open loop at half the reports/s the closed loop reached:
    each call's 4 reports in order on one connection, calls started on time whatever the
    others are doing. The latency a PBX sees on a service that is not saturated."""
    if max_rate <= 0:
        return {}
    rate_calls = max_rate / 2 / 4
    groups = call_groups(opts, first)
    target = report_target_ms(len(urls))
    usage = Usage(pid, service_pids=tuple(service_pids))
    usage.start()
    job = PostJob(urls[0], groups, 64, rate=rate_calls, urls=tuple(urls) if len(urls) > 1 else ())
    result = await post(conn, job)
    out = usage.end(sum(len(g) for g in groups), result.cpu_s)
    return {
        "reports_per_s_target": round(max_rate / 2, 1),
        "statuses": {str(k): v for k, v in sorted(result.statuses.items())},
        "ack_ms": stats(result.latencies),
        "target_p99_ms": target,
        "pass": ms(percentile(result.latencies, 99)) <= target,
        **out,
    }


def report_progress(r: dict[str, Any]) -> str:
    half = r.get("half_rate") or {}
    return (
        f"  call reports, {r['processes']} process(es): {r['reports_per_s']}/s; at half "
        f"that rate ack p99 {(half.get('ack_ms') or {}).get('p99')} ms"
    )


async def one_run(
    opts: CallsOptions,
    conn: Connection,
    config: AppConfig,
    cpus: set[int],
    progress: Callable[[str], None],
) -> dict[str, Any]:
    started = time.monotonic()
    rng = random.Random(20241120)
    with tempfile.TemporaryDirectory(prefix="omniroute-bench-calls-") as tmp:
        embedded = EmbeddedStore(storage_path=Path(tmp) / "mongo")
        if opts.pin:  # the store keeps every CPU; this process is pinned afterwards
            pin_all_threads(cpus)
        await embedded.start()
        if opts.pin:
            pin_all_threads({SERVICE_CPU})
        feeder = Store.open(embedded.uri, DB_NAME)
        try:
            await feeder.ensure_indexes()
            t = time.monotonic()
            for i in range(0, opts.contacts, opts.insert_batch):
                docs = contact_docs(i, min(opts.contacts, i + opts.insert_batch))
                await feeder.contacts.insert_many(docs, ordered=False)
                # Their numbers in identities too (crm_store/identities.py), as routing has them.
                keys = [{"_id": d["identities"][0], "contact_id": d["_id"]} for d in docs]
                await feeder["identities"].insert_many(keys, ordered=False)
            insert_s = time.monotonic() - t
            progress(f"  {opts.contacts:,} contacts inserted in {insert_s:.1f} s")
            async with serving(embedded.uri, config) as s:
                levels = []
                for rate in opts.rates:
                    levels.append(await lookups(opts, conn, s, rng, embedded.pid, rate=rate))
                    progress(f"  lookups at {rate:g}/s: p99 {levels[-1]['latency_ms']['p99']} ms")
                for c in opts.concurrency:
                    levels.append(await lookups(opts, conn, s, rng, embedded.pid, c=c))
                    progress(f"  lookups at c={c}: p99 {levels[-1]['latency_ms']['p99']} ms")
                reports: list[dict[str, Any]] = []
                if 1 in opts.processes:
                    reports.append(await call_events(opts, conn, [s.url], feeder, embedded.pid))
                    progress(report_progress(reports[-1]))
            # Then the same phases against P service processes sharing the store (this
            # process's service stopped; each new call numbered after the previous ones).
            for procs in (p for p in opts.processes if p > 1):
                children = await start_services(embedded.uri, procs, Path(tmp), cpus)
                try:
                    reports.append(
                        await call_events(
                            opts,
                            conn,
                            [webhook_url(c.port) for c in children],
                            feeder,
                            embedded.pid,
                            first=2 * opts.calls * len(reports),
                            service_pids=[c.popen.pid for c in children],
                        )
                    )
                finally:
                    await mix.stop_children(children)
                progress(report_progress(reports[-1]))
            store_rss = proc_status_kib(embedded.pid or "self")
            store_affinity = (
                sorted(os.sched_getaffinity(embedded.pid))
                if embedded.pid and hasattr(os, "sched_getaffinity")
                else None
            )
        finally:
            await feeder.close()
            await embedded.stop()
    return {
        "wall_s": round(time.monotonic() - started, 1),
        "contacts": opts.contacts,
        "insert": {
            "batch": opts.insert_batch,
            "seconds": round(insert_s, 1),
            "docs_per_s": round(opts.contacts / insert_s, 1),
        },
        "lookups": levels,
        # By service processes (1: this process, pinned; more: children, not pinned).
        "call_reports": reports,
        "store_rss_mib": mib(store_rss.get("VmRSS", 0)),
        "service_rss_peak_mib": mib(proc_status_kib().get("VmHWM", 0)),
        "store_affinity": store_affinity,
    }


# ---------------------------------------------------------------------------- summary


def headline(run: dict[str, Any]) -> dict[str, float]:
    h: dict[str, float] = {"insert_docs_per_s": run["insert"]["docs_per_s"]}
    for lv in run["lookups"]:
        p = f"lookup_{lv['level']}_"
        for pct in ("p50", "p95", "p99", "max"):
            h[p + pct + "_ms"] = lv["latency_ms"][pct]
        h[p + "per_s"] = lv["lookups_per_s"]
        h[p + "store_find_p50_ms"] = lv["store_find_ms"]["p50"]
        h[p + "store_find_p99_ms"] = lv["store_find_ms"]["p99"]
        h[p + "other_cpu_share"] = lv["other_cpu_share"]
    for e in run["call_reports"]:
        # 1 process: the names the table had before the 3-process form; P: "pP_…".
        p = "" if e["processes"] == 1 else f"p{e['processes']}_"
        h[p + "reports_per_s"] = e["reports_per_s"]
        h[p + "report_ack_p50_ms"] = e["ack_ms"]["p50"]
        h[p + "report_ack_p99_ms"] = e["ack_ms"]["p99"]
        half = e.get("half_rate") or {}
        h[p + "report_half_rate_per_s"] = half.get("reports_per_s_target", 0.0)
        h[p + "report_half_rate_ack_p50_ms"] = (half.get("ack_ms") or {}).get("p50", 0.0)
        h[p + "report_half_rate_ack_p99_ms"] = (half.get("ack_ms") or {}).get("p99", 0.0)
        h[p + "calls_routed_per_s"] = e["calls_routed_per_s"]
        h[p + "reports_other_cpu_share"] = e["other_cpu_share"]
        h[p + "report_half_rate_other_cpu_share"] = half.get("other_cpu_share", 0.0)
    return h


async def run_calls(
    opts: CallsOptions, progress: Callable[[str], None], cpus: set[int] | None = None
) -> dict[str, Any]:
    can_pin = opts.pin and hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2
    if cpus is None:
        cpus = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set()
    config = bench_config()
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    gen = ctx.Process(
        target=loadgen_main,
        args=(child, LOADGEN_CPU if can_pin else None),
        name="omniroute-bench-calls-loadgen",
        daemon=True,
    )
    gen.start()
    opts = dataclasses.replace(opts, pin=can_pin)
    runs: list[dict[str, Any]] = []
    try:
        loadgen_affinity: list[int] | None = await recv(parent)
        for i in range(opts.runs):
            progress(f"calls run {i + 1}/{opts.runs} …")
            runs.append(await one_run(opts, parent, config, cpus, progress))
            progress(f"calls run {i + 1}/{opts.runs} done in {runs[-1]['wall_s']} s")
        info = machine(can_pin, loadgen_affinity)
    finally:
        loadgen.stop(parent, gen)
    heads = [headline(r) for r in runs]
    med = {k: median([h[k] for h in heads]) for k in heads[0]}
    spread = {k: [min(h[k] for h in heads), max(h[k] for h in heads)] for k in heads[0]}
    correct = all(
        all(e["checks"]["ok"] for e in r["call_reports"])
        and all(
            lv["wrong_answers"] == 0 and lv["statuses"] == {"200": lv["lookups"]}
            for lv in r["lookups"]
        )
        for r in runs
    )
    return {
        "schema": 1,
        "benchmark": "calls",
        "generated_at": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "machine": info,
        "options": {
            "contacts": opts.contacts,
            "insert_batch": opts.insert_batch,
            "lookups_per_level": opts.lookups,
            "rates_per_s": list(opts.rates),
            "concurrency": list(opts.concurrency),
            "calls": opts.calls,
            "calls_concurrency": opts.calls_concurrency,
            "processes": list(opts.processes),
            "runs": opts.runs,
            "quick": opts.quick,
        },
        "store": {
            "kind": "embedded SecantusDB (secantusd-py), file-backed in a temp dir",
            "sync_on_commit": True,
            "cache_size": EmbeddedStore(storage_path=None).cache_size,
            "write_concern": {"w": "majority", "j": True},
            "started_fresh_per_run": True,
        },
        "correct": correct,
        "median": med,
        "spread": spread if len(runs) > 1 else None,
        "targets": [
            {
                "target": f"who-is-calling p99 ≤ {TARGET_P99_MS:g} ms, {describe(key)}, "
                f"{opts.contacts:,} contacts",
                "value": med[f"lookup_{key}_p99_ms"],
                "limit": TARGET_P99_MS,
                "pass": med[f"lookup_{key}_p99_ms"] <= TARGET_P99_MS,
            }
            for key in level_keys(opts.rates, opts.concurrency)
        ]
        + [
            {
                "target": f"call report ack p99 ≤ {report_target_ms(procs):g} ms at half the "
                f"max rate, {procs} service process(es), {opts.contacts:,} contacts",
                "value": med[key],
                "limit": report_target_ms(procs),
                "pass": med[key] <= report_target_ms(procs),
            }
            for procs in opts.processes
            if (key := report_key(procs, "report_half_rate_ack_p99_ms")) in med
        ],
        "runs": runs,
    }


def report_key(processes: int, name: str) -> str:
    return name if processes == 1 else f"p{processes}_{name}"


def level_keys(rates: Sequence[float], concurrency: Sequence[int]) -> list[str]:
    return [level_key(None, r) for r in rates] + [level_key(c, None) for c in concurrency]


def describe(key: str) -> str:
    if key.startswith("r"):
        return f"{key[1:]} lookups/s (open loop)"
    return f"{key[1:]} connections (closed loop)"


def table(result: dict[str, Any]) -> str:
    m: dict[str, float] = result["median"]
    spread: dict[str, list[float]] | None = result["spread"]
    o = result["options"]
    mach = result["machine"]

    def f(key: str, unit: str = "") -> str:
        text = num(m[key]) + unit
        if spread:
            lo, hi = spread[key]
            text += f" [{num(lo)}–{num(hi)}]"
        return text

    lines: list[str] = []
    add = lines.append
    add(
        f"omniroute telephony benchmark · {result['generated_at']} · {mach['cpu_count']} CPU "
        f"({mach['cpu_model'] or 'unknown CPU'}) · Python {mach['python']} · "
        f"pymongo {mach['pymongo']} · SecantusDB {mach['secantusdb']}"
    )
    if mach.get("git_commit"):
        dirty = " + uncommitted changes" if mach.get("git_uncommitted_changes") else ""
        add(f"code: {mach['git_commit']}{dirty}")
    add(
        "store: embedded SecantusDB, file-backed in a temp dir, --sync-on-commit, "
        "w=majority j=true, fresh per run"
    )
    n_runs = o["runs"]
    add(
        f"{n_runs} run(s){' — medians [min–max]' if n_runs > 1 else ''}; "
        f"{o['contacts']:,} contacts (insert_many, batches of {o['insert_batch']}): "
        f"{f('insert_docs_per_s', ' docs/s')}"
    )
    add("")
    add(
        f"Who is calling (MegaFon cmd=contact), up to {o['lookups_per_level']} lookups per "
        "level (open loop: 10 s)"
    )
    add(
        f"  {'load':<22}{'p50':>8}{'p95':>8}{'p99':>20}{'max':>8}"
        f"{'lookups/s':>11}{'store find p50/p99':>21}   target"
    )
    for key in level_keys(o["rates_per_s"], o["concurrency"]):
        p = f"lookup_{key}_"
        verdict = "PASS" if m[p + "p99_ms"] <= TARGET_P99_MS else "MISS"
        label = f"{key[1:]}/s open loop" if key.startswith("r") else f"{key[1:]} conn. closed"
        add(
            f"  {label:<22}{num(m[p + 'p50_ms']):>8}{num(m[p + 'p95_ms']):>8}"
            f"{f(p + 'p99_ms'):>20}{num(m[p + 'max_ms']):>8}{num(m[p + 'per_s']):>11}"
            f"{num(m[p + 'store_find_p50_ms']) + ' / ' + num(m[p + 'store_find_p99_ms']):>21}"
            f"   {verdict} (p99 ≤ {TARGET_P99_MS:g} ms)"
        )
    add("  (ms, client side: POST sent → answer read)")
    add("")
    add(
        f"Call reports: {o['calls']} calls × 4 reports, {o['calls_concurrency']} calls at once "
        "(closed loop), then as many new calls in open loop at half that rate"
    )
    procs = [p for p in o.get("processes", [1]) if report_key(p, "reports_per_s") in m]
    w = 22
    add(f"  {'service processes':<36}" + "".join(f"{p:<{w}}" for p in procs))

    def row(label: str, cell: Callable[[int], str]) -> None:
        add(f"  {label:<36}" + "".join(f"{cell(p):<{w}}" for p in procs))

    def k(p: int, name: str) -> str:
        return report_key(p, name)

    row("reports acknowledged/s", lambda p: f(k(p, "reports_per_s")))
    row(
        "ack latency p50 / p99",
        lambda p: f"{num(m[k(p, 'report_ack_p50_ms')])} / {num(m[k(p, 'report_ack_p99_ms')])} ms",
    )
    row("calls routed/s (lead per call)", lambda p: f(k(p, "calls_routed_per_s")))
    row("half rate, open loop (reports/s)", lambda p: num(m[k(p, "report_half_rate_per_s")]))
    row(
        "  ack p50 / p99",
        lambda p: (
            f"{num(m.get(k(p, 'report_half_rate_ack_p50_ms'), 0.0))} / "
            f"{f(k(p, 'report_half_rate_ack_p99_ms'))} ms"
        ),
    )

    def report_verdict(p: int) -> str:
        ok = m[k(p, "report_half_rate_ack_p99_ms")] <= report_target_ms(p)
        return f"{'PASS' if ok else 'MISS'} (p99 ≤ {report_target_ms(p):g} ms)"

    row("  target", report_verdict)
    row(
        "  other processes' CPU share",
        lambda p: f"{m.get(k(p, 'report_half_rate_other_cpu_share'), 0.0):.0%}",
    )
    add("  (1 process: the service in this process, pinned; more: child processes, not pinned)")
    shares = [v for k, v in m.items() if k.endswith("other_cpu_share")]
    if shares and max(shares) > 0.1:
        add("")
        add(
            f"note: other processes used up to {max(shares):.0%} of the machine's CPU during "
            "some phases — figures are noisy"
        )
    add("")
    add(f"correctness: {'OK' if result['correct'] else 'FAILED'}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- entry


def add_arguments(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """The sizes (``prefix``: ``"calls-"`` inside ``python -m benchmarks``, quick form)."""
    d, q = CallsOptions(), QUICK

    def both(full: object, quick: object) -> str:
        return f"{full}; quick {quick}" if prefix == "" else f"{quick}"

    p.add_argument(
        f"--{prefix}contacts",
        type=int,
        help=f"contacts in the store ({both(d.contacts, q.contacts)})",
    )
    p.add_argument(
        f"--{prefix}lookups",
        type=int,
        help=f"lookups per concurrency level ({both(d.lookups, q.lookups)})",
    )
    p.add_argument(
        f"--{prefix}rates",
        help="comma-separated open-loop lookup rates, lookups/s "
        f"({both(','.join(f'{r:g}' for r in d.rates), ','.join(f'{r:g}' for r in q.rates))})",
    )
    p.add_argument(
        f"--{prefix}concurrency",
        help="comma-separated closed-loop lookup connection counts "
        f"({both(','.join(map(str, d.concurrency)), ','.join(map(str, q.concurrency)))})",
    )
    p.add_argument(
        f"--{prefix}calls", type=int, help=f"call lifecycles posted ({both(d.calls, q.calls)})"
    )
    p.add_argument(
        f"--{prefix}processes",
        help="comma-separated service process counts of the call-report phases "
        f"({both(','.join(map(str, d.processes)), ','.join(map(str, q.processes)))})",
    )


def options_from(
    args: argparse.Namespace, *, quick: bool, runs: int, pin: bool, prefix: str = ""
) -> CallsOptions:
    base = QUICK if quick else CallsOptions()
    attr = prefix.replace("-", "_")

    def arg(name: str) -> Any:
        return getattr(args, attr + name)

    levels = arg("concurrency")
    rates = arg("rates")
    procs = arg("processes")
    opts = dataclasses.replace(
        base,
        rates=tuple(float(x) for x in rates.split(",")) if rates else base.rates,
        contacts=arg("contacts") if arg("contacts") is not None else base.contacts,
        lookups=arg("lookups") if arg("lookups") is not None else base.lookups,
        concurrency=tuple(int(x) for x in levels.split(",")) if levels else base.concurrency,
        calls=arg("calls") if arg("calls") is not None else base.calls,
        processes=tuple(sorted({int(x) for x in procs.split(",")})) if procs else base.processes,
        runs=max(1, runs),
        pin=pin,
    )
    if min(opts.contacts, opts.lookups, opts.calls, *opts.concurrency, *opts.rates) < 1:
        raise SystemExit(f"--{prefix}contacts, lookups, rates, concurrency, calls must be ≥ 1")
    if not opts.processes or min(opts.processes) < 1:
        raise SystemExit(f"--{prefix}processes must be ≥ 1")
    if opts.contacts >= 10**7:
        raise SystemExit(f"--{prefix}contacts must be below 10,000,000")
    return opts


def run_and_report(opts: CallsOptions, out: Path, cpus: set[int] | None = None) -> dict[str, Any]:
    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    result = asyncio.run(run_calls(opts, progress, cpus))
    write_json(result, out)
    print(table(result))
    print(f"\nJSON: {out}")
    return result


def main(argv: list[str] | None = None) -> int:
    args_ = sys.argv[1:] if argv is None else argv
    if args_[:1] == [SERVE_CHILD]:
        return serve_child(args_[1:])
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.calls",
        description=(
            "Telephony benchmark: who-is-calling lookups with many contacts stored, and call "
            "reports per second with 1 and 3 service processes. An embedded file-backed "
            "store, the service in this process (then in child processes), a load generator "
            "in another. Prints a table and writes JSON."
        ),
    )
    p.add_argument("--quick", action="store_true", help="fewer lookups and calls")
    add_arguments(p)
    p.add_argument("--runs", type=int, default=1, help="repeat everything; report medians")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output file")
    args = p.parse_args(argv)
    opts = options_from(args, quick=args.quick, runs=args.runs, pin=not args.no_pin)
    log_path = Path(tempfile.gettempdir()) / LOG_NAME
    quiet_logging(log_path)
    print(f"service log: {log_path}", file=sys.stderr, flush=True)
    result = run_and_report(opts, args.out)
    return 0 if result["correct"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
