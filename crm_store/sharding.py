"""The shard key of every collection (docs/scaling.md), and MongoDB's rule for which
unique indexes a sharded cluster enforces — checked against crm_store/indexes.py by
tests/test_shard_keys.py.

MongoDB's rule (manual, "Shard Key Indexes" → unique indexes; "Maintain Uniqueness in
Sharded Clusters"): each shard checks only its own documents, so a unique index holds
across the cluster only when every document with one index value lives on one shard:

- on a **ranged** shard key, a unique index holds when the shard key is a prefix of it
  (the index on the shard key itself, or a compound index starting with all the shard
  key's fields, in order);
- a **hashed** shard key cannot back a unique constraint; the only unique index of a
  hashed-sharded collection we rely on is ``_id``'s;
- the ``_id`` index is unique on every shard, but across the cluster only when ``_id`` is
  the shard key (``{_id: 1}``, or ``{_id: "hashed"}``: one ``_id``, one hash, one chunk).
  With any other shard key two shards may hold the same ``_id``; a collection sharded so
  must say why the code never needs cluster-wide ``_id`` uniqueness (``id_per_shard``);
- an unsharded collection lives on its database's primary shard: every index holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pymongo import IndexModel

HASHED = "hashed"


@dataclass(frozen=True, slots=True)
class ShardKey:
    """``key``: the shard key's fields in order, each ``1`` (ranged) or ``"hashed"``;
    None: the collection stays unsharded on the primary shard. ``reason``: why."""

    key: tuple[tuple[str, int | str], ...] | None
    reason: str
    # When _id is not the shard key: why the code never relies on _id being unique across
    # shards (a derived _id that always comes with the same shard key value …).
    id_per_shard: str | None = None

    @property
    def hashed(self) -> bool:
        return self.key is not None and any(v == HASHED for _, v in self.key)

    @property
    def fields(self) -> list[str]:
        return [f for f, _ in self.key or ()]


def _by_id(reason: str) -> ShardKey:
    return ShardKey((("_id", HASHED),), reason)


def _unsharded(reason: str) -> ShardKey:
    return ShardKey(None, reason)


_CONTACT_ID = (
    "_id derives from the intake record (stable_id('lead'|'deal', intake id)); only a "
    "re-run of that record inserts it again, and the re-run reads the contact's leads and "
    "deals first (load_contact_state by contact_id, created_by): it finds the one it wrote — "
    "also after a merge, which moves them to the winner — and inserts nothing"
)

SHARD_KEYS: dict[str, ShardKey] = {
    # --- the message path: every message writes these; spread evenly by a hashed _id
    "intake": _by_id(
        "_id = hash(channel, account, provider message id): a provider retry collides on "
        "_id on the one shard that id hashes to; inserts spread evenly. The recovery "
        "sweep's (status, lease_until) query is scatter-gather: background only"
    ),
    "identities": _by_id(
        "_id = the identity key: identity uniqueness is _id uniqueness, which holds on any "
        "cluster (crm_store/identities.py); routing's lookup is one $in on _id"
    ),
    "contacts": _by_id(
        "read by _id (routing, after identities); the operator's lists by responsible are "
        "scatter-gather, paged"
    ),
    "leads": ShardKey(
        (("contact_id", 1),),
        "routing reads a contact's leads by contact_id (targeted); one open lead per "
        "contact is the unique (contact_id, open_contact) index, which starts with the key",
        id_per_shard=_CONTACT_ID,
    ),
    "deals": ShardKey(
        (("contact_id", 1),),
        "as leads: a contact's deals by contact_id; one routing-opened deal per contact is "
        "the unique (contact_id, auto_open) index",
        id_per_shard=_CONTACT_ID,
    ),
    "conversations": _by_id(
        "_id = hash(channel, account, thread): routing upserts by _id; lists by department "
        "or assignee are scatter-gather, paged"
    ),
    "messages": _by_id(
        "_id = the intake id (inbound) or the send's id: a re-run's insert collides on _id. "
        "Not conversation_id: a re-run may file a message under another conversation (a "
        "referenced mail stored in between) and would then write it twice"
    ),
    "calls": _by_id("_id = hash(channel, account, call id): reports converge by _id upserts"),
    "call_claims": _by_id("_id = hash(channel, account, claim): a replay collides on _id"),
    "files": _by_id("file metadata by _id"),
    "file_chunks": _by_id("chunk _id derives from (file id, n), written by upsert"),
    "tasks": _by_id("tasks by _id; an assignee's list is scatter-gather"),
    "notifications": _by_id("per user, by _id; a user's list is scatter-gather"),
    "timers": _by_id("claimed by (state, due_at) with a lease: scatter-gather, background"),
    "deliveries": _by_id("webhook deliveries by _id; claimed by status, background"),
    "automation_actions": _by_id(
        "the ledger of non-idempotent actions: _id = (rule, entity, occurrence) collides"
    ),
    "pending_updates": _by_id("edits that overtook their message, by key; TTL"),
    "mail_uids": _by_id("_id = mailbox + UIDVALIDITY + UID"),
    "webchat_visitors": _by_id("_id = the visitor id"),
    "companies": _by_id("one per INN by _id; few writes"),
    # --- unsharded: a total order, or small and rarely written
    "events": _unsharded(
        "the feed is one total order: seq (unique) comes from one counter, and the _id "
        "(derived from what the event is about) must collide for a re-announcement to be "
        "skipped — both unique, so no shard key can hold both. Appends are one insert_many "
        "per routing batch; one shard carries them (see docs/scaling.md for the ceiling)"
    ),
    "counters": _unsharded("a handful of documents (the event sequence, round-robin lines)"),
    "api_tokens": _unsharded("one per operator token; unique token_id"),
    "users": _unsharded("operators: tens to hundreds"),
    "subscriptions": _unsharded("webhook subscriptions: a few"),
    "mailboxes": _unsharded("one per mailbox folder"),
    "leases": _unsharded("one per leased resource (mailboxes)"),
    "service_keys": _unsharded("one signing key"),
    "automation_cursors": _unsharded("one per automation worker"),
    "presence": _unsharded("live rows only (TTL): about one per open socket"),
    "deal_documents": _unsharded(
        "a deal's paperwork: a few documents per deal, written by operators. Its unique "
        "(deal_id, type, version) index would hold under {deal_id: 1} once _id is shown to "
        "determine deal_id"
    ),
    "survey_answers": _unsharded("one per survey sent: small"),
    "report_conv_days": _by_id("_id = conversation|local day: rewritten by _id"),
    "report_episodes": _by_id("_id = conversation|episode number: rewritten by _id"),
    "report_entities": _by_id("_id = kind|entity id: rewritten by _id"),
    "report_days": _unsharded("one document per local day: the day totals of the reports"),
    "report_day_marks": _unsharded("one document per local day: whether its totals are due"),
    "report_idle_days": _unsharded("one document per local day: the open deals idle since"),
    "report_idle_marks": _unsharded("one document per local day: whether its idle deals are due"),
    "report_rollup_state": _unsharded("one document: whether the report rollups are ready"),
}


def _fields(model: IndexModel) -> list[str]:
    return list(model.document["key"])


def unique_holds(shard: ShardKey, fields: list[str]) -> bool:
    """Whether a unique index on ``fields`` holds across the cluster (module doc)."""
    if shard.key is None:
        return True
    if fields == ["_id"]:
        return shard.fields == ["_id"]
    if shard.hashed:
        return False
    return fields[: len(shard.fields)] == shard.fields


def problems(
    indexes: Mapping[str, list[IndexModel]], keys: Mapping[str, ShardKey] = SHARD_KEYS
) -> list[str]:
    """Every way ``indexes`` break under ``keys``: an undeclared collection, a unique index
    that would not hold, an ``_id`` relied on across shards without a reason."""
    out: list[str] = []
    for coll, models in indexes.items():
        shard = keys.get(coll)
        if shard is None:
            out.append(f"{coll}: no shard key declared (crm_store/sharding.py SHARD_KEYS)")
            continue
        if not shard.reason.strip():
            out.append(f"{coll}: the shard key has no reason")
        per_shard = shard.key is not None and not unique_holds(shard, ["_id"])
        if per_shard and not (shard.id_per_shard or "").strip():
            out.append(
                f"{coll}: sharded by {shard.fields}, so _id is unique per shard only; "
                "say why that suffices (id_per_shard) or shard by _id"
            )
        for model in models:
            doc = model.document
            if doc.get("unique") and not unique_holds(shard, _fields(model)):
                out.append(
                    f"{coll}.{doc['name']}: unique on {_fields(model)} cannot hold when "
                    f"sharded by {dict(shard.key or ())} — a unique index must start with "
                    "a ranged shard key"
                )
    return out
