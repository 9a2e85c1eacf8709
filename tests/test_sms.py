"""The SMS channel against local fakes of SMS.ru and SMSC.ru (tests/fakes/sms.py).

A customer arrives through the site form (a contact with a phone), an SMS is queued to
them the way automation queues it, the service's own outbox sends it over HTTP to the
fake, and the gateway's callbacks come back over HTTP into the running app.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from channels.base import DeliveryState, WebhookRequest
from channels.sms import SmsChannel
from channels.sms_segments import segments
from config.models import ChannelAccount
from crm_store import outbox, sms_contacts, tokens
from inbox.views import MessageView
from ingest.sms_status import poll_account
from tests.fakes.sms import FakeSmsc, FakeSmsRu
from tests.helpers import wait_for
from tests.mutations import mutations
from tests.service import InProcess, api_body, config_with, in_process

API_ID = "7C1B0C3E-8D9A-2F41-B5E6-0A1B2C3D4E5F"
SMSC_LOGIN, SMSC_PSW = "kitchen", "s3cret-psw"
TOKEN = "cb-4f1d0b7e9a2c46d8b3e5f7a9c1d3e5f7"
PHONE = "+79255070602"
SMS = SmsChannel()


@pytest.fixture(autouse=True)
def sms_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNIROUTE_TEST_SMSRU_API_ID", API_ID)
    monkeypatch.setenv("OMNIROUTE_TEST_SMSC_LOGIN", SMSC_LOGIN)
    monkeypatch.setenv("OMNIROUTE_TEST_SMSC_PSW", SMSC_PSW)
    monkeypatch.setenv("OMNIROUTE_TEST_SMS_TOKEN", TOKEN)


def account(provider: str, base: str, **extra: str | int | bool) -> ChannelAccount:
    settings: dict[str, str | int | float | bool] = {
        "provider": provider,
        "base_url": base,
        "sender": "KuhniPro",
        "timeout_s": 5,
        "retry_after_s": 0,
    }
    if provider == "smsru":
        settings["api_id_env"] = "OMNIROUTE_TEST_SMSRU_API_ID"
    else:
        settings.update(
            login_env="OMNIROUTE_TEST_SMSC_LOGIN", password_env="OMNIROUTE_TEST_SMSC_PSW"
        )
    settings.update(extra)
    return ChannelAccount(
        channel="sms",
        account=provider,
        source="site",
        secret_env="OMNIROUTE_TEST_SMS_TOKEN",
        settings=settings,
    )


@asynccontextmanager
async def running(
    mongo_uri: str, db_name: str, provider: str = "smsru", **extra: str | int | bool
) -> AsyncIterator[tuple[InProcess, Any]]:
    fake: FakeSmsRu | FakeSmsc = (
        FakeSmsRu(api_id=API_ID, senders=("KuhniPro",))
        if provider == "smsru"
        else FakeSmsc(login=SMSC_LOGIN, password=SMSC_PSW)
    )
    async with fake:
        cfg = config_with(account(provider, fake.base, **extra))
        async with in_process(mongo_uri, db_name, config=cfg) as svc:
            yield svc, fake


async def customer(svc: InProcess, phone: str = "8 (925) 507-06-02") -> str:
    status, _ = await svc.client.post_api(api_body("form-1", phone=phone, name="Ирина"))
    assert status == 200
    await svc.routed()
    contact = await svc.store.contacts.find_one({})
    assert contact is not None
    return str(contact["_id"])


async def text(
    svc: InProcess, contact_id: str, body: str, provider: str = "smsru", mid: str = "m1"
) -> dict[str, Any]:
    conv = await sms_contacts.sms_conversation(svc.store, provider, contact_id, PHONE)
    return await outbox.queue(svc.store, conv, text=body, message_id=mid, automatic=True)


async def settled(svc: InProcess, mid: str, *states: str) -> dict[str, Any]:
    assert svc.service.outbox is not None
    box = svc.service.outbox

    async def done() -> dict[str, Any] | None:
        box.wake.set()
        doc: dict[str, Any] | None = await svc.store.messages.find_one({"_id": mid})
        return doc if doc is not None and doc["state"] in states else None

    await wait_for(done, timeout=20, interval=0.1, message=f"message not {states}")
    doc = await done()
    assert doc is not None
    return doc


def hook(svc: InProcess, provider: str, token: str = TOKEN) -> str:
    return f"{svc.client.base}/webhooks/sms/{provider}/{token}"


# --- segments ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "encoding", "count"),
    [
        ("a" * 160, "gsm7", 1),
        ("a" * 161, "gsm7", 2),
        ("a" * 306, "gsm7", 2),
        ("a" * 307, "gsm7", 3),
        ("{" * 80, "gsm7", 1),  # extension characters count double
        ("{" + "a" * 159, "gsm7", 2),
        ("Ёж" * 35, "ucs2", 1),
        ("я" * 71, "ucs2", 2),
        ("я" * 134, "ucs2", 2),
        ("я" * 135, "ucs2", 3),
        ("Hi 😀" + "a" * 65, "ucs2", 1),  # an emoji is two UTF-16 units
        ("Hi 😀" + "a" * 66, "ucs2", 2),
    ],
)
def test_segments(body: str, encoding: str, count: int) -> None:
    seg = segments(body)
    assert (seg.encoding, seg.count) == (encoding, count)


# --- SMS.ru -----------------------------------------------------------------------------


async def test_smsru_exact_request_segments_and_callbacks(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        contact = await customer(svc)
        body = "Завтра с 10:00 до 12:00 приедет бригада сборщиков. Кухни Про"
        await text(svc, contact, body)
        doc = await settled(svc, "m1", "sent")
        [req] = fake.sends()
        assert (req.method, req.path) == ("POST", "/sms/send")
        assert req.form == {
            "api_id": API_ID,
            "to": "79255070602",
            "msg": body,
            "json": "1",
            "from": "KuhniPro",
        }
        assert doc["provider_id"] == fake.texts[0].id
        assert doc["sms"] == {"segments": 1, "encoding": "ucs2", "units": len(body)}
        assert MessageView.of(doc).sms == doc["sms"]

        # The gateway's callback over HTTP: other record types skipped, "100" answered.
        status, answer = await fake.callback(
            svc.client.http, hook(svc, "smsru"), [(doc["provider_id"], 102, None)]
        )
        assert (status, answer) == (200, "100")
        status, answer = await fake.callback(
            svc.client.http, hook(svc, "smsru"), [(doc["provider_id"], 103, 1796638500)]
        )
        assert (status, answer) == (200, "100")
        # Late and repeated receipts never move it back.
        await fake.callback(svc.client.http, hook(svc, "smsru"), [(doc["provider_id"], 102, None)])
        final = await svc.store.messages.find_one({"_id": "m1"})
        assert final is not None
        assert final["state"] == "delivered"
        assert [h["state"] for h in final["state_history"]] == ["queued", "sent", "delivered"]

        # A wrong or missing token: refused, nothing changes.
        status, _ = await fake.callback(
            svc.client.http, hook(svc, "smsru", "wrong"), [(doc["provider_id"], 104, None)]
        )
        assert status == 401
        async with svc.client.http.post(
            f"{svc.client.base}/webhooks/sms/smsru", data="data[0]=x"
        ) as resp:
            assert resp.status == 401


async def test_smsru_failed_delivery_keeps_the_reason(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        contact = await customer(svc)
        await text(svc, contact, "Hello")
        doc = await settled(svc, "m1", "sent")
        assert doc["sms"] == {"segments": 1, "encoding": "gsm7", "units": 5}
        await fake.callback(svc.client.http, hook(svc, "smsru"), [(doc["provider_id"], 106, None)])
        # A status the webhook stored is applied to its message asynchronously.
        failed = await settled(svc, "m1", "failed", "delivered")
        assert (failed["state"], failed.get("error")) == (
            "failed",
            "SMS.ru: phone failure (status 106)",
        )


@pytest.mark.parametrize(
    ("code", "error_code"),
    [(207, "smsru_207"), (202, "smsru_202"), (230, "smsru_230"), (300, "smsru_300")],
)
async def test_smsru_permanent_errors_fail_at_once(
    mongo_uri: str, db_name: str, code: int, error_code: str
) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        contact = await customer(svc)
        fake.fail_next(code=code, text="отказ")
        await text(svc, contact, "Hello")
        doc = await settled(svc, "m1", "failed")
        assert doc["error_code"] == error_code
        assert f"(code {code})" in doc["error"]
        assert len(fake.sends()) == 1
        assert fake.texts == []


async def test_smsru_bad_api_id_and_sender(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name, sender="Unapproved") as (svc, fake):
        contact = await customer(svc)
        await text(svc, contact, "Hello")
        doc = await settled(svc, "m1", "failed")
        assert doc["error_code"] == "smsru_204"
        fake.api_id = "another"
        await text(svc, contact, "Hello again", mid="m2")
        doc = await settled(svc, "m2", "failed")
        assert doc["error_code"] == "smsru_200"


async def test_smsru_retryable_errors_are_retried(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        contact = await customer(svc)
        fake.fail_next(code=220, text="Сервис временно недоступен")
        fake.fail_next(http_status=500)
        await text(svc, contact, "Hello")
        doc = await settled(svc, "m1", "sent")
        assert len(fake.sends()) == 3
        assert len(fake.texts) == 1
        assert doc["attempts"] == 3


async def test_smsru_lost_answer_is_unknown_never_resent(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        contact = await customer(svc)
        fake.fail_next(cut=True)
        await text(svc, contact, "Hello")
        doc = await settled(svc, "m1", "unknown")
        assert doc["error_code"] == "sms_outcome_unknown"
        assert "provider_id" not in doc
        assert "send_due_at" not in doc
        # The outbox keeps working and never picks it up again.
        await text(svc, contact, "Second", mid="m2")
        await settled(svc, "m2", "sent")
        assert [t.text for t in fake.texts] == ["Hello", "Second"]
        event = await svc.store.events.find_one(
            {"type": "message.delivery_changed", "refs.message_id": "m1"}
        )
        assert event is not None
        assert event["data"]["state"] == "unknown"


async def test_interrupted_send_is_unknown_not_resent(mongo_uri: str, db_name: str) -> None:
    """A process died between starting the send and the gateway's answer: the message is
    claimed again after its lease, found started, and marked unknown."""
    async with running(mongo_uri, db_name) as (svc, fake):
        contact = await customer(svc)
        conv = await sms_contacts.sms_conversation(svc.store, "smsru", contact, PHONE)
        box = svc.service.outbox
        assert box is not None
        await box.stop()  # a queued message wakes the sender at once: hold it meanwhile
        doc = await outbox.queue(svc.store, conv, text="Hello", message_id="m1")
        await svc.store.messages.update_one(
            {"_id": doc["_id"]}, {"$set": {"send_started_at": doc["received_at"]}}
        )
        await box.start()
        done = await settled(svc, "m1", "unknown")
        assert done["error_code"] == "send_interrupted"
        assert fake.sends() == []


async def test_opted_out_contact_is_never_texted(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        contact = await customer(svc)
        assert await sms_contacts.set_opt_out(svc.store, contact, True, reason="STOP")
        await text(svc, contact, "Hello")
        doc = await settled(svc, "m1", "failed")
        assert (doc["error_code"], doc["error"]) == ("sms_opted_out", "opted out of SMS: STOP")
        assert fake.requests == []
        assert await sms_contacts.set_opt_out(svc.store, contact, False)
        await text(svc, contact, "Hello", mid="m2")
        await settled(svc, "m2", "sent")


async def test_operator_records_an_opt_out_through_the_api(mongo_uri: str, db_name: str) -> None:
    """PATCH /api/v1/contacts/{id} sms_opt_out: the contact shows it, the next SMS is refused
    without a gateway call; lifting it lets SMS through again."""
    async with running(mongo_uri, db_name) as (svc, fake):
        contact = await customer(svc)
        token, _ = await tokens.issue(svc.store, "ivan.petrov")
        headers = {"Authorization": f"Bearer {token}"}
        url = f"{svc.client.base}/api/v1/contacts/{contact}"

        async def patch(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            async with svc.client.http.patch(url, json=body, headers=headers) as resp:
                return resp.status, await resp.json()

        status, view = await patch({"sms_opt_out": True, "sms_opt_out_reason": "asked by phone"})
        assert status == 200, view
        assert (view["sms_opt_out"]["reason"], view["sms_opt_out"]["by"]) == (
            "asked by phone",
            "ivan.petrov",
        )
        await text(svc, contact, "Hello")
        doc = await settled(svc, "m1", "failed")
        assert doc["error"] == "opted out of SMS: asked by phone"
        assert fake.requests == []
        status, bad = await patch({"sms_opt_out": "maybe"})
        assert status == 422, bad
        status, view = await patch({"sms_opt_out": False})
        assert (status, view["sms_opt_out"]) == (200, None)
        await text(svc, contact, "Hello", mid="m2")
        await settled(svc, "m2", "sent")


async def test_smsru_polling(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        contact = await customer(svc)
        await text(svc, contact, "One")
        await text(svc, contact, "Two", mid="m2")
        one = await settled(svc, "m1", "sent")
        two = await settled(svc, "m2", "sent")
        fake.statuses[one["provider_id"]] = 103
        fake.statuses[two["provider_id"]] = 150
        acct = svc.service.config.account("sms", "smsru")
        assert acct is not None
        assert await poll_account(svc.store, acct) == 2
        got = {d["_id"]: d async for d in svc.store.messages.find({"channel": "sms"})}
        assert got["m1"]["state"] == "delivered"
        assert (got["m2"]["state"], got["m2"]["error"]) == (
            "failed",
            "SMS.ru: no route to the number (status 150)",
        )
        [poll] = [r for r in fake.requests if r.path == "/sms/status"]
        assert (poll.query["api_id"], poll.query["json"]) == (API_ID, "1")
        # One request for both (the outbox may have sent them in either order).
        assert sorted(poll.query["sms_id"].split(",")) == sorted(
            [one["provider_id"], two["provider_id"]]
        )
        assert len(poll.query) == 3
        # Settled messages are not asked for again.
        assert await poll_account(svc.store, acct) == 0


# --- SMSC.ru ----------------------------------------------------------------------------


async def test_smsc_exact_request_and_callback(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name, "smsc") as (svc, fake):
        contact = await customer(svc)
        body = "Price: 120 EUR {incl. VAT} ~ ok"
        await text(svc, contact, body, provider="smsc")
        doc = await settled(svc, "m1", "sent")
        [req] = fake.sends()
        assert req.form == {
            "login": SMSC_LOGIN,
            "psw": SMSC_PSW,
            "phones": "79255070602",
            "mes": body,
            "id": "m1",
            "charset": "utf-8",
            "fmt": "3",
            "sender": "KuhniPro",
        }
        assert doc["provider_id"] == "m1"
        assert doc["sms"] == {"segments": 1, "encoding": "gsm7", "units": len(body) + 3}
        status, answer = await fake.callback(
            svc.client.http,
            hook(svc, "smsc") + "?charset=utf-8&fmt=3",
            {"id": "m1", "phone": "79255070602", "status": "1", "time": "1796638500"},
        )
        assert (status, answer) == (200, "OK")
        final = await svc.store.messages.find_one({"_id": "m1"})
        assert final is not None
        assert final["state"] == "delivered"
        # An incoming SMS reaches the same URL: acknowledged, nothing changes.
        status, _ = await fake.callback(
            svc.client.http, hook(svc, "smsc"), {"phone": "79255070602", "mes": "СТОП"}
        )
        assert status == 200


@pytest.mark.parametrize(("code", "final"), [(7, "failed"), (3, "failed"), (9, "sent")])
async def test_smsc_errors(mongo_uri: str, db_name: str, code: int, final: str) -> None:
    async with running(mongo_uri, db_name, "smsc") as (svc, fake):
        contact = await customer(svc)
        fake.fail_next(code=code, text="error")
        await text(svc, contact, "Hello", provider="smsc")
        doc = await settled(svc, "m1", final)
        if final == "failed":
            assert doc["error_code"] == f"smsc_{code}"
            assert len(fake.sends()) == 1
        else:  # 9: retried after the wait (0 s here), sent once
            assert len(fake.sends()) == 2
            assert len(fake.texts) == 1


async def test_smsc_lost_answer_is_reconciled_by_our_id(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name, "smsc") as (svc, fake):
        contact = await customer(svc)
        fake.fail_next(cut=True)
        await text(svc, contact, "Hello", provider="smsc")
        doc = await settled(svc, "m1", "sent")
        assert doc["provider_id"] == "m1"
        assert len(fake.texts) == 1  # asked, found, not sent again
        [check] = [r for r in fake.requests if r.path == "/sys/status.php"]
        assert (check.query["id"], check.query["phone"]) == ("m1", "79255070602")


async def test_smsc_gateway_down_is_retried(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name, "smsc") as (svc, fake):
        contact = await customer(svc)
        fake.fail_next(http_status=502)
        await text(svc, contact, "Hello", provider="smsc")
        await settled(svc, "m1", "sent")
        # 502 → asked by our id → not found → sent again, once.
        assert len(fake.texts) == 1
        assert len(fake.sends()) == 2


async def test_smsc_unknown_is_settled_by_polling(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name, "smsc") as (svc, fake):
        contact = await customer(svc)
        conv = await sms_contacts.sms_conversation(svc.store, "smsc", contact, PHONE)
        box = svc.service.outbox
        assert box is not None
        await box.stop()  # a queued message wakes the sender at once: hold it meanwhile
        doc = await outbox.queue(svc.store, conv, text="Hello", message_id="m1")
        # Sent, and then the process died before the answer.
        fake.by_client_id["m1"] = "79255070602"
        fake.statuses["m1"] = 1
        await svc.store.messages.update_one(
            {"_id": doc["_id"]}, {"$set": {"send_started_at": doc["received_at"]}}
        )
        await box.start()
        await settled(svc, "m1", "unknown")
        acct = svc.service.config.account("sms", "smsc")
        assert acct is not None
        await poll_account(svc.store, acct)
        final = await svc.store.messages.find_one({"_id": "m1"})
        assert final is not None
        assert (final["state"], final["provider_id"]) == ("delivered", "m1")
        assert fake.sends() == []


# --- refusals and readers ---------------------------------------------------------------


def test_check_outbound_refusals() -> None:
    from channels.base import OutboundMessage, SendError

    acct = account("smsru", "http://127.0.0.1:9")

    def refusal(**kw: Any) -> str:
        msg = OutboundMessage(
            id="x", channel="sms", account="smsru", **{"recipient": PHONE, "text": "hi", **kw}
        )
        with pytest.raises(SendError) as err:
            SMS.check_outbound(acct, msg)
        assert not err.value.retryable
        return err.value.code

    assert refusal(recipient="not a phone") == "sms_bad_number"
    assert refusal(recipient="+4930123456") == "sms_bad_number"  # domestic only
    assert refusal(text="я" * (67 * 8 + 1)) == "sms_too_long"
    assert refusal(text="   ") == "sms_empty"
    SMS.check_outbound(
        acct,
        OutboundMessage(
            id="x", channel="sms", account="smsru", recipient="8 925 507 06 02", text="я" * 536
        ),
    )


def test_smsc_callback_mutations_never_raise() -> None:
    acct = account("smsc", "http://127.0.0.1:9")
    example = {"id": "m1", "phone": "79255070602", "status": 1, "time": 1796638500, "err": 0}
    count = 0
    for variant in mutations(example):
        req = WebhookRequest("POST", {}, {}, variant.encode(), TOKEN)
        parsed = SMS.read(acct, req)
        assert parsed.reply == "OK"
        for status in parsed.statuses:
            assert status.state in set(DeliveryState)
        count += 1
    assert count > 20
    parsed = SMS.read(acct, WebhookRequest("POST", {}, {}, orjson.dumps(example), TOKEN))
    assert [(s.provider_id, s.state) for s in parsed.statuses] == [("m1", DeliveryState.DELIVERED)]


def test_smsru_callback_odd_records() -> None:
    acct = account("smsru", "http://127.0.0.1:9")
    bodies = [
        b"",
        b"data[0]=sms_status",
        b"data[0]=sms_status%0A%0A103",
        b"data[0]=sms_status%0Aabc%0Anot-a-number",
        b"data[0]=sms_status%0A000-1%0A103%0A99999999999999999999",
        b"data[]=sms_status%0A000-2%0A103",
        b"\xff\xfe=\xff",
        b"data[0]=" + b"x" * 100_000,
    ]
    got = [
        [
            (s.provider_id, s.state)
            for s in SMS.read(acct, WebhookRequest("POST", {}, {}, b, TOKEN)).statuses
        ]
        for b in bodies
    ]
    assert got == [
        [],
        [],
        [],
        [],
        [("000-1", DeliveryState.DELIVERED)],
        [("000-2", DeliveryState.DELIVERED)],
        [],
        [],
    ]


async def test_odd_callbacks_over_http_never_5xx(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name, "smsc") as (svc, _fake):
        for variant in list(mutations({"id": "m1", "status": 1, "err": 0}))[::5]:
            async with svc.client.http.post(
                hook(svc, "smsc"),
                data=variant.encode(),
                headers={"Content-Type": "application/json"},
            ) as resp:
                assert resp.status < 500, variant


def test_check_config_reports_sms_settings(tmp_path: Path) -> None:
    from config.loader import check_config
    from tests.automation_support import copy_seed

    target = copy_seed("kitchen_shop", tmp_path / "kitchen")
    channels = target / "channels.yaml"
    text = channels.read_text()
    assert "provider: smsru" in text
    channels.write_text(
        text.replace("provider: smsru", "provider: smsc").replace(
            "sender: KuhniPro", "sender: KuhniProMoscow"
        )
    )
    problems = [(p.file, p.message) for p in check_config(target)]
    assert ("channels.yaml", "a sender name is 1 to 11 characters") in problems
    assert (
        "channels.yaml",
        "SMSC.ru needs 'login_env' and 'password_env' (or 'apikey_env')",
    ) in problems
    channels.write_text(text.replace("provider: smsru", "provider: twilio"))
    [problem] = [p for p in check_config(target) if p.file == "channels.yaml"]
    assert problem.message == "must be one of smsru, smsc, gateway, not 'twilio'"
