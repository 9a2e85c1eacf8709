"""Mixed load: ``python -m benchmarks.mix`` — see docs/benchmarks.md, "Mixed load".

Every channel we ingest (generic API, Telegram, WhatsApp, Viber, VK, Avito, the PBX call
webhook), real webhook formats over loopback HTTP, against 1 and 3 ``omniroute serve``
processes on one embedded store that already holds S contacts (10k, then 1M / 100k):

1. a fresh file-backed embedded store (``--sync-on-commit``, w=majority j=true); seeded
   up to each size with ``insert_many`` in big batches — contact, open lead, conversation
   and message per person, the documents routing itself writes
   (benchmarks/payloads.py: ``seed_documents``), topped up from one size to the next;
2. the store's raw ``insert_one`` rate of a stored intake record, in the same run (before
   and after the configurations); ``--seed-cache`` keeps the seeded store for later runs;
3. per size, per process count P: P service processes (``omniroute serve`` run through
   this module so that a PyMongo command listener counts each one's store commands —
   benchmarks/counting.py), the load spread round-robin over them, and a load generator in
   another process (aiohttp, keep-alive). Phases:

   * warm-up (a short mix, not measured);
   * one path at a time at concurrency C — **existing** conversations, **known** contacts
     in a new conversation, **new** senders, **duplicate** (re-posts of stored
     payloads) — for the store round trips and documents written per message of each;
   * **max**: the mix (70 % existing, 20 % known, 10 % new, 5 % duplicates) closed-loop
     at concurrency C: the maximum routed rate;
   * **max_bad**: the same with one request in five refused (oversize, malformed, wrongly
     signed), and **refused**: refusals alone, for what one costs;
   * **half**: the mix open-loop at half that rate: acknowledgement latency (and where it
     goes, from the services' histograms) and intake-to-routed latency;
   * **equal**: the mix open-loop at ``--equal-rate`` at every size and process count,
     which the size ratio compares;
   * checks: everything acknowledged routed once (intake ``routed``, its message stored),
     each new sender exactly one contact with one lead, no record pending or failed.

Latencies: acknowledgement = the load generator's send → response read (open loop: from
the scheduled send time); intake-to-routed = ``intake.routed_at − intake.received_at``,
both stamped by the service. Routed msgs/s = unique messages ÷ (last ``routed_at`` −
first send). RSS = VmHWM of each service process at the end of its configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from pymongo.errors import BulkWriteError

from benchmarks import loadgen, payloads
from benchmarks.counting import CommandCounter, per_message, split_background
from benchmarks.loadgen import cpu_seconds, proc_status_kib
from benchmarks.payloads import MixGenerator, Person, Request
from benchmarks.report import num, write_json
from benchmarks.run import (
    cpu_seconds_of,
    machine,
    mib,
    ms,
    percentile,
    recv,
    system_busy_seconds,
)
from config.loader import load_config
from config.models import AppConfig
from config.settings import DEFAULT_CONFIG_DIR
from crm_store.embedded import OPEN_S, EmbeddedStore, pick_free_port
from crm_store.intake import DUPLICATE_KEY
from crm_store.store import Store

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "mix.json"
DB_NAME = "bench_mix"
PHASE_TIMEOUT_S = 600.0
CHILD_FLAG = "--child-stats"
# SecantusDB keeps 100,000 oplog entries by default; past that, every write prunes the
# oldest entries by iterating from the start of the oplog, and a store that has taken a
# few hundred thousand writes slows to a crawl (seeding 100k people stalled at ~275k
# documents: py-spy shows Storage._prune_oplog_locked → _iter_oplog_oldest in every
# insert). The sizes here need millions of writes, so the store gets a cap above them.
OPLOG_MAX_ENTRIES = 50_000_000
OPLOG_RETENTION_S = 30 * 24 * 3600
# The equal-load phase: well under half of any measured maximum on the development VM
# (80–170 msgs/s), so every size and process count is compared at the same load.
EQUAL_RATE = 30.0


class BenchStore(EmbeddedStore):
    """The embedded store as ``omniroute serve`` starts it, with an oplog cap and a cache
    that hold the seeded sizes."""

    def __init__(self, *, storage_path: Path, oplog_max_entries: int, cache_size: str) -> None:
        super().__init__(storage_path=storage_path, cache_size=cache_size)
        self.oplog_max_entries = oplog_max_entries

    def command(self, executable: Path | str | None = None) -> list[str]:
        cmd = super().command() if executable is None else super().command(executable)
        if self.oplog_max_entries > 0:
            cmd += ["--oplog-max-entries", str(self.oplog_max_entries)]
            # Nor by age: a store seeded an hour before (--seed-cache) would otherwise
            # prune millions of entries while it is measured.
            cmd += ["--oplog-retention-seconds", str(OPLOG_RETENTION_S)]
        return cmd


# --------------------------------------------------------------------------- options


@dataclass(frozen=True, slots=True)
class Options:
    sizes: tuple[int, ...]
    processes: tuple[int, ...]
    concurrency: int
    path_messages: int
    max_messages: int
    half_seconds: float
    equal_rate: float
    raw_seconds: float
    seed_batch: int
    seed_messages: bool
    profile: Path | None
    oplog_max_entries: int
    cache_size: str
    quick: bool
    out: Path
    seed_cache: Path | None = None
    seed_only: bool = False


def parse_args(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.mix",
        description="Mixed load over every webhook channel, 1 and 3 service processes, "
        "at two store sizes. Prints a table and writes JSON.",
    )
    p.add_argument("--quick", action="store_true", help="small sizes and phases (~6–10 min)")
    p.add_argument(
        "--sizes", help="contacts pre-seeded, ascending, comma-separated (1000000 / 10000,100000)"
    )
    p.add_argument("--processes", default="1,3", help="service process counts (default 1,3)")
    p.add_argument("--concurrency", "-c", type=int, default=32, help="closed-loop connections")
    p.add_argument("--path-messages", type=int, help="messages per single-path phase (300/100)")
    p.add_argument("--max-messages", type=int, help="messages of the max-rate phase (1500/500)")
    p.add_argument("--half-seconds", type=float, help="length of the half-rate phase (30/12)")
    p.add_argument(
        "--equal-rate",
        type=float,
        default=EQUAL_RATE,
        help="msgs/s of the equal-load phase, the same at every size and process count "
        "(the size ratio compares it); for --half-seconds (default %(default)s)",
    )
    p.add_argument("--raw-seconds", type=float, default=3.0, help="raw insert measurement")
    p.add_argument("--seed-batch", type=int, default=5000, help="documents per insert_many")
    p.add_argument(
        "--no-seed-messages",
        action="store_true",
        help="seed no messages (contacts, leads, conversations only)",
    )
    p.add_argument(
        "--profile",
        type=Path,
        help="py-spy record the first service process and the store during the first "
        "max-rate phase; raw (collapsed) stacks into this directory",
    )
    p.add_argument(
        "--oplog-max-entries",
        type=int,
        default=OPLOG_MAX_ENTRIES,
        help="the store's oplog cap (default %(default)s; 0 = SecantusDB's own default, "
        "100,000, past which every write prunes the oplog and seeding stalls)",
    )
    p.add_argument(
        "--cache-size",
        default="2G",
        help="the store's WiredTiger cache (default %(default)s; omniroute's embedded default "
        "is 256M, with which seeding stalled at ~270,000 documents)",
    )
    p.add_argument(
        "--seed-cache",
        type=Path,
        help="keep a copy of the store right after seeding each size in this directory and "
        "start from it next time (seeding 1M people takes the best part of an hour)",
    )
    p.add_argument(
        "--seed-only",
        action="store_true",
        help="seed the sizes (into --seed-cache) and stop: no phases",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output file")
    a = p.parse_args(argv)
    if a.seed_only and a.seed_cache is None:
        raise SystemExit("--seed-only needs --seed-cache")
    quick = bool(a.quick)
    sizes = tuple(
        int(s) for s in (a.sizes or ("10000,100000" if quick else "10000,1000000")).split(",")
    )
    procs = tuple(int(s) for s in a.processes.split(","))
    if sorted(sizes) != list(sizes) or min(sizes) < 100 or min(procs) < 1:
        raise SystemExit("--sizes must be ascending and ≥ 100; --processes ≥ 1")
    return Options(
        sizes=sizes,
        processes=procs,
        concurrency=a.concurrency,
        path_messages=a.path_messages or (100 if quick else 300),
        max_messages=a.max_messages or (500 if quick else 1500),
        half_seconds=a.half_seconds or (12.0 if quick else 30.0),
        equal_rate=a.equal_rate,
        raw_seconds=a.raw_seconds,
        seed_batch=a.seed_batch,
        seed_messages=not a.no_seed_messages,
        profile=a.profile,
        oplog_max_entries=a.oplog_max_entries,
        cache_size=a.cache_size,
        quick=quick,
        out=a.out,
        seed_cache=a.seed_cache,
        seed_only=bool(a.seed_only),
    )


# --------------------------------------------------------------------------- the service child


def child_main(stats_path: str) -> int:
    """``omniroute serve`` with a command listener; its counts dumped every 0.5 s."""
    from pymongo import monitoring

    from ingest import cli

    counter = CommandCounter()
    monitoring.register(counter)
    path = Path(stats_path)

    def dump() -> None:
        while True:
            data = {
                "t": time.time(),
                "counts": {f"{w}\t{k}": n for (w, k), n in counter.snapshot().items()},
                "written": {f"{w}\t{k}": n for (w, k), n in counter.written().items()},
                "failed": counter.failed_count,
            }
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(orjson.dumps(data))
            os.replace(tmp, path)
            time.sleep(0.5)

    threading.Thread(target=dump, daemon=True, name="bench-stats").start()
    return cli.main(["serve"])


@dataclass
class Child:
    port: int
    stats: Path
    log: Path
    popen: subprocess.Popen[bytes]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def counts(self, after: float) -> tuple[Counter[tuple[str, str]], Counter[tuple[str, str]]]:
        """The child's command counts from a dump taken after ``after`` (time.time())."""
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError, ValueError):
                data = orjson.loads(self.stats.read_bytes())
                if data["t"] > after:

                    def split(d: dict[str, int]) -> Counter[tuple[str, str]]:
                        c: Counter[tuple[str, str]] = Counter()
                        for k, n in d.items():
                            who, _, key = k.partition("\t")
                            c[(who, key)] = n
                        return c

                    return split(data["counts"]), split(data["written"])
            if time.monotonic() > deadline:
                raise RuntimeError(f"no fresh command counts from {self.base}")
            time.sleep(0.05)


def child_env(uri: str, port: int, tmp: Path) -> dict[str, str]:
    return {
        **os.environ,
        **payloads.SECRETS,
        "OMNIROUTE_MONGODB_URI": uri,
        "OMNIROUTE_DB_NAME": DB_NAME,
        "OMNIROUTE_HOST": "127.0.0.1",
        "OMNIROUTE_PORT": str(port),
        "OMNIROUTE_LOG_FORMAT": "json",
        "OMNIROUTE_LOG_LEVEL": "INFO",
        "OMNIROUTE_DATA_DIR": str(tmp / "data"),
    }


async def start_children(uri: str, count: int, tmp: Path) -> list[Child]:
    children = []
    for _ in range(count):
        port = pick_free_port()
        stats = tmp / f"stats-{port}.json"
        log = tmp / f"service-{port}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(  # noqa: ASYNC220 - returns at once
                [sys.executable, "-m", "benchmarks.mix", CHILD_FLAG, str(stats)],
                cwd=ROOT,
                env=child_env(uri, port, tmp),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        children.append(Child(port, stats, log, popen))
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as http:
        for c in children:
            while True:
                if c.popen.poll() is not None:
                    raise RuntimeError(f"service exited: {c.log.read_text()[-3000:]}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{c.base}/healthz") as r:
                        if r.status == 200 and c.stats.exists():
                            break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"service on {c.port} not healthy in 60 s")
                await asyncio.sleep(0.1)
    return children


async def stop_children(children: Sequence[Child]) -> None:
    for c in children:
        if c.popen.poll() is None:
            c.popen.send_signal(signal.SIGTERM)
    for c in children:
        for _ in range(150):
            if c.popen.poll() is not None:
                break
            await asyncio.sleep(0.1)
        if c.popen.poll() is None:
            c.popen.kill()
            c.popen.wait()


async def scrape(children: Sequence[Child]) -> tuple[Counter[str], int]:
    """Routing outcomes by rule (``omniroute_routed_total``) and routing failures, summed
    over the processes."""
    rules: Counter[str] = Counter()
    failures = 0
    pattern = re.compile(r'^omniroute_routed_total\{rule="([^"]*)"\} ([0-9.e+]+)$')
    async with aiohttp.ClientSession() as http:
        for c in children:
            async with http.get(f"{c.base}/metrics") as r:
                text = await r.text()
            for line in text.splitlines():
                if m := pattern.match(line):
                    rules[m.group(1)] += int(float(m.group(2)))
                elif line.startswith("omniroute_routing_failures_total "):
                    failures += int(float(line.split()[1]))
    return rules, failures


# Where an acknowledgement's time goes, from the services' own histograms (ingest/metrics.py).
HISTOGRAMS = (
    "omniroute_webhook_seconds",
    "omniroute_intake_write_seconds",
    "omniroute_event_loop_lag_seconds",
)
_BUCKET = re.compile(r'^(omniroute_[a-z_]+)_bucket\{(?:[^}]*,)?le="([^"]+)"[^}]*\} ([0-9.e+]+)$')


async def histograms(children: Sequence[Child]) -> dict[str, dict[float, float]]:
    """Cumulative bucket counts of :data:`HISTOGRAMS`, summed over labels and processes."""
    out: dict[str, dict[float, float]] = {name: {} for name in HISTOGRAMS}
    async with aiohttp.ClientSession() as http:
        for c in children:
            async with http.get(f"{c.base}/metrics") as r:
                text = await r.text()
            for line in text.splitlines():
                if (m := _BUCKET.match(line)) and m.group(1) in out:
                    le = float("inf") if m.group(2) == "+Inf" else float(m.group(2))
                    bucket = out[m.group(1)]
                    bucket[le] = bucket.get(le, 0.0) + float(m.group(3))
    return out


def bucket_quantiles(
    before: dict[float, float], after: dict[float, float]
) -> dict[str, float | None]:
    """Upper bounds (ms) of p50/p95/p99 of what was observed between two scrapes: the
    smallest bucket bound holding that share of the observations."""
    delta = sorted((le, after[le] - before.get(le, 0.0)) for le in after)
    total = delta[-1][1] if delta else 0.0
    out: dict[str, float | None] = {"count": total}
    for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        bound = next((le for le, cum in delta if total and cum >= q * total), None)
        out[f"{name}_le_ms"] = None if bound is None or bound == float("inf") else bound * 1000
    return out


# --------------------------------------------------------------------------- load generator


@dataclass(frozen=True, slots=True)
class LoadJob:
    urls: list[str]
    headers: list[dict[str, str]]
    bodies: list[bytes]
    concurrency: int = 32  # closed loop
    rate: float | None = None  # open loop: requests per second
    warm: tuple[str, ...] = ()  # base URLs to open connections to first


@dataclass(slots=True)
class LoadResult:
    starts: list[float] = field(default_factory=list)  # time.time() of each send
    latencies: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    cpu_s: float = 0.0
    first: float = 0.0
    last: float = 0.0


async def _load(job: LoadJob) -> LoadResult:
    cpu0 = cpu_seconds()
    n = len(job.bodies)
    res = LoadResult([0.0] * n, [0.0] * n, [0] * n)
    limit = job.concurrency if job.rate is None else 512
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        for base in job.warm:
            per = max(1, job.concurrency // max(1, len(job.warm)))

            async def warm(b: str = base) -> None:
                async with http.get(f"{b}/healthz") as r:
                    await r.read()

            await asyncio.gather(*(warm() for _ in range(per)))

        async def one(i: int, started: float, mono: float) -> None:
            try:
                async with http.post(job.urls[i], data=job.bodies[i], headers=job.headers[i]) as r:
                    await r.read()
                    status = r.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = 0
                if len(res.errors) < 10:
                    res.errors.append(f"{type(exc).__name__}: {exc}")
            res.latencies[i] = time.monotonic() - mono
            res.starts[i] = started
            res.statuses[i] = status

        t0 = time.time()
        m0 = time.monotonic()
        if job.rate is None:
            it = iter(range(n))

            async def worker() -> None:
                for i in it:
                    await one(i, time.time(), time.monotonic())

            await asyncio.gather(*(worker() for _ in range(job.concurrency)))
        else:
            tasks = []
            for i in range(n):
                due = m0 + i / job.rate
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                # Latency from the scheduled send time: a late send counts as waiting.
                tasks.append(asyncio.create_task(one(i, t0 + (due - m0), due)))
            await asyncio.gather(*tasks)
        res.first = min(res.starts) if n else t0
        res.last = time.time()
    res.cpu_s = cpu_seconds() - cpu0
    return res


def loadgen_main(conn: Connection) -> None:
    while True:
        job = conn.recv()
        if job is None:
            return
        conn.send(asyncio.run(_load(job)))


# --------------------------------------------------------------------------- stats helpers


def pcts(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0, "n": 0}
    return {
        "p50": ms(percentile(values, 50)),
        "p95": ms(percentile(values, 95)),
        "p99": ms(percentile(values, 99)),
        "max": ms(max(values)),
        "n": len(values),
    }


@dataclass
class Run:
    """One configuration: a store of some size, P service processes."""

    opts: Options
    conn: Connection
    store: Store  # the benchmark's own client (never counted)
    store_pid: int | None
    children: list[Child]
    gen: MixGenerator

    async def post(self, requests: Sequence[Request], *, rate: float | None = None) -> LoadResult:
        kids = self.children
        job = LoadJob(
            urls=[f"{kids[i % len(kids)].base}{r.path}" for i, r in enumerate(requests)],
            headers=[r.headers for r in requests],
            bodies=[r.body for r in requests],
            concurrency=self.opts.concurrency,
            rate=rate,
            warm=tuple(k.base for k in kids),
        )
        self.conn.send(job)
        result: LoadResult = await asyncio.wait_for(recv(self.conn), PHASE_TIMEOUT_S)
        return result

    def counts(self, after: float) -> tuple[Counter[tuple[str, str]], Counter[tuple[str, str]]]:
        total: Counter[tuple[str, str]] = Counter()
        written: Counter[tuple[str, str]] = Counter()
        for c in self.children:
            a, b = c.counts(after)
            total.update(a)
            written.update(b)
        return total, written

    def cpu(self) -> tuple[float, float, float]:
        service = sum(cpu_seconds_of(c.popen.pid) for c in self.children)
        return service, cpu_seconds_of(self.store_pid), system_busy_seconds()

    async def wait_routed(self, target: int) -> None:
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        while True:
            rules, failures = await scrape(self.children)
            if failures:
                raise RuntimeError(f"routing failed for {failures} record(s)")
            if sum(rules.values()) >= target:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"routing did not finish: {sum(rules.values())}/{target}")
            await asyncio.sleep(0.25)

    async def phase(
        self, name: str, requests: list[Request], *, rate: float | None = None
    ) -> tuple[dict[str, Any], list[int]]:
        rules0, _ = await scrape(self.children)
        hist0 = await histograms(self.children)
        t_before = time.time()
        commands0, written0 = self.counts(t_before)
        cpu0 = self.cpu()
        wall0 = time.monotonic()
        since = datetime.now(UTC)
        res = await self.post(requests, rate=rate)
        ok = [i for i, s in enumerate(res.statuses) if s == 200]
        acked_ids = {requests[i].intake_id for i in ok if requests[i].intake_id}
        new_ids = {requests[i].intake_id for i in ok if requests[i].kind != "duplicate"} - {None}
        expected = sum(rules0.values()) + len(new_ids)
        await self.wait_routed(expected)
        wall = time.monotonic() - wall0
        cpu1 = self.cpu()
        rules1, _ = await scrape(self.children)
        hist1 = await histograms(self.children)
        await asyncio.sleep(0.6)  # the routed batches' last commands are in the next dump
        commands1, written1 = self.counts(time.time())
        # intake records of this phase: received_at is indexed.
        docs = [
            d
            async for d in self.store.intake.find(
                {"received_at": {"$gte": since}},
                {"received_at": 1, "routed_at": 1, "status": 1, "channel": 1},
            )
        ]
        mine = [d for d in docs if d["_id"] in acked_ids]
        lat = [
            (d["routed_at"] - d["received_at"]).total_seconds()
            for d in mine
            if d.get("routed_at") is not None
        ]
        last_routed = max(
            (d["routed_at"].timestamp() for d in mine if d.get("routed_at")), default=res.last
        )
        messages = len(new_ids)
        delta = commands1 - commands0
        per_msg, background = split_background(delta)
        by_origin: Counter[str] = Counter()
        for (who, key), count in delta.items():
            if per_message(who, key):
                by_origin[who] += count
        written = written1 - written0
        denominator = {"duplicate": max(1, len(ok)), "refused": len(requests)}.get(name, messages)
        round_trips = sum(per_msg.values())
        service_cpu, store_cpu = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
        foreign = cpu1[2] - cpu0[2] - service_cpu - store_cpu - res.cpu_s
        share = max(0.0, foreign / (wall * (os.cpu_count() or 1)))
        ack_lat = [res.latencies[i] for i in ok]
        elapsed = max(1e-6, last_routed - res.first)
        kinds = Counter(r.kind for r in requests)
        out: dict[str, Any] = {
            "phase": name,
            "requests": len(requests),
            "kinds": dict(kinds),
            "rate_offered": rate,
            "statuses": {str(k): v for k, v in sorted(Counter(res.statuses).items())},
            "errors": res.errors,
            "messages": messages,
            "elapsed_s": round(elapsed, 2),
            "routed_per_s": round(messages / elapsed, 1) if messages else 0.0,
            "acked_per_s": round(len(ok) / max(1e-6, res.last - res.first), 1),
            "ack_ms": pcts(ack_lat),
            "ack_ms_by_channel": {
                ch: pcts([res.latencies[i] for i in ok if requests[i].channel == ch])
                for ch in sorted({requests[i].channel for i in ok})
            },
            "intake_to_routed_ms": pcts(lat),
            # In the services (bucket upper bounds): the handler, its durable writes, and
            # the event loop's lateness during the phase. Client ack − handler time ≈ time
            # queued before the handler ran (the loop, the socket).
            "in_service": {
                name.removeprefix("omniroute_").removesuffix("_seconds"): bucket_quantiles(
                    hist0[name], hist1[name]
                )
                for name in HISTOGRAMS
            },
            "refused": {
                "requests": kinds.get("invalid", 0),
                "statuses": dict(
                    sorted(
                        Counter(
                            str(s)
                            for r, s in zip(requests, res.statuses, strict=True)
                            if r.kind == "invalid"
                        ).items()
                    )
                ),
                "answer_ms": pcts(
                    [res.latencies[i] for i, r in enumerate(requests) if r.kind == "invalid"]
                ),
            },
            "round_trips_per_msg": round(round_trips / max(1, denominator), 2),
            "round_trips_per_msg_by_origin": {
                who: round(by_origin[who] / max(1, denominator), 2) for who in sorted(by_origin)
            },
            "commands_per_msg": {
                k: round(v / max(1, denominator), 3)
                for k, v in sorted(per_msg.items(), key=lambda kv: -kv[1])
            },
            "background_commands": dict(sorted(background.items())),
            "documents_written_per_msg": round(
                sum(v for (who, key), v in written.items() if per_message(who, key))
                / max(1, denominator),
                2,
            ),
            "rules": {k: v - rules0.get(k, 0) for k, v in rules1.items() if v - rules0.get(k, 0)},
            "cpu_ms_per_msg": {
                "services": round(service_cpu * 1000 / max(1, denominator), 2),
                "store": round(store_cpu * 1000 / max(1, denominator), 2),
                "load_generator": round(res.cpu_s * 1000 / max(1, denominator), 2),
            },
            "other_cpu_share": round(share, 3),
            "unrouted": len([d for d in mine if d.get("status") != "routed"]),
        }
        return out, res.statuses


# --------------------------------------------------------------------------- checks


async def check(store: Store, sent: list[tuple[Request, int]]) -> dict[str, Any]:
    """Everything acknowledged is routed and stored once; each new sender one lead."""
    valid = [(r, s) for r, s in sent if r.kind != "invalid"]
    acked = {r.intake_id for r, s in valid if s == 200 and r.intake_id}
    refused = {r.intake_id for r, s in valid if s != 200 and r.intake_id} - acked
    invalid = [(r, s) for r, s in sent if r.kind == "invalid"]
    invalid_accepted = [f"{r.channel} {r.path} {s}" for r, s in invalid if not 400 <= s < 500]
    invalid_stored = [
        r.intake_id
        for r, _ in invalid
        if r.intake_id and await store.intake.find_one({"_id": r.intake_id}, {"_id": 1})
    ]
    sem = asyncio.Semaphore(16)
    missing_msg: list[str] = []
    not_routed: list[str] = []

    async def one(iid: str) -> None:
        async with sem:
            doc = await store.intake.find_one({"_id": iid}, {"status": 1})
            if doc is None or doc.get("status") != "routed":
                not_routed.append(iid)
            if await store.messages.find_one({"_id": iid}, {"_id": 1}) is None:
                missing_msg.append(iid)

    await asyncio.gather(*(one(i) for i in acked if i))
    new_people = {
        (r.person, r.channel)
        for r, s in sent
        if s == 200 and r.kind == "new" and r.person is not None
    }
    bad_leads: list[str] = []

    async def lead_of(n: int, ch: str) -> None:
        async with sem:
            key = Person(n).identity_keys(ch)[0]
            contact = await store.contacts.find_one({"identities": key}, {"_id": 1})
            if contact is None:
                bad_leads.append(f"{key}: no contact")
                return
            leads = await store.leads.count_documents({"contact_id": contact["_id"]})
            if leads != 1:
                bad_leads.append(f"{key}: {leads} leads")

    await asyncio.gather(*(lead_of(n, ch) for n, ch in new_people))
    pending = await store.intake.count_documents({"status": "pending"})
    failed = await store.intake.count_documents({"status": "failed"})
    stuck = [
        f"{d['_id']} {d.get('channel')} {d.get('status')} owner={d.get('owner')} "
        f"attempts={d.get('attempts')} error={str(d.get('error'))[:200]}"
        async for d in store.intake.find(
            {"status": {"$in": ["pending", "failed"]}}, {"raw": 0, "message": 0}, limit=5
        )
    ]
    ok = not (
        missing_msg
        or not_routed
        or bad_leads
        or pending
        or failed
        or invalid_accepted
        or invalid_stored
    )
    return {
        "ok": ok,
        "acknowledged": len(acked),
        "refused_not_retried": len(refused),
        "invalid_requests": len(invalid),
        "invalid_not_refused_4xx": invalid_accepted[:10],
        "invalid_stored": invalid_stored[:10],
        "not_routed": len(not_routed),
        "messages_missing": len(missing_msg),
        "new_senders": len(new_people),
        "new_senders_without_exactly_one_lead": bad_leads[:10],
        "intake_pending": pending,
        "intake_failed": failed,
        "stuck_sample": stuck,
    }


# --------------------------------------------------------------------------- seeding & raw


async def seed(
    store: Store,
    config: AppConfig,
    start: int,
    stop: int,
    batch: int,
    messages: bool,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Insert people ``start``..``stop-1`` (contact, lead, conversation, message each) with
    ``insert_many`` of about ``batch`` documents, two batches in flight."""
    t0 = time.monotonic()
    per_chunk = max(1, batch // (4 if messages else 3))
    chunks = list(range(start, stop, per_chunk))
    total = 0
    done = 0
    reported = t0

    async def worker() -> None:
        nonlocal total, done, reported
        while chunks:
            a = chunks.pop(0)
            b = min(stop, a + per_chunk)
            for coll, items in payloads.seed_documents(config, a, b, messages=messages).items():
                try:
                    await store[coll].insert_many(items, ordered=False)
                except BulkWriteError as exc:
                    # The driver retried a batch the store had written (a retryable
                    # write after a slow reply): those documents are there already.
                    errors = exc.details.get("writeErrors", [])
                    if any(e.get("code") != DUPLICATE_KEY for e in errors):
                        raise
                total += len(items)
            done += b - a
            if time.monotonic() - reported > 20:
                reported = time.monotonic()
                rate = total / (reported - t0)
                progress(f"  seeded {start + done:,}/{stop:,} people ({rate:,.0f} docs/s)")

    await asyncio.gather(worker(), worker())
    secs = time.monotonic() - t0
    return {
        "people": stop - start,
        "documents": total,
        "seconds": round(secs, 1),
        "docs_per_s": round(total / max(1e-6, secs), 0),
    }


async def raw_inserts(
    uri: str, template: dict[str, Any], seconds: float, pid: int | None
) -> dict[str, Any]:
    store = Store.open(uri, "bench_mix_raw")
    try:
        coll = store["raw_" + str(int(time.time()))]
        await coll.insert_one({**template, "_id": "warm-up"})
        lat: list[float] = []
        cpu0 = cpu_seconds_of(pid)
        t0 = time.monotonic()
        i = 0
        while time.monotonic() - t0 < seconds:
            i += 1
            t = time.monotonic()
            await coll.insert_one({**template, "_id": f"raw-{i}"})
            lat.append(time.monotonic() - t)
        secs = time.monotonic() - t0
        cpu = cpu_seconds_of(pid) - cpu0
        await coll.drop()
    finally:
        await store.close()
    return {
        "sequential_docs_per_s": round(len(lat) / secs, 1),
        "ms": pcts(lat),
        "store_cpu_ms_per_doc": round(cpu * 1000 / max(1, len(lat)), 2),
    }


# A snapshot of the store right after seeding a size (``--seed-cache``): the store's files,
# copied while it is stopped, and what the generator had used before it. The key changes
# with anything the seed is made of (payloads.py, the shipped configuration).
SNAPSHOT_META = "snapshot.json"
# Headroom left for the people and provider ids one run uses after a snapshot.
NEW_BASE_STEP = 20_000_000
# A store holding millions of documents takes a while to open (its WiredTiger recovery).
STORE_OPEN_S = OPEN_S


def seed_cache_key(size: int, messages: bool) -> str:
    h = hashlib.sha256()
    for f in (Path(payloads.__file__), *sorted(Path(DEFAULT_CONFIG_DIR).glob("*.yaml"))):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return f"{size}-{'messages' if messages else 'no-messages'}-{h.hexdigest()[:12]}"


async def save_snapshot(embedded: EmbeddedStore, where: Path, gen: MixGenerator) -> None:
    assert embedded.storage_path is not None
    await embedded.stop()
    try:
        part = where.with_name(where.name + ".partial")
        shutil.rmtree(part, ignore_errors=True)
        await asyncio.to_thread(shutil.copytree, embedded.storage_path, part / "store")
        # People and provider ids the run used before this point live in the snapshot: a
        # run that starts from it takes the next range.
        meta = {"new_base": gen.new_base, "saved_at": datetime.now(UTC).isoformat()}
        (part / SNAPSHOT_META).write_bytes(orjson.dumps(meta))
        shutil.rmtree(where, ignore_errors=True)
        part.rename(where)
    finally:
        await embedded.start(timeout=STORE_OPEN_S)


async def restore_snapshot(
    embedded: EmbeddedStore, where: Path, gen: MixGenerator
) -> dict[str, Any]:
    assert embedded.storage_path is not None
    meta = orjson.loads((where / SNAPSHOT_META).read_bytes())
    t0 = time.monotonic()
    await embedded.stop()
    shutil.rmtree(embedded.storage_path)
    await asyncio.to_thread(shutil.copytree, where / "store", embedded.storage_path)
    await embedded.start(timeout=STORE_OPEN_S)
    gen.new_base = max(gen.new_base, int(meta["new_base"]) + NEW_BASE_STEP)
    if gen.new_base + NEW_BASE_STEP > 1_000_000_000:
        raise SystemExit(f"{where}: too many runs on this snapshot's id range; remove it")
    return {
        "from_snapshot": str(where),
        "documents": None,
        "seconds": round(time.monotonic() - t0, 1),
        "docs_per_s": None,
    }


# --------------------------------------------------------------------------- profiling


@contextlib.contextmanager
def profiling(where: Path | None, pids: dict[str, int | None]) -> Any:
    procs: list[subprocess.Popen[bytes]] = []
    spy = Path(sys.executable).with_name("py-spy")
    if where is not None and spy.exists():
        where.mkdir(parents=True, exist_ok=True)
        for name, pid in pids.items():
            if pid is None:
                continue
            procs.append(
                subprocess.Popen(
                    [
                        str(spy),
                        "record",
                        "--pid",
                        str(pid),
                        "--rate",
                        "200",
                        "--format",
                        "raw",
                        "--output",
                        str(where / f"{name}.txt"),
                        "--nonblocking",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
    try:
        yield
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


# --------------------------------------------------------------------------- one configuration


# In the bad-traffic phase, one request in BAD_EVERY is one that must be refused.
BAD_EVERY = 5


def with_invalid(reqs: list[Request], every: int) -> list[Request]:
    """``reqs`` with a refused request after each ``every - 1`` of them
    (:func:`benchmarks.payloads.refused` in turn: every way of being refused)."""
    out: list[Request] = []
    for i, r in enumerate(reqs):
        out.append(r)
        if (i + 1) % (every - 1) == 0:
            out.append(payloads.refused((i + 1) // (every - 1) - 1))
    return out


async def run_phase(
    run: Run,
    name: str,
    reqs: list[Request],
    sent: list[tuple[Request, int]],
    rate: float | None = None,
) -> dict[str, Any]:
    result, statuses = await run.phase(name, reqs, rate=rate)
    sent.extend(zip(reqs, statuses, strict=True))
    return result


async def configuration(
    opts: Options,
    conn: Connection,
    embedded: EmbeddedStore,
    store: Store,
    gen: MixGenerator,
    processes: int,
    half_rate: float | None,
    tmp: Path,
    profile: bool,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    children = await start_children(embedded.uri, processes, tmp)
    run = Run(opts, conn, store, embedded.pid, children, gen)
    sent: list[tuple[Request, int]] = []
    phases: dict[str, Any] = {}
    label = f"    {processes} process{'es' if processes > 1 else ''}:"
    try:
        # Warm-up: imports, connections, caches; not reported (checked with the rest).
        warm = gen.requests(60)
        rules0, _ = await scrape(children)
        res = await run.post(warm)
        sent.extend(zip(warm, res.statuses, strict=True))
        fresh = {r.intake_id for r, s in zip(warm, res.statuses, strict=True) if s == 200}
        await run.wait_routed(sum(rules0.values()) + len(fresh))

        for path in ("existing", "known", "new"):
            reqs = gen.requests(opts.path_messages, path)
            progress(f"{label} path {path} ({len(reqs)} msgs at C={opts.concurrency})")
            phases[path] = await run_phase(run, path, reqs, sent)
        # Duplicates: re-posts of payloads stored a moment ago.
        originals = [r for r in gen.requests(opts.path_messages) if r.kind != "duplicate"]
        rules0, _ = await scrape(children)
        res = await run.post(originals)
        sent.extend(zip(originals, res.statuses, strict=True))
        fresh = {r.intake_id for r, s in zip(originals, res.statuses, strict=True) if s == 200}
        await run.wait_routed(sum(rules0.values()) + len(fresh))
        progress(f"{label} path duplicate ({len(originals)} re-posts)")
        dups = [r.as_kind("duplicate") for r in originals]
        phases["duplicate"] = await run_phase(run, "duplicate", dups, sent)

        reqs = gen.requests(opts.max_messages)
        progress(f"{label} max rate, the mix: {len(reqs)} requests at C={opts.concurrency}")
        pids = {f"service-p{processes}": children[0].popen.pid, f"store-p{processes}": embedded.pid}
        with profiling(opts.profile if profile else None, pids):
            phases["max"] = await run_phase(run, "max", reqs, sent)
        # The same mix with refused requests interleaved: valid traffic should lose no
        # more than the refusals' own cost.
        reqs = with_invalid(gen.requests(opts.max_messages), BAD_EVERY)
        progress(
            f"{label} max rate with bad requests: {len(reqs)} requests "
            f"(1 in {BAD_EVERY} oversize / malformed / wrongly signed) at C={opts.concurrency}"
        )
        phases["max_bad"] = await run_phase(run, "max_bad", reqs, sent)
        # What a refusal costs on its own.
        refusals = [payloads.refused(100_000 + i) for i in range(opts.path_messages)]
        progress(f"{label} refusals only: {len(refusals)} requests at C={opts.concurrency}")
        phases["refused"] = await run_phase(run, "refused", refusals, sent)
        max_rate = float(phases["max"]["routed_per_s"])
        rate = 0.5 * max_rate
        basis = "0.5 × this configuration's max"
        if half_rate is not None and half_rate < rate:
            rate, basis = half_rate, "the smallest size's half rate (equal load at every size)"
        count = max(20, int(rate * opts.half_seconds))
        reqs = gen.requests(count)
        progress(f"{label} half rate, the mix: {count} requests at {rate:.1f}/s (open loop)")
        phases["half"] = await run_phase(run, "half", reqs, sent, rate=rate)
        count = max(20, int(opts.equal_rate * opts.half_seconds))
        reqs = gen.requests(count)
        progress(f"{label} equal load, the mix: {count} requests at {opts.equal_rate}/s")
        phases["equal"] = await run_phase(run, "equal", reqs, sent, rate=opts.equal_rate)
        progress(f"{label} checks")
        checks = await check(store, sent)
        rss = {
            f"service_{i + 1}": {
                "peak_mib": mib(proc_status_kib(c.popen.pid).get("VmHWM", 0)),
                "now_mib": mib(proc_status_kib(c.popen.pid).get("VmRSS", 0)),
            }
            for i, c in enumerate(children)
        }
    finally:
        await stop_children(children)
    return {
        "processes": processes,
        "half_rate": round(rate, 1),
        "half_rate_basis": basis,
        "phases": phases,
        "checks": checks,
        "rss": rss,
        "store_rss_mib": mib(proc_status_kib(embedded.pid or "self").get("VmRSS", 0)),
    }


# --------------------------------------------------------------------------- the whole run


async def run_all(opts: Options, progress: Callable[[str], None]) -> dict[str, Any]:
    os.environ.update(payloads.SECRETS)
    config = load_config(DEFAULT_CONFIG_DIR)
    payloads.self_check(config)
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    gen_proc = ctx.Process(target=loadgen_main, args=(child,), name="mix-loadgen", daemon=True)
    gen_proc.start()
    started = time.monotonic()
    sizes: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="omniroute-mix-") as tmp_name:
            tmp = Path(tmp_name)
            embedded = BenchStore(
                storage_path=tmp / "mongo",
                oplog_max_entries=opts.oplog_max_entries,
                cache_size=opts.cache_size,
            )
            await embedded.start()
            store_command = embedded.command()
            store = Store.open(embedded.uri, DB_NAME)
            try:
                await store.ensure_indexes()
                gen = MixGenerator(seeded=opts.sizes[0])
                seeded = 0
                half_rates: dict[int, float] = {}
                profiled = False
                for size in opts.sizes:
                    cached = (
                        opts.seed_cache / seed_cache_key(size, opts.seed_messages)
                        if opts.seed_cache is not None
                        else None
                    )
                    await store.close()
                    if cached is not None and (cached / SNAPSHOT_META).exists():
                        progress(f"size {size:,}: the seeded store from {cached} …")
                        seeding = await restore_snapshot(embedded, cached, gen)
                        seeding["people"] = size - seeded
                    else:
                        store = Store.open(embedded.uri, DB_NAME)
                        progress(f"size {size:,}: seeding {size - seeded:,} people …")
                        seeding = await seed(
                            store,
                            config,
                            seeded,
                            size,
                            opts.seed_batch,
                            opts.seed_messages,
                            progress,
                        )
                        await store.close()
                        if cached is not None:
                            progress(f"size {size:,}: saving the seeded store to {cached} …")
                            await save_snapshot(embedded, cached, gen)
                    store = Store.open(embedded.uri, DB_NAME)
                    await store.ensure_indexes()
                    seeded = size
                    gen.seeded = size
                    if opts.seed_only:
                        sizes.append({"contacts": size, "seeding": seeding})
                        continue
                    template = await store.intake.find_one({}) or await first_intake(
                        embedded, store, gen, tmp
                    )
                    raw = await raw_inserts(embedded.uri, template, opts.raw_seconds, embedded.pid)
                    progress(f"size {size:,}: raw insert_one {raw['sequential_docs_per_s']}/s")
                    configs = []
                    for procs in opts.processes:
                        progress(f"size {size:,}, {procs} service process(es)")
                        cfg = await configuration(
                            opts,
                            parent,
                            embedded,
                            store,
                            gen,
                            procs,
                            half_rates.get(procs),
                            tmp,
                            not profiled and opts.profile is not None,
                            progress,
                        )
                        profiled = True
                        half_rates.setdefault(procs, cfg["half_rate"])
                        configs.append(cfg)
                    # Again with the store warm: a store just opened (a big one copied
                    # from --seed-cache) can be far slower at first.
                    raw_after = await raw_inserts(
                        embedded.uri, template, opts.raw_seconds, embedded.pid
                    )
                    progress(
                        f"size {size:,}: raw insert_one afterwards "
                        f"{raw_after['sequential_docs_per_s']}/s"
                    )
                    partial = opts.out.with_name(opts.out.stem + ".partial.json")
                    write_json(
                        {"sizes": [*sizes, {"contacts": size, "configurations": configs}]}, partial
                    )
                    sizes.append(
                        {
                            "contacts": size,
                            "seeding": seeding,
                            # The target's basis: the faster of the two measurements.
                            "raw_insert": max(
                                raw, raw_after, key=lambda r: r["sequential_docs_per_s"]
                            ),
                            "raw_insert_before": raw,
                            "raw_insert_after": raw_after,
                            "configurations": configs,
                            "store_documents": {
                                c: await store[c].estimated_document_count()
                                for c in ("contacts", "leads", "conversations", "messages")
                            },
                        }
                    )
            finally:
                await store.close()
                await embedded.stop()
        info = machine(False, None)
    finally:
        loadgen.stop(parent, gen_proc)
    result = {
        "schema": 1,
        "generated_at": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "wall_s": round(time.monotonic() - started, 1),
        "machine": info,
        "options": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(opts).items()
        },
        "store": {
            "kind": "embedded SecantusDB (secantusd-py), file-backed in a temp dir",
            "command": store_command,
            "sync_on_commit": True,
            "write_concern": {"w": "majority", "j": True},
        },
        "sizes": sizes,
    }
    if opts.seed_only:
        return result
    result["summary"] = summary(result)
    result["targets"] = targets(result)
    return result


async def first_intake(
    embedded: EmbeddedStore, store: Store, gen: MixGenerator, tmp: Path
) -> dict[str, Any]:
    """One message through a service, for the raw baseline's template document."""
    children = await start_children(embedded.uri, 1, tmp)
    try:
        r = gen.requests(1, "existing")[0]
        async with (
            aiohttp.ClientSession() as http,
            http.post(children[0].base + r.path, data=r.body, headers=r.headers) as resp,
        ):
            if resp.status != 200:
                raise RuntimeError(f"calibration message refused: {resp.status}")
        deadline = time.monotonic() + 30
        while await store.intake.count_documents({"status": "pending"}):
            if time.monotonic() > deadline:
                raise RuntimeError("calibration message not routed in 30 s")
            await asyncio.sleep(0.1)
    finally:
        await stop_children(children)
    doc = await store.intake.find_one({})
    assert doc is not None
    return doc


# --------------------------------------------------------------------------- summary & table


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """Flat headline figures per (size, processes), and the size ratios."""
    rows: dict[str, dict[str, float]] = {}
    for s in result["sizes"]:
        raw = s["raw_insert"]["sequential_docs_per_s"]
        for c in s["configurations"]:
            ph = c["phases"]
            key = f"{s['contacts']}/{c['processes']}"
            row: dict[str, float] = {
                "contacts": s["contacts"],
                "processes": c["processes"],
                "raw_insert_per_s": raw,
                "max_routed_per_s": ph["max"]["routed_per_s"],
                "max_acked_per_s": ph["max"]["acked_per_s"],
                "max_ratio_to_raw": round(ph["max"]["routed_per_s"] / raw, 2),
                "steady_routed_per_s": ph["existing"]["routed_per_s"],
                "steady_ratio_to_raw": round(ph["existing"]["routed_per_s"] / raw, 2),
                "half_rate": c["half_rate"],
                "rss_peak_mib_max": max(v["peak_mib"] for v in c["rss"].values()),
                "other_cpu_share_max": max(p["other_cpu_share"] for p in ph.values()),
            }
            for q in ("p50", "p95", "p99"):
                row[f"max_ack_{q}_ms"] = ph["max"]["ack_ms"][q]
                row[f"half_ack_{q}_ms"] = ph["half"]["ack_ms"][q]
                row[f"half_routing_{q}_ms"] = ph["half"]["intake_to_routed_ms"][q]
                row[f"equal_routing_{q}_ms"] = ph["equal"]["intake_to_routed_ms"][q]
                row[f"equal_ack_{q}_ms"] = ph["equal"]["ack_ms"][q]
                row[f"max_routing_{q}_ms"] = ph["max"]["intake_to_routed_ms"][q]
            for path in ("existing", "known", "new", "duplicate", "max"):
                row[f"{path}_round_trips"] = ph[path]["round_trips_per_msg"]
                row[f"{path}_docs_written"] = ph[path]["documents_written_per_msg"]
            bad, mx = ph["max_bad"], ph["max"]
            row["bad_routed_per_s"] = bad["routed_per_s"]
            row["bad_ratio_to_max"] = round(bad["routed_per_s"] / max(0.01, mx["routed_per_s"]), 2)
            row["bad_refused_4xx"] = float(
                sum(v for k, v in bad["refused"]["statuses"].items() if k.startswith("4"))
            )
            row["bad_requests"] = float(bad["refused"]["requests"])
            refused = ph["refused"]
            row["refusal_cpu_ms"] = refused["cpu_ms_per_msg"]["services"]
            row["refusal_store_cpu_ms"] = refused["cpu_ms_per_msg"]["store"]
            row["refusal_p99_ms"] = refused["refused"]["answer_ms"]["p99"]
            row["refusals_4xx"] = float(
                sum(v for k, v in refused["refused"]["statuses"].items() if k.startswith("4"))
            )
            row["refusals"] = float(refused["refused"]["requests"])
            # Valid traffic should lose no more than the refusals' own CPU: at the max
            # phase's service CPU per message, the share of the services' CPU that one
            # refusal per (BAD_EVERY - 1) messages takes.
            per_msg = mx["cpu_ms_per_msg"]["services"]
            row["bad_expected_ratio"] = round(
                per_msg / (per_msg + row["refusal_cpu_ms"] / (BAD_EVERY - 1)), 2
            )
            row["checks_ok"] = 1.0 if c["checks"]["ok"] else 0.0
            rows[key] = row
    ratios: dict[str, dict[str, float]] = {}
    if len(result["sizes"]) > 1:
        small, big = result["sizes"][0]["contacts"], result["sizes"][-1]["contacts"]
        for procs in {c["processes"] for s in result["sizes"] for c in s["configurations"]}:
            a, b = rows.get(f"{small}/{procs}"), rows.get(f"{big}/{procs}")
            if a is None or b is None:
                continue
            ratios[str(procs)] = {
                f"{phase}_routing_{q}": round(
                    b[f"{phase}_routing_{q}_ms"] / max(0.01, a[f"{phase}_routing_{q}_ms"]), 2
                )
                for q in ("p50", "p95", "p99")
                for phase in ("half", "equal")
            }
            ratios[str(procs)]["max_routed_per_s"] = round(
                b["max_routed_per_s"] / max(0.01, a["max_routed_per_s"]), 2
            )
            ratios[str(procs)]["same_offered_rate"] = float(a["half_rate"] == b["half_rate"])
    return {"rows": rows, "size_ratios": ratios}


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = result["summary"]["rows"]
    out: list[dict[str, Any]] = []

    def add(target: str, key: str, value: float, limit: float, ok: bool, note: str = "") -> None:
        out.append(
            {
                "target": target,
                "where": key,
                "value": value,
                "limit": limit,
                "pass": ok,
                "note": note,
            }
        )

    for r in rows.values():
        where = f"{int(r['contacts']):,} contacts, {int(r['processes'])} process(es)"
        lim = round(0.5 * r["raw_insert_per_s"], 1)
        add(
            "steady-state routed msgs/s ≥ 0.5 × raw single-insert rate",
            where,
            r["steady_routed_per_s"],
            lim,
            r["steady_routed_per_s"] >= lim,
        )
        add(
            "≤ 3 store round trips per steady-state message",
            where,
            r["existing_round_trips"],
            3.0,
            r["existing_round_trips"] <= 3.0,
        )
        add(
            "≤ 6 store round trips per new lead",
            where,
            r["new_round_trips"],
            6.0,
            r["new_round_trips"] <= 6.0,
        )
        add(
            "p99 acknowledgement ≤ 50 ms at half the max rate",
            where,
            r["half_ack_p99_ms"],
            50.0,
            r["half_ack_p99_ms"] <= 50.0,
        )
        add(
            "RSS ≤ 150 MB per service process under load",
            where,
            r["rss_peak_mib_max"],
            round(150e6 / 2**20, 1),
            r["rss_peak_mib_max"] * 2**20 <= 150e6,
        )
    sizes = result["sizes"]
    for procs, ratio in result["summary"]["size_ratios"].items():
        where = (
            f"{sizes[-1]['contacts']:,} vs {sizes[0]['contacts']:,} contacts, {procs} process(es)"
        )
        add(
            "routing latency (intake→routed p50, equal load) at the large size ≤ 1.2 × at "
            "the small",
            where,
            ratio["equal_routing_p50"],
            1.2,
            ratio["equal_routing_p50"] <= 1.2,
        )
    return out


def table(result: dict[str, Any]) -> str:
    m = result["machine"]
    o = result["options"]
    lines: list[str] = []
    add = lines.append
    add(
        f"omniroute mixed load · {result['generated_at']} · {m['cpu_count']} CPU "
        f"({m['cpu_model'] or 'unknown CPU'}) · Python {m['python']} · SecantusDB "
        f"{m['secantusdb']}" + (f" · code {m['git_commit']}" if m.get("git_commit") else "")
    )
    add(
        "store: embedded SecantusDB, file-backed, --sync-on-commit, w=majority j=true, "
        f"cache {o['cache_size']}, oplog cap {o['oplog_max_entries'] or 'default (100,000)'}; "
        f"service processes: omniroute serve ×{'/'.join(str(p) for p in o['processes'])}; "
        f"closed loop C={o['concurrency']}; processes not pinned"
    )
    add(
        "mix: 70 % existing conversations, 20 % known contacts (new conversation), 10 % new "
        "senders, +5 % duplicates; channels api 30 · whatsapp 20 · telegram 15 · vk 10 · "
        "avito 10 · pbx 10 · viber 5 (%)"
    )
    for s in result["sizes"]:
        add("")
        sd = s["seeding"]
        how = (
            f"the seeded store copied from {sd['from_snapshot']} in {sd['seconds']} s"
            if sd.get("from_snapshot")
            else f"seeded {sd['people']:,} more: {sd['documents']:,} docs in {sd['seconds']} s, "
            f"{num(sd['docs_per_s'])} docs/s"
        )
        add(
            f"== {s['contacts']:,} contacts in the store ({how}); "
            f"raw insert_one {num(s['raw_insert_before']['sequential_docs_per_s'])}/s before, "
            f"{num(s['raw_insert_after']['sequential_docs_per_s'])}/s after the phases"
        )
        cfgs = s["configurations"]
        w = 26
        add(f"  {'':<46}" + "".join(f"{str(c['processes']) + ' process(es)':<{w}}" for c in cfgs))

        def row(
            label: str,
            fn: Callable[[dict[str, Any]], str],
            cfgs: list[dict[str, Any]] = cfgs,
            w: int = w,
        ) -> None:
            add(f"  {label:<46}" + "".join(f"{fn(c):<{w}}" for c in cfgs))

        def lat(d: dict[str, Any]) -> str:
            return f"{num(d['p50'])} / {num(d['p95'])} / {num(d['p99'])}"

        row(
            "max: routed msgs/s (mix, closed loop)",
            lambda c: num(c["phases"]["max"]["routed_per_s"]),
        )
        row("max: acknowledged req/s", lambda c: num(c["phases"]["max"]["acked_per_s"]))

        def ratio(c: dict[str, Any], raw: float = s["raw_insert"]["sequential_docs_per_s"]) -> str:
            return num(c["phases"]["max"]["routed_per_s"] / raw)

        row("max: × raw insert rate", ratio)
        row("max: ack p50/p95/p99 ms", lambda c: lat(c["phases"]["max"]["ack_ms"]))
        row(
            "max: intake→routed p50/p95/p99 ms",
            lambda c: lat(c["phases"]["max"]["intake_to_routed_ms"]),
        )

        def summed(c: dict[str, Any], size: int = s["contacts"]) -> dict[str, float]:
            rows: dict[str, dict[str, float]] = result["summary"]["rows"]
            return rows[f"{size}/{c['processes']}"]

        row(
            f"max, 1 in {BAD_EVERY} refused: routed/s (× max)",
            lambda c: (
                f"{num(summed(c)['bad_routed_per_s'])} (×{num(summed(c)['bad_ratio_to_max'])})"
            ),
        )
        row(
            "  (expected from the refusals' CPU alone)",
            lambda c: f"×{num(summed(c)['bad_expected_ratio'])}",
        )
        row(
            "refusals: 4xx / sent (both phases) · p99 ms",
            lambda c: (
                f"{num(summed(c)['bad_refused_4xx'] + summed(c)['refusals_4xx'])} / "
                f"{num(summed(c)['bad_requests'] + summed(c)['refusals'])} · "
                f"{num(summed(c)['refusal_p99_ms'])}"
            ),
        )
        row(
            "refusal CPU ms: services / store",
            lambda c: (
                f"{num(summed(c)['refusal_cpu_ms'])} / {num(summed(c)['refusal_store_cpu_ms'])}"
            ),
        )
        row("half rate (msgs/s offered)", lambda c: num(c["half_rate"]))
        row("half: ack p50/p95/p99 ms", lambda c: lat(c["phases"]["half"]["ack_ms"]))

        def inside(c: dict[str, Any]) -> str:
            got = c["phases"]["half"]["in_service"]
            return " · ".join(
                num(got[k]["p99_le_ms"]) if got[k]["p99_le_ms"] is not None else "-"
                for k in ("webhook", "intake_write", "event_loop_lag")
            )

        row("half: in service p99 ≤ ms: handler·write·lag", inside)
        row(
            "half: intake→routed p50/p95/p99 ms",
            lambda c: lat(c["phases"]["half"]["intake_to_routed_ms"]),
        )
        row(
            f"equal load ({num(o['equal_rate'])}/s): ack p50/p95/p99 ms",
            lambda c: lat(c["phases"]["equal"]["ack_ms"]),
        )
        row(
            "equal load: intake→routed p50/p95/p99 ms",
            lambda c: lat(c["phases"]["equal"]["intake_to_routed_ms"]),
        )
        for path in ("existing", "known", "new", "duplicate"):

            def cell(c: dict[str, Any], p: str = path) -> str:
                ph = c["phases"][p]
                return (
                    f"{num(ph['routed_per_s'])} · {num(ph['round_trips_per_msg'])} · "
                    f"{num(ph['documents_written_per_msg'])}"
                )

            row(f"{path}: routed/s · round trips · docs/msg", cell)
        row(
            "mix (max): round trips · docs / msg",
            lambda c: (
                f"{num(c['phases']['max']['round_trips_per_msg'])} · "
                f"{num(c['phases']['max']['documents_written_per_msg'])}"
            ),
        )
        row(
            "CPU ms/msg (max): services / store",
            lambda c: (
                f"{num(c['phases']['max']['cpu_ms_per_msg']['services'])} / "
                f"{num(c['phases']['max']['cpu_ms_per_msg']['store'])}"
            ),
        )
        row(
            "RSS peak per service (MiB)",
            lambda c: " ".join(num(v["peak_mib"]) for v in c["rss"].values()),
        )
        row(
            "other processes' CPU share (max phase)",
            lambda c: (
                f"{c['phases']['max']['other_cpu_share']:.0%} "
                f"(half {c['phases']['half']['other_cpu_share']:.0%})"
            ),
        )
        row("checks", lambda c: "OK" if c["checks"]["ok"] else "FAILED")
        for c in cfgs:
            rules = c["phases"]["max"]["rules"]
            add(
                f"  rules in the max phase, {c['processes']} process(es): "
                + ", ".join(f"{k} {v}" for k, v in sorted(rules.items()))
            )
    ratios = result["summary"]["size_ratios"]
    if ratios:
        add("")
        big, small = result["sizes"][-1]["contacts"], result["sizes"][0]["contacts"]
        for procs, r in sorted(ratios.items()):
            add(
                f"{big:,} ÷ {small:,} contacts, {procs} process(es): intake→routed at equal "
                f"load p50 ×{r['equal_routing_p50']}, p95 ×{r['equal_routing_p95']}, p99 "
                f"×{r['equal_routing_p99']}; at half rate p50 ×{r['half_routing_p50']}; "
                f"max routed rate ×{r['max_routed_per_s']}"
            )
    add("")
    add("Targets:")
    for t in result["targets"]:
        note = f" — {t['note']}" if t["note"] else ""
        add(
            f"  {'PASS' if t['pass'] else 'MISS'}  {t['target']} [{t['where']}]: "
            f"{num(t['value'])} (limit {num(t['limit'])}){note}"
        )
    problems = [
        f"{s['contacts']:,} contacts, {c['processes']} process(es): checks {c['checks']}"
        for s in result["sizes"]
        for c in s["configurations"]
        if not c["checks"]["ok"]
    ]
    for s in result["sizes"]:
        for c in s["configurations"]:
            for name, p in c["phases"].items():
                if p["other_cpu_share"] > 0.1:
                    problems.append(
                        f"{s['contacts']:,}/{c['processes']}p {name}: other processes used "
                        f"{p['other_cpu_share']:.0%} of the CPUs — figures are noisy"
                    )
                refused = p.get("refused", {}).get("statuses", {})
                bad = {k: v - refused.get(k, 0) for k, v in p["statuses"].items() if k != "200"}
                bad = {k: v for k, v in bad.items() if v}
                if bad:
                    problems.append(f"{s['contacts']:,}/{c['processes']}p {name}: statuses {bad}")
    if problems:
        add("")
        add("PROBLEMS / NOTES:")
        lines.extend(f"  {p}" for p in problems)
    return "\n".join(lines)


# --------------------------------------------------------------------------- entry


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [CHILD_FLAG]:
        return child_main(argv[1])
    opts = parse_args(argv)

    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    result = asyncio.run(run_all(opts, progress))
    if opts.seed_only:
        for s in result["sizes"]:
            print(f"{s['contacts']:,} people: {s['seeding']}")
        return 0
    write_json(result, opts.out)
    print(table(result))
    print(f"\nJSON: {opts.out}")
    ok = all(c["checks"]["ok"] for s in result["sizes"] for c in s["configurations"])
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
