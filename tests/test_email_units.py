"""The pure parts of the e-mail channel: IMAP response reading, batching, the parsed mail
as an InboundMessage, composing replies, and the settings check in check-config."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from channels.base import Attachment, OutboundMessage, SendError
from channels.email.channel import (
    EmailChannel,
    MailboxSettings,
    compose,
    inbound_from_mail,
    reply_subject,
    thread_references,
)
from channels.email.imap import _fetched, _search_uids, uid_set
from channels.email.mime import parse_mail
from config.loader import ConfigError, load_config
from config.models import ChannelAccount
from config.settings import DEFAULT_CONFIG_DIR
from ingest.mail_sync import _batches, _message_id

ACCOUNT = ChannelAccount(
    channel="email",
    account="sales",
    source="mail_sales",
    settings={"host": "imap.example.test", "user": "sales@example.test"},
)


def test_uid_sets_are_compressed_ranges() -> None:
    assert uid_set([1, 2, 3, 7, 9, 10]) == "1:3,7,9:10"
    assert uid_set([5]) == "5"
    assert uid_set([3, 1, 2, 2]) == "1:3"


def test_search_answers_with_and_without_the_keyword() -> None:
    assert _search_uids([b"SEARCH 4 9 12", b"Search completed."]) == [4, 9, 12]
    assert _search_uids([b"4 9 12", b"Search completed (0.001 secs)."]) == [4, 9, 12]
    assert _search_uids([b"SEARCH", b"Search completed."]) == []


def test_fetch_reads_uid_before_or_after_the_literal() -> None:
    lines: list[bytes | bytearray] = [
        b"1 FETCH (UID 10 BODY[] {5}",
        bytearray(b"hello"),
        b")",
        # Gmail puts UID after the literal.
        b"2 FETCH (BODY[] {5}",
        bytearray(b"world"),
        b" UID 11)",
        b"Fetch completed.",
    ]
    assert [(f.uid, f.data) for f in _fetched(lines)] == [(10, b"hello"), (11, b"world")]


def test_batches_respect_count_and_bytes() -> None:
    sizes = {1: 10, 2: 10, 3: 100, 4: 10, 5: 10}
    assert _batches([1, 2, 3, 4, 5], sizes, max_count=2, max_bytes=1000) == [[1, 2], [3, 4], [5]]
    # A mail bigger than the byte limit is a batch of its own.
    assert _batches([1, 2, 3, 4, 5], sizes, max_count=10, max_bytes=50) == [
        [1, 2],
        [3],
        [4, 5],
    ]


def test_message_id_header_block() -> None:
    assert _message_id(b"Message-ID: <a@b.c>\r\n\r\n") == "a@b.c"
    assert _message_id(b"Message-Id:\r\n <folded@b.c>\r\n\r\n") == "folded@b.c"
    assert _message_id(b"\r\n") is None


RAW_REPLY = (
    b"From: =?utf-8?b?0JjQstCw0L0=?= <Ivan@Example.RU>\r\n"
    b"Reply-To: orders@example.ru\r\n"
    b"To: sales@example.test\r\n"
    b"Subject: Re: Kitchen\r\n"
    b"Message-ID: <r2@example.ru>\r\n"
    b"In-Reply-To: <r1@example.test>\r\n"
    b"References: <r0@example.ru> <r1@example.test>\r\n"
    b"Date: Tue, 24 Nov 2026 09:30:00 +0300\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
    b"Yes, Thursday works.\r\n"
)


def test_parsed_mail_becomes_an_inbound_message() -> None:
    parsed = parse_mail(RAW_REPLY)
    msg = inbound_from_mail(ACCOUNT, parsed, [], folder="INBOX", uidvalidity=7, uid=3)
    assert msg.provider_id == "r2@example.ru"
    assert msg.sender.email == "Ivan@Example.RU"  # routing case-folds the identity
    assert msg.sender.name == "Иван"
    assert msg.reply_to == "orders@example.ru"
    assert msg.references == ["r1@example.test", "r0@example.ru"]
    assert msg.text.startswith("Yes, Thursday works.")
    assert msg.sent_at == datetime(2026, 11, 24, 6, 30, tzinfo=UTC)
    assert msg.automatic is False
    assert msg.meta["subject"] == "Re: Kitchen"
    assert (msg.meta["uidvalidity"], msg.meta["uid"]) == (7, 3)


def test_thread_references_dedupe_nearest_first() -> None:
    parsed = parse_mail(
        b"From: a@b.c\r\nMessage-ID: <x@b.c>\r\nIn-Reply-To: <p2@b.c>\r\n"
        b"References: <p0@b.c> <p1@b.c> <p2@b.c>\r\n\r\nhi\r\n"
    )
    assert thread_references(parsed) == ["p2@b.c", "p1@b.c", "p0@b.c"]


def test_a_bounce_is_filed_under_the_failed_address() -> None:
    raw = (
        b"Return-Path: <>\r\nFrom: MAILER-DAEMON@mx.example.test\r\nTo: sales@example.test\r\n"
        b"Subject: Undelivered Mail\r\nMessage-ID: <d1@mx>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nCould not deliver.\r\n"
        b"--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx\r\n\r\n"
        b"Final-Recipient: rfc822; Olga@Customer.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        b"\r\n--b--\r\n"
    )
    msg = inbound_from_mail(ACCOUNT, parse_mail(raw), [], folder="INBOX", uidvalidity=1, uid=1)
    assert msg.automatic is True
    assert msg.sender.email == "olga@customer.test"
    assert msg.reply_to is None
    assert msg.meta["from"] == "MAILER-DAEMON@mx.example.test"
    assert msg.meta["bounced_recipients"] == "olga@customer.test"


def test_reply_subject_does_not_stack_prefixes() -> None:
    assert reply_subject("Re: RE: Fwd: Ответ: Kitchen") == "Re: Kitchen"
    assert reply_subject("Kitchen") == "Re: Kitchen"
    assert reply_subject(None) == "Re:"


def test_compose_threads_and_marks_automatic_mail() -> None:
    settings = MailboxSettings.model_validate(
        {**ACCOUNT.settings, "display_name": "Mebel-Lux", "address": "hello@mebel.test"}
    )
    msg = OutboundMessage(
        id="m42",
        channel="email",
        account="sales",
        recipient="ivan@example.ru",
        text="See you on Thursday.",
        answers="r2@example.ru",
        references=["r0@example.ru", "r1@example.test"],
        subject="Re: Kitchen",
        automatic=True,
        attachments=[Attachment(name="plan.pdf", url="https://files.test/plan.pdf")],
    )
    mail = compose(settings, msg, datetime(2026, 11, 24, 10, 0, tzinfo=UTC))
    assert mail["From"] == "Mebel-Lux <hello@mebel.test>"
    assert mail["Message-ID"] == "<m42@mebel.test>"
    assert mail["In-Reply-To"] == "<r2@example.ru>"
    assert mail["References"] == "<r0@example.ru> <r1@example.test> <r2@example.ru>"
    assert mail["Subject"] == "Re: Kitchen"
    assert mail["Auto-Submitted"] == "auto-replied"
    body = mail.get_content()
    assert "See you on Thursday." in body
    assert "plan.pdf: https://files.test/plan.pdf" in body


@pytest.mark.parametrize(
    ("recipient", "automatic", "answers_automatic", "code"),
    [
        ("not an address", False, False, "email_bad_recipient"),
        ("ivan@example.ru", True, True, "email_auto_loop"),
    ],
)
def test_check_outbound_refuses_at_once(
    recipient: str, automatic: bool, answers_automatic: bool, code: str
) -> None:
    msg = OutboundMessage(
        id="m1",
        channel="email",
        account="sales",
        recipient=recipient,
        automatic=automatic,
        answers_automatic=answers_automatic,
    )
    with pytest.raises(SendError) as info:
        EmailChannel().check_outbound(ACCOUNT, msg)
    assert info.value.code == code
    assert info.value.retryable is False


def test_operators_may_answer_automatic_mail() -> None:
    msg = OutboundMessage(
        id="m1", channel="email", account="sales", recipient="a@b.ru", answers_automatic=True
    )
    EmailChannel().check_outbound(ACCOUNT, msg)  # no error


def test_check_config_names_bad_mailbox_settings(tmp_path: Path) -> None:
    target = tmp_path / "config"
    shutil.copytree(DEFAULT_CONFIG_DIR, target, ignore=shutil.ignore_patterns("*.py", "__*"))
    path = target / "channels.yaml"
    text = path.read_text(encoding="utf-8")
    text = text.replace("      port: 993\n", "      port: imaps\n", 1)
    text = text.replace("      folder: INBOX\n", "      folder: INBOX\n      idel: true\n", 1)
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(target)
    found = {(p.key, p.line) for p in info.value.problems}
    lines = text.splitlines()
    port_line = next(i for i, line in enumerate(lines, 1) if "port: imaps" in line)
    idel_line = next(i for i, line in enumerate(lines, 1) if "idel: true" in line)
    assert ("accounts[2].settings.port", port_line) in found
    assert ("accounts[2].settings.idel", idel_line) in found
    assert len(info.value.problems) == 2
