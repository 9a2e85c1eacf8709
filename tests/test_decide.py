"""The routing rules as a pure function: every rule, its order, and invariants over any context."""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config.models import Source, SourceMode
from crm_store.documents import (
    ContactDoc,
    ConversationDoc,
    DealDoc,
    LeadDoc,
    Target,
    TargetKind,
)
from routing.decide import Action, Context, Decision, Rule, decide, pick_round_robin

INTAKE = "intake-this"
OTHER_INTAKE = "intake-earlier"

LEADS_SOURCE = Source(id="site", name="Site form", pipeline="leads", line="sales")
NO_LEADS_SOURCE = Source(
    id="shop", name="Shop", mode=SourceMode.NO_LEADS, pipeline="direct", responsible="dmitry"
)

CREATE = frozenset({Action.CREATE_LEAD, Action.CREATE_DEAL})
ATTACH = frozenset({Action.ATTACH_LEAD, Action.ATTACH_DEAL})


def contact(
    cid: str = "contact-1", *, origin: str = "routing", spam: bool = False, **kw: Any
) -> ContactDoc:
    return ContactDoc(_id=cid, identities=["phone:+79001234567"], origin=origin, spam=spam, **kw)


def lead(
    lid: str = "lead-1", *, origin_intake_id: str | None = OTHER_INTAKE, is_repeat: bool = False
) -> LeadDoc:
    return LeadDoc(
        _id=lid,
        contact_id="contact-1",
        pipeline_id="leads",
        stage_id="in_work",
        origin_intake_id=origin_intake_id,
        is_repeat=is_repeat,
    )


def deal(
    did: str = "deal-1", *, origin_intake_id: str | None = OTHER_INTAKE, is_repeat: bool = False
) -> DealDoc:
    return DealDoc(
        _id=did,
        contact_id="contact-1",
        pipeline_id="orders",
        stage_id="design",
        origin_intake_id=origin_intake_id,
        is_repeat=is_repeat,
    )


def conversation(
    kind: TargetKind = TargetKind.LEAD, target_id: str | None = "lead-9", *, open_: bool = True
) -> ConversationDoc:
    return ConversationDoc(
        _id="conv-1",
        channel="api",
        account="site",
        thread="thread:t1",
        contact_id="contact-1",
        target=Target(kind=kind, id=target_id, open=open_),
        origin_intake_id=OTHER_INTAKE,
    )


def ctx(
    *,
    source: Source = LEADS_SOURCE,
    automatic: bool = False,
    conversation: ConversationDoc | None = None,
    contact: ContactDoc | None = None,
    active_deal: DealDoc | None = None,
    open_lead: LeadDoc | None = None,
    has_history: bool = False,
    intake_id: str = INTAKE,
    created_here: LeadDoc | DealDoc | str | None = "derive",
) -> Context:
    if created_here == "derive":
        # As the router does: the lead/deal whose origin is this intake record is passed
        # as what it created (it reads every lead and deal of the contact).
        created_here = next(
            (
                e
                for e in (active_deal, open_lead)
                if e is not None and e.origin_intake_id == intake_id
            ),
            None,
        )
    assert not isinstance(created_here, str)
    return Context(
        intake_id=intake_id,
        source=source,
        automatic=automatic,
        conversation=conversation,
        contact=contact,
        active_deal=active_deal,
        open_lead=open_lead,
        has_history=has_history,
        created_here=created_here,
    )


def summary(d: Decision) -> tuple[Rule, Action, str | None, bool, bool]:
    return d.rule, d.action, d.target_id, d.is_repeat, d.created


# --- 1. conversation continuity --------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "action"),
    [(TargetKind.LEAD, Action.ATTACH_LEAD), (TargetKind.DEAL, Action.ATTACH_DEAL)],
)
def test_open_conversation_target_takes_the_message(kind: TargetKind, action: Action) -> None:
    d = decide(ctx(conversation=conversation(kind, "target-7"), contact=contact()))
    assert summary(d) == (Rule.CONVERSATION, action, "target-7", False, False)
    assert "conv-1" in d.reason
    assert "target-7" in d.reason


@pytest.mark.parametrize(
    "extra",
    [
        {"active_deal": deal()},
        {"open_lead": lead()},
        {"active_deal": deal(), "open_lead": lead()},
        {"automatic": True},
        {"contact": contact(spam=True), "has_history": True},
        {"source": NO_LEADS_SOURCE},
        {"contact": None},
    ],
    ids=["active_deal", "open_lead", "deal_and_lead", "automatic", "spam", "no_leads", "unknown"],
)
def test_open_conversation_beats_everything_else(extra: dict[str, Any]) -> None:
    values: dict[str, Any] = {"contact": contact(), "has_history": True, **extra}
    d = decide(ctx(conversation=conversation(TargetKind.LEAD, "lead-9"), **values))
    assert summary(d) == (Rule.CONVERSATION, Action.ATTACH_LEAD, "lead-9", False, False)


@pytest.mark.parametrize(
    "conv",
    [
        conversation(TargetKind.LEAD, "lead-9", open_=False),
        conversation(TargetKind.DEAL, "deal-9", open_=False),
        conversation(TargetKind.LEAD, None, open_=True),
        conversation(TargetKind.CONTACT, "contact-1", open_=False),
        conversation(TargetKind.NONE, None, open_=False),
        ConversationDoc(_id="conv-0", channel="api", account="site", thread="x"),
    ],
    ids=["closed_lead", "closed_deal", "no_target_id", "contact", "none", "default"],
)
def test_conversation_without_open_target_falls_through(conv: ConversationDoc) -> None:
    d = decide(ctx(conversation=conv, contact=contact(), open_lead=lead()))
    assert summary(d) == (Rule.OPEN_LEAD, Action.ATTACH_LEAD, "lead-1", False, False)
    d = decide(ctx(conversation=conv))
    assert d.rule is Rule.NEW_LEAD


# --- 2. active deal, 3. open lead ------------------------------------------------------


def test_active_deal_takes_the_message() -> None:
    d = decide(ctx(contact=contact(), active_deal=deal(), has_history=True))
    assert summary(d) == (Rule.ACTIVE_DEAL, Action.ATTACH_DEAL, "deal-1", False, False)
    assert "design" in d.reason


def test_active_deal_beats_open_lead() -> None:
    d = decide(ctx(contact=contact(), active_deal=deal(), open_lead=lead(), has_history=True))
    assert summary(d) == (Rule.ACTIVE_DEAL, Action.ATTACH_DEAL, "deal-1", False, False)


def test_open_lead_takes_the_message() -> None:
    d = decide(ctx(contact=contact(), open_lead=lead(), has_history=True))
    assert summary(d) == (Rule.OPEN_LEAD, Action.ATTACH_LEAD, "lead-1", False, False)
    assert "in_work" in d.reason


@pytest.mark.parametrize("source", [LEADS_SOURCE, NO_LEADS_SOURCE], ids=["leads", "no_leads"])
@pytest.mark.parametrize("automatic", [False, True], ids=["human", "automatic"])
@pytest.mark.parametrize("spam", [False, True], ids=["clean", "spam"])
def test_open_work_takes_automatic_and_spam_messages_too(
    source: Source, automatic: bool, spam: bool
) -> None:
    """Auto-replies and spam stop *after* the open work: they are attached to it."""
    c = contact(spam=spam)
    d = decide(ctx(source=source, automatic=automatic, contact=c, active_deal=deal()))
    assert (d.rule, d.action, d.target_id) == (Rule.ACTIVE_DEAL, Action.ATTACH_DEAL, "deal-1")
    d = decide(ctx(source=source, automatic=automatic, contact=c, open_lead=lead()))
    assert (d.rule, d.action, d.target_id) == (Rule.OPEN_LEAD, Action.ATTACH_LEAD, "lead-1")


# --- automatic and spam never create ---------------------------------------------------


@pytest.mark.parametrize("source", [LEADS_SOURCE, NO_LEADS_SOURCE], ids=["leads", "no_leads"])
def test_automatic_from_unknown_sender_is_only_stored(source: Source) -> None:
    d = decide(ctx(source=source, automatic=True))
    assert summary(d) == (Rule.AUTOMATIC, Action.STORE_ONLY, None, False, False)


@pytest.mark.parametrize("source", [LEADS_SOURCE, NO_LEADS_SOURCE], ids=["leads", "no_leads"])
@pytest.mark.parametrize(
    ("origin", "history"), [("routing", False), ("routing", True), ("manual", False)]
)
@pytest.mark.parametrize("spam", [False, True], ids=["clean", "spam"])
def test_automatic_from_known_contact_attaches_to_contact(
    source: Source, origin: str, history: bool, spam: bool
) -> None:
    c = contact(origin=origin, spam=spam)
    d = decide(ctx(source=source, automatic=True, contact=c, has_history=history))
    assert summary(d) == (Rule.AUTOMATIC, Action.ATTACH_CONTACT, "contact-1", False, False)


@pytest.mark.parametrize("source", [LEADS_SOURCE, NO_LEADS_SOURCE], ids=["leads", "no_leads"])
@pytest.mark.parametrize(
    ("origin", "history"), [("routing", False), ("routing", True), ("import", False)]
)
def test_spam_contact_never_gets_a_lead_or_deal(source: Source, origin: str, history: bool) -> None:
    c = contact(origin=origin, spam=True)
    d = decide(ctx(source=source, contact=c, has_history=history))
    assert summary(d) == (Rule.SPAM, Action.ATTACH_CONTACT, "contact-1", False, False)


# --- 4. repeat, 5. new -----------------------------------------------------------------


def test_unknown_sender_gets_a_new_lead() -> None:
    d = decide(ctx())
    assert summary(d) == (Rule.NEW_LEAD, Action.CREATE_LEAD, None, False, False)
    assert "leads" in d.reason


def test_unknown_sender_in_no_leads_mode_gets_a_new_deal() -> None:
    d = decide(ctx(source=NO_LEADS_SOURCE))
    assert summary(d) == (Rule.NEW_DEAL, Action.CREATE_DEAL, None, False, False)
    assert "shop" in d.reason


@pytest.mark.parametrize(
    ("source", "rule", "action"),
    [
        (LEADS_SOURCE, Rule.NEW_LEAD, Action.CREATE_LEAD),
        (NO_LEADS_SOURCE, Rule.NEW_DEAL, Action.CREATE_DEAL),
    ],
)
def test_routing_created_contact_without_history_is_still_unknown(
    source: Source, rule: Rule, action: Action
) -> None:
    """A crash between creating the contact and its lead: the contact is no sign of a
    returning customer."""
    c = contact(origin="routing", origin_intake_id=OTHER_INTAKE)
    d = decide(ctx(source=source, contact=c, has_history=False))
    assert summary(d) == (rule, action, None, False, False)


@pytest.mark.parametrize(
    ("source", "rule", "action"),
    [
        (LEADS_SOURCE, Rule.REPEAT_LEAD, Action.CREATE_LEAD),
        (NO_LEADS_SOURCE, Rule.REPEAT_DEAL, Action.CREATE_DEAL),
    ],
)
@pytest.mark.parametrize(
    ("origin", "history"),
    [("routing", True), ("manual", False), ("import", False), ("manual", True)],
)
def test_known_contact_with_nothing_open_gets_a_repeat(
    source: Source, rule: Rule, action: Action, origin: str, history: bool
) -> None:
    d = decide(ctx(source=source, contact=contact(origin=origin), has_history=history))
    assert summary(d) == (rule, action, None, True, False)
    assert "contact-1" in d.reason


# --- re-runs: what this intake record created is reported as created -------------------


@pytest.mark.parametrize("is_repeat", [False, True])
def test_rerun_reports_the_lead_this_intake_created(is_repeat: bool) -> None:
    own = lead("lead-own", origin_intake_id=INTAKE, is_repeat=is_repeat)
    d = decide(ctx(contact=contact(), open_lead=own, has_history=True))
    rule = Rule.REPEAT_LEAD if is_repeat else Rule.NEW_LEAD
    assert summary(d) == (rule, Action.CREATE_LEAD, "lead-own", is_repeat, True)


@pytest.mark.parametrize("source", [LEADS_SOURCE, NO_LEADS_SOURCE], ids=["leads", "no_leads"])
@pytest.mark.parametrize("is_repeat", [False, True])
def test_rerun_reports_the_deal_this_intake_created(source: Source, is_repeat: bool) -> None:
    own = deal("deal-own", origin_intake_id=INTAKE, is_repeat=is_repeat)
    d = decide(ctx(source=source, contact=contact(), active_deal=own, has_history=True))
    rule = Rule.REPEAT_DEAL if is_repeat else Rule.NEW_DEAL
    assert summary(d) == (rule, Action.CREATE_DEAL, "deal-own", is_repeat, True)


def test_rerun_of_an_own_deal_wins_over_another_open_lead() -> None:
    own = deal("deal-own", origin_intake_id=INTAKE)
    d = decide(ctx(contact=contact(), active_deal=own, open_lead=lead(), has_history=True))
    assert summary(d) == (Rule.NEW_DEAL, Action.CREATE_DEAL, "deal-own", False, True)


@pytest.mark.parametrize("origin", [None, OTHER_INTAKE, "intake-this-but-longer"])
def test_someone_elses_lead_is_not_reported_as_created(origin: str | None) -> None:
    d = decide(ctx(contact=contact(), open_lead=lead(origin_intake_id=origin), has_history=True))
    assert (d.rule, d.created) == (Rule.OPEN_LEAD, False)
    d = decide(ctx(contact=contact(), active_deal=deal(origin_intake_id=origin), has_history=True))
    assert (d.rule, d.created) == (Rule.ACTIVE_DEAL, False)


@pytest.mark.parametrize(
    "extra",
    [
        {"conversation": conversation(TargetKind.LEAD, "lead-own")},
        {"active_deal": deal("deal-other")},
    ],
    ids=["conversation_written", "other_active_deal"],
)
def test_rerun_reports_own_lead_even_when_an_earlier_rule_matches(extra: dict[str, Any]) -> None:
    own = lead("lead-own", origin_intake_id=INTAKE)
    d = decide(ctx(contact=contact(), open_lead=own, has_history=True, **extra))
    assert summary(d) == (Rule.NEW_LEAD, Action.CREATE_LEAD, "lead-own", False, True)


def test_rerun_reports_a_lead_it_created_that_is_closed_by_now() -> None:
    """The first run created a lead, an operator closed it before the re-run: the re-run
    still reports it (and creates no repeat lead)."""
    closed = lead("lead-own", origin_intake_id=INTAKE).model_copy(update={"open": False})
    d = decide(ctx(contact=contact(), has_history=True, created_here=closed))
    assert summary(d) == (Rule.NEW_LEAD, Action.CREATE_LEAD, "lead-own", False, True)


@pytest.mark.parametrize("automatic", [False, True])
def test_rerun_reports_its_deal_before_any_other_rule(automatic: bool) -> None:
    own = deal("deal-own", origin_intake_id=INTAKE, is_repeat=True)
    d = decide(
        ctx(
            source=NO_LEADS_SOURCE,
            automatic=automatic,
            conversation=conversation(TargetKind.LEAD, "lead-9"),
            contact=contact(spam=True),
            open_lead=lead(),
            has_history=True,
            created_here=own,
        )
    )
    assert summary(d) == (Rule.REPEAT_DEAL, Action.CREATE_DEAL, "deal-own", True, True)


# --- purity ----------------------------------------------------------------------------


def test_decide_is_deterministic_and_does_not_touch_its_input() -> None:
    docs = (contact(), lead(), conversation(open_=False))
    before = [d.model_dump() for d in docs]
    c = ctx(contact=docs[0], open_lead=docs[1], conversation=docs[2])
    assert decide(c) == decide(c)
    assert [d.model_dump() for d in docs] == before


# --- invariants over random contexts ---------------------------------------------------


# Pre-built documents the random contexts are drawn from (building pydantic models per
# example would make generation the slow part).
_ORIGINS: list[str | None] = [INTAKE, OTHER_INTAKE, "intake-x", None]
CONVERSATION_POOL = [
    conversation(kind, tid, open_=o)
    for kind in TargetKind
    for tid in ("lead-1", "deal-1", "lead-9", None)
    for o in (True, False)
]
CONTACT_POOL = [
    contact(origin=o, spam=s) for o in ("routing", "manual", "import") for s in (False, True)
]
DEAL_POOL = [deal(origin_intake_id=o, is_repeat=r) for o in _ORIGINS for r in (False, True)]
LEAD_POOL = [lead(origin_intake_id=o, is_repeat=r) for o in _ORIGINS for r in (False, True)]


@st.composite
def contexts(draw: st.DrawFn) -> Context:
    c = draw(st.none() | st.sampled_from(CONTACT_POOL))
    known = c is not None
    active = draw(st.none() | st.sampled_from(DEAL_POOL)) if known else None
    open_ = draw(st.none() | st.sampled_from(LEAD_POOL)) if known else None
    history = draw(st.booleans()) if known else False
    return ctx(
        source=draw(st.sampled_from([LEADS_SOURCE, NO_LEADS_SOURCE])),
        automatic=draw(st.booleans()),
        conversation=draw(st.none() | st.sampled_from(CONVERSATION_POOL)),
        contact=c,
        active_deal=active,
        open_lead=open_,
        has_history=history or active is not None or open_ is not None,
        # Mostly this record; sometimes one that created nothing seen here.
        intake_id=draw(st.sampled_from([INTAKE, INTAKE, "intake-x"])),
    )


PROPERTY = settings(max_examples=300, deadline=None, database=None)


def _conversation_open(c: Context) -> bool:
    conv = c.conversation
    return conv is not None and conv.target.open and conv.target.id is not None


def _own(c: Context) -> set[str]:
    """Ids of the lead/deal that this very intake record created."""
    return {
        x.id
        for x in (c.active_deal, c.open_lead)
        if x is not None and x.origin_intake_id == c.intake_id
    }


def check_automatic_never_creates(c: Context, d: Decision) -> None:
    if c.automatic and d.action in CREATE:
        # Only ever a report of what this record itself created (a re-run), never new work.
        assert d.created
        assert d.target_id in _own(c)


def check_open_conversation_means_conversation_rule(c: Context, d: Decision) -> None:
    if _own(c):
        # A re-run reports what it created first, whatever the conversation says.
        assert d.created
        assert d.target_id in _own(c)
    elif _conversation_open(c):
        assert c.conversation is not None
        assert d.rule is Rule.CONVERSATION
        assert d.target_id == c.conversation.target.id
    else:
        assert d.rule is not Rule.CONVERSATION


def check_nothing_created_beside_open_work(c: Context, d: Decision) -> None:
    if d.action in CREATE and (c.active_deal is not None or c.open_lead is not None):
        assert d.created
        assert d.target_id in _own(c)


def check_decision_shape(c: Context, d: Decision) -> None:
    assert d.reason
    if d.created:
        assert d.action in CREATE
        assert d.target_id in _own(c)
    if d.action in CREATE and not d.created:
        assert d.target_id is None  # the router creates it
        assert not c.automatic
        assert c.contact is None or not c.contact.spam
        lead_action = c.source.mode is SourceMode.LEADS
        assert d.action is (Action.CREATE_LEAD if lead_action else Action.CREATE_DEAL)
        known = c.contact is not None and (c.has_history or c.contact.origin != "routing")
        assert d.is_repeat is known
    if d.action in ATTACH:
        assert d.target_id is not None
    if d.action is Action.ATTACH_CONTACT:
        assert c.contact is not None
        assert d.target_id == c.contact.id
    if d.action is Action.STORE_ONLY:
        assert c.contact is None
        assert c.automatic or c.comment == "attach"
    if d.is_repeat:
        assert d.rule in {Rule.REPEAT_LEAD, Rule.REPEAT_DEAL}


def check_company_deal_only_without_own_work(c: Context, d: Decision) -> None:
    if d.rule is Rule.COMPANY_DEAL:
        assert c.company_deal is not None
        assert d.target_id == c.company_deal.id
        assert c.active_deal is None
        assert c.open_lead is None
        assert not _conversation_open(c)
    elif c.company_deal is not None and d.action in CREATE:
        assert d.created  # a company contact with its company's deal open never opens work


def check_attach_comments_never_create(c: Context, d: Decision) -> None:
    if c.comment == "attach" and d.action in CREATE:
        assert d.created  # only a re-run of what this very record created
    if d.rule is Rule.COMMENT:
        assert c.comment == "attach"
        assert "comments: attach" in d.reason


INVARIANTS = [
    check_attach_comments_never_create,
    check_automatic_never_creates,
    check_company_deal_only_without_own_work,
    check_open_conversation_means_conversation_rule,
    check_nothing_created_beside_open_work,
    check_decision_shape,
]


@PROPERTY
@given(contexts())
def test_automatic_message_never_creates(c: Context) -> None:
    check_automatic_never_creates(c, decide(c))


@PROPERTY
@given(contexts())
def test_open_conversation_target_means_conversation_rule(c: Context) -> None:
    check_open_conversation_means_conversation_rule(c, decide(c))


@PROPERTY
@given(contexts())
def test_nothing_is_created_beside_open_work(c: Context) -> None:
    check_nothing_created_beside_open_work(c, decide(c))


@PROPERTY
@given(contexts())
def test_decision_shape(c: Context) -> None:
    check_decision_shape(c, decide(c))


def _all_contexts() -> list[Context]:
    """Every combination of the pieces a context is made of (about 40,000)."""
    origins: list[str | None] = [INTAKE, OTHER_INTAKE, None]
    convs = [None] + [
        conversation(kind, tid, open_=o)
        for kind in TargetKind
        for tid in ("lead-1", "deal-1", None)
        for o in (True, False)
    ]
    contacts_ = [contact(origin=o, spam=s) for o in ("routing", "manual") for s in (False, True)]
    deals = [None] + [deal(origin_intake_id=o, is_repeat=r) for o in origins for r in (False, True)]
    leads = [None] + [lead(origin_intake_id=o, is_repeat=r) for o in origins for r in (False, True)]
    sources = (LEADS_SOURCE, NO_LEADS_SOURCE)
    out = [
        ctx(source=s, automatic=a, conversation=cv)
        for s in sources
        for a in (False, True)
        for cv in convs
    ]
    for s, a, cv, c, d, ld, h in itertools.product(
        sources, (False, True), convs, contacts_, deals, leads, (False, True)
    ):
        has_history = h or d is not None or ld is not None
        out.append(
            ctx(
                source=s,
                automatic=a,
                conversation=cv,
                contact=c,
                active_deal=d,
                open_lead=ld,
                has_history=has_history,
            )
        )
    # Rule 3a: a contact with nothing of their own open whose company has a deal.
    company_deal = deal("deal-co", origin_intake_id=None)
    out += [
        dataclasses.replace(c, company_deal=company_deal)
        for c in out
        if c.contact is not None and c.active_deal is None and c.open_lead is None
    ]
    # A comment on an account whose comments never create a lead (comments: attach).
    out += [
        dataclasses.replace(c, comment="attach")
        for c in out
        if c.active_deal is None and c.open_lead is None and c.company_deal is None
    ]
    return out


def test_invariants_hold_for_every_combination() -> None:
    contexts_ = _all_contexts()
    rules: Counter[Rule] = Counter()
    for c in contexts_:
        d = decide(c)
        rules[d.rule] += 1
        for check in INVARIANTS:
            check(c, d)
    assert set(rules) == set(Rule)  # every rule is reached by some combination


# --- round robin -----------------------------------------------------------------------


def test_round_robin_without_users() -> None:
    assert pick_round_robin([], 1) is None
    assert pick_round_robin([], 7) is None


def test_round_robin_cycles_in_a_stable_order() -> None:
    users = ["dmitry", "anna", "ivan"]
    picks = [pick_round_robin(users, turn) for turn in range(1, 10)]
    assert picks == ["anna", "dmitry", "ivan"] * 3


def test_round_robin_ignores_the_order_users_are_listed_in() -> None:
    users = ["dmitry", "anna", "ivan"]
    for turn in range(1, 7):
        assert pick_round_robin(users, turn) == pick_round_robin(list(reversed(users)), turn)


@settings(max_examples=300, deadline=None, database=None)
@given(
    users=st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=12, unique=True),
    start=st.integers(min_value=1, max_value=10**9),
    rounds=st.integers(min_value=1, max_value=5),
)
def test_round_robin_is_fair_from_any_turn(users: list[str], start: int, rounds: int) -> None:
    n = len(users)
    picks = [pick_round_robin(users, t) for t in range(start, start + rounds * n)]
    # Every window of n consecutive turns deals each user exactly one lead.
    for i in range(0, len(picks) - n + 1):
        assert sorted(p for p in picks[i : i + n] if p is not None) == sorted(users)
    assert Counter(picks) == dict.fromkeys(users, rounds)
