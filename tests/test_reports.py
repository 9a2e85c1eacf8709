"""Reports (crm_store/reports/, inbox/reports_api.py) against brute force.

A small set goes in through the real path — site-form webhooks routed into leads and
conversations, an operator's reply through the API — and a larger generated set is
bulk-inserted into the collections with known times across the New Year holidays,
23 February and weekends. Every figure the API answers is recomputed here from the raw
documents by a separate, naive implementation (working time counted minute by minute),
for the admin, a director (sales + wholesale), and two managers (sales; wholesale) —
twice: computed from the collections, then (after ``rollup.rebuild``) with volume and
responsiveness read from the report rollups; the live part is read from rollups kept by
the service's own rollup worker.
Bad parameters get 422 problem+json; CSV is UTF-8 with a BOM, RFC 4180, formula-safe.
"""

from __future__ import annotations

import asyncio
import csv
import io
import math
import random
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from automation.calendar import WorkingCalendar
from config.loader import load_config
from config.settings import DEFAULT_CONFIG_DIR
from crm_store import conversion, entities, stages, tokens
from crm_store.reports import REPORTS as REPORT_NAMES
from crm_store.reports import rollup
from inbox.reports_api import safe_cell
from tests.service import InProcess, api_body, in_process
from tests.test_reports_rollup import served

MSK = ZoneInfo("Europe/Moscow")
CAL = WorkingCalendar()
CONFIG = load_config(DEFAULT_CONFIG_DIR)
ANNA, DMITRY, OLGA, IVAN, ADMIN = (
    "anna.smirnova",
    "dmitry.kozlov",
    "olga.ivanova",
    "ivan.petrov",
    "sergey.volkov",
)
DEPT = {ANNA: "sales", DMITRY: "sales", OLGA: "wholesale"}
# Who sees which departments (None: all, and facts of no department).
SCOPES: dict[str, set[str] | None] = {
    ADMIN: None,
    IVAN: {"sales", "wholesale"},
    ANNA: {"sales"},
    OLGA: {"wholesale"},
}
START = datetime(2026, 1, 1, tzinfo=MSK)
MIN = timedelta(minutes=1)
END = datetime(2026, 3, 1, tzinfo=MSK)
PERIOD = "from=2026-01-01&to=2026-02-28"
SEQ0 = 50_000_000  # generated events' sequence numbers: far above the live ones


def t(rng: random.Random, lo: datetime, hi: datetime) -> datetime:
    """A random instant in [lo, hi) on a 5-minute grid (brute force steps 5 minutes)."""
    steps = int((hi - lo).total_seconds() // 300)
    return (lo + timedelta(minutes=5 * rng.randrange(steps))).astimezone(UTC)


def sees(who: str, dept: str | None) -> bool:
    scope = SCOPES[who]
    return scope is None or dept in scope


def in_period(at: datetime | None) -> bool:
    return at is not None and START <= at < END


def brute_working(a: datetime, b: datetime) -> float:
    n, x = 0, a
    while x < b:
        n += 300 if CAL.is_working_time(x) else 0
        x += timedelta(minutes=5)
    return float(n)


def nearest_rank(values: list[float], p: int) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[math.ceil(p * len(s) / 100) - 1]


def week_of(at: datetime) -> str:
    d = at.astimezone(MSK).date()
    return (d - timedelta(days=d.weekday())).isoformat()


# --- the generated world -------------------------------------------------------------


async def generate(svc: InProcess) -> None:
    rng = random.Random(2207)
    store = svc.store
    lo, hi = datetime(2025, 12, 20, tzinfo=MSK), datetime(2026, 3, 10, tzinfo=MSK)
    users = [ANNA, DMITRY, OLGA, None]
    messages: list[dict[str, Any]] = []
    convs: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []

    def ev(type_: str, at: datetime, refs: dict[str, Any], data: dict[str, Any]) -> None:
        n = len(events)
        events.append(
            {
                "_id": f"gen-ev-{n}",
                "seq": SEQ0 + n,
                "type": type_,
                "occurred_at": at,
                "refs": refs,
                "data": data,
            }
        )

    for i in range(70):
        cid = f"gen-conv-{i}"
        owner = rng.choice(users)
        at = t(rng, lo, hi)
        channel = rng.choice(["telegram", "whatsapp", "email"])
        convs.append(
            {
                "_id": cid,
                "channel": channel,
                "account": "gen",
                "department": DEPT.get(owner or ""),
                "assignee_id": owner,
                "status": "open",
                "created_at": at,
            }
        )
        for j in range(rng.randint(1, 7)):
            kind = rng.choice(
                ["in", "in", "in", "auto_in", "reply", "reply", "auto_out", "note", "close"]
            )
            base: dict[str, Any] = {
                "_id": f"gen-msg-{i}-{j}",
                "conversation_id": cid,
                "channel": channel,
                "source_id": rng.choice(["site", "messengers", "mail_wholesale"]),
                "received_at": at,
            }
            if kind in ("in", "auto_in"):
                messages.append({**base, "direction": "in", "automatic": kind == "auto_in"})
            elif kind == "reply":
                who = rng.choice([ANNA, DMITRY, OLGA])
                messages.append({**base, "direction": "out", "author_id": who, "automatic": False})
            elif kind == "auto_out":
                messages.append({**base, "direction": "out", "author_id": None, "automatic": True})
            elif kind == "note":
                messages.append({**base, "direction": "note", "author_id": ANNA})
            else:
                ev("conversation.closed", at, {"conversation_id": cid}, {"status": "closed"})
            at += timedelta(minutes=5 * rng.choice([0, 1, 3, 12, 60, 200, 700, 1500]))
    # Leads, each opened by a message; some converted into deals; direct deals too.
    leads: list[dict[str, Any]] = []
    deals: list[dict[str, Any]] = []
    for i in range(80):
        src = rng.choice(["site", "messengers", "mail_wholesale", "avito"])
        pipe = CONFIG.source(src).pipeline
        owner = rng.choice(users)
        created = t(rng, lo, hi)
        origin = f"gen-origin-{i}"
        messages.append(
            {
                "_id": origin,
                "direction": "in",
                "conversation_id": None,
                "channel": rng.choice(["telegram", "vk"]),
                "source_id": src,
                "received_at": created,
            }
        )
        stages = [s.id for s in CONFIG.pipeline(pipe).stages]
        lead = {
            "_id": f"gen-lead-{i}",
            "pipeline_id": pipe,
            "stage_id": rng.choice(stages),
            "source_id": src,
            "responsible_id": owner,
            "is_repeat": rng.random() < 0.3,
            "origin_intake_id": origin,
            "created_at": created,
            "fields": {"lost_reason": rng.choice(["price", "=cmd()", None])},
            "open": True,
        }
        leads.append(lead)
        at = created
        prev = stages[0]
        for _ in range(rng.randint(0, 3)):
            at += timedelta(minutes=5 * rng.randint(1, 2000))
            to = rng.choice(stages)
            ev(
                "lead.stage_changed",
                at,
                {"lead_id": lead["_id"]},
                {"from": prev, "to": to, "pipeline_id": pipe},
            )
            prev = to
        if rng.random() < 0.4:
            dstages = [s.id for s in CONFIG.pipeline("orders").stages]
            deals.append(
                {
                    "_id": f"gen-deal-c{i}",
                    "pipeline_id": "orders",
                    "stage_id": rng.choice(dstages),
                    "source_id": src,
                    "responsible_id": owner,
                    "converted_from": lead["_id"],
                    "created_at": created + timedelta(days=rng.randint(0, 20)),
                    "open": True,
                    "last_activity_at": created,
                    "fields": {"lost_reason": rng.choice(["price", None])},
                }
            )
    for i in range(30):
        owner = rng.choice(users)
        created = t(rng, lo, hi)
        pipe = rng.choice(["direct", "direct", "nps"])
        deals.append(
            {
                "_id": f"gen-deal-d{i}",
                "pipeline_id": pipe,
                "stage_id": rng.choice([s.id for s in CONFIG.pipeline(pipe).stages]),
                "source_id": "shop",
                "responsible_id": owner,
                "origin_intake_id": None,
                "created_at": created,
                "open": rng.random() < 0.7,
                "last_activity_at": datetime.now(UTC) - timedelta(days=rng.randint(0, 60)),
                "fields": {},
            }
        )
    # Calls: inbound ones in conversations; outbound callbacks, some in time, some late.
    calls = []
    for i in range(40):
        conv = rng.choice(convs)
        mid = f"gen-call-msg-{i}"
        started = t(rng, lo, hi)
        messages.append(
            {
                "_id": mid,
                "direction": "in",
                "conversation_id": conv["_id"],
                "channel": "pbx",
                "source_id": "phone",
                "received_at": started,
                "automatic": True,
            }
        )
        disp = rng.choice(["answered", "missed", "busy", "failed"])
        phone = f"+7900555{i % 25:04d}"
        ended = started + timedelta(minutes=rng.randint(0, 10))
        calls.append(
            {
                "_id": f"gen-call-{i}",
                "channel": "pbx",
                "source_id": "phone",
                "message_id": mid,
                "direction": "in",
                "customer": phone,
                "status": {"rank": 4, "value": "ended"},
                "disposition": {"rank": 1, "value": disp},
                "answered_by": [ANNA] if disp == "answered" else [],
                "started_at": started,
                "ended_at": ended,
            }
        )
        if disp != "answered" and rng.random() < 0.7:
            calls.append(
                {
                    "_id": f"gen-call-back-{i}",
                    "channel": "pbx",
                    "direction": "out",
                    "customer": phone,
                    "started_at": ended + timedelta(minutes=rng.choice([5, 25, 30, 31, 90])),
                }
            )
    # Missed calls at the period's end called back after it: within the 30 minutes, exactly
    # at them (the last missed call: the read after the period ends there), a second past
    # them, before the call ended; and at its start, a call whose report ended it before it
    # started (a provider's clock), called back before the period.
    ms = timedelta(milliseconds=1)
    edge = [
        (END - 20 * MIN, END - 21 * MIN, 30 * MIN),
        (END - 10 * MIN, END - 11 * MIN, 30 * MIN),
        (END - 40 * MIN, END - 41 * MIN, 30 * MIN + 1000 * ms),
        (END - 5 * MIN, END - 6 * MIN, -MIN),
        (START - 10 * MIN, START + 5 * MIN, 5 * MIN),
    ]
    for i, (ended, started, back_after) in enumerate(edge):
        mid = f"gen-edge-call-msg-{i}"
        phone = f"+7900666{i:04d}"
        messages.append(
            {
                "_id": mid,
                "direction": "in",
                "conversation_id": convs[i]["_id"],
                "channel": "pbx",
                "source_id": "phone",
                "received_at": started,
                "automatic": True,
            }
        )
        calls.append(
            {
                "_id": f"gen-edge-call-{i}",
                "channel": "pbx",
                "message_id": mid,
                "direction": "in",
                "customer": phone,
                "status": {"rank": 4, "value": "ended"},
                "disposition": {"rank": 1, "value": "missed"},
                "started_at": started,
                "ended_at": ended,
            }
        )
        at = ended + back_after
        calls.append(
            {"_id": f"gen-edge-back-{i}", "direction": "out", "customer": phone, "started_at": at}
        )
    # An outbound call without a number calls no one back.
    calls.append(
        {"_id": "gen-call-nobody", "direction": "out", "started_at": END - timedelta(hours=1)}
    )
    # Tasks: deadlines across the period, done on time, late or still open.
    tasks = []
    for i in range(40):
        deadline = t(rng, lo, hi)
        status = rng.choice(["open", "done"])
        task: dict[str, Any] = {
            "_id": f"gen-task-{i}",
            "title": "Call back",
            "assignee_id": rng.choice([ANNA, DMITRY, OLGA]),
            "deadline": deadline,
            "status": status,
            "entity": {"kind": "lead", "id": rng.choice(leads)["_id"]},
            "created_at": deadline - timedelta(hours=4),
        }
        if status == "done":
            task["completed_at"] = deadline + timedelta(hours=rng.randint(-5, 5))
        tasks.append(task)
    # Reminders: the seeds' rules (and another) fired on leads and deals.
    for _ in range(30):
        target = rng.choice([*leads, *deals])
        kind = "deal_id" if target["_id"].startswith("gen-deal") else "lead_id"
        rule = rng.choice(["lead-untouched", "payment-reminder", "ship-on-date"])
        ev("timer.fired", t(rng, lo, hi), {kind: target["_id"]}, {"rule_id": rule, "n": 1})
    # Survey answers (the survey collection's contract).
    surveys = []
    for i in range(50):
        owner = rng.choice(users)
        sent = t(rng, lo, hi)
        answered = sent + timedelta(hours=rng.randint(1, 100)) if rng.random() < 0.8 else None
        answers = {q: rng.randint(1, 5) for q in ("quality", "speed") if rng.random() < 0.9}
        if rng.random() < 0.1:
            answers["quality"] = "five"  # type: ignore[assignment]  # a bad value: ignored
        surveys.append(
            {
                "_id": f"gen-survey-{i}",
                "deal_id": f"gen-deal-c{i}",
                "pipeline": rng.choice(["orders", "direct"]),
                "responsible_id": owner,
                "department": DEPT.get(owner or ""),
                "questions": ["quality", "speed"],
                "answers": answers if answered else {},
                "sent_at": sent,
                "answered_at": answered,
                "expires_at": sent + timedelta(days=7),
            }
        )
    await store.conversations.insert_many(convs)
    await store.messages.insert_many(messages)
    await store.leads.insert_many(leads)
    await store.deals.insert_many(deals)
    await store["calls"].insert_many(calls)
    await store["tasks"].insert_many(tasks)
    await store.events.insert_many(events)
    await store["survey_answers"].insert_many(surveys)


# --- brute force ---------------------------------------------------------------------


async def raw(svc: InProcess, name: str) -> list[dict[str, Any]]:
    return await svc.store[name].find({}).to_list()


async def brute_volume(svc: InProcess, who: str, *, routed_only: bool = False) -> dict[str, Any]:
    """``routed_only``: as the rollups count — messages of a conversation only (every
    routed message has one; docs/reports.md)."""
    convs = {c["_id"]: c for c in await raw(svc, "conversations")}
    msgs = {m["_id"]: m for m in await raw(svc, "messages")}
    totals: dict[str, int] = defaultdict(int)
    rows: dict[tuple[str, str], int] = defaultdict(int)
    for m in msgs.values():
        conv = convs.get(m.get("conversation_id") or "", {})
        if routed_only and not conv:
            continue
        if (
            m["direction"] == "in"
            and in_period(m["received_at"])
            and sees(who, conv.get("department"))
        ):
            totals["inbound_messages"] += 1
            rows[(week_of(m["received_at"]), conv.get("department") or "—")] += 1
    for c in convs.values():
        if in_period(c.get("created_at")) and sees(who, c.get("department")):
            totals["new_conversations"] += 1
    for lead in await raw(svc, "leads"):
        if in_period(lead["created_at"]) and sees(who, DEPT.get(lead.get("responsible_id") or "")):
            totals["repeat_leads" if lead.get("is_repeat") else "new_leads"] += 1
    for call in await raw(svc, "calls"):
        conv = convs.get(
            msgs.get(call.get("message_id") or "", {}).get("conversation_id") or "", {}
        )
        if call.get("direction") != "in" or not in_period(call.get("started_at")):
            continue
        if not sees(who, conv.get("department")):
            continue
        totals["calls_in"] += 1
        disp = (call.get("disposition") or {}).get("value")
        if disp == "answered":
            totals["calls_answered"] += 1
        elif disp is not None and (call.get("status") or {}).get("value") == "ended":
            totals["calls_missed"] += 1
    return {"totals": dict(totals), "inbound_by_week_department": dict(rows)}


async def brute_responsiveness(
    svc: InProcess, who: str, now: datetime, lo: datetime = START, hi: datetime = END
) -> dict[str, Any]:
    convs = {c["_id"]: c for c in await raw(svc, "conversations")}
    items: dict[str, list[tuple[datetime, int, dict[str, Any]]]] = defaultdict(list)
    for m in await raw(svc, "messages"):
        if m.get("conversation_id") not in convs:
            continue
        if m["direction"] == "in" and not m.get("automatic"):
            items[m["conversation_id"]].append((m["received_at"], 0, m))
        elif m["direction"] == "out" and m.get("author_id") and not m.get("automatic"):
            items[m["conversation_id"]].append((m["received_at"], 1, m))
    for e in await raw(svc, "events"):
        if e["type"] == "conversation.closed":
            items[e["refs"]["conversation_id"]].append((e["occurred_at"], 2, e))
    work: list[float] = []
    cal: list[float] = []
    per_user: dict[str, list[float]] = defaultdict(list)
    counts = {"episodes": 0, "answered": 0, "closed_unanswered": 0, "waiting": 0, "waiting_over": 0}
    for cid, timeline in items.items():
        conv = convs[cid]
        if not sees(who, conv.get("department")):
            continue
        start: datetime | None = None
        answered = False
        episodes: list[tuple[datetime, datetime | None, str | None, bool]] = []
        for at, kind, doc in sorted(timeline, key=lambda x: (x[0], x[1])):
            if kind == 0 and start is None:
                start, answered = at, False
            elif kind == 1 and start is not None and not answered:
                episodes.append((start, at, doc["author_id"], False))
                answered = True
            elif kind == 2:
                if start is not None and not answered:
                    episodes.append((start, None, None, True))
                start, answered = None, False
        if start is not None and not answered:
            episodes.append((start, None, None, False))
        for s, reply, author, closed in episodes:
            if not lo <= s < hi:
                continue
            counts["episodes"] += 1
            if reply is not None:
                counts["answered"] += 1
                work.append(brute_working(s, reply))
                cal.append((reply - s).total_seconds())
                per_user[author or "—"].append(brute_working(s, reply))
            elif closed:
                counts["closed_unanswered"] += 1
            else:
                counts["waiting"] += 1
                counts["waiting_over"] += int(now - s > timedelta(minutes=60))
    return {
        **counts,
        "frt_work_p50_s": nearest_rank(work, 50),
        "frt_work_p90_s": nearest_rank(work, 90),
        "frt_calendar_p50_s": nearest_rank(cal, 50),
        "frt_calendar_p90_s": nearest_rank(cal, 90),
        "per_user_p50": {u: nearest_rank(v, 50) for u, v in per_user.items()},
    }


async def brute_missed(svc: InProcess, who: str) -> tuple[int, int]:
    convs = {c["_id"]: c for c in await raw(svc, "conversations")}
    msgs = {m["_id"]: m for m in await raw(svc, "messages")}
    calls = await raw(svc, "calls")
    missed = back = 0
    for c in calls:
        conv = convs.get(msgs.get(c.get("message_id") or "", {}).get("conversation_id") or "", {})
        disp = (c.get("disposition") or {}).get("value")
        if (
            c.get("direction") != "in"
            or disp in (None, "answered")
            or not in_period(c["started_at"])
        ):
            continue
        if not sees(who, conv.get("department")):
            continue
        missed += 1
        since = c.get("ended_at") or c["started_at"]
        back += any(
            o.get("direction") == "out"
            and o.get("customer") == c["customer"]
            and since <= o["started_at"] <= since + timedelta(minutes=30)
            for o in calls
        )
    return missed, back


async def brute_overdue(svc: InProcess, who: str, now: datetime) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for task in await raw(svc, "tasks"):
        if not in_period(task["deadline"]) or not sees(who, DEPT.get(task["assignee_id"])):
            continue
        out["tasks_due"] += 1
        if task["status"] == "done":
            late = task["completed_at"] > task["deadline"]
            out["completed_late" if late else "completed_on_time"] += 1
        elif task["deadline"] < now:
            out["overdue_open"] += 1
    owners = {d["_id"]: d.get("responsible_id") for d in await raw(svc, "leads")}
    owners |= {d["_id"]: d.get("responsible_id") for d in await raw(svc, "deals")}
    for e in await raw(svc, "events"):
        if e["type"] != "timer.fired" or not in_period(e["occurred_at"]):
            continue
        eid = e["refs"].get("deal_id") or e["refs"].get("lead_id")
        if sees(who, DEPT.get(owners.get(eid) or "")):
            out["reminders_all"] += 1
            if e["data"]["rule_id"] in ("lead-untouched", "payment-reminder"):
                out[f"reminders_{e['data']['rule_id']}"] += 1
    for d in await raw(svc, "deals"):
        idle = now - d.get("last_activity_at", now)
        if (
            d.get("open")
            and d["pipeline_id"] != "nps"
            and sees(who, DEPT.get(d.get("responsible_id") or ""))
        ):
            out["forgotten_15d"] += idle > timedelta(days=15)
            out["forgotten_30d"] += idle > timedelta(days=30)
    return dict(out)


def outcome_of(doc: dict[str, Any]) -> str:
    stage = next(s for s in CONFIG.pipeline(doc["pipeline_id"]).stages if s.id == doc["stage_id"])
    return stage.outcome.value


async def brute_funnel(svc: InProcess, who: str) -> dict[str, Any]:
    leads = [
        d
        for d in await raw(svc, "leads")
        if in_period(d["created_at"]) and sees(who, DEPT.get(d.get("responsible_id") or ""))
    ]
    all_deals = await raw(svc, "deals")
    converted = {d.get("converted_from") for d in all_deals}
    deals = [
        d
        for d in all_deals
        if in_period(d["created_at"])
        and d["pipeline_id"] != "nps"
        and sees(who, DEPT.get(d.get("responsible_id") or ""))
    ]
    won = sum(outcome_of(d) == "won" for d in deals)
    lost = sum(outcome_of(d) == "failed" for d in deals)
    reasons: dict[tuple[str, str], int] = defaultdict(int)
    for d in [*leads, *deals]:
        if outcome_of(d) == "failed":
            reasons[
                (d["pipeline_id"], (d.get("fields") or {}).get("lost_reason") or "unspecified")
            ] += 1
    # time in stage: completed stays of the cohort, from the raw events
    cohort = {d["_id"]: d for d in [*leads, *deals]}
    moves: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in await raw(svc, "events"):
        if e["type"] in ("lead.stage_changed", "deal.stage_changed"):
            eid = e["refs"].get("lead_id") or e["refs"].get("deal_id")
            if eid in cohort:
                moves[eid].append(e)
    stays: dict[tuple[str, str], list[float]] = defaultdict(list)
    for eid, evs in moves.items():
        evs.sort(key=lambda e: e["occurred_at"])
        since, stage = cohort[eid]["created_at"], evs[0]["data"]["from"]
        for e in evs:
            stays[(cohort[eid]["pipeline_id"], stage)].append(
                (e["occurred_at"] - since).total_seconds()
            )
            since, stage = e["occurred_at"], e["data"]["to"]
    return {
        "leads": len(leads),
        "converted": sum(d["_id"] in converted for d in leads),
        "deals": len(deals),
        "won": won,
        "lost": lost,
        "reasons": dict(reasons),
        "stage_medians": {k: nearest_rank(v, 50) for k, v in stays.items()},
    }


async def brute_survey(svc: InProcess, who: str) -> dict[str, Any]:
    per_q: dict[str, list[int]] = defaultdict(list)
    answered = 0
    for s in await raw(svc, "survey_answers"):
        if not in_period(s["answered_at"]) or not sees(who, s["department"]):
            continue
        answered += 1
        for q, v in s["answers"].items():
            if isinstance(v, int) and 1 <= v <= 5:
                per_q[q].append(v)
    return {"answered": answered, "per_q": {q: (len(v), sum(v) / len(v)) for q, v in per_q.items()}}


# --- the test ------------------------------------------------------------------------


async def get(svc: InProcess, token: str, path: str) -> tuple[int, Any, dict[str, str]]:
    async with svc.client.http.get(
        f"{svc.client.base}{path}", headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        body = await resp.read()
        ctype = resp.headers.get("Content-Type", "")
        data = orjson.loads(body) if "json" in ctype else body
        return resp.status, data, dict(resp.headers)


def table(report: dict[str, Any], name: str) -> list[dict[str, Any]]:
    t_ = next(x for x in report["tables"] if x["name"] == name)
    return [dict(zip(t_["columns"], row, strict=True)) for row in t_["rows"]]


async def caught_up(svc: InProcess) -> None:
    """Wait until the service's rollup worker has applied every event."""
    for _ in range(1200):
        st = await rollup.status(svc.store)
        if st.ready and st.lag == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"report rollups did not catch up: {st}")


RESPONSE_KEYS = (
    "episodes", "answered", "closed_unanswered", "waiting", "waiting_over",
    "frt_work_p50_s", "frt_work_p90_s", "frt_calendar_p50_s", "frt_calendar_p90_s",
)  # fmt: skip


async def check_roles(svc: InProcess, tok: dict[str, str], *, rollup_basis: bool) -> None:
    """Every report for every role against brute force; ``rollup_basis``: volume and
    responsiveness must have been read from the rollups (else from the collections)."""
    seen_totals = set()
    for who in (ADMIN, IVAN, ANNA, OLGA):
        status, v, _ = await get(
            svc, tok[who], f"/api/v1/reports/volume?{PERIOD}&group=week&by=department"
        )
        assert status == 200, v
        assert (v["rollup_lag"] is not None) == rollup_basis, v["rollup_lag"]
        want = await brute_volume(svc, who, routed_only=rollup_basis)
        for metric, value in v["totals"].items():
            assert value == want["totals"].get(metric, 0), (who, metric)
        got_rows = {
            (r["period"], r["department"]): r["inbound_messages"]
            for r in table(v, "volume")
            if r["inbound_messages"]
        }
        assert got_rows == want["inbound_by_week_department"], who
        seen_totals.add(v["totals"]["inbound_messages"])

        status, r, _ = await get(
            svc, tok[who], f"/api/v1/reports/responsiveness?{PERIOD}&by=channel"
        )
        assert status == 200, r
        assert (r["rollup_lag"] is not None) == rollup_basis, r["rollup_lag"]
        now = datetime.fromisoformat(r["generated_at"])
        want_r = await brute_responsiveness(svc, who, now)
        for key in RESPONSE_KEYS:
            assert r["totals"][key] == want_r[key], (who, key)
        per_user = {x["responsible"]: x["frt_work_p50_s"] for x in table(r, "by_responsible")}
        for user, p50 in want_r["per_user_p50"].items():
            assert per_user[user] == p50, (who, user)
        assert (r["totals"]["missed_calls"], r["totals"]["called_back"]) == await brute_missed(
            svc, who
        )
        # A period that is not whole local days: the rollups' episodes, not the days'.
        lo, hi = datetime(2026, 1, 12, 10, 30, tzinfo=MSK), datetime(2026, 2, 20, 15, tzinfo=MSK)
        period = f"from={lo.isoformat()}&to={hi.isoformat()}".replace("+", "%2B")
        status, r, _ = await get(svc, tok[who], f"/api/v1/reports/responsiveness?{period}")
        assert status == 200, r
        assert (r["rollup_lag"] is not None) == rollup_basis, r["rollup_lag"]
        want_r = await brute_responsiveness(
            svc, who, datetime.fromisoformat(r["generated_at"]), lo, hi
        )
        assert {k: r["totals"][k] for k in RESPONSE_KEYS} == {k: want_r[k] for k in RESPONSE_KEYS}

        status, o, _ = await get(svc, tok[who], f"/api/v1/reports/overdue?{PERIOD}")
        # Forgotten deals from the idle days when the rollups are usable.
        assert (o["rollup_lag"] is not None) == rollup_basis, o["rollup_lag"]
        want_o = await brute_overdue(svc, who, datetime.fromisoformat(o["generated_at"]))
        for key, value in o["totals"].items():
            assert value == want_o.get(key, 0), (who, key)

        status, f, _ = await get(svc, tok[who], f"/api/v1/reports/funnel?{PERIOD}&by=source")
        assert (f["rollup_lag"] is not None) == rollup_basis, f["rollup_lag"]
        want_f = await brute_funnel(svc, who)
        for key in ("leads", "converted", "deals", "won", "lost"):
            assert f["totals"][key] == want_f[key], (who, key)
        reasons = {(x["pipeline"], x["reason"]): x["count"] for x in table(f, "lost_reasons")}
        assert reasons == want_f["reasons"], who
        medians = {(x["pipeline"], x["stage"]): x["median_s"] for x in table(f, "time_in_stage")}
        assert medians == want_f["stage_medians"], who

        status, s, _ = await get(svc, tok[who], f"/api/v1/reports/survey?{PERIOD}&by=responsible")
        want_s = await brute_survey(svc, who)
        assert s["totals"]["answered"] == want_s["answered"]
        got_q = {x["question"]: (x["answers"], x["average"]) for x in table(s, "by_question")}
        assert got_q == {q: (n, round(a, 4)) for q, (n, a) in want_s["per_q"].items()}
    # The roles see different figures (the admin also sees conversations of no department).
    assert len(seen_totals) == 4


async def change_entities(svc: InProcess) -> None:
    """A cohort lead converted in the period (a new cohort deal; the lead now counts as
    converted), another given a lost reason, a third handed to another department, and a
    deal's stage moved."""
    store = svc.store
    # Live events continue after the generated ones (the worker's cursor followed the
    # log past them), as after a real import.
    last = await store.events.find_one({}, {"seq": 1}, sort=[("seq", -1)])
    assert last is not None
    await store.counters.update_one({"_id": "events"}, {"$max": {"value": last["seq"]}})
    cohort = await store.leads.find(
        {"created_at": {"$gte": START, "$lt": END}, "_id": {"$regex": "^gen-lead"}}
    ).to_list()
    converted = {d.get("converted_from") for d in await raw(svc, "deals")}
    fresh = [d for d in cohort if d["_id"] not in converted and d["responsible_id"] == ANNA]
    lead = fresh[0]
    orders = CONFIG.pipeline("orders")
    deal = await conversion.convert(
        store,
        {**lead, "contact_id": "gen-contact"},
        orders,
        orders.stages[0].id,
        None,
        ANNA,
        lead_pipeline=CONFIG.pipeline(lead["pipeline_id"]),
        at=datetime(2026, 2, 10, 12, tzinfo=MSK),
    )
    assert deal["converted_from"] == lead["_id"]
    await entities.set_fields(store, "lead", fresh[1]["_id"], {"lost_reason": "too far"}, by=ANNA)
    await entities.set_responsible(store, "lead", fresh[2]["_id"], OLGA, by=ADMIN)
    failed = next(s for s in orders.stages if s.outcome.value == "failed")
    await stages.move_stage(
        store,
        "deal",
        deal["_id"],
        orders,
        failed.id,
        ANNA,
        at=datetime(2026, 2, 12, 15, tzinfo=MSK),
    )


async def test_reports_match_brute_force(mongo_uri: str, db_name: str) -> None:
    async with served(
        mongo_uri, db_name, report_rollups_enabled=True, report_rollups_poll_s=0.05
    ) as svc:
        tok = {w: (await tokens.issue(svc.store, w))[0] for w in (ADMIN, IVAN, ANNA, OLGA)}
        # The real path: a site form routed into a lead and conversation, then Anna replies.
        status, _ = await svc.client.post_api(api_body("rep-1", phone="+79001230001", name="Ivan"))
        assert status == 200
        await svc.routed()
        conv = await svc.store.conversations.find_one({"sender_keys": "phone:+79001230001"})
        assert conv is not None
        async with svc.client.http.post(
            f"{svc.client.base}/api/v1/conversations/{conv['_id']}/messages",
            headers={"Authorization": f"Bearer {tok[ADMIN]}"},
            data=orjson.dumps({"text": "Добрый день!"}),
        ) as resp:
            assert resp.status < 300, await resp.text()
        # The service's rollup worker (a fresh store: ready) follows the events.
        await caught_up(svc)
        status, live, _ = await get(
            svc, tok[ADMIN], "/api/v1/reports/responsiveness?by=responsible"
        )
        assert status == 200, live
        assert live["rollup_lag"] == 0
        assert live["totals"]["episodes"] >= 1
        assert live["totals"]["answered"] >= 1
        assert ADMIN in [r["responsible"] for r in table(live, "by_responsible")]
        status, vol, _ = await get(svc, tok[ADMIN], "/api/v1/reports/volume")
        assert vol["totals"]["inbound_messages"] >= 1
        assert vol["totals"]["new_leads"] + vol["totals"]["repeat_leads"] >= 1

        await generate(svc)
        await rollup.set_ready(svc.store, False)  # history written behind the rollups
        await check_roles(svc, tok, rollup_basis=False)
        # `omniroute reports rebuild`: the same figures from the rollups.
        assert await rollup.rebuild(svc.store, CAL) >= 70
        await check_roles(svc, tok, rollup_basis=True)
        # Leads and deals changed through the real code, after the rebuild: the service's
        # rollup worker recomputes each from the events naming it.
        await change_entities(svc)
        await caught_up(svc)
        await check_roles(svc, tok, rollup_basis=True)
        # Day totals left marked and wrong (a rebuild killed between marking and summing)
        # are summed again by the idle worker, without new events.
        days = [d["_id"] async for d in svc.store[rollup.DAYS].find({}, {"_id": 1})]
        await svc.store[rollup.DAYS].update_many(
            {}, {"$set": {"inbound": [], "volume_leads": [], "leads": [], "episodes": []}}
        )
        await rollup.mark_days(svc.store, days)
        for _ in range(600):
            if not await svc.store[rollup.MARKS].count_documents({"dirty": True}):
                break
            await asyncio.sleep(0.05)
        await check_roles(svc, tok, rollup_basis=True)

        # CSV: BOM, CRLF, formula-safe cells; the table's rows equal the JSON's.
        status, body, headers = await get(
            svc, tok[IVAN], f"/api/v1/reports/funnel.csv?{PERIOD}&table=lost_reasons"
        )
        assert status == 200
        assert headers["Content-Type"].startswith("text/csv")
        assert body.startswith(b"\xef\xbb\xbf")
        assert b"\r\n" in body
        rows = list(csv.reader(io.StringIO(body.decode("utf-8-sig"))))
        assert rows[0] == ["pipeline", "reason", "count"]
        assert any(r[1] == "'=cmd()" for r in rows[1:])
        _, f, _ = await get(svc, tok[IVAN], f"/api/v1/reports/funnel?{PERIOD}")
        assert [
            [safe_cell(c) for c in r]
            for r in next(x for x in f["tables"] if x["name"] == "lost_reasons")["rows"]
        ] == rows[1:]


def test_csv_cells_are_formula_safe() -> None:
    assert [safe_cell(v) for v in ("=1+2", "+7 900", "-x", "@a", "ok", None, -3, 1.5)] == [
        "'=1+2", "'+7 900", "'-x", "'@a", "ok", "", "-3", "1.5",
    ]  # fmt: skip


BAD = [
    ("from=2026-02-01&to=2026-01-01", "to"),
    ("from=2025-01-01&to=2026-06-01", "to"),
    ("group=year", "group"),
    ("by=colour", "by"),
    ("wait_over=0", "wait_over"),
    ("from=yesterday", "from"),
    ("from=99999-01-01", "from"),
    ("to=2026-01-01T10:00:00", "to"),
    ("limit=5", "limit"),
    ("from_=2026-01-01", "from_"),
    ("table=nope&format=csv", "table"),
]


async def test_bad_parameters_are_422(mongo_uri: str, db_name: str) -> None:
    async with in_process(mongo_uri, db_name) as svc:
        tok, _ = await tokens.issue(svc.store, ADMIN)
        for query, field in BAD:
            status, body, headers = await get(svc, tok, f"/api/v1/reports/funnel?{query}")
            assert status == 422, (query, body)
            assert headers["Content-Type"].startswith("application/problem+json")
            assert [e["field"] for e in body["errors"]] == [field], (query, body)
        # Reports asked at once take turns (one at a time per process) and all answer.
        answers = await asyncio.gather(
            *(get(svc, tok, f"/api/v1/reports/{name}?by=channel") for name in REPORT_NAMES)
        )
        assert [a[0] for a in answers] == [200] * len(REPORT_NAMES)
        assert [a[1]["report"] for a in answers] == list(REPORT_NAMES)
        status, body, _ = await get(svc, tok, "/api/v1/reports/nothing")
        assert status == 404
        assert body["code"] == "not_found"


def test_period_edges_are_local_dates() -> None:
    """A date ``from`` is the company's local midnight; a date ``to`` includes its day."""
    from inbox.reports_api import _instant

    assert _instant(CAL, date(2026, 1, 1), end=False) == datetime(2025, 12, 31, 21, tzinfo=UTC)
    assert _instant(CAL, date(2026, 2, 28), end=True) == datetime(2026, 2, 28, 21, tzinfo=UTC)
