"""Files reaching the customer (docs/documents.md "Sending"): an operator's uploads in an
e-mail reply attached as MIME parts through the real SMTP server while they fit the
mailbox's cap, the rest as links said to be too big; the MIME composition itself for
awkward names and types."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import pytest

from channels.base import Attachment, OutboundMessage
from channels.email.channel import MailFile, compose, mailbox_settings, pick_attachments
from config.models import ChannelAccount
from crm_store import tokens
from crm_store.documents import stable_id
from tests.helpers import free_port, wait_for
from tests.mail_support import SmtpSink, mail_config, smtp_sink
from tests.service import in_process
from tests.test_documents import ADMIN, ANNA, Api, api, seed_deal

CUSTOMER = "ivan@customer.test"


def smtp_only_account(sink: SmtpSink, **settings: Any) -> ChannelAccount:
    """An e-mail account sending through ``sink``; its IMAP side points at a closed port
    (the poller just retries: these tests only send)."""
    os.environ["OMNIROUTE_SECRET_MAIL_DOCS"] = "unused"
    os.environ["OMNIROUTE_SECRET_MAIL_DOCS_SMTP"] = sink.password
    return ChannelAccount(
        channel="email",
        account="docs",
        source="mail_sales",
        secret_env="OMNIROUTE_SECRET_MAIL_DOCS",
        settings={
            "host": "127.0.0.1",
            "port": free_port(),
            "tls": False,
            "user": sink.user,
            "backoff_max_s": 5.0,
            "smtp_host": "127.0.0.1",
            "smtp_port": sink.port,
            "smtp_security": "none",
            "smtp_password_env": "OMNIROUTE_SECRET_MAIL_DOCS_SMTP",
            **settings,
        },
    )


async def upload(a: Api, data: bytes, name: str, ctype: str) -> tuple[int, Any]:
    """As a browser uploads: the name as UTF-8 in the part's header (aiohttp's client
    would percent-encode it)."""
    form = aiohttp.FormData(quote_fields=False)
    form.add_field("file", data, filename=name, content_type=ctype)
    headers = {"Authorization": f"Bearer {a.tokens[ANNA]}"}
    url = f"{a.svc.client.base}/api/v1/files"
    async with a.svc.client.http.post(url, data=form, headers=headers) as r:
        return r.status, orjson.loads(await r.read())


async def test_operator_uploads_attached_within_the_cap_linked_beyond(
    mongo_uri: str, db_name: str
) -> None:
    async with smtp_sink() as sink:
        cfg = mail_config(smtp_only_account(sink, max_send_attachments_bytes=50_000))
        async with api(mongo_uri, db_name, cfg) as a:
            store = a.svc.store
            deal = await seed_deal(store, "Вложения")
            found = await store.deals.find_one({"_id": deal})
            assert found is not None
            contact = found["contact_id"]
            conv = stable_id("conversation", "mail-docs")
            await store.conversations.insert_one(
                {
                    "_id": conv,
                    "channel": "email",
                    "account": "docs",
                    "contact_id": contact,
                    "reply_to": CUSTOMER,
                    "department": "sales",
                    "assignee_id": ANNA,
                    "target": {"kind": "deal", "id": deal, "open": True},
                }
            )
            small = b"%PDF-1.4\n" + bytes(range(256)) * 100  # 25 609 bytes: fits
            big = b"\x89PNG\r\n\x1a\n" + b"\x00\xff" * 30_000  # 60 008 bytes: over
            uploaded = [
                await upload(a, small, "Смета №7.pdf", "application/pdf"),
                await upload(a, big, "фото кухни.png", "image/png"),
            ]
            assert [s for s, _ in uploaded] == [201, 201], uploaded
            status, msg = await a.call(
                "POST",
                f"/conversations/{conv}/messages",
                ANNA,
                {
                    "text": "Смета и фото",
                    "attachments": [{"file_id": f["file_id"]} for _, f in uploaded],
                },
            )
            assert status == 201, msg

            async def arrived() -> bool:
                return bool(sink.received)

            await wait_for(arrived, timeout=30, message="no mail reached the SMTP server")
            [out] = sink.messages()
            [part] = list(out.iter_attachments())
            assert (part.get_filename(), part.get_content_type()) == (
                "Смета №7.pdf",
                "application/pdf",
            )
            assert part.get_content() == small
            body = out.get_body(("plain",))
            assert body is not None
            lines = body.get_content().splitlines()
            assert lines[0] == "Смета и фото"
            note = mailbox_settings(cfg.account("email", "docs")).oversize_note
            i = lines.index(note)
            [link] = [ln for ln in lines[i + 1 :] if ln.startswith("фото кухни.png: ")]
            async with a.svc.client.http.get(link.split(": ", 1)[1]) as resp:
                assert (resp.status, await resp.read()) == (200, big)
            sent = await store.messages.find_one({"_id": msg["id"]})
            assert sent is not None
            assert sent["state"] == "sent"


def test_compose_attaches_what_it_is_given_and_links_the_rest() -> None:
    account = ChannelAccount(
        channel="email",
        account="x",
        source="s",
        secret_env="X",
        settings={"host": "h", "user": "me@shop.test", "max_send_attachments_bytes": 10},
    )
    settings = mailbox_settings(account)
    msg = OutboundMessage(
        id="m1",
        channel="email",
        account="x",
        recipient=CUSTOMER,
        text="Документы",
        attachments=[
            Attachment(file_id="a", url="https://crm/files/a", name="Акт.docx"),
            Attachment(file_id="b", url="https://crm/files/b", name="big.zip"),
            Attachment(file_id="a", url="https://crm/files/a", name="Акт.docx"),
            Attachment(url="https://crm/files/c", name="linked"),
        ],
    )
    # In order, while they fit; a repeated file once; an unknown size never.
    assert pick_attachments(settings, msg, {"a": 6, "b": 6}) == ["a"]
    assert pick_attachments(settings, msg, {"b": 4, "a": 6}) == ["a", "b"]
    files = [
        MailFile("a", "Акт.docx", "text/plain", b"\x00\x01raw"),
        MailFile("zzz", "name\r\nBcc: x@evil.test", "nonsense", b"y"),
    ]
    mail = compose(settings, msg, datetime(2026, 12, 7, tzinfo=UTC), files)
    parts = list(mail.iter_attachments())
    # text/* and unreadable types go as application/octet-stream, bytes untouched.
    assert [p.get_content_type() for p in parts] == ["application/octet-stream"] * 2
    assert parts[0].get_content() == b"\x00\x01raw"
    assert "Bcc" not in mail
    text = mail.get_body(("plain",))
    assert text is not None
    lines = text.get_content().splitlines()
    assert lines[-3:] == [
        settings.oversize_note,
        "big.zip: https://crm/files/b",
        "linked: https://crm/files/c",
    ]


async def test_a_document_reaches_telegram_as_a_file_by_its_link(
    mongo_uri: str, db_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Telegram takes files: sendDocument with the signed link; our stored file id never
    reaches it as a Telegram file_id."""
    from tests import test_channel_telegram as tg

    monkeypatch.setenv(tg.TOKEN_ENV, tg.TOKEN)
    monkeypatch.setenv(tg.WEBHOOK_ENV, tg.WEBHOOK_SECRET)
    async with tg.service(mongo_uri, db_name) as (svc, fake):
        token, _ = await tokens.issue(svc.store, ADMIN)
        assert (await tg.post(svc, tg.update(body=tg.message("Пришлите договор"))))[0] == 200
        await svc.routed()
        conv = await svc.store.conversations.find_one({"channel": "telegram"})
        assert conv is not None
        deal = await seed_deal(svc.store, "Телеграм")
        await svc.store.deals.update_one(
            {"_id": deal}, {"$set": {"contact_id": conv["contact_id"]}}
        )
        a = Api(svc, {ADMIN: token})
        status, doc = await a.call("POST", f"/deals/{deal}/documents", ADMIN, {"type": "contract"})
        assert status == 201, doc
        status, sent = await a.call("POST", f"/documents/{doc['id']}/send", ADMIN, {})
        assert status == 200, sent
        assert sent["conversation_id"] == conv["_id"]

        async def provider_got_it() -> list[Any]:
            return [r for r in fake.requests if r.api_method == "sendDocument"]

        await wait_for(provider_got_it, timeout=15, message="no sendDocument reached Telegram")
        [req] = await provider_got_it()
        link = str(req.params.get("document"))
        assert link.startswith(f"{svc.client.base}/files/{doc['file_id']}?exp="), link
        _, raw = await a.call("GET", f"/documents/{doc['id']}/file", ADMIN)
        async with svc.client.http.get(link) as resp:
            assert (resp.status, await resp.read()) == (200, raw)


async def test_a_document_reaches_whatsapp_as_a_document_message(
    mongo_uri: str, db_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WhatsApp takes files: one document message with the signed link, the file name and
    the text as its caption."""
    from tests import test_channel_whatsapp as wa
    from tests.fakes.whatsapp import FakeWhatsApp

    for name, value in wa.ENV.items():
        monkeypatch.setenv(name, value)
    async with (
        FakeWhatsApp(wa.TOKEN) as fake,
        in_process(mongo_uri, db_name, config=wa.wa_config(fake.base)) as svc,
    ):
        token, _ = await tokens.issue(svc.store, ADMIN)
        conv = await wa.conversation_with(svc, "Пришлите договор")
        deal = await seed_deal(svc.store, "Ватсап")
        await svc.store.deals.update_one(
            {"_id": deal}, {"$set": {"contact_id": conv["contact_id"]}}
        )
        a = Api(svc, {ADMIN: token})
        status, doc = await a.call("POST", f"/deals/{deal}/documents", ADMIN, {"type": "contract"})
        assert status == 201, doc
        status, sent = await a.call(
            "POST", f"/documents/{doc['id']}/send", ADMIN, {"text": "Ваш договор"}
        )
        assert status == 200, sent

        async def provider_took_it() -> bool:
            found = await svc.store.messages.find_one({"_id": sent["message_id"]})
            return found is not None and found.get("provider_id") is not None

        await wait_for(provider_took_it, timeout=15, message="no document reached WhatsApp")
        [req] = [r.json() for r in fake.requests if r.method == "POST"]
        assert req["type"] == "document"
        media = req["document"]
        assert (media["filename"], media["caption"]) == (
            f"Договор {doc['number']} v1.docx",
            "Ваш договор",
        )
        assert media["link"].startswith(f"{svc.client.base}/files/{doc['file_id']}?exp=")
        _, raw = await a.call("GET", f"/documents/{doc['id']}/file", ADMIN)
        async with svc.client.http.get(media["link"]) as resp:
            assert (resp.status, await resp.read()) == (200, raw)
        message = await svc.store.messages.find_one({"_id": sent["message_id"]})
        assert message is not None
        assert message["provider_id"] == fake.sent[0]
