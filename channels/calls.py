"""Calls, whatever the provider: the normalized call record and the merge that makes it
converge.

A PBX reports a call in several webhooks (ringing, answered, transferred, ended, a
summary, a recording …). They may arrive out of order and more than once. Every report
is a :class:`~channels.base.CallEvent`; :func:`contributions` turns one into a set of
order-independent updates of the call record — each field combined with ``min`` or
``max`` (or added to a set) — so applying the same reports in any order, any number of
times, gives the same record. crm_store/calls.py writes those updates as one MongoDB
update (``$min`` / ``$max`` / ``$addToSet``, no read-modify-write); :func:`merge` is the
same combination in Python (tests, and anyone holding the reports).

Fields that must move only forward carry their rank in front of their value and are
combined with ``max`` as a whole (MongoDB compares embedded documents field by field):

* ``status`` ``{rank, value}``: ringing (1) < answered (2) < ended (3);
* ``disposition`` ``{rank, value}``: failed (1) < missed (2) < busy (3) < answered (4) —
  once anyone answered, the call was answered;
* ``agent`` ``{rank, seq, at, login}``: who had the call last — a provider summary (4)
  over an end (3) over an answer (2) over ringing (1), then the provider's sequence
  number, then its timestamp (epoch ms), then the login (a deterministic tie-break).

A call of a customer also becomes one :class:`~channels.base.InboundMessage`
(:func:`call_message`) with ``provider_id = "call:<call id>"``: every report of the call
carries it and intake keeps the first, so the call is routed once — to a new lead for an
unknown inbound caller, attached to the contact's deal/lead otherwise; outbound calls are
``automatic`` and never create a lead.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable
from urllib.parse import parse_qsl

from annotated_types import Ge, MaxLen
from pydantic import BaseModel, ConfigDict, Field, field_validator

from channels.base import (
    CallDirection,
    CallEvent,
    CallStage,
    Disposition,
    InboundMessage,
    InvalidPayload,
    Parsed,
    Sender,
    WebhookRequest,
)
from channels.identity import normalize_phone
from config.models import ChannelAccount

STAGE_RANK: dict[CallStage, int] = {
    CallStage.RINGING: 1,
    CallStage.ANSWERED: 2,
    CallStage.ENDED: 3,
}
DISPOSITION_RANK: dict[Disposition, int] = {
    Disposition.FAILED: 1,
    Disposition.MISSED: 2,
    Disposition.BUSY: 3,
    Disposition.ANSWERED: 4,
}
FINAL_AGENT_RANK = 4
MESSAGE_PREFIX = "call:"

# Event types the call record announces (crm_store/event_catalogue.py).
CALL_STARTED = "call.started"
CALL_ENDED = "call.ended"
CALL_MISSED = "call.missed"


class Op(StrEnum):
    """How a field combines the values of several reports (MongoDB update operators)."""

    MIN = "$min"
    MAX = "$max"
    ADD = "$addToSet"


Value = str | int | bool | datetime | dict[str, int | str]
Contribution = tuple[Op, str, Value]


def epoch_ms(at: datetime | None) -> int:
    return int(at.timestamp() * 1000) if at is not None else 0


def to_ms(at: datetime | None) -> datetime | None:
    """UTC, truncated to milliseconds (what BSON stores), so Python and MongoDB agree."""
    if at is None:
        return None
    at = at.astimezone(UTC) if at.tzinfo else at.replace(tzinfo=UTC)
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def phone_of(raw: str | None) -> str | None:
    """A number as the call record keeps it: E.164 when it is a phone number, else the
    provider's text stripped (``anonymous``, a short internal number)."""
    if raw is None or not raw.strip():
        return None
    return normalize_phone(raw) or raw.strip()


def answered_by(ev: CallEvent) -> str | None:
    """The agent who took the call, if this report says someone did."""
    took = ev.stage is CallStage.ANSWERED or (
        ev.disposition is Disposition.ANSWERED and ev.stage is CallStage.ENDED
    )
    return ev.agent if took and ev.agent else None


def contributions(ev: CallEvent) -> list[Contribution]:
    """What one report adds to its call record: ``(op, field, value)`` triples."""
    out: list[Contribution] = []

    def put(op: Op, name: str, value: Value | None) -> None:
        if value is not None:
            out.append((op, name, value))

    put(Op.MAX, "direction", ev.direction.value if ev.direction else None)
    put(Op.MAX, "customer", phone_of(ev.customer))
    put(Op.MAX, "line", phone_of(ev.line))
    if ev.stage is not None:
        put(Op.MAX, "status", {"rank": STAGE_RANK[ev.stage], "value": ev.stage.value})
    if ev.disposition is not None:
        rank = DISPOSITION_RANK[ev.disposition]
        put(Op.MAX, "disposition", {"rank": rank, "value": ev.disposition.value})
    if ev.agent:
        rank = FINAL_AGENT_RANK if ev.final else (STAGE_RANK[ev.stage] if ev.stage else 0)
        agent: dict[str, int | str] = {
            "rank": rank,
            "seq": ev.seq or 0,
            "at": epoch_ms(ev.at),
            "login": ev.agent,
        }
        put(Op.MAX, "agent", agent)
    put(Op.ADD, "answered_by", answered_by(ev))
    if ev.transferred:
        put(Op.MAX, "transferred", True)
    put(Op.MIN, "started_at", to_ms(ev.started_at))
    put(Op.MIN, "answered_at", to_ms(ev.answered_at))
    put(Op.MAX, "ended_at", to_ms(ev.ended_at))
    put(Op.MAX, "duration_s", ev.duration_s)
    put(Op.MAX, "talk_s", ev.talk_s)
    put(Op.MAX, "hangup_cause", ev.hangup_cause)
    put(Op.MAX, "recording_url", ev.recording_url)
    put(Op.MAX, "recording_id", ev.recording_id)
    put(Op.MAX, "rating", ev.rating)
    put(Op.MAX, "seq", ev.seq)
    put(Op.MAX, "request_id", ev.request_id)
    return out


def _key(value: Value) -> Any:
    """Comparison key matching MongoDB's for the values used here (an embedded document
    compares field by field; each field always holds one type)."""
    return tuple(value.values()) if isinstance(value, dict) else value


def _wins(op: Op, new: Value, old: Value) -> bool:
    if op is Op.MAX:
        return bool(_key(new) > _key(old))
    return bool(_key(new) < _key(old))


def merge(state: dict[str, Any], ev: CallEvent) -> dict[str, Any]:
    """The record ``state`` after one more report: exactly what the MongoDB update of
    crm_store/calls.py does to the stored document's call fields."""
    out = dict(state)
    for op, name, value in contributions(ev):
        old = out.get(name)
        if op is Op.ADD:
            items = list(old or [])
            if value not in items:
                items.append(value)
            out[name] = items
        elif old is None or _wins(op, value, old):
            out[name] = value
    return out


def merge_all(events: list[CallEvent]) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for ev in events:
        state = merge(state, ev)
    return state


# --- the call record, read back ---------------------------------------------------------


class CallRecord(BaseModel):
    """A call as stored (``calls`` collection) or merged: ranked fields read as plain
    values, ``answered_by`` as a sorted set."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    id: str | None = Field(default=None, alias="_id")
    channel: str | None = None
    account: str | None = None
    call_id: str | None = None
    message_id: str | None = None
    source_id: str | None = None
    direction: CallDirection | None = None
    customer: str | None = None
    line: str | None = None
    status: CallStage | None = None
    disposition: Disposition | None = None
    agent: str | None = None
    answered_by: list[str] = Field(default_factory=list)
    transferred: bool = False
    started_at: datetime | None = None
    answered_at: datetime | None = None
    ended_at: datetime | None = None
    duration_s: int | None = None
    talk_s: int | None = None
    hangup_cause: str | None = None
    recording_url: str | None = None
    recording_id: str | None = None
    rating: int | None = None
    seq: int | None = None
    # Our click-to-call request the call answers (crm_store/call_requests.py).
    request_id: str | None = None
    announced: list[str] = Field(default_factory=list)

    @field_validator("status", "disposition", mode="before")
    @classmethod
    def _ranked(cls, value: Any) -> Any:
        return value.get("value") if isinstance(value, dict) else value

    @field_validator("agent", mode="before")
    @classmethod
    def _agent(cls, value: Any) -> Any:
        return value.get("login") if isinstance(value, dict) else value

    @field_validator("answered_by", "announced", mode="before")
    @classmethod
    def _set(cls, value: Any) -> Any:
        return sorted(set(value)) if isinstance(value, list) else value

    @property
    def was_transferred(self) -> bool:
        """The provider said so, or more than one agent took the call."""
        return self.transferred or len(self.answered_by) > 1

    @property
    def missed(self) -> bool:
        """An inbound call that ended without anyone answering it."""
        return (
            self.direction is CallDirection.IN
            and self.status is CallStage.ENDED
            and self.disposition is not None
            and self.disposition is not Disposition.ANSWERED
        )


def due_announcements(rec: CallRecord) -> list[str]:
    """Event types the record has reached and not yet announced. ``call.missed`` is a
    candidate only: it is emitted when the caller is a known contact."""
    if rec.direction not in (CallDirection.IN, CallDirection.OUT):
        return []  # internal calls, or nothing known yet
    due = [CALL_STARTED]
    if rec.status is CallStage.ENDED and rec.disposition is not None:
        due.append(CALL_ENDED)
        if rec.missed:
            due.append(CALL_MISSED)
    return [t for t in due if t not in rec.announced]


# --- the message a call becomes ---------------------------------------------------------


class SignedCallEvent(CallEvent):
    """A report from a provider that signs only part of it (Zadarma signs
    ``caller_id + called_did + call_start``, not the event, the call id or the outcome).
    crm_store/calls.py applies it only under these rules:

    * ``claim`` (the event and what was signed) is accepted once: a second report with the
      same claim is applied only if it is the same report again (same ``fingerprint`` and
      call id — a provider retry, which changes nothing); anything else is a replay,
      dropped;
    * only a report that ``opens`` may create the call, and the call's message is keyed by
      ``identity`` (the signed identity of the call, not the unsigned call id): a replay
      under another call id finds its message already stored;
    * a report that does not open the call updates only a call opened with the same
      ``identity`` (None: the call id itself is signed, any opened call); until that call
      exists it waits, and is applied when the opening report arrives.
    """

    claim: str = Field(min_length=1, max_length=128)
    fingerprint: str = Field(min_length=1, max_length=128)
    identity: str | None = Field(default=None, max_length=128)
    opens: bool = False


def message_key(ev: CallEvent) -> str:
    """What the call's message is keyed by: the signed identity of a partly signed
    report, else the provider's call id."""
    if isinstance(ev, SignedCallEvent) and ev.identity:
        return ev.identity
    return ev.call_id


def message_provider_id(call_id: str) -> str:
    return MESSAGE_PREFIX + call_id


def call_text(direction: CallDirection, disposition: Disposition | None) -> str:
    if direction is CallDirection.OUT:
        return "Outgoing call"
    if disposition is not None and disposition is not Disposition.ANSWERED:
        return "Missed call"
    return "Incoming call"


def call_message(ev: CallEvent) -> InboundMessage | None:
    """The message that routes the call: for a customer's inbound or outbound call whose
    number is a phone number; None otherwise (internal calls, hidden numbers, a report
    that does not name the customer or the direction)."""
    if ev.direction not in (CallDirection.IN, CallDirection.OUT) or not ev.customer:
        return None
    if isinstance(ev, SignedCallEvent) and not ev.opens:
        return None  # unsigned outcomes never create a lead on their own
    if normalize_phone(ev.customer) is None:
        return None
    meta: dict[str, str | int | bool | None] = {
        "kind": "call",
        "call_direction": ev.direction.value,
        "call_id": ev.call_id,
    }
    if ev.line and (line := phone_of(ev.line)):
        meta["call_line"] = line
    return InboundMessage(
        channel=ev.channel,
        account=ev.account,
        provider_id=message_provider_id(message_key(ev)),
        thread_id=None,
        sender=Sender(phone=ev.customer),
        text=call_text(ev.direction, ev.disposition),
        sent_at=ev.started_at or ev.at,
        automatic=ev.direction is CallDirection.OUT,
        meta=meta,
    )


def parsed(
    *events: CallEvent, reply: str | None = None, content_type: str = "text/plain"
) -> Parsed:
    """What a channel returns for call reports: the reports and their calls' messages."""
    messages: dict[str, InboundMessage] = {}
    for ev in events:
        msg = call_message(ev)
        if msg is not None:
            messages.setdefault(msg.provider_id, msg)
    return Parsed(
        messages=list(messages.values()),
        calls=list(events),
        reply=reply,
        reply_content_type=content_type,
    )


# --- click-to-call -----------------------------------------------------------------------


@runtime_checkable
class ClickToCall(Protocol):
    """A telephony channel that can ring an employee and connect them to a customer."""

    name: str

    async def make_call(
        self, account: ChannelAccount, secret: str | None, login: str, phone: str
    ) -> str:
        """Ask the PBX to call ``phone`` (E.164) for the employee ``login``; return the
        provider's call id ("" when it gives none). Raise :class:`SendError` if refused."""
        ...


def user_login(account: ChannelAccount, user_id: str) -> str | None:
    """The PBX login (or extension) of one of our users: the account setting
    ``login.<user id>``."""
    value = account.settings.get(f"login.{user_id}")
    return None if value is None or isinstance(value, bool) else str(value)


def login_user(account: ChannelAccount, login: str) -> str | None:
    """Our user id for a PBX login (the reverse of :func:`user_login`)."""
    for key, value in account.settings.items():
        if key.startswith("login.") and str(value) == login:
            return key.removeprefix("login.")
    return None


# --- reading provider reports leniently ---------------------------------------------------
#
# A signed report is kept whatever its shape (issue: never refuse an authentic delivery):
# these readers return None for a value they cannot use (a word where a number belongs, an
# integer beyond 64 bits, a date out of range) instead of raising, and :func:`call_event`
# fits every field into the bounds of :class:`CallEvent` (a string cut to its maximum
# length, a number out of range dropped), so an odd field never costs the call.

INT64_MAX = 2**63 - 1
# A call longer than a week is not a call: a duration beyond it is dropped.
MAX_DURATION_S = 7 * 24 * 3600
# Unix seconds the readers accept as a time: after 1970-01-01, before year 10000.
MAX_EPOCH_S = 253_402_300_799


def form_fields(req: WebhookRequest) -> dict[str, str]:
    """A form-encoded body (``application/x-www-form-urlencoded``) as a dict (the last
    value of a repeated field wins); query parameters fill what the body lacks. Bytes that
    are not UTF-8 are kept as surrogate escapes, so a signature over a field is computed
    over exactly what was sent (:func:`channels.signing.as_bytes`)."""
    text = req.body.decode("utf-8", "surrogateescape")
    fields = dict(req.query)
    fields.update(parse_qsl(text, keep_blank_values=True, errors="surrogateescape"))
    return fields


def text_field(fields: Mapping[str, Any], name: str) -> str | None:
    """A non-empty field, stripped (a number is written as text; anything else is None)."""
    value = fields.get(name)
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return str(value).strip() or None


def whole(value: Any, lo: int = 0, hi: int = INT64_MAX) -> int | None:
    """A whole number in ``[lo, hi]`` (as an integer, an integral float or text); None for
    anything else."""
    if isinstance(value, bool) or value is None:
        return None
    number: int | None = None
    if isinstance(value, int):
        number = value
    elif isinstance(value, float):
        number = int(value) if value.is_integer() else None
    elif isinstance(value, str) and len(value) <= 32:
        text = value.strip()
        try:
            number = int(text)
        except ValueError:
            try:
                as_float = float(text)
            except ValueError:
                as_float = None
            if as_float is not None and as_float.is_integer() and abs(as_float) < 2**63:
                number = int(as_float)
    return number if number is not None and lo <= number <= hi else None


def int_field(fields: Mapping[str, Any], name: str, hi: int = INT64_MAX) -> int | None:
    """A whole number ≥ 0 (and ≤ ``hi``), or None when it is missing or not one."""
    return whole(fields.get(name), 0, hi)


def seconds_field(fields: Mapping[str, Any], name: str) -> int | None:
    """A duration in seconds (≤ :data:`MAX_DURATION_S`), or None."""
    return whole(fields.get(name), 0, MAX_DURATION_S)


def epoch_field(fields: Mapping[str, Any], name: str) -> datetime | None:
    """Unix seconds as a UTC time; None when missing, 0, negative or beyond year 9999."""
    seconds = whole(fields.get(name), 1, MAX_EPOCH_S)
    return datetime.fromtimestamp(seconds, UTC) if seconds is not None else None


def after(start: datetime | None, seconds: int | None) -> datetime | None:
    """``start + seconds``, or None when either is unknown or the sum is out of range."""
    if start is None or seconds is None:
        return None
    try:
        return start + timedelta(seconds=seconds)
    except OverflowError:
        return None


def _fitted(name: str, value: Any) -> Any:
    """``value`` within the bounds :class:`CallEvent` declares for ``name``."""
    if value is None or name not in CallEvent.model_fields:
        return value
    info = CallEvent.model_fields[name]
    if isinstance(value, str):
        limit = next((m.max_length for m in info.metadata if isinstance(m, MaxLen)), None)
        if limit is not None and len(value) > limit:
            if name in UNCUT:
                return None
            return value[:limit]
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        bound = next((m.ge for m in info.metadata if isinstance(m, Ge)), None)
        low = bound if isinstance(bound, int) else -INT64_MAX - 1
        return value if low <= value <= INT64_MAX else None
    return value


# Identifiers that are useless cut short: dropped when too long instead.
UNCUT = frozenset({"customer", "line", "recording_url"})


def call_event(**fields: Any) -> CallEvent:
    """A :class:`CallEvent` from what a channel read, each field fitted into the model's
    bounds. Only a missing or unusable ``call_id`` is an error (the report then cannot be
    kept as a call): :func:`invalid` naming it."""
    call_id = fields.get("call_id")
    if not isinstance(call_id, str) or not call_id.strip() or len(call_id) > 256:
        raise invalid("call_id", "required: 1 to 256 characters")
    fitted = {name: _fitted(name, value) for name, value in fields.items()}
    fitted["event"] = fitted.get("event") or "?"
    return CallEvent(**fitted)


def invalid(field: str, message: str) -> InvalidPayload:
    return InvalidPayload(f"{field}: {message}", [{"field": field, "message": message}])
