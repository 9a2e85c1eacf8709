"""Routes batches of intake records: read the context, decide, write the outcome.

The flow for one batch (store calls live in crm_store/routing_store.py):

1. one read of the batch's conversations — a message whose conversation has an open
   lead/deal (the steady state) needs nothing else read;
2. for the rest, one read of their contacts (by any identity) and one read each of those
   contacts' deals and leads;
3. decide per message, in arrival order (pure, routing/decide.py); creations are single
   inserts guarded by unique indexes, and a lost race re-decides against the winner;
4. one write each: messages, conversations, deal activity, new identities, events; then
   the intake records are marked routed.

Every step is idempotent, so a batch that is routed again after a crash (or by two
processes whose leases overlapped) stores nothing twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from pymongo import UpdateOne

from channels.base import InboundMessage
from channels.identity import identity_keys, normalize_email
from config.models import AppConfig, Source, comments_mode
from crm_store import events, updates
from crm_store import identities as ident
from crm_store import routing_store as rs
from crm_store.documents import (
    ContactDoc,
    ConversationDoc,
    DealDoc,
    IntakeDoc,
    LeadDoc,
    Target,
    TargetKind,
    conversation_id,
    stable_id,
)
from crm_store.intake import mark_routed
from crm_store.store import Document, Store, together
from routing.decide import Action, Context, Decision, decide, pick_round_robin

MAX_REDECIDE = 3


@dataclass(slots=True)
class Routed:
    intake_id: str
    decision: Decision
    target: Target
    contact_id: str | None
    conversation_id: str


@dataclass(slots=True)
class _Batch:
    """Working state of one batch: what was read, and what is to be written."""

    convs: dict[str, ConversationDoc]
    contacts_by_key: dict[str, ContactDoc] = field(default_factory=dict)
    contacts_by_id: dict[str, ContactDoc] = field(default_factory=dict)
    state: rs.ContactState = field(default_factory=rs.ContactState)
    events: list[Document] = field(default_factory=list)

    def remember_contact(self, c: ContactDoc) -> None:
        self.contacts_by_id[c.id] = c
        for k in c.identities:
            self.contacts_by_key.setdefault(k, c)

    def forget(self, ids: set[str]) -> None:
        """Drop planned contacts, leads and deals that were not written (a lost race)."""
        for cid in ids & self.contacts_by_id.keys():
            del self.contacts_by_id[cid]
        self.contacts_by_key = {k: c for k, c in self.contacts_by_key.items() if c.id not in ids}
        st = self.state
        st.open_lead = {c: e for c, e in st.open_lead.items() if e.id not in ids and c not in ids}
        st.active_deal = {
            c: e for c, e in st.active_deal.items() if e.id not in ids and c not in ids
        }
        st.created_by = {r: e for r, e in st.created_by.items() if e.id not in ids}
        st.history -= ids


# A line's round-robin turn, shared by a planned contact and what it opens.
@dataclass(slots=True)
class _Turn:
    line: str
    docs: list[Document] = field(default_factory=list)


@dataclass(slots=True)
class _Plan:
    """Creations of one batch, written together after every record was decided
    (Router._settle): new contacts, then leads and deals, each in one insert_many, the
    round-robin turns reserved with one $inc per line."""

    contacts: dict[str, Document] = field(default_factory=dict)  # by contact id
    leads: dict[str, Document] = field(default_factory=dict)  # by lead id
    deals: dict[str, Document] = field(default_factory=dict)
    turns: list[_Turn] = field(default_factory=list)
    turn_of: dict[str, _Turn] = field(default_factory=dict)  # a planned contact's turn
    # (record, decision, sender keys) of each planned lead/deal, by its id: announced
    # once written.
    made_by: dict[str, tuple[IntakeDoc, Decision, list[str]]] = field(default_factory=dict)
    # A planned contact's record and sender keys (for contact.created), by contact id.
    creator: dict[str, tuple[str, list[str]]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.contacts or self.leads or self.deals)


def _noted(decision: Decision, msg: InboundMessage) -> Decision:
    """The decision with the channel's note on how it read the message appended to its
    reason (e-mail: which rule made it automatic, which field the sender came from)."""
    note = msg.meta.get("reason_note")
    if not isinstance(note, str) or not note:
        return decision
    return replace(decision, reason=f"{decision.reason}; {note}")


def _now() -> datetime:
    return datetime.now(UTC)


def thread_of(msg: InboundMessage, keys: list[str]) -> str:
    """The conversation key inside a channel account: the provider's chat/thread, else
    the sender's strongest identity, else the message itself (a one-off)."""
    if msg.thread_id:
        return f"thread:{msg.thread_id}"
    if keys:
        return f"sender:{keys[0]}"
    return f"message:{msg.provider_id}"


def _event(
    intake_id: str, type_: str, at: datetime, refs: dict[str, str | None], data: dict[str, Any]
) -> Document:
    return events.event(type_, refs, data, key=[intake_id], at=at)


def _contact_created(intake_id: str, contact_id: str, keys: list[str]) -> Document:
    refs: dict[str, str | None] = {"contact_id": contact_id, "message_id": intake_id}
    return _event(
        intake_id, "contact.created", _now(), refs, {"identities": keys, "origin": "routing"}
    )


MAX_REFERENCES = 20


def _last_inbound(msg: InboundMessage) -> Document:
    """What a reply to this message needs (e-mail threading; no automatic answers to
    automatic mail): its id, the chain it answered (oldest first, the root kept when
    trimmed), its subject; the start of its text for the operator's list."""
    chain = list(reversed(msg.references))
    if len(chain) > MAX_REFERENCES:
        chain = chain[:1] + chain[-(MAX_REFERENCES - 1) :]
    subject = msg.meta.get("subject")
    return {
        "provider_id": msg.provider_id,
        "references": chain,
        "subject": subject if isinstance(subject, str) else None,
        "automatic": msg.automatic,
        "text": msg.text[:200],  # the inbox list shows it
    }


class Router:
    def __init__(self, store: Store, config: AppConfig) -> None:
        self.store = store
        self.config = config
        # Deals there never attract messages (routing_store.load_contact_state).
        self.service_pipelines = config.service_pipelines()

    async def route(self, records: list[IntakeDoc], *, rerun: bool = False) -> list[Routed]:
        """Route a batch. ``rerun``: the records may have been partly routed before."""
        if not records:
            return []
        at = _now()
        msgs = {r.id: InboundMessage.model_validate(r.message) for r in records}
        keys = {r.id: identity_keys(r.channel, r.account, msgs[r.id].sender) for r in records}
        conv_ids = {
            r.id: conversation_id(r.channel, r.account, thread_of(msgs[r.id], keys[r.id]))
            for r in records
        }
        await self._follow_references(records, msgs, conv_ids)
        batch = _Batch(convs=await rs.load_conversations(self.store, conv_ids.values()))

        # A re-run reads everything: the record may have created what its conversation
        # now points at.
        unsettled = [
            r for r in records if rerun or not self._steady(batch.convs.get(conv_ids[r.id]))
        ]
        if unsettled:
            contacts = await rs.load_contacts(
                self.store,
                (k for r in unsettled for k in keys[r.id]),
                (
                    cv.contact_id
                    for r in unsettled
                    if (cv := batch.convs.get(conv_ids[r.id])) and cv.contact_id
                ),
            )
            for contact in contacts:
                batch.remember_contact(contact)
            batch.state = await rs.load_contact_state(
                self.store, batch.contacts_by_id, self.service_pipelines
            )

        # Decide every record against what was read and what earlier records of the batch
        # plan to create; write the creations together; a record whose plan lost a race
        # (or that followed one) is decided again, one by one, against the winners.
        plan = _Plan()
        routed: list[Routed] = []
        for r in records:
            routed.append(
                await self._route_first(batch, plan, r, msgs[r.id], keys[r.id], conv_ids[r.id])
            )
        if plan:
            lost = await self._settle(batch, plan, routed)
            for n, r in enumerate(records):
                out = routed[n]
                if r.id in lost or out.contact_id in lost or out.target.id in lost:
                    routed[n] = await self._route_one(
                        batch, r, msgs[r.id], keys[r.id], conv_ids[r.id]
                    )
        await self._write(batch, records, msgs, keys, routed, at, rerun)
        return routed

    async def _follow_references(
        self,
        records: list[IntakeDoc],
        msgs: dict[str, InboundMessage],
        conv_ids: dict[str, str],
    ) -> None:
        """A message answering a stored one (e-mail In-Reply-To / References) continues
        that message's conversation, whoever sends it."""
        wanted: dict[tuple[str, str], set[str]] = {}
        for r in records:
            if refs := msgs[r.id].references:
                wanted.setdefault((r.channel, r.account), set()).update(refs)
        if not wanted:
            return
        known = await rs.conversations_of(self.store, wanted)
        for r in records:
            for ref in msgs[r.id].references:
                if (cid := known.get((r.channel, r.account, ref))) is not None:
                    conv_ids[r.id] = cid
                    break

    @staticmethod
    def _new_identities(
        batch: _Batch, out: Routed, conv: ConversationDoc | None, keys: list[str]
    ) -> list[str]:
        """Keys of the sender the contact does not hold yet (a phone shared later in a
        chat, a new e-mail address). In the steady state the contact is not read: the
        conversation remembers the keys its sender has used."""
        contact = batch.contacts_by_id.get(out.contact_id or "")
        if contact is not None:
            known = set(contact.identities)
        elif conv is not None:
            known = set(conv.sender_keys)
        else:
            return []
        return [k for k in keys if k not in known]

    @staticmethod
    def _steady(conv: ConversationDoc | None) -> bool:
        return conv is not None and conv.target.open and conv.target.id is not None

    def _source(self, r: IntakeDoc) -> Source:
        return self.config.source(r.source_id)

    def _contact_for(
        self, batch: _Batch, keys: list[str], conv: ConversationDoc | None
    ) -> ContactDoc | None:
        for k in keys:
            if (c := batch.contacts_by_key.get(k)) is not None:
                return c
        if conv is not None and conv.contact_id:
            return batch.contacts_by_id.get(conv.contact_id)
        return None

    def _context(
        self, batch: _Batch, r: IntakeDoc, msg: InboundMessage, keys: list[str], conv_id: str
    ) -> Context:
        conv = batch.convs.get(conv_id)
        contact = self._contact_for(batch, keys, conv)
        cid = contact.id if contact else None
        return Context(
            intake_id=r.id,
            source=self._source(r),
            automatic=msg.automatic,
            conversation=conv,
            contact=contact,
            active_deal=batch.state.active_deal.get(cid) if cid else None,
            open_lead=batch.state.open_lead.get(cid) if cid else None,
            has_history=cid in batch.state.history if cid else False,
            created_here=batch.state.created_by.get(r.id),
            comment=(
                comments_mode(self.config.account(r.channel, r.account))
                if msg.kind == "comment"
                else None
            ),
            company_deal=batch.state.company_deal.get(cid) if cid else None,
        )

    async def _route_one(
        self, batch: _Batch, r: IntakeDoc, msg: InboundMessage, keys: list[str], conv_id: str
    ) -> Routed:
        for _ in range(MAX_REDECIDE):
            ctx = self._context(batch, r, msg, keys, conv_id)
            decision = _noted(decide(ctx), msg)
            outcome = await self._execute(batch, r, msg, keys, ctx, decision)
            if outcome is not None:
                return outcome
            # A creation lost a race: the batch now holds the winner; decide again.
        raise RuntimeError(f"intake {r.id}: routing did not settle after {MAX_REDECIDE} tries")

    async def _route_first(
        self,
        batch: _Batch,
        plan: _Plan,
        r: IntakeDoc,
        msg: InboundMessage,
        keys: list[str],
        conv_id: str,
    ) -> Routed:
        """The first decision of a record; a new lead/deal (and contact) is planned, not
        written (:meth:`_plan_creation`)."""
        ctx = self._context(batch, r, msg, keys, conv_id)
        decision = _noted(decide(ctx), msg)
        creates = decision.action in (Action.CREATE_LEAD, Action.CREATE_DEAL)
        if creates and not (decision.created and ctx.created_here is not None):
            return self._plan_creation(batch, plan, r, msg, keys, ctx, decision)
        outcome = await self._execute(batch, r, msg, keys, ctx, decision)
        if outcome is not None:
            return outcome
        return await self._route_one(batch, r, msg, keys, conv_id)

    def _plan_responsible(
        self, plan: _Plan, source: Source, contact: ContactDoc, docs: list[Document]
    ) -> str | None:
        """:meth:`_responsible` without I/O: a turn of the source's line is planned (and
        shared with the planned contact it belongs to), filled in by :meth:`_settle`."""
        if contact.responsible_id:  # away: their deputy (config.models.AppConfig.stand_in)
            return self.config.stand_in(contact.responsible_id, _now())
        if source.responsible:
            return source.responsible
        if not source.line:
            return None
        turn = plan.turn_of.get(contact.id)
        if turn is None:
            turn = _Turn(source.line)
            plan.turns.append(turn)
            if contact.id in plan.contacts:
                plan.turn_of[contact.id] = turn
        turn.docs.extend(docs)
        return None

    def _plan_creation(
        self,
        batch: _Batch,
        plan: _Plan,
        r: IntakeDoc,
        msg: InboundMessage,
        keys: list[str],
        ctx: Context,
        d: Decision,
    ) -> Routed:
        """Plan what :meth:`_execute` creates for a new lead/deal, as if it were written:
        the batch's later records see it. Same documents, same ids."""
        if ctx.contact is not None and ctx.contact.origin_intake_id == r.id:
            batch.events.append(_contact_created(r.id, ctx.contact.id, keys))
        source = self._source(r)
        at = _now()
        contact = ctx.contact
        if contact is None:
            cdoc: Document = {
                "_id": stable_id("contact", r.id),
                "identities": keys or [f"intake:{r.id}"],
                "name": msg.sender.name,
                "phones": [k[6:] for k in keys if k.startswith("phone:")],
                "emails": [k[6:] for k in keys if k.startswith("email:")],
                "responsible_id": None,
                "origin": "routing",
                "origin_intake_id": r.id,
                "spam": False,
                "created_at": at,
            }
            contact = ContactDoc.model_validate(cdoc)
            plan.contacts[contact.id] = cdoc
            plan.creator[contact.id] = (r.id, keys)
            cdoc["responsible_id"] = self._plan_responsible(plan, source, contact, [cdoc])
            contact = ContactDoc.model_validate(cdoc)
            batch.remember_contact(contact)
        pipeline = self.config.pipeline(source.pipeline)
        doc: Document = {
            "contact_id": contact.id,
            "pipeline_id": pipeline.id,
            "stage_id": source.stage or pipeline.first_stage.id,
            "open": True,
            "is_repeat": d.is_repeat,
            "source_id": source.id,
            "responsible_id": None,
            "identities": keys,
            "title": f"{msg.sender.name or (keys[0] if keys else 'Unknown')} — {source.name}",
            "fields": {},
            "meta": msg.meta,
            "origin_intake_id": r.id,
            "created_at": at,
            "stage_entered_at": at,
            "last_activity_at": at,
        }
        if contact.company_id is not None:
            doc["company_id"] = contact.company_id
        doc["responsible_id"] = self._plan_responsible(plan, source, contact, [doc])
        entity: LeadDoc | DealDoc
        if d.action is Action.CREATE_LEAD:
            doc["_id"] = stable_id("lead", r.id)
            doc["open_contact"] = contact.id
            plan.leads[doc["_id"]] = doc
            entity = LeadDoc.model_validate(doc)
            batch.state.open_lead[contact.id] = entity
        else:
            doc["_id"] = stable_id("deal", r.id)
            doc["auto_open"] = contact.id
            plan.deals[doc["_id"]] = doc
            entity = DealDoc.model_validate(doc)
            batch.state.active_deal[contact.id] = entity
        plan.made_by[entity.id] = (r, d, keys)
        batch.state.history.add(contact.id)
        batch.state.created_by[r.id] = entity
        return self._created(batch, r, d, entity, at, announce=False)

    async def _settle(self, batch: _Batch, plan: _Plan, routed: list[Routed]) -> set[str]:
        """Write a batch's planned creations: turns (one ``$inc`` per line), contacts,
        then leads and deals (one ``insert_many`` each, unique-index races resolved as
        :func:`routing_store.create_contact` / ``create_lead`` do); announce what was
        written. Returns what was not — the ids of lost contacts, leads and deals and of
        the records that planned them — after reading the winners into the batch."""
        lines: dict[str, list[_Turn]] = {}
        for turn in plan.turns:
            lines.setdefault(turn.line, []).append(turn)
        # The new contacts' keys are claimed while the turns are reserved (one round trip
        # less): claiming reads only their identities, not the responsible the turns pick.
        contacts = list(plan.contacts.values())
        firsts, owned = await together(
            together(
                *(
                    rs.reserve_turns(self.store, f"round_robin:{ln}", len(t))
                    for ln, t in lines.items()
                )
            ),
            rs.claim_contact_keys(self.store, contacts),
        )
        for (line, turns), first in zip(lines.items(), firsts, strict=True):
            users = [u.id for u in self.config.line_users(line)]
            for n, turn in enumerate(turns):
                for doc in turn.docs:
                    doc["responsible_id"] = pick_round_robin(users, first + n)
        made = await rs.create_contacts(self.store, contacts, owned)
        lost: set[str] = set()
        winners: list[ContactDoc] = []
        for cid, (contact, created) in made.items():
            if created and contact.id == cid:  # the written one (responsible filled in)
                batch.contacts_by_id[cid] = contact
                for k in contact.identities:
                    batch.contacts_by_key[k] = contact
                rid, keys = plan.creator[cid]
                batch.events.append(_contact_created(rid, cid, keys))
            else:
                lost.add(cid)
                winners.append(contact)
        leads = [d for d in plan.leads.values() if d["contact_id"] not in lost]
        deals = [d for d in plan.deals.values() if d["contact_id"] not in lost]
        got_leads, got_deals = await together(
            rs.create_entities(self.store, "leads", "open_contact", leads),
            rs.create_entities(self.store, "deals", "auto_open", deals),
        )
        lost |= {d["_id"] for d in plan.leads.values() if d["_id"] not in got_leads}
        lost |= {d["_id"] for d in plan.deals.values() if d["_id"] not in got_deals}
        announced: list[tuple[IntakeDoc, Decision, list[str], LeadDoc | DealDoc]] = []
        others: set[str] = set()
        for eid, (doc, _created) in [*got_leads.items(), *got_deals.items()]:
            r, d, keys = plan.made_by[eid]
            entity: LeadDoc | DealDoc = (
                LeadDoc.model_validate(doc) if eid in plan.leads else DealDoc.model_validate(doc)
            )
            if entity.origin_intake_id != r.id:  # the contact's open one won
                lost.add(eid)
                others.add(entity.contact_id)
                continue
            announced.append((r, d, keys, entity))
        lost |= {r.id for eid, (r, _, _) in plan.made_by.items() if eid in lost}
        lost |= {rid for cid, (rid, _) in plan.creator.items() if cid in lost}
        for r, d, _keys, entity in announced:
            if r.id in lost:
                continue
            self._record_created(batch, entity)
            self._created(batch, r, d, entity, _now())
        batch.forget(lost)
        for c in winners:
            batch.remember_contact(c)
        if winners or others:
            batch.state.merge(
                await rs.load_contact_state(
                    self.store, {c.id for c in winners} | others, self.service_pipelines
                )
            )
        return lost

    @staticmethod
    def _record_created(batch: _Batch, entity: LeadDoc | DealDoc) -> None:
        """The written lead/deal (its responsible filled in) replaces the planned one."""
        if isinstance(entity, DealDoc):
            batch.state.active_deal[entity.contact_id] = entity
        else:
            batch.state.open_lead[entity.contact_id] = entity
        if entity.origin_intake_id:
            batch.state.created_by[entity.origin_intake_id] = entity

    async def _ensure_contact(
        self,
        batch: _Batch,
        r: IntakeDoc,
        msg: InboundMessage,
        keys: list[str],
        ctx: Context,
    ) -> tuple[ContactDoc, bool]:
        if ctx.contact is not None:
            return ctx.contact, ctx.contact.origin_intake_id == r.id
        responsible = await self._responsible(self._source(r), None)
        contact, created = await rs.create_contact(
            self.store,
            {
                "_id": stable_id("contact", r.id),
                "identities": keys or [f"intake:{r.id}"],
                "name": msg.sender.name,
                "phones": [k[6:] for k in keys if k.startswith("phone:")],
                "emails": [k[6:] for k in keys if k.startswith("email:")],
                "responsible_id": responsible,
                "origin": "routing",
                "origin_intake_id": r.id,
                "spam": False,
                "created_at": _now(),
            },
        )
        batch.remember_contact(contact)
        if not created:
            # Someone else knows this sender: read what they have before deciding.
            batch.state.merge(
                await rs.load_contact_state(self.store, [contact.id], self.service_pipelines)
            )
        return contact, created

    async def _responsible(self, source: Source, contact: ContactDoc | None) -> str | None:
        """The contact's responsible (away: their deputy); else the source's; else the
        line's next in turn (line_users leaves out whoever is away)."""
        if contact is not None and contact.responsible_id:
            return self.config.stand_in(contact.responsible_id, _now())
        if source.responsible:
            return source.responsible
        if source.line:
            users = [u.id for u in self.config.line_users(source.line)]
            turn = await rs.next_turn(self.store, f"round_robin:{source.line}")
            return pick_round_robin(users, turn)
        return None

    async def _execute(
        self,
        batch: _Batch,
        r: IntakeDoc,
        msg: InboundMessage,
        keys: list[str],
        ctx: Context,
        d: Decision,
    ) -> Routed | None:
        conv_id = ctx.conversation.id if ctx.conversation else None
        conv_key = conv_id or ""
        if d.action in (Action.ATTACH_LEAD, Action.ATTACH_DEAL):
            kind = TargetKind.DEAL if d.action is Action.ATTACH_DEAL else TargetKind.LEAD
            contact_id = (
                ctx.conversation.contact_id
                if d.rule.value == "conversation" and ctx.conversation
                else (ctx.contact.id if ctx.contact else None)
            )
            return Routed(r.id, d, Target(kind=kind, id=d.target_id), contact_id, conv_key)
        if d.action is Action.ATTACH_CONTACT:
            return Routed(
                r.id,
                d,
                Target(kind=TargetKind.CONTACT, id=d.target_id, open=False),
                d.target_id,
                conv_key,
            )
        if d.action is Action.STORE_ONLY:
            return Routed(r.id, d, Target(kind=TargetKind.NONE, open=False), None, conv_key)

        # CREATE_LEAD / CREATE_DEAL
        if ctx.contact is not None and ctx.contact.origin_intake_id == r.id:
            # This record created the contact (on this run or an earlier one that died):
            # announce it, whatever happens to the lead. Same id every time.
            batch.events.append(_contact_created(r.id, ctx.contact.id, keys))
        if d.created and ctx.created_here is not None:
            # A re-run: the lead/deal exists, created by this record; emit its events again
            # (same ids: nothing is written twice) in case the first run died before.
            return self._created(batch, r, d, ctx.created_here, _now())
        source = self._source(r)
        contact, contact_created = await self._ensure_contact(batch, r, msg, keys, ctx)
        if contact_created and ctx.contact is None:
            batch.events.append(_contact_created(r.id, contact.id, keys))
        if not contact_created and ctx.contact is None:
            return None  # the sender turned out to be known: decide again with what we read
        responsible = await self._responsible(source, contact)
        pipeline = self.config.pipeline(source.pipeline)
        stage = source.stage or pipeline.first_stage.id
        at = _now()
        doc: Document = {
            "contact_id": contact.id,
            "pipeline_id": pipeline.id,
            "stage_id": stage,
            "open": True,
            "is_repeat": d.is_repeat,
            "source_id": source.id,
            "responsible_id": responsible,
            "identities": keys,
            "title": f"{msg.sender.name or (keys[0] if keys else 'Unknown')} — {source.name}",
            "fields": {},
            "meta": msg.meta,
            "origin_intake_id": r.id,
            "created_at": at,
            "stage_entered_at": at,
            "last_activity_at": at,
        }
        if contact.company_id is not None:
            doc["company_id"] = contact.company_id
        entity: LeadDoc | DealDoc
        if d.action is Action.CREATE_LEAD:
            doc["_id"] = stable_id("lead", r.id)
            doc["open_contact"] = contact.id
            entity, created = await rs.create_lead(self.store, doc)
            batch.state.open_lead[contact.id] = entity
        else:
            doc["_id"] = stable_id("deal", r.id)
            doc["auto_open"] = contact.id
            entity, created = await rs.create_deal(self.store, doc)
            batch.state.active_deal[contact.id] = entity
        batch.state.history.add(contact.id)
        if not created and entity.origin_intake_id != r.id:
            return None  # the contact's open lead/deal won the race: attach to it instead
        batch.state.created_by[r.id] = entity
        return self._created(batch, r, d, entity, at)

    def _created(
        self,
        batch: _Batch,
        r: IntakeDoc,
        d: Decision,
        entity: LeadDoc | DealDoc,
        at: datetime,
        *,
        announce: bool = True,
    ) -> Routed:
        """The outcome of a lead/deal creation, with its event (``announce``)."""
        is_deal = isinstance(entity, DealDoc)
        refs: dict[str, str | None] = {"contact_id": entity.contact_id, "message_id": r.id}
        if is_deal:
            etype, ref = "deal.created", "deal_id"
        else:
            etype, ref = ("lead.repeat_created" if entity.is_repeat else "lead.created"), "lead_id"
        data = {
            "pipeline_id": entity.pipeline_id,
            "stage_id": entity.stage_id,
            "source_id": entity.source_id,
            "responsible_id": entity.responsible_id,
            "is_repeat": entity.is_repeat,
        }
        if announce:
            batch.events.append(_event(r.id, etype, at, {**refs, ref: entity.id}, data))
        final = Decision(d.rule, d.action, d.reason, entity.id, entity.is_repeat, created=True)
        kind = TargetKind.DEAL if is_deal else TargetKind.LEAD
        target = Target(kind=kind, id=entity.id, open=entity.open)
        return Routed(r.id, final, target, entity.contact_id, "")

    def _assignment(self, batch: _Batch, out: Routed) -> Document:
        """Who works a conversation that opens or moves to a new target: the target's
        responsible, and the department that sees it (inbox/access.py). Nothing is set
        when the target's responsible is unknown here (the conversation keeps its own)."""
        entity: LeadDoc | DealDoc | ContactDoc | None = None
        tid = out.target.id
        if tid:
            known = [
                *batch.state.created_by.values(),
                *batch.state.open_lead.values(),
                *batch.state.active_deal.values(),
                *batch.state.company_deal.values(),
                *batch.contacts_by_id.values(),
            ]
            entity = next((e for e in known if e.id == tid), None)
        if entity is None and out.contact_id:
            entity = batch.contacts_by_id.get(out.contact_id)
        if entity is None or not entity.responsible_id:
            return {}
        user = self.config.user(entity.responsible_id)
        return {
            "assignee_id": entity.responsible_id,
            "department": user.department if user else None,
        }

    async def _mark_bounced(
        self,
        records: list[IntakeDoc],
        msgs: dict[str, InboundMessage],
        batch: _Batch,
        at: datetime,
    ) -> None:
        """A bounce marks the contact's failing address (``meta.bounced_recipients``)."""
        for r in records:
            listed = msgs[r.id].meta.get("bounced_recipients")
            if not isinstance(listed, str) or not listed:
                continue
            addrs = [a for x in listed.split(",") if (a := normalize_email(x))]
            for contact_id, addr in await rs.mark_failing_addresses(self.store, addrs):
                batch.events.append(
                    events.event(
                        "contact.address_failing",
                        {"contact_id": contact_id, "message_id": r.id},
                        {"address": addr, "channel": r.channel, "account": r.account},
                        key=[r.id, contact_id, addr],
                        at=at,
                    )
                )

    async def _write(
        self,
        batch: _Batch,
        records: list[IntakeDoc],
        msgs: dict[str, InboundMessage],
        keys: dict[str, list[str]],
        routed: list[Routed],
        at: datetime,
        rerun: bool,
    ) -> None:
        by_id = {r.id: r for r in records}
        message_docs: list[Document] = []
        for out in routed:
            r = by_id[out.intake_id]
            msg = msgs[r.id]
            cid = out.conversation_id or conversation_id(
                r.channel, r.account, thread_of(msg, keys[r.id])
            )
            out.conversation_id = cid
            message_docs.append(
                {
                    "_id": r.id,
                    "direction": "in",
                    "channel": r.channel,
                    "account": r.account,
                    "provider_id": r.provider_id,
                    "source_id": r.source_id,
                    "conversation_id": cid,
                    "contact_id": out.contact_id,
                    "target": out.target.model_dump(mode="json"),
                    "sender": msg.sender.model_dump(exclude_none=True),
                    "identities": keys[r.id],
                    "text": msg.text,
                    "attachments": [a.model_dump(exclude_none=True) for a in msg.attachments],
                    "sent_at": msg.sent_at,
                    "received_at": r.received_at,
                    "routed_at": at,
                    "automatic": msg.automatic,
                    "meta": msg.meta,
                    # A comment under a post: the post and the comment it answers.
                    **(
                        {
                            "kind": "comment",
                            "post": msg.post.model_dump(exclude_none=True) if msg.post else None,
                            "parent_id": msg.parent_id,
                        }
                        if msg.kind == "comment"
                        else {}
                    ),
                    "decision": {
                        "rule": out.decision.rule.value,
                        "action": out.decision.action.value,
                        "reason": out.decision.reason,
                        "target_id": out.decision.target_id,
                    },
                }
            )
        inserted = await rs.insert_new(self.store, "messages", message_docs)

        conv_ops: list[UpdateOne] = []
        new_convs: list[tuple[Document, UpdateOne]] = []
        new_keys: dict[str, list[str]] = {}  # contact id → identities it does not hold yet
        deal_ids: list[str] = []
        for out in routed:
            r = by_id[out.intake_id]
            msg = msgs[r.id]
            conv = batch.convs.get(out.conversation_id)
            new_target = not self._steady(conv) or (
                conv is not None and conv.target.id != out.target.id
            )
            refs: dict[str, str | None] = {
                "message_id": r.id,
                "conversation_id": out.conversation_id,
                "contact_id": out.contact_id,
                f"{out.target.kind.value}_id": out.target.id,
            }
            if out.target.kind is TargetKind.DEAL and out.target.id:
                deal_ids.append(out.target.id)
            update: dict[str, Any] = {
                "$setOnInsert": {
                    "channel": r.channel,
                    "account": r.account,
                    "thread": thread_of(msg, keys[r.id]),
                    "status": "open",
                    "created_at": at,
                    "origin_intake_id": r.id,
                },
                "$max": {"last_message_at": r.received_at, "last_inbound_at": r.received_at},
                "$set": {"last_inbound": _last_inbound(msg)},
            }
            if msg.reply_to:
                update["$set"]["reply_to"] = msg.reply_to
            if keys[r.id] and (conv is None or not set(keys[r.id]) <= set(conv.sender_keys)):
                update["$addToSet"] = {"sender_keys": {"$each": keys[r.id]}}
            if r.id in inserted:
                update["$inc"] = {"message_count": 1, "unread": 1}
                if not msg.automatic:  # a customer wrote: a closed or snoozed conversation opens
                    del update["$setOnInsert"]["status"]
                    update["$set"].update(status="open", snoozed_until=None)
            # A re-run of the record that opened the conversation emits the event again
            # (same id), in case the first run died before its events.
            opened = conv is None or conv.origin_intake_id == r.id
            if new_target or opened:
                update["$set"].update(
                    target=out.target.model_dump(mode="json"), contact_id=out.contact_id
                )
                update["$set"].update(self._assignment(batch, out))
                batch.events.append(
                    _event(
                        r.id,
                        "conversation.opened" if opened else "conversation.retargeted",
                        at,
                        refs,
                        {
                            "channel": r.channel,
                            "account": r.account,
                            "target": out.target.model_dump(mode="json"),
                        },
                    )
                )
                batch.convs[out.conversation_id] = ConversationDoc(
                    id=out.conversation_id,
                    channel=r.channel,
                    account=r.account,
                    thread=thread_of(msg, keys[r.id]),
                    contact_id=out.contact_id,
                    target=out.target,
                    sender_keys=sorted({*(conv.sender_keys if conv else []), *keys[r.id]}),
                    origin_intake_id=conv.origin_intake_id if conv else r.id,
                )
            if not update["$set"]:
                del update["$set"]
            upsert = UpdateOne({"_id": out.conversation_id}, update, upsert=True)
            # A conversation not there when the batch was read (nor opened by an earlier
            # record of it) is inserted, the upsert only its fallback (rs.upsert_many).
            if conv is None and (doc := rs.as_inserted(out.conversation_id, update)):
                new_convs.append((doc, upsert))
            else:
                conv_ops.append(upsert)
            if out.contact_id and (extra := self._new_identities(batch, out, conv, keys[r.id])):
                new_keys.setdefault(out.contact_id, []).extend(extra)
            batch.events.append(
                _event(
                    r.id,
                    "message.attached",
                    at,
                    refs,
                    {
                        "channel": r.channel,
                        "rule": out.decision.rule.value,
                        "reason": out.decision.reason,
                        "automatic": msg.automatic,
                    },
                )
            )
        # Keys a contact gains are claimed first (crm_store/identities.py): one owned by
        # another contact stays there (merging contacts is an operator's decision).
        owned = await ident.claim_many(self.store, new_keys)
        contact_ops = [
            UpdateOne({"_id": cid}, ident.add_to_contact(held))
            for cid, ks in new_keys.items()
            if (held := [k for k in dict.fromkeys(ks) if owned.get(k) == cid])
        ]
        await together(
            rs.upsert_many(self.store, "conversations", new_convs, conv_ops),
            rs.bulk_updates(
                self.store, ("contacts", contact_ops), ("deals", rs.touch_ops(deal_ids, at))
            ),
        )
        await self._mark_bounced(records, msgs, batch, at)
        await events.append(self.store, batch.events, maybe_written=rerun)
        # Edits and deletions that overtook these messages (crm_store/pending.py), in the
        # provider's order. Before the records count as routed: a crash in between routes
        # them again, and this applies again (idempotently).
        await updates.apply_pending(self.store, [r.id for r in records])
        await mark_routed(self.store, [r.id for r in records])
