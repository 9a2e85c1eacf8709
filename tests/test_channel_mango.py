"""Mango Office end to end: signed call and summary notifications over HTTP into the
running service (``<base URL>/events/call``, ``/events/summary``)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from config.models import ChannelAccount
from tests.calls_support import (
    call_of,
    converged,
    events_of,
    known_contact,
    message_of,
    nothing_stored,
    one,
)
from tests.fakes.mango import FakeMango
from tests.service import InProcess, config_with, in_process

API_KEY = "3k8m2n5p7q9r1s4t6v8w0x2y4z6a8b0c"
SALT = "f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4"
SALT_ENV = "OMNIROUTE_TEST_MANGO_SALT"
ACCOUNT = "main"
CUSTOMER = "+79001234567"
LINE = "74951234567"
T0 = 1732097700  # 2024-11-20 10:15:00 UTC


@pytest.fixture(autouse=True)
def mango_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SALT_ENV, SALT)


def mango_account() -> ChannelAccount:
    return ChannelAccount(
        channel="mango",
        account=ACCOUNT,
        source="phone",
        secret_env=SALT_ENV,
        settings={"vpbx_api_key": API_KEY},
    )


@asynccontextmanager
async def running(mongo_uri: str, db_name: str) -> AsyncIterator[tuple[InProcess, FakeMango]]:
    async with in_process(mongo_uri, db_name, config=config_with(mango_account())) as svc:
        yield svc, FakeMango(API_KEY, SALT)


def base(svc: InProcess) -> str:
    return f"{svc.client.base}/webhooks/mango/{ACCOUNT}"


Step = tuple[str, dict[str, Any]]


def call_event(
    entry: str, leg: str, seq: int, state: str, location: str, ext: str | None = None, **kw: Any
) -> Step:
    caller = kw.pop("caller", CUSTOMER.lstrip("+"))
    to: dict[str, Any] = {"number": LINE, "line_number": LINE}
    if ext:
        to = {"extension": ext, "number": f"sip:{ext}@mebel.mangosip.ru", "line_number": LINE}
    event = {
        "entry_id": entry,
        "call_id": leg,
        "timestamp": T0 + seq * 5,
        "seq": seq,
        "call_state": state,
        "location": location,
        "from": {"number": caller},
        "to": to,
        **kw,
    }
    if state == "Disconnected":
        event.setdefault("disconnect_reason", 1110)
    return ("call", event)


def summary(entry: str, answered: bool, ext: str = "101", **kw: Any) -> Step:
    caller = kw.pop("caller", CUSTOMER.lstrip("+"))
    event = {
        "entry_id": entry,
        "call_direction": 1,
        "from": {"number": caller},
        "to": {"extension": ext, "number": f"sip:{ext}@mebel.mangosip.ru"},
        "line_number": LINE,
        "create_time": T0,
        "forward_time": T0 + 10,
        "talk_time": T0 + 20 if answered else 0,
        "end_time": T0 + 115,
        "entry_result": 1 if answered else 0,
        "disconnect_reason": 1110,
        **kw,
    }
    return ("summary", event)


def answered(entry: str, exts: tuple[str, ...] = ("101",), **kw: Any) -> list[Step]:
    steps = [
        call_event(entry, f"{entry}-ivr", 1, "Appeared", "ivr", **kw),
        call_event(entry, f"{entry}-ivr", 2, "Connected", "ivr", **kw),
    ]
    seq = 3
    for n, ext in enumerate(exts):
        leg = f"{entry}-leg{n}"
        steps += [
            call_event(entry, leg, seq, "Appeared", "abonent", ext, **kw),
            call_event(entry, leg, seq + 1, "Connected", "abonent", ext, **kw),
            call_event(entry, leg, seq + 2, "Disconnected", "abonent", ext, **kw),
        ]
        seq += 3
    return [*steps, summary(entry, True, exts[-1], **kw)]


def missed(entry: str, **kw: Any) -> list[Step]:
    return [
        call_event(entry, f"{entry}-leg0", 1, "Appeared", "abonent", "101", **kw),
        call_event(entry, f"{entry}-leg0", 2, "Disconnected", "abonent", "101", **kw),
        summary(entry, False, **kw),
    ]


async def lifecycle(svc: InProcess, fake: FakeMango, steps: list[Step]) -> None:
    for kind, event in steps:
        status, body = await fake.post(base(svc), kind, event)
        assert status == 200, body
    await svc.routed()


async def test_answered_call_from_unknown_number(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        await lifecycle(svc, fake, answered("MTAwMDE="))
        call = await call_of(svc, "mango", ACCOUNT, "MTAwMDE=")
        assert (call.direction, call.status, call.disposition) == ("in", "ended", "answered")
        assert (call.customer, call.line, call.agent, call.answered_by) == (
            CUSTOMER,
            "+" + LINE,
            "101",
            ["101"],
        )
        assert (call.started_at, call.answered_at, call.ended_at) == (
            datetime.fromtimestamp(T0, UTC),
            datetime.fromtimestamp(T0 + 20, UTC),
            datetime.fromtimestamp(T0 + 115, UTC),
        )
        assert (call.duration_s, call.talk_s, call.seq) == (115, 95, 5)
        msg = await message_of(svc, call)
        assert (msg["decision"]["rule"], msg["text"]) == ("new_lead", "Incoming call")
        await one(svc.store.leads, {"identities": [f"phone:{CUSTOMER}"]})


async def test_connected_to_the_ivr_is_not_answered(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        await lifecycle(svc, fake, answered("E2")[:2])
        call = await call_of(svc, "mango", ACCOUNT, "E2")
        assert (call.status, call.disposition) == ("ringing", None)


async def test_missed_call_from_a_known_contact(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        lead = await known_contact(svc, "89001234567")
        await lifecycle(svc, fake, missed("E3"))
        call = await call_of(svc, "mango", ACCOUNT, "E3")
        assert (call.disposition, call.hangup_cause, call.talk_s) == ("missed", "1110", None)
        msg = await message_of(svc, call)
        assert msg["target"]["id"] == lead["_id"]
        [back] = await events_of(svc, "call.missed")
        assert back["refs"]["lead_id"] == lead["_id"]
        assert back["data"]["responsible_id"] == lead["responsible_id"]


async def test_transferred_call(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        await lifecycle(svc, fake, answered("E4", ("101", "102")))
        call = await call_of(svc, "mango", ACCOUNT, "E4")
        assert (call.answered_by, call.agent, call.was_transferred) == (["101", "102"], "102", True)


async def test_stale_and_repeated_events_are_ignored(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        await lifecycle(svc, fake, answered("E5", ("101", "102")))
        reference = converged(await call_of(svc, "mango", ACCOUNT, "E5"))
        rng = random.Random(3)
        for n in range(6, 9):
            steps = answered(f"E{n}", ("101", "102")) * 2
            rng.shuffle(steps)
            await lifecycle(svc, fake, steps)
            assert converged(await call_of(svc, "mango", ACCOUNT, f"E{n}")) == reference
        # Only the live events of a call, the stale ones last: the newest state stays.
        live = answered("E9", ("101", "102"))[:-1]
        await lifecycle(svc, fake, list(reversed(live)))
        call = await call_of(svc, "mango", ACCOUNT, "E9")
        assert (call.status, call.agent, call.seq) == ("answered", "102", 8)


async def test_outbound_call_never_creates_a_lead(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        out = {
            "entry_id": "E10",
            "call_id": "E10-leg0",
            "timestamp": T0,
            "seq": 1,
            "location": "abonent",
            "from": {"extension": "101", "number": "sip:101@mebel.mangosip.ru"},
            "to": {"number": "79007654321", "line_number": LINE},
        }
        steps: list[Step] = [
            ("call", {**out, "call_state": "Appeared"}),
            ("call", {**out, "seq": 2, "call_state": "Connected"}),
            (
                "summary",
                {
                    "entry_id": "E10",
                    "call_direction": 2,
                    "from": {"extension": "101"},
                    "to": {"number": "79007654321"},
                    "line_number": LINE,
                    "create_time": T0,
                    "talk_time": T0 + 5,
                    "end_time": T0 + 65,
                    "entry_result": 1,
                },
            ),
        ]
        await lifecycle(svc, fake, steps)
        call = await call_of(svc, "mango", ACCOUNT, "E10")
        assert (call.direction, call.customer, call.agent, call.disposition) == (
            "out",
            "+79007654321",
            "101",
            "answered",
        )
        msg = await message_of(svc, call)
        assert (msg["automatic"], msg["decision"]["action"]) == (True, "store_only")
        assert await svc.store.leads.count_documents({}) == 0


@pytest.mark.parametrize("caller", ["79001234567", "89001234567", "+7 (900) 123-45-67"])
async def test_phone_variants_reach_the_same_contact(
    mongo_uri: str, db_name: str, caller: str
) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        lead = await known_contact(svc, "+79001234567")
        await lifecycle(svc, fake, missed("E11", caller=caller))
        msg = await message_of(svc, await call_of(svc, "mango", ACCOUNT, "E11"))
        assert (msg["contact_id"], msg["target"]["id"]) == (lead["contact_id"], lead["_id"])


async def test_bad_signatures_are_refused(
    mongo_uri: str, db_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        _, event = answered("E12")[0]
        exact = orjson.dumps(event).decode()
        # Signed over the exact string: the same JSON written differently does not match.
        spaced = orjson.dumps(event, option=orjson.OPT_INDENT_2).decode()
        reformatted, body = await fake.post(base(svc), "call", spaced, sign=fake.sign(exact))
        assert orjson.loads(body)["code"] == "unauthorized"
        wrong_salt, _ = await fake.post(base(svc), "call", exact, sign=fake.sign(exact, salt="x"))
        other_key = fake.sign(exact, api_key="another-pbx")
        not_ours, _ = await fake.post(
            base(svc), "call", exact, api_key="another-pbx", sign=other_key
        )
        unsigned, _ = await fake.post(base(svc), "call", exact, sign="")
        monkeypatch.delenv(SALT_ENV)
        no_salt, _ = await fake.post(base(svc), "call", exact)
        assert [reformatted, wrong_salt, not_ours, unsigned, no_salt] == [401] * 5
        await nothing_stored(svc)


async def test_signed_exactly_as_received(mongo_uri: str, db_name: str) -> None:
    """Mango's JSON with its own spacing and escapes is verified on the exact string."""
    async with running(mongo_uri, db_name) as (svc, fake):
        _, event = answered("E13")[0]
        spaced = orjson.dumps(event, option=orjson.OPT_INDENT_2).decode()
        status, _ = await fake.post(base(svc), "call", spaced)
        assert status == 200
        assert (await call_of(svc, "mango", ACCOUNT, "E13")).status == "ringing"


async def test_other_notifications_and_bad_json(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        dtmf = {"entry_id": "E14", "call_id": "x", "dtmf": "1", "seq": 1, "timestamp": T0}
        status, _ = await fake.post(base(svc), "dtmf", dtmf)
        assert status == 200
        # Signed but unreadable (not JSON; no entry_id): acknowledged, kept as unparsed.
        status, _ = await fake.post(base(svc), "call", "{not json")
        assert status == 200
        no_entry = {"call_state": "Appeared", "seq": 1}
        status, _ = await fake.post(base(svc), "call", no_entry)
        assert status == 200
        assert await svc.store.intake.count_documents({"status": "unparsed"}) == 2
        await nothing_stored_but_unparsed(svc)
        # An odd field costs only that field: the call is kept.
        bad_seq = {**answered("E15")[0][1], "seq": "first", "timestamp": 10**18}
        status, _ = await fake.post(base(svc), "call", bad_seq)
        assert status == 200
        kept = await call_of(svc, "mango", ACCOUNT, "E15")
        assert (kept.status, kept.customer, kept.seq, kept.started_at) == (
            "ringing",
            CUSTOMER,
            None,
            None,
        )
        # A recording notification is kept on its call.
        rec = {"entry_id": "E16", "recording_id": "MToxMDA", "recording_state": "Completed"}
        status, _ = await fake.post(base(svc), "recording", rec)
        assert status == 200
        assert (await call_of(svc, "mango", ACCOUNT, "E16")).recording_id == "MToxMDA"


async def nothing_stored_but_unparsed(svc: InProcess) -> None:
    for name in ("messages", "leads", "contacts", "calls"):
        assert await svc.store[name].count_documents({}) == 0, f"{name} is not empty"
    assert await svc.store.intake.count_documents({"status": {"$ne": "unparsed"}}) == 0
