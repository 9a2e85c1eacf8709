"""The operator's conversation API over HTTP against the running service: a Viber customer
writes, the operator finds the conversation, replies, the fake Viber API receives the
reply and its receipts move the delivery state; assignment, status, notes, read marks,
history pagination, filters and uploads."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson
import pytest

from crm_store import tokens
from tests.fakes.viber import FakeViber
from tests.helpers import wait_for
from tests.service import InProcess, api_body, config_with, in_process
from tests.test_channel_viber import (
    TOKEN_ENV,
    hook,
    message,
    receipt,
    user,
    viber_account,
)
from tests.test_inbox_ws import connect, event_of, frames_until

ANNA, DMITRY, IVAN, OLGA, ADMIN, ELENA = (
    "anna.smirnova",
    "dmitry.kozlov",
    "ivan.petrov",
    "olga.ivanova",
    "sergey.volkov",
    "elena.orlova",
)


@pytest.fixture(autouse=True)
def viber_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, "4453b6ac12345678-e02c5f12174805f9-daec9cbb5448c51f")


@dataclass
class Desk:
    """The running service, the fake Viber API and a token per user."""

    svc: InProcess
    viber: FakeViber
    tokens: dict[str, str]

    async def call(
        self, method: str, path: str, who: str, body: Any = None
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"}
        data = None if body is None else orjson.dumps(body)
        if data is not None:
            headers["Content-Type"] = "application/json"
        async with self.svc.client.http.request(
            method, f"{self.svc.client.base}{path}", data=data, headers=headers
        ) as resp:
            raw = await resp.read()
            if resp.status >= 400:
                assert resp.content_type == "application/problem+json", raw
            return resp.status, orjson.loads(raw) if raw else {}

    async def customer_writes(self, token: int, text: str, uid: str = "01234567890A=") -> None:
        status, _ = await self.viber.callback(
            hook(self.svc), message(token, {"type": "text", "text": text}, user(uid))
        )
        assert status == 200
        await self.svc.routed()

    async def only_conversation(self, who: str = ADMIN) -> dict[str, Any]:
        status, page = await self.call("GET", "/api/v1/conversations?channel=viber", who)
        assert status == 200
        [item] = page["items"]
        return dict(item)


@asynccontextmanager
async def desk(mongo_uri: str, db_name: str) -> AsyncIterator[Desk]:
    async with FakeViber("4453b6ac12345678-e02c5f12174805f9-daec9cbb5448c51f") as fake:
        cfg = config_with(viber_account(fake.base))
        async with in_process(mongo_uri, db_name, config=cfg) as svc:
            issued = {}
            for uid in (ANNA, DMITRY, IVAN, OLGA, ADMIN, ELENA):
                issued[uid], _ = await tokens.issue(svc.store, uid)
            yield Desk(svc, fake, issued)


async def test_operator_reads_replies_and_sees_the_delivery_state(
    mongo_uri: str, db_name: str
) -> None:
    async with desk(mongo_uri, db_name) as d:
        # The director has the inbox open: the conversation appears live.
        live = await connect(d.svc, d.tokens[IVAN])
        await d.customer_writes(4912661846655238145, "Добрый день, нужен шкаф-купе")
        frames = await frames_until(live, lambda f: event_of(f, "message.attached"))
        item = await d.only_conversation()
        assert frames[-1]["event"]["refs"]["conversation_id"] == item["id"]
        assignee = item["assignee_id"]
        assert assignee in (ANNA, DMITRY, IVAN)  # the sales line's round robin
        assert (item["department"], item["status"], item["unread"]) == ("sales", "open", 1)
        assert item["contact_name"] == "Иван Петров"
        assert item["last_text"] == "Добрый день, нужен шкаф-купе"
        assert item["target"]["kind"] == "lead"

        status, detail = await d.call("GET", f"/api/v1/conversations/{item['id']}", assignee)
        assert status == 200
        assert detail["lead"]["id"] == item["target"]["id"]
        assert detail["contact"]["name"] == "Иван Петров"
        [inbound] = detail["messages"]
        assert (inbound["direction"], inbound["text"]) == ("in", "Добрый день, нужен шкаф-купе")

        status, sent = await d.call(
            "POST",
            f"/api/v1/conversations/{item['id']}/messages",
            assignee,
            {"text": "Здравствуйте! Какие размеры?"},
        )
        assert status == 201, sent
        assert (sent["direction"], sent["state"], sent["author_id"]) == ("out", "queued", assignee)

        async def provider_got_it() -> bool:
            return any(r.json.get("text") == "Здравствуйте! Какие размеры?" for r in d.viber.sent())

        await wait_for(provider_got_it, timeout=15, message="the fake Viber got no reply")

        async def state() -> str:
            _, page = await d.call("GET", f"/api/v1/conversations/{item['id']}/messages", assignee)
            return str(page["items"][-1]["state"])

        await wait_for(lambda: _is(state, "sent"), timeout=15, message="reply not sent")
        stored = await d.svc.store.messages.find_one({"_id": sent["id"]})
        assert stored is not None
        status, _ = await d.viber.callback(hook(d.svc), receipt("delivered", stored["provider_id"]))
        assert status == 200
        assert await state() == "delivered"
        status, _ = await d.viber.callback(hook(d.svc), receipt("seen", stored["provider_id"]))
        assert await state() == "read"

        # … and the reply's states arrived on the socket as they happened.
        states: list[str] = []

        def delivered(f: dict[str, Any]) -> bool:
            if event_of(f, "message.delivery_changed"):
                states.append(f["event"]["data"]["state"])
            return states[-1:] == ["read"]

        frames = await frames_until(live, delivered)
        kinds = [f["event"]["type"] for f in frames if f["type"] == "event"]
        assert kinds.index("message.queued") < kinds.index("message.sent")
        assert states == ["delivered", "read"]
        await live.close()

        status, after = await d.call("POST", f"/api/v1/conversations/{item['id']}/read", assignee)
        assert (status, after["unread"]) == (200, 0)
        counts = (await d.call("GET", "/api/v1/conversations/counts", assignee))[1]
        assert counts["mine"] == {"open": 1, "unread": 0}


async def _is(get: Any, want: str) -> bool:
    return bool(await get() == want)


async def test_reply_refusals_name_the_problem(mongo_uri: str, db_name: str) -> None:
    async with desk(mongo_uri, db_name) as d:
        await d.customer_writes(4912661846655238145, "Hello")
        cid = (await d.only_conversation())["id"]
        path = f"/api/v1/conversations/{cid}/messages"
        status, body = await d.call("POST", path, ADMIN, {"text": "  "})
        assert (status, body["code"], body["errors"][0]["field"]) == (422, "empty_message", "text")
        status, body = await d.call("POST", path, ADMIN, {"text": "x", "colour": "red"})
        assert (status, body["code"]) == (422, "invalid_request")
        assert body["errors"][0] == {
            "in": "body",
            "field": "colour",
            "message": "Extra inputs are not permitted",
        }
        status, body = await d.call(
            "POST", path, ADMIN, {"text": "x", "attachments": [{"file_id": "nope"}]}
        )
        assert (status, body["code"]) == (422, "unknown_file")
        assert body["errors"][0]["field"] == "attachments.0.file_id"
        status, body = await d.call("POST", "/api/v1/conversations/missing/messages", ADMIN, {})
        assert (status, body["code"]) == (404, "not_found")
        async with d.svc.client.http.post(
            f"{d.svc.client.base}{path}",
            data=b"{not json",
            headers={"Authorization": f"Bearer {d.tokens[ADMIN]}"},
        ) as resp:
            assert resp.status == 400
            assert (await resp.json(content_type=None))["code"] == "invalid_json"
        # Nothing of the refused replies was stored.
        assert await d.svc.store.messages.count_documents({"direction": "out"}) == 0


async def test_assignment_status_notes_and_who_sees_it(mongo_uri: str, db_name: str) -> None:
    async with desk(mongo_uri, db_name) as d:
        await d.customer_writes(4912661846655238145, "Hello")
        cid = (await d.only_conversation())["id"]
        base = f"/api/v1/conversations/{cid}"
        # Wholesale (a department below sales) does not see a sales conversation.
        assert (await d.call("GET", base, OLGA))[0] == 404
        assert (await d.call("GET", "/api/v1/conversations", OLGA))[1]["items"] == []
        assert (await d.call("GET", base, ELENA))[0] == 403

        status, conv = await d.call("POST", f"{base}/assign", IVAN, {"user_id": OLGA})
        assert (status, conv["assignee_id"], conv["department"]) == (200, OLGA, "wholesale")
        # Now wholesale sees it; the director above still does; a sales manager does not.
        assert (await d.call("GET", base, OLGA))[0] == 200
        assert (await d.call("GET", base, IVAN))[0] == 200
        assert (await d.call("GET", base, ANNA))[0] == 404
        # A manager cannot hand work to a department they do not see.
        status, body = await d.call("POST", f"{base}/assign", OLGA, {"user_id": ANNA})
        assert (status, body["code"]) == (403, "forbidden")
        status, body = await d.call("POST", f"{base}/assign", IVAN, {"user_id": "ghost"})
        assert (status, body["code"]) == (422, "invalid_assignee")

        status, conv = await d.call("POST", f"{base}/unassign", OLGA)
        assert (status, conv["assignee_id"], conv["department"]) == (200, None, "wholesale")
        status, page = await d.call("GET", "/api/v1/conversations?unassigned=true", OLGA)
        assert [c["id"] for c in page["items"]] == [cid]
        status, conv = await d.call("POST", f"{base}/take", OLGA)
        assert conv["assignee_id"] == OLGA
        status, page = await d.call("GET", "/api/v1/conversations?assignee=me", OLGA)
        assert [c["id"] for c in page["items"]] == [cid]

        status, note = await d.call("POST", f"{base}/notes", OLGA, {"text": "Call after 18:00"})
        assert (status, note["direction"], note["author_id"]) == (201, "note", OLGA)

        status, conv = await d.call("POST", f"{base}/close", OLGA)
        assert conv["status"] == "closed"
        assert (await d.call("GET", "/api/v1/conversations?status=open", OLGA))[1]["items"] == []
        until = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
        status, conv = await d.call("POST", f"{base}/snooze", OLGA, {"until": until})
        assert (status, conv["status"]) == (200, "snoozed")
        past = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
        status, body = await d.call("POST", f"{base}/snooze", OLGA, {"until": past})
        assert (status, body["errors"][0]["field"]) == (422, "until")
        # The customer writes again: the snoozed conversation opens.
        await d.customer_writes(4912661846655238146, "Are you there?")
        status, conv = await d.call("GET", base, OLGA)
        assert conv["conversation"]["status"] == "open"
        assert [m["direction"] for m in conv["messages"]] == ["in", "note", "in"]
        # Nothing was sent to the customer: the note is internal.
        assert d.viber.sent() == []

        types = [e["type"] async for e in d.svc.store.events.find({}, sort=[("seq", 1)])]
        for t in (
            "conversation.assigned",
            "message.note_added",
            "conversation.closed",
            "conversation.snoozed",
        ):
            assert t in types, t
        assert types.count("conversation.assigned") == 3


async def test_filters_cursor_pages_and_history(mongo_uri: str, db_name: str) -> None:
    async with desk(mongo_uri, db_name) as d:
        for i in range(7):
            status, _ = await d.svc.client.post_api(
                api_body(f"m-{i}", phone=f"+7900111{i:04d}", name=f"Client {i}", text=f"text {i}")
            )
            assert status == 200
        await d.svc.routed()
        await d.customer_writes(4912661846655238145, "шкаф-купе 2 метра")
        seen: list[str] = []
        cursor = None
        while True:
            path = "/api/v1/conversations?limit=3" + (f"&cursor={cursor}" if cursor else "")
            status, page = await d.call("GET", path, ADMIN)
            assert status == 200
            seen += [c["id"] for c in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert len(seen) == len(set(seen)) == 8
        status, page = await d.call("GET", "/api/v1/conversations?channel=api", ADMIN)
        assert len(page["items"]) == 7
        status, page = await d.call(
            "GET", "/api/v1/conversations?q=%D1%88%D0%BA%D0%B0%D1%84", ADMIN
        )
        assert [c["channel"] for c in page["items"]] == ["viber"]
        status, page = await d.call("GET", "/api/v1/conversations?q=Client%203", ADMIN)
        assert [c["contact_name"] for c in page["items"]] == ["Client 3"]
        status, page = await d.call("GET", "/api/v1/conversations?pipeline=leads&stage=new", ADMIN)
        assert len(page["items"]) == 8
        status, page = await d.call("GET", "/api/v1/conversations?pipeline=nothing", ADMIN)
        assert page["items"] == []
        since = (datetime.now(UTC) + timedelta(minutes=1)).isoformat().replace("+", "%2B")
        status, page = await d.call("GET", f"/api/v1/conversations?updated_since={since}", ADMIN)
        assert page["items"] == []
        status, body = await d.call("GET", "/api/v1/conversations?cursor=bogus", ADMIN)
        assert (status, body["errors"][0]["field"]) == (422, "cursor")
        status, body = await d.call("GET", "/api/v1/conversations?limit=0", ADMIN)
        assert (status, body["errors"][0]) == (
            422,
            {
                "in": "query",
                "field": "limit",
                "message": "Input should be greater than or equal to 1",
            },
        )

        # History: notes make a long conversation; pages go back in time without overlap.
        cid = next(c for c in seen if c)
        for i in range(5):
            await d.call("POST", f"/api/v1/conversations/{cid}/notes", ADMIN, {"text": f"n{i}"})
        texts: list[str] = []
        before = None
        while True:
            path = f"/api/v1/conversations/{cid}/messages?limit=2" + (
                f"&before={before}" if before else ""
            )
            status, page = await d.call("GET", path, ADMIN)
            texts = [m["text"] for m in page["items"]] + texts
            before = page["next_cursor"]
            if before is None:
                break
        assert texts[-5:] == ["n0", "n1", "n2", "n3", "n4"]
        assert len(texts) == 6


async def upload(d: Desk, who: str, data: bytes, name: str, ctype: str) -> dict[str, Any]:
    form = aiohttp.FormData()
    form.add_field("file", data, filename=name, content_type=ctype)
    async with d.svc.client.http.post(
        f"{d.svc.client.base}/api/v1/files",
        data=form,
        headers={"Authorization": f"Bearer {d.tokens[who]}"},
    ) as resp:
        assert resp.status == 201, await resp.text()
        return dict(await resp.json())


async def test_upload_download_and_a_channel_that_cannot_attach(
    mongo_uri: str, db_name: str
) -> None:
    async with desk(mongo_uri, db_name) as d:
        await d.customer_writes(4912661846655238145, "Пришлите каталог")
        cid = (await d.only_conversation())["id"]
        uploaded = await upload(d, ANNA, b"%PDF-1.4 catalogue", "catalog.pdf", "application/pdf")
        assert (uploaded["name"], uploaded["size"]) == ("catalog.pdf", 18)
        async with d.svc.client.http.get(uploaded["url"]) as resp:  # the provider's link
            assert (resp.status, await resp.read()) == (200, b"%PDF-1.4 catalogue")
        async with d.svc.client.http.get(uploaded["url"] + "x") as resp:  # a tampered sig
            assert resp.status == 403
        async with d.svc.client.http.get(
            f"{d.svc.client.base}/api/v1/files/{uploaded['file_id']}",
            headers={"Authorization": f"Bearer {d.tokens[ANNA]}"},
        ) as resp:
            assert (resp.status, await resp.read()) == (200, b"%PDF-1.4 catalogue")
        async with d.svc.client.http.get(
            f"{d.svc.client.base}/api/v1/files/{uploaded['file_id']}"
        ) as resp:
            assert resp.status == 401
        # Viber bots send text only: refused at once, with the channel's reason.
        status, body = await d.call(
            "POST",
            f"/api/v1/conversations/{cid}/messages",
            ADMIN,
            {"text": "Каталог", "attachments": [{"file_id": uploaded["file_id"]}]},
        )
        assert (status, body["code"]) == (422, "viber_attachments_unsupported")
        assert await d.svc.store.messages.count_documents({"direction": "out"}) == 0


async def test_reply_with_an_uploaded_file_reaches_telegram_as_a_link(
    mongo_uri: str, db_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests import test_channel_telegram as tg

    monkeypatch.setenv(tg.TOKEN_ENV, tg.TOKEN)
    monkeypatch.setenv(tg.WEBHOOK_ENV, tg.WEBHOOK_SECRET)
    async with tg.service(mongo_uri, db_name) as (svc, fake):
        token, _ = await tokens.issue(svc.store, ADMIN)
        d = Desk(svc, None, {ADMIN: token})  # type: ignore[arg-type]
        status, _ = await tg.post(svc, tg.update(body=tg.message("Пришлите каталог")))
        assert status == 200
        await svc.routed()
        status, page = await d.call("GET", "/api/v1/conversations?channel=telegram", ADMIN)
        [conv] = page["items"]
        uploaded = await upload(d, ADMIN, b"%PDF-1.4 catalogue", "catalog.pdf", "application/pdf")
        status, sent = await d.call(
            "POST",
            f"/api/v1/conversations/{conv['id']}/messages",
            ADMIN,
            {"text": "Каталог", "attachments": [{"file_id": uploaded["file_id"]}]},
        )
        assert status == 201, sent
        [att] = sent["attachments"]
        assert (att["kind"], att["name"]) == ("file", "catalog.pdf")
        # Its own signed link (valid longer than the upload's), fetched without a token.
        assert att["url"].startswith(f"{svc.client.base}/files/{uploaded['file_id']}?exp=")
        async with svc.client.http.get(att["url"]) as resp:
            assert (resp.status, await resp.read()) == (200, b"%PDF-1.4 catalogue")

        async def provider_got_it() -> bool:
            return any(
                r.api_method == "sendDocument" and r.params.get("document") == att["url"]
                for r in fake.requests
            )

        await wait_for(
            provider_got_it,
            timeout=15,
            message="the file link did not reach Telegram",
        )
