"""Every telephony channel's reader against mutated real reports (tests/mutations.py).

Real example reports of Mango (``events/call``, ``events/summary``), MegaFon (``cmd=event``,
``cmd=history``), Zadarma (``NOTIFY_START``, ``NOTIFY_END``) and the generic PBX webhook
are mutated field by field: dropped, unknown, ids above 2^53 / 2^63 / 2^64, dates 0 /
negative / year 9999 / 10^19, strings for numbers, arrays for objects, nulls, huge strings,
odd unicode and bytes. For every variant:

* ``channel.read`` directly: it may raise only :class:`WebhookError` (ingest keeps such a
  delivery as ``unparsed``), and never while the call id is readable — then the call event
  IS produced, with the customer's number when that is readable too; what it produces is
  storable as the call update crm_store/calls.py writes (BSON, 64-bit integers);
* a stable ~10 % sample over real HTTP into the running service, authenticated as the
  provider would (signed after the mutation): never a 5xx, never Python exception text.

Form-encoded providers get the mutated values as form text (numbers and words as text,
null as an empty field, arrays and objects as JSON); Mango's ``json`` field carries the
mutated JSON itself.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote_from_bytes, urlencode
from zoneinfo import ZoneInfo

import bson
import pytest

from channels.base import CallEvent, Parsed, WebhookChannel, WebhookError, WebhookRequest
from channels.mango import MangoChannel
from channels.megafon import MegaFonChannel
from channels.pbx import PbxChannel
from channels.signing import sign as omniroute_sign
from channels.zadarma import SIGNATURE_HEADER, ZadarmaChannel, signature, signed_string
from config.models import ChannelAccount
from crm_store.calls import update_of
from tests import test_channel_mango as mg
from tests import test_channel_megafon as mf
from tests import test_channel_pbx as px
from tests import test_channel_zadarma as zd
from tests.mutations import Need, Variant, equals, mutations, readable, sample, usable_id
from tests.service import InProcess, config_with, in_process

DEAD = "http://127.0.0.1:9"  # no provider API is called
NOW = int(datetime.now(UTC).timestamp()) - 60
EXCEPTION_TEXT = re.compile(
    r"Traceback|[A-Za-z]+(Error|Exception)\b|File \"|line \d+|object has no attribute"
)
CUSTOMER_DIGITS = "79001234567"


def text_of(value: Any) -> str | None:
    """A mutated value as a form field carries it (None: the field is absent)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


def call_id(value: Any) -> bool:
    """A call id a reader can keep: an id of at most 256 characters as text."""
    text = str(value).strip() if usable_id(value) else ""
    return 0 < len(text) <= 256


def number(value: Any) -> bool:
    """A customer number the call can keep: non-blank text of at most 64 characters."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return False
    return 0 < len(str(value).strip()) <= 64


def form_call_id(value: Any) -> bool:
    return call_id(value) and not isinstance(value, float)


@dataclass(frozen=True)
class Example:
    name: str
    payload: dict[str, Any]
    needs: tuple[Need, ...]  # when met, a call event must come out
    # When these are met, the call event names the customer too.
    customer: tuple[Need, ...] = ()
    kind_paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class Case:
    channel: WebhookChannel
    account: ChannelAccount
    path: str
    examples: tuple[Example, ...]
    # The request for one variant, authenticated as the provider would.
    request: Callable[[Variant], WebhookRequest]
    skip: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)


# --- Mango ------------------------------------------------------------------------------


def mango_request(variant: Variant) -> WebhookRequest:
    raw = variant.encode()
    sign = hashlib.sha256(mg.API_KEY.encode() + raw + mg.SALT.encode()).hexdigest()
    body = (
        urlencode({"vpbx_api_key": mg.API_KEY, "sign": sign}) + "&json=" + quote_from_bytes(raw)
    ).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    return WebhookRequest("POST", headers, {}, body)


MANGO = Case(
    channel=MangoChannel(),
    account=mg.mango_account(),
    path=f"/webhooks/mango/{mg.ACCOUNT}/events/call",
    request=mango_request,
    env={mg.SALT_ENV: mg.SALT},
    examples=(
        Example(
            "call",
            {
                "entry_id": "MTAxMDI4NjQ0ODQ6MTAx",
                "call_id": "MToxMDA1MTM4MTo0MTA6NDYxNzI0MzA=",
                "timestamp": NOW,
                "seq": 1,
                "call_state": "Appeared",
                "location": "ivr",
                "from": {"number": CUSTOMER_DIGITS, "taken_from_call_id": ""},
                "to": {"number": "74951234567", "line_number": "74951234567"},
            },
            (Need("id", ("entry_id",), call_id), Need("state", ("call_state",), bool)),
            customer=(Need("who", ("from.number",), number),),
            kind_paths=("call_state", "location"),
        ),
        Example(
            "summary",
            {
                "entry_id": "MTAxMDI4NjQ0ODQ6MTAy",
                "call_direction": 1,
                "from": {"number": CUSTOMER_DIGITS},
                "to": {"extension": "101", "number": "74951234567"},
                "line_number": "74951234567",
                "create_time": NOW - 120,
                "forward_time": NOW - 110,
                "talk_time": NOW - 100,
                "end_time": NOW,
                "entry_result": 1,
                "disconnect_reason": 1100,
            },
            (Need("id", ("entry_id",), call_id), Need("end", ("end_time",), lambda v: v)),
            kind_paths=("entry_result",),
        ),
    ),
)

# --- MegaFon ----------------------------------------------------------------------------


# Zadarma's call_start, filled in when the request is made (a stale one is refused).
NOW_LOCAL = "<now>"


def local_now() -> str:
    at = datetime.now(UTC) - timedelta(seconds=60)
    return at.astimezone(ZoneInfo("Europe/Moscow")).strftime("%Y-%m-%d %H:%M:%S")


def form_request(headers: Callable[[dict[str, str]], dict[str, str]]) -> Any:
    def make(variant: Variant) -> WebhookRequest:
        fields = {k: t for k, v in variant.payload.items() if (t := text_of(v)) is not None}
        fields = {k: local_now() if v == NOW_LOCAL else v for k, v in fields.items()}
        body = urlencode(fields).encode()
        base = {"Content-Type": "application/x-www-form-urlencoded"}
        return WebhookRequest("POST", {**base, **headers(fields)}, {}, body)

    return make


MEGAFON = Case(
    channel=MegaFonChannel(),
    account=mf.megafon_account(DEAD),
    path=f"/webhooks/megafon/{mf.ACCOUNT}",
    request=form_request(lambda _fields: {}),
    skip=("crm_token",),
    env={mf.CRM_ENV: mf.CRM_TOKEN},
    examples=(
        Example(
            "event",
            {
                "cmd": "event",
                "crm_token": mf.CRM_TOKEN,
                "type": "INCOMING",
                "phone": CUSTOMER_DIGITS,
                "diversion": "74951234567",
                "user": "smirnova",
                "ext": 101,
                "groupRealName": "Продажи",
                "callid": "b1b6f5c0-3f0e-4a5e-9a3e-2f6b1c0d9e8f",
                "direction": "in",
            },
            (
                Need("cmd", ("cmd",), equals("event")),
                Need("type", ("type",), lambda v: v in ("INCOMING", "incoming")),
                Need("id", ("callid",), form_call_id),
            ),
            customer=(Need("who", ("phone",), number),),
            kind_paths=("cmd", "type"),
        ),
        Example(
            "history",
            {
                "cmd": "history",
                "crm_token": mf.CRM_TOKEN,
                "type": "in",
                "status": "Success",
                "phone": CUSTOMER_DIGITS,
                "user": "smirnova",
                "ext": 101,
                "diversion": "74951234567",
                "start": "20241120T101500Z",
                "duration": 95,
                "link": "https://mebel-lux.megapbx.ru/records/20241120/101500-101.mp3",
                "rating": 5,
                "callid": "b1b6f5c0-3f0e-4a5e-9a3e-2f6b1c0d9e90",
            },
            (Need("cmd", ("cmd",), equals("history")), Need("id", ("callid",), form_call_id)),
            customer=(Need("who", ("phone",), number),),
            kind_paths=("cmd", "status"),
        ),
    ),
)

# --- Zadarma ----------------------------------------------------------------------------


def zadarma_headers(fields: dict[str, str]) -> dict[str, str]:
    event = fields.get("event", "")
    try:
        text = signed_string(event, fields)
    except KeyError:
        return {}
    return {SIGNATURE_HEADER: signature(zd.SECRET, text)}


ZADARMA_ID = Need("id", ("pbx_call_id",), call_id)
ZADARMA = Case(
    channel=ZadarmaChannel(),
    account=zd.zadarma_account(DEAD),
    path=f"/webhooks/zadarma/{zd.ACCOUNT}",
    request=form_request(zadarma_headers),
    env={zd.SECRET_ENV: zd.SECRET, zd.KEY_ENV: zd.KEY},
    examples=(
        Example(
            "start",
            {
                "event": "NOTIFY_START",
                "call_start": NOW_LOCAL,
                "pbx_call_id": "in_4a6e0f8c2b1d3e5f7a9c",
                "caller_id": CUSTOMER_DIGITS,
                "called_did": "74951234567",
            },
            (
                Need("event", ("event",), equals("NOTIFY_START")),
                Need("id", ("pbx_call_id",), call_id),
            ),
            customer=(Need("who", ("caller_id",), number),),
            kind_paths=("event",),
        ),
        Example(
            "end",
            {
                "event": "NOTIFY_END",
                "call_start": NOW_LOCAL,
                "pbx_call_id": "in_4a6e0f8c2b1d3e5f7a9c",
                "caller_id": CUSTOMER_DIGITS,
                "called_did": "74951234567",
                "internal": 101,
                "duration": 42,
                "disposition": "answered",
                "status_code": 16,
                "is_recorded": 1,
                "call_id_with_rec": "1732100000.123456",
            },
            (
                Need("event", ("event",), equals("NOTIFY_END")),
                Need("id", ("pbx_call_id",), call_id),
            ),
            customer=(Need("who", ("caller_id",), number),),
            kind_paths=("event", "disposition"),
        ),
    ),
)

# --- the generic PBX webhook --------------------------------------------------------------


def pbx_request(variant: Variant) -> WebhookRequest:
    body = variant.encode()
    stamp = str(int(datetime.now(UTC).timestamp()))
    headers = {
        "Content-Type": "application/json",
        "X-Omniroute-Timestamp": stamp,
        "X-Omniroute-Signature": omniroute_sign(px.SECRET, stamp, body),
    }
    return WebhookRequest("POST", headers, {}, body)


PBX = Case(
    channel=PbxChannel(),
    account=ChannelAccount(
        channel="pbx", account=px.ACCOUNT, source="phone", secret_env=px.SECRET_ENV
    ),
    path=f"/webhooks/pbx/{px.ACCOUNT}",
    request=pbx_request,
    env={px.SECRET_ENV: px.SECRET},
    examples=(
        Example(
            "ended",
            {
                "event": "call.ended",
                "call_id": "1732100000.42",
                "leg_id": "1732100000.43",
                "direction": "in",
                "from": "+79001234567",
                "to": "+74951234567",
                "extension": "101",
                "started_at": "2024-11-20T10:15:00Z",
                "answered_at": "2024-11-20T10:15:10Z",
                "ended_at": "2024-11-20T10:16:45Z",
                "duration_sec": 105,
                "billsec": 95,
                "disposition": "ANSWER",
                "hangup_cause": "16",
                "recording_url": "https://pbx.example.com/rec/1732100000.42.wav",
                "seq": 7,
            },
            (Need("id", ("call_id",), call_id),),
            customer=(
                Need("who", ("from",), number),
                Need("direction", ("direction",), equals("in")),
            ),
            kind_paths=("event", "direction", "disposition"),
        ),
    ),
)

CASES = {"mango": MANGO, "megafon": MEGAFON, "zadarma": ZADARMA, "pbx": PBX}


# --- the checks ---------------------------------------------------------------------------


def storable(parsed: Parsed) -> None:
    """What the reader produced is written as it is: the call updates and messages."""
    at = datetime.now(UTC)
    for ev in parsed.calls:
        bson.encode(update_of(ev, "phone", at))
    for msg in parsed.messages:
        bson.encode(msg.model_dump(mode="python"))


def form_payload(case: Case, variant: Variant) -> Any:
    """The payload as the reader sees it (form text for the form providers)."""
    if case.channel.name in ("megafon", "zadarma"):
        return {k: text_of(v) for k, v in variant.payload.items()}
    return variant.payload


def read_variant(case: Case, example: Example, variant: Variant) -> Parsed | None:
    seen = form_payload(case, variant)
    ok = readable(seen, example.needs)
    try:
        parsed = case.channel.read(case.account, case.request(variant))
    except WebhookError:
        assert not ok, f"{example.name}: read refused a readable variant: {variant.description}"
        return None
    except Exception as exc:
        raise AssertionError(
            f"{example.name}: {type(exc).__name__} escaped read: {variant.description}"
        ) from exc
    storable(parsed)
    if ok:
        assert parsed.calls, f"{example.name}: no call event for {variant.description}"
        if example.customer and readable(seen, example.customer):
            ev: CallEvent = parsed.calls[0]
            assert ev.customer, f"{example.name}: customer lost in {variant.description}"
    return parsed


def variants(case: Case, example: Example) -> list[Variant]:
    found = mutations(example.payload, kind_paths=example.kind_paths, skip=case.skip)
    if case.channel.name in ("megafon", "zadarma"):  # a form has no raw JSON bytes
        return [v for v in found if v.body is None]
    return list(found)


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Case:
    chosen = CASES[request.param]
    for name, value in chosen.env.items():
        monkeypatch.setenv(name, value)
    return chosen


def test_examples_are_read_as_they_are(case: Case) -> None:
    """The unmutated examples are read into calls (else the mutations prove nothing)."""
    for example in case.examples:
        original = Variant("none", "", "unmutated", example.payload)
        assert readable(form_payload(case, original), example.needs), example.name
        case.channel.authenticate(case.account, _secret(case), case.request(original))
        parsed = case.channel.read(case.account, case.request(original))
        assert parsed.calls, example.name
        assert parsed.calls[0].customer, example.name


def _secret(case: Case) -> str:
    return case.env[case.account.secret_env or ""]


def test_every_mutation_through_read(case: Case) -> None:
    counted = {"variants": 0, "readable": 0, "read": 0}
    for example in case.examples:
        for variant in variants(case, example):
            counted["variants"] += 1
            counted["readable"] += readable(form_payload(case, variant), example.needs)
            counted["read"] += read_variant(case, example, variant) is not None
    assert counted["variants"] > 60
    assert counted["readable"] > counted["variants"] // 2


@asynccontextmanager
async def running(case: Case, mongo_uri: str, db_name: str) -> AsyncIterator[InProcess]:
    async with in_process(mongo_uri, db_name, config=config_with(case.account)) as svc:
        yield svc


async def post(svc: InProcess, case: Case, req: WebhookRequest) -> tuple[int, str]:
    url = f"{svc.client.base}{case.path}"
    async with svc.client.http.post(url, data=req.body, headers=dict(req.headers)) as resp:
        return resp.status, await resp.text(errors="replace")


async def test_a_sample_over_http(case: Case, mongo_uri: str, db_name: str) -> None:
    checked = [
        (example, v)
        for example in case.examples
        for v in sample(variants(case, example), 0.1, salt=example.name)
    ]
    async with running(case, mongo_uri, db_name) as svc:
        for example, variant in checked:
            parsed = read_variant(case, example, variant)
            status, text = await post(svc, case, case.request(variant))
            assert status < 500, (variant.description, status, text)
            assert not EXCEPTION_TEXT.search(text), (variant.description, text)
            if parsed is not None and parsed.calls:
                assert 200 <= status < 300, (variant.description, status, text)
        # Whatever was kept, it was kept as a call or as an unparsed delivery.
        calls = await svc.store["calls"].count_documents({})
        unparsed = await svc.store.intake.count_documents({"status": "unparsed"})
        assert calls + unparsed > 0
    assert len(checked) >= 10
