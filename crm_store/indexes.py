"""Every collection's indexes, created idempotently at start (``omniroute db indexes``).

Uniqueness and claims rest on these indexes, never on in-process locks:
- ``intake._id`` is derived from (channel, account, provider message id): a provider retry
  collides on insert;
- ``identities._id`` is the identity key (phone / e-mail / messenger id): one contact per
  key, however many workers see a new sender at once (crm_store/identities.py); it holds
  on a sharded cluster too, which a unique index on ``contacts.identities`` would not
  (docs/scaling.md, crm_store/sharding.py);
- ``leads.open_contact`` (= ``contact_id``) exists only while a lead is open: at most one
  open lead per contact (a partial unique index on (contact_id, open_contact));
- ``deals.auto_open`` likewise guards the deal that "no leads" mode opens for a contact;
- ``events.seq`` is unique: the feed order.
"""

from __future__ import annotations

import contextlib

from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import CollectionInvalid, OperationFailure

EXISTS = {"$exists": True}

INDEXES: dict[str, list[IndexModel]] = {
    "intake": [
        IndexModel([("status", ASCENDING), ("lease_until", ASCENDING)], name="status_lease"),
        # A dead process's pending records (crm_store/process_leases.orphan; hinted).
        IndexModel(
            [("owner", ASCENDING)],
            name="pending_owner",
            partialFilterExpression={"status": "pending"},
        ),
        IndexModel([("received_at", ASCENDING)], name="received_at"),
        # Raw bodies due for dropping (ingest/retention.py): only records still holding one.
        IndexModel([("raw_since", ASCENDING)], name="raw_retention", sparse=True),
    ],
    "contacts": [
        # Display data and a few read paths (the caller lookup); not unique: uniqueness is
        # the identities collection's (``omniroute db migrate`` drops identities_unique).
        IndexModel([("identities", ASCENDING)], name="identities"),
        # The operator's lists (inbox/contacts_api.py): by responsible, newest first.
        IndexModel([("responsible_id", ASCENDING), ("created_at", DESCENDING)], name="list"),
        IndexModel([("company_id", ASCENDING)], name="company"),  # a company's contacts
    ],
    # identity key (_id) → contact_id (crm_store/identities.py); a contact's keys by contact.
    "identities": [IndexModel([("contact_id", ASCENDING)], name="contact")],
    "leads": [
        # (contact_id, …): leads are sharded by contact_id, and a unique index holds on a
        # sharded cluster only when it starts with the shard key (crm_store/sharding.py).
        IndexModel(
            [("contact_id", ASCENDING), ("open_contact", ASCENDING)],
            name="one_open_lead_per_contact",
            unique=True,
            partialFilterExpression={"open_contact": EXISTS},
        ),
        IndexModel([("contact_id", ASCENDING), ("created_at", DESCENDING)], name="contact"),
        IndexModel([("pipeline_id", ASCENDING), ("stage_id", ASCENDING)], name="stage"),
        IndexModel([("responsible_id", ASCENDING), ("created_at", DESCENDING)], name="list"),
    ],
    "deals": [
        IndexModel(
            [("contact_id", ASCENDING), ("auto_open", ASCENDING)],
            name="one_auto_deal_per_contact",
            unique=True,
            partialFilterExpression={"auto_open": EXISTS},
        ),
        IndexModel(
            [("contact_id", ASCENDING), ("open", ASCENDING), ("last_activity_at", DESCENDING)],
            name="contact_open_activity",
        ),
        IndexModel([("pipeline_id", ASCENDING), ("stage_id", ASCENDING)], name="stage"),
        IndexModel([("responsible_id", ASCENDING), ("created_at", DESCENDING)], name="list"),
        # A company's open deals (routing: a contact without a deal of their own).
        IndexModel([("company_id", ASCENDING), ("open", ASCENDING)], name="company"),
    ],
    "conversations": [
        IndexModel([("contact_id", ASCENDING)], name="contact"),
        IndexModel([("target.id", ASCENDING)], name="target"),
        IndexModel([("last_message_at", DESCENDING)], name="last_message_at"),
        # The operator's lists (inbox/conversations_api.py): by department, by assignee.
        IndexModel([("department", ASCENDING), ("last_message_at", DESCENDING)], name="department"),
        IndexModel([("assignee_id", ASCENDING), ("last_message_at", DESCENDING)], name="assignee"),
    ],
    "messages": [
        IndexModel(
            [("conversation_id", ASCENDING), ("received_at", ASCENDING)], name="conversation"
        ),
        IndexModel([("contact_id", ASCENDING), ("received_at", ASCENDING)], name="contact"),
        # The outbox: outbound messages waiting to be sent (the field exists only then).
        IndexModel(
            [("send_due_at", ASCENDING)],
            name="outbox_due",
            partialFilterExpression={"send_due_at": EXISTS},
        ),
        # Receipts by time (Messenger's watermarks, crm_store/updates.py): our outbound
        # messages to one recipient, by when they were sent (inbound ones have no recipient).
        IndexModel(
            [
                ("channel", ASCENDING),
                ("account", ASCENDING),
                ("recipient", ASCENDING),
                ("sent_at", ASCENDING),
            ],
            name="recipient_sent",
            partialFilterExpression={"recipient": EXISTS},
        ),
        # Delivery receipts find our outbound message by the provider's id.
        IndexModel(
            [("channel", ASCENDING), ("account", ASCENDING), ("provider_id", ASCENDING)],
            name="provider_id",
        ),
    ],
    "events": [
        IndexModel([("seq", ASCENDING)], name="seq_unique", unique=True),
        # A webchat visitor's feed: one conversation's events in order (inbox/webchat_hub.py).
        IndexModel(
            [("refs.conversation_id", ASCENDING), ("seq", ASCENDING)], name="conversation_seq"
        ),
    ],
    "api_tokens": [
        IndexModel([("token_id", ASCENDING)], name="token_id", unique=True),
        IndexModel([("user_id", ASCENDING)], name="user"),
    ],
    "subscriptions": [
        IndexModel([("due_at", ASCENDING)], name="due"),
    ],
    "deliveries": [
        IndexModel([("subscription_id", ASCENDING), ("seq", ASCENDING)], name="subscription_seq"),
        IndexModel([("status", ASCENDING), ("subscription_id", ASCENDING)], name="status"),
    ],
    "counters": [],
    "users": [],
    # --- e-mail
    "mailboxes": [],
    "leases": [],
    "files": [],
    "file_chunks": [IndexModel([("file_id", ASCENDING), ("n", ASCENDING)], name="file_n")],
    # --- telephony
    # One document per call; _id = hash(channel, account, provider call id). The call of
    # a message, and the calls of a number, newest first.
    "calls": [
        IndexModel([("message_id", ASCENDING)], name="message"),
        IndexModel([("customer", ASCENDING), ("started_at", DESCENDING)], name="customer"),
        IndexModel([("started_at", DESCENDING)], name="started_at"),  # the call log
        # Calls whose reports wait for their announcement (ingest/call_announcer.py).
        IndexModel(
            [("announce_due", ASCENDING)],
            name="announce_due",
            partialFilterExpression={"announce_due": True},
        ),
    ],
    # Claims of partly signed call reports (Zadarma; crm_store/calls.apply_signed): _id =
    # hash(channel, account, claim), so a replay collides on insert; reports waiting for
    # their call's opening report are found by call id; forgotten after 3 days (longer
    # than any freshness window).
    "call_claims": [
        IndexModel(
            [("channel", ASCENDING), ("account", ASCENDING), ("call_id", ASCENDING)],
            name="call",
        ),
        IndexModel([("at", ASCENDING)], name="ttl", expireAfterSeconds=3 * 24 * 3600),
    ],
    # --- automation
    "tasks": [
        IndexModel(
            [("assignee_id", ASCENDING), ("status", ASCENDING), ("deadline", ASCENDING)],
            name="assignee",
        ),
        IndexModel([("watchers", ASCENDING), ("status", ASCENDING)], name="watchers"),
        IndexModel([("entity_id", ASCENDING), ("created_at", ASCENDING)], name="entity"),
        IndexModel([("contact_id", ASCENDING)], name="contact"),  # a contact merge moves them
        # Reminders before a deadline still to send (crm_store/tasks.py ``REMIND_DUE``).
        IndexModel([("status", ASCENDING), ("remind_due_at", ASCENDING)], name="reminders_due"),
    ],
    "notifications": [
        IndexModel([("user_id", ASCENDING), ("created_at", DESCENDING)], name="user"),
    ],
    # Due timers are claimed by (state, due_at), orphaned ones by (state, lease_until); an
    # entity's are cancelled by entity_id when it moves.
    "timers": [
        IndexModel([("state", ASCENDING), ("due_at", ASCENDING)], name="due"),
        IndexModel([("state", ASCENDING), ("lease_until", ASCENDING)], name="lease"),
        IndexModel([("entity_id", ASCENDING), ("state", ASCENDING)], name="entity"),
    ],
    "automation_actions": [],
    "automation_cursors": [],
    # Companies (crm_store/companies.py): one per INN by _id; found by an INN set by a
    # patch, and by responsible (department visibility).
    "companies": [
        IndexModel([("inn", ASCENDING)], name="inn"),
        IndexModel([("responsible_id", ASCENDING)], name="responsible"),
    ],
    # Edits, deletions and receipts that overtook their message (crm_store/pending.py):
    # found by the message they wait for; dropped at expires_at if it never came.
    "pending_updates": [
        IndexModel([("key", ASCENDING)], name="key"),
        IndexModel([("expires_at", ASCENDING)], name="expires", expireAfterSeconds=0),
    ],
    # Mails without a Message-ID, by mailbox + UIDVALIDITY + UID (crm_store/mailboxes.py).
    "mail_uids": [],
    # The file-link signing key when OMNIROUTE_FILE_LINK_KEY is unset (crm_store/files.py).
    "service_keys": [],
    # Webchat visitors (crm_store/webchat.py): by _id, the visitor id.
    "webchat_visitors": [],
    # Documents of deals (crm_store/paperwork.py): one record per (deal, type, version);
    # the registry's searches.
    "deal_documents": [
        IndexModel(
            [("deal_id", ASCENDING), ("type", ASCENDING), ("version", ASCENDING)],
            name="one_version",
            unique=True,
        ),
        IndexModel([("contact_id", ASCENDING), ("created_at", DESCENDING)], name="contact"),
        IndexModel([("company_id", ASCENDING), ("created_at", DESCENDING)], name="company"),
        IndexModel([("type", ASCENDING), ("number", ASCENDING)], name="number"),
        IndexModel([("created_at", DESCENDING)], name="created"),
    ],
    # Live presence (crm_store/presence.py): operators online by user, a conversation's
    # visitor sockets and operator typing; readers compare `until` with now, the TTL index
    # only clears dead rows (about once a minute).
    "presence": [
        IndexModel([("kind", ASCENDING), ("user", ASCENDING), ("until", ASCENDING)], name="user"),
        IndexModel(
            [("conversation_id", ASCENDING), ("kind", ASCENDING), ("until", ASCENDING)],
            name="conversation",
        ),
        IndexModel([("until", ASCENDING)], name="ttl", expireAfterSeconds=60),
    ],
}

# Reports (crm_store/reports/, docs/reports.md): each reads its facts by a time range.
REPORT_INDEXES: dict[str, list[IndexModel]] = {
    "messages": [
        IndexModel([("direction", ASCENDING), ("received_at", ASCENDING)], name="report_in")
    ],
    "conversations": [IndexModel([("created_at", ASCENDING)], name="report_created")],
    "leads": [IndexModel([("created_at", ASCENDING)], name="report_created")],
    "deals": [
        IndexModel([("created_at", ASCENDING)], name="report_created"),
        IndexModel([("converted_from", ASCENDING)], name="report_converted", sparse=True),
        IndexModel([("open", ASCENDING), ("last_activity_at", ASCENDING)], name="report_idle"),
    ],
    "tasks": [IndexModel([("deadline", ASCENDING)], name="report_deadline")],
    "events": [
        IndexModel([("type", ASCENDING), ("occurred_at", ASCENDING)], name="report_type_at"),
        # The entity rollups recompute a lead's / deal's stage moves from its events.
        IndexModel([("refs.lead_id", ASCENDING), ("seq", ASCENDING)], name="report_lead_seq"),
        IndexModel([("refs.deal_id", ASCENDING), ("seq", ASCENDING)], name="report_deal_seq"),
    ],
    "survey_answers": [
        IndexModel([("answered_at", ASCENDING), ("department", ASCENDING)], name="report_answered"),
        IndexModel([("sent_at", ASCENDING), ("department", ASCENDING)], name="report_sent"),
    ],
    # The rollups (crm_store/reports/rollup.py): read by day / episode start, rewritten
    # per conversation.
    "report_conv_days": [
        IndexModel([("day", ASCENDING)], name="day"),
        IndexModel([("conversation_id", ASCENDING)], name="conversation"),
    ],
    "report_episodes": [
        IndexModel([("start", ASCENDING)], name="start"),
        IndexModel([("conversation_id", ASCENDING)], name="conversation"),
    ],
    # Conversations, leads and deals by kind and creation (volume, funnel).
    "report_entities": [
        IndexModel([("kind", ASCENDING), ("created_at", ASCENDING)], name="kind_created"),
        # Open deals by last activity (the idle days; overdue's boundary days).
        IndexModel([("kind", ASCENDING), ("idle_at", ASCENDING)], name="kind_idle"),
    ],
    # report_days is read by _id (the local day); its marks by whether they are dirty.
    "report_day_marks": [IndexModel([("dirty", ASCENDING)], name="dirty")],
    # The idle deals' days, read by their first instant (overdue's forgotten deals).
    "report_idle_days": [IndexModel([("start", ASCENDING)], name="start")],
    "report_idle_marks": [IndexModel([("dirty", ASCENDING)], name="dirty")],
}
for _name, _models in REPORT_INDEXES.items():
    INDEXES.setdefault(_name, []).extend(_models)


# Indexes an earlier version created and nothing reads any more, dropped at start
# (``ensure_indexes``) and by ``omniroute db migrate``: every index costs the embedded
# server ~0.15 ms a document inserted and ~0.2 ms a document updated (docs/benchmarks.md).
# ``events.type_seq``: the feed reads by ``seq`` alone and filters types as it reads
# (crm_store/feed.py); reports read by (type, occurred_at). ``tasks.reminders``: the
# reminder pass reads ``reminders_due`` (crm_store/tasks.py ``REMIND_DUE``).
RETIRED_INDEXES: dict[str, frozenset[str]] = {
    "events": frozenset({"type_seq"}),
    "tasks": frozenset({"reminders"}),
}

# An index of the same key pattern exists under another name or with other options.
INDEX_CONFLICT = frozenset({85, 86})


async def _create(
    db: AsyncDatabase[dict[str, object]], name: str, models: list[IndexModel]
) -> list[str]:
    """Create a collection's indexes; one whose key pattern an older index holds with other
    options (a store not yet migrated: ``omniroute db migrate``) is skipped, not fatal."""
    try:
        return await db[name].create_indexes(models)
    except OperationFailure as exc:
        if exc.code not in INDEX_CONFLICT:
            raise
    made: list[str] = []
    for model in models:
        with contextlib.suppress(OperationFailure):
            made += await db[name].create_indexes([model])
    return made


async def ensure_indexes(db: AsyncDatabase[dict[str, object]]) -> dict[str, list[str]]:
    """Create every collection and index that is missing, drop the retired ones; return
    the index names created."""
    existing = set(await db.list_collection_names())
    created: dict[str, list[str]] = {}
    for name, models in INDEXES.items():
        if name not in existing:
            # Another process may create it at the same moment; both outcomes are fine.
            with contextlib.suppress(CollectionInvalid, OperationFailure):
                await db.create_collection(name)
        created[name] = await _create(db, name, models) if models else []
    for name, retired in RETIRED_INDEXES.items():
        if name in existing:
            for index in sorted(retired & set(await db[name].index_information())):
                with contextlib.suppress(OperationFailure):  # another process dropped it
                    await db[name].drop_index(index)
    # The event sequence counter exists before the first append: concurrent first
    # upserts of a missing document are where servers differ.
    await db["counters"].update_one({"_id": "events"}, {"$setOnInsert": {"value": 0}}, upsert=True)
    return created
