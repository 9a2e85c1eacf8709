"""The website live chat over real HTTP against the running service (example config,
account ``main-site``): a visitor's message is durable and routed by the seed rules,
retries store once, foreign origins are refused, identity validation, limits, the
offline form on a moved clock and uploads."""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any, Protocol

import aiohttp
import orjson
import pytest

from channels.identity import messenger_key
from channels.webchat import VisitorTokens, WebchatSettings, identifier_verified, parse_prechat
from channels.webchat_limits import RateLimiter
from crm_store import conversations as convs
from crm_store import tokens
from crm_store.documents import intake_id
from inbox.webchat_api import WIDGET
from inbox.webchat_http import CLOCK_ENV
from inbox.webchat_hub import visitor_conversation
from tests.service import Client, InProcess, api_body, config_with, in_process

SECRET = "webchat-identity-key"
os.environ["OMNIROUTE_SECRET_WEBCHAT_MAIN_SITE"] = SECRET
ORIGIN = "https://www.mebel-lux.example"
ACCOUNT = "main-site"


class HasClient(Protocol):
    """A running service as the helpers use it (in this process or a child)."""

    @property
    def client(self) -> Client: ...


EXAMPLE = config_with().account("webchat", ACCOUNT)
assert EXAMPLE is not None
# The example account with an identity-validation key.
MAIN_SITE = EXAMPLE.model_copy(update={"secret_env": "OMNIROUTE_SECRET_WEBCHAT_MAIN_SITE"})
CONFIG = config_with(MAIN_SITE)
PAGE = {
    "url": "https://www.mebel-lux.example/kitchens/modern",
    "referrer": "https://yandex.ru/search/?text=kitchen",
    "title": "Modern kitchens",
    "utm": {"source": "yandex", "medium": "cpc", "campaign": "kitchens-spring"},
}


async def call(
    svc: HasClient,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    token: str | None = None,
    origin: str | None = ORIGIN,
    account: str = ACCOUNT,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = {"Content-Type": "application/json"}
    if origin is not None:
        headers["Origin"] = origin
    if token is not None:
        headers["X-Visitor-Token"] = token
    url = f"{svc.client.base}/webchat/{account}/{path}"
    data = orjson.dumps(body) if body is not None else None
    async with svc.client.http.request(method, url, data=data, headers=headers) as resp:
        raw = await resp.read()
        return resp.status, (orjson.loads(raw) if raw else {}), dict(resp.headers)


async def session(svc: HasClient, **fields: Any) -> dict[str, Any]:
    status, body, headers = await call(svc, "POST", "session", {"page": PAGE, **fields})
    assert status == 200, body
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    return body


async def send(
    svc: HasClient, token: str, client_id: str, text: str = "Do you make kitchens 3.2 m?"
) -> tuple[int, dict[str, Any], dict[str, str]]:
    return await call(
        svc, "POST", "messages", {"client_id": client_id, "text": text, "page": PAGE}, token=token
    )


def ident_hash(identifier: str, key: str = SECRET) -> str:
    return hmac.new(key.encode(), identifier.encode(), hashlib.sha256).hexdigest()


async def test_a_visitor_message_is_stored_once_and_becomes_a_lead_with_the_page(
    mongo_uri: str, db_name: str
) -> None:
    async with in_process(mongo_uri, db_name, CONFIG) as svc:
        s = await session(svc, name="Olga")
        assert s["verified"] is False
        assert s["visitor_token"].startswith(f"v1.{s['visitor_id']}.")
        status, body, headers = await send(svc, s["visitor_token"], "c-1")
        assert status == 200, body
        assert headers["Access-Control-Allow-Origin"] == ORIGIN
        want = intake_id("webchat", ACCOUNT, f"{s['visitor_id']}:c-1")
        assert body == {"ok": True, "id": want, "client_id": "c-1", "duplicate": False}
        # durable before the answer
        assert await svc.store.intake.find_one({"_id": want}) is not None
        # the same client id again (a retry after a network cut): stored once
        status, again, _ = await send(svc, s["visitor_token"], "c-1")
        assert status == 200
        assert again["duplicate"] is True
        assert again["id"] == want
        await svc.routed()
        assert await svc.store.intake.count_documents({"channel": "webchat"}) == 1
        assert await svc.store.messages.count_documents({"channel": "webchat"}) == 1
        msg = await svc.store.messages.find_one({"_id": want})
        assert msg is not None
        lead = await svc.store.leads.find_one({"contact_id": msg["contact_id"]})
        assert lead is not None
        assert lead["source_id"] == "site"
        assert lead["pipeline_id"] == "leads"
        assert lead["responsible_id"] is not None
        assert lead["meta"]["page_url"] == PAGE["url"]
        assert lead["meta"]["referrer"] == PAGE["referrer"]
        assert lead["meta"]["utm_campaign"] == "kitchens-spring"
        conv = await svc.store.conversations.find_one({"_id": msg["conversation_id"]})
        assert conv is not None
        assert conv["reply_to"] == f"visitor:{s['visitor_id']}"
        assert conv["_id"] == visitor_conversation(ACCOUNT, s["visitor_id"])
        # a token kept by the page continues the same visitor
        again_s = await session(svc, visitor_token=s["visitor_token"])
        assert again_s["visitor_id"] == s["visitor_id"]


async def test_a_foreign_origin_is_refused_everywhere_and_preflight_answers_the_allowed(
    mongo_uri: str, db_name: str
) -> None:
    async with in_process(mongo_uri, db_name, CONFIG) as svc:
        for path, method in (("session", "POST"), ("config", "GET"), ("messages", "POST")):
            status, body, headers = await call(svc, method, path, {}, origin="https://evil.example")
            assert status == 403, (path, body)
            assert body["code"] == "origin_not_allowed"
            assert "Access-Control-Allow-Origin" not in headers
        status, body, _ = await call(svc, "POST", "session", {}, origin=None)
        assert status == 403
        assert body["code"] == "origin_not_allowed"
        url = f"{svc.client.base}/webchat/{ACCOUNT}/messages"
        pre = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
        async with svc.client.http.options(url, headers=pre) as resp:
            assert resp.status == 204
            assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
            assert "X-Visitor-Token" in resp.headers["Access-Control-Allow-Headers"]
            assert "Access-Control-Allow-Credentials" not in resp.headers
        async with svc.client.http.options(url, headers={"Origin": "https://evil.example"}) as r:
            assert r.status == 403
        # the WebSocket upgrade is refused before it happens
        s = await session(svc)
        ws_url = f"{svc.client.base}/webchat/{ACCOUNT}/ws?token={s['visitor_token']}"
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await svc.client.http.ws_connect(ws_url, headers={"Origin": "https://evil.example"})
        assert refused.value.status == 403
        assert await svc.store.intake.count_documents({}) == 0


async def test_identity_validation_wrong_hash_is_anonymous_right_one_joins_the_contact(
    mongo_uri: str, db_name: str
) -> None:
    async with in_process(mongo_uri, db_name, CONFIG) as svc:
        status, _ = await svc.client.post_api(api_body("form-1", phone="+79005550101", name="Ira"))
        assert status == 200
        await svc.routed()
        known = await svc.store.contacts.find_one({"identities": "phone:+79005550101"})
        assert known is not None

        wrong = await session(
            svc, identifier="user-42", identifier_hash=ident_hash("user-42", "not-the-key")
        )
        assert wrong["verified"] is False
        assert (await send(svc, wrong["visitor_token"], "w-1"))[0] == 200

        right = await session(
            svc,
            identifier="user-42",
            identifier_hash=ident_hash("user-42"),
            phone="8 (900) 555-01-01",
            email="ira@example.ru",
        )
        assert right["verified"] is True
        assert (await send(svc, right["visitor_token"], "r-1"))[0] == 200
        await svc.routed()

        anon = await svc.store.messages.find_one(
            {"_id": intake_id("webchat", ACCOUNT, f"{wrong['visitor_id']}:w-1")}
        )
        assert anon is not None
        assert anon["contact_id"] != known["_id"]
        joined = await svc.store.messages.find_one(
            {"_id": intake_id("webchat", ACCOUNT, f"{right['visitor_id']}:r-1")}
        )
        assert joined is not None
        assert joined["contact_id"] == known["_id"]
        contact = await svc.store.contacts.find_one({"_id": known["_id"]})
        assert contact is not None
        assert messenger_key("webchat", ACCOUNT, "id:user-42") in contact["identities"]
        assert "email:ira@example.ru" in contact["identities"]
        anon_contact = await svc.store.contacts.find_one({"_id": anon["contact_id"]})
        assert anon_contact is not None
        assert messenger_key("webchat", ACCOUNT, "id:user-42") not in anon_contact["identities"]


async def test_unverified_prechat_phone_routes_to_the_contact_but_the_feed_is_only_the_chat(
    mongo_uri: str, db_name: str
) -> None:
    async with in_process(mongo_uri, db_name, CONFIG) as svc:
        secret_text = "Order 77: kitchen, 480 000 rub, delivery to Tverskaya 5"
        status, _ = await svc.client.post_api(
            api_body("form-2", phone="+79005550202", name="Pavel", text=secret_text)
        )
        assert status == 200
        await svc.routed()
        known = await svc.store.contacts.find_one({"identities": "phone:+79005550202"})
        assert known is not None
        s = await session(svc, phone="+7 900 555 02 02", name="Pavel?")
        assert s["verified"] is False
        assert (await send(svc, s["visitor_token"], "p-1", "hello"))[0] == 200
        await svc.routed()
        mine = await svc.store.messages.find_one(
            {"_id": intake_id("webchat", ACCOUNT, f"{s['visitor_id']}:p-1")}
        )
        assert mine is not None
        assert mine["contact_id"] == known["_id"]
        # an operator note in the visitor's own conversation is not shown either
        note = {"text": "customer owes us 10 000"}
        conv = await svc.store.conversations.find_one({"_id": mine["conversation_id"]})
        assert conv is not None
        await convs.add_note(svc.store, conv, note["text"], "anna.smirnova")
        status, feed, _ = await call(svc, "GET", "feed?after=0", token=s["visitor_token"])
        assert status == 200, feed
        assert [(i["type"], i["direction"], i["client_id"]) for i in feed["items"]] == [
            ("message", "in", "p-1")
        ]
        assert secret_text not in orjson.dumps(feed).decode()
        assert note["text"] not in orjson.dumps(feed).decode()


async def test_text_limit_rate_limits_and_an_invalid_token(mongo_uri: str, db_name: str) -> None:
    tight = MAIN_SITE.model_copy(
        update={
            "settings": {
                **MAIN_SITE.settings,
                "messages_per_minute": 3,
                "requests_per_minute_ip": 12,
            }
        }
    )
    async with in_process(mongo_uri, db_name, config_with(tight)) as svc:
        s = await session(svc)  # request 1
        token = s["visitor_token"]
        status, body, _ = await send(svc, token, "long", "x" * 4001)  # 2
        assert status == 413
        assert body["code"] == "text_too_long"
        assert "4000" in body["detail"]
        status, body, _ = await send(svc, "v1.0123.bad", "t-0")  # 3
        assert status == 401
        assert body["code"] == "invalid_token"
        for i in range(2):  # 4, 5 (the long one counted as the first message)
            assert (await send(svc, token, f"t-{i}"))[0] == 200
        status, body, headers = await send(svc, token, "t-3")  # 6
        assert status == 429
        assert body["code"] == "rate_limited"
        assert int(headers["Retry-After"]) >= 1
        assert headers["Access-Control-Allow-Origin"] == ORIGIN
        # another visitor on the same address still writes, until the address limit
        other = (await session(svc))["visitor_token"]  # 7
        for i in range(5):  # 8..12
            assert (await send(svc, other, f"o-{i}"))[0] in (200, 429)
        status, body, _ = await call(svc, "GET", "config")  # 13
        assert status == 429
        assert await svc.store.intake.count_documents({"channel": "webchat"}) == 5


async def test_config_and_the_offline_form_on_a_saturday(
    mongo_uri: str, db_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Saturday 17 May 2025, 12:00 Moscow: the next working start is Monday 09:00 MSK.
    monkeypatch.setenv(CLOCK_ENV, "2025-05-17T12:00:00+03:00")
    async with in_process(mongo_uri, db_name, CONFIG) as svc:
        status, cfg, _ = await call(svc, "GET", "config?lang=en")
        assert status == 200
        assert cfg["online"] is False
        assert cfg["next_open_at"] == "2025-05-19T06:00:00+00:00"
        assert cfg["greeting"] == "Hello! How can we help?"
        assert cfg["offline_text"].startswith("We are offline")
        assert cfg["limits"] == {"text_max": 4000, "upload_max_bytes": 10485760}
        assert {"field": "phone", "required": False} in cfg["prechat"]
        status, cfg_ru, _ = await call(svc, "GET", "config?lang=ru")
        assert cfg_ru["greeting"] == "Здравствуйте! Чем помочь?"

        s = await session(svc)
        status, body, _ = await call(
            svc,
            "POST",
            "offline",
            {"client_id": "off-1", "text": "call me"},
            token=s["visitor_token"],
        )
        assert status == 422
        assert body["code"] == "contact_required"
        status, body, _ = await call(
            svc,
            "POST",
            "offline",
            {
                "client_id": "off-1",
                "text": "Need a wardrobe",
                "name": "Ivan",
                "phone": "+79005550303",
            },
            token=s["visitor_token"],
        )
        assert status == 200, body
        assert body["ok"] is True
        assert body["duplicate"] is False
        assert body["answer_expected_at"] == "2025-05-19T06:00:00+00:00"
        await svc.routed()
        msg = await svc.store.messages.find_one({"_id": body["id"]})
        assert msg is not None
        lead = await svc.store.leads.find_one({"contact_id": msg["contact_id"]})
        assert lead is not None
        assert lead["meta"]["offline_form"] is True
        contact = await svc.store.contacts.find_one({"_id": msg["contact_id"]})
        assert contact is not None
        assert "phone:+79005550303" in contact["identities"]


async def test_config_in_working_hours_without_an_operator_online_is_offline(
    mongo_uri: str, db_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CLOCK_ENV, "2025-05-19T10:00:00+03:00")  # Monday 10:00
    async with in_process(mongo_uri, db_name, CONFIG) as svc:
        status, cfg, _ = await call(svc, "GET", "config")
        assert status == 200
        assert cfg["online"] is False
        assert cfg["next_open_at"] is None
        token, _ = await tokens.issue(svc.store, "anna.smirnova")  # on the sales line
        async with svc.client.http.ws_connect(f"{svc.client.base}/api/v1/ws?token={token}") as ws:
            await ws.receive(timeout=10)  # the first cursor frame: joined
            _status, cfg, _ = await call(svc, "GET", "config")
            assert cfg["online"] is True


PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00" * 40


async def upload(
    svc: InProcess, token: str, data: bytes, name: str, mime: str
) -> tuple[int, dict[str, Any]]:
    form = aiohttp.FormData()
    form.add_field("file", data, filename=name, content_type=mime)
    async with svc.client.http.post(
        f"{svc.client.base}/webchat/{ACCOUNT}/uploads",
        data=form,
        headers={"Origin": ORIGIN, "X-Visitor-Token": token},
    ) as resp:
        return resp.status, orjson.loads(await resp.read())


async def test_uploads_type_and_size_checks_and_an_attachment_in_the_feed(
    mongo_uri: str, db_name: str
) -> None:
    async with in_process(mongo_uri, db_name, CONFIG) as svc:
        s = await session(svc)
        token = s["visitor_token"]
        status, up = await upload(svc, token, PNG, "kitchen.png", "image/png")
        assert status == 200, up
        assert up["mime_type"] == "image/png"
        assert up["size"] == len(PNG)
        # an executable calling itself a PNG, and a type not on the list
        assert (await upload(svc, token, b"MZ\x90\x00" * 10, "x.png", "image/png"))[0] == 415
        assert (await upload(svc, token, b"<svg/>", "x.svg", "image/svg+xml"))[0] == 415
        big = PNG + b"\x00" * (10 * 1024 * 1024)
        assert (await upload(svc, token, big, "big.png", "image/png"))[0] == 413
        # another visitor cannot attach this visitor's upload
        other = (await session(svc))["visitor_token"]
        status, body, _ = await call(
            svc,
            "POST",
            "messages",
            {"client_id": "a-0", "text": "", "attachments": [{"file_id": up["file_id"]}]},
            token=other,
        )
        assert status == 422
        assert body["code"] == "unknown_file"
        status, body, _ = await call(
            svc,
            "POST",
            "messages",
            {"client_id": "a-1", "text": "my kitchen", "attachments": [{"file_id": up["file_id"]}]},
            token=token,
        )
        assert status == 200, body
        await svc.routed()
        status, feed, _ = await call(svc, "GET", "feed?after=0", token=token)
        [item] = feed["items"]
        [att] = item["attachments"]
        assert att["name"] == "kitchen.png"
        assert att["mime_type"] == "image/png"
        async with svc.client.http.get(att["url"]) as resp:
            assert resp.status == 200
            assert await resp.read() == PNG


async def test_a_misconfigured_account_and_the_webhook_door_are_refused(
    mongo_uri: str, db_name: str
) -> None:
    broken = MAIN_SITE.model_copy(
        update={"account": "broken", "settings": {"origins": "www.example.ru", "position": "up"}}
    )
    async with in_process(mongo_uri, db_name, config_with(MAIN_SITE, broken)) as svc:
        status, body, _ = await call(svc, "GET", "config", account="broken")
        assert status == 500
        assert body["code"] == "account_misconfigured"
        assert "www.example.ru" in body["detail"]
        status, body, _ = await call(svc, "GET", "config", account="nobody")
        assert status == 404
        # a visitor message never comes through the webhook route
        envelope = {"visitor_id": "0" * 32, "client_id": "x", "text": "forged"}
        async with svc.client.http.post(
            f"{svc.client.base}/webhooks/webchat/{ACCOUNT}", data=orjson.dumps(envelope)
        ) as resp:
            assert resp.status == 403
        assert await svc.store.intake.count_documents({}) == 0


async def test_the_widget_script_is_served_as_is(mongo_uri: str, db_name: str) -> None:
    async with in_process(mongo_uri, db_name, CONFIG) as svc:
        status, _ = await svc.client.get("/widget/nobody.js")
        assert status == 404
        if not WIDGET.is_file():
            pytest.skip("inbox/web/widget.js is not there yet")
        async with svc.client.http.get(f"{svc.client.base}/widget/{ACCOUNT}.js") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "text/javascript; charset=utf-8"
            assert resp.headers["Cache-Control"] == "public, max-age=300"
            assert await resp.read() == WIDGET.read_bytes()


# --- the pure parts ---------------------------------------------------------------------


def test_visitor_tokens_are_bound_to_the_key_and_the_id() -> None:
    tokens_a, tokens_b = VisitorTokens(b"k" * 32), VisitorTokens(b"j" * 32)
    vid, token = tokens_a.issue()
    assert token.startswith(f"v1.{vid}.")
    assert tokens_a.visitor(token) == vid
    assert tokens_a.issue(vid) == (vid, token)  # a kept token keeps its visitor
    assert tokens_b.visitor(token) is None  # another key
    other = "f" * 32
    assert tokens_a.visitor(f"v1.{other}.{token.split('.')[2]}") is None  # another id
    for bad in ("", "v1", f"v2.{vid}.x", f"v1.{vid}", "v1.ZZ.x", f"v1.{vid}.{'é' * 43}"):
        assert tokens_a.visitor(bad) is None, bad


def test_identifier_hash_is_hex_hmac_of_the_identifier_under_the_secret() -> None:
    good = ident_hash("user-42")
    assert identifier_verified(SECRET, "user-42", good)
    assert identifier_verified(SECRET, "user-42", good.upper())
    assert not identifier_verified(SECRET, "user-43", good)
    assert not identifier_verified("other", "user-42", good)
    assert not identifier_verified(None, "user-42", good)
    assert not identifier_verified(SECRET, "user-42", None)
    assert not identifier_verified(SECRET, "user-42", "ж" * 64)


def test_settings_prechat_and_origins() -> None:
    assert [
        (p.field, p.required) for p in parse_prechat("name:optional phone:required email:off")
    ] == [
        ("name", False),
        ("phone", True),
    ]
    for bad in ("name", "age:required", "phone:maybe"):
        with pytest.raises(ValueError, match="prechat item"):
            parse_prechat(bad)
    s = WebchatSettings.of(MAIN_SITE)
    assert s.allows(ORIGIN)
    assert s.allows(ORIGIN + "/")
    assert not s.allows("https://www.mebel-lux.example.evil.ru")
    assert not s.allows(None)
    wild = MAIN_SITE.model_copy(update={"settings": {"origins": "https://*.example.ru"}})
    with pytest.raises(ValueError, match="origin"):
        WebchatSettings.of(wild)


def test_rate_limiter_window() -> None:
    limiter = RateLimiter(window_s=60.0)
    assert [limiter.hit("k", 2, t) for t in (0.0, 1.0)] == [None, None]
    assert limiter.hit("k", 2, 2.0) == 58  # until the first hit leaves the window
    assert limiter.hit("other", 2, 2.0) is None
    assert limiter.hit("k", 2, 60.0) is None  # the first one left
    assert limiter.hit("k", 2, 60.5) == 1
