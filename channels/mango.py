"""Mango Office VPBX API: call notifications in.

Mango POSTs form fields ``vpbx_api_key``, ``sign`` and ``json`` (the event as a JSON
string) to ``<base URL>/events/call`` on every change of a call leg and to
``<base URL>/events/summary`` when a call is over. The base URL to enter in Mango's
cabinet is ``https://<host>/webhooks/mango/{account}``; both paths (and Mango's other
``/events/*``) reach this module, which tells the kinds apart by their fields.

Authenticity: ``vpbx_api_key`` must be the account's (``settings.vpbx_api_key``) and
``sign`` must equal ``sha256_hex(vpbx_api_key + json + salt)`` computed over the ``json``
field exactly as received (the salt is the account secret); both compared in constant
time. Anything else → 401, nothing stored.

* ``events/call`` (has ``call_state``): ``entry_id`` is the whole call (stable across
  transfers) and our call id, ``call_id`` one leg, ``seq`` orders the reports of a call
  and ``timestamp`` (Unix s) dates them. ``Appeared`` → ringing; ``Connected`` at
  ``location: abonent`` → answered by ``to.extension`` (connected to the IVR or a queue is
  still ringing); ``OnHold`` → nothing new; ``Disconnected`` ends a leg (the call may go
  on in another leg — the summary ends the call) and keeps ``disconnect_reason``.
  Direction: from an external number to us → in; from an extension to an external number
  → out; extension to extension → internal. A stale or repeated report changes nothing
  (every field only moves forward; see channels/calls.py).
* ``events/summary`` (has ``entry_result`` or ``end_time``): ends the call. ``call_direction``
  1 → in, 2 → out, 0/3 → internal; ``entry_result`` 1 → answered, else missed;
  ``create_time`` / ``talk_time`` / ``end_time`` (Unix s) give the times, ``end_time −
  create_time`` the duration and ``end_time − talk_time`` the talk time.
* ``events/recording`` (has ``recording_id``): the recording's id, kept on the call.
* anything else (DTMF, SMS, command results) → 200, ignored.

A call or summary that carries ``command_id`` answers our click-to-call request of that id
(``CallEvent.request_id``; the call record keeps it).

Click-to-call (:meth:`MangoChannel.make_call`): ``POST {api_base}/vpbx/commands/callback``
with the same three form fields, ``json`` = ``{"command_id": <our request id>, "from":
{"extension": <the user's extension>}, "to_number": <digits>, "line_number"?}`` and
``sign = sha256_hex(vpbx_api_key + json + salt)``. Mango rings the employee, then the
customer. Its ``result``: 1000 → placed; 3100 (invalid parameters: unknown extension,
bad number …) → refused with the reason; 5xxx, HTTP 5xx/429, a timeout → try again later;
anything else → refused.

Account settings (``channels.yaml``): ``secret_env`` names the variable holding the salt
("ключ для создания подписи"); ``vpbx_api_key`` is the PBX's unique code (sent in clear
in every request, so not a secret); ``api_base`` (default
``https://app.mango-office.ru``), ``line_number`` (the number shown to the customer, if
not the PBX's default), ``login.<user id>`` (the user's extension), ``timeout_s``
(default 10).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import aiohttp
import orjson

from channels.base import (
    CallDirection,
    CallEvent,
    CallStage,
    Disposition,
    Parsed,
    SendError,
    Unauthorized,
    WebhookChannel,
    WebhookError,
    WebhookRequest,
    setting_str,
)
from channels.calls import call_event, epoch_field, form_fields, int_field, invalid, parsed
from channels.signing import as_bytes, same
from config.models import ChannelAccount

API_BASE = "https://app.mango-office.ru"
CALLBACK_PATH = "/vpbx/commands/callback"
DEFAULT_TIMEOUT_S = 10.0
RESULT_OK = 1000
RESULT_INVALID = 3100
# Mango's words for the result codes it documents (the rest are shown as numbers).
RESULTS = {
    3100: "invalid parameters (the extension or the number is not valid for this PBX)",
    4001: "the command is not allowed for this API key",
}

SUMMARY_DIRECTIONS = {
    0: CallDirection.INTERNAL,
    1: CallDirection.IN,
    2: CallDirection.OUT,
    3: CallDirection.INTERNAL,
}


def sign(api_key: str, json_text: str, salt: str) -> str:
    """Mango's ``sign`` of one request (over the ``json`` field's bytes as received)."""
    return hashlib.sha256(as_bytes(api_key + json_text + salt)).hexdigest()


def verify(account: ChannelAccount, secret: str | None, fields: Mapping[str, str]) -> None:
    api_key = setting_str(account, "vpbx_api_key")
    if not secret or not api_key:
        raise Unauthorized("this account has no salt (secret_env) or settings.vpbx_api_key")
    given_key = fields.get("vpbx_api_key", "")
    given_sign = fields.get("sign", "")
    if not given_key or not given_sign or "json" not in fields:
        raise Unauthorized("missing vpbx_api_key, sign or json")
    if not same(api_key, given_key):
        raise Unauthorized("vpbx_api_key is not this account's")
    expected = sign(api_key, fields["json"], secret)
    if not same(expected, given_sign.strip().lower()):
        raise Unauthorized("sign does not match")


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return str(value).strip() or None


def _json(text: str) -> Any:
    """The ``json`` field: orjson, else the standard library (integers of any size), else
    the text with undecodable bytes replaced; raises only when it is not JSON at all."""
    try:
        return orjson.loads(as_bytes(text))
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(as_bytes(text).decode("utf-8", "replace"))
    except (ValueError, RecursionError) as exc:
        raise WebhookError(f"the json field is not JSON: {type(exc).__name__}") from None


def _direction(src: dict[str, Any], dst: dict[str, Any]) -> CallDirection | None:
    src_ext, dst_ext = _str(src.get("extension")), _str(dst.get("extension"))
    src_num, dst_num = _str(src.get("number")), _str(dst.get("number"))
    if src_ext and dst_ext:
        return CallDirection.INTERNAL
    if src_ext and dst_num:
        return CallDirection.OUT
    if src_num and not src_ext:
        return CallDirection.IN
    return None


def _customer(direction: CallDirection | None, src: dict[str, Any], dst: dict[str, Any]) -> Any:
    if direction is CallDirection.IN:
        return src.get("number")
    if direction is CallDirection.OUT:
        return dst.get("number")
    return None


class MangoChannel(WebhookChannel):
    name = "mango"
    secret_fields: tuple[str, ...] = ("sign", "vpbx_api_key")
    # make_call takes our request id (sent as command_id; inbox/calls_api.py).
    takes_request_id = True

    def authenticate(
        self, account: ChannelAccount, secret: str | None, req: WebhookRequest
    ) -> None:
        verify(account, secret, form_fields(req))

    def read(self, account: ChannelAccount, req: WebhookRequest) -> Parsed:
        fields = form_fields(req)
        data = _json(fields.get("json", ""))
        if not isinstance(data, dict):
            raise WebhookError("the json field is not a JSON object")
        entry = _str(data.get("entry_id"))
        if "call_state" in data:
            return parsed(self._call(account.account, _need(entry), data))
        if "entry_result" in data or "end_time" in data:
            return parsed(self._summary(account.account, _need(entry), data))
        if "recording_id" in data and entry:
            return parsed(
                call_event(
                    channel=self.name,
                    account=account.account,
                    call_id=entry,
                    event="recording",
                    recording_id=_str(data.get("recording_id")),
                )
            )
        return Parsed()

    async def make_call(
        self,
        account: ChannelAccount,
        secret: str | None,
        login: str,
        phone: str,
        *,
        request_id: str | None = None,
    ) -> str:
        """Click-to-call (see :func:`make_call`)."""
        return await make_call(account, secret, login, phone, request_id=request_id)

    def _call(self, acc: str, entry: str, data: dict[str, Any]) -> CallEvent:
        state = _str(data.get("call_state")) or ""
        location = _str(data.get("location")) or ""
        src, dst = _obj(data.get("from")), _obj(data.get("to"))
        direction = _direction(src, dst)
        at = epoch_field(data, "timestamp")
        stage: CallStage | None = None
        disposition: Disposition | None = None
        agent = _str(dst.get("extension")) if direction is not CallDirection.OUT else None
        if direction is CallDirection.OUT:
            agent = _str(src.get("extension"))
        if state == "Appeared":
            stage = CallStage.RINGING
        elif state == "Connected" and (location == "abonent" or direction is CallDirection.OUT):
            stage, disposition = CallStage.ANSWERED, Disposition.ANSWERED
        hangup = _str(data.get("disconnect_reason")) if state == "Disconnected" else None
        return call_event(
            channel=self.name,
            account=acc,
            call_id=entry,
            event=f"call:{state or '?'}"[:64],
            leg_id=_str(data.get("call_id")),
            request_id=_str(data.get("command_id")),
            direction=direction,
            customer=_str(_customer(direction, src, dst)),
            line=_str(dst.get("line_number")) or _str(src.get("line_number")),
            agent=agent,
            stage=stage,
            disposition=disposition,
            transferred=bool(_str(src.get("taken_from_call_id"))),
            at=at,
            started_at=at if state == "Appeared" else None,
            answered_at=at if stage is CallStage.ANSWERED else None,
            hangup_cause=hangup,
            seq=int_field(data, "seq"),
        )

    def _summary(self, acc: str, entry: str, data: dict[str, Any]) -> CallEvent:
        src, dst = _obj(data.get("from")), _obj(data.get("to"))
        code = int_field(data, "call_direction")
        direction = SUMMARY_DIRECTIONS.get(code) if code is not None else None
        direction = direction or _direction(src, dst)
        created, talked, ended = (
            epoch_field(data, k) for k in ("create_time", "talk_time", "end_time")
        )
        answered = int_field(data, "entry_result") == 1
        agent = _str(src.get("extension")) if direction is CallDirection.OUT else None
        agent = agent or _str(dst.get("extension"))

        def span(a: datetime | None, b: datetime | None) -> int | None:
            return max(0, int((b - a).total_seconds())) if a and b else None

        return call_event(
            channel=self.name,
            account=acc,
            call_id=entry,
            event="summary",
            request_id=_str(data.get("command_id")),
            direction=direction,
            customer=_str(_customer(direction, src, dst)),
            line=_str(data.get("line_number")) or _str(dst.get("line_number")),
            agent=agent,
            stage=CallStage.ENDED,
            disposition=Disposition.ANSWERED if answered else Disposition.MISSED,
            final=True,
            at=ended,
            started_at=created,
            answered_at=talked if answered else None,
            ended_at=ended,
            duration_s=span(created, ended),
            talk_s=span(talked, ended) if answered else None,
            hangup_cause=_str(data.get("disconnect_reason")),
        )


async def make_call(
    account: ChannelAccount,
    secret: str | None,
    login: str,
    phone: str,
    *,
    request_id: str | None = None,
) -> str:
    """Ask Mango to ring extension ``login``, then ``phone`` (E.164); the command id
    (``request_id``, else a fresh one) is returned and comes back in the call's events."""
    api_key = setting_str(account, "vpbx_api_key")
    if not secret or not api_key:
        raise SendError(
            "secret_env (the salt) and settings.vpbx_api_key are needed",
            retryable=False,
            code="mango_not_configured",
        )
    command_id = request_id or uuid.uuid4().hex
    command: dict[str, Any] = {
        "command_id": command_id,
        "from": {"extension": login},
        "to_number": phone.lstrip("+"),
    }
    if line := setting_str(account, "line_number"):
        command["line_number"] = line
    json_text = orjson.dumps(command).decode()
    form = {"vpbx_api_key": api_key, "sign": sign(api_key, json_text, secret), "json": json_text}
    url = (setting_str(account, "api_base") or API_BASE).rstrip("/") + CALLBACK_PATH
    try:
        timeout_s = float(setting_str(account, "timeout_s") or DEFAULT_TIMEOUT_S)
    except ValueError:
        timeout_s = DEFAULT_TIMEOUT_S
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as http,
            http.post(url, data=form) as resp,
        ):
            status, raw = resp.status, await resp.read()
    except TimeoutError:
        raise SendError(
            f"Mango did not answer within {timeout_s:g} s", retryable=True, code="mango_timeout"
        ) from None
    except aiohttp.ClientError as exc:
        raise SendError(
            f"cannot reach Mango: {type(exc).__name__}", retryable=True, code="mango_unreachable"
        ) from None
    return _callback_result(status, raw, command_id)


def _callback_result(status: int, raw: bytes, command_id: str) -> str:
    """The command id when Mango took the command, else :class:`SendError`."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = None
    result = _result_code(data.get("result") if isinstance(data, dict) else None)
    if status == 200 and result == RESULT_OK:
        return command_id
    said = RESULTS.get(result or 0) or (raw[:200].decode("utf-8", "replace") or "no body")
    if result == RESULT_INVALID:
        raise SendError(
            f"Mango refused the call: {result} {said}",
            retryable=False,
            code="mango_invalid_parameters",
        )
    transient = status >= 500 or status == 429 or (result is not None and 5000 <= result < 6000)
    raise SendError(
        f"Mango answered HTTP {status}, result {result if result is not None else '?'}: {said}",
        retryable=transient,
        code=f"mango_{result}" if result is not None else f"mango_http_{status}",
    )


def _result_code(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _need(entry: str | None) -> str:
    if entry is None:
        raise invalid("json.entry_id", "required")
    return entry
