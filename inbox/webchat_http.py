"""What every webchat endpoint shares: the account, the Origin check and CORS headers,
the visitor token, rate limits and the per-app state (inbox/webchat_api.py uses it).

- the Origin (or, without one, the Referer's origin) must be one of the account's
  ``origins``: anything else is 403 ``origin_not_allowed`` with no CORS headers; an
  allowed one gets ``Access-Control-Allow-Origin: <it>`` and ``Vary: Origin`` on every
  answer, errors included. No cookies: ``Allow-Credentials`` is never sent;
- the visitor token comes in ``X-Visitor-Token`` (``?token=`` on the WebSocket);
- rate limits (channels/webchat_limits.py): ``requests_per_minute_ip`` per client address
  on every endpoint, ``messages_per_minute`` per visitor token on messages, the offline
  form and uploads; 429 ``rate_limited`` with ``Retry-After``.

The business clock: ``OMNIROUTE_WEBCHAT_CLOCK`` (an ISO-8601 instant) makes the
service's "now" start there and run on (for demos and browser tests of the offline
form); unset, the system clock.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlsplit

from aiohttp import web

from automation.calendar import WorkingCalendar
from automation.clock import SYSTEM_CLOCK, Clock
from channels.webchat import VisitorTokens, WebchatSettings
from channels.webchat_limits import RateLimiter
from config.models import ChannelAccount
from inbox.file_links import KEYS
from ingest.client_address import client_address
from ingest.context import SERVICE, Service, problem

CLOCK_ENV = "OMNIROUTE_WEBCHAT_CLOCK"
ALLOW_HEADERS = "Content-Type, X-Visitor-Token"
EXPOSE_HEADERS = "Retry-After, X-Request-Id"


class OffsetClock:
    """Starts at ``start`` and runs on with the real time."""

    def __init__(self, start: datetime) -> None:
        self._delta = start.astimezone(UTC) - datetime.now(UTC)

    def now(self) -> datetime:
        return datetime.now(UTC) + self._delta


def clock_from_env() -> Clock:
    value = os.environ.get(CLOCK_ENV, "").strip()
    if not value:
        return SYSTEM_CLOCK
    start = datetime.fromisoformat(value)
    return OffsetClock(start if start.tzinfo else start.replace(tzinfo=UTC))


@dataclass(slots=True)
class WebchatState:
    clock: Clock
    calendar: WorkingCalendar
    limiter: RateLimiter = field(default_factory=RateLimiter)
    tokens: VisitorTokens | None = None


STATE: web.AppKey[WebchatState] = web.AppKey("webchat_state", WebchatState)


class Refused(Exception):
    """An answer that ends the request (a problem+json)."""

    def __init__(self, status: int, code: str, detail: str, retry_after: int | None = None):
        super().__init__(detail)
        self.status, self.code, self.detail, self.retry_after = status, code, detail, retry_after


@dataclass(frozen=True, slots=True)
class Site:
    """The request's webchat account, its settings and the checked Origin."""

    svc: Service
    state: WebchatState
    account: ChannelAccount
    settings: WebchatSettings
    origin: str | None
    address: str


def _peer(request: web.Request) -> str | None:
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    return str(peer[0]) if isinstance(peer, tuple) and peer else None


def request_origin(request: web.Request) -> str | None:
    origin = request.headers.get("Origin")
    if origin and origin != "null":
        return origin.rstrip("/")
    referer = request.headers.get("Referer")
    if referer:
        parts = urlsplit(referer)
        if parts.scheme and parts.netloc:
            return f"{parts.scheme}://{parts.netloc}"
    return None


def site_of(request: web.Request) -> Site:
    """The account of ``/webchat/{account}/…`` with its Origin checked, or Refused."""
    svc = request.app[SERVICE]
    account = svc.config.account("webchat", request.match_info["account"])
    if account is None:
        raise Refused(404, "unknown_account", "no such webchat account")
    try:
        settings = WebchatSettings.of(account)
    except ValueError as exc:
        raise Refused(500, "account_misconfigured", str(exc)[:300]) from None
    origin = request_origin(request)
    if not settings.allows(origin):
        raise Refused(403, "origin_not_allowed", "this site may not use this chat")
    address = client_address(
        _peer(request), request.headers.getall("X-Forwarded-For", []), svc.http.trusted_proxies
    )
    return Site(svc, request.app[STATE], account, settings, origin, str(address))


def cors(response: web.StreamResponse, origin: str | None) -> web.StreamResponse:
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
    response.headers["Vary"] = "Origin"
    return response


def limit(site: Site, key: str, per_minute: int) -> None:
    wait = site.state.limiter.hit(key, per_minute, time.monotonic())
    if wait is not None:
        raise Refused(429, "rate_limited", "too many requests; retry later", retry_after=wait)


Handler = Callable[[web.Request, Site], Awaitable[web.StreamResponse]]


def endpoint(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Account, Origin and the per-address limit first; CORS on every answer."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        origin: str | None = None
        try:
            site = site_of(request)
            origin = site.origin
            limit(site, f"ip:{site.address}", site.settings.requests_per_minute_ip)
            response = await handler(request, site)
        except Refused as exc:
            response = problem(exc.status, exc.code, exc.detail)
            if exc.retry_after is not None:
                response.headers["Retry-After"] = str(exc.retry_after)
        if isinstance(response, web.WebSocketResponse):
            return response
        return cors(response, origin)

    return wrapped


async def preflight(request: web.Request) -> web.StreamResponse:
    try:
        site = site_of(request)
    except Refused as exc:
        return cors(problem(exc.status, exc.code, exc.detail), None)
    response = web.Response(status=204)
    response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
    response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
    response.headers["Access-Control-Max-Age"] = "600"
    return cors(response, site.origin)


async def tokens(request: web.Request) -> VisitorTokens:
    """The visitor-token signer: a key derived from the file-link key (never an
    account's secret), the same on every process."""
    state = request.app[STATE]
    if state.tokens is None:
        signer = await request.app[KEYS].get(request.app[SERVICE].store)
        state.tokens = VisitorTokens(signer.key)
    return state.tokens


async def visitor_of(request: web.Request, token: str | None) -> str:
    visitor = (await tokens(request)).visitor(token)
    if visitor is None:
        raise Refused(401, "invalid_token", "a valid visitor token is needed (POST …/session)")
    return visitor


def next_open(state: WebchatState) -> datetime | None:
    """The next start of working hours; None when it is working time now."""
    now = state.clock.now()
    if state.calendar.is_working_time(now):
        return None
    return state.calendar.next_working_moment(now)


def answer_expected(state: WebchatState) -> datetime:
    """When an operator can answer: now in working hours, else the next start."""
    return state.calendar.next_working_moment(state.clock.now())
