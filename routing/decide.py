"""The routing rules as one pure function: what happens to an inbound message.

Everything the rules need is gathered into a :class:`Context` by routing/router.py
(which does the reads); :func:`decide` only looks at it. In order:

1. the message's conversation has an open lead/deal → attach there;
2. the sender is a known contact with an active deal → attach to that deal (the most
   recently active open deal of a *sales* pipeline — the context holds that one; a deal of
   a ``purpose: service`` pipeline, such as the copy of a won order in an NPS survey, is
   history and never attracts a message, so a returning customer gets a repeat lead);
3. known contact with an open lead → attach to it;
3a. a contact of a company, with no deal or lead of their own open, while the company has
   an active deal (its most recently active open deal of a sales pipeline, whoever's
   contact it is) → attach to the company's deal (docs/companies.md);
   automatic mail (auto-replies, bounces) and contacts marked as spam stop here: stored,
   attached to the contact if known, never a new lead; so do comments under a post on an
   account whose ``comments`` setting is ``attach`` (``lead``, the default: a comment is
   a request like any message);
4. known contact with nothing open → a repeat lead (or deal, in "no leads" mode);
5. unknown sender → a new lead in the source's pipeline (or contact + deal in "no leads").

A contact that routing itself created for this very sender and that has no lead or deal
yet (a crash between two writes) is still "unknown"; and a lead/deal that this very intake
record created is reported as created again — before any other rule — so a re-run after a
crash emits the same events (their ids are deterministic) and changes nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from config.models import Source, SourceMode
from crm_store.documents import ContactDoc, ConversationDoc, DealDoc, LeadDoc


class Rule(StrEnum):
    CONVERSATION = "conversation"
    ACTIVE_DEAL = "active_deal"
    COMPANY_DEAL = "company_deal"
    OPEN_LEAD = "open_lead"
    AUTOMATIC = "automatic"
    COMMENT = "comment"
    SPAM = "spam"
    REPEAT_LEAD = "repeat_lead"
    NEW_LEAD = "new_lead"
    REPEAT_DEAL = "repeat_deal"
    NEW_DEAL = "new_deal"


class Action(StrEnum):
    ATTACH_LEAD = "attach_lead"
    ATTACH_DEAL = "attach_deal"
    ATTACH_CONTACT = "attach_contact"
    STORE_ONLY = "store_only"
    CREATE_LEAD = "create_lead"
    CREATE_DEAL = "create_deal"


@dataclass(frozen=True, slots=True)
class Context:
    intake_id: str
    source: Source
    automatic: bool
    conversation: ConversationDoc | None
    contact: ContactDoc | None
    # The contact's most recently active open deal of a sales pipeline, its open lead,
    # and whether it ever had any lead or deal (service pipelines' deals count here).
    active_deal: DealDoc | None
    open_lead: LeadDoc | None
    has_history: bool
    # The lead/deal this very intake record created on an earlier run, if any (a re-run
    # after a crash reports it as created again, whatever else is open now).
    created_here: LeadDoc | DealDoc | None = None
    # A comment under a post: its account's ``comments`` setting ("lead" | "attach");
    # None for a direct message.
    comment: str | None = None
    # The company's active deal, when the contact belongs to a company (rule 3a).
    company_deal: DealDoc | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    rule: Rule
    action: Action
    reason: str
    target_id: str | None = None
    is_repeat: bool = False
    # True when this intake record created the lead/deal (first run or a re-run).
    created: bool = False


def _known(ctx: Context) -> bool:
    """A contact counts as known once it has had a lead or deal, or was not created by
    routing (entered by an operator, imported)."""
    c = ctx.contact
    return c is not None and (ctx.has_history or c.origin != "routing")


def decide(ctx: Context) -> Decision:
    created = ctx.created_here
    if created is not None:  # a re-run of the record that created this lead/deal
        is_deal = isinstance(created, DealDoc)
        if is_deal:
            rule = Rule.REPEAT_DEAL if created.is_repeat else Rule.NEW_DEAL
        else:
            rule = Rule.REPEAT_LEAD if created.is_repeat else Rule.NEW_LEAD
        return Decision(
            rule,
            Action.CREATE_DEAL if is_deal else Action.CREATE_LEAD,
            f"{'deal' if is_deal else 'lead'} {created.id} created by this message",
            created.id,
            created.is_repeat,
            created=True,
        )
    conv = ctx.conversation
    if conv is not None and conv.target.open and conv.target.id is not None:
        kind = conv.target.kind.value
        return Decision(
            Rule.CONVERSATION,
            Action.ATTACH_DEAL if kind == "deal" else Action.ATTACH_LEAD,
            f"conversation {conv.id} continues on open {kind} {conv.target.id}",
            conv.target.id,
        )
    if ctx.active_deal is not None:
        d = ctx.active_deal
        return Decision(
            Rule.ACTIVE_DEAL,
            Action.ATTACH_DEAL,
            f"contact has active deal {d.id} in stage {d.stage_id}",
            d.id,
        )
    if ctx.open_lead is not None:
        lead = ctx.open_lead
        return Decision(
            Rule.OPEN_LEAD,
            Action.ATTACH_LEAD,
            f"contact has open lead {lead.id} in stage {lead.stage_id}",
            lead.id,
        )
    if ctx.company_deal is not None:
        d = ctx.company_deal
        return Decision(
            Rule.COMPANY_DEAL,
            Action.ATTACH_DEAL,
            f"contact's company has active deal {d.id} in stage {d.stage_id}",
            d.id,
        )
    contact = ctx.contact
    if ctx.automatic:
        return Decision(
            Rule.AUTOMATIC,
            Action.ATTACH_CONTACT if contact else Action.STORE_ONLY,
            "automatic message (auto-reply, bounce or list mail) never creates a lead",
            contact.id if contact else None,
        )
    if ctx.comment == "attach":
        kept = f"kept on contact {contact.id}" if contact else "unknown commenter: kept, unrouted"
        return Decision(
            Rule.COMMENT,
            Action.ATTACH_CONTACT if contact else Action.STORE_ONLY,
            f"comment under a post; comments on this account never create a lead "
            f"(comments: attach); {kept}",
            contact.id if contact else None,
        )
    if contact is not None and contact.spam:
        return Decision(
            Rule.SPAM, Action.ATTACH_CONTACT, f"contact {contact.id} is marked as spam", contact.id
        )
    no_leads = ctx.source.mode is SourceMode.NO_LEADS
    if contact is not None and _known(ctx):
        if no_leads:
            return Decision(
                Rule.REPEAT_DEAL,
                Action.CREATE_DEAL,
                f"known contact {contact.id} has nothing open; no-leads source {ctx.source.id}",
                is_repeat=True,
            )
        return Decision(
            Rule.REPEAT_LEAD,
            Action.CREATE_LEAD,
            f"known contact {contact.id} has nothing open",
            is_repeat=True,
        )
    if no_leads:
        return Decision(
            Rule.NEW_DEAL,
            Action.CREATE_DEAL,
            f"unknown sender; no-leads source {ctx.source.id} opens a deal",
        )
    return Decision(
        Rule.NEW_LEAD,
        Action.CREATE_LEAD,
        f"unknown sender; new lead in pipeline {ctx.source.pipeline}",
    )


def pick_round_robin(user_ids: list[str], turn: int) -> str | None:
    """The user whose turn it is; ``turn`` is a persisted counter, 1-based."""
    if not user_ids:
        return None
    return sorted(user_ids)[(turn - 1) % len(user_ids)]
