"""The aiohttp application: webhooks in, health and metrics out.

``POST /webhooks/{channel}/{account}``: the channel module authenticates and parses the
request; every message is written to ``intake`` durably and only then is the 2xx sent.
A provider retry of a stored message answers 2xx and stores nothing. If the store cannot
be reached the answer is 503, so the provider retries later.

Telephony: call reports (``Parsed.calls``) are merged into the ``calls`` collection before
the 2xx too (crm_store/calls.py); a PBX's "who is calling" question (``Parsed.lookup``) is
answered from the contacts' identity index and stores nothing.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import structlog
from aiohttp import web
from pydantic import ValidationError
from pymongo.errors import PyMongoError

from channels import REGISTRY
from channels.base import CallerLookup, Channel, Parsed, WebhookError, WebhookRequest
from config.loader import resolve_secret
from config.models import ChannelAccount
from crm_store import calls, intake, updates
from crm_store.documents import intake_id
from crm_store.store import together
from inbox import routes
from ingest.context import SERVICE, Service, json_response, problem
from ingest.metrics import CONTENT_TYPE_LATEST
from routing.identity import identity_keys

log = structlog.get_logger("omniroute.http")


@web.middleware
async def request_context(request: web.Request, handler: Any) -> web.StreamResponse:
    rid = request.headers.get("X-Request-Id") or uuid.uuid4().hex[:16]
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=rid)
    started = time.perf_counter()
    response: web.StreamResponse = await handler(request)
    response.headers["X-Request-Id"] = rid
    if request.path.startswith("/webhooks/"):
        name = request.match_info.get("channel", "")
        request.app[SERVICE].metrics.webhook_seconds.labels(
            name if name in REGISTRY else "unknown"
        ).observe(time.perf_counter() - started)
        # The path may end in an account's secret token (/webhooks/{c}/{a}/{token}).
        log.info(
            "http.request",
            method=request.method,
            path=_loggable_path(request),
            status=response.status,
            ms=round((time.perf_counter() - started) * 1000, 2),
        )
    return response


def _loggable_path(request: web.Request) -> str:
    if "token" in request.match_info:
        return request.path.rsplit("/", 1)[0] + "/<token>"
    return request.path


async def healthz(_: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    if await svc.store.ping():
        return json_response({"status": "ready"})
    return problem(503, "store_unavailable", "the store does not answer")


async def metrics(request: web.Request) -> web.Response:
    body = request.app[SERVICE].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _read_body(request: web.Request, limit: int) -> bytes | None:
    """The raw body, or None when it exceeds ``limit`` bytes."""
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def webhook(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    channel_name = request.match_info["channel"]
    account_name = request.match_info["account"]
    channel: Channel | None = REGISTRY.get(channel_name)
    account = svc.config.account(channel_name, account_name)
    if channel is None or account is None:
        return problem(
            404,
            "unknown_channel_account",
            f"no enabled account {account_name!r} on channel {channel_name!r}",
        )
    body = await _read_body(request, account.max_body_bytes)
    if body is None:
        svc.metrics.intake.labels(channel_name, "rejected").inc()
        return problem(413, "body_too_large", f"body exceeds {account.max_body_bytes} bytes")
    req = WebhookRequest(
        request.method, request.headers, request.query, body, request.match_info.get("token")
    )
    try:
        parsed = channel.parse(account, resolve_secret(account), req)
    except ValidationError as exc:  # a channel's own model refused the payload
        svc.metrics.intake.labels(channel_name, "rejected").inc()
        errors = [
            {"field": ".".join(str(p) for p in e["loc"]) or "body", "message": e["msg"]}
            for e in exc.errors(include_url=False, include_input=False)
        ]
        return problem(422, "invalid_payload", "the payload does not validate", errors=errors)
    except WebhookError as exc:
        svc.metrics.intake.labels(channel_name, "rejected").inc()
        log.info(
            "webhook.rejected",
            channel=channel_name,
            account=account_name,
            status=exc.status,
            reason=exc.detail,
        )
        return problem(exc.status, exc.code, exc.detail, errors=exc.errors)
    if parsed.lookup is not None:
        parsed = await _caller_reply(svc, channel, account, parsed)

    try:
        with svc.metrics.intake_write_seconds.time():
            accepted = await _store(svc, account.source, parsed, body)
    except PyMongoError as exc:
        svc.metrics.intake.labels(channel_name, "unavailable").inc(max(len(parsed.messages), 1))
        svc.metrics.store_errors.labels("intake").inc()
        log.warning("webhook.store_unavailable", channel=channel_name, error=type(exc).__name__)
        resp = problem(503, "store_unavailable", "message not stored; retry later")
        resp.headers["Retry-After"] = "5"
        return resp
    svc.worker.submit(accepted.new)
    svc.metrics.intake.labels(channel_name, "accepted").inc(len(accepted.new))
    svc.metrics.intake.labels(channel_name, "duplicate").inc(len(accepted.duplicates))
    if parsed.reply is not None:
        return web.Response(text=parsed.reply, content_type=parsed.reply_content_type)
    return json_response(
        {
            "ok": True,
            "accepted": [d.id for d in accepted.new],
            "duplicates": accepted.duplicates,
        }
    )


# The ring path: a PBX waits for the "who is calling" answer before it routes the call.
LOOKUP_TIMEOUT_S = 1.0


async def _caller_reply(
    svc: Service, channel: Channel, account: ChannelAccount, parsed: Parsed
) -> Parsed:
    """Answer a PBX's "who is calling" (``Parsed.lookup``) from the contacts' identity
    index. A store that does not answer in time gets the "unknown caller" answer: the
    call must go on."""
    assert parsed.lookup is not None
    if not isinstance(channel, CallerLookup):
        raise TypeError(f"channel {channel.name} asked for a caller lookup it cannot answer")
    try:
        async with asyncio.timeout(LOOKUP_TIMEOUT_S):
            caller = await calls.find_caller(svc.store, parsed.lookup.phone)
    except (PyMongoError, TimeoutError) as exc:
        svc.metrics.store_errors.labels("caller_lookup").inc()
        log.warning("webhook.caller_lookup_failed", channel=channel.name, error=type(exc).__name__)
        caller = None
    return channel.caller_reply(account, caller)


async def _store(svc: Service, source: str, parsed: Parsed, body: bytes) -> intake.Accepted:
    """Make everything the request reported durable; raises the driver's error if the
    store is away (nothing is acknowledged then)."""
    received = datetime.now(UTC)
    docs = [
        {
            "_id": intake_id(m.channel, m.account, m.provider_id),
            "channel": m.channel,
            "account": m.account,
            "provider_id": m.provider_id,
            "source_id": source,
            "message": m.model_dump(mode="python"),
            "raw": body,
            "received_at": received,
        }
        for m in parsed.messages
    ]

    async def accept() -> intake.Accepted:
        if not docs:
            return intake.Accepted([], [])
        if svc.intake is not None:  # concurrent requests share one durable write
            return await svc.intake.accept(docs)
        return await intake.accept(svc.store, docs, svc.owner, svc.lease_s)

    async def apply_calls() -> None:
        for call in parsed.calls:
            await calls.apply(svc.store, call, source)

    # A call report and its message are independent writes (each idempotent, so a retry
    # after either failed redoes both safely): made durable at once. (A message alone is
    # awaited directly: no tasks on the path every other webhook takes.)
    accepted: intake.Accepted
    if parsed.calls:
        accepted, _ = await together(accept(), apply_calls())
    else:
        accepted = await accept()
    for edit in parsed.edits:
        await updates.apply_edit(svc.store, edit)
    for status in parsed.statuses:
        await updates.apply_status(svc.store, status)
    for r in parsed.reachability:
        await updates.apply_reachability(
            svc.store, r, identity_keys(r.channel, r.account, r.sender)
        )
    return accepted


def create_app(service: Service) -> web.Application:
    app = web.Application(middlewares=[request_context], client_max_size=64 * 1024 * 1024)
    app[SERVICE] = service
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/webhooks/{channel}/{account}", webhook)
    app.router.add_get("/webhooks/{channel}/{account}", webhook)
    app.router.add_post("/webhooks/{channel}/{account}/{token}", webhook)
    # Mango posts to <the URL entered in its cabinet>/events/call, /events/summary …
    app.router.add_post("/webhooks/{channel:mango}/{account}/events/{kind}", webhook)
    routes.setup(app)
    return app
