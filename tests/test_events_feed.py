"""The pull side of the event log: ``GET /api/v1/events`` and ``crm_store.feed``.

Tokens and roles, paging with ``after``/``limit``/``next_after``, the ``types`` filter, the
gap rule (never skip a number that may still be written), long-polling, and the event
catalogue (every event written validates against its documented model; docs/events.md is
the generated text).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from config.loader import load_config
from config.models import AppConfig, ChannelAccount, Role, User
from config.settings import DEFAULT_CONFIG_DIR, Settings
from crm_store import events as event_log
from crm_store import feed, tokens
from crm_store.event_catalogue import EVENT_TYPES, Envelope, markdown
from crm_store.routing_store import insert_new, reserve_sequence
from crm_store.stages import move_stage
from crm_store.store import Document, Store
from tests.helpers import wait_for
from tests.service import InProcess, api_body, in_process

ROOT = Path(__file__).resolve().parent.parent
ADMIN = "sergey.volkov"
DIRECTOR = "ivan.petrov"  # director of sales; wholesale is below sales
SALES_MANAGER = "anna.smirnova"
WHOLESALE_MANAGER = "olga.ivanova"
NOBODY = "nina.noaccess"


def feed_config() -> AppConfig:
    """The example config plus a form feeding the wholesale source and a no_access user."""
    cfg = load_config(DEFAULT_CONFIG_DIR)
    form = ChannelAccount(
        channel="api",
        account="wholesale-form",
        source="mail_wholesale",
        secret_env="OMNIROUTE_SECRET_API_SITE",
    )
    nobody = User(id=NOBODY, name="Nina", role=Role.NO_ACCESS, department="sales")
    channels = cfg.channels.model_copy(update={"accounts": [*cfg.channels.accounts, form]})
    users = cfg.users.model_copy(update={"users": [*cfg.users.users, nobody]})
    return cfg.model_copy(update={"channels": channels, "users": users})


@asynccontextmanager
async def service(mongo_uri: str, db_name: str) -> AsyncIterator[InProcess]:
    async with in_process(mongo_uri, db_name, config=feed_config()) as svc:
        yield svc


async def get(
    svc: InProcess, token: str | None, query: str = "", header: str | None = None
) -> tuple[int, str, dict[str, Any]]:
    """GET /api/v1/events?<query>: status, content type, decoded body."""
    headers = {}
    if header is not None:
        headers["Authorization"] = header
    elif token is not None:
        headers["Authorization"] = f"Bearer {token}"
    url = f"{svc.client.base}/api/v1/events" + (f"?{query}" if query else "")
    async with svc.client.http.get(url, headers=headers) as resp:
        return resp.status, resp.content_type, orjson.loads(await resp.read())


async def read_all(svc: InProcess, token: str, query: str = "", limit: int = 1000) -> list[Any]:
    """Every event the token sees, page by page, until the cursor stops moving.

    (A page can be empty yet move the cursor: everything in it was filtered out.)"""
    after, seen = 0, []
    while True:
        status, _, body = await get(svc, token, f"after={after}&limit={limit}{query}")
        assert status == 200, body
        assert body["next_after"] >= after
        if not body["events"] and body["next_after"] == after:
            return seen
        if body["events"]:
            assert body["next_after"] >= body["events"][-1]["sequence"]
        seen.extend(body["events"])
        after = body["next_after"]


async def post_messages(svc: InProcess, n: int, prefix: str, account: str = "site") -> None:
    """``n`` messages from new senders; returns once their 4 events each are written."""
    before = await svc.store.events.count_documents({})
    for i in range(n):
        status, _ = await svc.client.post_api(
            api_body(f"{prefix}-{i}", email=f"{prefix}-{i}@example.com"),
            account=account,
            secret="site-secret",
        )
        assert status == 200
    await svc.routed()

    async def written() -> bool:
        return await svc.store.events.count_documents({}) == before + 4 * n

    await wait_for(written, timeout=10, message=f"{4 * n} events not written")


async def db_seqs(store: Store) -> list[int]:
    return [e["seq"] async for e in store.events.find({}, {"seq": 1}, sort=[("seq", 1)])]


def raw_event(seq: int, written_at: datetime, type_: str = "lead.created") -> Document:
    return {
        "_id": f"ev-{seq}",
        "type": type_,
        "seq": seq,
        "occurred_at": written_at,
        "written_at": written_at,
        "refs": {},
        "data": {},
    }


# --------------------------------------------------------------------------- tokens


async def test_tokens_roles_and_refusals(mongo_uri: str, db_name: str) -> None:
    async with service(mongo_uri, db_name) as svc:
        admin, _ = await tokens.issue(svc.store, ADMIN)
        revoked, revoked_doc = await tokens.issue(svc.store, SALES_MANAGER)
        nobody, _ = await tokens.issue(svc.store, NOBODY)

        status, _, body = await get(svc, admin)
        assert (status, body) == (200, {"events": [], "next_after": 0})
        status, _, _ = await get(svc, revoked)
        assert status == 200  # works until revoked
        assert await tokens.revoke(svc.store, revoked_doc["token_id"]) is True

        refusals = {
            "no header": await get(svc, None),
            "not bearer": await get(svc, None, header=f"Basic {admin}"),
            "empty bearer": await get(svc, None, header="Bearer "),
            "garbage": await get(svc, "not-a-token"),
            "unknown": await get(svc, "omr_" + "x" * 43),
            "revoked": await get(svc, revoked),
        }
        for what, (status, ctype, body) in refusals.items():
            assert (status, ctype) == (401, "application/problem+json"), what
            assert (body["status"], body["code"]) == (401, "unauthenticated"), what

        status, ctype, body = await get(svc, nobody)
        assert (status, ctype) == (403, "application/problem+json")
        assert (body["status"], body["code"]) == (403, "forbidden")


# --------------------------------------------------------------------------- paging


async def test_paging_yields_every_event_once_in_order(mongo_uri: str, db_name: str) -> None:
    async with service(mongo_uri, db_name) as svc:
        await post_messages(svc, 6, "page")
        admin, _ = await tokens.issue(svc.store, ADMIN)
        expected = await db_seqs(svc.store)
        assert expected == list(range(1, 25))  # 6 new senders x 4 events

        everything = await read_all(svc, admin)
        assert [e["sequence"] for e in everything] == expected

        paged, after, pages = [], 0, 0
        while True:
            status, _, body = await get(svc, admin, f"after={after}&limit=5")
            assert status == 200
            assert len(body["events"]) <= 5
            if not body["events"]:
                assert body["next_after"] == after == expected[-1]
                break
            pages += 1
            # Nothing is filtered: the cursor is exactly the last event shown.
            assert body["next_after"] == body["events"][-1]["sequence"]
            paged.extend(body["events"])
            after = body["next_after"]
        assert pages == 5
        assert paged == everything
        assert len({e["id"] for e in paged}) == len(paged)


async def test_types_filter_and_cursor_past_filtered(mongo_uri: str, db_name: str) -> None:
    async with service(mongo_uri, db_name) as svc:
        await post_messages(svc, 5, "types")
        admin, _ = await tokens.issue(svc.store, ADMIN)
        everything = await read_all(svc, admin)
        last = everything[-1]["sequence"]
        assert everything[-1]["type"] == "message.attached"

        wanted = ("lead.created", "conversation.opened")
        expected = [e for e in everything if e["type"] in wanted]
        assert len(expected) == 10
        got = await read_all(svc, admin, "&types=" + ",".join(wanted), limit=3)
        assert got == expected

        # One call: only contact.created comes back, yet the cursor covers the whole log.
        status, _, body = await get(svc, admin, "after=0&limit=1000&types=contact.created")
        assert status == 200
        assert {e["type"] for e in body["events"]} == {"contact.created"}
        assert len(body["events"]) == 5
        assert body["next_after"] == last
        # Nothing after the end, whatever the filter.
        status, _, body = await get(svc, admin, f"after={last}&types=contact.created")
        assert (status, body) == (200, {"events": [], "next_after": last})


@pytest.mark.parametrize(
    ("query", "mentions"),
    [
        ("types=lead.created,lead.exploded", "lead.exploded"),
        ("after=abc", "after"),
        ("after=-1", "after"),
        ("after=1.5", "after"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("wait=31", "wait"),
    ],
)
async def test_bad_parameters_are_422(
    mongo_uri: str, db_name: str, query: str, mentions: str
) -> None:
    async with service(mongo_uri, db_name) as svc:
        admin, _ = await tokens.issue(svc.store, ADMIN)
        status, ctype, body = await get(svc, admin, query)
        assert (status, ctype) == (422, "application/problem+json")
        assert body["code"] == "invalid_request"
        assert mentions in body["detail"]


# --------------------------------------------------------------------------- gaps


async def test_read_stops_at_a_young_gap_and_passes_an_old_one(
    mongo_uri: str, db_name: str
) -> None:
    store = Store.open(mongo_uri, db_name)
    try:
        await store.ensure_indexes()
        now = datetime.now(UTC)
        await store.events.insert_many([raw_event(s, now) for s in (1, 2, 4)])

        page = await feed.read(store, 0)
        assert ([e["seq"] for e in page.events], page.next_after) == ([1, 2], 2)
        page = await feed.read(store, 2)
        assert (page.events, page.next_after) == ([], 2)
        # Within the grace even a reader that is told the time has moved on a little.
        page = await feed.read(store, 2, now=now + timedelta(seconds=feed.GAP_GRACE_S - 1))
        assert (page.events, page.next_after) == ([], 2)

        # The number-3 writer died: once 4 is older than the grace, 3 is passed over.
        old = now - timedelta(seconds=feed.GAP_GRACE_S + 1)
        await store.events.update_one({"seq": 4}, {"$set": {"written_at": old}})
        page = await feed.read(store, 0)
        assert ([e["seq"] for e in page.events], page.next_after) == ([1, 2, 4], 4)
        page = await feed.read(store, 2)
        assert ([e["seq"] for e in page.events], page.next_after) == ([4], 4)

        # A late 3 after the skip is not seen by a reader that moved on, but is by one at 2.
        await store.events.insert_one(raw_event(3, datetime.now(UTC)))
        page = await feed.read(store, 2)
        assert [e["seq"] for e in page.events] == [3, 4]
    finally:
        await store.close()


async def test_a_gap_before_the_first_event_holds_the_reader(mongo_uri: str, db_name: str) -> None:
    store = Store.open(mongo_uri, db_name)
    try:
        await store.ensure_indexes()
        now = datetime.now(UTC)
        await store.events.insert_many([raw_event(s, now) for s in (2, 3)])
        page = await feed.read(store, 0)
        assert (page.events, page.next_after) == ([], 0)
        # A filtered-out event before the gap still moves the cursor, but not past the gap.
        await store.events.insert_one(raw_event(1, now, "contact.created"))
        await store.events.insert_one(raw_event(5, now))
        page = await feed.read(store, 0, types=["lead.created"])
        assert ([e["seq"] for e in page.events], page.next_after) == ([2, 3], 3)
    finally:
        await store.close()


async def test_gap_rule_over_http(mongo_uri: str, db_name: str) -> None:
    async with service(mongo_uri, db_name) as svc:
        admin, _ = await tokens.issue(svc.store, ADMIN)
        now = datetime.now(UTC)
        await svc.store.events.insert_many([raw_event(s, now) for s in (1, 2, 4)])
        status, _, body = await get(svc, admin, "after=0")
        assert status == 200
        assert ([e["sequence"] for e in body["events"]], body["next_after"]) == ([1, 2], 2)
        assert [e["id"] for e in body["events"]] == ["ev-1", "ev-2"]

        old = now - timedelta(seconds=feed.GAP_GRACE_S + 1)
        await svc.store.events.update_one({"seq": 4}, {"$set": {"written_at": old}})
        status, _, body = await get(svc, admin, "after=2")
        assert ([e["sequence"] for e in body["events"]], body["next_after"]) == ([4], 4)


async def slow_writer(store: Store, rng: random.Random, name: str, rounds: int) -> None:
    """Appends like ``events.append`` but sleeps between reserving and inserting."""
    for i in range(rounds):
        n = rng.randint(1, 3)
        if rng.random() < 0.3:
            evs = [
                event_log.event("lead.created", {}, {}, key=[name, str(i), str(k)])
                for k in range(n)
            ]
            await asyncio.sleep(rng.uniform(0, 0.02))
            await event_log.append(store, evs)
            continue
        first = await reserve_sequence(store, n)
        written = datetime.now(UTC)
        await asyncio.sleep(rng.uniform(0, 0.08))  # the slow part: others write meanwhile
        docs = []
        for k in range(n):
            e = event_log.event("lead.created", {}, {}, key=[name, str(i), str(k)])
            docs.append({**e, "seq": first + k, "written_at": written})
        rng.shuffle(docs)  # the documents of one batch also land in any order
        for d in docs:
            await insert_new(store, "events", [d])


async def test_concurrent_writers_never_make_a_reader_skip(mongo_uri: str, db_name: str) -> None:
    store = Store.open(mongo_uri, db_name)
    try:
        await store.ensure_indexes()
        rng = random.Random(20261123)
        writers = [
            asyncio.create_task(slow_writer(store, random.Random(rng.random()), f"w{i}", 25))
            for i in range(3)
        ]
        seen: list[int] = []
        cursor = 0
        reads = 0
        while True:
            done = all(w.done() for w in writers)
            page = await feed.read(store, cursor, limit=rng.randint(1, 6))
            reads += 1
            seen.extend(e["seq"] for e in page.events)
            cursor = page.next_after
            if done and not page.events:
                break
            await asyncio.sleep(rng.uniform(0, 0.01))
        for w in writers:
            await w  # re-raise a writer's failure
        everything = await db_seqs(store)
        assert len(everything) >= 75
        assert everything == list(range(1, len(everything) + 1))
        assert seen == everything
        assert reads > 20  # the reader really ran alongside the writers
    finally:
        await store.close()


# --------------------------------------------------------------------------- long-poll


async def test_long_poll_returns_when_an_event_arrives(mongo_uri: str, db_name: str) -> None:
    async with service(mongo_uri, db_name) as svc:
        admin, _ = await tokens.issue(svc.store, ADMIN)

        async def later() -> None:
            await asyncio.sleep(0.5)
            await svc.client.post_api(api_body("lp-1", email="lp-1@example.com"))

        t0 = time.monotonic()
        poster = asyncio.create_task(later())
        status, _, body = await get(svc, admin, "after=0&wait=30")
        took = time.monotonic() - t0
        await poster
        assert status == 200
        # It waited for the event and answered when it came, not at the end of the 30 s
        # wait (the bound leaves a loaded 2-core machine 25 s to route one message).
        assert 0.5 <= took < 25.0
        assert body["events"], body
        assert body["events"][0]["sequence"] == 1
        assert body["events"][0]["type"] == "contact.created"
        assert body["next_after"] == body["events"][-1]["sequence"]


async def test_long_poll_times_out_empty(mongo_uri: str, db_name: str) -> None:
    async with service(mongo_uri, db_name) as svc:
        await post_messages(svc, 1, "idle")
        admin, _ = await tokens.issue(svc.store, ADMIN)
        t0 = time.monotonic()
        status, _, body = await get(svc, admin, "after=4&wait=1")
        took = time.monotonic() - t0
        assert (status, body) == (200, {"events": [], "next_after": 4})
        # It waited out its second (the upper bound only tells "answered" from "hung", with
        # room for a loaded machine; the per-test timeout catches a real hang).
        assert 0.95 <= took < 15.0
        # wait=0 (the default) answers at once: far sooner than any long-poll wait.
        t0 = time.monotonic()
        status, _, body = await get(svc, admin, "after=4")
        assert (status, body) == (200, {"events": [], "next_after": 4})
        assert time.monotonic() - t0 < 5.0


# --------------------------------------------------------------------------- roles


async def test_role_filtering_by_responsible_department(mongo_uri: str, db_name: str) -> None:
    async with service(mongo_uri, db_name) as svc:
        await post_messages(svc, 3, "ws", account="wholesale-form")
        await post_messages(svc, 4, "retail")
        wholesale = {d["_id"] async for d in svc.store.leads.find({"source_id": "mail_wholesale"})}
        retail = {d["_id"] async for d in svc.store.leads.find({"source_id": "site"})}
        assert (len(wholesale), len(retail)) == (3, 4)
        responsible = {
            d["responsible_id"] async for d in svc.store.leads.find({"_id": {"$in": [*wholesale]}})
        }
        assert responsible == {WHOLESALE_MANAGER}
        total = len(await db_seqs(svc.store))

        async def leads_seen(user: str) -> set[str]:
            token, _ = await tokens.issue(svc.store, user)
            events = await read_all(svc, token, limit=4)
            assert len({e["id"] for e in events}) == len(events)
            _, _, body = await get(svc, token, "after=0&limit=1000")
            assert body["next_after"] == total  # invisible events are covered too
            return {e["refs"]["lead_id"] for e in events if e["type"] == "lead.created"}

        assert await leads_seen(SALES_MANAGER) == retail
        assert await leads_seen(WHOLESALE_MANAGER) == wholesale
        assert await leads_seen(DIRECTOR) == retail | wholesale
        assert await leads_seen(ADMIN) == retail | wholesale

        # Responsibles are read at read time: hand a wholesale lead to a sales manager.
        moved = sorted(wholesale)[0]
        await svc.store.leads.update_one(
            {"_id": moved}, {"$set": {"responsible_id": SALES_MANAGER}}
        )
        assert await leads_seen(SALES_MANAGER) == retail | {moved}


# --------------------------------------------------------------------------- catalogue


def model_keys(model: Any) -> set[str]:
    return {f.alias or name for name, f in model.model_fields.items()}


async def test_every_event_written_matches_the_catalogue(mongo_uri: str, db_name: str) -> None:
    async with service(mongo_uri, db_name) as svc:
        cfg = svc.service.config
        # A lead that is worked, closed, and written to again: a repeat lead.
        await svc.client.post_api(api_body("cat-1", phone="+79005551001", thread_id="t1"))
        await svc.routed()
        lead = await svc.store.leads.find_one({})
        assert lead is not None
        await move_stage(svc.store, "lead", lead["_id"], cfg.pipeline("leads"), "in_work")
        await move_stage(svc.store, "lead", lead["_id"], cfg.pipeline("leads"), "not_interested")
        await svc.client.post_api(api_body("cat-2", phone="+79005551001", thread_id="t1"))
        # A shop order: a deal, won.
        await svc.client.post_api(api_body("cat-3", phone="+79005551002"), account="shop")
        await svc.routed()
        deal = await svc.store.deals.find_one({})
        assert deal is not None
        await move_stage(svc.store, "deal", deal["_id"], cfg.pipeline("direct"), "won")

        admin, _ = await tokens.issue(svc.store, ADMIN)
        events = await read_all(svc, admin)
        # Automation may append (a task for the lead in work) while we read: what was read
        # is the log's prefix, in order, without gaps.
        assert [e["sequence"] for e in events] == (await db_seqs(svc.store))[: len(events)]
        produced = {e["type"] for e in events}
        assert produced >= {
            "contact.created",
            "lead.created",
            "lead.repeat_created",
            "deal.created",
            "conversation.opened",
            "conversation.retargeted",
            "message.attached",
            "lead.stage_changed",
            "deal.stage_changed",
        }
        assert produced <= set(EVENT_TYPES)
        for e in events:
            model, _ = EVENT_TYPES[e["type"]]
            Envelope.model_validate(e)
            assert e["version"] == 1
            model.model_validate(e["data"])
            # extra="allow" would accept anything: the data must be exactly what is documented.
            assert set(e["data"]) == model_keys(model), e["type"]


def test_events_md_is_the_generated_catalogue(capsys: pytest.CaptureFixture[str]) -> None:
    from ingest.cli import cmd_events_schema  # what `omniroute events schema` runs

    assert cmd_events_schema(Settings(), argparse.Namespace(markdown=True)) == 0
    printed = capsys.readouterr().out
    assert printed == markdown() + "\n"
    on_disk = (ROOT / "docs" / "events.md").read_text(encoding="utf-8")
    assert on_disk == printed
