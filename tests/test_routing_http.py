"""The seed routing rules end to end: HTTP in, decisions read back from MongoDB."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from config.loader import load_config
from config.models import AppConfig, ChannelAccount
from config.settings import DEFAULT_CONFIG_DIR
from crm_store.stages import move_stage
from tests.service import api_body, in_process


def config_with_wholesale_form() -> AppConfig:
    """The example config plus a site form that feeds the wholesale source."""
    cfg = load_config(DEFAULT_CONFIG_DIR)
    extra = ChannelAccount(
        channel="api",
        account="wholesale-form",
        source="mail_wholesale",
        secret_env="OMNIROUTE_SECRET_API_SITE",
    )
    channels = cfg.channels.model_copy(update={"accounts": [*cfg.channels.accounts, extra]})
    return cfg.model_copy(update={"channels": channels})


async def one(coll: Any, query: dict[str, Any]) -> dict[str, Any]:
    docs = [d async for d in coll.find(query)]
    assert len(docs) == 1, f"expected one document for {query}, found {len(docs)}: {docs}"
    return docs[0]


async def test_unknown_sender_creates_lead_in_first_stage(mongo_uri: str, db_name: str) -> None:
    async with in_process(mongo_uri, db_name) as svc:
        status, body = await svc.client.post_api(
            api_body("f-1", phone="8 (900) 111-22-33", name="Ivan")
        )
        assert status == 200
        [mid] = body["accepted"]
        await svc.routed()
        lead = await one(svc.store.leads, {})
        assert (lead["pipeline_id"], lead["stage_id"], lead["open"]) == ("leads", "new", True)
        assert lead["is_repeat"] is False
        assert lead["identities"] == ["phone:+79001112233"]
        sales = {u.id for u in svc.service.config.line_users("sales")}
        assert lead["responsible_id"] in sales
        msg = await one(svc.store.messages, {"_id": mid})
        assert msg["target"] == {"kind": "lead", "id": lead["_id"], "open": True}
        assert msg["decision"]["rule"] == "new_lead"
        contact = await one(svc.store.contacts, {})
        assert contact["identities"] == ["phone:+79001112233"]
        assert contact["responsible_id"] == lead["responsible_id"]
        types = [e["type"] async for e in svc.store.events.find({}, sort=[("seq", 1)])]
        assert types == [
            "contact.created",
            "lead.created",
            "conversation.opened",
            "message.attached",
        ]


async def test_phone_spellings_of_one_person_land_on_one_lead(mongo_uri: str, db_name: str) -> None:
    spellings = ["8 (900) 123-45-67", "+7 900 123 45 67", "79001234567", "+7(900)1234567"]
    async with in_process(mongo_uri, db_name) as svc:
        for i, phone in enumerate(spellings):
            # A different thread each time: only the phone can connect them.
            status, _ = await svc.client.post_api(
                api_body(f"p-{i}", phone=phone, thread_id=f"chat-{i}")
            )
            assert status == 200
            await svc.routed()
        lead = await one(svc.store.leads, {})
        msgs = [m async for m in svc.store.messages.find({}, sort=[("received_at", 1)])]
        assert [m["target"]["id"] for m in msgs] == [lead["_id"]] * 4
        assert [m["decision"]["rule"] for m in msgs] == ["new_lead"] + ["open_lead"] * 3
        assert await svc.store.contacts.count_documents({}) == 1


async def test_conversation_continues_on_its_lead(mongo_uri: str, db_name: str) -> None:
    async with in_process(mongo_uri, db_name) as svc:
        await svc.client.post_api(api_body("c-1", email="Buyer@Example.com", thread_id="t1"))
        await svc.routed()
        await svc.client.post_api(api_body("c-2", email="buyer@example.com", thread_id="t1"))
        await svc.routed()
        second = await one(svc.store.messages, {"provider_id": "c-2"})
        assert second["decision"]["rule"] == "conversation"
        conv = await one(svc.store.conversations, {})
        assert conv["message_count"] == 2
        assert conv["unread"] == 2


async def test_active_deal_takes_the_message(mongo_uri: str, db_name: str) -> None:
    async with in_process(mongo_uri, db_name) as svc:
        # The shop source runs in "no leads" mode: an unknown sender gets contact + deal.
        status, _ = await svc.client.post_api(
            api_body("s-1", phone="+79005550001", name="Olga"), account="shop"
        )
        assert status == 200
        await svc.routed()
        deal = await one(svc.store.deals, {})
        assert (deal["pipeline_id"], deal["stage_id"], deal["open"]) == (
            "direct",
            "new_order",
            True,
        )
        shop = svc.service.config.source("shop")
        assert deal["responsible_id"] == shop.responsible
        # Later the same person writes through the site form: it joins the active deal.
        await svc.client.post_api(api_body("f-9", phone="8 900 555 00 01"))
        await svc.routed()
        msg = await one(svc.store.messages, {"provider_id": "f-9"})
        assert msg["decision"]["rule"] == "active_deal"
        assert msg["target"]["id"] == deal["_id"]
        assert await svc.store.leads.count_documents({}) == 0


async def test_won_deal_then_repeat_deal_in_no_leads_mode(mongo_uri: str, db_name: str) -> None:
    async with in_process(mongo_uri, db_name) as svc:
        await svc.client.post_api(
            api_body("s-1", phone="+79005550002", thread_id="a"), account="shop"
        )
        await svc.routed()
        first = await one(svc.store.deals, {})
        await move_stage(
            svc.store, "deal", first["_id"], svc.service.config.pipeline("direct"), "won"
        )
        await svc.client.post_api(
            api_body("s-2", phone="+79005550002", thread_id="a"), account="shop"
        )
        await svc.routed()
        second = await one(svc.store.deals, {"open": True})
        assert second["_id"] != first["_id"]
        assert second["is_repeat"] is True
        msg = await one(svc.store.messages, {"provider_id": "s-2"})
        assert (msg["decision"]["rule"], msg["target"]["id"]) == ("repeat_deal", second["_id"])
        conv = await one(svc.store.conversations, {})
        assert conv["target"] == {"kind": "deal", "id": second["_id"], "open": True}


async def test_most_recently_active_deal_wins(mongo_uri: str, db_name: str) -> None:
    async with in_process(mongo_uri, db_name) as svc:
        await svc.client.post_api(
            api_body("s-1", phone="+79005550003", thread_id="a"), account="shop"
        )
        await svc.routed()
        auto = await one(svc.store.deals, {})
        # An operator opened a second deal for the same customer a moment later.
        manual = {
            **{k: auto[k] for k in ("contact_id", "pipeline_id", "stage_id", "open")},
            "_id": "manual-deal",
            "origin_intake_id": None,
            "last_activity_at": auto["last_activity_at"] + timedelta(milliseconds=1),
        }
        await svc.store.deals.insert_one(manual)
        await svc.client.post_api(api_body("f-1", phone="+79005550003", thread_id="b"))
        await svc.routed()
        msg = await one(svc.store.messages, {"provider_id": "f-1"})
        assert (msg["decision"]["rule"], msg["target"]["id"]) == ("active_deal", "manual-deal")
        # A message in the first deal's conversation makes that deal the most recent again.
        await svc.client.post_api(
            api_body("s-2", phone="+79005550003", thread_id="a"), account="shop"
        )
        await svc.routed()
        msg = await one(svc.store.messages, {"provider_id": "s-2"})
        assert (msg["decision"]["rule"], msg["target"]["id"]) == ("conversation", auto["_id"])
        await svc.client.post_api(api_body("f-2", phone="+79005550003", thread_id="c"))
        await svc.routed()
        msg = await one(svc.store.messages, {"provider_id": "f-2"})
        assert (msg["decision"]["rule"], msg["target"]["id"]) == ("active_deal", auto["_id"])


async def test_closed_lead_then_repeat_lead_with_same_responsible(
    mongo_uri: str, db_name: str
) -> None:
    async with in_process(mongo_uri, db_name) as svc:
        await svc.client.post_api(api_body("r-1", email="anna@example.org"))
        await svc.routed()
        lead = await one(svc.store.leads, {})
        pipeline = svc.service.config.pipeline("leads")
        await move_stage(svc.store, "lead", lead["_id"], pipeline, "not_interested")
        await svc.client.post_api(api_body("r-2", email="ANNA@example.org"))
        await svc.routed()
        repeat = await one(svc.store.leads, {"open": True})
        assert repeat["_id"] != lead["_id"]
        assert repeat["is_repeat"] is True
        assert repeat["responsible_id"] == lead["responsible_id"]
        msg = await one(svc.store.messages, {"provider_id": "r-2"})
        assert (msg["decision"]["rule"], msg["target"]["id"]) == ("repeat_lead", repeat["_id"])
        assert await svc.store.events.count_documents({"type": "lead.repeat_created"}) == 1
        conv = await one(svc.store.conversations, {})
        assert conv["target"]["id"] == repeat["_id"]


async def test_spam_contact_gets_no_new_lead(mongo_uri: str, db_name: str) -> None:
    async with in_process(mongo_uri, db_name) as svc:
        await svc.client.post_api(api_body("x-1", phone="+79007770000"))
        await svc.routed()
        lead = await one(svc.store.leads, {})
        await move_stage(
            svc.store, "lead", lead["_id"], svc.service.config.pipeline("leads"), "spam"
        )
        await svc.client.post_api(api_body("x-2", phone="+79007770000"))
        await svc.routed()
        msg = await one(svc.store.messages, {"provider_id": "x-2"})
        assert msg["decision"]["rule"] == "spam"
        assert await svc.store.leads.count_documents({}) == 1


async def test_source_override_routes_to_its_own_pipeline(mongo_uri: str, db_name: str) -> None:
    async with in_process(mongo_uri, db_name, config=config_with_wholesale_form()) as svc:
        await svc.client.post_api(
            api_body("w-1", email="opt@store.example"),
            account="wholesale-form",
            secret="site-secret",
        )
        await svc.client.post_api(api_body("w-2", email="retail@example.net"))
        await svc.routed()
        wholesale = await one(svc.store.leads, {"source_id": "mail_wholesale"})
        assert (wholesale["pipeline_id"], wholesale["stage_id"]) == ("wholesale", "new")
        line = {u.id for u in svc.service.config.line_users("wholesale")}
        assert wholesale["responsible_id"] in line
        retail = await one(svc.store.leads, {"source_id": "site"})
        assert retail["pipeline_id"] == "leads"


async def test_round_robin_is_persisted_across_restarts(mongo_uri: str, db_name: str) -> None:
    users = sorted(u.id for u in load_config(DEFAULT_CONFIG_DIR).line_users("sales"))
    got: list[str] = []
    for run in range(2):
        async with in_process(mongo_uri, db_name) as svc:
            for i in range(len(users)):
                await svc.client.post_api(api_body(f"rr-{run}-{i}", phone=f"+7901000{run}{i:03d}"))
                await svc.routed()
                lead = await one(svc.store.leads, {"identities": f"phone:+7901000{run}{i:03d}"})
                got.append(lead["responsible_id"])
    # Each run deals every user exactly one lead, continuing where the last run stopped.
    n = len(users)
    assert sorted(got[:n]) == users
    assert got[n:] == got[:n]


async def test_twenty_concurrent_deliveries_store_one_message(mongo_uri: str, db_name: str) -> None:
    async with in_process(mongo_uri, db_name) as svc:
        body = api_body("dup-1", phone="+79003330000")
        results = await asyncio.gather(*[svc.client.post_api(body) for _ in range(20)])
        assert [s for s, _ in results] == [200] * 20
        accepted = [b["accepted"] for _, b in results if b["accepted"]]
        assert len(accepted) == 1
        await svc.routed()
        assert await svc.store.intake.count_documents({}) == 1
        assert await svc.store.messages.count_documents({}) == 1
        assert await svc.store.leads.count_documents({}) == 1


async def test_burst_from_ten_new_senders(mongo_uri: str, db_name: str) -> None:
    async with in_process(mongo_uri, db_name) as svc:
        posts = [
            svc.client.post_api(api_body(f"b-{s}-{m}", phone=f"+7902000{s:04d}"))
            for m in range(10)
            for s in range(10)
        ]
        results = await asyncio.gather(*posts)
        assert all(s == 200 for s, _ in results)
        await svc.routed()
        assert await svc.store.leads.count_documents({}) == 10
        assert await svc.store.messages.count_documents({}) == 100
        async for lead in svc.store.leads.find({}):
            phone = lead["identities"][0]
            on_lead = await svc.store.messages.count_documents({"target.id": lead["_id"]})
            from_sender = await svc.store.messages.count_documents({"identities": phone})
            assert on_lead == from_sender == 10
