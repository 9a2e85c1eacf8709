"""What the telephony tests share: reading calls, events and the routing outcome back,
known contacts made through the API channel, API tokens."""

from __future__ import annotations

from typing import Any

from channels.calls import CallRecord
from crm_store import calls as call_store
from crm_store import tokens
from crm_store.calls import call_doc_id
from crm_store.event_catalogue import EVENT_TYPES, Envelope
from crm_store.feed import envelope
from tests.helpers import wait_for
from tests.service import InProcess, api_body

# Fields of a call document that depend on when reports arrived, not on what they said.
BOOKKEEPING = ("_id", "first_seen_at", "last_seen_at", "reports")


async def one(coll: Any, query: dict[str, Any]) -> dict[str, Any]:
    docs: list[dict[str, Any]] = [d async for d in coll.find(query)]
    assert len(docs) == 1, f"expected one document for {query}, found {len(docs)}: {docs}"
    return docs[0]


async def call_of(svc: InProcess, channel: str, account: str, call_id: str) -> CallRecord:
    await announced(svc)
    doc = await svc.store["calls"].find_one({"_id": call_doc_id(channel, account, call_id)})
    assert doc is not None, f"no call {channel}/{account}/{call_id}"
    return CallRecord.model_validate(doc)


def converged(rec: CallRecord) -> dict[str, Any]:
    """What must be equal for two calls that got the same reports in another order: every
    field of the call except its identity."""
    return rec.model_dump(exclude={"id", "call_id", "message_id"})


async def announced(svc: InProcess) -> None:
    """Wait until the call announcer has announced every call report applied so far (the
    webhook answers before: crm_store/calls.py)."""

    async def none_due() -> bool:
        return not await call_store.due_calls(svc.store, 1)

    await wait_for(none_due, timeout=20, message="call reports still waiting for announcement")


async def events_of(svc: InProcess, type_: str) -> list[dict[str, Any]]:
    await announced(svc)
    return [e async for e in svc.store.events.find({"type": type_}).sort("seq", 1)]


async def nothing_stored(svc: InProcess) -> None:
    for name in ("intake", "messages", "leads", "contacts", "calls"):
        assert await svc.store[name].count_documents({}) == 0, f"{name} is not empty"
    assert await svc.store.events.count_documents({}) == 0


async def known_contact(
    svc: InProcess, phone: str, name: str = "Иван Петров", external_id: str = "form-1"
) -> dict[str, Any]:
    """A contact with an open lead, made by a site form with this phone; the lead."""
    status, body = await svc.client.post_api(api_body(external_id, phone=phone, name=name))
    assert status == 200, body
    await svc.routed()
    [mid] = body["accepted"]
    msg = await one(svc.store.messages, {"_id": mid})
    lead = await one(svc.store.leads, {"_id": msg["target"]["id"]})
    return lead


async def message_of(svc: InProcess, rec: CallRecord) -> dict[str, Any]:
    """The routed message of a call."""
    return await one(svc.store.messages, {"_id": rec.message_id})


async def bearer(svc: InProcess, user_id: str) -> dict[str, str]:
    token, _ = await tokens.issue(svc.store, user_id)
    return {"Authorization": f"Bearer {token}"}


async def call_events_match_the_catalogue(svc: InProcess) -> int:
    """Every ``call.*`` event stored fits its documented schema exactly; how many."""
    n = 0
    async for e in svc.store.events.find({"type": {"$regex": "^call[.]"}}):
        model, _ = EVENT_TYPES[e["type"]]
        Envelope.model_validate(envelope(e))
        model.model_validate(e["data"])
        assert set(e["data"]) == {f.alias or k for k, f in model.model_fields.items()}
        n += 1
    return n
