"""E-mail end to end: a real Dovecot (IMAP) and a real SMTP server (aiosmtpd) around the
running service — new mail becomes a lead, replies thread both ways, automatic mail never
creates leads, and intake survives IDLE, outages, UIDVALIDITY changes and two pollers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import pytest

from channels.email.imap import ImapSession
from crm_store import files, mailboxes
from crm_store import outbox as outbox_store
from crm_store.store import Store
from inbox.replies import reply
from tests.helpers import wait_for
from tests.mail_support import (
    MAIL_PASSWORD,
    Dovecot,
    append,
    deliver_to_maildir,
    dovecot_available,
    email_account,
    folder_messages,
    imap_client,
    mail,
    mail_config,
    routed_mail,
    seen,
    smtp_sink,
)
from tests.service import api_body, in_process

pytestmark = pytest.mark.skipif(
    not dovecot_available(), reason="Dovecot is not installed (make test installs it)"
)

SALES = "sales@example.test"
OPT = "opt@example.test"


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    server = Dovecot({SALES: MAIL_PASSWORD, OPT: MAIL_PASSWORD})
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


def bounce(failed: str, original_id: str) -> bytes:
    """A Postfix-style DSN: multipart/report with a message/delivery-status part."""
    return (
        "Return-Path: <>\r\n"
        "From: MAILER-DAEMON@mx.example.test (Mail Delivery System)\r\n"
        f"To: {SALES}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "Date: Mon, 23 Nov 2026 12:00:00 +0300\r\n"
        "Message-ID: <dsn-1@mx.example.test>\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B1"\r\n'
        "\r\n"
        "--B1\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
        "This is the mail system at host mx.example.test.\r\n"
        "I'm sorry to have to inform you that your message could not be delivered.\r\n"
        "\r\n--B1\r\n"
        "Content-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.test\r\n\r\n"
        f"Final-Recipient: rfc822; {failed}\r\n"
        "Action: failed\r\n"
        "Status: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 user unknown\r\n"
        "\r\n--B1\r\n"
        "Content-Type: text/rfc822-headers\r\n\r\n"
        f"Message-ID: <{original_id}>\r\n"
        f"To: {failed}\r\n"
        "\r\n--B1--\r\n"
    ).encode()


async def wait_state(store: Any, message_id: str, *states: str) -> dict[str, Any]:
    async def done() -> Any:
        doc = await store.messages.find_one({"_id": message_id})
        return doc if doc and doc.get("state") in states else None

    await wait_for(done, timeout=60, message=f"message {message_id} not {states}")
    doc = await store.messages.find_one({"_id": message_id})
    assert doc is not None
    return doc


async def test_new_mail_is_a_lead_and_replies_thread_both_ways(
    mongo_uri: str, db_name: str, dovecot: Dovecot
) -> None:
    async with smtp_sink() as sink:
        cfg = mail_config(email_account("sales", "mail_sales", dovecot, SALES, sink))
        async with in_process(mongo_uri, db_name, cfg) as svc:
            await append(
                dovecot,
                SALES,
                mail(
                    sender="Ivan Petrov <Ivan.Petrov@Customer.test>",
                    to=SALES,
                    subject="Kitchen order",
                    text="Hello! I need a kitchen for a small flat.",
                    message_id="q1@customer.test",
                ),
            )
            [first] = await routed_mail(svc.store, "sales", 1)
            assert first["decision"]["rule"] == "new_lead"
            assert first["text"].startswith("Hello! I need a kitchen")
            assert first["provider_id"] == "q1@customer.test"
            lead = await svc.store.leads.find_one({"_id": first["target"]["id"]})
            assert lead is not None
            assert (lead["pipeline_id"], lead["source_id"]) == ("leads", "mail_sales")
            contact = await svc.store.contacts.find_one({"_id": first["contact_id"]})
            assert contact is not None
            assert contact["emails"] == ["ivan.petrov@customer.test"]
            assert contact["name"] == "Ivan Petrov"
            conv = await svc.store.conversations.find_one({"_id": first["conversation_id"]})
            assert conv is not None
            assert conv["reply_to"] == "Ivan.Petrov@Customer.test"
            # Nothing was marked as read in the mailbox (BODY.PEEK[]).
            [kept] = await folder_messages(dovecot, SALES, "INBOX")
            assert kept["Message-ID"] == "<q1@customer.test>"
            assert await seen(dovecot, SALES) == [False]

            # The operator answers: SMTP from the mailbox, threaded, copied to Sent.
            out = await reply(svc.store, svc.service.config, conv["_id"], "We will call you.")
            sent = await wait_state(svc.store, out["_id"], "sent")
            await wait_for(lambda: asyncio.sleep(0, bool(sink.received)), timeout=10)
            [(mail_from, rcpts, _)] = sink.received
            [answer] = sink.messages()
            assert mail_from == SALES
            assert rcpts == ["Ivan.Petrov@Customer.test"]
            assert answer["Subject"] == "Re: Kitchen order"
            assert answer["In-Reply-To"] == "<q1@customer.test>"
            assert answer["References"] == "<q1@customer.test>"
            assert answer["Message-ID"] == f"<{out['_id']}@example.test>"
            assert answer["Auto-Submitted"] is None
            assert answer.get_content().strip() == "We will call you."
            assert sent["provider_id"] == f"{out['_id']}@example.test"
            copies = await folder_messages(dovecot, SALES, "Sent")
            assert [c["Message-ID"] for c in copies] == [answer["Message-ID"]]

            # A colleague of the customer answers our reply: same conversation, same lead.
            await append(
                dovecot,
                SALES,
                mail(
                    sender="Petr <petr@customer.test>",
                    to=SALES,
                    subject="Re: Kitchen order",
                    text="Please call me instead.\n\n> We will call you.",
                    message_id="q2@customer.test",
                    in_reply_to=sent["provider_id"],
                    references=["q1@customer.test", sent["provider_id"]],
                ),
            )
            _, second = await routed_mail(svc.store, "sales", 2)
            assert second["conversation_id"] == first["conversation_id"]
            assert second["decision"]["rule"] == "conversation"
            assert second["target"]["id"] == lead["_id"]
            assert await svc.store.leads.count_documents({}) == 1


async def test_known_contact_with_deal_and_the_dedicated_mailbox(
    mongo_uri: str, db_name: str, dovecot: Dovecot
) -> None:
    cfg = mail_config(
        email_account("sales", "mail_sales", dovecot, SALES),
        email_account("wholesale", "mail_wholesale", dovecot, OPT),
    )
    async with in_process(mongo_uri, db_name, cfg) as svc:
        # An order from the shop opened a deal for this customer.
        status, _ = await svc.client.post_api(
            api_body("order-1", email="anna@shop-customer.test", name="Anna"), account="shop"
        )
        assert status == 200
        await svc.routed()
        deal = await svc.store.deals.find_one({})
        assert deal is not None
        await append(
            dovecot,
            SALES,
            mail(
                sender="ANNA@Shop-Customer.TEST",
                to=SALES,
                subject="Delivery date?",
                text="When will my order arrive?",
                message_id="a1@shop-customer.test",
            ),
        )
        [msg] = await routed_mail(svc.store, "sales", 1)
        assert msg["decision"]["rule"] == "active_deal"
        assert msg["target"] == {"kind": "deal", "id": deal["_id"], "open": True}
        assert await svc.store.leads.count_documents({}) == 0

        await append(
            dovecot,
            OPT,
            mail(
                sender="buyer@wholesale.test",
                to=OPT,
                subject="Price list",
                text="Send the wholesale price list, please.",
            ),
        )
        [opt] = await routed_mail(svc.store, "wholesale", 1)
        assert opt["provider_id"].startswith("sha256:")  # no Message-ID: the content hash
        lead = await svc.store.leads.find_one({"_id": opt["target"]["id"]})
        assert lead is not None
        assert (lead["pipeline_id"], lead["source_id"]) == ("wholesale", "mail_wholesale")
        assert lead["responsible_id"] in {u.id for u in svc.service.config.line_users("wholesale")}


async def test_automatic_mail_never_creates_leads_and_bounces_mark_the_address(
    mongo_uri: str, db_name: str, dovecot: Dovecot
) -> None:
    async with smtp_sink() as sink:
        cfg = mail_config(email_account("sales", "mail_sales", dovecot, SALES, sink))
        async with in_process(mongo_uri, db_name, cfg) as svc:
            await append(
                dovecot,
                SALES,
                mail(
                    sender="robot@vendor.test",
                    to=SALES,
                    subject="Out of office",
                    text="I am away until Monday.",
                    message_id="ooo@vendor.test",
                    headers={"Auto-Submitted": "auto-replied"},
                ),
                mail(
                    sender="news@list.test",
                    to=SALES,
                    subject="Weekly digest",
                    text="News of the week.",
                    message_id="digest@list.test",
                    headers={"List-Id": "<digest.list.test>", "Precedence": "bulk"},
                ),
                mail(
                    sender="olga@customer.test",
                    to=SALES,
                    subject="Wardrobe",
                    text="I would like a wardrobe.",
                    message_id="o1@customer.test",
                ),
            )
            msgs = await routed_mail(svc.store, "sales", 3)
            rules = {m["provider_id"]: m["decision"]["rule"] for m in msgs}
            assert rules == {
                "ooo@vendor.test": "automatic",
                "digest@list.test": "automatic",
                "o1@customer.test": "new_lead",
            }
            assert await svc.store.leads.count_documents({}) == 1
            olga = next(m for m in msgs if m["provider_id"] == "o1@customer.test")

            # Our reply to Olga bounces: the address is marked failing on her contact and
            # the bounce lands in her conversation, never a lead of its own.
            await append(dovecot, SALES, bounce("olga@customer.test", "r1@example.test"))
            *_, dsn = await routed_mail(svc.store, "sales", 4)
            assert dsn["automatic"] is True
            assert dsn["conversation_id"] == olga["conversation_id"]

            async def marked() -> Any:
                return await svc.store.contacts.find_one(
                    {"_id": olga["contact_id"], "failing_emails": {"$exists": True}}
                )

            await wait_for(marked, timeout=20)
            contact = await marked()
            assert contact["failing_emails"] == ["olga@customer.test"]

            async def failing_event() -> Any:
                return await svc.store.events.find_one({"type": "contact.address_failing"})

            await wait_for(failing_event, timeout=10)
            failing = await failing_event()
            assert failing["data"]["address"] == "olga@customer.test"
            assert await svc.store.leads.count_documents({}) == 1

            # Automation must not answer the bounce; an operator may.
            conv = await svc.store.conversations.find_one({"_id": olga["conversation_id"]})
            assert conv is not None
            auto = await outbox_store.queue(svc.store, conv, text="Thanks!", automatic=True)
            failed = await wait_state(svc.store, auto["_id"], "failed")
            assert failed["error_code"] == "email_auto_loop"
            manual = await reply(svc.store, svc.service.config, conv["_id"], "Is it olga@…?")
            await wait_state(svc.store, manual["_id"], "sent")
            assert len(sink.received) == 1


async def test_automatic_messages_carry_auto_submitted(
    mongo_uri: str, db_name: str, dovecot: Dovecot
) -> None:
    async with smtp_sink() as sink:
        cfg = mail_config(email_account("sales", "mail_sales", dovecot, SALES, sink))
        async with in_process(mongo_uri, db_name, cfg) as svc:
            await append(
                dovecot,
                SALES,
                mail(sender="p@customer.test", to=SALES, subject="Sofa", text="A sofa, please."),
            )
            [m] = await routed_mail(svc.store, "sales", 1)
            conv = await svc.store.conversations.find_one({"_id": m["conversation_id"]})
            assert conv is not None
            auto = await outbox_store.queue(svc.store, conv, text="Got it", automatic=True)
            await wait_state(svc.store, auto["_id"], "sent")
            [answer] = sink.messages()
            assert answer["Auto-Submitted"] == "auto-replied"
            assert answer["Subject"] == "Re: Sofa"


async def test_smtp_failures_retry_or_fail_with_the_reason(
    mongo_uri: str, db_name: str, dovecot: Dovecot
) -> None:
    async with smtp_sink() as sink:
        good = email_account("sales", "mail_sales", dovecot, SALES, sink)
        cfg = mail_config(good)
        async with in_process(mongo_uri, db_name, cfg) as svc:
            await append(
                dovecot,
                SALES,
                mail(sender="k@customer.test", to=SALES, subject="Chair", text="A chair."),
            )
            [m] = await routed_mail(svc.store, "sales", 1)
            sink.fail_next = 1  # 451: try again later
            out = await reply(svc.store, svc.service.config, m["conversation_id"], "Sure.")
            sent = await wait_state(svc.store, out["_id"], "sent")
            assert sent["attempts"] == 2
            assert len(sink.received) == 1
        bad_env = "OMNIROUTE_SECRET_MAIL_SALES_WRONG"
        import os

        os.environ[bad_env] = "not-the-password"
        bad = good.model_copy(update={"settings": {**good.settings, "smtp_password_env": bad_env}})
        async with in_process(mongo_uri, db_name, mail_config(bad)) as svc:
            out = await reply(svc.store, svc.service.config, m["conversation_id"], "Again.")
            failed = await wait_state(svc.store, out["_id"], "failed")
            assert failed["error_code"] == "smtp_auth_failed"
            assert len(sink.received) == 1


async def test_mark_seen_flags_what_is_stored(
    mongo_uri: str, db_name: str, dovecot: Dovecot
) -> None:
    acct = email_account("sales", "mail_sales", dovecot, SALES, mark_seen=True)
    async with in_process(mongo_uri, db_name, mail_config(acct)) as svc:
        await append(
            dovecot,
            SALES,
            *(mail(sender=f"r{i}@c.test", to=SALES, subject="s", text=f"t{i}") for i in range(3)),
        )
        await routed_mail(svc.store, "sales", 3)

        async def all_seen() -> bool:
            return await seen(dovecot, SALES) == [True, True, True]

        await wait_for(all_seen, timeout=10)


async def test_idle_push_routes_new_mail_without_polling(
    mongo_uri: str, db_name: str, dovecot: Dovecot
) -> None:
    # Polling every 5 minutes: only the IDLE push can bring the mail in quickly.
    acct = email_account("sales", "mail_sales", dovecot, SALES, poll_s=300.0, lease_s=900.0)
    async with in_process(mongo_uri, db_name, mail_config(acct)) as svc:
        key = mailboxes.mailbox_key("sales", "INBOX")

        async def idle() -> bool:
            cp = await mailboxes.checkpoint(svc.store, key)
            return cp.uidvalidity is not None

        await wait_for(idle, timeout=10)
        await asyncio.sleep(0.5)  # the first sync found nothing; the poller is in IDLE
        started = time.monotonic()
        await append(
            dovecot,
            SALES,
            mail(sender="fast@customer.test", to=SALES, subject="Now", text="Quick question"),
        )
        [m] = await routed_mail(svc.store, "sales", 1, timeout=30)
        assert m["decision"]["rule"] == "new_lead"
        # Far below the poll interval: pushed, not polled (the figure is in make bench).
        assert time.monotonic() - started < 60


async def test_server_outage_then_everything_that_arrived_meanwhile(
    mongo_uri: str, db_name: str, dovecot: Dovecot
) -> None:
    acct = email_account("sales", "mail_sales", dovecot, SALES, poll_s=0.5, timeout_s=3.0)
    async with in_process(mongo_uri, db_name, mail_config(acct)) as svc:
        await append(dovecot, SALES, mail(sender="a@c.test", to=SALES, subject="1", text="first"))
        await routed_mail(svc.store, "sales", 1)
        dovecot.stop()
        for i in range(25):
            deliver_to_maildir(
                dovecot,
                SALES,
                mail(sender=f"c{i}@c.test", to=SALES, subject=f"m{i}", text=f"during {i}"),
                f"m{i}",
            )
        await asyncio.sleep(2.0)  # the poller fails and backs off meanwhile
        dovecot.start()
        msgs = await routed_mail(svc.store, "sales", 26, timeout=30)
        assert len(msgs) == 26
        assert len({m["provider_id"] for m in msgs}) == 26
        assert await svc.store.intake.count_documents({}) == 26
        assert await svc.store.leads.count_documents({}) == 26


async def test_uidvalidity_change_resyncs_without_duplicates(
    mongo_uri: str, db_name: str, dovecot: Dovecot
) -> None:
    acct = email_account("sales", "mail_sales", dovecot, SALES, poll_s=0.5, timeout_s=3.0)
    async with in_process(mongo_uri, db_name, mail_config(acct)) as svc:
        await append(
            dovecot,
            SALES,
            mail(sender="a@c.test", to=SALES, subject="1", text="one", message_id="u1@c.test"),
            mail(sender="b@c.test", to=SALES, subject="2", text="two"),  # no Message-ID
        )
        await routed_mail(svc.store, "sales", 2)
        key = mailboxes.mailbox_key("sales", "INBOX")
        before = await mailboxes.checkpoint(svc.store, key)
        dovecot.stop()
        dovecot.reset_uidvalidity(SALES)
        await asyncio.sleep(1.1)  # UIDVALIDITY is a timestamp in seconds
        dovecot.start()
        await append(dovecot, SALES, mail(sender="c@c.test", to=SALES, subject="3", text="three"))
        msgs = await routed_mail(svc.store, "sales", 3, timeout=30)

        async def resynced() -> bool:
            doc = await svc.store["mailboxes"].find_one({"_id": key})
            return bool(doc and doc.get("resyncs") == 1 and doc["last_uid"] == 3)

        await wait_for(resynced, timeout=10)
        after = await mailboxes.checkpoint(svc.store, key)
        assert after.uidvalidity != before.uidvalidity
        assert len(msgs) == 3
        assert await svc.store.intake.count_documents({}) == 3


async def test_two_services_one_poller_and_takeover(
    mongo_uri: str, db_name: str, dovecot: Dovecot
) -> None:
    acct = email_account("sales", "mail_sales", dovecot, SALES, poll_s=0.5, lease_s=3.0)
    cfg = mail_config(acct)
    lease = "mailbox:" + mailboxes.mailbox_key("sales", "INBOX")
    first = contextlib.AsyncExitStack()
    a = await first.enter_async_context(in_process(mongo_uri, db_name, cfg))
    try:

        async def a_holds() -> bool:
            return await mailboxes.holder(a.store, lease) == a.service.owner

        await wait_for(a_holds, timeout=10)
        async with in_process(mongo_uri, db_name, cfg) as b:
            await append(
                dovecot,
                SALES,
                *(
                    mail(sender=f"s{i}@c.test", to=SALES, subject=str(i), text=f"mail {i}")
                    for i in range(10)
                ),
            )
            await routed_mail(a.store, "sales", 10)
            await asyncio.sleep(2 * 3.0)  # two lease periods: b never takes the mailbox
            assert await a_holds()
            assert await a.store.intake.count_documents({}) == 10
            held = await a.store["leases"].find_one({"_id": lease})
            assert held is not None
            assert held["takeovers"] == 1  # taken once, by a, and only renewed since

            await first.aclose()  # a stops (its lease is released); b takes over

            async def b_holds() -> bool:
                return await mailboxes.holder(b.store, lease) == b.service.owner

            await wait_for(b_holds, timeout=15)
            await append(
                dovecot, SALES, mail(sender="late@c.test", to=SALES, subject="L", text="late")
            )
            *_, late = await routed_mail(b.store, "sales", 11)
            assert late["sender"]["email"] == "late@c.test"
            assert await b.store.intake.count_documents({}) == 11
    finally:
        await first.aclose()


async def test_attachments_broken_mail_and_the_safety_net(
    mongo_uri: str, db_name: str, dovecot: Dovecot
) -> None:
    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 400  # ~100 KB, arbitrary bytes
    with_files = EmailMessage()
    with_files["From"] = "Nina <nina@customer.test>"
    with_files["To"] = SALES
    with_files["Subject"] = "Plan of my kitchen"
    with_files["Message-ID"] = "<plan@customer.test>"
    with_files.set_content("The plan and a photo are attached.")
    with_files.add_attachment(pdf, maintype="application", subtype="pdf", filename="План.pdf")
    with_files.add_attachment(b"\x89PNG\r\n" + b"x" * 300, maintype="image", subtype="png")
    garbage = bytes(range(1, 256)) * 20  # not a mail at all (no NUL: IMAP literals)
    await append(
        dovecot,
        SALES,
        mail(sender="m1@c.test", to=SALES, subject="one", text="one", message_id="s1@c.test"),
        mail(sender="m2@c.test", to=SALES, subject="two", text="two", message_id="s2@c.test"),
        with_files.as_bytes(),
        garbage,
    )
    # As if an earlier sync had skipped UIDs 1–2: the checkpoint is ahead of intake.
    client = await imap_client(dovecot, SALES)
    try:
        uidvalidity = await ImapSession(client, 10).select("INBOX")
    finally:
        await client.logout()
    store = Store.open(mongo_uri, db_name)
    key = mailboxes.mailbox_key("sales", "INBOX")
    await mailboxes.start_epoch(store, key, uidvalidity, None)
    await mailboxes.advance(store, key, uidvalidity, 2)

    acct = email_account("sales", "mail_sales", dovecot, SALES, full_scan_s=1.0)
    async with in_process(mongo_uri, db_name, mail_config(acct)) as svc:
        msgs = await routed_mail(svc.store, "sales", 3)
        by_id = {m["provider_id"]: m for m in msgs}
        # The safety net found the two mails below the checkpoint.
        assert {"s1@c.test", "s2@c.test", "plan@customer.test"} <= set(by_id)
        cp = await svc.store["mailboxes"].find_one({"_id": key})
        assert cp is not None
        assert cp["full_scan_found"] == 2

        plan = by_id["plan@customer.test"]
        atts = plan["attachments"]
        assert [(a.get("name"), a["mime_type"], a["size"]) for a in atts] == [
            ("План.pdf", "application/pdf", len(pdf)),
            (None, "image/png", 306),
        ]
        assert await files.read(svc.store, atts[0]["file_id"]) == pdf

        # Mail nothing can be read from is kept as a broken intake record with its
        # reason and raw bytes, for a person to look at; it is never routed.
        record = await svc.store.intake.find_one({"status": "broken"})
        assert record is not None
        assert record["error"] == "broken mail: binary data, not a message"
        assert record["message"]["meta"]["broken"] == "binary data, not a message"
        assert bytes(record["raw"]).replace(b"\r\n", b"\n") == garbage.replace(b"\r\n", b"\n")
        assert not await svc.store.messages.find_one({"_id": record["_id"]})
        assert await svc.store.leads.count_documents({}) == 3
    await store.close()


async def explain(mongo_uri: str, db_name: str, message_id: str) -> str:
    """``omniroute explain <id>`` as an operator runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIROUTE_")}
    env.update(OMNIROUTE_MONGODB_URI=mongo_uri, OMNIROUTE_DB_NAME=db_name)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ingest.cli", "explain", message_id, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_automatic_rules_the_allow_list_and_broken_mail_say_why(
    mongo_uri: str, db_name: str, dovecot: Dovecot
) -> None:
    site_form = (
        "From: Kuhni Site <noreply@forms.kuhni.test>\r\n"
        "Reply-To: =?UTF-8?B?0JjQstCw0L0g0J/QtdGC0YDQvtCy?= <ivan@customer.test>\r\n"
        f"To: {SALES}\r\nSubject: Site form\r\nMessage-ID: <form-1@forms.kuhni.test>\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        "Name: Ivan Petrov\r\nPhone: +7 903 111-22-33\r\nI need a kitchen.\r\n"
    ).encode()
    newsletter = mail(
        sender="Shop News <news@shop.test>",
        to=SALES,
        subject="Spring sale",
        text="Everything -20%.",
        message_id="news-1@shop.test",
        headers={"List-Unsubscribe": "<https://shop.test/u/1>"},
    )
    no_from = (
        f"Reply-To: Olga Smirnova <olga@customer.test>\r\nTo: {SALES}\r\n"
        "Subject: Invoice\r\nMessage-ID: <nofrom-1@customer.test>\r\n\r\n"
        "Please send the invoice.\r\n"
    ).encode()
    garbage = bytes(range(1, 256)) * 8
    await append(dovecot, SALES, site_form, newsletter, no_from, garbage)
    acct = email_account("sales", "mail_sales", dovecot, SALES).model_copy(
        update={"customer_senders": ["*@forms.kuhni.test"]}
    )
    async with in_process(mongo_uri, db_name, mail_config(acct)) as svc:
        msgs = {m["provider_id"]: m for m in await routed_mail(svc.store, "sales", 3)}
        broken = await svc.store.intake.find_one({"status": "broken"})
        assert broken is not None

        form = msgs["form-1@forms.kuhni.test"]
        assert form["sender"] == {"email": "ivan@customer.test", "name": "Иван Петров"}
        assert form["decision"]["rule"] == "new_lead"
        assert form["decision"]["reason"].endswith(
            "; noreply@forms.kuhni.test is a customer sender of this mailbox; "
            "the customer is the Reply-To"
        )
        news = msgs["news-1@shop.test"]
        assert news["decision"]["rule"] == "automatic"
        assert news["decision"]["reason"].endswith(
            "; automatic: List-Unsubscribe header (list or newsletter mail)"
        )
        olga = msgs["nofrom-1@customer.test"]
        assert olga["sender"]["email"] == "olga@customer.test"
        assert olga["decision"]["reason"].endswith("; sender read from Reply-To (no usable From)")
        assert await svc.store.leads.count_documents({}) == 2

    out = await explain(mongo_uri, db_name, news["_id"])
    assert "automatic: List-Unsubscribe header (list or newsletter mail)" in out
    out = await explain(mongo_uri, db_name, broken["_id"])
    assert "intake     status broken" in out
    assert "error: broken mail: binary data, not a message" in out
