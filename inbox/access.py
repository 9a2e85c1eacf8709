"""Who may see and do what: the one place every endpoint and every WebSocket event asks.

Visibility follows departments (inbox/auth.py computes the departments a user sees):

- a **lead, deal or contact** belongs to the department of its responsible user;
- a **company** is visible when its responsible is in a department the caller sees, or
  when one of its contacts or deals is visible (the manager of a firm's deal sees the
  firm, whoever is responsible for the firm itself);
- a **conversation** belongs to the department stored on it (``department``): set by
  routing from its target's responsible and by every assignment; a conversation nobody
  was ever responsible for belongs to no department, so only an admin sees it;
- an **event** is visible when any entity it names is visible (crm_store/feed.py);
- a **file** is readable by the user who uploaded it and by whoever sees a conversation
  with a message carrying it (an e-mail's attachment, or a reply it was attached to); an
  admin reads every file. A reply may attach only a file its author can read, so a file
  id learnt elsewhere gives nothing; the same rule guards ``GET /api/v1/files/{id}``,
  and a token-free link is signed only for such a caller (inbox/file_links.py);
- a **document** of a deal (its DOCX, PDF and signed scan) is visible iff its deal is.

Actions by role: every role with access reads and works what it sees; **export** and
**delete** need a director or an admin; settings (users, tokens, subscriptions) need an
admin. Something the caller may not see answers 404, never 403, so ids do not leak.
"""

from __future__ import annotations

from config.models import AppConfig, Role
from crm_store.store import Document, Store
from inbox.auth import ApiError, Principal


def users_in(config: AppConfig, departments: frozenset[str]) -> list[str]:
    return [u.id for u in config.users.users if u.department in departments]


def department_of(config: AppConfig, user_id: str | None) -> str | None:
    user = config.user(user_id) if user_id else None
    return user.department if user else None


def entity_filter(config: AppConfig, principal: Principal) -> Document:
    """The store filter a lead/deal/contact query adds for this caller."""
    if principal.departments is None:
        return {}
    return {"responsible_id": {"$in": users_in(config, principal.departments)}}


def conversation_filter(principal: Principal) -> Document:
    if principal.departments is None:
        return {}
    return {"department": {"$in": sorted(principal.departments)}}


def report_departments(principal: Principal) -> frozenset[str] | None:
    """The departments whose facts a report shows this caller (None: every department,
    and facts of no department too): a manager their department, a director theirs and
    those below, an admin all. Every report asks this, and only this
    (crm_store/reports/)."""
    return principal.departments


def sees_entity(config: AppConfig, principal: Principal, doc: Document | None) -> bool:
    if doc is None:
        return False
    if principal.departments is None:
        return True
    return principal.sees_department(department_of(config, doc.get("responsible_id")))


async def company_filter(store: Store, config: AppConfig, principal: Principal) -> Document:
    """The store filter a company query adds for this caller (the company rule above)."""
    if principal.departments is None:
        return {}
    users = users_in(config, principal.departments)
    linked: set[str] = set()
    for coll in (store.contacts, store.deals):
        query = {"responsible_id": {"$in": users}, "company_id": {"$type": "string"}}
        linked |= {d["company_id"] async for d in coll.find(query, {"company_id": 1})}
    return {"$or": [{"responsible_id": {"$in": users}}, {"_id": {"$in": sorted(linked)}}]}


async def sees_company(
    store: Store, config: AppConfig, principal: Principal, doc: Document | None
) -> bool:
    if doc is None:
        return False
    if sees_entity(config, principal, doc):
        return True
    users = users_in(config, principal.departments or frozenset())
    for coll in (store.contacts, store.deals):
        query = {"company_id": doc["_id"], "responsible_id": {"$in": users}}
        if await coll.find_one(query, {"_id": 1}) is not None:
            return True
    return False


def sees_conversation(principal: Principal, doc: Document | None) -> bool:
    if doc is None:
        return False
    return principal.sees_department(doc.get("department"))


# A file names at most this many messages that may grant access (more are not looked at).
MAX_FILE_MESSAGES = 20


def file_message_ids(meta: Document) -> list[str]:
    """The messages carrying a stored file: the e-mail it came in, the replies it went
    out with."""
    origin = meta.get("origin") or {}
    if not isinstance(origin, dict):
        return []
    replies = origin.get("message_ids") or []
    ids = [origin.get("intake_id"), *(replies if isinstance(replies, list) else [])]
    return [m for m in ids if isinstance(m, str)][:MAX_FILE_MESSAGES]


def owns_file(principal: Principal, meta: Document) -> bool:
    """The caller may read the file without looking further: an admin, or its uploader."""
    origin = meta.get("origin") or {}
    uploader = origin.get("uploaded_by") if isinstance(origin, dict) else None
    return principal.departments is None or uploader == principal.user.id


async def may_read_file(store: Store, principal: Principal, meta: Document | None) -> bool:
    """The file rule (module doc): its uploader, an admin, or whoever sees a conversation
    with a message carrying it."""
    if meta is None:
        return False
    if owns_file(principal, meta):
        return True
    message_ids = file_message_ids(meta)
    if not message_ids:
        return False
    conv_ids = [
        m["conversation_id"]
        async for m in store.messages.find({"_id": {"$in": message_ids}}, {"conversation_id": 1})
        if isinstance(m.get("conversation_id"), str)
    ]
    if not conv_ids:
        return False
    async for conv in store.conversations.find({"_id": {"$in": conv_ids}}, {"department": 1}):
        if sees_conversation(principal, conv):
            return True
    return False


async def visible_document(
    store: Store, config: AppConfig, principal: Principal, document_id: str
) -> Document | None:
    """A document of a deal (crm_store/paperwork.py) is visible iff its deal is."""
    doc: Document | None = await store["deal_documents"].find_one({"_id": document_id})
    if doc is None:
        return None
    deal = await store.deals.find_one({"_id": doc.get("deal_id")}, {"responsible_id": 1})
    return doc if sees_entity(config, principal, deal) else None


async def document_filter(store: Store, config: AppConfig, principal: Principal) -> Document:
    """The store filter a document query adds for this caller: the deals they see."""
    if principal.departments is None:
        return {}
    deals = store.deals.find(entity_filter(config, principal), {"_id": 1})
    return {"deal_id": {"$in": [d["_id"] async for d in deals]}}


def may_export(principal: Principal) -> bool:
    return principal.user.role in (Role.DIRECTOR, Role.ADMIN)


def require_export(principal: Principal) -> None:
    if not may_export(principal):
        raise ApiError(403, "forbidden", "only a director or an admin may export")


def may_delete(principal: Principal) -> bool:
    return principal.user.role in (Role.DIRECTOR, Role.ADMIN)


def require_delete(principal: Principal) -> None:
    if not may_delete(principal):
        raise ApiError(403, "forbidden", "only a director or an admin may delete")


def require_assignable(config: AppConfig, principal: Principal, user_id: str) -> str:
    """The department of ``user_id`` if the caller may hand work to them (an active user
    in a department the caller sees)."""
    user = config.user(user_id)
    if user is None or not user.active or user.role is Role.NO_ACCESS:
        raise ApiError(422, "invalid_assignee", f"{user_id!r} is not an active user with access")
    if not principal.sees_department(user.department):
        raise ApiError(403, "forbidden", f"{user_id} works in a department you do not see")
    return user.department
