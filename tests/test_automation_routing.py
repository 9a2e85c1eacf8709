"""Where routing and the robots meet, on the furniture maker's example end to end: messages
in over HTTP, routing, operators' moves, the robots on a fake clock.

- a won order's copy in the NPS survey (a ``purpose: service`` pipeline) never captures the
  customer's next message: it is a repeat lead;
- a converted lead is closed for good: its "untouched for 2 hours in New" alert never fires;
- a notification whose ``to`` is nobody falls back along head → director → admin, and
  ``check-config`` says so (or warns when even the fallback is nobody).
"""

from __future__ import annotations

from typing import Any

from automation import people
from config.models import AppConfig, Role
from crm_store import entities
from tests.automation_support import Robots, msk, robots, seed_config

ANNA, IVAN, SERGEY = "anna.smirnova", "ivan.petrov", "sergey.volkov"


async def won_order(r: Robots, external_id: str, phone: str) -> tuple[str, str]:
    """A customer's request qualified by Anna, its order (opened by the robots) paid,
    signed and won. Returns (lead id, order id)."""
    lead = await r.lead_from(external_id, phone)
    await entities.set_responsible(r.store, "lead", lead["_id"], ANNA, by=ANNA)
    await r.move("lead", lead["_id"], "in_work")
    await r.set("lead", lead["_id"], order_type="custom")
    await r.move("lead", lead["_id"], "qualified")
    await r.run()
    [order] = [d async for d in r.store.deals.find({"copied_from": lead["_id"]})]
    await r.set("deal", order["_id"], amount=150000, paid_amount=150000, documents_signed=True)
    await r.move("deal", order["_id"], "won")
    await r.run()
    return lead["_id"], order["_id"]


async def test_a_customer_writing_during_the_nps_survey_is_a_repeat_lead(
    mongo_uri: str, db_name: str
) -> None:
    async with robots(mongo_uri, db_name, start=msk(2025, 6, 2, 10, 0)) as r:
        assert r.config.pipeline("nps").purpose == "service"
        lead_id, order_id = await won_order(r, "nps-1", "+79001240001")
        # The robots copied the won order into the survey and sent the customer the link.
        [survey] = [d async for d in r.store.deals.find({"pipeline_id": "nps"})]
        assert (survey["stage_id"], survey["open"], survey["copied_from"]) == (
            "survey",
            True,
            order_id,
        )
        [link] = await r.outbound()
        assert "/survey/" in link["text"]  # the survey page's signed link

        # A month later the customer wants a wardrobe too, from the same phone.
        status, body = await r.svc.client.post_api(
            {
                "external_id": "nps-2",
                "sender": {"phone": "8 (900) 124-00-01", "name": "Ivan"},
                "text": "Hello again! Now we need a wardrobe for the hall, 2.4 m",
            }
        )
        assert status == 200, body
        await r.run()
        [mid] = body["accepted"]
        msg = await r.store.messages.find_one({"_id": mid})
        assert msg is not None
        assert (msg["decision"]["rule"], msg["decision"]["action"]) == (
            "repeat_lead",
            "create_lead",
        ), msg["decision"]
        repeat = await r.get("lead", msg["target"]["id"])
        assert (repeat["pipeline_id"], repeat["stage_id"], repeat["is_repeat"]) == (
            "leads",
            "new",
            True,
        )
        assert repeat["_id"] != lead_id
        assert repeat["responsible_id"] == ANNA  # the contact's responsible
        # The survey is untouched: no message landed on it.
        assert await r.store.messages.count_documents({"target.id": survey["_id"]}) == 0
        assert [e["data"]["is_repeat"] for e in await r.events("lead.repeat_created")] == [True]


async def test_an_open_sales_deal_still_attracts_the_customers_messages(
    mongo_uri: str, db_name: str
) -> None:
    """The other side of the purpose: while the order itself is open, the customer's message
    goes to the order, not to a new lead."""
    async with robots(mongo_uri, db_name, start=msk(2025, 6, 2, 10, 0)) as r:
        lead = await r.lead_from("ord-1", "+79001240002")
        await r.move("lead", lead["_id"], "in_work")
        await r.set("lead", lead["_id"], order_type="standard")
        await r.move("lead", lead["_id"], "qualified")
        await r.run()
        [order] = [d async for d in r.store.deals.find({"copied_from": lead["_id"]})]
        status, body = await r.svc.client.post_api(
            {
                "external_id": "ord-2",
                "sender": {"phone": "+79001240002"},
                "text": "Can the doors be oak?",
            }
        )
        assert status == 200, body
        await r.run()
        msg = await r.store.messages.find_one({"_id": body["accepted"][0]})
        assert msg is not None
        assert (msg["decision"]["rule"], msg["target"]["id"]) == ("active_deal", order["_id"])


async def test_a_converted_lead_never_gets_the_untouched_alert(
    mongo_uri: str, db_name: str
) -> None:
    async with robots(mongo_uri, db_name, start=msk(2025, 4, 29, 10, 0)) as r:
        lead = await r.lead_from("cv-1", "+79001240003", name="Maria")
        await entities.set_responsible(r.store, "lead", lead["_id"], ANNA, by=ANNA)
        await r.run()
        [timer] = [t async for t in r.store["timers"].find({"entity_id": lead["_id"]})]
        assert (timer["rule_id"], timer["state"]) == ("lead-untouched", "pending")
        # Half an hour later Anna converts it into an order straight from the inbox.
        await r.advance(minutes=30)
        status, deal = await r.api("POST", f"/api/v1/leads/{lead['_id']}/convert", ANNA, {})
        assert status == 201, deal
        closed = await r.get("lead", lead["_id"])
        # A terminal state: closed as converted, out of "new" into the won stage.
        assert (closed["open"], closed["outcome"], closed["stage_id"]) == (
            False,
            "converted",
            "qualified",
        )
        assert closed["converted_from_stage"] == "new"
        await r.run()
        # Two hours in "new" pass: nobody is told about a lead that is an order now.
        await r.advance(hours=3)
        assert await r.notes() == []
        [timer] = [t async for t in r.store["timers"].find({"entity_id": lead["_id"]})]
        assert timer["state"] == "cancelled"
        # No stage move was announced (the won stage's robots would open a second order).
        assert await r.events("lead.stage_changed") == []
        assert await r.store.deals.count_documents({}) == 1


async def test_a_timer_of_a_converted_lead_is_refused_when_it_comes_due(
    mongo_uri: str, db_name: str
) -> None:
    """The lead's timer still pending when it comes due (written after the conversion
    cancelled the others): the engine sees the terminal state and does not fire it."""
    async with robots(mongo_uri, db_name, start=msk(2025, 4, 29, 10, 0)) as r:
        lead = await r.lead_from("cv-2", "+79001240004")
        await r.run()
        await r.store.leads.update_one(
            {"_id": lead["_id"]},
            {"$set": {"open": False, "outcome": "converted", "converted_to": "deal-x"}},
        )
        await r.advance(hours=3)
        assert await r.notes() == []
        [timer] = [t async for t in r.store["timers"].find({"entity_id": lead["_id"]})]
        assert timer["state"] == "cancelled"
        assert "converted" in timer["end_reason"]


async def test_the_untouched_alert_of_the_heads_own_lead_goes_to_the_admin(
    mongo_uri: str, db_name: str
) -> None:
    async with robots(mongo_uri, db_name, start=msk(2025, 4, 29, 10, 0)) as r:
        lead = await r.lead_from("hd-1", "+79001240005", name="Oleg")
        await entities.set_responsible(r.store, "lead", lead["_id"], IVAN, by=IVAN)
        await r.run()
        await r.advance(hours=2)
        [note] = await r.notes()
        # Ivan heads sales and is the only director: head → director → admin.
        assert (note["user_id"], note["fallback"], note["rule_id"]) == (
            SERGEY,
            "admin",
            "lead-untouched",
        )
        assert await r.events("automation.failed") == []


def without_directors_and_admins(cfg: AppConfig) -> AppConfig:
    users = [
        u.model_copy(update={"role": Role.MANAGER}) if u.role in (Role.DIRECTOR, Role.ADMIN) else u
        for u in cfg.users.users
    ]
    return cfg.model_copy(update={"users": cfg.users.model_copy(update={"users": users})})


def test_the_fallback_chain() -> None:
    cfg = seed_config("furniture")
    head: Any = ("head",)
    # A manager's head is there: no fallback.
    assert people.notified(cfg, head, ANNA) == people.Recipients([IVAN])
    # The head of sales has nobody above: the nearest other director, else an admin.
    assert people.notified(cfg, head, IVAN) == people.Recipients([SERGEY], "admin")
    # No responsible at all: the director.
    assert people.notified(cfg, head, None) == people.Recipients([IVAN], "director")
    # Nobody to fall back to.
    bare = without_directors_and_admins(cfg)
    assert people.notified(bare, head, IVAN) == people.Recipients([])


def test_check_config_lists_the_rules_that_can_reach_nobody() -> None:
    cfg = seed_config("furniture")
    found = dict(people.recipient_warnings(cfg))
    assert set(found) == {"note"}  # every case has a fallback in the example
    notes = [t for level, t in people.recipient_warnings(cfg) if level == "note"]
    [untouched] = [t for t in notes if t.startswith("rule lead-untouched:")]
    assert "ivan.petrov → admin sergey.volkov" in untouched
    # A notify rule that no one can receive is a warning.
    bare = without_directors_and_admins(cfg)
    warnings = [t for level, t in people.recipient_warnings(bare) if level == "warning"]
    assert any(t.startswith("rule lead-untouched:") and "ivan.petrov" in t for t in warnings)
