"""The store as a scenario's expectations read it: everything that belongs to the
scenario's people, read back after a step (a scenario's store is small and throw-away)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from automation.scenario.model import Person
from channels.identity import email_key, messenger_key, normalize_email, normalize_phone, phone_key
from crm_store.store import Store

Document = dict[str, Any]


@dataclass
class World:
    """What the store holds after a step."""

    # person → their contact ids (several if they were never merged)
    contacts: dict[str, list[str]] = field(default_factory=dict)
    contact_count: int = 0
    leads: list[Document] = field(default_factory=list)
    deals: list[Document] = field(default_factory=list)
    tasks: list[Document] = field(default_factory=list)
    notifications: list[Document] = field(default_factory=list)
    outbound: list[Document] = field(default_factory=list)
    # contact id → {responsible_id, company_id}; company id → company; the deals' documents
    contact_docs: dict[str, Document] = field(default_factory=dict)
    companies: dict[str, Document] = field(default_factory=dict)
    documents: list[Document] = field(default_factory=list)
    # Whether a user sees a lead/deal in the inbox (inbox/access.py; set by the runner).
    sees: Callable[[str, Document], bool] | None = None

    def contact_of(self, person: str) -> Document | None:
        """The person's (newest) contact."""
        ids = self.contacts.get(person, [])
        return self.contact_docs.get(ids[-1]) if ids else None

    def of(self, person: str, kind: str, pipeline: str | None = None) -> list[Document]:
        """The person's leads or deals, oldest first."""
        ids = set(self.contacts.get(person, []))
        docs = self.leads if kind == "lead" else self.deals
        return [
            d
            for d in docs
            if d.get("contact_id") in ids and (pipeline is None or d.get("pipeline_id") == pipeline)
        ]


def identity_keys(person: Person, messenger_ids: list[tuple[str, str, str]]) -> list[str]:
    keys: list[str] = []
    if person.phone and (p := normalize_phone(person.phone)):
        keys.append(phone_key(p))
    if person.email and (e := normalize_email(person.email)):
        keys.append(email_key(e))
    keys.extend(messenger_key(c, a, u) for c, a, u in messenger_ids)
    return keys


async def read(store: Store, keys: dict[str, list[str]]) -> World:
    w = World()
    by_key: dict[str, str] = {k: person for person, ks in keys.items() for k in ks}
    shown = {
        "identities": 1,
        "merged_into": 1,
        "responsible_id": 1,
        "company_id": 1,
        "fields": 1,
    }
    async for c in store.contacts.find({}, shown):
        if c.get("merged_into"):
            continue
        w.contact_docs[c["_id"]] = c
        w.contact_count += 1
        owners = {by_key[k] for k in c.get("identities") or [] if k in by_key}
        for person in owners:
            w.contacts.setdefault(person, []).append(c["_id"])
    w.leads = [d async for d in store.leads.find({}, sort=[("created_at", 1), ("_id", 1)])]
    w.deals = [d async for d in store.deals.find({}, sort=[("created_at", 1), ("_id", 1)])]
    w.tasks = [d async for d in store["tasks"].find({}, sort=[("created_at", 1), ("_id", 1)])]
    w.notifications = [
        d async for d in store["notifications"].find({}, sort=[("created_at", 1), ("_id", 1)])
    ]
    w.companies = {c["_id"]: c async for c in store["companies"].find({})}
    w.documents = [
        d
        async for d in store["deal_documents"].find(
            {"status": {"$ne": "pending"}}, {"file": 0}, sort=[("created_at", 1), ("_id", 1)]
        )
    ]
    w.outbound = [
        d
        async for d in store.messages.find(
            {"direction": "out"}, sort=[("received_at", 1), ("_id", 1)]
        )
    ]
    return w
