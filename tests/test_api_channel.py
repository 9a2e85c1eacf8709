"""The generic API channel over real HTTP: authentication, validation, limits, metrics, logs.

Every refusal must store nothing: a refused request leaves ``intake`` and ``messages`` empty.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from structlog.testing import capture_logs

from channels.api import MAX_SKEW_S, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from crm_store.documents import intake_id
from tests.service import ACCOUNT_SECRET, InProcess, api_body, in_process, signed_headers

SITE_SECRET = ACCOUNT_SECRET["site"]
SHOP_SECRET = ACCOUNT_SECRET["shop"]
LIMIT = 1024 * 1024  # the example accounts' max_body_bytes
PROBLEM = "application/problem+json"


async def post_raw(
    svc: InProcess,
    body: bytes | Any,
    headers: dict[str, str],
    path: str = "/webhooks/api/site",
) -> tuple[int, str, dict[str, Any]]:
    """POST exactly these bytes (or this async iterator: chunked) with exactly these headers."""
    async with svc.client.http.post(f"{svc.client.base}{path}", data=body, headers=headers) as r:
        raw = await r.read()
        return r.status, r.content_type, (orjson.loads(raw) if raw else {})


async def assert_nothing_stored(svc: InProcess) -> None:
    assert await svc.store.intake.count_documents({}) == 0
    assert await svc.store.messages.count_documents({}) == 0
    assert await svc.store.contacts.count_documents({}) == 0
    assert await svc.store.leads.count_documents({}) == 0


def assert_problem(status: int, ctype: str, body: dict[str, Any], want: int, code: str) -> None:
    assert (status, ctype) == (want, PROBLEM), body
    assert body["status"] == want
    assert body["code"] == code
    assert body["type"] == f"urn:omniroute:error:{code}"
    assert body["detail"]


async def assert_kept_unparsed(svc: InProcess, count: int = 1) -> None:
    """An authentic invalid body: kept as an unparsed intake record, nothing routed."""
    assert await svc.store.intake.count_documents({"status": "unparsed"}) == count
    assert await svc.store.intake.count_documents({}) == count
    assert await svc.store.messages.count_documents({}) == 0
    assert await svc.store.contacts.count_documents({}) == 0
    assert await svc.store.leads.count_documents({}) == 0


def assert_invalid(status: int, ctype: str, body: dict[str, Any]) -> None:
    """The answer to an authentic invalid body: 200 (the body is kept, a retry would
    change nothing) with ``ok: false`` and every field error, never exception text."""
    assert (status, ctype) == (200, "application/json"), body
    assert body["ok"] is False
    assert (body["code"], body["accepted"]) == ("invalid_payload", [])
    assert body["detail"]
    assert body["errors"]
    for e in body["errors"]:
        assert e["field"]
        assert e["message"]
        assert e["type"]
    assert not re.search(
        r"[A-Za-z]+(Error|Exception)\b|Traceback|line \d+", orjson.dumps(body).decode()
    )


def body_bytes(**kw: Any) -> bytes:
    return orjson.dumps(api_body("e-1", phone="+79001234567", **kw))


# --- authentication --------------------------------------------------------------------


@pytest.mark.parametrize(
    "drop",
    [(TIMESTAMP_HEADER,), (SIGNATURE_HEADER,), (TIMESTAMP_HEADER, SIGNATURE_HEADER)],
    ids=["no_timestamp", "no_signature", "neither"],
)
async def test_missing_signature_headers_are_401(
    mongo_uri: str, db_name: str, drop: tuple[str, ...]
) -> None:
    async with in_process(mongo_uri, db_name) as svc:
        raw = body_bytes()
        headers = {k: v for k, v in signed_headers(SITE_SECRET, raw).items() if k not in drop}
        assert_problem(*await post_raw(svc, raw, headers), 401, "unauthorized")
        await assert_nothing_stored(svc)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda sig: sig[:-1] + ("0" if sig[-1] != "0" else "1"),  # one hex digit off
        lambda sig: sig.removeprefix("sha256="),  # bare hex
        lambda sig: sig.upper(),
        lambda sig: "sha256=",
        lambda sig: "sha1=" + sig.removeprefix("sha256=")[:40],
    ],
    ids=["digit", "no_prefix", "upper", "empty_hex", "sha1"],
)
async def test_wrong_signature_is_401(mongo_uri: str, db_name: str, mangle: Any) -> None:
    async with in_process(mongo_uri, db_name) as svc:
        raw = body_bytes()
        headers = signed_headers(SITE_SECRET, raw)
        headers[SIGNATURE_HEADER] = mangle(headers[SIGNATURE_HEADER])
        status, ctype, body = await post_raw(svc, raw, headers)
        assert_problem(status, ctype, body, 401, "unauthorized")
        assert "signature" in body["detail"]
        await assert_nothing_stored(svc)


async def test_signature_over_another_body_is_401(mongo_uri: str, db_name: str) -> None:
    async with in_process(mongo_uri, db_name) as svc:
        raw = body_bytes()
        headers = signed_headers(SITE_SECRET, body_bytes(text="something else"))
        assert_problem(*await post_raw(svc, raw, headers), 401, "unauthorized")
        await assert_nothing_stored(svc)


async def test_signature_with_another_accounts_secret_is_401(mongo_uri: str, db_name: str) -> None:
    async with in_process(mongo_uri, db_name) as svc:
        raw = body_bytes()
        # Signed correctly for "shop", sent to "site" — and the other way round.
        site = await post_raw(svc, raw, signed_headers(SHOP_SECRET, raw), "/webhooks/api/site")
        shop = await post_raw(svc, raw, signed_headers(SITE_SECRET, raw), "/webhooks/api/shop")
        assert_problem(*site, 401, "unauthorized")
        assert_problem(*shop, 401, "unauthorized")
        await assert_nothing_stored(svc)


@pytest.mark.parametrize(
    "offset",
    [MAX_SKEW_S + 5, -(MAX_SKEW_S + 5), 3600, -86400],
    ids=["future", "past", "hour_ahead", "day_old"],
)
async def test_timestamp_skew_over_five_minutes_is_401(
    mongo_uri: str, db_name: str, offset: int
) -> None:
    async with in_process(mongo_uri, db_name) as svc:
        raw = body_bytes()
        # Correctly signed, only too far from the server clock: a replay.
        headers = signed_headers(SITE_SECRET, raw, ts=int(time.time()) + offset)
        status, ctype, body = await post_raw(svc, raw, headers)
        assert_problem(status, ctype, body, 401, "unauthorized")
        assert "5 minutes" in body["detail"]
        await assert_nothing_stored(svc)


@pytest.mark.parametrize("offset", [MAX_SKEW_S - 20, -(MAX_SKEW_S - 20)], ids=["ahead", "behind"])
async def test_timestamp_within_five_minutes_is_accepted(
    mongo_uri: str, db_name: str, offset: int
) -> None:
    async with in_process(mongo_uri, db_name) as svc:
        raw = body_bytes()
        headers = signed_headers(SITE_SECRET, raw, ts=int(time.time()) + offset)
        status, _, body = await post_raw(svc, raw, headers)
        assert status == 200, body
        assert body["accepted"] == [intake_id("api", "site", "e-1")]


@pytest.mark.parametrize("stamp", ["12.5", "soon", "0x10", "", " ", "1e9", "NaN"])
async def test_non_integer_timestamp_is_401(mongo_uri: str, db_name: str, stamp: str) -> None:
    async with in_process(mongo_uri, db_name) as svc:
        raw = body_bytes()
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: stamp,
            SIGNATURE_HEADER: sign(SITE_SECRET, stamp, raw),
        }
        assert_problem(*await post_raw(svc, raw, headers), 401, "unauthorized")
        await assert_nothing_stored(svc)


async def test_account_without_its_secret_in_the_environment_is_401(
    mongo_uri: str, db_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OMNIROUTE_SECRET_API_SITE")
    async with in_process(mongo_uri, db_name) as svc:
        raw = body_bytes()
        # Signed with the empty secret: must not open the door either.
        for secret in (SITE_SECRET, ""):
            assert_problem(
                *await post_raw(svc, raw, signed_headers(secret, raw)), 401, "unauthorized"
            )
        await assert_nothing_stored(svc)


# --- validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"not json", b'{"external_id": "x",}', b"\xff\xfe{}", b"{}{}"],
    ids=["empty", "truncated", "text", "trailing_comma", "bad_utf8", "two_objects"],
)
async def test_invalid_json_is_kept_and_answered_with_its_error(
    mongo_uri: str, db_name: str, raw: bytes
) -> None:
    async with in_process(mongo_uri, db_name) as svc:
        status, ctype, body = await post_raw(svc, raw, signed_headers(SITE_SECRET, raw))
        assert_invalid(status, ctype, body)
        assert [e["field"] for e in body["errors"]] == ["body"]
        # The integration's retry of the same body is kept once.
        assert_invalid(*await post_raw(svc, raw, signed_headers(SITE_SECRET, raw)))
        await assert_kept_unparsed(svc)


def _without(key: str) -> dict[str, Any]:
    b = api_body("e-1", phone="+79001234567")
    del b[key]
    return b


SCHEMA_ERRORS: list[tuple[str, dict[str, Any], str]] = [
    ("no_sender", _without("sender"), "sender"),
    ("no_external_id", _without("external_id"), "external_id"),
    ("empty_external_id", {**api_body("", phone="+79001234567")}, "external_id"),
    ("long_external_id", api_body("x" * 257, phone="+79001234567"), "external_id"),
    ("external_id_number", {**api_body("e", phone="1"), "external_id": 5}, "external_id"),
    ("sender_string", {**api_body("e", phone="1"), "sender": "+79001234567"}, "sender"),
    (
        "attachment_size",
        {**api_body("e", phone="1"), "attachments": [{"url": "https://x/a.pdf", "size": -1}]},
        "attachments.0.size",
    ),
    (
        "attachment_unknown_key",
        {**api_body("e", phone="1"), "attachments": [{"kind": "file", "colour": "red"}]},
        "attachments.0.colour",
    ),
    ("sent_at", {**api_body("e", phone="1"), "sent_at": "yesterday"}, "sent_at"),
    ("text_type", {**api_body("e", phone="1"), "text": ["a"]}, "text"),
    ("text_too_long", api_body("e", phone="1", text="x" * 65537), "text"),
    ("unknown_field", {**api_body("e", phone="1"), "priority": "high"}, "priority"),
    (
        "unknown_sender_field",
        {**api_body("e", phone="1"), "sender": {"phone": "1", "telegram": "@x"}},
        "sender.telegram",
    ),
    ("not_an_object", [api_body("e", phone="1")], "body"),  # type: ignore[list-item]
]


@pytest.mark.parametrize(
    ("payload", "field"),
    [(p, f) for _, p, f in SCHEMA_ERRORS],
    ids=[i for i, _, _ in SCHEMA_ERRORS],
)
async def test_schema_errors_are_kept_and_answered_naming_the_field(
    mongo_uri: str, db_name: str, payload: Any, field: str
) -> None:
    async with in_process(mongo_uri, db_name) as svc:
        raw = orjson.dumps(payload)
        status, ctype, body = await post_raw(svc, raw, signed_headers(SITE_SECRET, raw))
        assert_invalid(status, ctype, body)
        fields = [e["field"] for e in body["errors"]]
        assert field in fields, body["errors"]
        await assert_kept_unparsed(svc)
        kept = await svc.store.intake.find_one({"status": "unparsed"})
        assert kept is not None
        assert field in kept["error"]  # `omniroute intake list` shows the field


@pytest.mark.parametrize(
    "sender",
    [{}, {"name": "Ivan"}, {"phone": "", "email": "", "external_user_id": ""}, {"phone": None}],
    ids=["empty", "name_only", "empty_strings", "null_phone"],
)
async def test_sender_without_any_identity_is_kept_unparsed(
    mongo_uri: str, db_name: str, sender: dict[str, Any]
) -> None:
    async with in_process(mongo_uri, db_name) as svc:
        raw = orjson.dumps({"external_id": "e-1", "sender": sender, "text": "hello"})
        status, ctype, body = await post_raw(svc, raw, signed_headers(SITE_SECRET, raw))
        assert_invalid(status, ctype, body)
        assert any("sender" in e["message"] for e in body["errors"]), body["errors"]
        await assert_kept_unparsed(svc)


@pytest.mark.parametrize(
    ("sender", "field"),
    [
        ({"phone": "call me back"}, "sender.phone"),
        ({"email": "n/a"}, "sender.email"),
        ({"phone": "-", "email": "none"}, "sender.phone"),
    ],
    ids=["phone", "email", "both"],
)
async def test_sender_with_only_unusable_identities_is_kept_unparsed(
    mongo_uri: str, db_name: str, sender: dict[str, Any], field: str
) -> None:
    async with in_process(mongo_uri, db_name) as svc:
        raw = orjson.dumps({"external_id": "e-1", "sender": sender, "text": "hello"})
        status, ctype, body = await post_raw(svc, raw, signed_headers(SITE_SECRET, raw))
        await svc.routed()
        assert_invalid(status, ctype, body)
        assert field in [e["field"] for e in body["errors"]]
        await assert_kept_unparsed(svc)


async def test_message_without_text_or_attachments_is_kept_unparsed(
    mongo_uri: str, db_name: str
) -> None:
    async with in_process(mongo_uri, db_name) as svc:
        raw = orjson.dumps(api_body("e-1", phone="+79001234567", text="   "))
        status, ctype, body = await post_raw(svc, raw, signed_headers(SITE_SECRET, raw))
        assert_invalid(status, ctype, body)
        await assert_kept_unparsed(svc)


# --- size limit ------------------------------------------------------------------------


def padded(size: int) -> bytes:
    """A valid message body of exactly ``size`` bytes (JSON whitespace as padding)."""
    raw = body_bytes()
    assert len(raw) <= size
    return raw + b" " * (size - len(raw))


async def test_body_over_one_mib_is_413(mongo_uri: str, db_name: str) -> None:
    async with in_process(mongo_uri, db_name) as svc:
        raw = padded(LIMIT + 1)
        status, ctype, body = await post_raw(svc, raw, signed_headers(SITE_SECRET, raw))
        assert_problem(status, ctype, body, 413, "body_too_large")
        await assert_nothing_stored(svc)


async def test_much_larger_body_is_413(mongo_uri: str, db_name: str) -> None:
    async with in_process(mongo_uri, db_name) as svc:
        raw = padded(8 * LIMIT)
        assert_problem(
            *await post_raw(svc, raw, signed_headers(SITE_SECRET, raw)), 413, "body_too_large"
        )
        await assert_nothing_stored(svc)


async def test_body_of_exactly_one_mib_is_accepted(mongo_uri: str, db_name: str) -> None:
    async with in_process(mongo_uri, db_name) as svc:
        raw = padded(LIMIT)
        status, _, body = await post_raw(svc, raw, signed_headers(SITE_SECRET, raw))
        assert status == 200, body
        assert body["accepted"] == [intake_id("api", "site", "e-1")]


async def _chunks(raw: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for i in range(0, len(raw), size):
        yield raw[i : i + size]


@pytest.mark.parametrize("size", [LIMIT + 1, 3 * LIMIT])
async def test_chunked_body_over_one_mib_is_413(mongo_uri: str, db_name: str, size: int) -> None:
    """No Content-Length to trust: the limit is enforced while reading."""
    async with in_process(mongo_uri, db_name) as svc:
        raw = padded(size)
        headers = signed_headers(SITE_SECRET, raw)
        captured: list[str] = []

        async def on_request_headers(
            _s: aiohttp.ClientSession, _c: Any, params: aiohttp.TraceRequestHeadersSentParams
        ) -> None:
            captured.append(params.headers.get("Transfer-Encoding", ""))

        trace = aiohttp.TraceConfig()
        trace.on_request_headers_sent.append(on_request_headers)
        async with (
            aiohttp.ClientSession(trace_configs=[trace]) as http,
            http.post(
                f"{svc.client.base}/webhooks/api/site", data=_chunks(raw), headers=headers
            ) as r,
        ):
            status, ctype, body = r.status, r.content_type, orjson.loads(await r.read())
        assert captured == ["chunked"]
        assert_problem(status, ctype, body, 413, "body_too_large")
        await assert_nothing_stored(svc)


async def test_chunked_body_within_the_limit_is_accepted(mongo_uri: str, db_name: str) -> None:
    async with in_process(mongo_uri, db_name) as svc:
        raw = padded(200_000)
        status, _, body = await post_raw(svc, _chunks(raw), signed_headers(SITE_SECRET, raw))
        assert status == 200, body
        assert body["accepted"] == [intake_id("api", "site", "e-1")]


# --- routing table ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/webhooks/telegram/site", "unknown_channel_account"),  # no such account there
        ("/webhooks/nochannel/site", "unknown_channel_account"),  # no such channel module
        ("/webhooks/email/sales", "no_webhooks"),  # a channel that has no webhooks (IMAP)
        ("/webhooks/api/nobody", "unknown_channel_account"),  # no such account
        ("/webhooks/api/SITE", "unknown_channel_account"),  # ids are case-sensitive
    ],
    ids=["channel", "channel_without_module", "channel_without_webhooks", "account", "case"],
)
async def test_unknown_channel_or_account_is_404(
    mongo_uri: str, db_name: str, path: str, code: str
) -> None:
    async with in_process(mongo_uri, db_name) as svc:
        raw = body_bytes()
        status, ctype, body = await post_raw(svc, raw, signed_headers(SITE_SECRET, raw), path)
        assert_problem(status, ctype, body, 404, code)
        await assert_nothing_stored(svc)


# --- acceptance ------------------------------------------------------------------------


async def test_accepted_response_lists_ids_and_a_retry_is_a_duplicate(
    mongo_uri: str, db_name: str
) -> None:
    async with in_process(mongo_uri, db_name) as svc:
        mid = intake_id("api", "site", "e-1")
        status, body = await svc.client.post_api(api_body("e-1", phone="+79001234567"))
        assert (status, body) == (200, {"ok": True, "accepted": [mid], "duplicates": []})
        status, body = await svc.client.post_api(api_body("e-1", phone="+79001234567"))
        assert (status, body) == (200, {"ok": True, "accepted": [], "duplicates": [mid]})
        await svc.routed()
        assert await svc.store.intake.count_documents({}) == 1
        assert await svc.store.messages.count_documents({"_id": mid}) == 1


async def test_same_external_id_on_two_accounts_is_two_messages(
    mongo_uri: str, db_name: str
) -> None:
    async with in_process(mongo_uri, db_name) as svc:
        _, site = await svc.client.post_api(api_body("e-1", phone="+79001234567"))
        _, shop = await svc.client.post_api(api_body("e-1", phone="+79001234567"), account="shop")
        assert site["accepted"] == [intake_id("api", "site", "e-1")]
        assert shop["accepted"] == [intake_id("api", "shop", "e-1")]
        assert site["accepted"] != shop["accepted"]
        await svc.routed()


async def test_accepted_message_is_stored_as_sent(mongo_uri: str, db_name: str) -> None:
    async with in_process(mongo_uri, db_name) as svc:
        payload = {
            **api_body("e-7", email="Buyer@Example.com", name="Ivan", thread_id="t-1"),
            "sent_at": "2026-11-20T10:00:00+03:00",
            "attachments": [{"kind": "image", "url": "https://x/y.png", "size": 10}],
        }
        status, body = await svc.client.post_api(payload)
        assert status == 200
        [mid] = body["accepted"]
        rec = await svc.store.intake.find_one({"_id": mid})
        assert rec is not None
        assert (rec["channel"], rec["account"], rec["provider_id"], rec["source_id"]) == (
            "api",
            "site",
            "e-7",
            "site",
        )
        assert rec["message"]["thread_id"] == "t-1"
        assert rec["message"]["sender"]["email"] == "Buyer@Example.com"
        assert rec["message"]["attachments"][0]["size"] == 10
        await svc.routed()
        msg = await svc.store.messages.find_one({"_id": mid})
        assert msg is not None
        assert msg["identities"] == ["email:buyer@example.com"]


# --- health and metrics ----------------------------------------------------------------


async def test_health_endpoints(mongo_uri: str, db_name: str) -> None:
    async with in_process(mongo_uri, db_name) as svc:
        status, body = await svc.client.get("/healthz")
        assert (status, orjson.loads(body)) == (200, {"status": "ok"})
        status, body = await svc.client.get("/readyz")
        assert (status, orjson.loads(body)) == (200, {"status": "ready"})


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text exposition (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if want else "") + r" (\S+)$"
    for line in text.splitlines():
        if m := re.match(pattern, line):
            return float(m.group(1))
    return 0.0


async def test_metrics_count_accepted_and_rejected(mongo_uri: str, db_name: str) -> None:
    async with in_process(mongo_uri, db_name) as svc:

        async def scrape() -> str:
            status, body = await svc.client.get("/metrics")
            assert status == 200
            return body.decode()

        def intake(text: str, outcome: str) -> float:
            return metric(text, "omniroute_intake_total", channel="api", outcome=outcome)

        text = await scrape()
        assert "# TYPE omniroute_intake_total counter" in text
        assert "# TYPE omniroute_routing_latency_seconds histogram" in text
        assert intake(text, "accepted") == intake(text, "rejected") == 0

        raw = body_bytes()
        await post_raw(svc, raw, signed_headers(SHOP_SECRET, raw))  # 401
        await post_raw(svc, b"{", signed_headers(SITE_SECRET, b"{"))  # kept as unparsed
        text = await scrape()
        assert (intake(text, "accepted"), intake(text, "rejected")) == (0, 1)
        assert intake(text, "unparsed") == 1

        await svc.client.post_api(api_body("m-1", phone="+79001234567"))
        await svc.client.post_api(api_body("m-2", phone="+79001234568"))
        await svc.client.post_api(api_body("m-1", phone="+79001234567"))  # a retry
        big = padded(LIMIT + 1)
        await post_raw(svc, big, signed_headers(SITE_SECRET, big))  # 413
        await svc.routed()
        text = await scrape()
        assert (intake(text, "accepted"), intake(text, "rejected")) == (2, 2)
        assert intake(text, "duplicate") == 1
        assert metric(text, "omniroute_routing_latency_seconds_count") == 2
        assert metric(text, "omniroute_routing_latency_seconds_sum") > 0
        assert metric(text, "omniroute_routing_latency_seconds_bucket", le="+Inf") == 2
        assert metric(text, "omniroute_routed_total", rule="new_lead") == 2


# --- logs ------------------------------------------------------------------------------


async def test_logs_carry_neither_secrets_nor_message_texts(mongo_uri: str, db_name: str) -> None:
    text = "Please call me about the kitchen, my code is 4815162342"
    junk = "not json but a private note 0xDEADBEEF"
    async with in_process(mongo_uri, db_name) as svc:
        with capture_logs() as events:
            ok = api_body("log-1", phone="+79001234567", text=text)
            status, _ = await svc.client.post_api(ok)
            assert status == 200
            # Refusals that carry the text, and one that carries the secret itself.
            await svc.client.post_api(api_body("log-2", phone="+7900", text=text), secret="bad")
            await svc.client.post_api({**ok, "external_id": "log-3", "extra": text})
            await svc.client.post_api({**ok, "external_id": "", "sender": {"name": text}})
            await svc.client.post_api(junk.encode())
            await svc.client.post_api(
                {**ok, "external_id": "log-4"}, headers={"X-Secret": SITE_SECRET}
            )
            raw = orjson.dumps(ok)
            await post_raw(svc, raw, {**signed_headers(SITE_SECRET, raw), TIMESTAMP_HEADER: "x"})
            await svc.routed()
    visible = [e for e in events if e.get("log_level") not in ("debug", "notset")]
    assert any(e["event"] == "http.request" for e in visible)
    assert any(e["event"] == "webhook.rejected" for e in visible)
    dumped = repr(visible)
    for secret in (SITE_SECRET, SHOP_SECRET):
        assert secret not in dumped
    for needle in (text, "4815162342", "kitchen", junk, "DEADBEEF"):
        assert needle not in dumped


async def test_metrics_break_down_the_acknowledgement(mongo_uri: str, db_name: str) -> None:
    """Where an acknowledgement's time goes: the handler per channel, its durable writes
    (only for requests that reach the store), and the event loop's lag."""
    async with in_process(mongo_uri, db_name) as svc:
        raw = body_bytes()
        await post_raw(svc, raw, signed_headers(SHOP_SECRET, raw))  # 401: no write
        for i in range(3):
            await svc.client.post_api(api_body(f"ack-{i}", phone=f"+7900123450{i}"))
        status, _, _ = await post_raw(svc, b"{}", {}, "/webhooks/nosuch/channel")
        assert status == 404  # labelled "unknown": no label per made-up name
        await asyncio.sleep(0.2)  # a few loop-lag probes
        status, body = await svc.client.get("/metrics")
        assert status == 200
        text = body.decode()
        assert metric(text, "omniroute_webhook_seconds_count", channel="api") == 4
        assert metric(text, "omniroute_webhook_seconds_count", channel="unknown") == 1
        assert metric(text, "omniroute_intake_write_seconds_count") == 3
        assert metric(text, "omniroute_intake_write_seconds_sum") > 0
        # Every write is also inside its handler's time.
        assert metric(text, "omniroute_intake_write_seconds_sum") <= metric(
            text, "omniroute_webhook_seconds_sum", channel="api"
        )
        assert metric(text, "omniroute_event_loop_lag_seconds_count") >= 2
