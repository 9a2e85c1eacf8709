"""MegaFon Virtual PBX (ВАТС, ``*.megapbx.ru``): the CRM integration API, both ways.

Inbound (``POST /webhooks/megafon/{account}``, form-encoded): every request carries
``cmd`` and ``crm_token``, the key typed into the PBX cabinet; it is the only check, so it
is compared in constant time and a missing or wrong one is refused with 401 (nothing
stored).

* ``cmd=event`` — the live state of a call, per employee: ``type`` INCOMING / OUTGOING
  (ringing), ACCEPTED (an employee answered), TRANSFERRED, COMPLETED / CANCELLED (that
  employee's leg is over — the call itself may go on with another one, so it does not
  end the call), with ``callid``, ``phone`` (the customer), ``diversion`` (our number),
  ``user`` / ``ext`` (the employee), ``direction`` in/out.
* ``cmd=history`` — the summary after the call: ``type`` in/out, ``status`` (Success →
  answered; Missed, Cancel → missed; Busy → busy; NotAvailable, NotAllowed, NotFound and
  anything else → failed, the status kept as ``hangup_cause``), ``start``
  (``YYYYMMDDTHHMMSSZ``, UTC), ``duration`` (s), ``link`` (the recording), ``user`` (who
  had the call), ``rating``. It ends the call.
* ``cmd=rating`` — the caller rated the call: kept on the call.
* ``cmd=contact`` — "who is calling", asked while the phone rings: answered from the
  contacts' unique identity index with ``{"contact_name", "responsible"}`` (the
  responsible's PBX login) or ``{}`` for an unknown number. Nothing is stored.
* any other ``cmd`` → 200, ignored.

Each call report becomes a :class:`~channels.base.CallEvent`, and the customer's call one
message ``call:<callid>`` (channels/calls.py): a repeat is a duplicate.

Outbound (click-to-call, :meth:`MegaFonChannel.make_call`): ``POST {api_url}`` with
``cmd=makeCall&token=<PBX API key>&user=<login>&phone=<digits>``; the PBX rings the
employee first, then the customer. 200 → the call id (a bare id, or JSON with
``CallID``); 400/401/403 with ``{"error": …}`` → refused; 429, 5xx, timeouts → retryable.

Account settings (``channels.yaml``; secrets only as environment variable names):

``secret_env``        the ``crm_token`` the PBX sends (required to accept anything)
``api_url``           ``https://<domain>.megapbx.ru/sys/crm_api.wcgp`` (for click-to-call)
``api_token_env``     the PBX API key ("ключ для авторизации в API АТС")
``login.<user id>``   the PBX login of one of our users (``login.ivan.petrov: petrov``):
                      who click-to-call rings, and what ``responsible`` answers (default:
                      the user id itself)
``timeout_s``         timeout of one API call in seconds (default 10)
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

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
    Parsed,
    SendError,
    Unauthorized,
    WebhookChannel,
    WebhookRequest,
    setting_env,
    setting_str,
)
from channels.calls import (
    call_event,
    form_fields,
    int_field,
    invalid,
    parsed,
    seconds_field,
    text_field,
    user_login,
)
from channels.signing import same
from config.models import ChannelAccount

log = structlog.get_logger("omniroute.megafon")

TOKEN_FIELD = "crm_token"
DEFAULT_TIMEOUT_S = 10.0
# cmd=event types: (stage, disposition, transferred). COMPLETED / CANCELLED end one
# employee's leg, not the call (history does).
EVENT_TYPES: dict[str, tuple[CallStage | None, Disposition | None, bool]] = {
    "INCOMING": (CallStage.RINGING, None, False),
    "OUTGOING": (CallStage.RINGING, None, False),
    "ACCEPTED": (CallStage.ANSWERED, Disposition.ANSWERED, False),
    "TRANSFERRED": (None, None, True),
    "COMPLETED": (None, None, False),
    "CANCELLED": (None, None, False),
}
HISTORY_STATUS: dict[str, Disposition] = {
    "success": Disposition.ANSWERED,
    "missed": Disposition.MISSED,
    "cancel": Disposition.MISSED,
    "busy": Disposition.BUSY,
    "notavailable": Disposition.FAILED,
    "notallowed": Disposition.FAILED,
    "notfound": Disposition.FAILED,
}
DIRECTIONS = {"in": CallDirection.IN, "out": CallDirection.OUT}


def verify(secret: str | None, fields: Mapping[str, str]) -> None:
    if not secret:
        raise Unauthorized("this account has no crm_token configured")
    given = fields.get(TOKEN_FIELD, "")
    if not given:
        raise Unauthorized(f"missing {TOKEN_FIELD}")
    if not same(secret, given):
        raise Unauthorized(f"{TOKEN_FIELD} does not match")


def parse_start(value: str | None) -> datetime | None:
    """``20170703T121110Z`` (UTC) → datetime; None if missing or malformed (the call is
    kept without its start)."""
    if value is None:
        return None
    try:
        return datetime.strptime(value, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def _callid(fields: Mapping[str, str]) -> str:
    callid = text_field(fields, "callid")
    if callid is None:
        raise invalid("callid", "required")
    return callid


def _agent(fields: Mapping[str, str]) -> str | None:
    return text_field(fields, "user") or text_field(fields, "ext")


class MegaFonChannel(WebhookChannel):
    name = "megafon"
    secret_fields: tuple[str, ...] = ("crm_token",)

    # --- inbound ------------------------------------------------------------------

    def authenticate(
        self, account: ChannelAccount, secret: str | None, req: WebhookRequest
    ) -> None:
        verify(secret, form_fields(req))

    def read(self, account: ChannelAccount, req: WebhookRequest) -> Parsed:
        fields = form_fields(req)
        cmd = (fields.get("cmd") or "").strip()
        if cmd == "contact":
            # No number: answered as an unknown caller (the call must go on).
            return Parsed(lookup=CallerQuery(text_field(fields, "phone") or ""))
        if cmd == "event":
            return self._event(account.account, fields)
        if cmd == "history":
            return parsed(self._history(account.account, fields))
        if cmd == "rating":
            return parsed(self._rating(account.account, fields))
        log.info("megafon.ignored", account=account.account, cmd=cmd[:32])
        return Parsed()

    def _event(self, acc: str, fields: Mapping[str, str]) -> Parsed:
        kind = (fields.get("type") or "").strip().upper()
        if kind not in EVENT_TYPES:
            log.info("megafon.event_ignored", account=acc, type=kind[:32])
            return Parsed()
        stage, disposition, transferred = EVENT_TYPES[kind]
        direction = DIRECTIONS.get((fields.get("direction") or "").strip().lower())
        if direction is None and kind in ("INCOMING", "OUTGOING"):
            direction = CallDirection.IN if kind == "INCOMING" else CallDirection.OUT
        ev = call_event(
            channel=self.name,
            account=acc,
            call_id=_callid(fields),
            event=f"event:{kind}",
            direction=direction,
            customer=text_field(fields, "phone"),
            line=text_field(fields, "diversion"),
            agent=_agent(fields),
            stage=stage,
            disposition=disposition,
            transferred=transferred,
        )
        return parsed(ev)

    def _history(self, acc: str, fields: Mapping[str, str]) -> CallEvent:
        status = text_field(fields, "status") or ""
        disposition = HISTORY_STATUS.get(status.lower(), Disposition.FAILED)
        return call_event(
            channel=self.name,
            account=acc,
            call_id=_callid(fields),
            event="history",
            direction=DIRECTIONS.get((fields.get("type") or "").strip().lower()),
            customer=text_field(fields, "phone"),
            line=text_field(fields, "diversion"),
            agent=_agent(fields),
            stage=CallStage.ENDED,
            disposition=disposition,
            final=True,
            started_at=parse_start(text_field(fields, "start")),
            duration_s=seconds_field(fields, "duration"),
            hangup_cause=None if disposition is Disposition.ANSWERED else status or None,
            recording_url=text_field(fields, "link"),
            rating=int_field(fields, "rating"),
        )

    def _rating(self, acc: str, fields: Mapping[str, str]) -> CallEvent:
        return call_event(
            channel=self.name,
            account=acc,
            call_id=_callid(fields),
            event="rating",
            customer=text_field(fields, "phone"),
            rating=int_field(fields, "rating"),
        )

    def caller_reply(self, account: ChannelAccount, caller: Caller | None) -> Parsed:
        """``{"contact_name": …, "responsible": <PBX login>}``, or ``{}`` if unknown."""
        body: dict[str, str] = {}
        if caller is not None:
            if caller.name:
                body["contact_name"] = caller.name
            if caller.responsible_id:
                body["responsible"] = (
                    user_login(account, caller.responsible_id) or caller.responsible_id
                )
        return Parsed(reply=orjson.dumps(body).decode(), reply_content_type="application/json")

    # --- click-to-call ------------------------------------------------------------

    async def make_call(
        self, account: ChannelAccount, secret: str | None, login: str, phone: str
    ) -> str:
        url = setting_str(account, "api_url")
        token = setting_env(account, "api_token_env")
        if not url or not token:
            raise SendError(
                "settings.api_url and settings.api_token_env (the PBX API key) are needed",
                retryable=False,
                code="megafon_not_configured",
            )
        form = {"cmd": "makeCall", "token": token, "user": login, "phone": phone.lstrip("+")}
        timeout_s = float(setting_str(account, "timeout_s") or DEFAULT_TIMEOUT_S)
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as http,
                http.post(url, data=form) as resp,
            ):
                status, raw = resp.status, await resp.read()
        except TimeoutError:
            raise SendError(
                f"the PBX did not answer within {timeout_s:g} s",
                retryable=True,
                code="megafon_timeout",
            ) from None
        except aiohttp.ClientError as exc:
            raise SendError(
                f"cannot reach the PBX: {exc}", retryable=True, code="megafon_unreachable"
            ) from None
        return _call_id(status, raw)


def _call_id(status: int, raw: bytes) -> str:
    """The call id of a makeCall answer, or the PBX's refusal as a SendError."""
    text = raw[:500].decode("utf-8", "replace").strip()
    try:
        data = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        data = None
    if status == 200:
        if isinstance(data, dict):
            cid = data.get("CallID") or data.get("callid") or data.get("call_id")
            if isinstance(cid, str | int) and not isinstance(cid, bool):
                return str(cid)
            if "error" in data:
                raise SendError(
                    f"the PBX refused: {data['error']}", retryable=False, code="megafon_refused"
                )
        return text.strip('"')
    detail = data.get("error") if isinstance(data, dict) else None
    message = f"the PBX answered HTTP {status}: {detail or text[:200]}"
    retryable = status == 429 or status >= 500
    raise SendError(message, retryable=retryable, code=f"megafon_http_{status}")
