"""What Messenger, Instagram and WhatsApp share of Meta's platform.

* :func:`handshake` — the GET verification: ``hub.mode=subscribe`` with our verify token
  (``settings.verify_token_env``, compared in constant time) → the bare ``hub.challenge``
  as ``text/plain``; anything else → 403.
* :func:`verify_signature` — ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256(raw body, app
  secret)>`` over the exact bytes received (Meta escapes non-ASCII before signing, so a
  re-serialized body would not match); missing or wrong → 401. Several secret settings
  may be named (Instagram: the Meta app secret or the Instagram app secret); any one
  matching is enough.
* :class:`Graph` — calls to the Graph API (aiohttp; host and version from the account's
  settings, so tests point it at a local fake) with the token as ``Authorization:
  Bearer``, and :func:`graph_error`, which maps Graph's ``{"error": {code,
  error_subcode, message}}`` to a :class:`SendError` an operator can read.
* :func:`window` — Meta's messaging windows: 24 h after the customer's last message
  (``messaging_type: RESPONSE``); 24 h – 7 days only with ``tag: HUMAN_AGENT`` when the
  account enables it (``settings.human_agent: true``); refused at once otherwise.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson
import structlog

from channels.base import (
    Forbidden,
    OutboundMessage,
    Parsed,
    SendError,
    Unauthorized,
    WebhookRequest,
    setting_env,
    setting_str,
)
from channels.signing import as_bytes, same
from config.models import ChannelAccount

log = structlog.get_logger("omniroute.meta")

SIGNATURE_HEADER = "X-Hub-Signature-256"
DEFAULT_API_VERSION = "v25.0"
DEFAULT_TIMEOUT_S = 10.0
STANDARD_WINDOW = timedelta(hours=24)
HUMAN_AGENT_WINDOW = timedelta(days=7)
PRIVATE_REPLY_WINDOW = timedelta(days=7)

# Graph error codes (Messenger/Instagram error maps; CHANNEL_PROTOCOLS.md §9.5).
RATE_LIMIT_CODES = frozenset({4, 17, 32, 613, 80006})
TRANSIENT_CODES = frozenset({1, 2, 1200})
WINDOW_SUBCODES = frozenset({2018278, 2534022})
UNAVAILABLE_CODE = 551
TOKEN_CODE = 190
PERMISSION_CODES = frozenset({10, 200})

Json = dict[str, Any]


# --- inbound -----------------------------------------------------------------------------


def signature(app_secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value Meta sends for ``body``."""
    return "sha256=" + hmac.new(as_bytes(app_secret), body, hashlib.sha256).hexdigest()


def verify_signature(
    account: ChannelAccount, req: WebhookRequest, secret_keys: Sequence[str] = ("app_secret_env",)
) -> None:
    """Refuse (401) a POST whose signature matches none of the secrets named by
    ``secret_keys`` in the account's settings (fails closed without any)."""
    secrets = [s for key in secret_keys if (s := setting_env(account, key))]
    if not secrets:
        names = " or ".join(f"settings.{k}" for k in secret_keys)
        raise Unauthorized(f"no app secret configured for this account ({names})")
    given = req.headers.get(SIGNATURE_HEADER, "").strip()
    if not given:
        raise Unauthorized(f"missing {SIGNATURE_HEADER} header")
    # Every secret is compared (no early exit): the time does not say which one matched.
    matched = [same(signature(s, req.body), given) for s in secrets]
    if not any(matched):
        raise Unauthorized(f"{SIGNATURE_HEADER} does not match the body")


def handshake(account: ChannelAccount, query: Mapping[str, str]) -> Parsed:
    """Meta's GET verification: the challenge echoed when the verify token matches."""
    token = setting_env(account, "verify_token_env")
    given = query.get("hub.verify_token", "")
    if query.get("hub.mode") != "subscribe" or "hub.challenge" not in query:
        raise Forbidden("not a subscription handshake (hub.mode=subscribe, hub.challenge)")
    if not token or not same(token, given):
        raise Forbidden("hub.verify_token does not match")
    return Parsed(reply=query["hub.challenge"], reply_content_type="text/plain")


# --- windows -----------------------------------------------------------------------------


def _aware(at: datetime | None) -> datetime | None:
    return at.replace(tzinfo=UTC) if at is not None and at.tzinfo is None else at


def human_agent(account: ChannelAccount) -> bool:
    value = account.settings.get("human_agent", False)
    return value is True or (isinstance(value, str) and value.lower() in ("true", "1", "yes"))


def window(
    account: ChannelAccount, msg: OutboundMessage, product: str, now: datetime | None = None
) -> Json:
    """The Send API's ``messaging_type`` (and ``tag``) for ``msg``, or :class:`SendError`
    (not retryable, the reason in the operator's words) when no window is open."""
    now = now or datetime.now(UTC)
    last = _aware(msg.last_inbound_at)
    age = now - last if last is not None else None
    since = f"last customer message {last.isoformat()}" if last else "no customer message"
    if msg.reply_mode == "private":
        # A private reply to a comment: one message, within 7 days of the comment.
        if age is None or age > PRIVATE_REPLY_WINDOW:
            raise SendError(
                f"a private reply to a {product} comment is possible only within 7 days of the "
                f"comment ({since}); answer publicly instead",
                retryable=False,
                code="window_closed",
            )
        return {"messaging_type": "RESPONSE"}
    if age is not None and age <= STANDARD_WINDOW:
        return {"messaging_type": "RESPONSE"}
    if age is not None and age <= HUMAN_AGENT_WINDOW and human_agent(account):
        if msg.automatic:
            raise SendError(
                f"outside {product}'s 24 h window ({since}): only a person may answer now "
                "(the human-agent tag), not automation",
                retryable=False,
                code="window_closed",
            )
        return {"messaging_type": "MESSAGE_TAG", "tag": "HUMAN_AGENT"}
    if age is not None and age <= HUMAN_AGENT_WINDOW:
        reason = (
            "the human-agent tag that allows answering up to 7 days is not enabled for this "
            "account (settings.human_agent)"
        )
    else:
        reason = "after 7 days no message can be sent until the customer writes again"
    raise SendError(
        f"outside {product}'s 24 h messaging window ({since}): {reason}",
        retryable=False,
        code="window_closed",
    )


# --- the Graph API -----------------------------------------------------------------------


def timeout_s(account: ChannelAccount) -> float:
    try:
        value = float(setting_str(account, "timeout_s") or DEFAULT_TIMEOUT_S)
    except ValueError:
        return DEFAULT_TIMEOUT_S
    return value if value > 0 else DEFAULT_TIMEOUT_S


def _retry_after(headers: Mapping[str, str]) -> float | None:
    try:
        return max(float(headers.get("Retry-After", "")), 0.0)
    except ValueError:
        return None


def graph_error(product: str, status: int, data: Json, headers: Mapping[str, str]) -> SendError:
    """Map a Graph error answer to a :class:`SendError`: rate limits, 5xx and Graph's
    transient codes are retried; a closed window, an unavailable person, a bad token,
    missing permissions and every other code fail with Meta's message."""
    err = data.get("error")
    err = err if isinstance(err, dict) else {}
    code = err.get("code") if isinstance(err.get("code"), int) else None
    sub = err.get("error_subcode") if isinstance(err.get("error_subcode"), int) else None
    said = str(err.get("message") or "").strip()[:300] or f"HTTP {status}"
    label = f"{code}/{sub}" if code is not None and sub is not None else str(code or status)
    detail = f"{product} API error {label}: {said}"
    if status == 429 or code in RATE_LIMIT_CODES:
        return SendError(
            detail, retryable=True, retry_after=_retry_after(headers), code="rate_limited"
        )
    if sub in WINDOW_SUBCODES:
        return SendError(
            f"{detail}. The messaging window is closed: wait for the customer to write again",
            retryable=False,
            code="window_closed",
        )
    if code == UNAVAILABLE_CODE:
        return SendError(
            f"{detail}. The person cannot be reached (blocked the page or left)",
            retryable=False,
            code="recipient_unavailable",
        )
    if code == TOKEN_CODE:
        return SendError(
            f"{detail}. The access token is invalid or expired: connect the account again",
            retryable=False,
            code="token_invalid",
        )
    if code in PERMISSION_CODES:
        return SendError(
            f"{detail}. The app lacks a permission for this (see the channel's docs)",
            retryable=False,
            code="permission_denied",
        )
    if status >= 500 or code in TRANSIENT_CODES or err.get("is_transient") is True:
        return SendError(
            detail, retryable=True, retry_after=_retry_after(headers), code="provider_unavailable"
        )
    return SendError(
        detail,
        retryable=False,
        code=f"{product.lower()}_{code}" if code is not None else f"http_{status}",
    )


@dataclass(frozen=True, slots=True)
class Graph:
    """One account's Graph API: ``{api_base}/{api_version}/…`` with its token."""

    product: str
    base: str
    version: str
    token: str
    timeout_s: float
    # hex HMAC-SHA256(app secret, token), sent as ``appsecret_proof`` when configured.
    proof: str | None = None

    @classmethod
    def of(
        cls, account: ChannelAccount, token: str | None, product: str, default_base: str
    ) -> Graph:
        if not token:
            raise SendError(
                "no access token configured (secret_env)", retryable=False, code="not_configured"
            )
        base = (setting_str(account, "api_base") or default_base).rstrip("/")
        version = setting_str(account, "api_version") or DEFAULT_API_VERSION
        proof = None
        if account.settings.get("appsecret_proof") is True:
            secret = setting_env(account, "app_secret_env")
            if secret:
                proof = hmac.new(as_bytes(secret), as_bytes(token), hashlib.sha256).hexdigest()
        return cls(product, base, version, token, timeout_s(account), proof)

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: Json | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Json:
        """One request; the answer's JSON object, or :class:`SendError`."""
        query = dict(params or {})
        if self.proof:
            query["appsecret_proof"] = self.proof
        headers = {"Authorization": f"Bearer {self.token}"}
        data: bytes | None = None
        if body is not None:
            data = orjson.dumps(body)
            headers["Content-Type"] = "application/json"
        url = f"{self.base}/{self.version}/{path.lstrip('/')}"
        timeout = aiohttp.ClientTimeout(total=self.timeout_s, connect=min(self.timeout_s, 5.0))
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as http,
                http.request(method, url, params=query, data=data, headers=headers) as resp,
            ):
                raw = await resp.read()
                status, resp_headers = resp.status, dict(resp.headers)
        except TimeoutError:
            raise SendError(
                f"{self.product} API timed out", retryable=True, code="timeout"
            ) from None
        except aiohttp.ClientError as exc:
            raise SendError(
                f"{self.product} API unreachable: {type(exc).__name__}",
                retryable=True,
                code="connection_error",
            ) from None
        try:
            parsed = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            parsed = {}
        answer: Json = parsed if isinstance(parsed, dict) else {}
        if 200 <= status < 300 and "error" not in answer:
            return answer
        log.info(
            "meta.graph_error",
            product=self.product,
            path=path,
            status=status,
            error=str(answer.get("error"))[:300],
        )
        raise graph_error(self.product, status, answer, resp_headers)
