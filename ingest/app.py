"""The aiohttp application: webhooks in, health and metrics out.

``POST /webhooks/{channel}/{account}``: the account's ``allowed_networks`` are checked
against the client address (ingest/client_address.py), the body is read within the
limits (ingest/limits.py), the channel authenticates the request (a refusal is answered
4xx with a fixed sentence; the detail goes to the log) and then reads it. Everything it
read is written to ``intake`` durably (ingest/accept.py) and only then is the 2xx sent.
An authentic delivery the channel cannot read — wholly, or in parts
(``Parsed.unreadable``) — is kept as an ``unparsed`` intake record with its redacted
body and answered 2xx too (docs/webhooks.md "Deliveries that cannot be read"). A
provider retry of a stored message answers 2xx and stores nothing. If the store cannot
be reached the answer is 503, so the provider retries later.

Telephony: call reports (``Parsed.calls``) are merged into the ``calls`` collection before
the 2xx too (crm_store/calls.py); a PBX's "who is calling" question (``Parsed.lookup``) is
answered from the contacts' identity index and stores nothing.

Any exception that escapes a handler is answered as a problem+json 500 carrying the
request id, logged once with its traceback and counted by route (:func:`errors`).
"""

from __future__ import annotations

import asyncio
import hmac
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import structlog
from aiohttp import web
from pymongo.errors import PyMongoError

from channels import REGISTRY
from channels.base import (
    CallerLookup,
    Channel,
    Parsed,
    Unauthorized,
    WebhookError,
    WebhookRequest,
)
from config.loader import resolve_secret
from config.models import ChannelAccount
from crm_store import calls, intake
from inbox import routes, webchat_api
from ingest.accept import (
    RequestMeta,
    describe,
    keep_unparsed,
    store_parsed,
    unparsed_document,
    unreadable_error,
)
from ingest.client_address import allowed, client_address, networks
from ingest.context import SERVICE, Service, json_response, problem
from ingest.limits import RETRY_AFTER_S, BodyTimeout, BodyTooLarge, read_body
from ingest.metrics import CONTENT_TYPE_LATEST
from ingest.redact import account_secrets, redact_body, redact_query, redact_text

log = structlog.get_logger("omniroute.http")


def route_name(request: web.Request) -> str:
    """The matched route's pattern (bounded label values), "unmatched" otherwise."""
    info = request.match_info
    route = getattr(info, "route", None)
    resource = getattr(route, "resource", None)
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def request_context(request: web.Request, handler: Any) -> web.StreamResponse:
    rid = request.headers.get("X-Request-Id", "")[:64] or uuid.uuid4().hex[:16]
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=rid)
    started = time.perf_counter()
    status = 500
    try:
        response: web.StreamResponse = await handler(request)
        status = response.status
    except web.HTTPException as exc:  # aiohttp's own answers (404 of the router, ...)
        status = exc.status
        exc.headers["X-Request-Id"] = rid
        raise
    finally:
        _observe(request, status, time.perf_counter() - started)
    response.headers["X-Request-Id"] = rid
    return response


# Set on a request cut short: its one log line is ``http.aborted`` (no request line).
ABORTED: web.RequestKey[bool] = web.RequestKey("omniroute.aborted", bool)


def _observe(request: web.Request, status: int, seconds: float) -> None:
    metrics = request.app[SERVICE].metrics
    metrics.responses.labels(route_name(request), str(status)).inc()
    webhook = request.path.startswith("/webhooks/")
    if webhook:
        name = request.match_info.get("channel", "")
        metrics.webhook_seconds.labels(name if name in REGISTRY else "unknown").observe(seconds)
    if (webhook or status >= 500) and not request.get(ABORTED, False):
        # The path may end in an account's secret token (/webhooks/{c}/{a}/{token}).
        log.info(
            "http.request",
            method=request.method,
            path=_loggable_path(request),
            status=status,
            ms=round(seconds * 1000, 2),
        )


@web.middleware
async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Whatever escapes a handler: a client gone mid-request is one log line; any other
    exception is a problem+json 500 with the request id, logged once with its traceback
    and counted by route."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPException:
        raise
    except ConnectionError as exc:
        request.app[SERVICE].http.reads.aborted()
        request.app[SERVICE].metrics.aborted.labels("disconnected").inc()
        request[ABORTED] = True
        log.info(
            "http.aborted",
            path=_loggable_path(request),
            reason="disconnected",
            error=type(exc).__name__,
        )
        return problem(400, "connection_lost", "the connection was lost")
    except Exception:
        route = route_name(request)
        request.app[SERVICE].metrics.handler_errors.labels(route).inc()
        log.exception("http.handler_failed", route=route, method=request.method)
        rid = structlog.contextvars.get_contextvars().get("request_id", "")
        return problem(
            500, "internal_error", "the server failed to handle the request", request_id=rid
        )


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
    svc = request.app[SERVICE]
    token = svc.http.metrics_token
    if token is not None:
        given = request.headers.get("Authorization", "").encode("utf-8", "replace")
        if not hmac.compare_digest(given, f"Bearer {token}".encode()):
            resp = problem(401, "unauthorized", "GET /metrics needs the metrics token")
            resp.headers["WWW-Authenticate"] = "Bearer"
            return resp
    body = svc.metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


# What a refused webhook is told. An authentication refusal (401, 403, 405) or a
# misconfigured account (500) is told in the channel's own words — fixed sentences of the
# channel modules that never quote the input; any other refusal gets a fixed sentence
# per status (the channel's detail, which may quote a parser's message, goes to the log).
OWN_WORDS = (401, 403, 405, 500)
REFUSED: dict[int, str] = {
    400: "the request body cannot be read",
    401: "the request is not authenticated",
    403: "the request is not allowed",
    405: "this method is not accepted here",
    500: "the channel account is misconfigured",
}


def _refused(svc: Service, channel: str, account: str, exc: WebhookError) -> web.Response:
    svc.metrics.intake.labels(channel, "rejected").inc()
    log.info(
        "webhook.rejected", channel=channel, account=account, status=exc.status, reason=exc.detail
    )
    fixed = REFUSED.get(exc.status, "the request is refused")
    detail = exc.detail[:200] if exc.status in OWN_WORDS and exc.detail else fixed
    return problem(exc.status, exc.code, detail)


def _busy(
    svc: Service, request: web.Request, reason: str, status: int, code: str, detail: str
) -> web.Response:
    svc.http.reads.aborted()
    svc.metrics.aborted.labels(reason).inc()
    request[ABORTED] = True
    log.info("http.aborted", path=_loggable_path(request), reason=reason, status=status)
    resp = problem(status, code, detail)
    if status == 503:
        resp.headers["Retry-After"] = str(RETRY_AFTER_S)
    resp.force_close()
    return resp


async def _answer_and_close(request: web.Request, resp: web.Response) -> web.Response:
    """Send ``resp`` now and close the connection at once: the client stalled, so there
    is no point in reading (lingering on) the rest of its body first."""
    resp.headers["X-Request-Id"] = str(structlog.contextvars.get_contextvars().get("request_id"))
    await resp.prepare(request)
    await resp.write_eof()
    request.protocol.force_close()
    return resp


async def _body(svc: Service, request: web.Request, limit: int) -> bytes | web.Response:
    """The body within the limits, or the response that refuses it."""
    if not svc.http.reads.try_acquire():
        return _busy(
            svc, request, "busy", 503, "busy", "too many requests are being read; retry later"
        )
    try:
        return await read_body(request, limit, svc.http.body_timeout_s)
    except BodyTooLarge:
        svc.http.reads.aborted()
        svc.metrics.aborted.labels("body_too_large").inc()
        resp = problem(413, "body_too_large", f"body exceeds {limit} bytes")
        resp.force_close()
        return resp
    except BodyTimeout:
        resp = _busy(
            svc, request, "body_timeout", 408, "request_timeout", "the body came too slowly"
        )
        return await _answer_and_close(request, resp)
    finally:
        svc.http.reads.release()


def _peer(request: web.Request) -> str | None:
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return None


def _from_allowed_network(svc: Service, request: web.Request, account: ChannelAccount) -> bool:
    if not account.allowed_networks:
        return True
    address = client_address(
        _peer(request), request.headers.getall("X-Forwarded-For", []), svc.http.trusted_proxies
    )
    if allowed(networks(account.allowed_networks), address):
        return True
    svc.metrics.intake.labels(account.channel, "network_refused").inc()
    log.warning(
        "webhook.network_refused",
        channel=account.channel,
        account=account.account,
        client=str(address) if address is not None else None,
    )
    return False


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
    if not _from_allowed_network(svc, request, account):
        return problem(403, "forbidden_network", "this address may not deliver to this account")
    body = await _body(svc, request, account.max_body_bytes)
    if isinstance(body, web.Response):
        svc.metrics.intake.labels(channel_name, "rejected").inc()
        return body
    req = WebhookRequest(
        request.method, request.headers, request.query, body, request.match_info.get("token")
    )
    try:
        channel.authenticate(account, resolve_secret(account), req)
    except WebhookError as exc:
        return _refused(svc, channel_name, account_name, exc)
    except Exception as exc:  # a check that broke on odd input: not authenticated
        log.warning(
            "webhook.authenticate_failed",
            channel=channel_name,
            account=account_name,
            error=describe(exc),
        )
        return _refused(svc, channel_name, account_name, Unauthorized("authentication failed"))

    parsed: Parsed | None
    error: str | None = None
    try:
        parsed = channel.read(account, req)
    except WebhookError as exc:
        if exc.status >= 500:  # our side cannot take it now (misconfigured): retry later
            return _refused(svc, channel_name, account_name, exc)
        parsed, error = None, describe(exc)
    except Exception as exc:  # whatever it is, the delivery is kept (unparsed)
        parsed, error = None, describe(exc)
    if parsed is not None and parsed.lookup is not None:
        parsed = await _caller_reply(svc, channel, account, parsed)
    if parsed is not None and parsed.unreadable:
        error = unreadable_error(parsed)
    secrets = account_secrets(account)
    raw = redact_body(body, secrets, channel.secret_fields)
    if error is not None:  # a parser's message may quote the input
        error = redact_text(error, secrets)

    accepted = intake.Accepted([], [])
    unparsed: str | None = None
    try:
        with svc.metrics.intake_write_seconds.time():
            if parsed is not None:
                # Routing starts as soon as the records are durable: a later step of the
                # same delivery that fails (500) leaves nothing stuck.
                accepted = await store_parsed(
                    svc.writer, account.source, parsed, raw, svc.worker.submit
                )
            if error is not None:
                unparsed = await _park(svc, request, account, raw, error, secrets)
    except PyMongoError as exc:
        svc.metrics.intake.labels(channel_name, "unavailable").inc(
            max(len(parsed.messages) if parsed is not None else 0, 1)
        )
        svc.metrics.store_errors.labels("intake").inc()
        log.warning("webhook.store_unavailable", channel=channel_name, error=type(exc).__name__)
        resp = problem(503, "store_unavailable", "message not stored; retry later")
        resp.headers["Retry-After"] = "5"
        return resp
    svc.metrics.intake.labels(channel_name, "accepted").inc(len(accepted.new))
    svc.metrics.intake.labels(channel_name, "duplicate").inc(len(accepted.duplicates))
    if parsed is not None and parsed.reply is not None:
        return web.Response(text=parsed.reply, content_type=parsed.reply_content_type)
    if parsed is None and channel.ack_reply is not None:
        return web.Response(text=channel.ack_reply, content_type="text/plain")
    answer: dict[str, Any] = {
        "ok": True,
        "accepted": [d.id for d in accepted.new],
        "duplicates": accepted.duplicates,
    }
    if unparsed is not None:
        answer["unparsed"] = unparsed
    return json_response(answer)


async def _park(
    svc: Service,
    request: web.Request,
    account: ChannelAccount,
    raw: bytes,
    error: str,
    secrets: list[str],
) -> str:
    """Keep an authentic delivery its channel could not read (or read in part) as an
    ``unparsed`` intake record; its id. Raises the driver's error if the store is away."""
    meta = RequestMeta(
        request.method,
        redact_query(request.query, secrets),
        request.headers.get("Content-Type", ""),
    )
    doc = unparsed_document(
        account.channel, account.account, account.source, meta, raw, error, datetime.now(UTC)
    )
    if await keep_unparsed(svc.store, doc):
        svc.metrics.intake.labels(account.channel, "unparsed").inc()
    log.info(
        "webhook.unparsed",
        channel=account.channel,
        account=account.account,
        intake_id=doc["_id"],
        error=error,
    )
    return str(doc["_id"])


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
    # The question may come with reports to store (Zadarma's NOTIFY_START is both): they
    # are kept, and the channel's answer (if it has one) replaces the acknowledgement.
    answer = channel.caller_reply(account, caller)
    if answer.reply is None:
        return replace(parsed, lookup=None)
    return replace(
        parsed, lookup=None, reply=answer.reply, reply_content_type=answer.reply_content_type
    )


def create_app(service: Service) -> web.Application:
    app = web.Application(middlewares=[request_context, errors], client_max_size=64 * 1024 * 1024)
    app[SERVICE] = service
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if not service.http.metrics_separate:
        app.router.add_get("/metrics", metrics)
    app.router.add_post("/webhooks/{channel}/{account}", webhook)
    app.router.add_get("/webhooks/{channel}/{account}", webhook)
    app.router.add_post("/webhooks/{channel}/{account}/{token}", webhook)
    # Mango posts to <the URL entered in its cabinet>/events/call, /events/summary …
    app.router.add_post("/webhooks/{channel:mango}/{account}/events/{kind}", webhook)
    routes.setup(app)
    webchat_api.setup(app)
    return app


def create_metrics_app(service: Service) -> web.Application:
    """``GET /metrics`` alone, for a listener of its own (Settings.metrics_port)."""
    app = web.Application(middlewares=[request_context, errors])
    app[SERVICE] = service
    app.router.add_get("/metrics", metrics)
    return app
