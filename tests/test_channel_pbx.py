"""The generic call webhook end to end (the contract an Asterisk dialplan or AMI/ARI
bridge speaks): signed JSON events over HTTP into the running service."""

from __future__ import annotations

import asyncio
import json
import random
import re
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
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
from tests.fakes.pbx import FakePbx
from tests.service import InProcess, config_with, in_process

SECRET = "asterisk-webhook-secret-5d41402abc4b2a76"
SECRET_ENV = "OMNIROUTE_TEST_PBX_SECRET"
ACCOUNT = "showroom"
CUSTOMER = "+79001234567"
DID = "+74951234567"


@pytest.fixture(autouse=True)
def pbx_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)


@asynccontextmanager
async def running(mongo_uri: str, db_name: str) -> AsyncIterator[tuple[InProcess, FakePbx]]:
    account = ChannelAccount(channel="pbx", account=ACCOUNT, source="phone", secret_env=SECRET_ENV)
    async with in_process(mongo_uri, db_name, config=config_with(account)) as svc:
        yield svc, FakePbx(SECRET)


def hook(svc: InProcess) -> str:
    return f"{svc.client.base}/webhooks/pbx/{ACCOUNT}"


def ev(event: str, call: str, seq: int, **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event": event,
        "call_id": call,
        "leg_id": f"{call}.{seq}",
        "direction": kw.pop("direction", "in"),
        "from": kw.pop("from_", CUSTOMER),
        "to": kw.pop("to", DID),
        "started_at": "2024-11-20T10:15:00Z",
        "seq": seq,
    }
    body.update(kw)
    return body


def answered(call: str, agents: tuple[str, ...] = ("101",), **kw: Any) -> list[dict[str, Any]]:
    steps = [ev("call.started", call, 1, **kw)]
    seq = 2
    for n, agent in enumerate(agents):
        at = f"2024-11-20T10:15:{10 + n * 30:02d}Z"
        steps.append(ev("call.ringing", call, seq, extension=agent, **kw))
        steps.append(ev("call.answered", call, seq + 1, extension=agent, answered_at=at, **kw))
        seq += 2
    ended = ev(
        "call.ended",
        call,
        seq,
        extension=agents[-1],
        answered_at="2024-11-20T10:15:10Z",
        ended_at="2024-11-20T10:16:45Z",
        duration_sec=105,
        billsec=95,
        disposition="ANSWER",
        hangup_cause="16",
        **kw,
    )
    url = f"https://pbx.example.com/rec/{call}.wav"
    record = ev("call.recording_ready", call, seq + 1, **{"recording_url": url, **kw})
    return [*steps, ended, record]


def unanswered(call: str, disposition: str = "no-answer", **kw: Any) -> list[dict[str, Any]]:
    return [
        ev("call.started", call, 1, **kw),
        ev("call.ringing", call, 2, extension="101", **kw),
        ev(
            "call.ended",
            call,
            3,
            extension="101",
            ended_at="2024-11-20T10:15:30Z",
            duration_sec=30,
            billsec=0,
            disposition=disposition,
            **kw,
        ),
    ]


async def lifecycle(svc: InProcess, fake: FakePbx, steps: list[dict[str, Any]]) -> None:
    for step in steps:
        status, body = await fake.post(hook(svc), step)
        assert status == 200, body
    await svc.routed()


async def test_answered_call_from_unknown_number(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        await lifecycle(svc, fake, answered("1732097700.42"))
        call = await call_of(svc, "pbx", ACCOUNT, "1732097700.42")
        assert (call.direction, call.status, call.disposition) == ("in", "ended", "answered")
        assert (call.customer, call.line, call.agent, call.answered_by) == (
            CUSTOMER,
            DID,
            "101",
            ["101"],
        )
        assert (call.duration_s, call.talk_s, call.hangup_cause, call.seq) == (105, 95, "16", 5)
        assert call.recording_url == "https://pbx.example.com/rec/1732097700.42.wav"
        msg = await message_of(svc, call)
        assert (msg["decision"]["rule"], msg["text"]) == ("new_lead", "Incoming call")
        await one(svc.store.leads, {"identities": [f"phone:{CUSTOMER}"]})
        [ended] = await events_of(svc, "call.ended")
        assert ended["data"]["talk_s"] == 95


@pytest.mark.parametrize(
    ("word", "disposition"),
    [("no-answer", "missed"), ("NOANSWER", "missed"), ("busy", "busy"), ("CHANUNAVAIL", "failed")],
)
async def test_unanswered_call_from_a_known_contact(
    mongo_uri: str, db_name: str, word: str, disposition: str
) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        lead = await known_contact(svc, "8 (900) 123-45-67")
        await lifecycle(svc, fake, unanswered("1732097800.7", word))
        call = await call_of(svc, "pbx", ACCOUNT, "1732097800.7")
        assert call.disposition == disposition
        msg = await message_of(svc, call)
        assert (msg["decision"]["rule"], msg["target"]["id"]) == ("open_lead", lead["_id"])
        [back] = await events_of(svc, "call.missed")
        assert back["refs"]["contact_id"] == lead["contact_id"]
        assert (back["data"]["phone"], back["data"]["disposition"]) == (CUSTOMER, disposition)


async def test_missed_call_from_unknown_number_creates_a_lead(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        await lifecycle(svc, fake, unanswered("1732097900.1")[-1:])
        call = await call_of(svc, "pbx", ACCOUNT, "1732097900.1")
        msg = await message_of(svc, call)
        assert (msg["text"], msg["decision"]["rule"]) == ("Missed call", "new_lead")
        assert await events_of(svc, "call.missed") == []


async def test_transferred_call(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        await lifecycle(svc, fake, answered("1732098000.3", ("101", "102")))
        call = await call_of(svc, "pbx", ACCOUNT, "1732098000.3")
        assert (call.answered_by, call.agent, call.was_transferred) == (["101", "102"], "102", True)


async def test_repeated_and_out_of_order_events_converge(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        await lifecycle(svc, fake, answered("c0", ("101", "102")))
        reference = converged(await call_of(svc, "pbx", ACCOUNT, "c0"))
        rng = random.Random(7)
        for n in range(1, 5):
            steps = answered(f"c{n}", ("101", "102")) * 2
            rng.shuffle(steps)
            await lifecycle(svc, fake, steps)
            got = converged(await call_of(svc, "pbx", ACCOUNT, f"c{n}"))
            assert got == {**reference, "recording_url": got["recording_url"]}
            assert got["recording_url"].endswith(f"/c{n}.wav")
        assert await svc.store.intake.count_documents({}) == 5
        assert await svc.store.leads.count_documents({}) == 1
        assert len(await events_of(svc, "call.started")) == 5


async def test_outbound_and_internal_calls_create_no_leads(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        out = answered("o1", direction="out", from_=DID, to="8 900 765 43 21")
        await lifecycle(svc, fake, out)
        call = await call_of(svc, "pbx", ACCOUNT, "o1")
        assert (call.direction, call.customer, call.line) == ("out", "+79007654321", DID)
        msg = await message_of(svc, call)
        assert (msg["text"], msg["automatic"], msg["decision"]["action"]) == (
            "Outgoing call",
            True,
            "store_only",
        )
        internal = unanswered("i1", direction="internal", from_="101", to="102")
        await lifecycle(svc, fake, internal)
        call = await call_of(svc, "pbx", ACCOUNT, "i1")
        assert (call.direction, call.disposition) == ("internal", "missed")
        # No message for an internal call, no events, nothing created.
        assert await svc.store.intake.count_documents({}) == 1
        assert await svc.store.leads.count_documents({}) == 0
        assert await svc.store.contacts.count_documents({}) == 0
        assert len(await events_of(svc, "call.ended")) == 1


@pytest.mark.parametrize("written", ["89001234567", "79001234567", "+7 (900) 123 45 67"])
async def test_phone_variants_reach_the_same_contact(
    mongo_uri: str, db_name: str, written: str
) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        lead = await known_contact(svc, CUSTOMER)
        await lifecycle(svc, fake, unanswered("v1", from_=written))
        msg = await message_of(svc, await call_of(svc, "pbx", ACCOUNT, "v1"))
        assert (msg["contact_id"], msg["target"]["id"]) == (lead["contact_id"], lead["_id"])


async def test_anonymous_caller_is_kept_without_a_lead(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        await lifecycle(svc, fake, unanswered("a1", from_="anonymous"))
        call = await call_of(svc, "pbx", ACCOUNT, "a1")
        assert (call.customer, call.disposition) == ("anonymous", "missed")
        assert await svc.store.intake.count_documents({}) == 0
        [ended] = await events_of(svc, "call.ended")
        assert "message_id" not in ended["refs"]


async def test_bad_signatures_are_refused(
    mongo_uri: str, db_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        step = answered("s1")[0]
        wrong, body = await fake.post(hook(svc), step, secret="other")
        assert orjson.loads(body)["code"] == "unauthorized"
        stale, _ = await fake.post(hook(svc), step, timestamp=int(time.time()) - 3600)
        unsigned, _ = await fake.post(hook(svc), step, signed=False)
        monkeypatch.delenv(SECRET_ENV)
        no_secret, _ = await fake.post(hook(svc), step)
        assert [wrong, stale, unsigned, no_secret] == [401] * 4
        await nothing_stored(svc)


async def test_odd_bodies_keep_the_call(mongo_uri: str, db_name: str) -> None:
    """A signed body that does not fit the contract keeps its call with what is readable
    (the odd field dropped); only one without a call id, or not JSON, is kept unparsed."""
    async with running(mongo_uri, db_name) as (svc, fake):
        started, ended = answered("b1")[0], answered("b1")[-2]
        cases: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
            ("b1", {**started, "direction": "sideways"}, {"direction": None, "status": "ringing"}),
            ("b2", {**ended, "disposition": "maybe"}, {"disposition": None, "status": "ended"}),
            ("b3", {**started, "event": "call.parked"}, {"status": None, "customer": CUSTOMER}),
            ("b4", {**started, "from": "1" * 65}, {"customer": None, "status": "ringing"}),
            ("b5", {**ended, "duration_sec": -1}, {"duration_s": None, "talk_s": 95}),
            ("b6", {**ended, "seq": 2**64 + 1}, {"seq": None, "status": "ended"}),
            ("b7", {**ended, "ended_at": 10**19}, {"ended_at": None, "status": "ended"}),
        ]
        for call, body, want in cases:
            raw = json.dumps({**body, "call_id": call}).encode()  # any integer size
            status, answer = await fake.post(hook(svc), raw)
            assert status == 200, (call, answer)
            rec = (await call_of(svc, "pbx", ACCOUNT, call)).model_dump()
            assert {k: rec[k] for k in want} == want, call
        no_id = {k: v for k, v in started.items() if k != "call_id"}
        unreadable: list[dict[str, Any] | bytes] = [no_id, b'{"event": ']
        for odd in unreadable:
            status, answer = await fake.post(hook(svc), odd)
            assert status == 200, answer
        assert await svc.store.intake.count_documents({"status": "unparsed"}) == 2


# --- the documented Asterisk script ----------------------------------------------------------

DOC = Path(__file__).resolve().parent.parent / "docs" / "channels" / "telephony.md"


def documented_script(url: str, secret_file: Path) -> str:
    """The ``omniroute-call`` script of docs/channels/telephony.md, pointed at ``url``."""
    text = DOC.read_text()
    start = text.index("```sh\n#!/bin/sh\n# omniroute-call") + len("```sh\n")
    script = text[start : text.index("```", start)]
    script = re.sub(r"^URL=.*$", f"URL={url}", script, flags=re.M)
    return script.replace("/etc/asterisk/omniroute.secret", str(secret_file))


@pytest.mark.skipif(not (shutil.which("curl") and shutil.which("openssl")), reason="curl/openssl")
async def test_the_documented_dialplan_script_speaks_the_contract(
    mongo_uri: str, db_name: str, tmp_path: Path
) -> None:
    async with running(mongo_uri, db_name) as (svc, _):
        secret = tmp_path / "omniroute.secret"
        secret.write_text(SECRET)
        script = tmp_path / "omniroute-call"
        script.write_text(documented_script(hook(svc), secret))
        script.chmod(0o700)

        async def run(*args: str) -> None:
            proc = await asyncio.create_subprocess_exec(str(script), *args)
            assert await proc.wait() == 0

        call = "1732097700.77"
        await run("call.started", call, "in", "+79001234567", "74951234567")
        await run("call.answered", call, "in", "+79001234567", "74951234567", "101")
        # As the hangup handler passes them: no agent, DIALSTATUS, DIALEDTIME,
        # ANSWEREDTIME, HANGUPCAUSE.
        await run(
            "call.ended", call, "in", "+79001234567", "74951234567", "", "ANSWER", "40", "31", "16"
        )
        await svc.routed()
        rec = await call_of(svc, "pbx", ACCOUNT, call)
        assert (rec.status, rec.disposition, rec.agent) == ("ended", "answered", "101")
        assert (rec.customer, rec.line, rec.duration_s, rec.talk_s, rec.hangup_cause) == (
            CUSTOMER,
            DID,
            40,
            31,
            "16",
        )
        msg = await message_of(svc, rec)
        assert msg["decision"]["rule"] == "new_lead"
        # A call that ended before Dial: empty times, CANCEL → missed.
        await run(
            "call.ended",
            "1732097700.78",
            "in",
            "+79001234567",
            "74951234567",
            "",
            "CANCEL",
            "",
            "",
            "",
        )
        assert (await call_of(svc, "pbx", ACCOUNT, "1732097700.78")).disposition == "missed"
