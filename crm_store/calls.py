"""The ``calls`` collection: one document per call, converging whatever the order of its
reports, and the ring-path "who is calling" lookup.

A report (:class:`~channels.base.CallEvent`) is applied with one upsert whose operators
are all order-independent (``$setOnInsert`` of constants, ``$min``, ``$max``,
``$addToSet``; see channels/calls.py), so concurrent and repeated reports need no read
before the write and no lock. That upsert is all the webhook waits for (:func:`apply`):
it also sets ``announce_due: true``, and the call announcer (ingest/call_announcer.py)
reads due calls back by ``_id`` (the partial index ``announce_due``) to announce what the
call has reached — ``call.started``, ``call.ended`` and, for an inbound call nobody
answered from a known contact, ``call.missed`` — each once (event ids derive from the
call; ``announced`` remembers what was considered), then clears the flag unless another
report arrived meanwhile (:func:`announce_call`). A process killed between the upsert and
the announcement leaves the flag set: any process's announcer announces it later.

Document: ``_id`` = hash(channel, account, provider call id); ``channel``, ``account``,
``call_id`` (the provider's), ``source_id``, ``message_id`` (the intake/message id of the
call's message, which routing attaches to a contact, lead or deal), the merged call fields
(channels/calls.py: ``direction``, ``customer``, ``line``, ``status``, ``disposition``,
``agent``, ``answered_by``, ``transferred``, ``started_at``, ``answered_at``,
``ended_at``, ``duration_s``, ``talk_s``, ``hangup_cause``, ``recording_url``,
``recording_id``, ``rating``, ``seq``), ``announced``, and the bookkeeping
``first_seen_at`` / ``last_seen_at`` / ``reports`` (count of reports applied, repeats
included), ``announce_due`` (only while reports wait for their announcement), and for a
call of a partly signed provider (Zadarma) its signed ``identity``.

Reports a provider signs only in part (:class:`~channels.calls.SignedCallEvent`) go
through :func:`apply_signed`: each claims its (event, signed string) once in
``call_claims`` (a replay under another call id, event or outcome is dropped; the
provider's identical retry writes nothing), only an opening report creates the call, and
the others wait there until it does.
"""

from __future__ import annotations

from collections.abc import Container
from datetime import UTC, datetime
from typing import Literal

import structlog
from pydantic import BaseModel, Field
from pymongo.errors import DuplicateKeyError

from channels.base import Caller, CallEvent, Disposition
from channels.calls import (
    CALL_ENDED,
    CALL_MISSED,
    CALL_STARTED,
    CallRecord,
    SignedCallEvent,
    contributions,
    due_announcements,
    message_key,
    message_provider_id,
)
from channels.identity import normalize_phone, phone_key
from crm_store import events
from crm_store import routing_store as rs
from crm_store.documents import ContactDoc, intake_id, stable_id
from crm_store.store import Collection, Document, Store, together
from crm_store.wake import CALLS_DUE, notify

COLLECTION = "calls"
# Set by every report's upsert, cleared once what the call reached is announced; the
# partial index of that name holds only the due calls (the embedded store never picks a
# partial index itself: always hinted).
DUE = "announce_due"
DUE_INDEX = "announce_due"
# The calls this process applied reports to since its announcer last took them: that
# announcer announces them at once (ingest/call_announcer.py), so that several processes
# do not all race to announce every call; a call left due by another process (killed
# before announcing) is found by any process's periodic look at the due calls.
_reported: set[str] = set()
REPORTED_MAX = 100_000

log = structlog.get_logger("omniroute.calls")


def calls(store: Store) -> Collection:
    return store[COLLECTION]


def call_doc_id(channel: str, account: str, call_id: str) -> str:
    return stable_id("call", channel, account, call_id)


def message_id(channel: str, account: str, key: str) -> str:
    """The intake/message id of the call's message, by its :func:`message_key` (see
    channels.calls.call_message)."""
    return intake_id(channel, account, message_provider_id(key))


def update_of(ev: CallEvent, source_id: str, at: datetime) -> Document:
    """The one MongoDB update that applies a report to its call document."""
    update: Document = {
        "$setOnInsert": {
            "channel": ev.channel,
            "account": ev.account,
            "call_id": ev.call_id,
            "source_id": source_id,
            "message_id": message_id(ev.channel, ev.account, message_key(ev)),
        },
        "$min": {"first_seen_at": at},
        "$max": {"last_seen_at": at},
        "$inc": {"reports": 1},
        "$set": {DUE: True},
    }
    for op, name, value in contributions(ev):
        update.setdefault(op.value, {})[name] = value
    return update


async def apply(
    store: Store, ev: CallEvent, source_id: str, service_pipelines: Container[str] = ()
) -> bool:
    """Apply one report, the webhook's part: the upsert alone (one round trip), which flags
    the call as due for its announcement; this process's announcer is woken. A partly
    signed report (:func:`apply_signed`) also claims its report first. False when such a
    report was not applied (a replay, or a report waiting for the report that opens its
    call)."""
    applied: bool
    if isinstance(ev, SignedCallEvent):
        rec = await apply_signed(store, ev, source_id, service_pipelines, announce=False)
        applied = rec is not None
    else:
        doc_id = call_doc_id(ev.channel, ev.account, ev.call_id)
        update = update_of(ev, source_id, datetime.now(UTC))
        try:
            await calls(store).update_one({"_id": doc_id}, update, upsert=True)
        except DuplicateKeyError:
            # Two first reports of one call upserted at once; ours now updates the winner's.
            await calls(store).update_one({"_id": doc_id}, update, upsert=True)
        applied = True
    if applied:
        # Bounded for a process that applies reports and announces none (a reparse): a
        # call not remembered here is found by the announcers' periodic look.
        if len(_reported) < REPORTED_MAX:
            _reported.add(call_doc_id(ev.channel, ev.account, ev.call_id))
        notify(CALLS_DUE)
    return applied


def take_reported() -> list[str]:
    """The ids of the calls this process applied reports to since the last take."""
    taken = list(_reported)
    _reported.clear()
    return taken


async def apply_and_announce(
    store: Store, ev: CallEvent, source_id: str, service_pipelines: Container[str] = ()
) -> CallRecord | None:
    """Apply one report and announce at once what its call reached (what the announcer
    would do next): the call as stored, or None when the report was not applied."""
    if isinstance(ev, SignedCallEvent):
        return await apply_signed(store, ev, source_id, service_pipelines)
    await apply(store, ev, source_id, service_pipelines)
    doc_id = call_doc_id(ev.channel, ev.account, ev.call_id)
    return await announce_call(store, doc_id, service_pipelines)


async def due_calls(store: Store, limit: int, *, seen_before: datetime | None = None) -> list[str]:
    """Ids of calls whose reports wait for their announcement (the partial index);
    ``seen_before``: only those whose last report is older (filtered here: one condition
    beside the hinted index would make the embedded store scan)."""
    found = calls(store).find(
        {DUE: True}, {"_id": 1, "last_seen_at": 1}, hint=DUE_INDEX, limit=limit
    )
    return [
        str(d["_id"])
        async for d in found
        if seen_before is None or _aware(d.get("last_seen_at")) < seen_before
    ]


def _aware(at: object) -> datetime:
    if not isinstance(at, datetime):
        return datetime.min.replace(tzinfo=UTC)
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


async def announce_call(
    store: Store, doc_id: str, service_pipelines: Container[str] = ()
) -> CallRecord | None:
    """Announce what the call reached and clear its ``announce_due`` flag — unless a
    report arrived meanwhile (``reports`` moved): then it stays due for the next round.
    Safe to run twice, in two processes at once, or again after a crash: the events'
    ids derive from the call (crm_store/events.append keeps one of each)."""
    doc = await calls(store).find_one({"_id": doc_id})
    if doc is None:
        return None
    return await announce_read(store, doc, service_pipelines)


async def announce_read(
    store: Store, doc: Document, service_pipelines: Container[str] = ()
) -> CallRecord:
    rec = CallRecord.model_validate(doc)
    if due := due_announcements(rec):
        await announce(store, rec, due, service_pipelines)
    # What was announced is remembered with the flag's clearing, in one write of the call
    # (every write of ``calls`` waits for the others — the webhooks' upserts too).
    remember: Document = {"$addToSet": {"announced": {"$each": due}}} if due else {}
    if doc.get(DUE):
        result = await calls(store).update_one(
            {"_id": doc["_id"], "reports": doc.get("reports"), DUE: True},
            {"$unset": {DUE: ""}, **remember},
        )
        if result.matched_count == 0 and remember:
            # A report came meanwhile: the call stays due (remembering what was announced
            # spares the next round the events' re-check) — unless another announcer has
            # cleared it since, having announced at least what was due here.
            await calls(store).update_one({"_id": doc["_id"], DUE: True}, remember)
    elif remember:
        await calls(store).update_one({"_id": doc["_id"]}, remember)
    return rec


async def _upsert(store: Store, query: Document, update: Document) -> Document | None:
    """The report's update, then the call as it stands (None: no call matched and none
    was created). (Not one find-and-modify: the embedded store answers that with a
    collection scan; docs/store.md.)"""
    result = await calls(store).update_one(query, update, upsert=True)
    if result.matched_count == 0 and result.upserted_id is None:
        return None
    return await calls(store).find_one({"_id": query["_id"]})


# --- partly signed reports (Zadarma): once per claim, opened calls only ---------------------

CLAIMS = "call_claims"
# How long a claim is remembered: longer than any provider's freshness window
# (channels/zadarma.py refuses older reports), so a replay meets either the claim or the
# window.
CLAIM_TTL_S = 3 * 24 * 3600


def claims(store: Store) -> Collection:
    return store[CLAIMS]


def claim_doc_id(ev: SignedCallEvent) -> str:
    return stable_id("claim", ev.channel, ev.account, ev.claim)


async def apply_signed(
    store: Store,
    ev: SignedCallEvent,
    source_id: str,
    service_pipelines: Container[str] = (),
    *,
    announce: bool = True,
) -> CallRecord | None:
    """Apply a report whose provider signs only part of it (channels.calls.SignedCallEvent).

    1. Its claim is inserted into ``call_claims`` (unique ``_id`` per account and claim,
       with the whole report). Taken already by another report → a replay: nothing is
       written, None. Taken by this very report (a provider retry) → nothing changes if it
       was applied; if the process died before applying it, it is applied now.
    2. A report that opens the call upserts it (only over a call of the same identity),
       then applies the reports of this call that arrived before it and waited.
    3. Any other report updates the call only if it was opened with the same identity;
       otherwise its claim waits for the opening report (step 2), and nothing is created.

    With ``announce=False`` (the webhook's path) the call is left flagged as due for the
    announcer instead of announced here.
    """
    now = datetime.now(UTC)
    claim_id = claim_doc_id(ev)
    claim: Document = {
        "_id": claim_id,
        "channel": ev.channel,
        "account": ev.account,
        "call_id": ev.call_id,
        "identity": ev.identity,
        "opens": ev.opens,
        "fingerprint": ev.fingerprint,
        "event": ev.event,
        "report": ev.model_dump(mode="json"),
        "source_id": source_id,
        "applied": False,
        "at": now,
    }
    try:
        await claims(store).insert_one(claim)
    except DuplicateKeyError:
        held = await claims(store).find_one({"_id": claim_id})
        if held is None or (held["call_id"], held["fingerprint"]) != (ev.call_id, ev.fingerprint):
            log.warning(
                "call.replay_dropped",
                channel=ev.channel,
                account=ev.account,
                call_id=ev.call_id[:64],
                report=ev.event,
                claimed_by=str(held["call_id"])[:64] if held else None,
            )
            return None
        if held.get("applied"):  # a provider retry of a report already applied
            found = await calls(store).find_one(
                {"_id": call_doc_id(ev.channel, ev.account, ev.call_id)}
            )
            return CallRecord.model_validate(found) if found else None
    rec = await _apply_claimed(store, ev, source_id, now, service_pipelines, announce)
    if rec is not None and ev.opens:
        rec = await _apply_waiting(store, ev, source_id, service_pipelines, announce) or rec
    return rec


async def _apply_claimed(
    store: Store,
    ev: SignedCallEvent,
    source_id: str,
    now: datetime,
    service_pipelines: Container[str] = (),
    announce: bool = True,
) -> CallRecord | None:
    doc_id = call_doc_id(ev.channel, ev.account, ev.call_id)
    update = update_of(ev, source_id, now)
    if ev.opens:
        update["$setOnInsert"]["identity"] = ev.identity
        query: Document = {"_id": doc_id, "identity": {"$in": [ev.identity, None]}}
        try:
            doc = await _upsert(store, query, update)
        except DuplicateKeyError:
            try:  # two first reports at once: ours now updates the winner's
                doc = await _upsert(store, query, update)
            except DuplicateKeyError:
                doc = None  # the call id is taken by a call of another identity
    else:
        identity = ev.identity if ev.identity is not None else {"$ne": None}
        result = await calls(store).update_one({"_id": doc_id, "identity": identity}, update)
        doc = await calls(store).find_one({"_id": doc_id}) if result.matched_count else None
    if doc is None:
        if ev.opens:
            log.warning(
                "call.identity_conflict",
                channel=ev.channel,
                account=ev.account,
                call_id=ev.call_id[:64],
                report=ev.event,
            )
        return None  # not opened yet: the claim waits for the opening report
    await claims(store).update_one({"_id": claim_doc_id(ev)}, {"$set": {"applied": True}})
    if not announce:
        return CallRecord.model_validate(doc)
    return await announce_read(store, doc, service_pipelines)


async def _apply_waiting(
    store: Store,
    opening: SignedCallEvent,
    source_id: str,
    service_pipelines: Container[str] = (),
    announce: bool = True,
) -> CallRecord | None:
    """The reports of the just-opened call that arrived before it, applied in turn."""
    rec: CallRecord | None = None
    waiting = claims(store).find(
        {
            "channel": opening.channel,
            "account": opening.account,
            "call_id": opening.call_id,
            "applied": False,
            "opens": False,
            "identity": {"$in": [opening.identity, None]},
        }
    )
    async for held in waiting:
        ev = SignedCallEvent.model_validate(held["report"])
        source = held.get("source_id", source_id)
        rec = await _apply_claimed(
            store, ev, source, datetime.now(UTC), service_pipelines, announce
        )
    return rec


# --- events ------------------------------------------------------------------------------


class CallStarted(BaseModel):
    channel: str
    account: str
    provider_call_id: str
    direction: Literal["in", "out"]
    phone: str | None = Field(description="the customer's number (E.164 when it is one)")
    line: str | None = Field(description="our number the call came in on or went out from")
    agent: str | None = Field(description="the PBX login/extension that had the call last")


class CallEnded(CallStarted):
    disposition: Disposition
    started_at: datetime | None
    answered_at: datetime | None
    ended_at: datetime | None
    duration_s: int | None
    talk_s: int | None
    transferred: bool
    recording_url: str | None


class CallMissed(BaseModel):
    channel: str
    account: str
    provider_call_id: str
    phone: str | None = Field(description="the number to call back")
    line: str | None
    disposition: Disposition = Field(description="missed, busy or failed")
    started_at: datetime | None
    responsible_id: str | None = Field(
        description="who should call back: the responsible of the contact's active deal, "
        "else of its open lead, else of the contact"
    )
    agent: str | None = Field(description="the PBX login/extension the call last rang")


class CallerState(BaseModel):
    """The known contact behind a number, with its active deal or open lead."""

    contact: ContactDoc
    deal_id: str | None = None
    lead_id: str | None = None
    responsible_id: str | None = None


async def caller_state(
    store: Store, phone: str | None, service_pipelines: Container[str] = ()
) -> CallerState | None:
    """The contact owning ``phone`` (E.164), with what routing would attach to (a deal of
    a ``service_pipelines`` pipeline never: routing/decide.py)."""
    if not phone or not phone.startswith("+"):
        return None
    found = await store.contacts.find_one({"identities": phone_key(phone)})
    if found is None:
        return None
    contact = ContactDoc.model_validate(found)
    state = await rs.load_contact_state(store, [contact.id], service_pipelines)
    deal = state.active_deal.get(contact.id)
    lead = state.open_lead.get(contact.id)
    responsible = (
        (deal.responsible_id if deal else None)
        or (lead.responsible_id if lead else None)
        or contact.responsible_id
    )
    return CallerState(
        contact=contact,
        deal_id=deal.id if deal else None,
        lead_id=lead.id if lead and not deal else None,
        responsible_id=responsible,
    )


def _started(rec: CallRecord) -> CallStarted:
    if rec.direction is None or not (rec.call_id and rec.channel and rec.account):
        raise ValueError(f"call {rec.id} has no direction or identity to announce")
    return CallStarted(
        channel=rec.channel,
        account=rec.account,
        provider_call_id=rec.call_id,
        direction="in" if rec.direction.value == "in" else "out",
        phone=rec.customer,
        line=rec.line,
        agent=rec.agent,
    )


def event_data(type_: str, rec: CallRecord, caller: CallerState | None) -> BaseModel:
    """The event's data, by its schema in crm_store/event_catalogue.py."""
    started = _started(rec)
    if type_ == CALL_STARTED:
        return started
    disposition = rec.disposition or Disposition.FAILED
    if type_ == CALL_ENDED:
        return CallEnded(
            **started.model_dump(),
            disposition=disposition,
            started_at=rec.started_at,
            answered_at=rec.answered_at,
            ended_at=rec.ended_at,
            duration_s=rec.duration_s,
            talk_s=rec.talk_s,
            transferred=rec.was_transferred,
            recording_url=rec.recording_url,
        )
    return CallMissed(
        channel=started.channel,
        account=started.account,
        provider_call_id=started.provider_call_id,
        phone=rec.customer,
        line=rec.line,
        disposition=disposition,
        started_at=rec.started_at,
        responsible_id=caller.responsible_id if caller else None,
        agent=rec.agent,
    )


def known(caller: CallerState | None, rec: CallRecord) -> bool:
    """The caller was a contact before this call (not one routing made for it)."""
    return caller is not None and caller.contact.origin_intake_id != rec.message_id


async def announce(
    store: Store, rec: CallRecord, due: list[str], service_pipelines: Container[str] = ()
) -> None:
    """Append the due events (once: their ids derive from the call); the caller remembers
    them in the call (:func:`announce_read`)."""
    assert rec.id is not None
    docs: list[Document] = []
    # Who the caller is, and which of the events exist already (a re-run), at once.
    caller, written = await together(
        caller_state(store, rec.customer, service_pipelines),
        rs.existing_ids(store, "events", [events.event_id(type_, [rec.id]) for type_ in due]),
    )
    refs: dict[str, str | None] = {"call_id": rec.id}
    if rec.customer and normalize_phone(rec.customer):
        refs["message_id"] = rec.message_id
    if caller is not None:
        refs.update(contact_id=caller.contact.id, deal_id=caller.deal_id, lead_id=caller.lead_id)
    for type_ in due:
        if type_ == CALL_MISSED and not known(caller, rec):
            continue  # an unknown caller's missed call is a new lead, not a call-back
        at = rec.ended_at if type_ != CALL_STARTED else rec.started_at
        data = event_data(type_, rec, caller).model_dump(mode="json")
        doc = events.event(type_, refs, data, key=[rec.id], at=at)
        if doc["_id"] not in written:
            docs.append(doc)
    await events.append(store, docs)


# --- who is calling (the ring path) ------------------------------------------------------


async def find_caller(store: Store, raw_phone: str) -> Caller | None:
    """The contact owning a number, by the unique ``contacts.identities`` index: one
    indexed read of three fields."""
    phone = normalize_phone(raw_phone)
    if phone is None:
        return None
    doc = await store.contacts.find_one(
        {"identities": phone_key(phone)}, {"name": 1, "responsible_id": 1}
    )
    if doc is None:
        return None
    name, responsible = doc.get("name"), doc.get("responsible_id")
    return Caller(
        contact_id=str(doc["_id"]),
        name=name if isinstance(name, str) else None,
        responsible_id=responsible if isinstance(responsible, str) else None,
    )
