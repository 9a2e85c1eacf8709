"""The kitchen shop's "tomorrow our master comes" SMS (config/examples/kitchen_shop): the
day before the assembly the manager gets the control call; closing it (the customer is
ready) queues exactly one SMS with the date, the time and the master's contacts, and the
service's outbox sends it to the SMS.ru fake once."""

from __future__ import annotations

from typing import Any

import pytest

from config.models import ChannelAccount
from crm_store import sms_contacts
from tests.automation_support import Robots, msk, robots, seed_config
from tests.fakes.sms import FakeSmsRu
from tests.helpers import wait_for
from tests.service import config_with

API_ID = "5B1F0E2A-1111-2222-3333-444455556666"


@pytest.fixture(autouse=True)
def sms_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNIROUTE_SMSRU_API_ID", API_ID)
    monkeypatch.setenv("OMNIROUTE_SECRET_SMS_CALLBACK", "cb-token-0123456789abcdef")


def kitchen_config(base: str) -> Any:
    cfg = seed_config("kitchen_shop")
    shipped = cfg.account("sms", "sms")
    assert shipped is not None, "the kitchen shop ships an SMS account"
    settings = {**shipped.settings, "base_url": base, "timeout_s": 5}
    return config_with(ChannelAccount(**{**shipped.model_dump(), "settings": settings}), base=cfg)


async def to_scheduled(r: Robots, phone: str) -> str:
    """A kitchen deal paid in full with its assembly on Friday 2025-06-20 at 10:00."""
    deal = await r.lead_from("k-sms-1", phone, name="Ольга")
    await r.run()
    await r.set("deal", deal["_id"], prepayment_amount=90000, desired_date="2025-06-20")
    await r.move("deal", deal["_id"], "prepayment")
    await r.set("deal", deal["_id"], ready_date="2025-06-16")
    await r.move("deal", deal["_id"], "production")
    await r.move("deal", deal["_id"], "ready")
    await r.set("deal", deal["_id"], paid_in_full=True)
    await r.move("deal", deal["_id"], "paid")
    await r.set(
        "deal",
        deal["_id"],
        installation_date="2025-06-20",
        installation_time="10:00",
        master="Игорь",
        master_phone="+79160000001",
        address="Москва, Лесная 5",
    )
    await r.move("deal", deal["_id"], "scheduled")
    await r.run()
    return str(deal["_id"])


async def customer_ready(r: Robots) -> None:
    """The day before, at 10:00, the control call; the manager closes it."""
    await r.until(msk(2025, 6, 19, 10, 0))
    [call] = await r.tasks(template="control_call", status="open")
    await r.api("POST", f"/api/v1/tasks/{call['_id']}/complete", call["assignee_id"])
    await r.run()


async def sms_out(r: Robots) -> list[dict[str, Any]]:
    return [m for m in await r.outbound() if m["channel"] == "sms"]


async def test_crew_tomorrow_sms_once_the_day_before(mongo_uri: str, db_name: str) -> None:
    async with FakeSmsRu(api_id=API_ID, senders=("KuhniPro",)) as fake:
        cfg = kitchen_config(fake.base)
        async with robots(mongo_uri, db_name, config=cfg, start=msk(2025, 6, 2, 10, 0)) as r:
            deal = await to_scheduled(r, "+79001240077")
            await r.until(msk(2025, 6, 19, 9, 59))
            assert await sms_out(r) == []
            await customer_ready(r)
            [sms] = await sms_out(r)
            assert sms["text"] == (
                "Ольга, завтра, 2025-06-20 в 10:00, к вам приедет мастер Игорь "
                "(тел. +79160000001) для сборки кухни. Кухни Про"
            )
            assert (sms["recipient"], sms["automatic"]) == ("+79001240077", True)
            assert sms["sms"]["encoding"] == "ucs2"
            assert sms["sms"]["segments"] == 2
            conv = await r.store.conversations.find_one({"_id": sms["conversation_id"]})
            assert conv is not None
            assert (conv["channel"], conv["target"]["id"]) == ("sms", deal)

            async def sent() -> bool:
                assert r.svc.service.outbox is not None
                r.svc.service.outbox.wake.set()
                doc = await r.store.messages.find_one({"_id": sms["_id"]})
                return doc is not None and doc["state"] == "sent"

            await wait_for(sent, timeout=20, interval=0.1)
            # Later drains (a re-run, the next day) never text again.
            await r.until(msk(2025, 6, 19, 18, 0))
            await r.until(msk(2025, 6, 20, 12, 0))
            assert len(await sms_out(r)) == 1
            [texted] = fake.texts
            assert (texted.phone, texted.sender) == ("79001240077", "KuhniPro")


async def test_opted_out_customer_gets_no_sms(mongo_uri: str, db_name: str) -> None:
    async with FakeSmsRu(api_id=API_ID, senders=("KuhniPro",)) as fake:
        cfg = kitchen_config(fake.base)
        async with robots(mongo_uri, db_name, config=cfg, start=msk(2025, 6, 2, 10, 0)) as r:
            deal = await to_scheduled(r, "+79001240078")
            doc = await r.get("deal", deal)
            await sms_contacts.set_opt_out(r.store, doc["contact_id"], True, reason="by phone")
            await customer_ready(r)
            assert await sms_out(r) == []
            [failed] = [
                e for e in await r.events("automation.failed") if e["data"]["action"] == "send_sms"
            ]
            assert failed["data"]["code"] == "sms_opted_out"
            assert "by phone" in failed["data"]["error"]
            assert fake.requests == []
