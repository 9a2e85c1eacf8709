"""MegaFon Virtual PBX end to end: CRM notifications over HTTP into the running service,
the ring-path "who is calling" lookup, and click-to-call to a local fake of the PBX API."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from config.models import ChannelAccount
from crm_store.stages import move_stage
from tests.calls_support import (
    bearer,
    call_events_match_the_catalogue,
    call_of,
    converged,
    events_of,
    known_contact,
    message_of,
    nothing_stored,
    one,
)
from tests.fakes.megafon import FakeMegaFon
from tests.service import InProcess, config_with, in_process

CRM_TOKEN = "b1946ac92492d2347c6235b4d2611184"
API_TOKEN = "pbx-api-key-6f1ed002ab5595859014ebf0951522d9"
CRM_ENV = "OMNIROUTE_TEST_MEGAFON_CRM_TOKEN"
API_ENV = "OMNIROUTE_TEST_MEGAFON_API_TOKEN"
ACCOUNT = "office"
CUSTOMER = "+79001234567"
DID = "74951234567"
RECORDING = "https://mebel-lux.megapbx.ru/records/20241120/101500-101.mp3"
LOGINS = {"anna.smirnova": "smirnova", "ivan.petrov": "petrov", "dmitry.kozlov": "kozlov"}


@pytest.fixture(autouse=True)
def megafon_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CRM_ENV, CRM_TOKEN)
    monkeypatch.setenv(API_ENV, API_TOKEN)


def megafon_account(api_url: str) -> ChannelAccount:
    settings: dict[str, str | int | float | bool] = {
        "api_url": api_url,
        "api_token_env": API_ENV,
        "timeout_s": 5,
    }
    settings.update({f"login.{user}": login for user, login in LOGINS.items()})
    return ChannelAccount(
        channel="megafon", account=ACCOUNT, source="phone", secret_env=CRM_ENV, settings=settings
    )


@asynccontextmanager
async def running(mongo_uri: str, db_name: str) -> AsyncIterator[tuple[InProcess, FakeMegaFon]]:
    fake = FakeMegaFon(CRM_TOKEN, API_TOKEN, users=set(LOGINS.values()))
    async with (
        fake,
        in_process(mongo_uri, db_name, config=config_with(megafon_account(fake.api_url))) as svc,
    ):
        yield svc, fake


def hook(svc: InProcess) -> str:
    return f"{svc.client.base}/webhooks/megafon/{ACCOUNT}"


def event(kind: str, callid: str, user: str = "smirnova", **extra: str) -> dict[str, str]:
    fields = {
        "type": kind,
        "phone": extra.pop("phone", CUSTOMER.lstrip("+")),
        "diversion": DID,
        "user": user,
        "ext": "101" if user == "smirnova" else "102",
        "groupRealName": "Продажи",
        "telnum": "74950000101",
        "callid": callid,
    }
    if kind in ("INCOMING", "OUTGOING"):
        fields["direction"] = "in" if kind == "INCOMING" else "out"
    fields.update(extra)
    return fields


def history(callid: str, status: str = "Success", kind: str = "in", **extra: str) -> dict[str, str]:
    fields = {
        "type": kind,
        "status": status,
        "phone": extra.pop("phone", CUSTOMER.lstrip("+")),
        "user": extra.pop("user", "smirnova"),
        "ext": "101",
        "groupRealName": "Продажи",
        "diversion": DID,
        "start": "20241120T101500Z",
        "duration": "0" if status != "Success" else "95",
        "callid": callid,
    }
    if status == "Success":
        fields["link"] = RECORDING
    fields.update(extra)
    return fields


async def send(svc: InProcess, fake: FakeMegaFon, cmd: str, fields: dict[str, str]) -> None:
    status, body = await fake.webhook(hook(svc), cmd, **fields)
    assert status == 200, body


async def lifecycle(
    svc: InProcess, fake: FakeMegaFon, steps: list[tuple[str, dict[str, str]]]
) -> None:
    for cmd, fields in steps:
        await send(svc, fake, cmd, fields)
    await svc.routed()


def answered(callid: str) -> list[tuple[str, dict[str, str]]]:
    return [
        ("event", event("INCOMING", callid)),
        ("event", event("ACCEPTED", callid)),
        ("event", event("COMPLETED", callid)),
        ("history", history(callid)),
    ]


def missed(callid: str, phone: str = CUSTOMER.lstrip("+")) -> list[tuple[str, dict[str, str]]]:
    return [
        ("event", event("INCOMING", callid, phone=phone)),
        ("event", event("INCOMING", callid, user="kozlov", phone=phone)),
        ("event", event("CANCELLED", callid, phone=phone)),
        ("event", event("CANCELLED", callid, user="kozlov", phone=phone)),
        ("history", history(callid, "Missed", phone=phone, user="kozlov")),
    ]


# --- lifecycles ----------------------------------------------------------------------------


async def test_answered_call_from_unknown_number_creates_a_lead(
    mongo_uri: str, db_name: str
) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        await lifecycle(svc, fake, answered("c-100"))
        call = await call_of(svc, "megafon", ACCOUNT, "c-100")
        assert (call.direction, call.status, call.disposition) == ("in", "ended", "answered")
        assert (call.customer, call.line, call.agent) == (CUSTOMER, "+" + DID, "smirnova")
        assert call.answered_by == ["smirnova"]
        assert call.duration_s == 95
        assert call.started_at == datetime(2024, 11, 20, 10, 15, tzinfo=UTC)
        assert call.recording_url == RECORDING
        assert not call.was_transferred
        msg = await message_of(svc, call)
        assert (msg["text"], msg["provider_id"], msg["automatic"]) == (
            "Incoming call",
            "call:c-100",
            False,
        )
        assert msg["decision"]["rule"] == "new_lead"
        assert msg["meta"] == {
            "kind": "call",
            "call_direction": "in",
            "call_id": "c-100",
            "call_line": "+" + DID,
        }
        lead = await one(svc.store.leads, {})
        assert lead["identities"] == [f"phone:{CUSTOMER}"]
        assert (lead["source_id"], lead["pipeline_id"]) == ("phone", "leads")
        assert msg["target"]["id"] == lead["_id"]
        # One message, one lead, however many reports the call had.
        assert await svc.store.intake.count_documents({}) == 1
        [started] = await events_of(svc, "call.started")
        [ended] = await events_of(svc, "call.ended")
        assert started["refs"]["call_id"] == call.id
        assert started["data"]["direction"] == "in"
        assert ended["data"]["disposition"] == "answered"
        assert ended["data"]["duration_s"] == 95
        assert ended["refs"]["message_id"] == call.message_id
        assert await events_of(svc, "call.missed") == []


async def test_missed_call_from_unknown_number_creates_a_lead_too(
    mongo_uri: str, db_name: str
) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        # Only the history reaches us: the message says what happened.
        await lifecycle(svc, fake, [("history", history("c-101", "Missed"))])
        call = await call_of(svc, "megafon", ACCOUNT, "c-101")
        assert (call.status, call.disposition, call.hangup_cause) == ("ended", "missed", "Missed")
        assert call.answered_by == []
        msg = await message_of(svc, call)
        assert (msg["text"], msg["decision"]["rule"]) == ("Missed call", "new_lead")
        assert await svc.store.leads.count_documents({}) == 1
        # An unknown caller's missed call is a new lead, not a call-back of a contact.
        assert await events_of(svc, "call.missed") == []
        [ended] = await events_of(svc, "call.ended")
        assert ended["data"]["disposition"] == "missed"
        # Also when the call's own lead (and contact) exist before its history arrives.
        other = "79005550000"
        steps = missed("c-103", phone=other)
        await lifecycle(svc, fake, steps[:1])
        assert await svc.store.contacts.count_documents({"identities": f"phone:+{other}"}) == 1
        await lifecycle(svc, fake, steps[1:])
        assert (await call_of(svc, "megafon", ACCOUNT, "c-103")).disposition == "missed"
        assert await events_of(svc, "call.missed") == []
        assert len(await events_of(svc, "call.ended")) == 2


async def test_missed_call_from_a_known_contact_asks_for_a_call_back(
    mongo_uri: str, db_name: str
) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        lead = await known_contact(svc, "8 (900) 123-45-67")
        await lifecycle(svc, fake, missed("c-102"))
        call = await call_of(svc, "megafon", ACCOUNT, "c-102")
        assert (call.disposition, call.agent) == ("missed", "kozlov")
        msg = await message_of(svc, call)
        assert msg["decision"]["rule"] == "open_lead"
        assert msg["target"]["id"] == lead["_id"]
        assert await svc.store.leads.count_documents({}) == 1
        [back] = await events_of(svc, "call.missed")
        assert back["refs"] == {
            "call_id": call.id,
            "message_id": call.message_id,
            "contact_id": lead["contact_id"],
            "lead_id": lead["_id"],
        }
        assert back["data"]["phone"] == CUSTOMER
        assert back["data"]["responsible_id"] == lead["responsible_id"]
        assert back["data"]["disposition"] == "missed"
        assert await call_events_match_the_catalogue(svc) == 3


async def test_a_caller_known_from_an_earlier_call(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        await lifecycle(svc, fake, answered("c-110"))
        first = await one(svc.store.leads, {})
        await lifecycle(svc, fake, missed("c-111"))
        second = await call_of(svc, "megafon", ACCOUNT, "c-111")
        msg = await message_of(svc, second)
        assert (msg["decision"]["rule"], msg["target"]["id"]) == ("conversation", first["_id"])
        [back] = await events_of(svc, "call.missed")
        assert back["refs"]["lead_id"] == first["_id"]
        # Who is calling: the contact that the first call made.
        status, body = await fake.webhook(hook(svc), "contact", phone=CUSTOMER, callid="c-112")
        assert status == 200
        assert orjson.loads(body) == {"responsible": LOGINS[first["responsible_id"]]}


async def test_transferred_call(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        steps = [
            ("event", event("INCOMING", "c-120")),
            ("event", event("ACCEPTED", "c-120")),
            ("event", event("TRANSFERRED", "c-120")),
            ("event", event("INCOMING", "c-120", user="petrov")),
            ("event", event("ACCEPTED", "c-120", user="petrov")),
            ("event", event("COMPLETED", "c-120", user="smirnova")),
            ("event", event("COMPLETED", "c-120", user="petrov")),
            ("history", history("c-120", user="petrov")),
        ]
        await lifecycle(svc, fake, steps)
        call = await call_of(svc, "megafon", ACCOUNT, "c-120")
        assert call.answered_by == ["petrov", "smirnova"]
        assert (call.agent, call.transferred, call.disposition) == ("petrov", True, "answered")
        [ended] = await events_of(svc, "call.ended")
        assert (ended["data"]["transferred"], ended["data"]["agent"]) == (True, "petrov")


async def test_group_call_rings_several_and_one_answers(mongo_uri: str, db_name: str) -> None:
    """A CANCELLED for the employees who did not pick up does not end the call."""
    async with running(mongo_uri, db_name) as (svc, fake):
        for cmd, fields in [
            ("event", event("INCOMING", "c-130")),
            ("event", event("INCOMING", "c-130", user="kozlov")),
            ("event", event("ACCEPTED", "c-130", user="kozlov")),
            ("event", event("CANCELLED", "c-130", user="smirnova")),
        ]:
            await send(svc, fake, cmd, fields)
        call = await call_of(svc, "megafon", ACCOUNT, "c-130")
        assert (call.status, call.disposition, call.agent) == ("answered", "answered", "kozlov")
        assert await events_of(svc, "call.ended") == []


# --- repeats and out-of-order ---------------------------------------------------------------


async def test_repeated_and_out_of_order_reports_converge(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        await lifecycle(svc, fake, answered("c-140"))
        reference = converged(await call_of(svc, "megafon", ACCOUNT, "c-140"))
        rng = random.Random(5)
        for n in range(3):
            callid = f"c-14{n + 1}"
            steps = answered(callid) * 2
            rng.shuffle(steps)
            await lifecycle(svc, fake, steps)
            assert converged(await call_of(svc, "megafon", ACCOUNT, callid)) == reference
        # history first, then the live events: still one message per call, the same call.
        steps = list(reversed(answered("c-149")))
        await lifecycle(svc, fake, steps)
        assert converged(await call_of(svc, "megafon", ACCOUNT, "c-149")) == reference
        assert await svc.store["calls"].count_documents({}) == 5
        assert await svc.store.intake.count_documents({}) == 5
        assert await svc.store.messages.count_documents({}) == 5
        assert len(await events_of(svc, "call.ended")) == 5
        # Every call after the first is the same number's: the first lead takes them all.
        assert await svc.store.leads.count_documents({}) == 1


# --- phone formats -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "written",
    ["89001234567", "+79001234567", "79001234567", "8 (900) 123-45-67", "+7 900 123 45 67"],
)
async def test_phone_variants_reach_the_same_contact(
    mongo_uri: str, db_name: str, written: str
) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        lead = await known_contact(svc, "+7 (900) 123-45-67", name="Иван")
        status, body = await fake.webhook(hook(svc), "contact", phone=written, callid="c-150")
        assert status == 200
        assert orjson.loads(body) == {
            "contact_name": "Иван",
            "responsible": LOGINS[lead["responsible_id"]],
        }
        await lifecycle(svc, fake, missed("c-151", phone=written))
        call = await call_of(svc, "megafon", ACCOUNT, "c-151")
        assert call.customer == CUSTOMER
        msg = await message_of(svc, call)
        assert (msg["contact_id"], msg["target"]["id"]) == (lead["contact_id"], lead["_id"])
        assert await svc.store.contacts.count_documents({}) == 1
        assert await svc.store.leads.count_documents({}) == 1


# --- outbound --------------------------------------------------------------------------------


def outbound(callid: str, phone: str, status: str = "Success") -> list[tuple[str, dict[str, str]]]:
    return [
        ("event", event("OUTGOING", callid, phone=phone)),
        ("event", event("ACCEPTED", callid, phone=phone, direction="out")),
        ("history", history(callid, status, kind="out", phone=phone)),
    ]


async def test_outbound_calls_never_create_leads(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        # Unknown number: stored, nothing created.
        await lifecycle(svc, fake, outbound("c-160", "79007654321"))
        call = await call_of(svc, "megafon", ACCOUNT, "c-160")
        msg = await message_of(svc, call)
        assert (msg["text"], msg["automatic"], msg["decision"]["action"]) == (
            "Outgoing call",
            True,
            "store_only",
        )
        assert await svc.store.contacts.count_documents({}) == 0
        # A known contact with an open lead: attached there.
        lead = await known_contact(svc, CUSTOMER)
        await lifecycle(svc, fake, outbound("c-161", CUSTOMER.lstrip("+"), "Missed"))
        call = await call_of(svc, "megafon", ACCOUNT, "c-161")
        msg = await message_of(svc, call)
        assert (msg["decision"]["rule"], msg["target"]["id"]) == ("open_lead", lead["_id"])
        # Nothing open any more: attached to the contact, still no (repeat) lead.
        leads = svc.service.config.pipeline("leads")
        await move_stage(svc.store, "lead", lead["_id"], leads, "not_interested")
        await lifecycle(svc, fake, outbound("c-162", CUSTOMER.lstrip("+")))
        msg = await message_of(svc, await call_of(svc, "megafon", ACCOUNT, "c-162"))
        assert (msg["decision"]["action"], msg["contact_id"]) == (
            "attach_contact",
            lead["contact_id"],
        )
        assert await svc.store.leads.count_documents({}) == 1
        # Outbound calls that nobody answered are no call-backs.
        assert await events_of(svc, "call.missed") == []


# --- the ring path ---------------------------------------------------------------------------


async def test_contact_lookup_known_and_unknown(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        lead = await known_contact(svc, CUSTOMER, name="Иван Петров")
        stored = await svc.store.intake.count_documents({})
        status, body = await fake.webhook(
            hook(svc), "contact", phone=CUSTOMER.lstrip("+"), callid="c-170", diversion=DID
        )
        assert status == 200
        assert orjson.loads(body) == {
            "contact_name": "Иван Петров",
            "responsible": LOGINS[lead["responsible_id"]],
        }
        status, body = await fake.webhook(hook(svc), "contact", phone="79990001122", callid="c-171")
        assert (status, orjson.loads(body)) == (200, {})
        status, body = await fake.webhook(hook(svc), "contact", phone="anonymous", callid="c-172")
        assert (status, orjson.loads(body)) == (200, {})
        # No number: the PBX still gets its answer (an unknown caller).
        status, body = await fake.webhook(hook(svc), "contact", callid="c-173")
        assert (status, orjson.loads(body)) == (200, {})
        # The lookup stores nothing.
        assert await svc.store.intake.count_documents({}) == stored
        assert await svc.store["calls"].count_documents({}) == 0


# --- refusals ----------------------------------------------------------------------------------


async def test_bad_or_missing_crm_token_is_refused(
    mongo_uri: str, db_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        fields = history("c-180")
        wrong, body = await fake.webhook(hook(svc), "history", crm_token="nope", **fields)
        assert orjson.loads(body)["code"] == "unauthorized"
        missing, _ = await fake.webhook(hook(svc), "history", crm_token="", **fields)
        lookup, _ = await fake.webhook(hook(svc), "contact", crm_token="x", phone=CUSTOMER)
        monkeypatch.delenv(CRM_ENV)
        unset, _ = await fake.webhook(hook(svc), "history", **fields)
        assert [wrong, missing, lookup, unset] == [401] * 4
        await nothing_stored(svc)


async def test_odd_reports_keep_the_call(mongo_uri: str, db_name: str) -> None:
    """A report with the right crm_token is kept whatever its shape: an odd field is
    dropped, the call stays; only a report without a call id is kept as unparsed."""
    async with running(mongo_uri, db_name) as (svc, fake):
        # Unknown commands and event types are acknowledged and ignored.
        status, _ = await fake.webhook(hook(svc), "ping")
        assert status == 200
        status, _ = await fake.webhook(hook(svc), "event", **event("RINGBACK", "c-194"))
        assert status == 200
        await nothing_stored(svc)
        no_callid = history("c-190")
        del no_callid["callid"]
        cases: list[tuple[str, dict[str, str]]] = [
            ("history", no_callid),
            ("history", history("c-191", start="2024-11-20 10:15")),
            ("history", history("c-192", duration="long", rating=str(2**64))),
            ("rating", {"callid": "c-193", "phone": CUSTOMER}),
        ]
        for cmd, fields in cases:
            status, body = await fake.webhook(hook(svc), cmd, **fields)
            assert status == 200, (fields, body)
        assert await svc.store.intake.count_documents({"status": "unparsed"}) == 1
        bad_start = await call_of(svc, "megafon", ACCOUNT, "c-191")
        assert (bad_start.status, bad_start.customer, bad_start.started_at) == (
            "ended",
            CUSTOMER,
            None,
        )
        odd = await call_of(svc, "megafon", ACCOUNT, "c-192")
        assert (odd.status, odd.duration_s, odd.rating) == ("ended", None, None)
        assert (await call_of(svc, "megafon", ACCOUNT, "c-193")).rating is None


async def test_rating_is_kept_on_the_call(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        await lifecycle(svc, fake, answered("c-195"))
        await send(svc, fake, "rating", {"callid": "c-195", "rating": "5", "phone": CUSTOMER})
        assert (await call_of(svc, "megafon", ACCOUNT, "c-195")).rating == 5


# --- click-to-call -------------------------------------------------------------------------------


async def post_call(
    svc: InProcess, body: dict[str, Any], headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    async with svc.client.http.post(
        f"{svc.client.base}/api/v1/calls", data=orjson.dumps(body), headers=headers
    ) as resp:
        return resp.status, orjson.loads(await resp.read())


async def test_click_to_call_reaches_the_pbx(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        anna = await bearer(svc, "anna.smirnova")
        status, body = await post_call(svc, {"phone": "8 (900) 123-45-67"}, anna)
        assert status == 202, body
        assert body == {
            "channel": "megafon",
            "account": ACCOUNT,
            "user_id": "anna.smirnova",
            "login": "smirnova",
            "phone": CUSTOMER,
            "provider_call_id": "mcall-7001",
        }
        [made] = fake.calls_made()
        assert made == {
            "cmd": "makeCall",
            "token": API_TOKEN,
            "user": "smirnova",
            "phone": "79001234567",
        }
        # An admin may call on someone's behalf; a manager only as themselves.
        admin = await bearer(svc, "sergey.volkov")
        status, body = await post_call(svc, {"phone": CUSTOMER, "user_id": "ivan.petrov"}, admin)
        assert (status, body["login"]) == (202, "petrov")
        status, body = await post_call(svc, {"phone": CUSTOMER, "user_id": "ivan.petrov"}, anna)
        assert (status, body["code"]) == (403, "forbidden")
        # The admin has no PBX login of their own.
        status, body = await post_call(svc, {"phone": CUSTOMER}, admin)
        assert (status, body["code"]) == (422, "no_pbx_login")
        status, body = await post_call(svc, {"phone": "not a phone"}, anna)
        assert (status, body["errors"][0]["field"]) == (422, "phone")
        status, body = await post_call(svc, {"phone": CUSTOMER}, {})
        assert status == 401
        status, body = await post_call(svc, {"phone": CUSTOMER, "channel": "zadarma"}, anna)
        assert (status, body["code"]) == (404, "no_telephony_account")
        # The PBX refuses, or is down.
        fake.fail_next(400, "User is busy")
        status, body = await post_call(svc, {"phone": CUSTOMER}, anna)
        assert (status, body["code"]) == (502, "megafon_http_400")
        assert "User is busy" in body["detail"]
        fake.fail_next(503, "maintenance")
        status, body = await post_call(svc, {"phone": CUSTOMER}, anna)
        assert (status, body["code"]) == (503, "megafon_http_503")
        assert len(fake.calls_made()) == 4
