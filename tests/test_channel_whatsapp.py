"""The WhatsApp Cloud API channel over real HTTP: Meta's handshake and signature, every
message type, receipts, edits, dedup, routing, and replies through a local fake of the
Graph API (tests/fakes/whatsapp.py).

Payloads follow CHANNEL_PROTOCOLS.md §4 and Meta's webhook reference examples.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
import pytest_asyncio

from channels.base import (
    Attachment,
    OutboundMessage,
    Sender,
    SendError,
    SendingChannel,
    WebhookRegistrar,
    WebhookRequest,
)
from channels.identity import identity_keys
from channels.whatsapp import SIGNATURE_HEADER, WhatsAppChannel, signature
from config.loader import load_config
from config.models import AppConfig, ChannelAccount, Source
from config.settings import DEFAULT_CONFIG_DIR
from crm_store.documents import intake_id
from inbox.replies import ReplyError, reply
from tests.fakes.whatsapp import Failure, FakeWhatsApp
from tests.helpers import free_port, wait_for
from tests.service import InProcess, api_body, config_with, in_process

ACCOUNT = "main"
PNID = "106540352242922"  # our business phone number id
DISPLAY = "15550783881"
WABA = "102290129340398"
WA = "79001234567"  # the customer's wa_id
APP_SECRET = "wa-app-secret"
VERIFY_TOKEN = "wa-verify-token"
TOKEN = "test-access-token"
ENV = {
    "OMNIROUTE_TEST_WA_TOKEN": TOKEN,
    "OMNIROUTE_TEST_WA_APP_SECRET": APP_SECRET,
    "OMNIROUTE_TEST_WA_VERIFY": VERIFY_TOKEN,
}
PATH = f"/webhooks/whatsapp/{ACCOUNT}"
Json = dict[str, Any]
CHANNEL = WhatsAppChannel()


# --- set-up ---------------------------------------------------------------------------


def wa_account(api_base: str, **settings: str | int) -> ChannelAccount:
    return ChannelAccount(
        channel="whatsapp",
        account=ACCOUNT,
        source="whatsapp",
        secret_env="OMNIROUTE_TEST_WA_TOKEN",
        settings={
            "app_secret_env": "OMNIROUTE_TEST_WA_APP_SECRET",
            "verify_token_env": "OMNIROUTE_TEST_WA_VERIFY",
            "phone_number_id": PNID,
            "api_base": api_base,
            **settings,
        },
    )


def wa_config(api_base: str) -> AppConfig:
    base = load_config(DEFAULT_CONFIG_DIR)
    source = Source(id="whatsapp", name="WhatsApp", pipeline="leads", line="sales")
    sources = base.sources.model_copy(update={"sources": [*base.sources.sources, source]})
    return config_with(wa_account(api_base), base=base.model_copy(update={"sources": sources}))


@pytest.fixture(autouse=True)
def wa_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)


@pytest_asyncio.fixture(loop_scope="session")
async def fake() -> AsyncIterator[FakeWhatsApp]:
    async with FakeWhatsApp(TOKEN) as f:
        yield f


@asynccontextmanager
async def service(mongo_uri: str, db_name: str, fake: FakeWhatsApp) -> AsyncIterator[InProcess]:
    async with in_process(mongo_uri, db_name, config=wa_config(fake.base)) as svc:
        yield svc


# --- payloads (shapes from Meta's webhook reference) --------------------------------------


def ts(ago_s: int = 60) -> str:
    return str(int(time.time()) - ago_s)


def message(wamid: str, kind: str, content: Any = None, frm: str = WA, **extra: Any) -> Json:
    msg: dict[str, Any] = {"from": frm, "id": wamid, "timestamp": ts(), "type": kind}
    if content is not None:
        msg[kind] = content
    return {**msg, **extra}


def text(wamid: str, body: str = "Hello, how much is the oak table?", **kw: Any) -> Json:
    return message(wamid, "text", {"body": body}, **kw)


def value(
    messages: list[Json] | None = None,
    statuses: list[Json] | None = None,
    contacts: list[Json] | None = None,
) -> Json:
    v: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": DISPLAY, "phone_number_id": PNID},
    }
    if messages is not None:
        v["contacts"] = (
            contacts
            if contacts is not None
            else [{"profile": {"name": "Ivan Petrov"}, "wa_id": m["from"]} for m in messages[:1]]
        )
        v["messages"] = messages
    if statuses is not None:
        v["statuses"] = statuses
    return v


def envelope(*values: Json, field: str = "messages") -> Json:
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": WABA, "changes": [{"field": field, "value": v} for v in values]}],
    }


def status(wamid: str, state: str, ago_s: int = 0, **extra: Any) -> Json:
    return {
        "id": wamid,
        "status": state,
        "timestamp": ts(ago_s),
        "recipient_id": WA,
        "conversation": {"id": "a75d17ad06104c51166f948319b03c6a", "origin": {"type": "service"}},
        "pricing": {"billable": True, "pricing_model": "PMP", "category": "service"},
        **extra,
    }


async def post(
    svc: InProcess,
    payload: Json | bytes,
    *,
    secret: str = APP_SECRET,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    hdrs = {"Content-Type": "application/json", SIGNATURE_HEADER: signature(secret, raw)}
    if headers is not None:
        hdrs = {"Content-Type": "application/json", **headers}
    async with svc.client.http.post(f"{svc.client.base}{PATH}", data=raw, headers=hdrs) as r:
        body = await r.read()
        return r.status, (orjson.loads(body) if body else {})


async def get(svc: InProcess, params: dict[str, str]) -> tuple[int, str, str]:
    async with svc.client.http.get(f"{svc.client.base}{PATH}", params=params) as r:
        return r.status, r.content_type, await r.text()


async def nothing_stored(svc: InProcess) -> None:
    for coll in (svc.store.intake, svc.store.messages, svc.store.contacts, svc.store.leads):
        assert await coll.count_documents({}) == 0


async def one(coll: Any, query: dict[str, Any]) -> dict[str, Any]:
    docs = [d async for d in coll.find(query)]
    assert len(docs) == 1, f"expected one document for {query}, found {docs}"
    found: Json = docs[0]
    return found


async def inbound(svc: InProcess, wamid: str) -> dict[str, Any]:
    return await one(svc.store.messages, {"provider_id": wamid, "direction": "in"})


async def conversation_with(svc: InProcess, body: str = "Hi") -> dict[str, Any]:
    """A customer wrote just now: the conversation a reply goes to."""
    status_, _ = await post(svc, envelope(value([text("wamid.IN1", body)])))
    assert status_ == 200
    await svc.routed()
    return await one(svc.store.conversations, {})


async def reply_and_wait(svc: InProcess, conv_id: str, body: str, state: str) -> dict[str, Any]:
    doc = await reply(svc.store, svc.service.config, conv_id, body)
    assert svc.service.outbox is not None
    svc.service.outbox.wake.set()

    async def reached() -> bool:
        found = await svc.store.messages.find_one({"_id": doc["_id"]})
        return found is not None and found["state"] == state

    await wait_for(reached, timeout=15, message=f"outbound message never reached {state}")
    out = await svc.store.messages.find_one({"_id": doc["_id"]})
    assert out is not None
    return out


# --- verification handshake -------------------------------------------------------------


async def test_verification_handshake(
    mongo_uri: str, db_name: str, fake: FakeWhatsApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = {
        "hub.mode": "subscribe",
        "hub.verify_token": VERIFY_TOKEN,
        "hub.challenge": "1158201444",
    }
    async with service(mongo_uri, db_name, fake) as svc:
        assert await get(svc, good) == (200, "text/plain", "1158201444")
        for bad in (
            {**good, "hub.verify_token": "guess"},
            {**good, "hub.verify_token": VERIFY_TOKEN + "x"},
            {k: v for k, v in good.items() if k != "hub.verify_token"},
            {**good, "hub.mode": "unsubscribe"},
            {k: v for k, v in good.items() if k != "hub.challenge"},
            {},
        ):
            code, _, body = await get(svc, bad)
            assert code == 403, bad
            assert "1158201444" not in body
        # No verify token configured: nobody can subscribe this URL.
        monkeypatch.delenv("OMNIROUTE_TEST_WA_VERIFY")
        assert (await get(svc, good))[0] == 403
        await nothing_stored(svc)


# --- authenticity and malformed bodies ----------------------------------------------------


async def test_missing_or_wrong_signature_is_401_and_stores_nothing(
    mongo_uri: str, db_name: str, fake: FakeWhatsApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = orjson.dumps(envelope(value([text("wamid.S1")])))
    good = signature(APP_SECRET, raw)
    async with service(mongo_uri, db_name, fake) as svc:
        for headers in (
            {},  # no header
            {SIGNATURE_HEADER: ""},
            {SIGNATURE_HEADER: good[:-1] + ("0" if good[-1] != "0" else "1")},
            {SIGNATURE_HEADER: good.removeprefix("sha256=")},  # no scheme prefix
            {SIGNATURE_HEADER: good.upper()},
            {SIGNATURE_HEADER: signature("another-app-secret", raw)},
            {SIGNATURE_HEADER: signature(APP_SECRET, raw + b" ")},  # other bytes
            {"X-Hub-Signature": good},  # the legacy SHA-1 header name is not enough
        ):
            code, body = await post(svc, raw, headers=headers)
            assert (code, body["code"]) == (401, "unauthorized"), headers
        monkeypatch.delenv("OMNIROUTE_TEST_WA_APP_SECRET")  # fail closed without a secret
        assert (await post(svc, raw))[0] == 401
        await nothing_stored(svc)


async def test_unreadable_body_is_acknowledged_and_kept_unparsed(
    mongo_uri: str, db_name: str, fake: FakeWhatsApp
) -> None:
    """Meta retries anything but 200 for days and then drops it: a signed body that is
    not JSON is acknowledged and kept as unparsed, never refused."""
    bodies = (b'{"object": "whatsapp_business_account", "entry": [', b"", b"[1, 2]", b'"x"')
    async with service(mongo_uri, db_name, fake) as svc:
        for raw in bodies:
            code, body = await post(svc, raw)  # correctly signed, still garbage
            assert (code, body["accepted"]) == (200, []), raw
        assert await svc.store.messages.count_documents({}) == 0
        kept = await svc.store.intake.count_documents({"status": "unparsed"})
        assert kept == await svc.store.intake.count_documents({}) == len(bodies)


# --- inbound messages -------------------------------------------------------------------


async def test_text_message_creates_a_lead(
    mongo_uri: str, db_name: str, fake: FakeWhatsApp
) -> None:
    sent = int(time.time()) - 30
    payload = envelope(
        value([{**text("wamid.HBgLNzkwMDEyMzQ1NjcVAgASGBQzQUI0"), "timestamp": str(sent)}])
    )
    raw = orjson.dumps(payload)
    async with service(mongo_uri, db_name, fake) as svc:
        code, body = await post(svc, raw)
        assert code == 200
        assert body["accepted"] == [
            intake_id("whatsapp", ACCOUNT, "wamid.HBgLNzkwMDEyMzQ1NjcVAgASGBQzQUI0")
        ]
        await svc.routed()
        record = await one(svc.store.intake, {})
        assert record["raw"] == raw  # the exact bytes Meta signed
        lead = await one(svc.store.leads, {})
        assert (lead["pipeline_id"], lead["source_id"], lead["open"]) == ("leads", "whatsapp", True)
        assert lead["identities"] == ["phone:+79001234567"]
        assert lead["title"].startswith("Ivan Petrov")
        assert lead["meta"]["phone_number_id"] == PNID
        contact = await one(svc.store.contacts, {})
        assert (contact["name"], contact["phones"]) == ("Ivan Petrov", ["+79001234567"])
        msg = await inbound(svc, "wamid.HBgLNzkwMDEyMzQ1NjcVAgASGBQzQUI0")
        assert msg["text"] == "Hello, how much is the oak table?"
        assert msg["sent_at"] == datetime.fromtimestamp(sent, UTC)
        assert msg["sender"] == {"phone": "+79001234567", "name": "Ivan Petrov"}
        assert msg["meta"] == {
            "wa_type": "text",
            "phone_number_id": PNID,
            "display_phone_number": DISPLAY,
        }
        assert msg["decision"]["rule"] == "new_lead"
        conv = await one(svc.store.conversations, {})
        assert conv["reply_to"] == f"{PNID}:{WA}"


async def test_every_message_type_across_entries_and_changes(
    mongo_uri: str, db_name: str, fake: FakeWhatsApp
) -> None:
    media = {
        "mime_type": "image/jpeg",
        "sha256": "81d3bd8a8db4868c9520ed47186e8b7c",
        "id": "2754859441498128",
    }
    first = [
        text("wamid.T"),
        message("wamid.IMG", "image", {**media, "caption": "This one, in oak"}),
        message(
            "wamid.DOC",
            "document",
            {
                "caption": "Room plan",
                "filename": "plan.pdf",
                "mime_type": "application/pdf",
                "sha256": "aa",
                "id": "900001",
            },
        ),
        message(
            "wamid.VOICE",
            "audio",
            {"mime_type": "audio/ogg; codecs=opus", "sha256": "bb", "id": "900002", "voice": True},
        ),
        message("wamid.VID", "video", {"mime_type": "video/mp4", "sha256": "cc", "id": "900003"}),
        message(
            "wamid.STK",
            "sticker",
            {"mime_type": "image/webp", "sha256": "dd", "id": "900004", "animated": False},
        ),
    ]
    second = [
        message(
            "wamid.LOC",
            "location",
            {
                "latitude": 55.7558,
                "longitude": 37.6173,
                "name": "Showroom",
                "address": "Tverskaya 1",
            },
        ),
        message(
            "wamid.CARD",
            "contacts",
            [
                {
                    "name": {"formatted_name": "Olga Smirnova", "first_name": "Olga"},
                    "phones": [
                        {"phone": "+7 900 765-43-21", "wa_id": "79007654321", "type": "CELL"}
                    ],
                    "emails": [{"email": "olga@example.org", "type": "WORK"}],
                }
            ],
        ),
        message(
            "wamid.BTN",
            "interactive",
            {"type": "button_reply", "button_reply": {"id": "yes-1", "title": "Yes, call me"}},
            context={"from": DISPLAY, "id": "wamid.OURS"},
        ),
        message(
            "wamid.LIST",
            "interactive",
            {
                "type": "list_reply",
                "list_reply": {"id": "oak", "title": "Oak", "description": "Solid oak"},
            },
        ),
        message("wamid.QR", "button", {"payload": "STOP_PROMO", "text": "Stop promotions"}),
        message("wamid.REACT", "reaction", {"message_id": "wamid.OURS", "emoji": "\U0001f44d"}),
        message("wamid.UNREACT", "reaction", {"message_id": "wamid.OURS"}),  # removal: ignored
        message(
            "wamid.ORDER",
            "order",
            {
                "catalog_id": "cat-1",
                "text": "Please deliver",
                "product_items": [
                    {
                        "product_retailer_id": "table-oak",
                        "quantity": 2,
                        "item_price": 300,
                        "currency": "EUR",
                    }
                ],
            },
        ),
        message(
            "wamid.UNSUP",
            "unsupported",
            None,
            errors=[
                {
                    "code": 131051,
                    "title": "Message type unknown",
                    "error_data": {"details": "Message type is currently not supported."},
                }
            ],
        ),
        message(
            "wamid.SYS",
            "system",
            {
                "body": "User A changed from 79001234567 to 79001234568",
                "wa_id": "79001234568",
                "type": "user_changed_number",
            },
        ),
        message("wamid.NEW", "poll_vote", {"whatever": 1}),  # a type newer than this module
        message("wamid.GONE", "revoke", {"original_message_id": "wamid.T"}),  # a deletion
    ]
    payload = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": WABA,
                "changes": [
                    {"field": "messages", "value": value(first[:3])},
                    {"field": "messages", "value": value(first[3:])},
                ],
            },
            {"id": WABA, "changes": [{"field": "messages", "value": value(second)}]},
        ],
    }
    async with service(mongo_uri, db_name, fake) as svc:
        code, body = await post(svc, payload)
        assert code == 200
        assert len(body["accepted"]) == 16  # 18 items minus a reaction removal and a revoke
        await svc.routed()
        assert await svc.store.messages.count_documents({}) == 16

        async def check(
            wamid: str, txt: str, attachments: list[Json] | None = None, **meta: Any
        ) -> Json:
            msg = await inbound(svc, wamid)
            assert msg["text"] == txt, wamid
            assert msg["attachments"] == (attachments or []), wamid
            for k, v in meta.items():
                assert msg["meta"].get(k) == v, (wamid, k)
            return msg

        await check(
            "wamid.IMG",
            "This one, in oak",
            [{"kind": "image", "file_id": "2754859441498128", "mime_type": "image/jpeg"}],
        )
        await check(
            "wamid.DOC",
            "Room plan",
            [
                {
                    "kind": "file",
                    "file_id": "900001",
                    "name": "plan.pdf",
                    "mime_type": "application/pdf",
                }
            ],
        )
        await check(
            "wamid.VOICE",
            "",
            [{"kind": "voice", "file_id": "900002", "mime_type": "audio/ogg; codecs=opus"}],
        )
        await check(
            "wamid.VID", "", [{"kind": "video", "file_id": "900003", "mime_type": "video/mp4"}]
        )
        await check(
            "wamid.STK", "", [{"kind": "sticker", "file_id": "900004", "mime_type": "image/webp"}]
        )
        await check(
            "wamid.LOC",
            "Showroom\nTverskaya 1\n55.7558, 37.6173",
            [{"kind": "location", "url": "geo:55.7558,37.6173", "name": "Showroom"}],
        )
        await check("wamid.CARD", "Olga Smirnova: +7 900 765-43-21, olga@example.org")
        await check("wamid.BTN", "Yes, call me", reply_id="yes-1", in_reply_to="wamid.OURS")
        await check("wamid.LIST", "Oak", reply_id="oak", wa_type="interactive")
        await check("wamid.QR", "Stop promotions", reply_payload="STOP_PROMO")
        react = await check("wamid.REACT", "\U0001f44d", reaction_to="wamid.OURS")
        await check("wamid.ORDER", "Please deliver\n2 × table-oak @ 300 EUR", catalog_id="cat-1")
        await check(
            "wamid.UNSUP",
            "[unsupported message: Message type is currently not supported.]",
            error_code="131051",
        )
        system = await check("wamid.SYS", "User A changed from 79001234567 to 79001234568")
        await check("wamid.NEW", "[poll_vote message]", wa_type="poll_vote")
        # Reactions and system notices are kept but flagged: they never open a lead alone.
        assert react["automatic"] is True
        assert system["automatic"] is True
        assert (await inbound(svc, "wamid.T"))["automatic"] is False
        # One sender, one conversation, one lead.
        lead = await one(svc.store.leads, {})
        assert await svc.store.conversations.count_documents({}) == 1
        assert await svc.store.messages.count_documents({"target.id": lead["_id"]}) == 16


async def test_automatic_only_never_opens_a_lead(
    mongo_uri: str, db_name: str, fake: FakeWhatsApp
) -> None:
    react = message(
        "wamid.R1",
        "reaction",
        {"message_id": "wamid.OLD", "emoji": "\u2764\ufe0f"},
        frm="79005550000",
    )
    async with service(mongo_uri, db_name, fake) as svc:
        assert (await post(svc, envelope(value([react]))))[0] == 200
        await svc.routed()
        msg = await inbound(svc, "wamid.R1")
        assert msg["decision"]["rule"] == "automatic"
        assert await svc.store.leads.count_documents({}) == 0


async def test_missing_optional_fields_and_unusable_items(
    mongo_uri: str, db_name: str, fake: FakeWhatsApp
) -> None:
    bare = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": WABA,
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            # no metadata, contacts or timestamps; a Japanese number (starts with 8)
                            "messages": [
                                {
                                    "from": "819012345678",
                                    "id": "wamid.BARE",
                                    "type": "text",
                                    "text": {},
                                },
                                {
                                    "from": "819012345678",
                                    "id": "wamid.NOCAP",
                                    "type": "image",
                                    "image": {"id": "77"},
                                },
                                {
                                    "from": "819012345678",
                                    "type": "text",
                                    "text": {"body": "no id: keyed by its hash"},
                                },
                                {
                                    "id": "wamid.NOFROM",
                                    "type": "text",
                                    "text": {"body": "no sender: kept unparsed"},
                                },
                                "not an object",
                            ],
                            "statuses": [
                                {"status": "delivered"},
                                {"id": "wamid.X", "status": "deleted"},
                            ],
                        },
                    },
                    {"field": "messages"},
                    "junk",
                ],
            },
            {"changes": None},
        ],
    }
    async with service(mongo_uri, db_name, fake) as svc:
        code, body = await post(svc, bare)
        assert code == 200
        assert len(body["accepted"]) == 3
        # The item without a sender could not be stored: the body is kept as unparsed.
        assert await svc.store.intake.count_documents({"status": "unparsed"}) == 1
        await svc.routed()
        no_id = await one(svc.store.messages, {"text": "no id: keyed by its hash"})
        assert no_id["provider_id"].startswith("h")
        msg = await inbound(svc, "wamid.BARE")
        assert (msg["text"], msg["sent_at"]) == ("", None)
        assert msg["sender"] == {"phone": "+819012345678"}
        assert msg["identities"] == ["phone:+819012345678"]
        pic = await inbound(svc, "wamid.NOCAP")
        assert pic["attachments"] == [{"kind": "image", "file_id": "77"}]
        conv = await one(svc.store.conversations, {})
        assert conv["reply_to"] == f"{PNID}:819012345678"  # the configured number
        # Out of any sane bounds (ids, phone, name): kept, with the odd field cut or dropped.
        odd = [
            text("wamid." + "x" * 600),
            text("wamid.LONGFROM", frm="7" * 70),
            text("wamid.LONGNAME", frm="79005550001"),
            status("wamid." + "y" * 600, "read"),
        ]
        contacts = [{"profile": {"name": "N" * 300}, "wa_id": "79005550001"}]
        code, body = await post(svc, envelope(value(odd[:3], [odd[3]], contacts)))
        assert (code, len(body["accepted"])) == (200, 3)
        await svc.routed()
        assert (await inbound(svc, "wamid.LONGNAME"))["sender"]["name"] == "N" * 256
        assert (await inbound(svc, "wamid.LONGFROM"))["sender"] == {"external_user_id": "7" * 70}
        long_id = await one(svc.store.messages, {"provider_id": {"$regex": "^wamid[.]x"}})
        assert len(long_id["provider_id"]) == 512  # cut, with a hash of the whole id


async def test_duplicate_delivery_is_stored_once(
    mongo_uri: str, db_name: str, fake: FakeWhatsApp
) -> None:
    payload = envelope(value([text("wamid.DUP")]))
    async with service(mongo_uri, db_name, fake) as svc:
        code, first = await post(svc, payload)
        assert (code, len(first["accepted"])) == (200, 1)
        code, again = await post(svc, payload)
        assert (code, again["accepted"], again["duplicates"]) == (200, [], first["accepted"])
        # The same wamid re-sent in another envelope (retries go to every subscribed app).
        code, other = await post(
            svc, envelope(value([text("wamid.DUP")]), value([text("wamid.NEW")]))
        )
        assert (code, len(other["accepted"]), other["duplicates"]) == (200, 1, first["accepted"])
        await svc.routed()
        assert await svc.store.intake.count_documents({}) == 2
        assert await svc.store.messages.count_documents({"provider_id": "wamid.DUP"}) == 1


async def test_other_fields_and_objects_are_acknowledged_and_ignored(
    mongo_uri: str, db_name: str, fake: FakeWhatsApp
) -> None:
    echo = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": DISPLAY, "phone_number_id": PNID},
        "message_echoes": [
            {
                "from": DISPLAY,
                "to": WA,
                "id": "wamid.ECHO",
                "timestamp": ts(),
                "type": "text",
                "text": {"body": "Sent from the Business app"},
            }
        ],
    }
    async with service(mongo_uri, db_name, fake) as svc:
        for payload in (
            envelope(echo, field="smb_message_echoes"),
            envelope(
                {"phone_number": DISPLAY, "event": "VERIFIED_ACCOUNT"}, field="account_update"
            ),
            envelope(
                {"event": "APPROVED", "message_template_id": 1},
                field="message_template_status_update",
            ),
            {"object": "page", "entry": [{"id": "1", "messaging": []}]},
            {"object": "whatsapp_business_account"},
            {},
        ):
            code, body = await post(svc, payload)
            assert (code, body["accepted"]) == (200, []), payload
        await nothing_stored(svc)


async def test_edit_replaces_the_stored_text(
    mongo_uri: str, db_name: str, fake: FakeWhatsApp
) -> None:
    async with service(mongo_uri, db_name, fake) as svc:
        await post(svc, envelope(value([text("wamid.ORIG", "I need 3 chairs")])))
        await svc.routed()
        edit = message(
            "wamid.EDIT1",
            "edit",
            {
                "original_message_id": "wamid.ORIG",
                "message": {"type": "text", "text": {"body": "I need 4 chairs"}},
            },
        )
        code, body = await post(svc, envelope(value([edit])))
        assert (code, body["accepted"]) == (200, [])
        msg = await inbound(svc, "wamid.ORIG")
        assert msg["text"] == "I need 4 chairs"
        assert [e["text"] for e in msg["edits"]] == ["I need 3 chairs"]
        assert await svc.store.intake.count_documents({}) == 1


async def test_same_person_via_site_form_then_whatsapp(
    mongo_uri: str, db_name: str, fake: FakeWhatsApp
) -> None:
    async with service(mongo_uri, db_name, fake) as svc:
        code, _ = await svc.client.post_api(
            api_body("form-1", phone="8 (900) 555-12-34", name="Ivan")
        )
        assert code == 200
        await svc.routed()
        lead = await one(svc.store.leads, {})
        wa = text("wamid.X1", "It's me again, from WhatsApp", frm="79005551234")
        assert (await post(svc, envelope(value([wa]))))[0] == 200
        await svc.routed()
        msg = await inbound(svc, "wamid.X1")
        assert (msg["decision"]["rule"], msg["target"]["id"]) == ("open_lead", lead["_id"])
        contact = await one(svc.store.contacts, {})
        assert contact["identities"] == ["phone:+79005551234"]
        assert msg["contact_id"] == contact["_id"]
        assert await svc.store.leads.count_documents({}) == 1


async def test_business_scoped_user_ids(mongo_uri: str, db_name: str, fake: FakeWhatsApp) -> None:
    bsuid = "US.13491208655302741918"
    msg = {
        "from_user_id": bsuid,
        "id": "wamid.U1",
        "timestamp": ts(),
        "type": "text",
        "text": {"body": "hi"},
    }
    contacts = [{"profile": {"name": "Sheena", "username": "@sheena"}, "user_id": bsuid}]
    async with service(mongo_uri, db_name, fake) as svc:
        assert (await post(svc, envelope(value([msg], contacts=contacts))))[0] == 200
        await svc.routed()
        stored = await inbound(svc, "wamid.U1")
        assert stored["identities"] == [f"whatsapp:{ACCOUNT}:{bsuid}"]
        assert stored["sender"] == {"external_user_id": bsuid, "name": "Sheena"}
        assert stored["meta"]["username"] == "@sheena"
        conv = await one(svc.store.conversations, {})
        out = await reply_and_wait(svc, conv["_id"], "Hello Sheena", "sent")
        body = fake.requests[-1].json()
        assert body["recipient"] == bsuid
        assert "to" not in body
        assert out["provider_id"] == fake.sent[-1]
        # Today's payloads carry both: the phone and the BSUID become identities, the
        # phone stays the address (Meta recommends sending to phone numbers).
        both = {**text("wamid.U2", frm="79001112233"), "from_user_id": "RU.1648738043044942"}
        contacts = [
            {"profile": {"name": "Oleg"}, "wa_id": "79001112233", "user_id": "RU.1648738043044942"}
        ]
        assert (await post(svc, envelope(value([both], contacts=contacts))))[0] == 200
        await svc.routed()
        stored = await inbound(svc, "wamid.U2")
        assert stored["identities"] == [
            "phone:+79001112233",
            f"whatsapp:{ACCOUNT}:RU.1648738043044942",
        ]
        conv = await one(svc.store.conversations, {"_id": stored["conversation_id"]})
        assert conv["reply_to"] == f"{PNID}:79001112233"


# --- outbound -------------------------------------------------------------------------


async def test_reply_sends_the_exact_request_and_receipts_move_forward_only(
    mongo_uri: str, db_name: str, fake: FakeWhatsApp
) -> None:
    async with service(mongo_uri, db_name, fake) as svc:
        conv = await conversation_with(svc)
        out = await reply_and_wait(
            svc, conv["_id"], "Good afternoon! The oak table is 300 EUR.", "sent"
        )
        [req] = fake.requests
        assert (req.method, req.path) == ("POST", f"/v25.0/{PNID}/messages")
        assert req.headers["Authorization"] == f"Bearer {TOKEN}"
        assert req.headers["Content-Type"] == "application/json"
        assert req.json() == {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": WA,
            "type": "text",
            "text": {"body": "Good afternoon! The oak table is 300 EUR.", "preview_url": False},
        }
        wamid = fake.sent[0]
        assert (out["provider_id"], out["attempts"]) == (wamid, 1)

        async def sent_event() -> bool:  # appended right after the state moves
            return await svc.store.events.count_documents({"type": "message.sent"}) == 1

        await wait_for(sent_event, timeout=5)

        async def state() -> str:
            doc = await svc.store.messages.find_one({"_id": out["_id"]})
            assert doc is not None
            return str(doc["state"])

        # Receipts arrive out of order: read before delivered, a late sent, a failed after read.
        for st, want in (
            ("read", "read"),
            ("delivered", "read"),
            ("sent", "read"),
            ("failed", "read"),
        ):
            code, body = await post(svc, envelope(value(statuses=[status(wamid, st)])))
            assert (code, body["accepted"]) == (200, []), st
            assert await state() == want, st
        history = (await svc.store.messages.find_one({"_id": out["_id"]}) or {})["state_history"]
        assert [h["state"] for h in history] == ["queued", "sent", "read"]
        assert await svc.store.intake.count_documents({}) == 1  # receipts are not messages


async def test_delivered_then_failed_receipt_keeps_delivered_and_failed_carries_reason(
    mongo_uri: str, db_name: str, fake: FakeWhatsApp
) -> None:
    async with service(mongo_uri, db_name, fake) as svc:
        conv = await conversation_with(svc)
        a = await reply_and_wait(svc, conv["_id"], "first", "sent")
        b = await reply_and_wait(svc, conv["_id"], "second", "sent")
        failed = status(
            b["provider_id"],
            "failed",
            errors=[
                {
                    "code": 131026,
                    "title": "Message undeliverable",
                    "error_data": {"details": "Receiver is incapable of receiving this message"},
                }
            ],
        )
        payload = envelope(value(statuses=[status(a["provider_id"], "delivered"), failed]))
        assert (await post(svc, payload))[0] == 200
        doc_a = await svc.store.messages.find_one({"_id": a["_id"]})
        doc_b = await svc.store.messages.find_one({"_id": b["_id"]})
        assert doc_a is not None
        assert doc_b is not None
        assert doc_a["state"] == "delivered"
        assert doc_b["state"] == "failed"
        assert doc_b["error"] == (
            "131026: Message undeliverable — Receiver is incapable of receiving this message"
        )


async def test_rate_limited_first_attempt_is_retried_then_sent(
    mongo_uri: str, db_name: str, fake: FakeWhatsApp
) -> None:
    async with service(mongo_uri, db_name, fake) as svc:
        conv = await conversation_with(svc)
        fake.rate_limit(130429)
        out = await reply_and_wait(svc, conv["_id"], "Thanks for waiting", "sent")
        assert len(fake.requests) == 2
        assert fake.requests[0].json() == fake.requests[1].json()
        assert (out["provider_id"], out["attempts"]) == (fake.sent[0], 2)
        assert "error" not in out


async def test_too_many_requests_honours_retry_after(
    mongo_uri: str, db_name: str, fake: FakeWhatsApp
) -> None:
    async with service(mongo_uri, db_name, fake) as svc:
        conv = await conversation_with(svc)
        fake.too_many_requests(retry_after=0.3)
        started = time.monotonic()
        out = await reply_and_wait(svc, conv["_id"], "One moment", "sent")
        assert time.monotonic() - started >= 0.3
        assert (len(fake.requests), out["attempts"]) == (2, 2)


async def test_permanent_error_fails_with_the_providers_reason(
    mongo_uri: str, db_name: str, fake: FakeWhatsApp
) -> None:
    async with service(mongo_uri, db_name, fake) as svc:
        conv = await conversation_with(svc)
        fake.permanent(
            131026, "Message undeliverable", "Receiver is incapable of receiving this message"
        )
        out = await reply_and_wait(svc, conv["_id"], "Hello?", "failed")
        assert len(fake.requests) == 1  # not retried
        assert out["error_code"] == "whatsapp_131026"
        assert "Message undeliverable" in out["error"]
        assert "Receiver is incapable" in out["error"]
        assert "provider_id" not in out


async def test_reply_outside_the_24h_window_is_refused_at_once(
    mongo_uri: str, db_name: str, fake: FakeWhatsApp
) -> None:
    async with service(mongo_uri, db_name, fake) as svc:
        conv = await conversation_with(svc)
        old = datetime.now(UTC) - timedelta(hours=24, minutes=1)
        await svc.store.conversations.update_one(
            {"_id": conv["_id"]}, {"$set": {"last_inbound_at": old}}
        )
        with pytest.raises(ReplyError) as err:
            await reply(svc.store, svc.service.config, conv["_id"], "Still interested?")
        assert err.value.code == "window_closed"
        assert "24 h" in err.value.detail
        assert "template" in err.value.detail
        assert await svc.store.messages.count_documents({"direction": "out"}) == 0
        assert fake.requests == []


# --- send(): provider answers → SendError, against the fake directly ----------------------


def outbound(text_: str = "Hello", recipient: str = f"{PNID}:{WA}", **kw: Any) -> OutboundMessage:
    return OutboundMessage(
        id="out-1",
        channel="whatsapp",
        account=ACCOUNT,
        recipient=recipient,
        text=text_,
        last_inbound_at=datetime.now(UTC) - timedelta(minutes=5),
        **kw,
    )


@pytest.mark.parametrize(
    ("arrange", "retryable", "code", "retry_after", "in_detail"),
    [
        (lambda f: f.rate_limit(130429), True, "rate_limited", None, "130429"),
        (lambda f: f.rate_limit(131056), True, "rate_limited", 6.0, "pair rate limit"),
        (lambda f: f.too_many_requests(7), True, "rate_limited", 7.0, "Rate limit hit"),
        (
            lambda f: f.fail_next(Failure(400, 80007, "Rate limit issues")),
            True,
            "rate_limited",
            None,
            "80007",
        ),
        (lambda f: f.server_error(500), True, "provider_unavailable", None, "temporarily"),
        (lambda f: f.server_error(503), True, "provider_unavailable", None, "temporarily"),
        (
            lambda f: f.fail_next(Failure(502, raw=b"<html>Bad Gateway</html>")),
            True,
            "provider_unavailable",
            None,
            "Bad Gateway",
        ),
        (
            lambda f: f.fail_next(Failure(400, 131000, "Something went wrong")),
            True,
            "provider_unavailable",
            None,
            "131000",
        ),
        (
            lambda f: f.permanent(
                131047,
                "Re-engagement message",
                "Message failed to send because more than 24 hours have passed",
            ),
            False,
            "window_closed",
            None,
            "template",
        ),
        (
            lambda f: f.permanent(131026, "Message undeliverable"),
            False,
            "whatsapp_131026",
            None,
            "Message undeliverable",
        ),
        (
            lambda f: f.permanent(100, "Invalid parameter", "Parameter value is not valid"),
            False,
            "whatsapp_100",
            None,
            "Parameter value is not valid",
        ),
        (
            lambda f: setattr(f, "token", "rotated-token"),
            False,
            "whatsapp_190",
            None,
            "Invalid OAuth access token",
        ),
        (
            lambda f: f.fail_next(Failure(200, raw=b'{"messaging_product":"whatsapp"}')),
            False,
            "bad_response",
            None,
            "without a message id",
        ),
        (
            lambda f: f.fail_next(Failure(404, raw=b"not found")),
            False,
            "http_404",
            None,
            "not found",
        ),
    ],
    ids=[
        "130429",
        "131056",
        "http429",
        "80007",
        "500",
        "503",
        "502-html",
        "131000",
        "131047",
        "131026",
        "100",
        "bad-token",
        "200-no-id",
        "404",
    ],
)
async def test_send_maps_provider_errors(
    fake: FakeWhatsApp,
    arrange: Any,
    retryable: bool,
    code: str,
    retry_after: float | None,
    in_detail: str,
) -> None:
    arrange(fake)
    with pytest.raises(SendError) as err:
        await CHANNEL.send(wa_account(fake.base), TOKEN, outbound())
    e = err.value
    assert (e.retryable, e.code, e.retry_after) == (retryable, code, retry_after), e.detail
    assert in_detail in e.detail


async def test_send_timeouts_and_connection_errors_are_retryable(fake: FakeWhatsApp) -> None:
    fake.delay_next(1.0)
    with pytest.raises(SendError) as err:
        await CHANNEL.send(wa_account(fake.base, timeout_s="0.2"), TOKEN, outbound())
    assert (err.value.retryable, err.value.code) == (True, "timeout")
    with pytest.raises(SendError) as err:
        await CHANNEL.send(wa_account(f"http://127.0.0.1:{free_port()}"), TOKEN, outbound())
    assert (err.value.retryable, err.value.code) == (True, "connection_error")
    with pytest.raises(SendError) as err:
        await CHANNEL.send(wa_account(fake.base), None, outbound())
    assert (err.value.retryable, err.value.code) == (False, "not_configured")


async def test_send_options(fake: FakeWhatsApp) -> None:
    account = wa_account(fake.base + "/", api_version="v23.0", phone_number_id="999")
    # A bare wa_id goes out from the configured number; in_reply_to quotes a message.
    result = await CHANNEL.send(account, TOKEN, outbound(recipient=WA, in_reply_to="wamid.Q"))
    req = fake.requests[-1]
    assert req.path == "/v23.0/999/messages"
    assert req.json()["context"] == {"message_id": "wamid.Q"}
    assert result.provider_id == fake.sent[-1]
    # A conversation address names the number the customer wrote to: reply from it.
    await CHANNEL.send(account, TOKEN, outbound(recipient=f"{PNID}:{WA}"))
    assert fake.requests[-1].path == f"/v23.0/{PNID}/messages"


def test_check_outbound_refuses_what_whatsapp_would() -> None:
    account = wa_account("http://unused")
    now = datetime.now(UTC)
    CHANNEL.check_outbound(account, outbound())
    naive = (now - timedelta(hours=23)).replace(tzinfo=None)  # treated as UTC
    CHANNEL.check_outbound(account, outbound().model_copy(update={"last_inbound_at": naive}))
    cases = {
        "window_closed": [
            outbound().model_copy(update={"last_inbound_at": None}),
            outbound().model_copy(update={"last_inbound_at": now - timedelta(hours=24, seconds=5)}),
        ],
        "text_too_long": [outbound("x" * 4097)],
        "empty_message": [outbound("  ")],
        "attachments_unsupported": [
            outbound(attachments=[Attachment(kind="video", url="https://x/y.mp4")]),
            outbound(attachments=[Attachment(kind="file", file_id="ours")]),
        ],
        "too_many_attachments": [
            outbound(attachments=[Attachment(kind="image", url="https://x/y.jpg")] * 2)
        ],
        "no_recipient": [outbound(recipient="")],
    }
    for code, msgs in cases.items():
        for msg in msgs:
            with pytest.raises(SendError) as err:
                CHANNEL.check_outbound(account, msg)
            assert (err.value.code, err.value.retryable) == (code, False)
    CHANNEL.check_outbound(account, outbound("x" * 4096))
    # One document or image by its link, the text its caption (at most 1024 characters).
    doc = [Attachment(kind="file", url="https://x/d.pdf", name="d.pdf")]
    CHANNEL.check_outbound(account, outbound("", attachments=doc))
    with pytest.raises(SendError) as err:
        CHANNEL.check_outbound(account, outbound("x" * 1025, attachments=doc))
    assert err.value.code == "text_too_long"
    no_number = account.model_copy(update={"settings": {}})
    with pytest.raises(SendError) as err:
        CHANNEL.check_outbound(no_number, outbound(recipient=WA))
    assert err.value.code == "not_configured"


def test_sends_but_has_no_webhook_registration_api() -> None:
    # Registration happens in the Meta App Dashboard (docs/channels/whatsapp.md).
    assert isinstance(CHANNEL, SendingChannel)
    assert not isinstance(CHANNEL, WebhookRegistrar)


# --- shared code ------------------------------------------------------------------------


def test_identity_of_a_bare_wa_id_starting_with_8() -> None:
    keys = identity_keys("whatsapp", ACCOUNT, Sender(external_user_id="819012345678"))
    assert keys == ["phone:+819012345678"]


def test_revoke_becomes_a_deletion_with_its_time() -> None:
    at = int(time.time()) - 30
    revoke = message("wamid.GONE", "revoke", {"original_message_id": "wamid.T"}, timestamp=str(at))
    body = orjson.dumps(envelope(value([revoke])))
    parsed = CHANNEL.read(wa_account("http://127.0.0.1:9"), WebhookRequest("POST", {}, {}, body))
    assert [(d.provider_id, d.deleted_at) for d in parsed.deletions] == [
        ("wamid.T", datetime.fromtimestamp(at, UTC))
    ]
    assert parsed.messages == []
