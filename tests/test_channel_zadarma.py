"""Zadarma end to end: signed PBX notifications over HTTP into the running service, the
URL check, and the callback request (click-to-call) to a local fake of Zadarma's API."""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from config.models import ChannelAccount
from tests.calls_support import (
    announced,
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
MOSCOW = ZoneInfo("Europe/Moscow")
# When the test's calls started: set by the fixture a minute and a half before each test
# (notifications are refused outside their freshness window).
START_UTC = datetime(2024, 11, 20, 10, 15, tzinfo=UTC)
START = "2024-11-20 13:15:00"  # call_start as Zadarma writes it: the account's local time


def local(at: datetime) -> str:
    return at.astimezone(MOSCOW).strftime("%Y-%m-%d %H:%M:%S")


@pytest.fixture(autouse=True)
def zadarma_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    monkeypatch.setenv(KEY_ENV, KEY)
    at = (datetime.now(UTC) - timedelta(seconds=90)).replace(microsecond=0)
    monkeypatch.setattr(sys.modules[__name__], "START_UTC", at)
    monkeypatch.setattr(sys.modules[__name__], "START", local(at))


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
    start: str | None = None,
) -> list[Step]:
    base = {"pbx_call_id": call, "caller_id": caller, "call_start": start or START}
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
            START_UTC + timedelta(seconds=95),
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
            # Another call of the same caller: it started at another second.
            start = local(START_UTC + timedelta(seconds=n))
            steps = inbound(f"z-1{n}", agents=("101", "102"), start=start) * 2
            rng.shuffle(steps)
            await lifecycle(svc, fake, steps)
            got = converged(await call_of(svc, "zadarma", ACCOUNT, f"z-1{n}"))
            shift = timedelta(seconds=n)
            assert (got["started_at"], got["ended_at"]) == (
                reference["started_at"] + shift,
                reference["ended_at"] + shift,
            )
            same = {"recording_id": None, "started_at": None, "ended_at": None}
            assert {**got, **same} == {**reference, **same}
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


async def test_odd_notifications_keep_the_call(mongo_uri: str, db_name: str) -> None:
    """A signed notification with an odd field keeps its call; one without pbx_call_id is
    kept as unparsed."""
    async with running(mongo_uri, db_name) as (svc, fake):
        event, fields = inbound("z-50")[0]
        status, _ = await fake.notify(hook(svc), event, **{**fields, "call_start": "today"})
        assert status == 200
        call = await call_of(svc, "zadarma", ACCOUNT, "z-50")
        assert (call.status, call.customer, call.started_at) == ("ringing", CUSTOMER, None)
        end = {**inbound("z-51")[-2][1], "duration": str(2**64), "disposition": "???"}
        await lifecycle(svc, fake, [inbound("z-51")[0], ("NOTIFY_END", end)])
        call = await call_of(svc, "zadarma", ACCOUNT, "z-51")
        assert (call.status, call.disposition, call.duration_s, call.ended_at) == (
            "ended",
            "failed",
            None,
            None,
        )
        no_id = {k: v for k, v in inbound("z-52", start=local(START_UTC))[0][1].items()}
        del no_id["pbx_call_id"]
        no_id["caller_id"] = "79001112233"
        status, _ = await fake.notify(hook(svc), "NOTIFY_START", **no_id)
        assert status == 200
        assert await svc.store.intake.count_documents({"status": "unparsed"}) == 1


# --- replay and freshness (partly signed notifications) ------------------------------------


async def test_a_captured_notification_forged_four_ways_changes_nothing(
    mongo_uri: str, db_name: str
) -> None:
    """Zadarma signs only caller_id + called_did + call_start. One captured NOTIFY_START,
    with its Signature, resent as a new call, as the end of another call, as a second end
    of its own call with another outcome, and too late: no call, lead or outcome comes of
    it. The provider's own retry is answered 200 and changes nothing."""
    async with running(mongo_uri, db_name) as (svc, fake):
        genuine = inbound("z-60", "no answer")
        await lifecycle(svc, fake, genuine)
        event, captured = genuine[0]
        text = captured["caller_id"] + captured["called_did"] + captured["call_start"]
        signature = php_signature(SECRET, text)
        await announced(svc)  # the genuine call's events are out before it is compared
        before = await svc.store["calls"].find_one({"call_id": "z-60"})
        leads = await svc.store.leads.count_documents({})
        messages = await svc.store.messages.count_documents({})

        async def forged(kind: str, **fields: str) -> int:
            status, _ = await fake.notify(
                hook(svc), kind, signature=signature, **{**captured, **fields}
            )
            return status

        # 1. the same start under another call id: a "new call"
        # 2. its tuple as the end of a call nobody opened, answered for 10 minutes
        # 3. a second end of the genuine call, now "answered"
        answered_end = {"disposition": "answered", "duration": "600", "internal": "101"}
        statuses = [
            await forged("NOTIFY_START", pbx_call_id="z-61"),
            await forged("NOTIFY_END", pbx_call_id="z-62", **answered_end),
            await forged("NOTIFY_END", **answered_end),
        ]
        await svc.routed()
        # 4. the same notification captured earlier: outside the freshness window.
        old = local(START_UTC - timedelta(minutes=15))
        stale_sig = php_signature(SECRET, captured["caller_id"] + captured["called_did"] + old)
        stale, body = await fake.notify(
            hook(svc), event, signature=stale_sig, **{**captured, "call_start": old}
        )
        assert (stale, orjson.loads(body)["code"]) == (403, "forbidden")
        # Zadarma's own retry of the genuine start: accepted, nothing changes.
        retry, _ = await fake.notify(hook(svc), event, **captured)
        assert [*statuses, retry] == [200, 200, 200, 200]
        await svc.routed()
        await announced(svc)
        assert [d["call_id"] async for d in svc.store["calls"].find({})] == ["z-60"]
        after = await svc.store["calls"].find_one({"call_id": "z-60"})
        assert after is not None
        assert after == before
        assert (after["disposition"]["value"], after.get("duration_s")) == ("missed", 20)
        assert await svc.store.leads.count_documents({}) == leads == 1
        assert await svc.store.messages.count_documents({}) == messages == 1
        assert [e["data"]["disposition"] for e in await events_of(svc, "call.ended")] == ["missed"]


async def test_reports_wait_for_the_signed_start_of_their_call(
    mongo_uri: str, db_name: str
) -> None:
    """An end (or recording) whose call was never opened by a signed start creates
    nothing; when the start arrives after it, the end is applied then."""
    async with running(mongo_uri, db_name) as (svc, fake):
        steps = inbound("z-70")
        start, rest = steps[0], steps[1:]
        await lifecycle(svc, fake, rest)
        assert await svc.store["calls"].count_documents({}) == 0
        assert await svc.store.intake.count_documents({}) == 0
        await lifecycle(svc, fake, [start])
        call = await call_of(svc, "zadarma", ACCOUNT, "z-70")
        assert (call.status, call.disposition, call.recording_id) == (
            "ended",
            "answered",
            "z-70.rec",
        )
        assert await svc.store.leads.count_documents({}) == 1


@pytest.mark.parametrize(
    ("event", "age_s", "extra", "status"),
    [
        ("NOTIFY_START", 9 * 60, {}, 200),
        ("NOTIFY_START", 11 * 60, {}, 403),
        ("NOTIFY_START", -10 * 60, {}, 403),  # from the future
        ("NOTIFY_END", 40 * 60, {"duration": "1900"}, 200),  # a 32-minute call
        ("NOTIFY_END", 40 * 60, {"duration": "60"}, 403),
        ("NOTIFY_END", 5 * 3600, {"duration": "18000"}, 403),  # beyond max_call_s
    ],
)
async def test_freshness_window(
    mongo_uri: str, db_name: str, event: str, age_s: int, extra: dict[str, str], status: int
) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        fields = {
            "pbx_call_id": "z-80",
            "caller_id": CUSTOMER,
            "called_did": DID,
            "call_start": local(datetime.now(UTC) - timedelta(seconds=age_s)),
            "disposition": "answered",
            "internal": "101",
            **extra,
        }
        got, body = await fake.notify(hook(svc), event, **fields)
        assert got == status, body


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
