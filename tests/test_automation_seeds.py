"""The seeds' robots end to end: messages in over HTTP, routing, operators' moves and
edits through the store's write paths (and the tasks API), the robots on a fake clock.

Dates are real ones of the Russian production calendar (2025): the May holidays are in
the middle of the furniture maker's payment reminders."""

from __future__ import annotations

from typing import Any

import pytest

from crm_store import entities
from crm_store.events import append, event
from crm_store.stages import StageError
from tests.automation_support import MSK, Robots, msk, robots, seed_config
from tests.service import api_body

ANNA, IVAN, NIKOLAI = "anna.smirnova", "ivan.petrov", "nikolai.sidorov"


def local(doc: dict[str, Any], key: str = "created_at") -> str:
    return str(doc[key].astimezone(MSK).strftime("%m-%d %H:%M"))


async def order_from_lead(r: Robots, external_id: str, phone: str) -> tuple[str, str]:
    """A furniture lead (responsible Anna) taken into work and qualified: the robots open
    its order. Returns (lead id, deal id)."""
    lead = await r.lead_from(external_id, phone)
    await entities.set_responsible(r.store, "lead", lead["_id"], ANNA, by=ANNA)
    await r.move("lead", lead["_id"], "in_work")
    await r.set("lead", lead["_id"], order_type="custom")
    await r.move("lead", lead["_id"], "qualified")
    await r.run()
    [deal] = [d async for d in r.store.deals.find({"copied_from": lead["_id"]})]
    return lead["_id"], deal["_id"]


async def to_awaiting_payment(r: Robots, deal_id: str) -> None:
    await r.set("deal", deal_id, estimate_amount=150000)
    await r.move("deal", deal_id, "approval")
    await r.set("deal", deal_id, contract_number="C-7", amount=150000)
    await r.set("deal", deal_id, payment_due_date="2025-05-15")
    await r.move("deal", deal_id, "awaiting_payment")


# --- the furniture maker -----------------------------------------------------------------


async def test_furniture_leads(mongo_uri: str, db_name: str) -> None:
    async with robots(mongo_uri, db_name, start=msk(2025, 4, 29, 10, 0)) as r:
        lead = await r.lead_from("fm-1", "+79001230001", name="Ivan")
        await entities.set_responsible(r.store, "lead", lead["_id"], ANNA, by=ANNA)
        await r.run()
        # Untouched for 2 hours → the sales head is told (not a minute earlier).
        await r.advance(hours=1, minutes=59)
        assert await r.notes() == []
        await r.advance(minutes=1)
        [note] = await r.notes()
        assert (note["user_id"], local(note)) == (IVAN, "04-29 12:00")
        assert note["text"] == (
            "Лид «Ivan — Site request form» 2 часа не обработан "
            "(стадия «Новый лид», ответственный: Anna Smirnova)"
        )
        # Into work → the task "Указать тип заказа", due in 4 working hours.
        await r.move("lead", lead["_id"], "in_work")
        await r.run()
        [task] = await r.tasks()
        assert (task["title"], task["assignee_id"], local(task, "deadline")) == (
            "Указать тип заказа",
            ANNA,
            "04-29 16:00",
        )
        # Qualified → the order is opened in the orders pipeline with what was learnt.
        await r.set("lead", lead["_id"], order_type="custom")
        await r.move("lead", lead["_id"], "qualified")
        await r.run()
        [deal] = [d async for d in r.store.deals.find({})]
        assert (deal["pipeline_id"], deal["stage_id"], deal["responsible_id"]) == (
            "orders",
            "estimate",
            ANNA,
        )
        assert (deal["fields"], deal["contact_id"], deal["copied_from"]) == (
            {"order_type": "custom"},
            lead["contact_id"],
            lead["_id"],
        )
        [created] = await r.events("deal.created")
        assert created["refs"]["copied_from"] == lead["_id"]
        # The customer writes again: the message joins the order.
        status, body = await r.svc.client.post_api(
            {"external_id": "fm-2", "sender": {"phone": "8 900 123 00 01"}, "text": "Any news?"}
        )
        assert status == 200
        await r.svc.routed()
        msg = await r.store.messages.find_one({"_id": body["accepted"][0]})
        assert msg is not None
        assert (msg["decision"]["rule"], msg["target"]["id"]) == ("active_deal", deal["_id"])


async def test_furniture_payment(mongo_uri: str, db_name: str) -> None:
    async with robots(mongo_uri, db_name, start=msk(2025, 4, 30, 10, 0)) as r:
        _, paid = await order_from_lead(r, "fp-1", "+79001230002")
        _, unpaid = await order_from_lead(r, "fp-2", "+79001230003")
        # Awaiting payment needs the amount and the due date.
        await r.set("deal", paid, estimate_amount=150000)
        await r.move("deal", paid, "approval")
        await r.set("deal", paid, contract_number="C-7", amount=150000)
        with pytest.raises(StageError) as refused:
            await r.move("deal", paid, "awaiting_payment")
        assert refused.value.unmet == ["the payment due date is set"]
        r.clock.set(msk(2025, 4, 30, 11, 0))
        await r.set("deal", paid, payment_due_date="2025-05-15")
        await r.move("deal", paid, "awaiting_payment")
        await to_awaiting_payment(r, unpaid)
        await r.run()
        # Every 2 working days: 30 April + 2 = 6 May (1–4 May off), then 12 May (8–11 off).
        await r.until(msk(2025, 5, 6, 10, 59))
        assert await r.notes() == []
        await r.until(msk(2025, 5, 6, 11, 0))
        notes = await r.notes(**{"entity.id": paid})
        assert {n["user_id"] for n in notes} == {ANNA, IVAN}
        assert notes[0]["text"].endswith(
            "(срок 2025-05-15): проверьте, оплачен ли счёт, и свяжитесь с клиентом; "
            "напоминание 1 из 3"
        )
        await r.until(msk(2025, 5, 12, 11, 0))
        assert len(await r.notes(**{"entity.id": paid})) == 4
        # The payment arrives: the order gets its number, once.
        await r.until(msk(2025, 5, 13, 9, 30))
        await r.set("deal", paid, paid_amount=50000)
        await r.run()
        assert (await r.get("deal", paid))["fields"]["order_number"] == "ORD-00001"
        await r.set("deal", paid, paid_amount=150000)
        await r.run()
        assert (await r.get("deal", paid))["fields"]["order_number"] == "ORD-00001"
        # The third reminder: only for the unpaid order; then no more.
        await r.until(msk(2025, 5, 14, 11, 0))
        await r.until(msk(2025, 6, 30, 11, 0))
        assert len(await r.notes(**{"entity.id": paid})) == 4
        unpaid_notes = await r.notes(**{"entity.id": unpaid, "user_id": ANNA})
        assert [local(n) for n in unpaid_notes] == ["05-06 11:00", "05-12 11:00", "05-14 11:00"]
        assert unpaid_notes[-1]["text"].endswith("напоминание 3 из 3")
        states = {
            t["entity_id"]: t async for t in r.store["timers"].find({"rule_id": "payment-reminder"})
        }
        assert (states[paid]["state"], states[paid]["end_reason"]) == (
            "cancelled",
            "its condition no longer holds",
        )
        assert (states[unpaid]["state"], states[unpaid]["fired"]) == ("done", 3)
        await r.set("deal", unpaid, paid_amount=1)
        await r.run()
        assert (await r.get("deal", unpaid))["fields"]["order_number"] == "ORD-00002"


async def test_furniture_production_to_survey(mongo_uri: str, db_name: str) -> None:
    async with robots(mongo_uri, db_name, start=msk(2025, 5, 14, 9, 0)) as r:
        lead_id, deal = await order_from_lead(r, "fw-1", "+79001230004")
        await to_awaiting_payment(r, deal)
        await r.set("deal", deal, prepayment_amount=45000, delivery_deadline="2025-06-10")
        await r.run()  # the payment entered: the order number
        await r.move("deal", deal, "design")
        await r.set("deal", deal, design_file="kitchen.pdf")
        await r.move("deal", deal, "production_task")
        await r.until(msk(2025, 5, 14, 12, 0))
        await r.move("deal", deal, "production")
        await r.run()
        # Custom furniture: over 7 working days in production → told 3 times a day.
        overdue = {"rule_id": "production-overdue-custom"}
        [told] = await r.notes(rule_id="production-task")
        assert (told["user_id"], told["text"]) == (
            NIKOLAI,
            "Новый проект на производство: «Ivan — Site request form»",
        )
        [made] = await r.tasks(template="production")
        assert (made["assignee_id"], sorted(made["watchers"])) == (NIKOLAI, [ANNA, IVAN])
        await r.until(msk(2025, 5, 23, 11, 59))
        assert await r.notes(**overdue) == []
        for when in (
            msk(2025, 5, 23, 12, 0),
            msk(2025, 5, 23, 15, 0),
            msk(2025, 5, 23, 18, 0),
            msk(2025, 5, 26, 12, 0),
        ):
            await r.until(when)
        notes = await r.notes(user_id=NIKOLAI, **overdue)
        assert [local(n) for n in notes] == [
            "05-23 12:00",
            "05-23 15:00",
            "05-23 18:00",
            "05-26 12:00",
        ]
        assert "(нетиповое изделие) в производстве дольше 7 рабочих дней" in notes[0]["text"]
        # The shipping date is set; the order is ready; the production reminders stop.
        await r.until(msk(2025, 5, 26, 13, 0))
        await r.set("deal", deal, shipping_date="2025-05-28", delivery_address="Tverskaya 1")
        await r.move("deal", deal, "order_ready")
        await r.run()
        await r.until(msk(2025, 5, 28, 8, 59))
        assert len(await r.notes(user_id=NIKOLAI, **overdue)) == 4
        assert (await r.get("deal", deal))["stage_id"] == "order_ready"
        # On the shipping date it moves to Shipping by itself, and cannot go back.
        await r.until(msk(2025, 5, 28, 9, 0))
        assert (await r.get("deal", deal))["stage_id"] == "shipping"
        moved = (await r.events("deal.stage_changed"))[-1]
        assert (moved["data"]["to"], moved["data"]["by"]) == ("shipping", "automation:ship-on-date")
        with pytest.raises(StageError, match="back"):
            await r.move("deal", deal, "order_ready")
        # Installation within 3 working days, then the closing documents.
        await r.set("deal", deal, installation_date="2025-05-30")
        await r.move("deal", deal, "installation")
        await r.run()
        [install] = await r.tasks(template="installation")
        assert (install["assignee_id"], install["watchers"], local(install, "deadline")) == (
            ANNA,
            [IVAN],
            "06-02 09:00",
        )
        status, _ = await r.api("POST", f"/api/v1/tasks/{install['_id']}/complete", ANNA)
        assert status == 200
        await r.run()
        [docs] = await r.tasks(template="closing_documents")
        assert docs["title"] == "Получить закрывающие документы по «Ivan — Site request form»"
        # Won only with the signed documents and the full payment.
        with pytest.raises(StageError) as refused:
            await r.move("deal", deal, "won")
        assert refused.value.unmet == [
            "the closing documents are signed",
            "the order is paid in full",
        ]
        await r.set("deal", deal, documents_signed=True, paid_amount=150000)
        await r.move("deal", deal, "won")
        await r.run()
        # Copied into the satisfaction survey; the customer gets the link in their chat.
        [nps] = [d async for d in r.store.deals.find({"pipeline_id": "nps"})]
        assert (nps["stage_id"], nps["fields"]) == (
            "survey",
            {"order_number": "ORD-00001", "amount": 150000},
        )
        [survey] = await r.outbound()
        assert survey["automatic"] is True
        # The survey's own signed, expiring link (docs/survey.md), one per deal.
        assert "/survey/" in survey["text"]
        assert "ORD-00001" in survey["text"]
        conv = await r.store.conversations.find_one({"_id": survey["conversation_id"]})
        assert conv is not None
        assert conv["contact_id"] == nps["contact_id"]
        # Not all fives: marked negative.
        await r.set("deal", nps["_id"], score_quality=5, score_delivery=4, score_installation=5)
        await r.run()
        rated = await r.get("deal", nps["_id"])
        assert (rated["stage_id"], rated["fields"]["sentiment"]) == ("detractor", "negative")
        assert len(await r.outbound()) == 1
        assert lead_id


async def test_furniture_all_fives(mongo_uri: str, db_name: str) -> None:
    async with robots(mongo_uri, db_name, start=msk(2025, 6, 2, 10, 0)) as r:
        lead = await r.lead_from("f5-1", "+79001230005")
        # As the won-to-nps rule does for a won order.
        nps, _ = await entities.copy_to_pipeline(
            r.store, lead, r.config.pipeline("nps"), "survey", [], key="won-order-1"
        )
        await r.run()
        await r.set("deal", nps["_id"], score_quality=5, score_delivery=5)
        await r.run()
        assert (await r.get("deal", nps["_id"]))["stage_id"] == "survey"  # not all rated yet
        await r.set("deal", nps["_id"], score_installation=5)
        await r.run()
        assert (await r.get("deal", nps["_id"]))["stage_id"] == "promoter"
        survey, review = await r.outbound()
        assert "Оцените, пожалуйста" in survey["text"]
        assert review["text"].startswith("Спасибо за высокие оценки!")
        assert "sentiment" not in (await r.get("deal", nps["_id"]))["fields"]


async def test_furniture_missed_call(mongo_uri: str, db_name: str) -> None:
    async with robots(mongo_uri, db_name, start=msk(2025, 6, 2, 17, 30)) as r:
        lead = await r.lead_from("mc-1", "+79001230006", name="Pyotr")
        await entities.set_responsible(r.store, "lead", lead["_id"], ANNA, by=ANNA)
        await r.run()
        # What telephony appends when a known contact's call goes unanswered.
        refs = {"call_id": "call-1", "contact_id": lead["contact_id"], "lead_id": lead["_id"]}
        await append(r.store, [event("call.missed", refs, {"channel": "megafon"}, key=["call-1"])])
        await r.run()
        [task] = await r.tasks(template="call_back")
        # 17:30 + 1 working hour = 9:30 the next working day.
        assert (task["title"], task["assignee_id"], local(task, "deadline")) == (
            "Перезвонить: Pyotr",
            ANNA,
            "06-03 09:30",
        )


# --- the kitchen shop --------------------------------------------------------------------


async def test_kitchen_shop(mongo_uri: str, db_name: str) -> None:
    """The deal starts with the contract; each closed task sets the next; the prepayment
    guard; the remaining amount; the control call the day before, on a working day."""
    cfg = seed_config("kitchen_shop")
    async with robots(mongo_uri, db_name, config=cfg, start=msk(2025, 6, 2, 10, 0)) as r:
        deal = await r.lead_from("k-1", "+79001240001", name="Olga")
        assert (deal["pipeline_id"], deal["stage_id"]) == ("kitchens", "contract")
        manager = deal["responsible_id"]
        assert manager == "pavel.sokolov"
        await r.run()
        [contract] = await r.tasks()
        assert (contract["title"], local(contract, "deadline")) == (
            "Подготовить договор и подписать его у клиента",
            "06-04 10:00",
        )
        assert (await r.get("deal", deal["_id"]))["fields"]["deal_number"] == "КП-00001"
        # Each closed task sets the next: the invoice, then the prepayment.
        await r.api("POST", f"/api/v1/tasks/{contract['_id']}/complete", manager)
        await r.run()
        [invoice] = await r.tasks(template="send_invoice")
        await r.api("POST", f"/api/v1/tasks/{invoice['_id']}/complete", manager)
        await r.run()
        assert [t["template"] for t in await r.tasks()] == [
            "sign_contract",
            "send_invoice",
            "take_prepayment",
        ]
        # The remaining amount follows the amount and the prepayment.
        await r.set("deal", deal["_id"], amount=300000)
        await r.run()
        assert "remaining_amount" not in (await r.get("deal", deal["_id"]))["fields"]
        await r.set("deal", deal["_id"], prepayment_amount=90000)
        await r.run()
        assert (await r.get("deal", deal["_id"]))["fields"]["remaining_amount"] == 210000
        await r.set("deal", deal["_id"], amount=320000)
        await r.run()
        assert (await r.get("deal", deal["_id"]))["fields"]["remaining_amount"] == 230000
        # "Prepayment received" needs the prepayment and the desired date.
        with pytest.raises(StageError) as refused:
            await r.move("deal", deal["_id"], "prepayment")
        assert refused.value.missing_fields == ["desired_date"]
        await r.set("deal", deal["_id"], desired_date="2025-06-23")
        await r.move("deal", deal["_id"], "prepayment")
        await r.run()
        [tech] = await r.tasks(template="technologist")
        assert len(tech["checklist"]) == 3
        await r.set("deal", deal["_id"], ready_date="2025-06-16")
        await r.move("deal", deal["_id"], "production")
        await r.move("deal", deal["_id"], "ready")
        await r.set("deal", deal["_id"], paid_in_full=True)
        await r.move("deal", deal["_id"], "paid")
        # The assembly on Monday 2025-06-23: the control call on Friday, not on Sunday.
        await r.set(
            "deal", deal["_id"], installation_date="2025-06-23", master="Igor", address="Moscow"
        )
        await r.move("deal", deal["_id"], "scheduled")
        await r.run()
        await r.until(msk(2025, 6, 20, 9, 59))
        assert await r.tasks(template="control_call") == []
        await r.until(msk(2025, 6, 20, 10, 0))
        [call] = await r.tasks(template="control_call")
        assert (call["assignee_id"], local(call, "deadline")) == (manager, "06-20 14:00")


# --- the forensic lab --------------------------------------------------------------------


async def test_forensic_lab(mongo_uri: str, db_name: str) -> None:
    cfg = seed_config("forensic_lab")
    async with robots(mongo_uri, db_name, config=cfg, start=msk(2025, 3, 3, 10, 0)) as r:
        forgotten = await r.lead_from("lab-1", "+79001250001", name="LLC Vector")
        handled = await r.lead_from("lab-2", "+79001250002", name="LLC Delta")
        await r.move("deal", forgotten["_id"], "qualified")
        await r.move("deal", handled["_id"], "qualified")
        await r.run()
        await r.until(msk(2025, 3, 13, 10, 0))
        await r.move("deal", handled["_id"], "negotiation")
        # Forgotten in «Квалификация пройдена»: the sales head hears of it after 15 and
        # after 30 days.
        rule = {"rule_id": "sales-forgotten-qualified"}
        await r.until(msk(2025, 3, 18, 9, 59))
        assert await r.notes(**rule) == []
        await r.until(msk(2025, 3, 18, 10, 0))
        await r.until(msk(2025, 4, 2, 10, 0))
        await r.until(msk(2025, 6, 1, 10, 0))
        notes = await r.notes(**rule)
        assert [(n["user_id"], local(n)) for n in notes] == [
            ("olga.sokolova", "03-18 10:00"),
            ("olga.sokolova", "04-02 10:00"),
        ]
        assert notes[1]["text"].endswith("«Квалификация пройдена»: контроль 2 из 2")
        assert {n["entity"]["id"] for n in notes} == {forgotten["_id"]}
        # A new responsible of the deal is the contact's and the company's too.
        await r.store["companies"].insert_one(
            {"_id": "company-1", "name": "Vector", "responsible_id": "boris.kuznetsov"}
        )
        await r.store.contacts.update_one(
            {"_id": forgotten["contact_id"]}, {"$set": {"company_id": "company-1"}}
        )
        await entities.set_responsible(
            r.store, "deal", forgotten["_id"], "olga.sokolova", by="olga.sokolova"
        )
        await r.run()
        contact = await r.get("contact", forgotten["contact_id"])
        company = await r.get("company", "company-1")
        assert (contact["responsible_id"], company["responsible_id"]) == (
            "olga.sokolova",
            "olga.sokolova",
        )
        [c] = await r.events("contact.responsible_changed")
        moved = (c["data"]["from"], c["data"]["to"])
        assert moved == (forgotten["responsible_id"], "olga.sokolova")
        assert len(await r.events("company.responsible_changed")) == 1
        # The other contact is untouched.
        other = await r.get("contact", handled["contact_id"])
        assert other["responsible_id"] == handled["responsible_id"] != "olga.sokolova"


# --- the oil distributor -----------------------------------------------------------------


async def test_oil_distributor(mongo_uri: str, db_name: str) -> None:
    cfg = seed_config("oil_distributor")
    async with robots(mongo_uri, db_name, config=cfg, start=msk(2025, 6, 2, 9, 0)) as r:
        slow = await r.lead_from("oil-1", "+79001260001", name="Fuel Ltd")
        quick = await r.lead_from("oil-2", "+79001260002", name="Diesel Ltd")
        await r.run()
        tasks = {t["entity_id"]: t for t in await r.tasks(template="validity_check")}
        assert set(tasks) == {slow["_id"], quick["_id"]}
        # Due in 22 (calendar) hours.
        assert local(tasks[slow["_id"]], "deadline") == "06-03 07:00"
        await r.until(msk(2025, 6, 2, 15, 0))
        await r.api(
            "POST", f"/api/v1/tasks/{tasks[quick['_id']]['_id']}/complete", quick["responsible_id"]
        )
        # Not checked in 24 hours → the supervisor is told, about that lead only; two hours
        # before the 22-hour deadline its manager is reminded.
        await r.until(msk(2025, 6, 3, 8, 59))
        [reminder] = await r.notes()
        assert reminder["user_id"] == slow["responsible_id"]
        assert reminder["text"].endswith("is due 03.06 07:00")
        assert await r.notes(user_id="viktor.belov") == []
        await r.until(msk(2025, 6, 3, 9, 0))
        [note] = await r.notes(user_id="viktor.belov")
        assert (note["user_id"], note["entity"]["id"]) == ("viktor.belov", slow["_id"])
        # Marked not valid → closed as «Некачественный лид».
        await r.set("lead", slow["_id"], quality="not_valid")
        await r.run()
        junk = await r.get("lead", slow["_id"])
        assert (junk["stage_id"], junk["open"], junk["outcome"]) == (
            "low_quality",
            False,
            "failed",
        )
        # "Already in work" → the duplicate is removed.
        dup = await r.lead_from("oil-3", "+79001260003", name="Copy Ltd")
        await r.run()
        await r.set("lead", dup["_id"], quality="already_in_work")
        await r.run()
        removed = await r.get("lead", dup["_id"])
        assert (removed["deleted"], removed["open"]) == (True, False)
        [deleted] = await r.events("lead.deleted")
        assert deleted["data"] == {"by": "automation:already-in-work", "reason": "duplicate"}
        assert (
            await r.store["timers"].count_documents({"entity_id": dup["_id"], "state": "pending"})
            == 0
        )
        # The sender writes again: a repeat lead, not the removed one.
        again = await r.lead_from("oil-4", "+79001260003", name="Copy Ltd")
        assert again["_id"] != dup["_id"]
        assert again["is_repeat"] is True


# --- the eco-goods wholesaler ------------------------------------------------------------


async def shop_order(r: Robots, external_id: str, phone: str, name: str) -> dict[str, Any]:
    """An order of the wholesale site (the shop API account): its deal in PRO.Сделки."""
    body = api_body(external_id, phone=phone, name=name, text="Заказ с оптового сайта")
    status, answer = await r.svc.client.post_api(body, account="shop")
    assert status == 200, answer
    await r.svc.routed()
    await r.run()
    [mid] = answer["accepted"]
    msg = await r.store.messages.find_one({"_id": mid})
    assert msg is not None
    return await r.get("deal", msg["target"]["id"])


async def complete_task(r: Robots, deal: dict[str, Any], template: str) -> None:
    [task] = await r.tasks(entity_id=deal["_id"], template=template, status="open")
    status, _ = await r.api("POST", f"/api/v1/tasks/{task['_id']}/complete", deal["responsible_id"])
    assert status == 200
    await r.run()


async def deliver(r: Robots, deal: dict[str, Any]) -> None:
    """The order through the site's statuses: invoiced, paid 100 %, shipped, delivered,
    the questionnaire filled — won."""
    await complete_task(r, deal, "issue_invoice")
    for fields in (
        {"payment_percent": 100},
        {"order_status": "ready_to_ship"},
        {"order_status": "delivered"},
        {"questionnaire": "ok"},
    ):
        await r.set("deal", deal["_id"], **fields)
        await r.run()
    await complete_task(r, deal, "questionnaire")
    assert (await r.get("deal", deal["_id"]))["stage_id"] == "won"


async def test_eco_goods(mongo_uri: str, db_name: str) -> None:
    cfg = seed_config("eco_goods")
    async with robots(mongo_uri, db_name, config=cfg, start=msk(2025, 7, 1, 10, 0)) as r:
        once = await shop_order(r, "eco-1", "+79001270001", "Green Shop")
        twice = await shop_order(r, "eco-2", "+79001270002", "Eco Market")
        assert (once["pipeline_id"], once["stage_id"]) == ("pro_deals", "new")
        await deliver(r, once)
        await deliver(r, twice)
        # The second customer orders again within the 14 days.
        await r.until(msk(2025, 7, 8, 10, 0))
        again = await shop_order(r, "eco-3", "+79001270002", "Eco Market")
        assert again["_id"] != twice["_id"]
        assert again["is_repeat"] is True
        await deliver(r, again)
        # A customer with exactly one won order → a repeat-sale call 14 days later.
        await r.until(msk(2025, 7, 15, 9, 59))
        assert await r.tasks(template="repeat_sale") == []
        await r.until(msk(2025, 7, 15, 10, 0))
        await r.until(msk(2025, 9, 30, 10, 0))
        [call] = await r.tasks(template="repeat_sale")
        assert (call["entity_id"], call["title"]) == (
            once["_id"],
            "Повторная продажа: позвонить Green Shop",
        )
        gone = await r.store["timers"].find_one(
            {"rule_id": "repeat-sale", "entity_id": twice["_id"]}
        )
        assert gone is not None
        assert (gone["state"], gone["end_reason"]) == ("cancelled", "its condition no longer holds")
