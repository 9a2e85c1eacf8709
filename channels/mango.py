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

Account settings (``channels.yaml``): ``secret_env`` names the variable holding the salt
("ключ для создания подписи"); ``vpbx_api_key`` is the PBX's unique code (sent in clear
in every request, so not a secret).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import orjson

from channels.base import (
    CallDirection,
    CallEvent,
    CallStage,
    Disposition,
    Parsed,
    Unauthorized,
    WebhookChannel,
    WebhookError,
    WebhookRequest,
    setting_str,
)
from channels.calls import call_event, epoch_field, form_fields, int_field, invalid, parsed
from channels.signing import as_bytes, same
from config.models import ChannelAccount

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


def _need(entry: str | None) -> str:
    if entry is None:
        raise invalid("json.entry_id", "required")
    return entry
