"""The generic call webhook: Asterisk (dialplan ``CURL``/``System``, AMI or ARI bridges)
and any other PBX that can POST JSON.

``POST /webhooks/pbx/{account}`` with a JSON body (:class:`PbxCallEvent`), signed like the
API channel with the account's secret::

    X-Omniroute-Timestamp: <unix seconds>
    X-Omniroute-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + raw body)>

Requests more than five minutes off the server clock, or with a missing or wrong
signature, are refused with 401 (nothing stored). A signed body that does not fit the
contract is read tolerantly (:func:`tolerant_event`: odd fields dropped, the call kept);
only one without a call id, or not JSON, raises (ingest keeps it as ``unparsed``).
A PBX may send the events of a call in any order and repeat them: the call record
converges (channels/calls.py); dedup key (``call_id``, ``event``, ``seq``).

Events: ``call.started`` and ``call.ringing`` (ringing; ``extension``/``agent`` is who it
rings), ``call.answered`` (``agent`` took it; a second agent answering later is a
transfer), ``call.ended`` (with ``disposition``: answered, no-answer, busy, failed or
cancelled — Asterisk's ``DIALSTATUS`` words ANSWER, NOANSWER, BUSY, CANCEL, CONGESTION,
CHANUNAVAIL … are accepted too), ``call.recording_ready`` (``recording_url``).
``docs/channels/telephony.md`` has the contract with a dialplan that sends it.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from channels.api import verify
from channels.base import (
    CallDirection,
    CallEvent,
    CallStage,
    Disposition,
    InvalidPayload,
    Parsed,
    WebhookChannel,
    WebhookRequest,
)
from channels.calls import MAX_EPOCH_S, call_event, int_field, invalid, parsed, seconds_field
from config.models import ChannelAccount

EventName = Literal[
    "call.started", "call.ringing", "call.answered", "call.ended", "call.recording_ready"
]
STAGES: dict[str, CallStage | None] = {
    "call.started": CallStage.RINGING,
    "call.ringing": CallStage.RINGING,
    "call.answered": CallStage.ANSWERED,
    "call.ended": CallStage.ENDED,
    "call.recording_ready": None,
}
# The contract's words, and Asterisk's DIALSTATUS values.
DISPOSITIONS: dict[str, Disposition] = {
    "answered": Disposition.ANSWERED,
    "answer": Disposition.ANSWERED,
    "no-answer": Disposition.MISSED,
    "noanswer": Disposition.MISSED,
    "cancelled": Disposition.MISSED,
    "cancel": Disposition.MISSED,
    "busy": Disposition.BUSY,
    "failed": Disposition.FAILED,
    "congestion": Disposition.FAILED,
    "chanunavail": Disposition.FAILED,
    "dontcall": Disposition.FAILED,
    "torture": Disposition.FAILED,
    "invalidargs": Disposition.FAILED,
}


class PbxCallEvent(BaseModel):
    """The request body: one event of one call."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    event: EventName
    call_id: str = Field(
        min_length=1, max_length=256, description="the whole call (Asterisk: Linkedid)"
    )
    leg_id: str | None = Field(default=None, max_length=256, description="Asterisk: Uniqueid")
    direction: Literal["in", "out", "internal"]
    from_: str | None = Field(default=None, alias="from", max_length=64)
    to: str | None = Field(default=None, max_length=64)
    extension: str | None = Field(default=None, max_length=64)
    agent: str | None = Field(default=None, max_length=128)
    started_at: datetime | None = None
    answered_at: datetime | None = None
    ended_at: datetime | None = None
    duration_sec: int | None = Field(default=None, ge=0)
    billsec: int | None = Field(default=None, ge=0)
    disposition: str | None = Field(default=None, max_length=32)
    hangup_cause: str | None = Field(default=None, max_length=128)
    recording_url: str | None = Field(default=None, max_length=4096)
    seq: int | None = Field(default=None, ge=0)

    @field_validator("disposition")
    @classmethod
    def _known_disposition(cls, value: str | None) -> str | None:
        if value is not None and value.strip().lower() not in DISPOSITIONS:
            words = "answered, no-answer, busy, failed, cancelled (or Asterisk's DIALSTATUS)"
            raise ValueError(f"must be one of {words}")
        return value

    @field_validator("from_", "to", "extension", "agent", "hangup_cause", "recording_url")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return (value.strip() or None) if value is not None else None


def _field_errors(exc: ValidationError) -> list[dict[str, str]]:
    return [
        {
            "field": ".".join("from" if p == "from_" else str(p) for p in e["loc"]) or "body",
            "message": e["msg"],
        }
        for e in exc.errors(include_url=False, include_input=False)
    ]


def to_call_event(channel: str, account: str, body: PbxCallEvent) -> CallEvent:
    direction = CallDirection(body.direction)
    customer = {CallDirection.IN: body.from_, CallDirection.OUT: body.to}.get(direction)
    line = {CallDirection.IN: body.to, CallDirection.OUT: body.from_}.get(direction)
    disposition = DISPOSITIONS[body.disposition.strip().lower()] if body.disposition else None
    stage = STAGES[body.event]
    if stage is CallStage.ANSWERED:
        disposition = Disposition.ANSWERED
    at = (
        {
            CallStage.RINGING: body.started_at,
            CallStage.ANSWERED: body.answered_at,
            CallStage.ENDED: body.ended_at,
        }.get(stage)
        if stage
        else None
    )
    return call_event(
        channel=channel,
        account=account,
        call_id=body.call_id,
        event=body.event,
        leg_id=body.leg_id,
        direction=direction,
        customer=customer,
        line=line,
        agent=body.agent or body.extension,
        stage=stage,
        disposition=disposition,
        at=at,
        started_at=body.started_at,
        answered_at=body.answered_at,
        ended_at=body.ended_at,
        duration_s=body.duration_sec,
        talk_s=body.billsec,
        hangup_cause=body.hangup_cause,
        recording_url=body.recording_url,
        seq=body.seq,
    )


_WHEN: TypeAdapter[datetime] = TypeAdapter(datetime)
_TEXT_FIELDS = ("leg_id", "from", "to", "extension", "agent", "hangup_cause", "recording_url")


def _when(value: Any) -> datetime | None:
    """An RFC 3339 time (or unix seconds) within years 1..9999, else None."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float) and not 0 < value <= MAX_EPOCH_S:
        return None
    try:
        return _WHEN.validate_python(value)
    except (ValidationError, OverflowError, ValueError):
        return None


def _text(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return str(value).strip() or None


def tolerant_event(channel: str, account: str, raw: dict[str, Any]) -> CallEvent:
    """A body that does not fit the contract, read for what it holds: the call id (required,
    text or a number) and whatever else is usable; an unknown event keeps its name with no
    stage, an unknown disposition is dropped."""
    call_id = _text(raw.get("call_id"))
    if call_id is None:
        raise invalid("call_id", "required")
    text = {name: _text(raw.get(name)) for name in _TEXT_FIELDS}
    event = _text(raw.get("event")) or "?"
    direction = _text(raw.get("direction"))
    dir_ = CallDirection(direction) if direction in ("in", "out", "internal") else None
    inout = dir_ in (CallDirection.IN, CallDirection.OUT)
    word = (_text(raw.get("disposition")) or "").lower()
    stage = STAGES.get(event)
    disposition = Disposition.ANSWERED if stage is CallStage.ANSWERED else DISPOSITIONS.get(word)
    started, answered, ended = (
        _when(raw.get(k)) for k in ("started_at", "answered_at", "ended_at")
    )
    at = {CallStage.RINGING: started, CallStage.ANSWERED: answered, CallStage.ENDED: ended}
    return call_event(
        channel=channel,
        account=account,
        call_id=call_id,
        event=event,
        leg_id=text["leg_id"],
        direction=dir_,
        customer=text["from" if dir_ is CallDirection.IN else "to"] if inout else None,
        line=text["to" if dir_ is CallDirection.IN else "from"] if inout else None,
        agent=text["agent"] or text["extension"],
        stage=stage,
        disposition=disposition,
        at=at.get(stage) if stage else None,
        started_at=started,
        answered_at=answered,
        ended_at=ended,
        duration_s=seconds_field(raw, "duration_sec"),
        talk_s=seconds_field(raw, "billsec"),
        hangup_cause=text["hangup_cause"],
        recording_url=text["recording_url"],
        seq=int_field(raw, "seq"),
    )


def _json(body: bytes) -> Any:
    """orjson, else the standard library (integers of any size, undecodable bytes
    replaced); raises only for a body that is not JSON at all."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body.decode("utf-8", "replace"))
    except (ValueError, RecursionError) as exc:
        raise InvalidPayload(
            "body is not JSON", [{"field": "body", "message": type(exc).__name__}]
        ) from None


class PbxChannel(WebhookChannel):
    name = "pbx"

    def authenticate(
        self, account: ChannelAccount, secret: str | None, req: WebhookRequest
    ) -> None:
        verify(secret, req)

    def read(self, account: ChannelAccount, req: WebhookRequest) -> Parsed:
        """The contract's body as is; a signed body that does not fit it is read
        tolerantly (:func:`tolerant_event`) — only one without a call id raises."""
        raw = _json(req.body)
        if not isinstance(raw, dict):
            raise InvalidPayload(
                "body is not a JSON object", [{"field": "body", "message": "not an object"}]
            )
        try:
            body = PbxCallEvent.model_validate(raw)
        except ValidationError:
            return parsed(tolerant_event(self.name, account.account, raw))
        return parsed(to_call_event(self.name, account.account, body))
