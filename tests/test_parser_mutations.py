"""Every messaging channel's reader against mutated real payloads (tests/mutations.py).

For each channel, real example payloads (the shapes of CHANNEL_PROTOCOLS.md and the
channels' own tests) are mutated field by field: dropped, unknown, huge ids, odd dates,
swapped types, nulls, huge strings, odd unicode and bytes. For every variant:

* ``channel.read`` directly: whatever it produces must be storable (BSON-encodable, within
  the models' limits); it may raise only :class:`WebhookError` (a body it cannot read at
  all — ingest keeps that as ``unparsed``), and never when who / where / what are still
  readable: then the message (or edit, or receipt) IS produced.
* a stable ~10 % sample over real HTTP into the running service with valid
  authentication: never a 5xx, never Python exception text in the response, a readable
  variant's message is in ``intake``, and everything kept is routed (none ``failed``).

Edits and receipts must carry the provider's time. The generic API channel is our own
strict contract: every mutation is either one message or an invalid body answered with its
field errors (kept as ``unparsed``), never an exception.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import bson
import orjson
import pytest

from channels import lenient
from channels.api import ApiChannel
from channels.avito import AvitoChannel
from channels.base import Parsed, WebhookChannel, WebhookError, WebhookRequest
from channels.telegram import SECRET_HEADER as TG_SECRET_HEADER
from channels.telegram import TelegramChannel
from channels.viber import SIGNATURE_HEADER as VIBER_HEADER
from channels.viber import ViberChannel
from channels.viber import sign as viber_sign
from channels.vk import VkChannel
from channels.whatsapp import SIGNATURE_HEADER as WA_HEADER
from channels.whatsapp import WhatsAppChannel, signature
from config.loader import load_config
from config.models import AppConfig, ChannelAccount
from config.settings import DEFAULT_CONFIG_DIR
from crm_store.documents import intake_id
from tests import test_channel_avito as av
from tests import test_channel_telegram as tg
from tests import test_channel_viber as vb
from tests import test_channel_vk as vk
from tests import test_channel_whatsapp as wa
from tests.mutations import (
    Need,
    Variant,
    equals,
    get,
    mutations,
    readable,
    sample,
    usable_id,
    usable_object,
    usable_text,
)
from tests.service import ACCOUNT_SECRET, InProcess, config_with, in_process, signed_headers

NOW = 1_733_000_000  # a plausible provider time (2024-11-30)
DEAD = "http://127.0.0.1:9"  # no provider API is called: nothing is sent
# What Python prints for an exception: its class name, a traceback, a source location.
EXCEPTION_TEXT = re.compile(
    r"Traceback|[A-Za-z]+(Error|Exception)\b|File \"|line \d+|object has no attribute"
)


def positive_id(value: Any) -> bool:
    """A VK user id: a positive integer (or its digits); ≤ 0 is a community or nobody."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value) > 0
    return usable_id(value) and isinstance(value, int) and value > 0


def any_of(*values: Any) -> Callable[[Any], bool]:
    return lambda v: any(equals(x)(v) for x in values)


@dataclass(frozen=True)
class Example:
    """One real payload, what a reader must produce from it, and when."""

    name: str
    payload: dict[str, Any]
    needs: tuple[Need, ...]
    produces: str = "messages"  # the Parsed field that must not be empty
    kind_paths: tuple[str, ...] = ()
    kind_keys: tuple[str, ...] = ()
    # Where an edit's or a receipt's provider time is (it must reach edited_at / at).
    at: str | None = None


@dataclass(frozen=True)
class Case:
    channel: WebhookChannel
    account: ChannelAccount
    path: str
    examples: tuple[Example, ...]
    sign: Callable[[bytes], dict[str, str]] = lambda _body: {}
    # Fields that authenticate the body (VK): never mutated.
    skip: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)


# --- examples per channel --------------------------------------------------------------

TG_USER = {"id": 111222333, "is_bot": False, "first_name": "Ivan", "last_name": "Petrov"}
TG_CHAT = {"id": 111222333, "first_name": "Ivan", "last_name": "Petrov", "type": "private"}


def tg_needs(key: str, what: Need) -> tuple[Need, ...]:
    return (
        Need("who", (f"{key}.from.id", f"{key}.sender_chat.id", f"{key}.chat.id")),
        Need("where", (f"{key}.chat.id",)),
        what,
    )


TELEGRAM = Case(
    channel=TelegramChannel(),
    account=tg.tg_account(),
    path=tg.PATH,
    sign=lambda _body: {TG_SECRET_HEADER: tg.WEBHOOK_SECRET},
    env={tg.TOKEN_ENV: tg.TOKEN, tg.WEBHOOK_ENV: tg.WEBHOOK_SECRET},
    examples=(
        Example(
            "text",
            {
                "update_id": 815000001,
                "message": {
                    "message_id": 4410,
                    "from": {**TG_USER, "username": "ivanp", "language_code": "ru"},
                    "chat": {**TG_CHAT, "username": "ivanp"},
                    "date": NOW,
                    "text": "Hello, I need a sofa 2.2 m",
                },
            },
            tg_needs("message", Need("what", ("message.text",), usable_text)),
            kind_keys=("message",),
        ),
        Example(
            "photo_caption_group",
            {
                "update_id": 815000002,
                "message": {
                    "message_id": 77,
                    "from": TG_USER,
                    "chat": {"id": -1001234567890, "title": "Kitchen order", "type": "supergroup"},
                    "date": NOW,
                    "photo": [
                        {"file_id": "AgAD-s", "file_unique_id": "s1", "width": 90, "height": 67},
                        {"file_id": "AgAD-l", "file_unique_id": "l1", "width": 1280, "height": 960},
                    ],
                    "caption": "Like this one",
                },
            },
            tg_needs(
                "message",
                Need("what", ("message.caption", "message.photo"), lambda v: bool(v)),
            ),
            kind_keys=("message",),
        ),
        Example(
            "edit",
            {
                "update_id": 815000003,
                "edited_message": {
                    "message_id": 4410,
                    "from": TG_USER,
                    "chat": TG_CHAT,
                    "date": NOW,
                    "edit_date": NOW + 30,
                    "text": "Hello, I need a sofa 2.4 m",
                },
            },
            (
                Need("where", ("edited_message.chat.id",)),
                Need("which", ("edited_message.message_id",)),
            ),
            produces="edits",
            kind_keys=("edited_message",),
            at="edited_message.edit_date",
        ),
    ),
)

WA_VALUE = "entry.0.changes.0.value"
WA_MSG = f"{WA_VALUE}.messages.0"
WA_ENVELOPE = ("object", any_of("whatsapp_business_account"))
WA_FIELD = ("entry.0.changes.0.field", any_of("messages"))

WHATSAPP = Case(
    channel=WhatsAppChannel(),
    account=wa.wa_account(DEAD),
    path=wa.PATH,
    sign=lambda body: {WA_HEADER: signature(wa.APP_SECRET, body)},
    env=wa.ENV,
    examples=(
        Example(
            "text",
            wa.envelope(
                wa.value(
                    [
                        {
                            "from": wa.WA,
                            "id": "wamid.HBgLNzkwMDEyMzQ1NjcVAgASGBQzQTg",
                            "timestamp": str(NOW),
                            "type": "text",
                            "text": {"body": "Hello, how much is the oak table?"},
                            "context": {"from": wa.DISPLAY, "id": "wamid.PREV"},
                        }
                    ]
                )
            ),
            (
                Need("object", (WA_ENVELOPE[0],), WA_ENVELOPE[1]),
                Need("field", (WA_FIELD[0],), WA_FIELD[1]),
                Need("who", (f"{WA_MSG}.from", f"{WA_MSG}.from_user_id")),
                Need("what", (f"{WA_MSG}.text.body",), usable_text),
            ),
            kind_paths=("object", "entry.0.changes.0.field", f"{WA_MSG}.type"),
        ),
        Example(
            "image",
            wa.envelope(
                wa.value(
                    [
                        {
                            "from": wa.WA,
                            "id": "wamid.HBgLNzkwMDEyMzQ1NjcVAgASGBQzQUI",
                            "timestamp": str(NOW),
                            "type": "image",
                            "image": {
                                "caption": "this one",
                                "mime_type": "image/jpeg",
                                "sha256": "yFdr0h1e5jvqNrH9mFqKqzW6K3Gf9pD0p3k8K1Qh3dE=",
                                "id": "1003383421387256",
                            },
                        }
                    ]
                )
            ),
            (
                Need("object", (WA_ENVELOPE[0],), WA_ENVELOPE[1]),
                Need("field", (WA_FIELD[0],), WA_FIELD[1]),
                Need("who", (f"{WA_MSG}.from", f"{WA_MSG}.from_user_id")),
                Need("type", (f"{WA_MSG}.type",), equals("image")),
                Need("what", (f"{WA_MSG}.image",), usable_object),
            ),
        ),
        Example(
            "receipt",
            wa.envelope(wa.value(statuses=[wa.status("wamid.OUT1", "delivered")])),
            (
                Need("object", (WA_ENVELOPE[0],), WA_ENVELOPE[1]),
                Need("field", (WA_FIELD[0],), WA_FIELD[1]),
                Need("which", (f"{WA_VALUE}.statuses.0.id",)),
                Need("state", (f"{WA_VALUE}.statuses.0.status",), equals("delivered")),
            ),
            produces="statuses",
            at=f"{WA_VALUE}.statuses.0.timestamp",
        ),
    ),
)

VIBER = Case(
    channel=ViberChannel(),
    account=vb.viber_account(DEAD),
    path=f"/webhooks/viber/{vb.ACCOUNT}",
    sign=lambda body: {VIBER_HEADER: viber_sign(vb.TOKEN, body)},
    env={vb.TOKEN_ENV: vb.TOKEN},
    examples=(
        Example(
            "text",
            {
                "event": "message",
                "timestamp": NOW * 1000 + 123,
                "chat_hostname": "SN-CHAT-05_",
                "message_token": 5741311803571721087,
                "sender": vb.user(),
                "message": {"type": "text", "text": "Добрый день! Сколько стоит кухня?"},
                "silent": False,
            },
            (
                Need("event", ("event",), equals("message")),
                Need("who", ("sender.id",)),
                Need("what", ("message.text",), usable_text),
            ),
            kind_paths=("event", "message.type"),
        ),
        Example(
            "picture",
            {
                "event": "message",
                "timestamp": NOW * 1000 + 456,
                "message_token": "5741311803571721088",
                "sender": vb.user(),
                "message": {
                    "type": "picture",
                    "text": "вот такую",
                    "media": "https://dl-media.viber.com/1/share/2/long/vibes/icon/image/0x0/95e0.jpg",
                    "thumbnail": "https://dl-media.viber.com/1/share/2/long/vibes/icon/image/0x0/t.jpg",
                    "file_name": "kitchen.jpg",
                    "size": 204800,
                },
            },
            (
                Need("event", ("event",), equals("message")),
                Need("who", ("sender.id",)),
                Need("what", ("message.text", "message.media"), usable_text),
            ),
        ),
        Example(
            "receipt",
            vb.receipt("delivered", "5741311803571721090"),
            (
                Need("event", ("event",), equals("delivered")),
                Need("which", ("message_token",)),
            ),
            produces="statuses",
            at="timestamp",
            kind_paths=("event",),
        ),
    ),
)

VK_MSG = "object.message"
VK = Case(
    channel=VkChannel(),
    account=vk.vk_account(),
    path=f"/webhooks/vk/{vk.ACCOUNT}",
    skip=("secret", "group_id"),
    env={vk.TOKEN_ENV: vk.TOKEN, vk.CALLBACK_ENV: vk.CALLBACK_SECRET},
    examples=(
        Example(
            "message_new",
            vk.message_new(
                vk.message(
                    41,
                    date=NOW,
                    attachments=[
                        {
                            "type": "photo",
                            "photo": {
                                "id": 457239017,
                                "owner_id": vk.USER,
                                "access_key": "a1b2c3",
                                "sizes": [
                                    {
                                        "type": "s",
                                        "url": "https://sun9-1.userapi.com/s.jpg",
                                        "width": 75,
                                        "height": 56,
                                    },
                                    {
                                        "type": "x",
                                        "url": "https://sun9-1.userapi.com/x.jpg",
                                        "width": 604,
                                        "height": 453,
                                    },
                                ],
                            },
                        }
                    ],
                ),
                event_id="4f1c9a2e8b7d6c5e4f3a2b1c0d9e8f7a6b5c4d3e",
            ),
            (
                Need("type", ("type",), equals("message_new")),
                Need("who", (f"{VK_MSG}.from_id",), positive_id),
                Need("out", (f"{VK_MSG}.out",), lambda v: v not in (1, True)),
                Need("what", (f"{VK_MSG}.text",), usable_text),
            ),
            kind_paths=("type",),
        ),
        Example(
            "message_edit",
            vk.envelope(
                "message_edit",
                {
                    **vk.message(41, "Сколько стоит угловой диван?", date=NOW),
                    "update_time": NOW + 40,
                },
                event_id="5a2d0b3f9c8e7d6f5a4b3c2d1e0f9a8b7c6d5e4f",
            ),
            (
                Need("type", ("type",), equals("message_edit")),
                Need("who", ("object.from_id",), positive_id),
                Need("out", ("object.out",), lambda v: v not in (1, True)),
                Need("which", ("object.conversation_message_id", "object.id"), positive_id),
            ),
            produces="edits",
            kind_paths=("type",),
            at="object.update_time",
        ),
    ),
)

AV_VALUE = "payload.value"
AVITO = Case(
    channel=AvitoChannel(),
    account=av.avito_account(DEAD),
    path=f"/webhooks/avito/{av.ACCOUNT}/{av.HOOK_TOKEN}",
    env={av.SECRET_ENV: av.CLIENT_SECRET, av.HOOK_TOKEN_ENV: av.HOOK_TOKEN},
    examples=(
        Example(
            "text",
            av.message("a1f0c3e9b2d84f5a", content={"text": "Здравствуйте! Кухня ещё продаётся?"}),
            (
                Need("type", ("payload.type",), equals("message")),
                Need("who", (f"{AV_VALUE}.author_id",)),
                Need("where", (f"{AV_VALUE}.chat_id",)),
                Need("kind", (f"{AV_VALUE}.type",), lambda v: v not in ("system", "deleted")),
                Need("what", (f"{AV_VALUE}.content.text",), usable_text),
            ),
            kind_paths=("payload.type", f"{AV_VALUE}.type"),
        ),
        Example(
            "image",
            av.message(
                "b7e2d1c0a9f84e3b",
                "image",
                {
                    "image": {
                        "sizes": {
                            "140x105": "https://00.img.avito.st/140x105/1.jpg",
                            "1280x960": "https://00.img.avito.st/1280x960/1.jpg",
                        }
                    }
                },
            ),
            (
                Need("type", ("payload.type",), equals("message")),
                Need("who", (f"{AV_VALUE}.author_id",)),
                Need("where", (f"{AV_VALUE}.chat_id",)),
                Need("kind", (f"{AV_VALUE}.type",), equals("image")),
            ),
        ),
        Example(
            "deleted",
            av.message("c3d9e1f7a2b84c60", "deleted", {}),
            (
                Need("type", ("payload.type",), equals("message")),
                Need("who", (f"{AV_VALUE}.author_id",)),
                Need("where", (f"{AV_VALUE}.chat_id",)),
                Need("kind", (f"{AV_VALUE}.type",), equals("deleted")),
                Need("which", (f"{AV_VALUE}.id",)),
            ),
            produces="edits",
            at="timestamp",
        ),
    ),
)

CASES = {"telegram": TELEGRAM, "whatsapp": WHATSAPP, "viber": VIBER, "vk": VK, "avito": AVITO}


# --- the checks --------------------------------------------------------------------------


def request(case: Case, body: bytes) -> WebhookRequest:
    headers = {"Content-Type": "application/json", **case.sign(body)}
    return WebhookRequest("POST", headers, {}, body, path_token=av.HOOK_TOKEN)


def produced(parsed: Parsed, what: str) -> list[Any]:
    items: list[Any] = getattr(parsed, what)
    return items


def storable(parsed: Parsed) -> None:
    """What the reader produced can be written to MongoDB as it is."""
    for item in (*parsed.messages, *parsed.edits, *parsed.statuses, *parsed.reachability):
        bson.encode(item.model_dump(mode="python"))


def read_variant(case: Case, example: Example, variant: Variant) -> Parsed | None:
    """``channel.read`` on one variant, with the contract's assertions; the result (None:
    it raised, which is allowed only for a variant that is not readable)."""
    ok = readable(variant, example.needs)
    try:
        parsed = case.channel.read(case.account, request(case, variant.encode()))
    except WebhookError:
        assert not ok, f"{example.name}: read refused a readable variant: {variant.description}"
        return None
    except Exception as exc:
        raise AssertionError(
            f"{example.name}: {type(exc).__name__} escaped read: {variant.description}"
        ) from exc
    storable(parsed)
    if ok:
        assert produced(parsed, example.produces), (
            f"{example.name}: nothing in Parsed.{example.produces} for {variant.description}"
        )
    return parsed


def variants(case: Case, example: Example) -> list[Variant]:
    return list(
        mutations(
            example.payload,
            kind_paths=example.kind_paths,
            kind_keys=example.kind_keys,
            skip=case.skip,
        )
    )


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Case:
    chosen = CASES[request.param]
    for name, value in chosen.env.items():
        monkeypatch.setenv(name, value)
    return chosen


def test_examples_are_read_as_they_are(case: Case) -> None:
    """The unmutated examples are readable and read (else the mutations prove nothing)."""
    for example in case.examples:
        assert readable(example.payload, example.needs), example.name
        body = Variant("none", "", "unmutated", example.payload).encode()
        parsed = case.channel.read(case.account, request(case, body))
        assert produced(parsed, example.produces), example.name


def test_edits_and_receipts_carry_the_provider_time(case: Case) -> None:
    """The store applies an edit only when newer than what it has: every edit and receipt
    carries the provider's time of it."""
    timed = [e for e in case.examples if e.at is not None]
    assert timed
    for example in timed:
        assert example.at is not None
        body = Variant("none", "", "unmutated", example.payload).encode()
        parsed = case.channel.read(case.account, request(case, body))
        expected = lenient.epoch(get(example.payload, example.at))
        assert expected is not None, example.name
        times = [
            getattr(x, "edited_at", None) or getattr(x, "at", None)
            for x in produced(parsed, example.produces)
        ]
        assert times == [expected], example.name


def test_every_mutation_through_read(case: Case) -> None:
    counted = {"variants": 0, "readable": 0, "read": 0}
    for example in case.examples:
        for variant in variants(case, example):
            counted["variants"] += 1
            counted["readable"] += readable(variant, example.needs)
            counted["read"] += read_variant(case, example, variant) is not None
    # The harness really mutates, and most variants stay readable.
    assert counted["variants"] > 100
    assert counted["readable"] > counted["variants"] // 2


def http_config(case: Case) -> AppConfig:
    if case is WHATSAPP:
        return wa.wa_config(DEAD)
    return config_with(case.account)


@asynccontextmanager
async def running(case: Case, mongo_uri: str, db_name: str) -> AsyncIterator[InProcess]:
    async with in_process(mongo_uri, db_name, config=http_config(case)) as svc:
        yield svc


async def post(svc: InProcess, case: Case, body: bytes) -> tuple[int, str]:
    headers = {"Content-Type": "application/json", **case.sign(body)}
    url = f"{svc.client.base}{case.path}"
    async with svc.client.http.post(url, data=body, headers=headers) as resp:
        return resp.status, await resp.text(errors="replace")


async def in_intake(svc: InProcess, parsed: Parsed) -> bool:
    ids = [intake_id(m.channel, m.account, m.provider_id) for m in parsed.messages]
    return await svc.store.intake.count_documents({"_id": {"$in": ids}}) == len(ids)


async def test_a_sample_over_http(case: Case, mongo_uri: str, db_name: str) -> None:
    checked: Sequence[tuple[Example, Variant]] = [
        (example, v)
        for example in case.examples
        for v in sample(variants(case, example), 0.1, salt=example.name)
    ]
    async with running(case, mongo_uri, db_name) as svc:
        for example, variant in checked:
            parsed = read_variant(case, example, variant)
            try:
                status, text = await post(svc, case, variant.encode())
            except aiohttp.ClientError as exc:
                raise AssertionError(f"{variant.description}: {exc!r}") from exc
            assert status < 500, (variant.description, status, text)
            assert not EXCEPTION_TEXT.search(text), (variant.description, text)
            if readable(variant, example.needs):
                assert 200 <= status < 300, (variant.description, status, text)
            if parsed is not None and parsed.messages:
                assert await in_intake(svc, parsed), variant.description
        # Every message kept is routed too: nothing odd in it breaks routing.
        await svc.routed()
        failed = [d async for d in svc.store.intake.find({"status": "failed"}, {"error": 1})]
        assert failed == []
        assert await svc.store.intake.count_documents({"status": "routed"}) > 0
    assert len(checked) >= 20


# --- the API channel: our own contract ---------------------------------------------------

API_EXAMPLE: dict[str, Any] = {
    "external_id": "form-1001",
    "sender": {"phone": "8 (900) 123-45-67", "name": "Ivan", "email": "ivan@example.ru"},
    "text": "I need a kitchen, 3.2 m",
    "sent_at": "2024-11-30T20:53:20+03:00",
    "thread_id": "site-session-77",
    "attachments": [
        {"kind": "file", "url": "https://example.ru/plan.pdf", "name": "plan.pdf", "size": 1024}
    ],
}


def api_read(variant: Variant) -> Parsed:
    """The API channel's read never raises: a valid body is one message, an invalid one is
    unreadable, answered with its field errors (and kept as unparsed by ingest)."""
    req = WebhookRequest("POST", {}, {}, variant.encode())
    parsed = ApiChannel().read(api_account(), req)
    storable(parsed)
    if parsed.messages:
        assert len(parsed.messages) == 1, variant.description
        assert not parsed.unreadable, variant.description
    else:
        assert parsed.unreadable, variant.description
        assert parsed.reply is not None
        answer = orjson.loads(parsed.reply)
        assert (answer["ok"], answer["code"]) == (False, "invalid_payload")
        assert answer["errors"], variant.description
        assert not EXCEPTION_TEXT.search(parsed.reply), (variant.description, parsed.reply)
    return parsed


def api_account() -> ChannelAccount:
    account = load_config(DEFAULT_CONFIG_DIR).account("api", "site")
    assert account is not None
    return account


def test_api_mutations_through_read() -> None:
    outcomes = {"message": 0, "invalid": 0}
    for variant in mutations(API_EXAMPLE):
        parsed = api_read(variant)
        outcomes["message" if parsed.messages else "invalid"] += 1
    # Both ways are exercised: unknown fields or a dropped external_id are invalid, a
    # dropped name or thread is not.
    assert min(outcomes.values()) > 20, outcomes


async def test_api_mutations_sample_over_http(mongo_uri: str, db_name: str) -> None:
    checked = sample(mutations(API_EXAMPLE), 0.1, salt="api")
    async with in_process(mongo_uri, db_name) as svc:
        for variant in checked:
            parsed = api_read(variant)
            raw = variant.encode()
            headers = signed_headers(ACCOUNT_SECRET["site"], raw)
            url = f"{svc.client.base}/webhooks/api/site"
            async with svc.client.http.post(url, data=raw, headers=headers) as resp:
                status, text = resp.status, await resp.text(errors="replace")
            assert status == 200, (variant.description, status, text)
            assert not EXCEPTION_TEXT.search(text), (variant.description, text)
            if parsed.messages:
                assert await in_intake(svc, parsed), variant.description
            else:
                assert orjson.loads(text)["errors"], variant.description
        assert await svc.store.intake.count_documents({"status": "unparsed"}) > 0
        await svc.routed()
        assert await svc.store.intake.count_documents({"status": "failed"}) == 0
    assert len(checked) >= 20


# --- the shared lenient helpers ---------------------------------------------------------


def test_lenient_helpers_keep_ids_exact_and_drop_implausible_times() -> None:
    # Integers beyond 64 bits stay exact (orjson would read them as floats).
    doc = lenient.load_object(b'{"id": 18446744073709551617, "neg": -9223372036854775809}')
    assert (lenient.ident(doc["id"]), lenient.ident(doc["neg"])) == (
        "18446744073709551617",
        "-9223372036854775809",
    )
    assert lenient.int64(doc["id"]) is None
    # Invalid UTF-8 and lone surrogates are read as U+FFFD, not refused.
    assert lenient.load_object(b'{"t": "a\xffb"}') == {"t": "a\ufffdb"}
    assert lenient.load_object(b'{"t": "a\\ud800b"}') == {"t": "a\ufffdb"}
    with pytest.raises(WebhookError):
        lenient.load_object(b'["not", "an object"]')
    # An over-long id is cut with a hash of the whole: two ids stay two.
    a, b = lenient.ident("x" * 600 + "a", 64), lenient.ident("x" * 600 + "b", 64)
    assert a is not None
    assert b is not None
    assert len(a) == len(b) == 64
    assert a != b
    assert lenient.ident(True) is None
    assert lenient.ident(12.0) == "12"
    # Times: seconds, milliseconds and numeric strings; nothing implausible.
    assert lenient.epoch(NOW) == lenient.epoch(NOW * 1000) == lenient.epoch(str(NOW))
    for odd in (0, -1, 253_402_300_799, 10**19, "yesterday", None, True, float("nan")):
        assert lenient.epoch(odd) is None, odd
    assert lenient.iso_time("2024-05-01T10:00:00Z") is not None
    assert lenient.iso_time("2024-05-01T10:00:00") is None  # no zone: unknown time
    assert lenient.iso_time("9999-12-31T00:00:00+00:00") is None
