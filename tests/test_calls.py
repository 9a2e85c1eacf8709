"""The call record: the merge that makes reports converge (pure, property-based), and the
same merge as MongoDB updates in the real store — in any order, repeated, concurrent."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from channels.base import CallDirection, CallEvent, CallStage, Disposition, InvalidPayload
from channels.calls import (
    CALL_ENDED,
    CALL_MISSED,
    CALL_STARTED,
    CallRecord,
    SignedCallEvent,
    after,
    call_event,
    call_message,
    due_announcements,
    epoch_field,
    merge,
    merge_all,
    seconds_field,
    to_ms,
    whole,
)
from crm_store import calls as call_store
from crm_store.store import Store

T0 = datetime(2024, 11, 20, 10, 15, tzinfo=UTC)


def report(**kw: Any) -> CallEvent:
    values: dict[str, Any] = {"channel": "pbx", "account": "a", "call_id": "c1", "event": "x"}
    values.update(kw)
    return CallEvent(**values)


def record(events: list[CallEvent]) -> CallRecord:
    return CallRecord.model_validate(merge_all(events))


# --- the merge, pure --------------------------------------------------------------------------

reports = st.builds(
    report,
    direction=st.sampled_from([None, CallDirection.IN]),
    customer=st.sampled_from([None, "89001234567", "+7 900 123-45-67"]),
    line=st.sampled_from([None, "74951234567"]),
    agent=st.sampled_from([None, "101", "102", "ivan.petrov"]),
    stage=st.sampled_from([None, *CallStage]),
    disposition=st.sampled_from([None, *Disposition]),
    final=st.booleans(),
    transferred=st.booleans(),
    at=st.sampled_from([None, T0, T0 + timedelta(seconds=30)]),
    started_at=st.sampled_from([None, T0, T0 + timedelta(seconds=1)]),
    answered_at=st.sampled_from([None, T0 + timedelta(seconds=9)]),
    ended_at=st.sampled_from([None, T0 + timedelta(seconds=60), T0 + timedelta(seconds=90)]),
    duration_s=st.sampled_from([None, 0, 60, 90]),
    hangup_cause=st.sampled_from([None, "16", "17"]),
    recording_url=st.sampled_from([None, "https://r/1.wav"]),
    rating=st.sampled_from([None, 1, 5]),
    seq=st.sampled_from([None, 1, 2, 3]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(reports, min_size=1, max_size=8), st.randoms(use_true_random=False))
def test_any_order_and_repeats_give_the_same_record(
    events: list[CallEvent], rnd: random.Random
) -> None:
    once = record(events)
    shuffled = events * 2
    rnd.shuffle(shuffled)
    assert record(shuffled) == once
    # Idempotent: a record merged with any of its reports again does not change.
    state = merge_all(events)
    for ev in events:
        assert CallRecord.model_validate(merge(state, ev)) == once


def test_status_and_disposition_only_move_forward() -> None:
    rec = record(
        [
            report(stage=CallStage.ENDED, disposition=Disposition.MISSED),
            report(stage=CallStage.RINGING),
            report(stage=CallStage.ANSWERED, disposition=Disposition.ANSWERED),
            report(disposition=Disposition.BUSY),
        ]
    )
    assert (rec.status, rec.disposition) == (CallStage.ENDED, Disposition.ANSWERED)
    assert record([report(disposition=d) for d in Disposition]).disposition == "answered"
    assert (
        record(
            [report(disposition=Disposition.FAILED), report(disposition=Disposition.BUSY)]
        ).disposition
        == "busy"
    )


def test_who_had_the_call_last() -> None:
    ringing = report(stage=CallStage.RINGING, agent="101", seq=9)
    first = report(stage=CallStage.ANSWERED, agent="101", seq=2)
    second = report(stage=CallStage.ANSWERED, agent="102", seq=4)
    summary = report(stage=CallStage.ENDED, final=True, agent="100")
    rec = record([second, ringing, first])
    assert (rec.agent, rec.answered_by, rec.was_transferred) == ("102", ["101", "102"], True)
    # The provider's summary names who had it last, whatever the order.
    assert record([summary, second, first]).agent == "100"
    assert record([first, summary]).answered_by == ["101"]


def test_times_and_numbers() -> None:
    rec = record(
        [
            report(started_at=T0 + timedelta(seconds=1), ended_at=T0 + timedelta(seconds=60)),
            report(started_at=T0, ended_at=T0 + timedelta(seconds=90), duration_s=60),
            report(duration_s=90, customer="8 (900) 123-45-67", line="74951234567"),
        ]
    )
    assert (rec.started_at, rec.ended_at, rec.duration_s) == (
        T0,
        T0 + timedelta(seconds=90),
        90,
    )
    assert (rec.customer, rec.line) == ("+79001234567", "+74951234567")
    assert record([report(customer=" anonymous ")]).customer == "anonymous"
    assert to_ms(datetime(2024, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)) == datetime(
        2024, 1, 1, 0, 0, 0, 123000, tzinfo=UTC
    )


def test_due_announcements() -> None:
    ringing = record([report(direction=CallDirection.IN, stage=CallStage.RINGING)])
    assert due_announcements(ringing) == [CALL_STARTED]
    missed = record(
        [report(direction=CallDirection.IN, stage=CallStage.ENDED, disposition=Disposition.BUSY)]
    )
    assert due_announcements(missed) == [CALL_STARTED, CALL_ENDED, CALL_MISSED]
    answered = record(
        [report(direction=CallDirection.IN, stage=CallStage.ENDED, disposition="answered")]
    )
    assert due_announcements(answered) == [CALL_STARTED, CALL_ENDED]
    # Ended but its disposition still unknown: not yet.
    ended = record([report(direction=CallDirection.OUT, stage=CallStage.ENDED)])
    assert due_announcements(ended) == [CALL_STARTED]
    # Outbound calls nobody answered are no call-backs; internal calls announce nothing.
    out = record([report(direction=CallDirection.OUT, stage=CallStage.ENDED, disposition="missed")])
    assert due_announcements(out) == [CALL_STARTED, CALL_ENDED]
    internal = record([report(direction=CallDirection.INTERNAL, stage=CallStage.RINGING)])
    assert due_announcements(internal) == []
    done = missed.model_copy(update={"announced": [CALL_STARTED, CALL_ENDED]})
    assert due_announcements(done) == [CALL_MISSED]


def test_the_message_a_call_becomes() -> None:
    inbound = call_message(report(direction=CallDirection.IN, customer="89001234567"))
    assert inbound is not None
    assert (inbound.provider_id, inbound.text, inbound.automatic, inbound.thread_id) == (
        "call:c1",
        "Incoming call",
        False,
        None,
    )
    assert inbound.sender.phone == "89001234567"
    missed = call_message(
        report(direction=CallDirection.IN, customer="89001234567", disposition="missed")
    )
    assert missed is not None
    assert missed.text == "Missed call"
    outbound = call_message(report(direction=CallDirection.OUT, customer="+79001234567"))
    assert outbound is not None
    assert (outbound.text, outbound.automatic) == ("Outgoing call", True)
    assert call_message(report(direction=CallDirection.IN, customer="anonymous")) is None
    assert call_message(report(direction=CallDirection.INTERNAL, customer="101")) is None
    assert call_message(report(customer="+79001234567")) is None  # direction unknown


# --- the same merge in the store ---------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="session")
async def store(mongo_uri: str, db_name: str) -> AsyncIterator[Store]:
    s = Store.open(mongo_uri, db_name)
    await s.ensure_indexes()
    try:
        yield s
    finally:
        await s.close()


def lifecycle(call_id: str) -> list[CallEvent]:
    def r(**kw: Any) -> CallEvent:
        return report(call_id=call_id, direction=CallDirection.IN, customer="89001234567", **kw)

    return [
        r(event="start", stage=CallStage.RINGING, started_at=T0, at=T0, seq=1),
        r(event="ring", stage=CallStage.RINGING, agent="101", at=T0, seq=2),
        r(event="answer", stage=CallStage.ANSWERED, agent="101", at=T0, seq=3),
        r(event="ring", stage=CallStage.RINGING, agent="102", at=T0, seq=4),
        r(event="answer", stage=CallStage.ANSWERED, agent="102", seq=5, transferred=True),
        r(
            event="end",
            stage=CallStage.ENDED,
            disposition=Disposition.ANSWERED,
            agent="102",
            ended_at=T0 + timedelta(seconds=95),
            duration_s=95,
            hangup_cause="16",
            seq=6,
        ),
        report(call_id=call_id, event="rec", recording_url="https://r/1.wav", seq=7),
        report(call_id=call_id, event="rating", rating=4),
    ]


def stored_call(rec: CallRecord) -> dict[str, Any]:
    return rec.model_dump(exclude={"id", "call_id", "message_id", "announced", "source_id"})


def merged_call(events: list[CallEvent]) -> dict[str, Any]:
    rec = record(events)
    return rec.model_dump(exclude={"id", "call_id", "message_id", "announced", "source_id"}) | {
        "channel": "pbx",
        "account": "a",
    }


async def test_store_converges_like_the_pure_merge(store: Store) -> None:
    reference = lifecycle("in-order")
    expected = merged_call(reference)
    rng = random.Random(1)
    for n in range(4):
        events = lifecycle(f"shuffled-{n}") * 2
        rng.shuffle(events)
        last = None
        for ev in events:
            last = await call_store.apply_and_announce(store, ev, "phone")
        assert last is not None
        assert stored_call(last) == expected
        doc = await store["calls"].find_one({"_id": last.id})
        assert doc is not None
        assert doc["reports"] == len(events)
        assert doc["message_id"] == call_store.message_id("pbx", "a", f"shuffled-{n}")
        assert sorted(doc["announced"]) == [CALL_ENDED, CALL_STARTED]


async def test_concurrent_reports_of_a_new_call(store: Store) -> None:
    """Every report of one new call at once (the first upserts race): one document, the
    merged state, each event announced once."""
    events = lifecycle("concurrent") * 3
    await asyncio.gather(*(call_store.apply_and_announce(store, ev, "phone") for ev in events))
    assert await store["calls"].count_documents({}) == 1
    doc = await store["calls"].find_one({})
    assert doc is not None
    assert stored_call(CallRecord.model_validate(doc)) == merged_call(events)
    for type_ in (CALL_STARTED, CALL_ENDED):
        assert await store.events.count_documents({"type": type_}) == 1
    assert await store.events.count_documents({"type": CALL_MISSED}) == 0


# --- lenient reading: odd values never cost the call ---------------------------------------


def test_whole_numbers_and_times_read_leniently() -> None:
    assert [whole(v) for v in (7, "7", " 7 ", 7.0, "7.0", "1e3")] == [7, 7, 7, 7, 7, 1000]
    odd = (True, None, -1, "-1", "seven", 7.5, [7], {"n": 7}, 2**63, str(2**64), "9" * 40)
    assert [whole(v) for v in odd] == [None] * len(odd)
    assert epoch_field({"t": 1_732_100_000}, "t") == datetime(2024, 11, 20, 10, 53, 20, tzinfo=UTC)
    for odd_time in (0, -1, 253_402_300_800, 10**19, "yesterday"):
        assert epoch_field({"t": odd_time}, "t") is None
    assert seconds_field({"d": 8 * 24 * 3600}, "d") is None
    assert after(datetime(9999, 12, 31, tzinfo=UTC), 10**6) is None


def test_call_event_fits_odd_fields_into_the_model() -> None:
    ev = call_event(
        channel="pbx",
        account="a",
        call_id="c1",
        event="x" * 100,
        customer="1" * 65,  # no number is that long: dropped
        hangup_cause="h" * 200,  # free text: cut
        duration_s=-5,
        seq=2**64,
        rating=2**63,
    )
    assert (len(ev.event), ev.customer, len(ev.hangup_cause or "")) == (64, None, 128)
    assert (ev.duration_s, ev.seq, ev.rating) == (None, None, None)
    for bad_id in ("", "  ", "c" * 257, None, 5):
        with pytest.raises(InvalidPayload):
            call_event(channel="pbx", account="a", call_id=bad_id, event="x")


# --- partly signed reports (Zadarma) in the store ------------------------------------------


SIGNED_FIELDS = {"claim", "fingerprint", "identity", "opens"}


def signed(call_id: str, ev: CallEvent, identity: str = "in:caller+start") -> SignedCallEvent:
    """``ev`` as a partly signed report: claimed by its event (and agent), opening the call
    when it is the start."""
    claim = f"{ev.event}|{identity}|{ev.agent or ''}"
    return SignedCallEvent(
        **{**ev.model_dump(exclude=SIGNED_FIELDS), "call_id": call_id},
        claim=claim,
        fingerprint=f"{claim}|{call_id}|{ev.disposition}",
        identity=identity,
        opens=ev.event == "start",
    )


def signed_lifecycle(call_id: str, identity: str) -> list[SignedCallEvent]:
    # rec and rating carry no identity in this lifecycle; give them one to keep it simple.
    return [signed(call_id, ev, identity) for ev in lifecycle(call_id)]


async def test_signed_reports_converge_in_any_order_at_once(store: Store) -> None:
    """Every report of a call at once, repeated, in any order — ends before the start
    included: they wait for the opening report and the call converges to the pure merge."""
    rng = random.Random(7)
    for n in range(3):
        events = signed_lifecycle(f"z-{n}", f"identity-{n}") * 2
        rng.shuffle(events)
        await asyncio.gather(*(call_store.apply_and_announce(store, ev, "phone") for ev in events))
        doc = await store["calls"].find_one({"call_id": f"z-{n}"})
        assert doc is not None
        assert stored_call(CallRecord.model_validate(doc)) == merged_call(list[CallEvent](events))
        assert doc["message_id"] == call_store.message_id("pbx", "a", f"identity-{n}")
        waiting = {"call_id": f"z-{n}", "applied": False}
        assert await store[call_store.CLAIMS].count_documents(waiting) == 0


async def test_a_replayed_claim_creates_nothing_and_a_retry_changes_nothing(
    store: Store,
) -> None:
    events = signed_lifecycle("z-genuine", "identity-r")
    for ev in events:
        await call_store.apply_and_announce(store, ev, "phone")
    before = await store["calls"].find_one({"call_id": "z-genuine"})
    # The same claims under another call id (a new "call"), or with another outcome.
    start, end = events[0], events[5]
    forged_end = end.model_copy(update={"disposition": Disposition.MISSED, "fingerprint": "forged"})
    replayed = start.model_copy(update={"call_id": "z-x"})
    assert await call_store.apply_and_announce(store, replayed, "p") is None
    assert await call_store.apply_and_announce(store, forged_end, "phone") is None
    # Reports that never meet an opening report of their identity create nothing.
    stray = signed("z-stray", end, "identity-unopened")
    assert await call_store.apply_and_announce(store, stray, "phone") is None
    # The provider's retry of a report already applied: nothing is written.
    assert await call_store.apply_and_announce(store, end, "phone") is not None
    assert await store["calls"].find_one({"call_id": "z-genuine"}) == before
    assert await store["calls"].count_documents({"call_id": {"$in": ["z-x", "z-stray"]}}) == 0


@pytest.mark.parametrize("service", [False, True])
async def test_a_service_pipeline_deal_is_not_the_callers_deal(store: Store, service: bool) -> None:
    """A known caller whose only open deal is after-sale work (the NPS survey's copy of a
    won order, ``purpose: service``): the call's events name the contact, never that deal
    — as routing treats the caller's messages (routing/decide.py). Without the service
    pipelines given, the same deal is the caller's deal (the check can fail)."""
    await store.contacts.insert_one(
        {"_id": "c-nps", "identities": ["phone:+79001234567"], "origin": "manual"}
    )
    await store.deals.insert_one(
        {
            "_id": "d-nps",
            "contact_id": "c-nps",
            "pipeline_id": "nps",
            "stage_id": "sent",
            "open": True,
            "last_activity_at": T0,
        }
    )
    pipelines = {"nps"} if service else set()
    for ev in lifecycle(f"nps-{service}")[:1]:
        await call_store.apply_and_announce(store, ev, "phone", pipelines)
    started = await store.events.find_one(
        {"type": CALL_STARTED, "data.provider_call_id": f"nps-{service}"}
    )
    assert started is not None
    assert started["refs"]["contact_id"] == "c-nps"
    assert started["refs"].get("deal_id") == (None if service else "d-nps")
