"""Zadarma PBX call notifications in, the callback request (click-to-call) out.

Inbound (``/webhooks/zadarma/{account}``, form fields):

* the URL check: a request with ``zd_echo=<value>`` (query or form) is answered with the
  value as the body — Zadarma's check when the URL is set;
* every notification carries the header ``Signature`` = base64 of the *hex* HMAC-SHA1 of
  a per-event field concatenation, keyed with the API secret (``secret_env``); a missing or
  wrong one → 401, nothing stored. Events whose signature string is not documented
  (``NOTIFY_IVR`` …) are acknowledged and ignored, since they cannot be verified.

* ``NOTIFY_START`` — an inbound call rings: ``caller_id`` → ``called_did``;
* ``NOTIFY_INTERNAL`` — … now at extension ``internal``;
* ``NOTIFY_ANSWER`` — extension ``internal`` answered;
* ``NOTIFY_END`` — the inbound call is over: ``disposition``, ``duration``, recording;
* ``NOTIFY_OUT_START`` — extension ``internal`` calls ``destination``;
* ``NOTIFY_OUT_END`` — that call is over;
* ``NOTIFY_RECORD`` — the recording ``call_id_with_rec`` is ready.

The signed strings: caller_id + called_did + call_start (START, INTERNAL, END);
caller_id + destination + call_start (ANSWER); internal + destination + call_start
(OUT_START, OUT_END); pbx_call_id + call_id_with_rec (RECORD).

Replay and freshness (the signature covers neither the event, nor ``pbx_call_id``, nor the
outcome; docs/channels/telephony.md "Zadarma: replay and freshness"): a report whose
``call_start`` is outside its window (:func:`check_fresh`; account settings
``start_window_s`` 600, ``max_call_s`` 14400, ``clock_skew_s`` 300) → 403; every report is
a :class:`~channels.calls.SignedCallEvent` — accepted once per (event, signed string),
only NOTIFY_START / NOTIFY_OUT_START may create a call and its message (keyed by the
call's signed identity), every other report only updates a call such a start opened
(crm_store/calls.py ``apply_signed``).

``pbx_call_id`` is the call; ``call_start`` (``YYYY-MM-DD HH:MM:SS``) is in the time zone
of the Zadarma account (``settings.timezone``, default UTC). ``disposition``: answered →
answered; busy → busy; cancel, no answer → missed; anything else (failed, no money,
unallocated number, line limit …) → failed, the word kept as ``hangup_cause``.

Who is calling: the answer to a signed ``NOTIFY_START`` (the call is stored as well) names
a known caller — ``{"caller_name": <contact name>}``, plus ``"redirect": <extension>`` and
``"return_timeout"`` (``settings.redirect_timeout_s``, default 20) to the contact's
responsible when ``settings.redirect_to_responsible`` is true and the responsible has a
``login.<user id>`` — found with one store lookup (ingest/app.py); an unknown caller gets
the plain acknowledgement. The keys are those of Zadarma's PHP SDK
(``Webhook/Request.php``: ``setCallerName``, ``setRedirect``) and of its example
``{"redirect": 1, "caller_name": "TestName"}``; Zadarma's documentation does not state
them for NOTIFY_START (docs/channels/telephony.md).

Outbound: ``GET {api_base}/v1/request/callback/?from=<extension>&to=<number>`` with
``Authorization: <key>:<base64(hex(HMAC-SHA1(secret, path + query + md5(query))))>`` (the
query sorted by name, form-encoded) — Zadarma rings the extension, then the number.

Account settings: ``secret_env`` (the API secret), ``api_key_env`` (the API key, for
click-to-call), ``api_base`` (default ``https://api.zadarma.com``), ``timezone``,
``login.<user id>`` (the user's extension), ``timeout_s`` (default 10),
``redirect_to_responsible`` (default false), ``redirect_timeout_s`` (default 20).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import aiohttp
import orjson
import structlog

from channels.base import (
    CallDirection,
    Caller,
    CallerQuery,
    CallEvent,
    CallStage,
    Disposition,
    Forbidden,
    Parsed,
    SendError,
    Unauthorized,
    WebhookChannel,
    WebhookRequest,
    setting_env,
    setting_str,
)
from channels.calls import (
    SignedCallEvent,
    after,
    call_event,
    form_fields,
    invalid,
    parsed,
    seconds_field,
    text_field,
    user_login,
    whole,
)
from channels.signing import as_bytes, same
from config.models import ChannelAccount

log = structlog.get_logger("omniroute.zadarma")

API_BASE = "https://api.zadarma.com"
CALLBACK_PATH = "/v1/request/callback/"
SIGNATURE_HEADER = "Signature"
DEFAULT_TIMEOUT_S = 10.0
# event → the fields whose values, concatenated, are signed.
SIGNED: dict[str, tuple[str, ...]] = {
    "NOTIFY_START": ("caller_id", "called_did", "call_start"),
    "NOTIFY_INTERNAL": ("caller_id", "called_did", "call_start"),
    "NOTIFY_ANSWER": ("caller_id", "destination", "call_start"),
    "NOTIFY_END": ("caller_id", "called_did", "call_start"),
    "NOTIFY_OUT_START": ("internal", "destination", "call_start"),
    "NOTIFY_OUT_END": ("internal", "destination", "call_start"),
    "NOTIFY_RECORD": ("pbx_call_id", "call_id_with_rec"),
}
DISPOSITIONS = {
    "answered": Disposition.ANSWERED,
    "busy": Disposition.BUSY,
    "cancel": Disposition.MISSED,
    "no answer": Disposition.MISSED,
}
# Reports that may create a call (and its message); every other one only updates a call
# one of these opened, with the same signed identity.
OPENING = frozenset({"NOTIFY_START", "NOTIFY_OUT_START"})
INBOUND = frozenset({"NOTIFY_START", "NOTIFY_INTERNAL", "NOTIFY_ANSWER", "NOTIFY_END"})
OUTBOUND = frozenset({"NOTIFY_OUT_START", "NOTIFY_OUT_END"})
ENDING = frozenset({"NOTIFY_END", "NOTIFY_OUT_END"})
# Freshness (account settings, seconds): an opening report's call_start may be at most
# ``start_window_s`` old; a later report's at most the call's length (its duration, at
# most ``max_call_s``) plus ``start_window_s``; none more than ``clock_skew_s`` ahead.
START_WINDOW_S = 600
MAX_CALL_S = 4 * 3600
CLOCK_SKEW_S = 300


def signature(secret: str, text: str) -> str:
    """base64 of the hex HMAC-SHA1 (as PHP's ``base64_encode(hash_hmac(...))``)."""
    digest = hmac.new(as_bytes(secret), as_bytes(text), hashlib.sha1).hexdigest()
    return base64.b64encode(digest.encode()).decode()


def signed_string(event: str, fields: Mapping[str, str]) -> str:
    return "".join(fields.get(name, "") for name in SIGNED[event])


def verify(secret: str | None, event: str, fields: Mapping[str, str], req: WebhookRequest) -> None:
    if not secret:
        raise Unauthorized("this account has no API secret configured")
    given = req.headers.get(SIGNATURE_HEADER, "").strip()
    if not given:
        raise Unauthorized(f"missing {SIGNATURE_HEADER} header")
    if not same(signature(secret, signed_string(event, fields)), given):
        raise Unauthorized("signature does not match")


def _seconds_setting(account: ChannelAccount, key: str, default: int) -> int:
    value = whole(account.settings.get(key), 0, 30 * 24 * 3600)
    return default if value is None else value


def check_fresh(
    account: ChannelAccount, event: str, fields: Mapping[str, str], now: datetime
) -> None:
    """Refuse (403) a report whose signed ``call_start`` is outside its freshness window.
    A report without a readable ``call_start`` (NOTIFY_RECORD, or an odd one) is not
    checked here: its claim still admits it once."""
    start = _start(account, fields)
    if start is None:
        return
    window = _seconds_setting(account, "start_window_s", START_WINDOW_S)
    max_call = _seconds_setting(account, "max_call_s", MAX_CALL_S)
    skew = _seconds_setting(account, "clock_skew_s", CLOCK_SKEW_S)
    if event in OPENING:
        allowed = window
    elif event in ENDING:
        duration = seconds_field(fields, "duration")
        allowed = min(max_call if duration is None else duration, max_call) + window
    else:
        allowed = max_call + window
    age = (now - start).total_seconds()
    if age < -skew or age > allowed:
        raise Forbidden(
            f"call_start is outside the freshness window of {event} "
            f"({int(age)} s old, at most {allowed} s): a stale or replayed notification"
        )


def _zone(account: ChannelAccount) -> ZoneInfo | None:
    name = setting_str(account, "timezone")
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        log.warning("zadarma.bad_timezone", account=account.account, timezone=name[:64])
        return None


def _start(account: ChannelAccount, fields: Mapping[str, str]) -> datetime | None:
    """``call_start`` (the account's local time) in UTC; None if missing or unreadable."""
    value = text_field(fields, "call_start")
    if value is None:
        return None
    try:
        local = datetime.strptime(value, "%Y-%m-%d %H:%M:%S")
        return local.replace(tzinfo=_zone(account) or UTC).astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode("utf-8", "surrogateescape")).hexdigest()


def claim_of(event: str, fields: Mapping[str, str]) -> str:
    """What a report may be accepted once for: its event and the signed string (for
    NOTIFY_INTERNAL also the extension, since the call rings one extension after another
    under the same signed string)."""
    parts = [event, signed_string(event, fields)]
    if event == "NOTIFY_INTERNAL":
        parts.append(fields.get("internal", ""))
    return _digest(*parts)


def identity_of(event: str, fields: Mapping[str, str]) -> str | None:
    """The signed identity of the call a report is about: an inbound call by its caller and
    start (the signed fields every inbound report shares), an outbound one by extension,
    number and start; None for NOTIFY_RECORD (its call id is signed itself)."""
    if event in INBOUND:
        return "zadarma-in:" + _digest(fields.get("caller_id", ""), fields.get("call_start", ""))
    if event in OUTBOUND:
        signed = signed_string(event, fields)
        return "zadarma-out:" + _digest(signed)
    return None


def fingerprint(fields: Mapping[str, str]) -> str:
    """The whole report: a provider retry has the same one."""
    return _digest(*(f"{k}={v}" for k, v in sorted(fields.items())))


class ZadarmaChannel(WebhookChannel):
    name = "zadarma"

    # --- inbound ------------------------------------------------------------------

    def authenticate(
        self, account: ChannelAccount, secret: str | None, req: WebhookRequest
    ) -> None:
        fields = form_fields(req)
        event = (fields.get("event") or "").strip()
        if "zd_echo" not in fields and event in SIGNED:
            verify(secret, event, fields, req)
            check_fresh(account, event, fields, datetime.now(UTC))

    def read(self, account: ChannelAccount, req: WebhookRequest) -> Parsed:
        fields = form_fields(req)
        if "zd_echo" in fields:
            return Parsed(reply=fields["zd_echo"], reply_content_type="text/plain")
        event = (fields.get("event") or "").strip()
        if event not in SIGNED:
            return Parsed()  # NOTIFY_IVR and the like: not verifiable, not needed
        call_id = text_field(fields, "pbx_call_id")
        if call_id is None:
            raise invalid("pbx_call_id", "required")
        found = parsed(self._event(account, event, call_id, fields))
        caller = text_field(fields, "caller_id")
        if event == "NOTIFY_START" and caller:
            # Stored as every report, and answered with who is calling (caller_reply).
            return dataclasses.replace(found, lookup=CallerQuery(caller))
        return found

    def caller_reply(self, account: ChannelAccount, caller: Caller | None) -> Parsed:
        """A known caller: ``{"caller_name", "redirect"?, "return_timeout"?}`` as JSON;
        an unknown one: nothing to say (the plain acknowledgement)."""
        if caller is None:
            return Parsed()
        body: dict[str, str | int] = {}
        if caller.name:
            body["caller_name"] = caller.name[:64]
        redirect = account.settings.get("redirect_to_responsible") is True
        extension = user_login(account, caller.responsible_id) if caller.responsible_id else None
        if redirect and extension:
            body["redirect"] = extension
            body["return_timeout"] = _seconds_setting(account, "redirect_timeout_s", 20)
        if not body:
            return Parsed()
        return Parsed(reply=orjson.dumps(body).decode(), reply_content_type="application/json")

    def _event(
        self, account: ChannelAccount, event: str, call_id: str, f: Mapping[str, str]
    ) -> CallEvent:
        report = call_event(**self._fields(account, event, call_id, f))
        return SignedCallEvent(
            **report.model_dump(),
            claim=claim_of(event, f),
            fingerprint=fingerprint(f),
            identity=identity_of(event, f),
            opens=event in OPENING,
        )

    def _fields(
        self, account: ChannelAccount, event: str, call_id: str, f: Mapping[str, str]
    ) -> dict[str, Any]:
        start = _start(account, f)
        base: dict[str, Any] = {
            "channel": self.name,
            "account": account.account,
            "call_id": call_id,
            "event": event,
        }
        recorded = (f.get("is_recorded") or "").strip() in ("1", "true")
        rec_id = text_field(f, "call_id_with_rec")
        if event == "NOTIFY_RECORD":
            return {**base, "recording_id": rec_id}
        if event in ("NOTIFY_START", "NOTIFY_INTERNAL", "NOTIFY_ANSWER"):
            answered = event == "NOTIFY_ANSWER"
            return {
                **base,
                "direction": CallDirection.IN,
                "customer": text_field(f, "caller_id"),
                "line": text_field(f, "called_did"),
                "agent": text_field(f, "internal"),
                "stage": CallStage.ANSWERED if answered else CallStage.RINGING,
                "disposition": Disposition.ANSWERED if answered else None,
                "at": start,
                "started_at": start,
            }
        if event == "NOTIFY_OUT_START":
            return {
                **base,
                "direction": CallDirection.OUT,
                "customer": text_field(f, "destination"),
                "agent": text_field(f, "internal"),
                "stage": CallStage.RINGING,
                "at": start,
                "started_at": start,
            }
        # NOTIFY_END / NOTIFY_OUT_END
        word = (text_field(f, "disposition") or "").lower()
        disposition = DISPOSITIONS.get(word, Disposition.FAILED)
        duration = seconds_field(f, "duration")
        outbound = event == "NOTIFY_OUT_END"
        ended = after(start, duration)
        return {
            **base,
            "direction": CallDirection.OUT if outbound else CallDirection.IN,
            "customer": text_field(f, "destination" if outbound else "caller_id"),
            "line": text_field(f, "caller_id" if outbound else "called_did"),
            "agent": text_field(f, "internal"),
            "stage": CallStage.ENDED,
            "disposition": disposition,
            "final": True,
            "at": ended or start,
            "started_at": start,
            "ended_at": ended,
            "duration_s": duration,
            "hangup_cause": None if disposition is Disposition.ANSWERED else word or None,
            "recording_id": rec_id if recorded else None,
        }

    # --- click-to-call ------------------------------------------------------------

    async def make_call(
        self, account: ChannelAccount, secret: str | None, login: str, phone: str
    ) -> str:
        key = setting_env(account, "api_key_env")
        if not secret or not key:
            raise SendError(
                "secret_env (the API secret) and settings.api_key_env are needed",
                retryable=False,
                code="zadarma_not_configured",
            )
        params = {"from": login, "to": phone.lstrip("+")}
        query = urlencode(sorted(params.items()))
        url = f"{(setting_str(account, 'api_base') or API_BASE).rstrip('/')}{CALLBACK_PATH}"
        headers = {"Authorization": f"{key}:{api_signature(secret, CALLBACK_PATH, query)}"}
        timeout_s = float(setting_str(account, "timeout_s") or DEFAULT_TIMEOUT_S)
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as http,
                http.get(f"{url}?{query}", headers=headers) as resp,
            ):
                status, raw = resp.status, await resp.read()
        except TimeoutError:
            raise SendError(
                f"Zadarma did not answer within {timeout_s:g} s",
                retryable=True,
                code="zadarma_timeout",
            ) from None
        except aiohttp.ClientError as exc:
            raise SendError(
                f"cannot reach Zadarma: {exc}", retryable=True, code="zadarma_unreachable"
            ) from None
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = None
        if status == 200 and isinstance(data, dict) and data.get("status") == "success":
            return str(data.get("time") or "")
        message = data.get("message") if isinstance(data, dict) else None
        detail = message or raw[:200].decode("utf-8", "replace")
        raise SendError(
            f"Zadarma answered HTTP {status}: {detail}",
            retryable=status == 429 or status >= 500,
            code=f"zadarma_http_{status}" if status != 200 else "zadarma_refused",
        )


def api_signature(secret: str, path: str, query: str) -> str:
    """The signature part of Zadarma's ``Authorization`` header."""
    text = path + query + hashlib.md5(query.encode()).hexdigest()
    return signature(secret, text)
