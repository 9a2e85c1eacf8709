"""Zadarma end to end: signed PBX notifications over HTTP into the running service, the
URL check, and the callback request (click-to-call) to a local fake of Zadarma's API."""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from config.models import ChannelAccount
from tests.calls_support import (
    bearer,
    call_of,
    converged,
    events_of,
    known_contact,
    message_of,
    nothing_stored,
    one,
)
from tests.fakes.zadarma import FakeZadarma, php_signature
from tests.service import InProcess, config_with, in_process

KEY = "a248a6a984459935b569"
SECRET = "8a8e91d214fb728889c7"
SECRET_ENV = "OMNIROUTE_TEST_ZADARMA_SECRET"
KEY_ENV = "OMNIROUTE_TEST_ZADARMA_KEY"
ACCOUNT = "cloud"
CUSTOMER = "+79001234567"
DID = "74951234567"
START = "2024-11-20 13:15:00"  # Moscow time: 10:15 UTC
START_UTC = datetime(2024, 11, 20, 10, 15, tzinfo=UTC)


@pytest.fixture(autouse=True)
def zadarma_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    monkeypatch.setenv(KEY_ENV, KEY)


def zadarma_account(api_base: str) -> ChannelAccount:
    return ChannelAccount(
        channel="zadarma",
        account=ACCOUNT,
        source="phone",
        secret_env=SECRET_ENV,
        settings={
            "api_base": api_base,
            "api_key_env": KEY_ENV,
            "timezone": "Europe/Moscow",
            "login.anna.smirnova": 101,
            "timeout_s": 5,
        },
    )


@asynccontextmanager
async def running(mongo_uri: str, db_name: str) -> AsyncIterator[tuple[InProcess, FakeZadarma]]:
    async with (
        FakeZadarma(KEY, SECRET) as fake,
        in_process(mongo_uri, db_name, config=config_with(zadarma_account(fake.base))) as svc,
    ):
        yield svc, fake


def hook(svc: InProcess) -> str:
    return f"{svc.client.base}/webhooks/zadarma/{ACCOUNT}"


Step = tuple[str, dict[str, str]]


def inbound(
    call: str,
    disposition: str = "answered",
    caller: str = CUSTOMER,
    agents: tuple[str, ...] = ("101",),
) -> list[Step]:
    base = {"pbx_call_id": call, "caller_id": caller, "call_start": START}
    steps: list[Step] = [("NOTIFY_START", {**base, "called_did": DID})]
    for ext in agents:
        steps.append(("NOTIFY_INTERNAL", {**base, "called_did": DID, "internal": ext}))
        if disposition == "answered":
            steps.append(("NOTIFY_ANSWER", {**base, "destination": ext, "internal": ext}))
    end = {
        **base,
        "called_did": DID,
        "internal": agents[-1],
        "duration": "95" if disposition == "answered" else "20",
        "disposition": disposition,
        "status_code": "16",
        "is_recorded": "1" if disposition == "answered" else "0",
        "call_id_with_rec": f"{call}.rec",
    }
    steps.append(("NOTIFY_END", end))
    if disposition == "answered":
        steps.append(("NOTIFY_RECORD", {"pbx_call_id": call, "call_id_with_rec": f"{call}.rec"}))
    return steps


async def lifecycle(svc: InProcess, fake: FakeZadarma, steps: list[Step]) -> None:
    for event, fields in steps:
        status, body = await fake.notify(hook(svc), event, **fields)
        assert status == 200, body
    await svc.routed()


async def test_answered_call_from_unknown_number(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        await lifecycle(svc, fake, inbound("z-1"))
        call = await call_of(svc, "zadarma", ACCOUNT, "z-1")
        assert (call.direction, call.status, call.disposition) == ("in", "ended", "answered")
        assert (call.customer, call.line, call.agent) == (CUSTOMER, "+" + DID, "101")
        assert (call.started_at, call.ended_at, call.duration_s) == (
            START_UTC,
            datetime(2024, 11, 20, 10, 16, 35, tzinfo=UTC),
            95,
        )
        assert call.recording_id == "z-1.rec"
        msg = await message_of(svc, call)
        assert (msg["text"], msg["decision"]["rule"], msg["sent_at"]) == (
            "Incoming call",
            "new_lead",
            START_UTC,
        )
        lead = await one(svc.store.leads, {})
        assert lead["identities"] == [f"phone:{CUSTOMER}"]
        assert [e["data"]["disposition"] for e in await events_of(svc, "call.ended")] == [
            "answered"
        ]


@pytest.mark.parametrize(("word", "disposition"), [("cancel", "missed"), ("busy", "busy")])
async def test_unanswered_call_from_a_known_contact(
    mongo_uri: str, db_name: str, word: str, disposition: str
) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        lead = await known_contact(svc, "8 900 123 45 67")
        await lifecycle(svc, fake, inbound("z-2", word))
        call = await call_of(svc, "zadarma", ACCOUNT, "z-2")
        assert (call.disposition, call.hangup_cause, call.answered_by) == (disposition, word, [])
        msg = await message_of(svc, call)
        assert (msg["text"], msg["target"]["id"]) == ("Incoming call", lead["_id"])
        [back] = await events_of(svc, "call.missed")
        assert (back["refs"]["lead_id"], back["refs"]["contact_id"]) == (
            lead["_id"],
            lead["contact_id"],
        )
        assert (back["data"]["disposition"], back["data"]["responsible_id"]) == (
            disposition,
            lead["responsible_id"],
        )
        assert await svc.store.leads.count_documents({}) == 1


async def test_transferred_call(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        await lifecycle(svc, fake, inbound("z-3", agents=("101", "102")))
        call = await call_of(svc, "zadarma", ACCOUNT, "z-3")
        assert (call.answered_by, call.agent, call.was_transferred) == (["101", "102"], "102", True)
        [ended] = await events_of(svc, "call.ended")
        assert ended["data"]["transferred"] is True


async def test_repeated_and_out_of_order_notifications_converge(
    mongo_uri: str, db_name: str
) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        await lifecycle(svc, fake, inbound("z-10", agents=("101", "102")))
        reference = converged(await call_of(svc, "zadarma", ACCOUNT, "z-10"))
        rng = random.Random(11)
        for n in range(1, 4):
            steps = inbound(f"z-1{n}", agents=("101", "102")) * 2
            rng.shuffle(steps)
            await lifecycle(svc, fake, steps)
            got = converged(await call_of(svc, "zadarma", ACCOUNT, f"z-1{n}"))
            assert {**got, "recording_id": None} == {**reference, "recording_id": None}
        assert await svc.store.intake.count_documents({}) == 4
        assert await svc.store.leads.count_documents({}) == 1


async def test_outbound_call_never_creates_a_lead(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        base = {"pbx_call_id": "z-20", "internal": "101", "destination": "79007654321"}
        steps: list[Step] = [
            ("NOTIFY_OUT_START", {**base, "call_start": START}),
            (
                "NOTIFY_OUT_END",
                {
                    **base,
                    "call_start": START,
                    "caller_id": DID,
                    "duration": "0",
                    "disposition": "no answer",
                    "status_code": "19",
                    "is_recorded": "0",
                    "call_id_with_rec": "",
                },
            ),
        ]
        await lifecycle(svc, fake, steps)
        call = await call_of(svc, "zadarma", ACCOUNT, "z-20")
        assert (call.direction, call.disposition, call.customer, call.agent) == (
            "out",
            "missed",
            "+79007654321",
            "101",
        )
        msg = await message_of(svc, call)
        assert (msg["text"], msg["automatic"], msg["decision"]["action"]) == (
            "Outgoing call",
            True,
            "store_only",
        )
        assert await svc.store.leads.count_documents({}) == 0
        assert await svc.store.contacts.count_documents({}) == 0
        assert await events_of(svc, "call.missed") == []


@pytest.mark.parametrize("caller", ["89001234567", "79001234567", "+79001234567", "9001234567"])
async def test_caller_id_formats_reach_the_same_contact(
    mongo_uri: str, db_name: str, caller: str
) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        lead = await known_contact(svc, "+7 (900) 123-45-67")
        await lifecycle(svc, fake, inbound("z-30", "no answer", caller=caller))
        msg = await message_of(svc, await call_of(svc, "zadarma", ACCOUNT, "z-30"))
        assert (msg["contact_id"], msg["target"]["id"]) == (lead["contact_id"], lead["_id"])
        assert await svc.store.contacts.count_documents({}) == 1


async def test_url_check_echoes(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        assert await fake.echo(hook(svc), "f3a2c9") == (200, "f3a2c9")
        await nothing_stored(svc)


async def test_bad_or_missing_signature_is_refused(
    mongo_uri: str, db_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        event, fields = inbound("z-40")[0]
        text = fields["caller_id"] + fields["called_did"] + fields["call_start"]
        wrong_key, body = await fake.notify(
            hook(svc), event, signature=php_signature("other", text), **fields
        )
        assert orjson.loads(body)["code"] == "unauthorized"
        # The raw digest in base64 (not the hex string) is not Zadarma's signature.
        raw = base64.b64encode(hmac.new(SECRET.encode(), text.encode(), hashlib.sha1).digest())
        raw_digest, _ = await fake.notify(hook(svc), event, signature=raw.decode(), **fields)
        tampered, _ = await fake.notify(
            hook(svc), event, signature=php_signature(SECRET, text), **{**fields, "caller_id": "1"}
        )
        missing, _ = await fake.notify(hook(svc), event, signature="", **fields)
        monkeypatch.delenv(SECRET_ENV)
        unset, _ = await fake.notify(hook(svc), event, **fields)
        assert [wrong_key, raw_digest, tampered, missing, unset] == [401] * 5
        # An event whose signature cannot be checked is acknowledged and dropped.
        ivr, _ = await fake.notify(hook(svc), "NOTIFY_IVR", pbx_call_id="z-41", caller_id="1")
        assert ivr == 200
        await nothing_stored(svc)


async def test_malformed_notifications_are_refused(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        event, fields = inbound("z-50")[0]
        bad_time, body = await fake.notify(hook(svc), event, **{**fields, "call_start": "today"})
        assert orjson.loads(body)["errors"] == [
            {"field": "call_start", "message": "must be YYYY-MM-DD HH:MM:SS"}
        ]
        no_id = {k: v for k, v in fields.items() if k != "pbx_call_id"}
        no_call, _ = await fake.notify(hook(svc), event, **no_id)
        assert [bad_time, no_call] == [422, 422]
        await nothing_stored(svc)


async def post_call(
    svc: InProcess, body: dict[str, Any], headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    async with svc.client.http.post(
        f"{svc.client.base}/api/v1/calls", data=orjson.dumps(body), headers=headers
    ) as resp:
        return resp.status, orjson.loads(await resp.read())


async def test_click_to_call_requests_a_callback(
    mongo_uri: str, db_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        anna = await bearer(svc, "anna.smirnova")
        request = {"phone": "8 (900) 123-45-67", "channel": "zadarma"}
        status, body = await post_call(svc, request, anna)
        assert status == 202, body
        assert (body["account"], body["login"], body["phone"]) == (ACCOUNT, "101", CUSTOMER)
        assert fake.requests == [{"from": "101", "to": "79001234567"}]
        # A wrong secret: Zadarma refuses the signature.
        monkeypatch.setenv(SECRET_ENV, "not-the-secret")
        status, body = await post_call(svc, request, anna)
        assert (status, body["code"]) == (502, "zadarma_http_401")
        assert "Not authorized" in body["detail"]
