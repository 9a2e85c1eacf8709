"""The RBAC matrix: every /api/v1 endpoint × every role × own / other department → the
expected status, and zero leaks.

The furniture seed's people: Anna, a sales manager (owns the sales data below); Olga, a
wholesale manager (a department *below* sales: she sees only wholesale); Ivan, the sales
director (sales and everything below it); Sergey, the admin; Elena, no access; and a
caller without a token. Every endpoint the app declares must have a row here — a new
endpoint without one fails :func:`test_every_endpoint_is_in_the_matrix`.

Zero leaks: no answer to Olga contains an id of the sales data, and no answer to Anna an
id of the wholesale data — in lists, in errors, anywhere in the body.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from automation.paperwork import make
from crm_store import conversations as convs
from crm_store import entities, files, notifications, subscriptions, tasks, tokens
from crm_store.documents import stable_id
from inbox.api import OPERATIONS
from tests.fakes.integration import FakeIntegration
from tests.service import InProcess, api_body, config_with, in_process
from tests.test_api_channel_replies import site
from tests.test_webchat_api import send as visitor_send
from tests.test_webchat_api import session as visitor_session

ANNA, OLGA, IVAN, ADMIN, ELENA, ANON = (
    "anna.smirnova",
    "olga.ivanova",
    "ivan.petrov",
    "sergey.volkov",
    "elena.orlova",
    "anonymous",
)
ROLES = (ANON, ELENA, OLGA, ANNA, IVAN, ADMIN)  # refused callers first: writes change state


@dataclass
class World:
    """The seeded data: a sales set (Anna's) and a wholesale set (Olga's)."""

    ids: dict[str, str] = field(default_factory=dict)
    sales: set[str] = field(default_factory=set)
    wholesale: set[str] = field(default_factory=set)
    tokens: dict[str, str] = field(default_factory=dict)


# What each role may do with an endpoint ("policy"), and so the status it gets:
#   public  — no token needed: 2xx for everyone;
#   mine    — the caller's own things or a filtered list: 2xx for every role with access;
#   sales   — names a sales thing: 2xx for Anna, Ivan, admin; 404 for Olga (not visible);
#   admin   — settings: 2xx for the admin only, 403 for the others;
#   export  — export/delete: 2xx for Ivan and the admin, 403 for the managers.
# Elena (no access) gets 403 and an anonymous caller 401 everywhere but public.
EXPECTED: dict[str, dict[str, int | str]] = {
    "public": {ANON: "2xx", ELENA: "2xx", OLGA: "2xx", ANNA: "2xx", IVAN: "2xx", ADMIN: "2xx"},
    "mine": {ANON: 401, ELENA: 403, OLGA: "2xx", ANNA: "2xx", IVAN: "2xx", ADMIN: "2xx"},
    "sales": {ANON: 401, ELENA: 403, OLGA: 404, ANNA: "2xx", IVAN: "2xx", ADMIN: "2xx"},
    "admin": {ANON: 401, ELENA: 403, OLGA: 403, ANNA: 403, IVAN: 403, ADMIN: "2xx"},
    "export": {ANON: 401, ELENA: 403, OLGA: 403, ANNA: 403, IVAN: "2xx", ADMIN: "2xx"},
    # The caller's own (a notification): nobody else's, not even the admin's.
    "own": {ANON: 401, ELENA: 403, OLGA: 404, ANNA: "2xx", IVAN: 404, ADMIN: 404},
    # The WebSocket, called without the upgrade: authenticated, then 426.
    "ws": {ANON: 401, ELENA: 403, OLGA: 426, ANNA: 426, IVAN: 426, ADMIN: 426},
}

Body = Callable[[World, str], Any]


@dataclass(frozen=True)
class Row:
    policy: str
    path: str  # the declared path with {placeholders} filled from World.ids
    body: Body | None = None
    # Statuses that count as "allowed" for this endpoint besides 2xx (a click-to-call
    # without a PBX account is 404/422 for everyone allowed to try).
    allowed: frozenset[int] = frozenset()


def _json(value: Any) -> Body:
    return lambda _w, _who: value


NOW_PLUS = "2099-01-01T00:00:00+00:00"

MATRIX: dict[tuple[str, str], Row] = {
    ("GET", "/api/v1/openapi.json"): Row("public", "/api/v1/openapi.json"),
    # conversations
    ("GET", "/api/v1/conversations"): Row("mine", "/api/v1/conversations"),
    ("GET", "/api/v1/conversations/counts"): Row("mine", "/api/v1/conversations/counts"),
    ("GET", "/api/v1/conversations/{id}"): Row("sales", "/api/v1/conversations/{conv}"),
    ("POST", "/api/v1/conversations/{id}/assign"): Row(
        "sales", "/api/v1/conversations/{conv}/assign", _json({"user_id": ANNA})
    ),
    ("POST", "/api/v1/conversations/{id}/take"): Row("sales", "/api/v1/conversations/{conv}/take"),
    ("POST", "/api/v1/conversations/{id}/unassign"): Row(
        "sales", "/api/v1/conversations/{conv}/unassign"
    ),
    ("POST", "/api/v1/conversations/{id}/close"): Row(
        "sales", "/api/v1/conversations/{conv}/close"
    ),
    ("POST", "/api/v1/conversations/{id}/reopen"): Row(
        "sales", "/api/v1/conversations/{conv}/reopen"
    ),
    ("POST", "/api/v1/conversations/{id}/snooze"): Row(
        "sales", "/api/v1/conversations/{conv}/snooze", _json({"until": NOW_PLUS})
    ),
    # The website live chat's operator side: operator typing on any visible conversation
    # (0 visitors told on a non-webchat one); the visitor of Anna's webchat conversation.
    ("POST", "/api/v1/conversations/{id}/typing"): Row(
        "sales", "/api/v1/conversations/{conv}/typing", _json({"on": True})
    ),
    ("GET", "/api/v1/conversations/{id}/visitor"): Row(
        "sales", "/api/v1/conversations/{chat}/visitor"
    ),
    # messages
    ("GET", "/api/v1/conversations/{id}/messages"): Row(
        "sales", "/api/v1/conversations/{conv}/messages"
    ),
    ("POST", "/api/v1/conversations/{id}/messages"): Row(
        "sales", "/api/v1/conversations/{conv}/messages", _json({"text": "Добрый день"})
    ),
    # WhatsApp templates: none on the seeded (api channel) conversation; sending one there
    # is 422 for whoever may see it.
    ("GET", "/api/v1/conversations/{id}/templates"): Row(
        "sales", "/api/v1/conversations/{conv}/templates"
    ),
    ("POST", "/api/v1/conversations/{id}/template"): Row(
        "sales",
        "/api/v1/conversations/{conv}/template",
        _json({"name": "order_ready", "params": ["A-1"]}),
        allowed=frozenset({422}),
    ),
    ("POST", "/api/v1/conversations/{id}/notes"): Row(
        "sales", "/api/v1/conversations/{conv}/notes", _json({"text": "note"})
    ),
    ("POST", "/api/v1/conversations/{id}/read"): Row("sales", "/api/v1/conversations/{conv}/read"),
    # Comments under posts (inbox/comments_api.py): the seeded conversation holds none, so
    # whoever sees it gets the empty thread, and 404 for a comment to moderate.
    ("GET", "/api/v1/conversations/{id}/comments"): Row(
        "sales", "/api/v1/conversations/{conv}/comments"
    ),
    ("POST", "/api/v1/conversations/{id}/comments/{comment_id}/moderate"): Row(
        "sales",
        "/api/v1/conversations/{conv}/comments/none/moderate",
        _json({"action": "delete"}),
        frozenset({404}),
    ),
    ("POST", "/api/v1/files"): Row("mine", "/api/v1/files", _json("upload")),
    ("GET", "/api/v1/files/{id}"): Row("sales", "/api/v1/files/{file}"),
    ("GET", "/api/v1/ws"): Row("ws", "/api/v1/ws"),
    # leads and deals
    ("GET", "/api/v1/pipelines"): Row("mine", "/api/v1/pipelines"),
    ("GET", "/api/v1/leads"): Row("mine", "/api/v1/leads"),
    ("GET", "/api/v1/deals"): Row("mine", "/api/v1/deals"),
    ("GET", "/api/v1/leads/{id}"): Row("sales", "/api/v1/leads/{lead}"),
    ("GET", "/api/v1/deals/{id}"): Row("sales", "/api/v1/deals/{deal}"),
    ("PATCH", "/api/v1/leads/{id}"): Row(
        "sales", "/api/v1/leads/{lead}", _json({"fields": {"order_type": "kitchen"}})
    ),
    ("PATCH", "/api/v1/deals/{id}"): Row("sales", "/api/v1/deals/{deal}", _json({"title": "K"})),
    ("POST", "/api/v1/leads/{id}/stage"): Row(
        "sales", "/api/v1/leads/{lead}/stage", _json({"stage_id": "in_work"})
    ),
    ("POST", "/api/v1/deals/{id}/stage"): Row(
        "sales", "/api/v1/deals/{deal}/stage", _json({"stage_id": "approval"})
    ),
    ("POST", "/api/v1/leads/{id}/convert"): Row("sales", "/api/v1/leads/{lead}/convert", _json({})),
    # contacts
    ("GET", "/api/v1/contacts"): Row("mine", "/api/v1/contacts"),
    ("GET", "/api/v1/contacts/{id}"): Row("sales", "/api/v1/contacts/{contact}"),
    ("PATCH", "/api/v1/contacts/{id}"): Row(
        "sales", "/api/v1/contacts/{contact}", _json({"name": "Renamed"})
    ),
    ("POST", "/api/v1/contacts/{id}/merge"): Row(
        "sales", "/api/v1/contacts/{contact}/merge", lambda w, _who: {"other_id": w.ids["contact2"]}
    ),
    # watchers of leads and deals (Anna watches; removing someone not watching is fine)
    ("POST", "/api/v1/leads/{id}/watchers"): Row(
        "sales", "/api/v1/leads/{lead}/watchers", _json({"user_id": ANNA})
    ),
    ("DELETE", "/api/v1/leads/{id}/watchers/{user_id}"): Row(
        "sales", f"/api/v1/leads/{{lead}}/watchers/{ANNA}"
    ),
    ("POST", "/api/v1/deals/{id}/watchers"): Row(
        "sales", "/api/v1/deals/{deal}/watchers", _json({"user_id": ANNA})
    ),
    ("DELETE", "/api/v1/deals/{id}/watchers/{user_id}"): Row(
        "sales", f"/api/v1/deals/{{deal}}/watchers/{ANNA}"
    ),
    # companies (a sales company of Anna's; docs/companies.md)
    ("GET", "/api/v1/companies"): Row("mine", "/api/v1/companies?q=Vec"),
    ("GET", "/api/v1/companies/{id}"): Row("sales", "/api/v1/companies/{company}"),
    ("POST", "/api/v1/companies"): Row("mine", "/api/v1/companies", _json({"name": "New"})),
    ("PATCH", "/api/v1/companies/{id}"): Row(
        "sales", "/api/v1/companies/{company}", _json({"kpp": "773601001"})
    ),
    ("POST", "/api/v1/companies/{id}/contacts"): Row(
        "sales",
        "/api/v1/companies/{company}/contacts",
        lambda w, _who: {"contact_id": w.ids["contact"]},
    ),
    ("DELETE", "/api/v1/companies/{id}/contacts/{contact_id}"): Row(
        "sales", "/api/v1/companies/{company}/contacts/{contact}"
    ),
    ("GET", "/api/v1/export/{kind}"): Row("export", "/api/v1/export/leads"),
    # the call log
    ("GET", "/api/v1/calls"): Row("mine", "/api/v1/calls"),
    ("GET", "/api/v1/calls/{id}"): Row("sales", "/api/v1/calls/{call}"),
    # users and tokens
    ("GET", "/api/v1/me"): Row("mine", "/api/v1/me"),
    ("GET", "/api/v1/users"): Row("mine", "/api/v1/users"),
    ("GET", "/api/v1/users/{id}"): Row("sales", f"/api/v1/users/{ANNA}"),
    ("POST", "/api/v1/users"): Row(
        "admin",
        "/api/v1/users",
        _json({"id": "new.user", "name": "New", "role": "manager", "department": "sales"}),
    ),
    ("PATCH", "/api/v1/users/{id}"): Row("admin", f"/api/v1/users/{ANNA}", _json({"name": "A"})),
    ("POST", "/api/v1/users/{id}/tokens"): Row("admin", f"/api/v1/users/{ANNA}/tokens", _json({})),
    ("GET", "/api/v1/users/{id}/tokens"): Row("admin", f"/api/v1/users/{ANNA}/tokens"),
    ("DELETE", "/api/v1/tokens/{token_id}"): Row("admin", "/api/v1/tokens/{token}"),
    # absences: the admin records one for Anna and removes the seeded one
    ("POST", "/api/v1/users/{id}/absences"): Row(
        "admin",
        f"/api/v1/users/{ANNA}/absences",
        _json({"from": "2099-01-01", "to": "2099-01-02", "deputy": "dmitry.kozlov"}),
    ),
    ("DELETE", "/api/v1/users/{id}/absences/{absence_id}"): Row(
        "admin", f"/api/v1/users/{ANNA}/absences/rbac-absence"
    ),
    # the event feed and subscriptions
    ("GET", "/api/v1/events"): Row("mine", "/api/v1/events"),
    ("POST", "/api/v1/subscriptions"): Row(
        "admin", "/api/v1/subscriptions", _json({"url": "http://127.0.0.1:9/hook"})
    ),
    ("GET", "/api/v1/subscriptions"): Row("admin", "/api/v1/subscriptions"),
    ("GET", "/api/v1/subscriptions/{id}"): Row("admin", "/api/v1/subscriptions/{sub}"),
    ("GET", "/api/v1/subscriptions/{id}/deliveries"): Row(
        "admin", "/api/v1/subscriptions/{sub}/deliveries"
    ),
    ("POST", "/api/v1/subscriptions/{id}/replay"): Row(
        "admin", "/api/v1/subscriptions/{sub}/replay", _json({"from_seq": 1, "to_seq": 2})
    ),
    # No delivery exists in the seed: the admin gets as far as looking it up.
    ("POST", "/api/v1/deliveries/{id}/replay"): Row(
        "admin", "/api/v1/deliveries/nothing/replay", allowed=frozenset({404})
    ),
    # tasks, notifications, click-to-call
    ("GET", "/api/v1/tasks"): Row("mine", "/api/v1/tasks"),
    ("POST", "/api/v1/tasks/{id}/complete"): Row("sales", "/api/v1/tasks/{task}/complete"),
    ("POST", "/api/v1/tasks/{id}/reopen"): Row("sales", "/api/v1/tasks/{task}/reopen"),
    ("GET", "/api/v1/notifications"): Row("mine", "/api/v1/notifications"),
    ("POST", "/api/v1/notifications/{id}/read"): Row(
        "own", "/api/v1/notifications/{notification}/read"
    ),
    # Documents of deals (inbox/documents_api.py): the seeded contract of Anna's deal. The
    # upload is a text file (415: not a scan) and the api channel conversation may refuse
    # the attachment (422) for whoever may see the document.
    ("POST", "/api/v1/deals/{id}/documents"): Row(
        "sales", "/api/v1/deals/{deal}/documents", _json({"type": "contract"})
    ),
    ("GET", "/api/v1/documents"): Row("mine", "/api/v1/documents"),
    ("GET", "/api/v1/document-types"): Row("mine", "/api/v1/document-types"),
    ("GET", "/api/v1/documents/{id}"): Row("sales", "/api/v1/documents/{document}"),
    ("GET", "/api/v1/documents/{id}/file"): Row("sales", "/api/v1/documents/{document}/file"),
    ("POST", "/api/v1/documents/{id}/sent"): Row("sales", "/api/v1/documents/{document}/sent"),
    ("POST", "/api/v1/documents/{id}/send"): Row(
        "sales", "/api/v1/documents/{document}/send", _json({}), frozenset({422})
    ),
    ("POST", "/api/v1/documents/{id}/signed"): Row(
        "sales", "/api/v1/documents/{document}/signed", _json("upload"), frozenset({415})
    ),
    # Reports: every role with access gets its own departments' figures.
    ("GET", "/api/v1/reports/{name}"): Row("mine", "/api/v1/reports/responsiveness?by=channel"),
    # The example PBX has no API token set: 404/422/502 past the role check.
    ("POST", "/api/v1/calls"): Row(
        "mine", "/api/v1/calls", _json({"phone": "+79001234567"}), frozenset({404, 422, 502})
    ),
    # Deletions last: they take the seeded things away.
    ("DELETE", "/api/v1/deals/{id}"): Row("export", "/api/v1/deals/{deal}"),
    ("DELETE", "/api/v1/leads/{id}"): Row("export", "/api/v1/leads/{lead}"),
    ("DELETE", "/api/v1/contacts/{id}"): Row("export", "/api/v1/contacts/{contact}"),
    ("DELETE", "/api/v1/subscriptions/{id}"): Row("admin", "/api/v1/subscriptions/{sub}"),
}


def fill(path: str, world: World) -> str:
    for key, value in world.ids.items():
        path = path.replace("{" + key + "}", value)
    assert "{" not in path, f"unfilled placeholder in {path}"
    return path


async def seed(svc: InProcess) -> World:
    world = World()
    store = svc.store
    for who in (ANNA, OLGA, IVAN, ADMIN, ELENA):
        world.tokens[who], _ = await tokens.issue(store, who)
    _, spare = await tokens.issue(store, ANNA, "spare")
    world.ids["token"] = spare["token_id"]
    sub = await subscriptions.create(store, "http://127.0.0.1:9/consumer", [])
    world.ids["sub"] = sub["_id"]
    for ext, phone, owner, bag in (
        ("rbac-sales", "+79001110001", ANNA, world.sales),
        ("rbac-wholesale", "+79001110002", OLGA, world.wholesale),
        ("rbac-sales-2", "+79001110003", ANNA, world.sales),
    ):
        status, _ = await svc.client.post_api(api_body(ext, phone=phone, name=ext))
        assert status == 200
        await svc.routed()
        conv = await store.conversations.find_one({"sender_keys": f"phone:{phone}"})
        assert conv is not None
        lead_id = conv["target"]["id"]
        await entities.set_responsible(store, "lead", lead_id, owner)
        await store.contacts.update_one(
            {"_id": conv["contact_id"]}, {"$set": {"responsible_id": owner}}
        )
        dept = "sales" if owner == ANNA else "wholesale"
        changed = await convs.assign(store, conv, owner, dept, ADMIN)
        assert changed is not None
        bag |= {conv["_id"], lead_id, conv["contact_id"]}
        bag |= {m["_id"] async for m in store.messages.find({"conversation_id": conv["_id"]})}
        if ext == "rbac-sales":
            world.ids |= {"conv": conv["_id"], "lead": lead_id, "contact": conv["contact_id"]}
        elif ext == "rbac-sales-2":
            world.ids |= {"contact2": conv["contact_id"]}
    # A website visitor's chat (webchat, the example account), Anna's like the first.
    visitor = await visitor_session(svc)
    status, answer, _ = await visitor_send(svc, visitor["visitor_token"], "rbac-1")
    assert status == 200, answer
    await svc.routed()
    chat = await store.conversations.find_one({"channel": "webchat"})
    assert chat is not None
    await entities.set_responsible(store, "lead", chat["target"]["id"], ANNA)
    assert await convs.assign(store, chat, ANNA, "sales", ADMIN) is not None
    world.ids["chat"] = chat["_id"]
    world.sales |= {chat["_id"], chat["target"]["id"], chat["contact_id"], answer["id"]}
    deal_id = stable_id("deal", "rbac")
    await store.deals.insert_one(
        {
            "_id": deal_id,
            "contact_id": world.ids["contact"],
            "pipeline_id": "orders",
            "stage_id": "estimate",
            "open": True,
            "is_repeat": False,
            "responsible_id": ANNA,
            "title": "Kitchen",
            "fields": {"estimate_amount": 120000},
            "created_at": datetime.now(UTC),
        }
    )
    document = await make.generate(
        store, svc.service.config, deal_id, "contract", key="rbac", by=ANNA, now=datetime.now(UTC)
    )
    world.ids["document"] = document["_id"]
    world.sales |= {document["_id"], document["file_id"]}
    task, _ = await tasks.create(
        store,
        {
            "_id": stable_id("task", "rbac"),
            "title": "Call back",
            "entity": {"kind": "lead", "id": world.ids["lead"]},
            "contact_id": world.ids["contact"],
            "assignee_id": ANNA,
            "deadline": datetime.now(UTC),
            "created_at": datetime.now(UTC),
        },
    )
    await store["absences"].insert_one(
        {"_id": "rbac-absence", "user": ANNA, "from": "2099-02-01", "to": "2099-02-02"}
    )
    company_id = stable_id("company", "rbac")
    await store["companies"].insert_one(
        {
            "_id": company_id,
            "name": "Vector",
            "type": "customer",
            "responsible_id": ANNA,
            "fields": {},
            "created_at": datetime.now(UTC),
        }
    )
    world.ids["company"] = company_id
    world.sales.add(company_id)
    note_id = stable_id("notification", "rbac")
    await notifications.create_many(
        store,
        [
            {
                "_id": note_id,
                "user_id": ANNA,
                "text": "A new lead",
                "entity": {"kind": "lead", "id": world.ids["lead"]},
                "created_at": datetime.now(UTC),
                "read_at": None,
            }
        ],
    )
    # A file in a sales message (an e-mail attachment's shape: origin names the message).
    file_id = stable_id("file", "rbac")
    first = await store.messages.find_one({"conversation_id": world.ids["conv"]})
    assert first is not None
    message_id = first["_id"]
    await files.put(
        store,
        file_id,
        b"estimate",
        name="estimate.pdf",
        mime_type="application/pdf",
        origin={"intake_id": message_id, "part": 0},
        max_bytes=1024,
    )
    call_id = stable_id("call", "rbac")
    await store["calls"].insert_one(
        {
            "_id": call_id,
            "channel": "pbx",
            "account": "showroom",
            "call_id": "rbac-call",
            "message_id": message_id,
            "direction": "in",
            "customer": "+79001110001",
            "disposition": {"rank": 3, "value": "answered"},
            "started_at": datetime.now(UTC),
            "recording_url": "https://pbx.example.com/rec/rbac.wav",
        }
    )
    world.ids |= {
        "deal": deal_id,
        "task": task["_id"],
        "notification": note_id,
        "file": file_id,
        "call": call_id,
    }
    world.sales |= {deal_id, task["_id"], note_id, file_id, call_id}
    return world


async def call(svc: InProcess, world: World, who: str, method: str, row: Row) -> tuple[int, bytes]:
    headers = {} if who == ANON else {"Authorization": f"Bearer {world.tokens[who]}"}
    url = f"{svc.client.base}{fill(row.path, world)}"
    kwargs: dict[str, Any] = {"headers": headers}
    body = row.body(world, who) if row.body else None
    if body == "upload":
        import aiohttp

        form = aiohttp.FormData()
        form.add_field("file", b"hello", filename="a.txt", content_type="text/plain")
        kwargs["data"] = form
    elif body is not None:
        kwargs["data"] = orjson.dumps(body)
        headers["Content-Type"] = "application/json"
    async with svc.client.http.request(method, url, **kwargs) as resp:
        return resp.status, await resp.read()


def test_every_endpoint_is_in_the_matrix() -> None:
    import inbox.routes  # noqa: F401 - registers every endpoint

    declared = {(op.method, op.path) for op in OPERATIONS}
    missing = sorted(declared - set(MATRIX))
    stale = sorted(set(MATRIX) - declared)
    assert not missing, f"endpoints without an RBAC row: {missing}"
    assert not stale, f"rows for endpoints that no longer exist: {stale}"


@pytest.mark.parametrize("who", ROLES)
async def test_rbac_matrix(mongo_uri: str, db_name: str, who: str) -> None:
    async with (
        FakeIntegration("site-secret") as integration,
        in_process(mongo_uri, db_name, config=config_with(site(integration.url))) as svc,
    ):
        world = await seed(svc)
        wrong: list[str] = []
        for (method, declared), row in MATRIX.items():
            status, body = await call(svc, world, who, method, row)
            want = EXPECTED[row.policy][who]
            ok = 200 <= status < 300 or status in row.allowed if want == "2xx" else status == want
            if not ok:
                wrong.append(f"{method} {declared}: {status} (want {want}) {body[:200]!r}")
            if status >= 400 and status not in (404, 405) and body:
                assert orjson.loads(body).get("code"), f"{method} {declared}: not problem+json"
            hidden = world.sales if who == OLGA else world.wholesale if who == ANNA else set()
            # An id the caller put in the URL may come back in a 404's detail: not a leak.
            leaked = [i for i in hidden if i.encode() in body and i not in fill(row.path, world)]
            if leaked:
                wrong.append(f"{method} {declared}: LEAKS {leaked}")
        assert not wrong, "\n".join(wrong)
