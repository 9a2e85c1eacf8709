"""The operator's call log over HTTP: PBX webhooks in, calls with their recordings out —
in the conversation's history and in /api/v1/calls — to whom the call's conversation is
visible."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from crm_store import entities, tokens
from tests.service import InProcess
from tests.test_channel_pbx import SECRET, SECRET_ENV, answered, lifecycle, running, unanswered

ANNA, OLGA, ADMIN = "anna.smirnova", "olga.ivanova", "sergey.volkov"


async def get(svc: InProcess, token: str, path: str) -> tuple[int, Any]:
    async with svc.client.http.get(
        f"{svc.client.base}{path}", headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        return resp.status, orjson.loads(await resp.read())


async def test_calls_with_recordings_for_whom_may_see_them(
    mongo_uri: str, db_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    async with running(mongo_uri, db_name) as (svc, fake):
        await lifecycle(svc, fake, answered("c-1"))
        await lifecycle(svc, fake, unanswered("c-2", from_="+79007654321"))
        t = {u: (await tokens.issue(svc.store, u))[0] for u in (ANNA, OLGA, ADMIN)}
        # Make Anna responsible for the first caller's conversation.
        conv = await svc.store.conversations.find_one({"sender_keys": "phone:+79001234567"})
        assert conv is not None
        await entities.set_responsible(svc.store, "lead", conv["target"]["id"], ANNA)
        await svc.store.conversations.update_many(
            {}, {"$set": {"department": "sales", "assignee_id": ANNA}}
        )

        status, page = await get(svc, t[ANNA], "/api/v1/calls")
        assert status == 200
        by_id = {c["call_id"]: c for c in page["items"]}
        assert set(by_id) == {"c-1", "c-2"}
        first = by_id["c-1"]
        assert first["recording_url"] == "https://pbx.example.com/rec/c-1.wav"
        assert (first["disposition"], first["talk_s"], first["customer"]) == (
            "answered",
            95,
            "+79001234567",
        )
        assert by_id["c-2"]["disposition"] == "missed"
        assert first["conversation_id"] == conv["_id"]

        status, one = await get(svc, t[ANNA], f"/api/v1/calls/{first['id']}")
        assert (status, one["recording_url"]) == (200, first["recording_url"])
        status, page = await get(svc, t[ANNA], "/api/v1/calls?phone=8%20900%20123-45-67")
        assert [c["call_id"] for c in page["items"]] == ["c-1"]
        status, page = await get(svc, t[ANNA], "/api/v1/calls?disposition=missed")
        assert [c["call_id"] for c in page["items"]] == ["c-2"]
        status, body = await get(svc, t[ANNA], "/api/v1/calls?phone=abc")
        assert (status, body["errors"][0]["field"]) == (422, "phone")
        # The history of the conversation carries the call's record.
        status, history = await get(svc, t[ANNA], f"/api/v1/conversations/{conv['_id']}/messages")
        [msg] = history["items"]
        assert msg["call"]["recording_url"] == "https://pbx.example.com/rec/c-1.wav"
        # Wholesale sees none of it.
        assert (await get(svc, t[OLGA], "/api/v1/calls"))[1]["items"] == []
        assert (await get(svc, t[OLGA], f"/api/v1/calls/{first['id']}"))[0] == 404
        # Pages: one call per page, then the end.
        status, page = await get(svc, t[ADMIN], "/api/v1/calls?limit=1")
        assert len(page["items"]) == 1
        assert page["next_cursor"]
        status, rest = await get(
            svc, t[ADMIN], f"/api/v1/calls?limit=1&cursor={page['next_cursor']}"
        )
        assert len(rest["items"]) == 1
        assert rest["items"][0]["id"] != page["items"][0]["id"]
