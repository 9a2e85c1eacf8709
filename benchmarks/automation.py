"""Automation: ``python -m benchmarks.automation`` — see docs/benchmarks.md.

How fast the robots are, with a large number of timers waiting:

1. a fresh file-backed embedded store (as ``python -m benchmarks`` starts it) gets
   ``--timers`` pending timers (default 100,000) of a notify rule, due far in the future,
   on ``--entities`` deals — the haystack every claim searches;
2. for 1 and for 3 worker processes (each an ``AutomationWorker`` exactly as
   ``ingest.service`` builds it, settings from ``OMNIROUTE_AUTOMATION_*``):

   a. **steady** — timers come due at a fixed rate for a few seconds; the pickup latency
      of each is the time from its ``due_at`` to its firing (``last_fired_at``, taken by
      the worker when it starts the firing), p50/p95/p99/max;
   b. **backlog** — a batch of timers is made due at once; timers fired per second until
      the last one has fired;

   and after each phase the check that every timer fired exactly once (one firing each,
   one ``timer.fired`` event each, one notification each);
3. **rule evaluation** — the cost per event of the pure decision
   (``automation.evaluate.plan_event``, the furniture maker's rules, a mix of events),
   and of handling an event end to end (reading the deal, planning, scheduling its timer,
   moving the cursor) through the worker's event loop.

Business time is the system clock here, so "due" means due now.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from automation.calendar import WorkingCalendar
from automation.conditions import Snapshot
from automation.evaluate import RuleBook, facts_of, plan_event
from automation.worker import AutomationWorker
from benchmarks.report import num, write_json
from benchmarks.run import machine, median, ms, percentile, quiet_logging, recv
from config.loader import CONFIG_FILES, load_config
from config.settings import DEFAULT_CONFIG_DIR, Settings
from crm_store import events as event_log
from crm_store.embedded import EmbeddedStore
from crm_store.store import Document, Store

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "automation.json"
LOG_NAME = "omniroute-bench-automation.log"
DB_NAME = "bench_automation"
RULE = "bench-notify"
BENCH_RULE = f"""
  # --- benchmark
  - id: {RULE}
    on: deal.created
    after: 1h
    in_stage: false
    do:
      - notify: {{to: responsible, text: "Reminder about «{{entity.title}}»"}}
"""
PHASE_TIMEOUT_S = 600.0
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Options:
    timers: int = 100_000
    entities: int = 1000
    processes: tuple[int, ...] = (1, 3)
    steady_rate: float = 20.0  # timers coming due per second
    steady_seconds: float = 15.0
    backlog: int = 2000
    eval_events: int = 20_000
    handled_events: int = 500
    runs: int = 1
    quick: bool = False


QUICK = Options(
    timers=20_000,
    entities=500,
    steady_seconds=8.0,
    backlog=600,
    eval_events=5000,
    handled_events=200,
    quick=True,
)


# ---------------------------------------------------------------------------- set-up


def config_dir(target: Path) -> Path:
    """The furniture maker's configuration plus the benchmark's notify rule."""
    target.mkdir(parents=True, exist_ok=True)
    for name in CONFIG_FILES:
        if (DEFAULT_CONFIG_DIR / name).is_file():
            shutil.copy(DEFAULT_CONFIG_DIR / name, target / name)
    with (target / "automation.yaml").open("a", encoding="utf-8") as f:
        f.write(BENCH_RULE)
    return target


def timer_doc(tag: str, i: int, entities: int, due: datetime) -> Document:
    entity = f"deal-{i % entities:06d}"
    return {
        "_id": f"{tag}-{i:07d}",
        "rule_id": RULE,
        "entity": {"kind": "deal", "id": entity},
        "entity_id": entity,
        "contact_id": f"contact-{i % entities:06d}",
        "due_at": due,
        "times": None,
        "in_stage": False,
        "event_id": tag,
        "state": "pending",
        "fired": 0,
        "attempts": 0,
        "owner": None,
        "lease_until": EPOCH,
    }


async def insert_timers(store: Store, docs: list[Document], batch: int = 1000) -> None:
    for i in range(0, len(docs), batch):
        await store["timers"].insert_many(docs[i : i + batch], ordered=False)


async def seed(store: Store, o: Options) -> dict[str, Any]:
    deals = [
        {
            "_id": f"deal-{i:06d}",
            "contact_id": f"contact-{i:06d}",
            "pipeline_id": "orders",
            "stage_id": "production",
            "open": True,
            "title": f"Order {i}",
            "fields": {"order_type": "standard" if i % 2 else "custom"},
            "responsible_id": ("anna.smirnova", "dmitry.kozlov")[i % 2],
            "stage_entered_at": datetime.now(UTC),
        }
        for i in range(o.entities)
    ]
    contacts = [
        {"_id": f"contact-{i:06d}", "name": f"Customer {i}", "identities": [f"bench:{i}"]}
        for i in range(o.entities)
    ]
    await store.deals.insert_many(deals, ordered=False)
    await store.contacts.insert_many(contacts, ordered=False)
    far = datetime.now(UTC) + timedelta(days=30)
    t0 = time.monotonic()
    await insert_timers(
        store,
        [timer_doc("pool", i, o.entities, far + timedelta(seconds=i)) for i in range(o.timers)],
    )
    seconds = time.monotonic() - t0
    return {
        "timers": o.timers,
        "insert_s": round(seconds, 1),
        "insert_per_s": round(o.timers / seconds, 1),
    }


# ---------------------------------------------------------------------------- workers


def worker_main(uri: str, cfg_dir: str, owner: str, log_path: str, conn: Connection) -> None:
    """A worker process: the service's AutomationWorker until told to stop."""
    quiet_logging(Path(log_path))

    async def run() -> None:
        settings = Settings()
        store = Store.open(uri, DB_NAME)
        worker = AutomationWorker(
            store,
            load_config(cfg_dir),
            owner=owner,
            poll_s=settings.automation_poll_s,
            lease_s=settings.automation_lease_s,
            timer_batch=settings.automation_timer_batch,
            retry_s=settings.automation_retry_s,
        )
        await worker.start()
        conn.send("ready")
        await recv(conn)
        await worker.stop()
        await store.close()

    asyncio.run(run())


@dataclass
class Workers:
    procs: list[multiprocessing.process.BaseProcess]
    conns: list[Connection]

    async def stop(self) -> None:
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.send("stop")
        for p in self.procs:
            await asyncio.to_thread(p.join, 30)
            if p.is_alive():
                p.terminate()


async def start_workers(n: int, uri: str, cfg: Path, log: Path) -> Workers:
    ctx = multiprocessing.get_context("spawn")
    procs: list[multiprocessing.process.BaseProcess] = []
    conns: list[Connection] = []
    for i in range(n):
        parent, child = ctx.Pipe()
        p = ctx.Process(
            target=worker_main,
            args=(uri, str(cfg), f"bench-worker-{i}", str(log), child),
            name=f"omniroute-bench-automation-{i}",
            daemon=True,
        )
        p.start()
        procs.append(p)
        conns.append(parent)
    for c in conns:
        assert await asyncio.wait_for(recv(c), 60) == "ready"
    return Workers(procs, conns)


async def wait_fired(store: Store, tag: str, expected: int) -> None:
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    while time.monotonic() < deadline:
        done = await store["timers"].count_documents({"state": "done", "event_id": tag})
        if done >= expected:
            return
        await asyncio.sleep(0.25)
    raise RuntimeError(f"{tag}: timers not fired within {PHASE_TIMEOUT_S}s")


async def notifications(store: Store) -> int:
    return await store["notifications"].count_documents({"rule_id": RULE})


async def verify(store: Store, tag: str, expected: int, notes_before: int) -> dict[str, Any]:
    """One firing, one ``timer.fired`` event and one notification per timer."""
    docs = [d async for d in store["timers"].find({"event_id": tag}, {"fired": 1, "state": 1})]
    ids = [d["_id"] for d in docs]
    fired_events = await store.events.count_documents(
        {"type": "timer.fired", "refs.timer_id": {"$in": ids}}
    )
    notes = await notifications(store) - notes_before
    firings = sum(int(d["fired"]) for d in docs)
    ok = len(docs) == firings == fired_events == notes == expected
    return {
        "ok": ok,
        "timers": len(docs),
        "firings": firings,
        "timer_fired_events": fired_events,
        "not_done": sum(1 for d in docs if d["state"] != "done"),
        "notifications": notes,
    }


async def fired_times(store: Store, tag: str) -> list[tuple[datetime, datetime]]:
    cursor = store["timers"].find({"event_id": tag}, {"due_at": 1, "last_fired_at": 1})
    return [(d["due_at"], d["last_fired_at"]) async for d in cursor if d.get("last_fired_at")]


async def steady(
    store: Store, o: Options, n: int, uri: str, cfg: Path, log: Path
) -> dict[str, Any]:
    tag = f"steady{n}"
    count = max(1, round(o.steady_rate * o.steady_seconds))
    notes_before = await notifications(store)
    workers = await start_workers(n, uri, cfg, log)
    try:
        start = datetime.now(UTC) + timedelta(seconds=1.0)
        docs = [
            timer_doc(tag, i, o.entities, start + timedelta(seconds=i / o.steady_rate))
            for i in range(count)
        ]
        await insert_timers(store, docs)
        await wait_fired(store, tag, count)
    finally:
        await workers.stop()
    pairs = await fired_times(store, tag)
    late = [(fired - due).total_seconds() for due, fired in pairs]
    return {
        "timers": count,
        "rate_per_s": o.steady_rate,
        "latency_ms": {
            "p50": ms(percentile(late, 50)),
            "p95": ms(percentile(late, 95)),
            "p99": ms(percentile(late, 99)),
            "max": ms(max(late)),
        },
        "checks": await verify(store, tag, count, notes_before),
    }


async def backlog(
    store: Store, o: Options, n: int, uri: str, cfg: Path, log: Path
) -> dict[str, Any]:
    tag = f"backlog{n}"
    notes_before = await notifications(store)
    due = datetime.now(UTC) - timedelta(seconds=1)
    await insert_timers(store, [timer_doc(tag, i, o.entities, due) for i in range(o.backlog)])
    t0 = datetime.now(UTC)
    workers = await start_workers(n, uri, cfg, log)
    started = datetime.now(UTC)
    try:
        await wait_fired(store, tag, o.backlog)
    finally:
        await workers.stop()
    pairs = await fired_times(store, tag)
    first = min(f for _, f in pairs)
    last = max(f for _, f in pairs)
    span = (last - first).total_seconds()
    return {
        "timers": o.backlog,
        "workers_start_s": round((started - t0).total_seconds(), 2),
        "fired_per_s": round(o.backlog / span, 1) if span > 0 else 0.0,
        "span_s": round(span, 2),
        "checks": await verify(store, tag, o.backlog, notes_before),
    }


def load_average() -> float:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else 0.0


# ---------------------------------------------------------------------------- rules


def pure_evaluation(o: Options) -> dict[str, Any]:
    """The decision alone: plan_event over a mix of events, no I/O."""
    cfg = load_config(DEFAULT_CONFIG_DIR)
    book = RuleBook(cfg.automation)
    cal = WorkingCalendar.from_config(cfg.calendar)
    now = datetime(2025, 5, 14, 9, 0, tzinfo=UTC)
    deal = Snapshot(
        kind="deal",
        id="d",
        pipeline_id="orders",
        stage_id="production",
        stage_entered_at=now,
        fields={"order_type": "custom", "paid_amount": 100, "amount": 100},
        responsible_id="anna.smirnova",
    )
    mix = [
        {
            "_id": "e1",
            "type": "deal.stage_changed",
            "occurred_at": now,
            "refs": {"deal_id": "d"},
            "data": {"from": "production_task", "to": "production", "pipeline_id": "orders"},
        },
        {
            "_id": "e2",
            "type": "deal.field_changed",
            "occurred_at": now,
            "refs": {"deal_id": "d"},
            "data": {"fields": {"paid_amount": {"old": None, "new": 100}}},
        },
        {
            "_id": "e3",
            "type": "lead.created",
            "occurred_at": now,
            "refs": {"lead_id": "d"},
            "data": {"pipeline_id": "leads", "stage_id": "new"},
        },
        {
            "_id": "e4",
            "type": "message.attached",
            "occurred_at": now,
            "refs": {"deal_id": "d"},
            "data": {"channel": "telegram", "automatic": False},
        },
    ]
    planned = 0
    t0 = time.perf_counter()
    for i in range(o.eval_events):
        ev = mix[i % len(mix)]
        plan = plan_event(book, facts_of(ev), deal, cal, now)
        planned += len(plan.actions) + len(plan.timers)
    seconds = time.perf_counter() - t0
    return {
        "rules": len(book.rules),
        "events": o.eval_events,
        "us_per_event": round(seconds / o.eval_events * 1e6, 2),
        "events_per_s": round(o.eval_events / seconds),
        "planned": planned,
    }


async def handled_events(store: Store, o: Options, cfg: Path) -> dict[str, Any]:
    """Events through the worker: stage moves into production that set a timer each."""
    worker = AutomationWorker(store, load_config(cfg), owner="bench-events", start_at_end=True)
    await worker.prepare()
    now = datetime.now(UTC)
    evs = [
        event_log.event(
            "deal.stage_changed",
            {
                "deal_id": f"deal-{i % o.entities:06d}",
                "contact_id": f"contact-{i % o.entities:06d}",
            },
            {
                "from": "production_task",
                "to": "production",
                "by": None,
                "pipeline_id": "orders",
                "final": False,
            },
            key=["bench-handled", str(i)],
            at=now,
        )
        for i in range(o.handled_events)
    ]
    for i in range(0, len(evs), 100):
        await event_log.append(store, evs[i : i + 100])
    before = await store["timers"].count_documents({"rule_id": {"$ne": RULE}})
    t0 = time.perf_counter()
    read = await worker.drain(rounds=10_000)
    seconds = time.perf_counter() - t0
    after = await store["timers"].count_documents({"rule_id": {"$ne": RULE}})
    await worker.stop()
    return {
        "events": o.handled_events,
        "read": read,
        "ms_per_event": round(seconds / o.handled_events * 1000, 2),
        "events_per_s": round(o.handled_events / seconds, 1),
        "timers_scheduled": after - before,
    }


# ---------------------------------------------------------------------------- run


async def one_run(o: Options, progress: Callable[[str], None]) -> dict[str, Any]:
    log = Path(tempfile.gettempdir()) / LOG_NAME
    with tempfile.TemporaryDirectory(prefix="omniroute-bench-automation-") as tmp:
        cfg = config_dir(Path(tmp) / "config")
        embedded = EmbeddedStore(storage_path=Path(tmp) / "mongo")
        await embedded.start()
        store = Store.open(embedded.uri, DB_NAME)
        try:
            await store.ensure_indexes()
            progress(f"seeding {o.timers:,} pending timers …")
            seeded = await seed(store, o)
            progress(f"seeded at {seeded['insert_per_s']:,.0f}/s")
            cases: dict[str, Any] = {}
            for n in o.processes:
                progress(f"{n} worker process(es): steady …")
                st = await asyncio.wait_for(
                    steady(store, o, n, embedded.uri, cfg, log), PHASE_TIMEOUT_S
                )
                progress(f"{n} worker process(es): backlog …")
                bl = await asyncio.wait_for(
                    backlog(store, o, n, embedded.uri, cfg, log), PHASE_TIMEOUT_S
                )
                # The machine's load: other processes compete for the same CPUs.
                cases[str(n)] = {"steady": st, "backlog": bl, "load_average_1m": load_average()}
            progress("rule evaluation …")
            pure = pure_evaluation(o)
            handled = await handled_events(store, o, cfg)
            pending = await store["timers"].count_documents({"state": "pending"})
        finally:
            await store.close()
            await embedded.stop()
    return {
        "seed": seeded,
        "cases": cases,
        "pure": pure,
        "handled": handled,
        "pending_at_end": pending,
    }


def headline(run: dict[str, Any]) -> dict[str, float]:
    h: dict[str, float] = {
        "pure_us_per_event": run["pure"]["us_per_event"],
        "handled_ms_per_event": run["handled"]["ms_per_event"],
        "handled_events_per_s": run["handled"]["events_per_s"],
        "seed_insert_per_s": run["seed"]["insert_per_s"],
    }
    for n, case in run["cases"].items():
        for pct in ("p50", "p95", "p99", "max"):
            h[f"p{n}_latency_{pct}_ms"] = case["steady"]["latency_ms"][pct]
        h[f"p{n}_fired_per_s"] = case["backlog"]["fired_per_s"]
        h[f"p{n}_load_average"] = case["load_average_1m"]
    return h


async def run_automation(o: Options, progress: Callable[[str], None]) -> dict[str, Any]:
    runs = []
    for i in range(o.runs):
        progress(f"automation run {i + 1}/{o.runs} …")
        runs.append(await one_run(o, progress))
    heads = [headline(r) for r in runs]
    med = {k: median([h[k] for h in heads]) for k in heads[0]}
    spread = {k: [min(h[k] for h in heads), max(h[k] for h in heads)] for k in heads[0]}
    checks = [
        case[phase]["checks"]
        for r in runs
        for case in r["cases"].values()
        for phase in ("steady", "backlog")
    ]
    settings = Settings()
    return {
        "schema": 1,
        "benchmark": "automation",
        "generated_at": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "machine": machine(False, None),
        "options": dataclasses.asdict(o),
        "worker_settings": {
            "poll_s": settings.automation_poll_s,
            "lease_s": settings.automation_lease_s,
            "timer_batch": settings.automation_timer_batch,
        },
        "store": {
            "kind": "embedded SecantusDB (secantusd-py), file-backed in a temp dir",
            "sync_on_commit": True,
            "write_concern": {"w": "majority", "j": True},
        },
        "correct": all(c["ok"] for c in checks),
        "median": med,
        "spread": spread if len(runs) > 1 else None,
        "runs": runs,
    }


def table(result: dict[str, Any]) -> str:
    m: dict[str, float] = result["median"]
    spread: dict[str, list[float]] | None = result["spread"]
    o = result["options"]
    mach = result["machine"]
    ws = result["worker_settings"]

    def f(key: str) -> str:
        if key not in m:
            return "–"
        text = num(m[key])
        if spread:
            lo, hi = spread[key]
            text += f" [{num(lo)}–{num(hi)}]"
        return text

    ps: list[int] = o["processes"]
    w = 24
    lines = [
        f"omniroute automation benchmark · {result['generated_at']} · {mach['cpu_count']} CPU "
        f"({mach['cpu_model'] or 'unknown CPU'}) · Python {mach['python']} · SecantusDB "
        f"{mach['secantusdb']}",
        "store: embedded SecantusDB, file-backed, --sync-on-commit, w=majority j=true; "
        "processes not pinned",
        f"AutomationWorker: poll {ws['poll_s']:g} s, lease {ws['lease_s']:g} s, "
        f"{ws['timer_batch']} timers per claim; rule: notify the responsible",
        f"{o['timers']:,} timers pending throughout (seeded at {f('seed_insert_per_s')}/s)",
        "",
        f"  {'':<46}" + "".join(f"{f'{n} process' + ('es' if n > 1 else ''):<{w}}" for n in ps),
    ]

    def row(label: str, key: str) -> None:
        lines.append(f"  {label:<46}" + "".join(f"{f(key.format(n=n)):<{w}}" for n in ps))

    steady_n = round(o["steady_rate"] * o["steady_seconds"])
    lines.append(
        f"Steady: {steady_n} timers coming due at {o['steady_rate']:g}/s; latency = firing − due_at"
    )
    for pct in ("p50", "p95", "p99", "max"):
        row(f"pickup latency {pct} (ms)", "p{n}_latency_" + pct + "_ms")
    lines.append(f"Backlog: {o['backlog']:,} timers due at once")
    row("timers fired/s", "p{n}_fired_per_s")
    row("machine load average (1 min) after the case", "p{n}_load_average")
    lines += [
        "",
        "Rule evaluation (the furniture maker's rules):",
        f"  pure decision (plan_event), µs per event      {f('pure_us_per_event')}",
        f"  handled end to end (read, plan, schedule), ms  {f('handled_ms_per_event')}"
        f"  ({f('handled_events_per_s')} events/s, one process)",
        "",
        "Correctness (every timer fired exactly once): "
        + ("OK" if result["correct"] else "FAILED — see the JSON"),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.automation",
        description="Automation benchmark: timers pending in an embedded file-backed store, "
        "1 and 3 worker processes, rule evaluation. Prints a table and writes JSON.",
    )
    p.add_argument("--quick", action="store_true", help="a short run (20,000 timers)")
    p.add_argument("--timers", type=int, help="pending timers (100,000; quick 20,000)")
    p.add_argument("--backlog", type=int, help="timers due at once per case (2,000; quick 600)")
    p.add_argument("--runs", type=int, default=1, help="repeat everything; report medians")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output file")
    args = p.parse_args(argv)
    base = QUICK if args.quick else Options()
    o = dataclasses.replace(
        base,
        timers=args.timers if args.timers is not None else base.timers,
        backlog=args.backlog if args.backlog is not None else base.backlog,
        runs=max(1, args.runs),
    )
    if min(o.timers, o.backlog) < 1:
        raise SystemExit("--timers and --backlog must be ≥ 1")
    log_path = Path(tempfile.gettempdir()) / LOG_NAME
    quiet_logging(log_path)

    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    progress(f"worker log: {log_path}")
    result = asyncio.run(run_automation(o, progress))
    write_json(result, args.out)
    print(table(result))
    print(f"\nJSON: {args.out}")
    return 0 if result["correct"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
