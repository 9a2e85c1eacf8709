"""Reports: ``python -m benchmarks.reports [--scale 1.0]`` — see docs/reports.md.

1. start a file-backed embedded store (as ``omniroute serve`` does, ``--sync-on-commit``)
   in a temp dir (or ``--store-dir DIR``, kept; ``--reuse`` skips the load below when DIR
   holds a finished load of this scale), create every index, then bulk-load a year of
   generated history with ``insert_many`` (10,000 documents a batch; timed): at ``--scale 1`` 1M
   messages in 100k conversations, 100k leads, 30k deals, 20k calls, 20k tasks, ~100k
   events (closings, stage changes, timer firings) and 5k survey answers;
   then build the report rollups (``omniroute reports rebuild``; timed);
2. start the service in this process on that store (its automation cursor and the
   event counter set past the loaded events, so nothing replays them);
3. ask each report over HTTP as an admin for the last ``--period-days`` whole local
   days (grouped by day and by channel; volume, responsiveness and the funnel read the
   rollups) ``--repeat`` times: the median and worst latency (target ≤ 2 s);
4. post ``--webhooks`` signed site-form webhooks from a separate load generator process
   (benchmarks/loadgen.py): closed loop (``--concurrency`` at once) alone — the maximum
   rate, acknowledged and routed (each phase starts with the backlog routed) — and while
   this process asks the reports one after another without pause; then open loop at half
   that maximum rate, alone and again with the reports back to back.
   The target (the acknowledgement p99 at most +20 % while the reports run) is read at
   half the maximum rate, as issue #23's latency targets are: a closed loop keeps the
   service saturated, where any added work only lengthens the queue. Both are printed.

Prints PASS/MISS per target and writes benchmarks/results/reports.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from automation.calendar import WorkingCalendar
from automation.worker import CURSOR
from benchmarks import loadgen
from benchmarks.loadgen import Job, JobResult
from benchmarks.report import num, write_json
from benchmarks.run import percentile, quiet_logging, recv, serving
from benchmarks.workload import SECRET, SECRET_ENV, body
from config.loader import load_config
from config.models import AppConfig
from config.settings import DEFAULT_CONFIG_DIR
from crm_store import cursors, tokens
from crm_store.embedded import OPEN_S, EmbeddedStore
from crm_store.indexes import ensure_indexes
from crm_store.reports import REPORTS, rollup
from crm_store.store import Document, Store

DEFAULT_OUT = Path("benchmarks/results/reports.json")
BATCH = 10_000
LATENCY_TARGET_S = 2.0
ACK_TARGET = 1.20
USERS = ["anna.smirnova", "dmitry.kozlov", "olga.ivanova", "ivan.petrov", None]
DEPT = {"anna.smirnova": "sales", "dmitry.kozlov": "sales", "olga.ivanova": "wholesale"}
CHANNELS = ["telegram", "whatsapp", "email", "vk", "avito", "webchat"]
SOURCES = ["site", "messengers", "mail_sales", "mail_wholesale", "avito", "phone"]
SEQ0 = 1_000
TMP_PREFIX = "omniroute-bench-reports-"
# Written into --store-dir once the bulk load has finished: the scale, the instant the
# generated year ends at, and the load's figures (what --reuse needs).
MARKER = "loaded.json"
PENDING = {"status": "pending"}  # intake not yet routed


def loaded_store(marker: Path, scale: float) -> dict[str, Any] | None:
    """The marker of a finished load of this scale, or None."""
    try:
        doc: dict[str, Any] = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return doc if doc.get("scale") == scale and "now" in doc and "load" in doc else None


def prepare_dir(root: Path, scale: float, reuse: bool) -> dict[str, Any] | None:
    """The marker of a store to reuse, or None after clearing ``root`` for a new load
    (a partial load or one of another scale is removed)."""
    root.mkdir(parents=True, exist_ok=True)
    previous = loaded_store(root / MARKER, scale) if reuse else None
    if previous is None:
        (root / MARKER).unlink(missing_ok=True)
        if (root / "mongo").exists():
            shutil.rmtree(root / "mongo")
    return previous


class Gen:
    """A year of history ending now, ``scale`` × the full size."""

    def __init__(self, scale: float, now: datetime) -> None:
        self.rng = random.Random(22)
        self.scale = scale
        self.now = now
        self.start = now - timedelta(days=365)
        self.seq = SEQ0

    def n(self, full: int) -> int:
        return max(1, int(full * self.scale))

    def at(self) -> datetime:
        return self.start + timedelta(seconds=self.rng.randrange(365 * 86400))

    def event(self, type_: str, at: datetime, refs: Document, data: Document) -> Document:
        self.seq += 1
        return {
            "_id": f"bench-ev-{self.seq}",
            "seq": self.seq,
            "type": type_,
            "occurred_at": at,
            "refs": refs,
            "data": data,
        }

    def conversations(self) -> tuple[list[Document], list[Document], list[Document]]:
        """Conversations with ~10 messages each (in, replies, automatic, notes), and
        some closings."""
        convs: list[Document] = []
        msgs: list[Document] = []
        events: list[Document] = []
        n_conv = self.n(100_000)
        per = max(1, self.n(1_000_000) // n_conv)
        for i in range(n_conv):
            owner = self.rng.choice(USERS)
            at = self.at()
            cid = f"bench-conv-{i}"
            channel = self.rng.choice(CHANNELS)
            convs.append(
                {
                    "_id": cid,
                    "channel": channel,
                    "account": "bench",
                    "department": DEPT.get(owner or ""),
                    "assignee_id": owner,
                    "status": "open",
                    "created_at": at,
                    "last_message_at": at,
                }
            )
            source = self.rng.choice(SOURCES)
            for j in range(per):
                r = self.rng.random()
                doc: Document = {
                    "_id": f"bench-msg-{i}-{j}",
                    "conversation_id": cid,
                    "channel": channel,
                    "source_id": source,
                    "received_at": at,
                    "text": "Good afternoon! A quote for a kitchen, please.",
                }
                if r < 0.6:
                    doc |= {"direction": "in", "automatic": False}
                elif r < 0.9:
                    doc |= {"direction": "out", "author_id": owner or "anna.smirnova"}
                elif r < 0.95:
                    doc |= {"direction": "out", "automatic": True}
                else:
                    doc |= {"direction": "note", "author_id": owner}
                msgs.append(doc)
                at += timedelta(minutes=self.rng.choice([1, 5, 30, 120, 600]))
            if self.rng.random() < 0.3:
                events.append(self.event("conversation.closed", at, {"conversation_id": cid}, {}))
        return convs, msgs, events

    def entities(self) -> tuple[list[Document], list[Document], list[Document]]:
        leads: list[Document] = []
        deals: list[Document] = []
        events: list[Document] = []
        for i in range(self.n(100_000)):
            owner = self.rng.choice(USERS)
            at = self.at()
            stage = self.rng.choice(["new", "in_work", "qualified", "not_interested"])
            leads.append(
                {
                    "_id": f"bench-lead-{i}",
                    "pipeline_id": "leads",
                    "stage_id": stage,
                    "source_id": self.rng.choice(SOURCES),
                    "responsible_id": owner,
                    "is_repeat": self.rng.random() < 0.2,
                    "origin_intake_id": f"bench-msg-{i}-0",
                    "created_at": at,
                    "open": stage in ("new", "in_work"),
                    "fields": {},
                }
            )
            if stage != "new":
                moved = at + timedelta(hours=self.rng.randint(1, 200))
                data = {"from": "new", "to": stage, "pipeline_id": "leads"}
                events.append(
                    self.event("lead.stage_changed", moved, {"lead_id": f"bench-lead-{i}"}, data)
                )
            if stage == "qualified" and len(deals) < self.n(30_000):
                deals.append(
                    {
                        "_id": f"bench-deal-{i}",
                        "pipeline_id": "orders",
                        "stage_id": self.rng.choice(["estimate", "production", "won", "lost"]),
                        "source_id": leads[-1]["source_id"],
                        "responsible_id": owner,
                        "converted_from": f"bench-lead-{i}",
                        "created_at": at + timedelta(days=1),
                        "open": True,
                        "last_activity_at": at + timedelta(days=self.rng.randint(1, 60)),
                        "fields": {},
                    }
                )
        for _ in range(self.n(10_000)):
            lead = self.rng.choice(leads)
            rule = self.rng.choice(["lead-untouched", "payment-reminder"])
            events.append(
                self.event(
                    "timer.fired", self.at(), {"lead_id": lead["_id"]}, {"rule_id": rule, "n": 1}
                )
            )
        return leads, deals, events

    def calls_tasks_surveys(self) -> tuple[list[Document], list[Document], list[Document]]:
        calls: list[Document] = []
        for i in range(self.n(20_000)):
            at = self.at()
            disp = self.rng.choice(["answered", "answered", "missed", "busy"])
            calls.append(
                {
                    "_id": f"bench-call-{i}",
                    "channel": "pbx",
                    "direction": self.rng.choice(["in", "in", "in", "out"]),
                    "customer": f"+7900{i % 5000:07d}",
                    "message_id": f"bench-msg-{i}-0",
                    "status": {"rank": 4, "value": "ended"},
                    "disposition": {"rank": 1, "value": disp},
                    "started_at": at,
                    "ended_at": at + timedelta(minutes=3),
                }
            )
        tasks: list[Document] = []
        for i in range(self.n(20_000)):
            deadline = self.at()
            done = self.rng.random() < 0.7
            tasks.append(
                {
                    "_id": f"bench-task-{i}",
                    "title": "Call back",
                    "assignee_id": self.rng.choice(USERS[:3]),
                    "deadline": deadline,
                    "status": "done" if done else "open",
                    "entity": {"kind": "lead", "id": f"bench-lead-{i}"},
                    **({"completed_at": deadline + timedelta(hours=2)} if done else {}),
                }
            )
        surveys: list[Document] = []
        for i in range(self.n(5_000)):
            sent = self.at()
            owner = self.rng.choice(USERS)
            surveys.append(
                {
                    "_id": f"bench-survey-{i}",
                    "deal_id": f"bench-deal-{i}",
                    "pipeline": "orders",
                    "responsible_id": owner,
                    "department": DEPT.get(owner or ""),
                    "questions": ["quality", "speed"],
                    "answers": {"quality": self.rng.randint(1, 5), "speed": self.rng.randint(1, 5)},
                    "sent_at": sent,
                    "answered_at": sent + timedelta(hours=5),
                    "expires_at": sent + timedelta(days=7),
                }
            )
        return calls, tasks, surveys


async def load(store: Store, scale: float, now: datetime) -> dict[str, Any]:
    """Generate and insert; returns counts and the time the inserts took."""
    gen = Gen(scale, now)
    convs, msgs, ev1 = gen.conversations()
    leads, deals, ev2 = gen.entities()
    calls, tasks, surveys = gen.calls_tasks_surveys()
    collections = {
        "conversations": convs,
        "messages": msgs,
        "leads": leads,
        "deals": deals,
        "events": ev1 + ev2,
        "calls": calls,
        "tasks": tasks,
        "survey_answers": surveys,
    }
    t0 = time.monotonic()
    for name, docs in collections.items():
        for i in range(0, len(docs), BATCH):
            await store[name].insert_many(docs[i : i + BATCH], ordered=False)
    load_s = time.monotonic() - t0
    # Live events continue after the loaded ones; automation starts past them.
    await store.counters.update_one({"_id": "events"}, {"$max": {"value": gen.seq}}, upsert=True)
    await cursors.ensure(store, CURSOR, gen.seq)
    total = sum(len(d) for d in collections.values())
    return {
        "documents": {k: len(v) for k, v in collections.items()},
        "load_s": round(load_s, 1),
        "docs_per_s": round(total / load_s),
    }


async def build_rollups(store: Store, config: AppConfig) -> dict[str, Any]:
    """``omniroute reports rebuild`` over the loaded store (timed)."""
    t0 = time.monotonic()
    n = await rollup.rebuild(store, WorkingCalendar.from_config(config.calendar))
    took = time.monotonic() - t0
    return {
        "conversations": n,
        "rebuild_s": round(took, 1),
        "ms_per_conversation": round(took * 1000 / max(1, n), 2),
        "conv_day_docs": await store[rollup.CONV_DAYS].count_documents({}),
        "episode_docs": await store[rollup.EPISODES].count_documents({}),
    }


async def catch_up(store: Store, config: AppConfig, timeout_s: float = 120.0) -> int:
    """Apply the events the rollups lag behind (the last run's webhooks, when it stopped
    before its worker had applied them); waits out a dead holder's cursor lease."""
    worker = rollup.RollupWorker(
        store, WorkingCalendar.from_config(config.calendar), owner="benchmark-catch-up"
    )
    applied, deadline = 0, time.monotonic() + timeout_s
    while (await rollup.status(store)).lag and time.monotonic() < deadline:
        applied += await worker.drain()
        await asyncio.sleep(1.0)
    return applied


async def ask(http: aiohttp.ClientSession, url: str) -> float:
    t0 = time.monotonic()
    async with http.get(url) as resp:
        await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{url}: {resp.status}")
    return time.monotonic() - t0


def ack_stats(res: JobResult) -> dict[str, float]:
    lat = sorted(res.latencies)
    return {
        "n": len(lat),
        "p50_ms": round(percentile(lat, 50) * 1000, 1),
        "p99_ms": round(percentile(lat, 99) * 1000, 1),
        "ok": sum(n for s, n in res.statuses.items() if 200 <= s < 300),
    }


async def run(args: argparse.Namespace, progress: Any) -> dict[str, Any]:
    os.environ[SECRET_ENV] = SECRET
    config = load_config(DEFAULT_CONFIG_DIR)
    now = datetime.now(UTC)
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    gen_proc = ctx.Process(target=loadgen.main, args=(child, None), daemon=True)
    gen_proc.start()
    with contextlib.ExitStack() as dirs:
        if args.store_dir is None:
            root = Path(dirs.enter_context(tempfile.TemporaryDirectory(prefix=TMP_PREFIX)))
        else:
            root = args.store_dir
        marker = root / MARKER
        previous = prepare_dir(root, args.scale, args.reuse)
        if args.reuse and previous is None:
            progress(f"--reuse: no finished load of scale {args.scale} in {root}; loading")
        embedded = EmbeddedStore(storage_path=root / "mongo")
        await embedded.start(timeout=OPEN_S)
        try:
            loader = Store.open(embedded.uri, "omniroute")
            # The indexes first, as in production: the embedded server builds an index
            # over existing documents about ten times slower than it maintains it while
            # inserting (measured: 303 s against 28 s at --scale 0.02). On a reused store
            # this creates only indexes added since it was loaded.
            await ensure_indexes(loader.db)
            if previous is not None:
                loaded = previous["load"] | {"reused": True}
                now = datetime.fromisoformat(previous["now"])
                progress(f"reusing the scale {args.scale} store in {root} (loaded {now})")
            else:
                progress(f"loading scale {args.scale} …")
                loaded = await load(loader, args.scale, now)
                if args.store_dir is not None:
                    mark = {"scale": args.scale, "now": now.isoformat(), "load": loaded}
                    marker.write_text(json.dumps(mark))
            if args.keep_rollups and previous is not None and (await rollup.status(loader)).ready:
                rolled = {"kept": True, "events_applied": await catch_up(loader, config)}
                progress(f"--keep-rollups: the store's rollups kept ({rolled})")
            else:
                progress(f"loaded in {loaded['load_s']} s; building the report rollups …")
                rolled = await build_rollups(loader, config)
                progress(f"rollups built in {rolled['rebuild_s']} s")
            await loader.close()
            async with serving(embedded.uri, "omniroute", config, None) as served:
                await recv(parent)  # the load generator is ready
                token, _ = await tokens.issue(served.store, "sergey.volkov")
                base = served.url.split("/webhooks/")[0]
                # Whole local days (a date `to` includes that day): what the rollups cover.
                cal = WorkingCalendar.from_config(config.calendar)
                today = cal.local(now).date()
                frm = today - timedelta(days=args.period_days - 1)
                query = f"from={frm.isoformat()}&to={today.isoformat()}&group=day&by=channel"
                latencies: dict[str, list[float]] = {}
                headers = {"Authorization": f"Bearer {token}"}
                async with aiohttp.ClientSession(headers=headers) as http:
                    for name in REPORTS:
                        url = f"{base}/api/v1/reports/{name}?{query}"
                        latencies[name] = [await ask(http, url) for _ in range(args.repeat)]
                        progress(f"{name}: {num(statistics.median(latencies[name]))} s")

                    sent = 0

                    async def acks(tag: str, rate: float = 0.0) -> JobResult:
                        nonlocal sent
                        bodies = [
                            body(f"{tag}-{run_no}-{i}", sender0 + sent + i)
                            for i in range(args.webhooks)
                        ]
                        sent += args.webhooks
                        in_flight = 64 if rate else args.concurrency
                        parent.send(Job(served.url, SECRET, bodies, in_flight, rate=rate))
                        result: JobResult = await recv(parent)
                        return result

                    # A reused store keeps earlier runs' webhooks: new ids and senders
                    # each run, so every run posts first messages of new customers.
                    runs = await served.store.counters.find_one_and_update(
                        {"_id": "bench_reports_runs"}, {"$inc": {"value": 1}}, upsert=True
                    )
                    run_no = int((runs or {}).get("value") or 0)
                    sender0 = 500_000 + (run_no % 100) * 40_000
                    asked = 0

                    async def with_reports(tag: str, rate: float = 0.0) -> JobResult:
                        nonlocal asked
                        stop = asyncio.Event()

                        async def reports_loop() -> None:
                            nonlocal asked
                            while not stop.is_set():
                                for name in args.busy_reports.split(","):
                                    await ask(http, f"{base}/api/v1/reports/{name}?{query}")
                                    asked += 1

                        loop_task = asyncio.create_task(reports_loop())
                        try:
                            return await acks(tag, rate)
                        finally:
                            stop.set()
                            await loop_task

                    async def drained() -> float:
                        """Wait until every accepted webhook is routed; when that was."""
                        for _ in range(6000):  # at most 10 minutes
                            if not await served.store.intake.count_documents(PENDING):
                                break
                            await asyncio.sleep(0.1)
                        return time.monotonic()

                    await drained()
                    alone = await acks("alone")
                    routed_s = await drained() - alone.first_start
                    busy = await with_reports("busy")
                    await drained()
                    progress(
                        f"closed loop: acks alone {ack_stats(alone)}; "
                        f"with reports {ack_stats(busy)}"
                    )
                    # The maximum sustained rate: acknowledged and routed (a burst is
                    # acknowledged far faster than it is routed).
                    ack_rate = args.webhooks / max(1e-9, alone.last_end - alone.first_start)
                    max_rate = min(ack_rate, args.webhooks / max(1e-9, routed_s))
                    half = max_rate / 2
                    half_alone = await acks("half-alone", half)
                    await drained()
                    half_busy = await with_reports("half-busy", half)
                    await drained()
                    progress(
                        f"half rate ({half:.1f}/s): acks alone {ack_stats(half_alone)}; "
                        f"with reports {ack_stats(half_busy)}"
                    )
        finally:
            loadgen.stop(parent, gen_proc)
            await embedded.stop()
    a, b = ack_stats(alone), ack_stats(busy)
    ha, hb = ack_stats(half_alone), ack_stats(half_busy)
    lat = {
        k: {"median_s": round(statistics.median(v), 3), "max_s": round(max(v), 3)}
        for k, v in latencies.items()
    }
    closed_ratio = b["p99_ms"] / a["p99_ms"] if a["p99_ms"] else float("inf")
    ratio = hb["p99_ms"] / ha["p99_ms"] if ha["p99_ms"] else float("inf")
    targets = [
        {
            "what": f"{k} latency (median)",
            "value": v["median_s"],
            "target": f"≤ {LATENCY_TARGET_S} s",
            "pass": v["median_s"] <= LATENCY_TARGET_S,
        }
        for k, v in lat.items()
    ]
    targets.append(
        {
            "what": "webhook ack p99 with reports running / alone, "
            f"at half the max rate ({half:.1f}/s)",
            "value": round(ratio, 2),
            "target": f"≤ {ACK_TARGET}",
            "pass": ratio <= ACK_TARGET,
        }
    )
    return {
        "schema": 1,
        "generated_at": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "machine": {"cpus": os.cpu_count(), "loadavg": os.getloadavg()},
        "options": vars(args)
        | {"out": str(args.out), "store_dir": str(args.store_dir) if args.store_dir else None},
        "load": loaded,
        "rollups": rolled,
        "report_latency": lat,
        "acks": {
            "closed_loop": {
                "concurrency": args.concurrency,
                "max_rate_per_s": round(max_rate, 1),
                "alone": a,
                "with_reports": b,
                "ratio": round(closed_ratio, 2),
            },
            "half_rate": {"rate_per_s": round(half, 1), "alone": ha, "with_reports": hb},
            "alone": ha,
            "with_reports": hb,
            "reports_asked_meanwhile": asked,
        },
        "targets": targets,
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        f"reports benchmark — scale {result['options']['scale']}, "
        f"load {result['load']['load_s']} s ({result['load']['docs_per_s']:,} docs/s), "
        f"loadavg {result['machine']['loadavg'][0]:.1f}"
    ]
    r = result["rollups"]
    if r.get("kept"):
        lines.append("  rollups kept from the reused store (--keep-rollups): not rebuilt")
    else:
        lines.append(
            f"  rollups rebuilt in {r['rebuild_s']} s ({r['conversations']:,} conversations, "
            f"{r['ms_per_conversation']} ms each): {r['conv_day_docs']:,} conversation-days, "
            f"{r['episode_docs']:,} episodes"
        )
    for t in result["targets"]:
        verdict = "PASS" if t["pass"] else "MISS"
        lines.append(f"  {verdict}  {t['what']}: {t['value']} (target {t['target']})")
    closed, half = result["acks"]["closed_loop"], result["acks"]["half_rate"]
    for label, part in (
        (f"closed loop ({closed['concurrency']} at once, {closed['max_rate_per_s']}/s)", closed),
        (f"half the max rate ({half['rate_per_s']}/s, open loop)", half),
    ):
        a, b = part["alone"], part["with_reports"]
        lines.append(
            f"  {label}: acks alone p50/p99 {a['p50_ms']}/{a['p99_ms']} ms; with reports "
            f"{b['p50_ms']}/{b['p99_ms']} ms"
        )
    lines.append(f"  reports asked meanwhile: {result['acks']['reports_asked_meanwhile']}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.reports", description=__doc__)
    p.add_argument("--scale", type=float, default=1.0, help="1.0: 1M messages, 100k leads")
    p.add_argument("--period-days", type=int, default=30, help="the period each report covers")
    p.add_argument("--repeat", type=int, default=3, help="times each report is asked")
    p.add_argument("--webhooks", type=int, default=400, help="webhooks per ack phase")
    p.add_argument("--concurrency", type=int, default=8, help="webhooks in flight")
    p.add_argument(
        "--busy-reports",
        default=",".join(REPORTS),
        help="the reports asked back to back during the second ack phase (default: all)",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument(
        "--store-dir",
        type=Path,
        default=None,
        help="keep the loaded store in this directory (default: a temporary one, removed)",
    )
    p.add_argument(
        "--reuse",
        action="store_true",
        help="with --store-dir: skip generation and bulk load when the directory holds a "
        "finished load of this --scale (the rollups are still rebuilt, timed)",
    )
    p.add_argument(
        "--keep-rollups",
        action="store_true",
        help="with --reuse: keep the store's rollups when they were built (applying the "
        "events they lag behind) instead of rebuilding them; no rebuild figure then",
    )
    args = p.parse_args(argv)
    if args.reuse and args.store_dir is None:
        p.error("--reuse needs --store-dir")
    if args.keep_rollups and not args.reuse:
        p.error("--keep-rollups needs --reuse")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log = Path(tempfile.gettempdir()) / "omniroute-bench-reports.log"
    quiet_logging(log)
    result = asyncio.run(run(args, lambda s: print(s, file=sys.stderr, flush=True)))
    write_json(result, args.out)
    print(table(result))
    print(f"\nJSON: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
