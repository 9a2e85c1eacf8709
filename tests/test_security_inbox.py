"""Regression tests for the operator API's security findings (issue 17), each over real
HTTP into the running service with a real store:

- finding 1: a reply may attach only a file its author can read; token-free file links
  are signed (HMAC over id + expiry) and expire — a bare id, the old unsigned form, a
  tampered signature or expiry are refused, an expired link is 410;
- finding 7: downloads are attachments with an ASCII ``filename`` and an RFC 6266
  ``filename*``, CR/LF/NUL never reach a header (old records included), ``nosniff`` and a
  sandboxing CSP; JSON answers say ``nosniff`` too;
- finding 4 (operator API): numbers beyond 64 bits, times the store cannot hold and forged
  cursors are 422 naming the field, never 500.

The people are the furniture seed's (tests/test_inbox_rbac.py seeds the data): Anna, a
sales manager, and Olga, a wholesale manager, who must not reach each other's files.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import pytest

from crm_store import files
from crm_store.documents import stable_id
from inbox.file_links import LinkSigner
from tests.fakes.integration import FakeIntegration
from tests.service import InProcess, config_with, in_process
from tests.test_api_channel_replies import site
from tests.test_inbox_rbac import ADMIN, ANNA, OLGA, World, seed

PROBLEM = "application/problem+json"
LINK_KEY = "k" * 40


@dataclass
class Desk:
    svc: InProcess
    world: World

    @property
    def base(self) -> str:
        return self.svc.client.base

    async def call(
        self, method: str, path: str, who: str | None, body: Any = None
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        headers = {} if who is None else {"Authorization": f"Bearer {self.world.tokens[who]}"}
        # json, not orjson: a body may carry integers beyond 64 bits on purpose.
        data = None if body is None else json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = "application/json"
        async with self.svc.client.http.request(
            method, f"{self.base}{path}", data=data, headers=headers
        ) as resp:
            raw = await resp.read()
            parsed = orjson.loads(raw) if raw and resp.content_type.endswith("json") else {}
            return resp.status, parsed, dict(resp.headers)

    async def fetch(self, url: str, who: str | None = None) -> tuple[int, bytes, dict[str, str]]:
        headers = {} if who is None else {"Authorization": f"Bearer {self.world.tokens[who]}"}
        async with self.svc.client.http.get(url, headers=headers) as resp:
            return resp.status, await resp.read(), dict(resp.headers)

    async def upload(self, who: str, data: bytes, name: str) -> dict[str, Any]:
        form = aiohttp.FormData(quote_fields=False)  # the name as a browser sends it: UTF-8
        form.add_field("file", data, filename=name, content_type="application/pdf")
        async with self.svc.client.http.post(
            f"{self.base}/api/v1/files",
            data=form,
            headers={"Authorization": f"Bearer {self.world.tokens[who]}"},
        ) as resp:
            assert resp.status == 201, await resp.text()
            return dict(await resp.json())

    async def conversation_of(self, department: str) -> str:
        conv = await self.svc.store.conversations.find_one({"department": department})
        assert conv is not None
        return str(conv["_id"])


@asynccontextmanager
async def desk(mongo_uri: str, db_name: str) -> AsyncIterator[Desk]:
    async with (
        FakeIntegration("site-secret") as integration,
        in_process(mongo_uri, db_name, config=config_with(site(integration.url))) as svc,
    ):
        yield Desk(svc, await seed(svc))


def reply_to(conv: str) -> str:
    return f"/api/v1/conversations/{conv}/messages"


# --- finding 1: files across departments ------------------------------------------


async def test_a_reply_cannot_attach_a_file_of_another_department(
    mongo_uri: str, db_name: str
) -> None:
    async with desk(mongo_uri, db_name) as d:
        sales, wholesale = await d.conversation_of("sales"), await d.conversation_of("wholesale")
        olgas = await d.upload(OLGA, b"%PDF wholesale prices", "prices.pdf")
        annas = await d.upload(ANNA, b"%PDF kitchen", "kitchen.pdf")
        # An e-mail attachment in a wholesale conversation (its origin names the message).
        mail_file = stable_id("file", "wholesale-mail")
        first = await d.svc.store.messages.find_one({"conversation_id": wholesale})
        assert first is not None
        await files.put(
            d.svc.store,
            mail_file,
            b"%PDF contract",
            name="contract.pdf",
            mime_type="application/pdf",
            origin={"intake_id": first["_id"], "part": 0},
            max_bytes=1024,
        )
        unknown = await d.call(
            "POST", reply_to(sales), ANNA, {"attachments": [{"file_id": "no-such-file"}]}
        )
        for foreign in (olgas["file_id"], mail_file):
            status, body, _ = await d.call(
                "POST", reply_to(sales), ANNA, {"attachments": [{"file_id": foreign}]}
            )
            # Answered exactly as an id that does not exist: nothing says it does.
            assert (status, body["code"]) == (422, "unknown_file")
            assert (unknown[0], unknown[1]["code"]) == (422, "unknown_file")
            assert body["errors"] == unknown[1]["errors"]
            status, _, _ = await d.call("GET", f"/api/v1/files/{foreign}", ANNA)
            assert status == 404
        assert await d.svc.store.messages.count_documents({"direction": "out"}) == 0

        # What she may read she may attach: her upload, a file in her own department.
        for own, content in (
            (annas["file_id"], b"%PDF kitchen"),
            (d.world.ids["file"], b"estimate"),
        ):
            status, sent, _ = await d.call(
                "POST", reply_to(sales), ANNA, {"text": "See", "attachments": [{"file_id": own}]}
            )
            assert status == 201, sent
            status, data, _ = await d.fetch(sent["attachments"][0]["url"])
            assert (status, data) == (200, content)
        # Olga's file in Anna's reply never happened, so Olga's own reply still may.
        status, _, _ = await d.call(
            "POST", reply_to(wholesale), OLGA, {"attachments": [{"file_id": mail_file}]}
        )
        assert status == 201
        # The admin reads every file.
        status, _, _ = await d.call("GET", f"/api/v1/files/{olgas['file_id']}", ADMIN)
        assert status == 200


async def test_file_links_are_signed_and_expire(mongo_uri: str, db_name: str) -> None:
    async with desk(mongo_uri, db_name) as d:
        up = await d.upload(ANNA, b"%PDF catalogue", "catalog.pdf")
        file_id = up["file_id"]
        assert up["url"].startswith(f"{d.base}/files/{file_id}?exp=")
        status, data, _ = await d.fetch(up["url"])
        assert (status, data) == (200, b"%PDF catalogue")

        signer = LinkSigner(await files.link_key(d.svc.store))
        past = int(time.time()) - 60
        later = int(time.time()) + 3600
        good_sig = signer.signature(file_id, later)
        refused = {
            "a bare id": f"/files/{file_id}",
            "the old unsigned form": f"/files/{file_id}/anykey",
            "no sig": f"/files/{file_id}?exp={later}",
            "a tampered sig": f"/files/{file_id}?exp={later}&sig={good_sig[:-2]}AA",
            "a moved expiry": f"/files/{file_id}?exp={later + 86400}&sig={good_sig}",
            "another file's sig": f"/files/{d.world.ids['file']}?exp={later}&sig={good_sig}",
            "a non-ASCII sig": f"/files/{file_id}?exp={later}&sig={quote('ПОДПИСЬ')}",
            "a huge exp": f"/files/{file_id}?exp={'9' * 400}&sig={good_sig}",
        }
        for what, path in refused.items():
            status, raw, headers = await d.fetch(d.base + path)
            assert status == 403, what
            assert headers["Content-Type"].startswith(PROBLEM), what
            assert orjson.loads(raw)["code"] == "invalid_link", what
            assert b"%PDF" not in raw

        status, raw, _ = await d.fetch(d.base + signer.path(file_id, past))
        assert (status, orjson.loads(raw)["code"]) == (410, "link_expired")
        status, raw, _ = await d.fetch(d.base + signer.path("no-such-file", later))
        assert (status, orjson.loads(raw)["code"]) == (404, "not_found")
        status, data, _ = await d.fetch(d.base + signer.path(file_id, later))
        assert (status, data) == (200, b"%PDF catalogue")


async def test_the_configured_link_key_signs_the_links(
    mongo_uri: str, db_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMNIROUTE_FILE_LINK_KEY", LINK_KEY)
    async with desk(mongo_uri, db_name) as d:
        up = await d.upload(ANNA, b"%PDF catalogue", "catalog.pdf")
        exp = int(time.time()) + 600
        status, data, _ = await d.fetch(
            d.base + LinkSigner(LINK_KEY.encode()).path(up["file_id"], exp)
        )
        assert (status, data) == (200, b"%PDF catalogue")
        assert await d.svc.store["service_keys"].count_documents({}) == 0


# --- finding 7: download hygiene --------------------------------------------------


def disposition_name(header: str) -> tuple[str, str]:
    """The ``filename`` and the decoded ``filename*`` of a Content-Disposition."""
    assert header.startswith("attachment; ")
    plain = header.split('filename="', 1)[1].split('"', 1)[0]
    star = header.split("filename*=UTF-8''", 1)[1]
    from urllib.parse import unquote

    return plain, unquote(star)


def assert_safe_download(headers: dict[str, str]) -> None:
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in headers["Content-Security-Policy"]
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    for value in headers.values():
        assert not {"\r", "\n", "\0"} & set(value)


async def test_hostile_and_foreign_names_download_with_safe_headers(
    mongo_uri: str, db_name: str
) -> None:
    async with desk(mongo_uri, db_name) as d:
        # A record stored before names were cleaned (written directly, as old code did).
        old_id = "old-hostile-name"
        hostile = 'evil"\r\nSet-Cookie: stolen=1\x00\\.html'
        await d.svc.store["file_chunks"].insert_one(
            {"_id": f"{old_id}:0", "file_id": old_id, "n": 0, "data": b"<script>1</script>"}
        )
        await d.svc.store["files"].insert_one(
            {
                "_id": old_id,
                "name": hostile,
                "mime_type": "text/html\r\nX-Injected: 1",
                "size": 18,
                "sha256": "",
                "stored": True,
                "chunks": 1,
                "origin": {"uploaded_by": ANNA},
            }
        )
        status, data, headers = await d.fetch(f"{d.base}/api/v1/files/{old_id}", ANNA)
        assert (status, data) == (200, b"<script>1</script>")
        assert_safe_download(headers)
        assert not {"X-Injected", "Set-Cookie"} & set(headers)
        assert headers["Content-Type"] == "application/octet-stream"
        plain, star = disposition_name(headers["Content-Disposition"])
        assert plain == "evil_  Set-Cookie: stolen=1_.html"
        assert star == 'evil"  Set-Cookie: stolen=1_.html'

        # A non-ASCII name: an ASCII fallback and the exact name in filename*.
        up = await d.upload(ANNA, b"%PDF smeta", "Смета №1 (кухня).pdf")
        assert up["name"] == "Смета №1 (кухня).pdf"
        for url, who in ((f"{d.base}/api/v1/files/{up['file_id']}", ANNA), (up["url"], None)):
            status, data, headers = await d.fetch(url, who)
            assert (status, data) == (200, b"%PDF smeta")
            assert_safe_download(headers)
            assert headers["Content-Type"] == "application/pdf"
            plain, star = disposition_name(headers["Content-Disposition"])
            assert plain.isascii()
            assert plain.endswith(".pdf")
            assert star == "Смета №1 (кухня).pdf"


async def test_an_uploaded_name_is_cleaned_when_stored(mongo_uri: str, db_name: str) -> None:
    async with desk(mongo_uri, db_name) as d:
        # filename* lets a form carry CR, LF and NUL in a name (RFC 5987 encoding).
        boundary = "b0undary"
        body = (
            f"--{boundary}\r\n"
            "Content-Disposition: form-data; name=\"file\"; filename*=UTF-8''"
            "report%0D%0A2026%00%E2%80%AEfdp.exe\r\n"
            "Content-Type: application/pdf\r\n\r\n%PDF x\r\n"
            f"--{boundary}--\r\n"
        ).encode()
        async with d.svc.client.http.post(
            f"{d.base}/api/v1/files",
            data=body,
            headers={
                "Authorization": f"Bearer {d.world.tokens[ANNA]}",
                "Content-Type": f"multipart/form-data; boundary={boundary}",
            },
        ) as resp:
            assert resp.status == 201, await resp.text()
            up = await resp.json()
        assert up["name"] == "report  2026fdp.exe"
        stored = await d.svc.store["files"].find_one({"_id": up["file_id"]})
        assert stored is not None
        assert stored["name"] == "report  2026fdp.exe"


async def test_json_answers_say_nosniff(mongo_uri: str, db_name: str) -> None:
    async with desk(mongo_uri, db_name) as d:
        for path, who, want in (
            ("/api/v1/me", ANNA, 200),
            ("/api/v1/me", None, 401),
            ("/api/v1/conversations/nothing", ANNA, 404),
            ("/api/v1/openapi.json", None, 200),
        ):
            status, _, headers = await d.call("GET", path, who)
            assert status == want
            assert headers.get("X-Content-Type-Options") == "nosniff", path


# --- finding 4: numbers and times the store cannot hold ----------------------------


def cursor(*parts: object) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(parts))).decode().rstrip("=")


FAR = "9999-12-31T23:59:59-23:59"  # parses, but has no UTC equivalent
NEAR = "0001-01-01T00:00:00+23:59"


async def test_out_of_range_input_is_422_naming_the_field(mongo_uri: str, db_name: str) -> None:
    async with desk(mongo_uri, db_name) as d:
        conv, sub = d.world.ids["conv"], d.world.ids["sub"]
        q = quote
        cases: list[tuple[str, str, Any, str, str]] = [
            ("POST", f"/api/v1/conversations/{conv}/snooze", {"until": FAR}, "body", "until"),
            ("POST", f"/api/v1/conversations/{conv}/snooze", {"until": NEAR}, "body", "until"),
            (
                "GET",
                f"/api/v1/conversations?updated_since={q(FAR)}",
                None,
                "query",
                "updated_since",
            ),
            (
                "GET",
                f"/api/v1/conversations?updated_since={q(NEAR)}",
                None,
                "query",
                "updated_since",
            ),
            ("GET", f"/api/v1/conversations?cursor={cursor(FAR, 'x')}", None, "query", "cursor"),
            (
                "GET",
                f"/api/v1/conversations/{conv}/messages?before={cursor(FAR, 'x')}",
                None,
                "query",
                "before",
            ),
            ("GET", f"/api/v1/contacts?cursor={cursor(NEAR, 'x')}", None, "query", "cursor"),
            ("GET", f"/api/v1/calls?cursor={cursor(FAR, 'x')}", None, "query", "cursor"),
            (
                "POST",
                "/api/v1/subscriptions",
                {"url": "http://127.0.0.1:9/h", "from_seq": 2**64},
                "body",
                "from_seq",
            ),
            (
                "POST",
                f"/api/v1/subscriptions/{sub}/replay",
                {"from_seq": 1, "to_seq": 2**70},
                "body",
                "to_seq",
            ),
            ("GET", f"/api/v1/ws?after={2**64}", None, "query", "after"),
        ]
        wrong = []
        for method, path, body, where, field in cases:
            status, answer, headers = await d.call(method, path, ADMIN, body)
            fields = {(e.get("in"), e.get("field")) for e in answer.get("errors") or []}
            if (
                status != 422
                or not headers["Content-Type"].startswith(PROBLEM)
                or (where, field) not in fields
            ):
                wrong.append(f"{method} {path}: {status} {answer}")
        assert not wrong, "\n".join(wrong)
        # The conversation was not snoozed by any of it.
        doc = await d.svc.store.conversations.find_one({"_id": conv})
        assert doc is not None
        assert doc.get("status") != "snoozed"
