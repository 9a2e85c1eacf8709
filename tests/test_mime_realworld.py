"""Real-world mail the first parser got wrong (issue 16 §2), one class per test.

Each mail is written here as bytes in the shape the sender's software produces, and each
test asserts what a person reads in it: the sender's address and name, the subject and
the body text. Classes: the header block (a malformed line, junk before the first field,
a space before the colon), where the sender is (several From, Sender, Reply-To,
Return-Path), addresses (dot-less domains, comments, quoted pairs), charsets (ISO-2022-JP
with Microsoft's extensions; undeclared or mislabelled Shift_JIS, GB2312/GBK, Big5,
EUC-KR, KOI8-R, windows-1251), forwards and placeholder text parts, automatic mail
(no-reply senders, ticketing and monitoring systems, newsletters) and the mailbox
allow-list.
"""

from __future__ import annotations

import base64

import pytest

from channels.email.channel import inbound_from_mail
from channels.email.mime import AutoKind, ParsedMail, parse_mail
from config.models import ChannelAccount

TO = "To: sales@kuhni.example\r\nDate: Mon, 23 Nov 2026 10:00:00 +0300\r\n"
BODY = "\r\nI would like a quote for the Modern kitchen set.\r\n"


def facts(mail: ParsedMail) -> tuple[str | None, str | None, str, str]:
    return mail.from_addr, mail.from_name, mail.subject, mail.text


# ---------------------------------------------------------------- the header block


def test_a_line_without_colon_does_not_end_the_header_block() -> None:
    raw = (
        "Received: from mx.ru.example (mx.ru.example [192.0.2.10])\r\n"
        "\tby mx.kuhni.example with ESMTP id 4Xk9\r\n"
        "X-Spam-Report: score=0.1\r\n"
        "  tests: none\r\n"
        "this line lost its header name in a broken relay\r\n"
        "From: Ivan Petrov <ivan@ru.example>\r\n"
        "Subject: Kitchen quote\r\n"
        "Message-ID: <q1@ru.example>\r\n" + TO + BODY
    ).encode()
    mail = parse_mail(raw)
    assert facts(mail) == (
        "ivan@ru.example",
        "Ivan Petrov",
        "Kitchen quote",
        "I would like a quote for the Modern kitchen set.",
    )
    assert mail.message_id == "q1@ru.example"
    assert "malformed_header_line" in mail.defects


def test_a_continuation_that_lost_its_indent_joins_the_field_before_it() -> None:
    raw = (
        "From: Ivan Petrov <ivan@ru.example>\r\n"
        "Subject: Quote for the Modern kitchen set and\r\n"
        "the dining table\r\n"
        "Message-ID: <q2@ru.example>\r\n" + TO + BODY
    ).encode()
    mail = parse_mail(raw)
    assert facts(mail) == (
        "ivan@ru.example",
        "Ivan Petrov",
        "Quote for the Modern kitchen set and the dining table",
        "I would like a quote for the Modern kitchen set.",
    )
    assert mail.message_id == "q2@ru.example"


@pytest.mark.parametrize(
    "before",
    [
        b"From ivan@ru.example Mon Nov 23 10:00:00 2026\r\n",  # an mbox envelope line
        b"\xef\xbb\xbf",  # a byte-order mark (a mail saved by a Windows editor)
        b"=== saved from Outlook ===\r\n",  # a stray line
        b"\r\n\xef\xbb\xbfsomething\r\n"[2:],  # a BOM and a stray line
    ],
    ids=["mbox", "bom", "stray", "bom+stray"],
)
def test_junk_before_the_first_field_is_skipped(before: bytes) -> None:
    raw = (
        before
        + (
            "From: =?UTF-8?B?0JjQstCw0L0g0J/QtdGC0YDQvtCy?= <ivan@ru.example>\r\n"
            "Subject: =?UTF-8?B?0JrRg9GF0L3Rjw==?=\r\n" + TO + "\r\nНужна кухня.\r\n"
        ).encode()
    )
    mail = parse_mail(raw)
    assert facts(mail) == ("ivan@ru.example", "Иван Петров", "Кухня", "Нужна кухня.")


def test_a_space_before_the_colon_is_a_field() -> None:
    raw = (
        "From : Ivan Petrov <ivan@ru.example>\r\nSubject : Kitchen quote\r\n"
        "Message-ID : <q3@ru.example>\r\n" + TO + BODY
    ).encode()
    mail = parse_mail(raw)
    assert facts(mail)[:3] == ("ivan@ru.example", "Ivan Petrov", "Kitchen quote")
    assert mail.message_id == "q3@ru.example"
    assert mail.text == "I would like a quote for the Modern kitchen set."


def test_body_lines_after_the_last_field_stay_body() -> None:
    """No empty line after the header block: the body began; it is not a header."""
    raw = b"From: ivan@ru.example\r\nSubject: Hi\r\nPlease call me back.\r\n"
    mail = parse_mail(raw)
    assert facts(mail) == ("ivan@ru.example", None, "Hi", "Please call me back.")
    # A "Name: value" line in such a body is not a header field a mail system writes.
    form = b"From: ivan@ru.example\r\nSubject: Hi\r\nCall me back.\r\nPhone: +7 903\r\n"
    assert facts(parse_mail(form))[2:] == ("Hi", "Call me back.\nPhone: +7 903")


# ---------------------------------------------------------------- where the sender is


def test_several_from_fields_the_first_unusable() -> None:
    raw = (
        "From: undisclosed-recipients:;\r\n"
        "From: Olga Smirnova <olga@ru.example>\r\n"
        "Subject: Invoice\r\n" + TO + BODY
    ).encode()
    mail = parse_mail(raw)
    assert facts(mail)[:3] == ("olga@ru.example", "Olga Smirnova", "Invoice")
    assert mail.sender_source == "From #2"


@pytest.mark.parametrize(
    ("fields", "source"),
    [
        ("Sender: Olga Smirnova <olga@ru.example>\r\n", "Sender"),
        ("From: <>\r\nReply-To: Olga Smirnova <olga@ru.example>\r\n", "Reply-To"),
        ("From: Olga Smirnova\r\nReturn-Path: <olga@ru.example>\r\n", "Return-Path"),
    ],
    ids=["sender", "reply-to", "return-path"],
)
def test_no_usable_from_falls_back_and_the_reason_says_so(fields: str, source: str) -> None:
    mail = parse_mail((fields + "Subject: Invoice\r\n" + TO + BODY).encode())
    assert facts(mail) == (
        "olga@ru.example",
        "Olga Smirnova",
        "Invoice",
        "I would like a quote for the Modern kitchen set.",
    )
    assert mail.sender_source == source
    msg = inbound_from_mail(ACCOUNT, mail, [], folder="INBOX", uidvalidity=1, uid=1)
    assert msg.sender.email == "olga@ru.example"
    assert not msg.automatic
    assert msg.meta["reason_note"] == f"sender read from {source} (no usable From)"


def test_a_null_return_path_is_not_a_sender() -> None:
    mail = parse_mail(("From: <>\r\nReturn-Path: <>\r\nSubject: x\r\n" + TO + BODY).encode())
    assert (mail.from_addr, mail.sender_source, mail.auto) == (None, None, AutoKind.BOUNCE)


# ---------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    ("from_field", "addr", "name"),
    [
        ("root@localhost", "root@localhost", None),
        ("Build Robot <ci@buildhost>", "ci@buildhost", "Build Robot"),
        ("ivan@ru.example (Ivan Petrov)", "ivan@ru.example", "Ivan Petrov"),
        ("Ivan (sales, EU) Petrov <ivan@ru.example>", "ivan@ru.example", "Ivan Petrov"),
        ('"Petrov\\, Ivan" <ivan@ru.example>', "ivan@ru.example", "Petrov, Ivan"),
        ('"Ivan \\"Vanya\\" Petrov" (home) <ivan@ru.example>', "ivan@ru.example",
         'Ivan "Vanya" Petrov'),
        ("ivan@ru.example (Ivan \\(Vanya\\) Petrov)", "ivan@ru.example",
         "Ivan (Vanya) Petrov"),
        ("ivan@ru.example (Ivan (nested (comment)) Petrov)", "ivan@ru.example",
         "Ivan (nested (comment)) Petrov"),
    ],
)  # fmt: skip
def test_addresses_comments_and_quoted_pairs(from_field: str, addr: str, name: str) -> None:
    mail = parse_mail(("From: " + from_field + "\r\nSubject: Hi\r\n" + TO + BODY).encode())
    assert (mail.from_addr, mail.from_name) == (addr, name)


# ---------------------------------------------------------------- charsets


def cp50221(text: str) -> bytes:
    """ISO-2022-JP as Outlook writes it: JIS X 0208 plus NEC row 13 and IBM extensions
    (written here from CP932 bytes, independently of the parser's decoder)."""
    out = bytearray()
    jis = False
    for ch in text:
        b = ch.encode("cp932")
        if len(b) == 1:
            if jis:
                out += b"\x1b(B"
                jis = False
            out += b
            continue
        if not jis:
            out += b"\x1b$B"
            jis = True
        s1, s2 = b
        s1 -= 0x40 if s1 >= 0xE0 else 0
        c1 = (s1 - 0x70) * 2 - 1
        if s2 >= 0x9F:
            c1, c2 = c1 + 1, s2 - 0x7E
        else:
            c2 = s2 - 0x1F - (1 if s2 >= 0x80 else 0)
        out += bytes((c1, c2))
    if jis:
        out += b"\x1b(B"
    return bytes(out)


def test_iso_2022_jp_with_nec_and_ibm_extensions() -> None:
    subject = "【ご案内】①納期と②価格について"
    body = "髙橋様\r\n\r\nお見積もりの件、①納期は3週間、②価格は下記の通りです。\r\n"
    word = base64.b64encode(cp50221(subject)).decode()
    name = base64.b64encode(cp50221("髙橋 一郎")).decode()
    raw = (
        f"From: =?ISO-2022-JP?B?{name}?= <takahashi@jp.example>\r\n"
        f"Subject: =?ISO-2022-JP?B?{word}?=\r\n" + TO + "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=ISO-2022-JP\r\n"
        "Content-Transfer-Encoding: 7bit\r\n\r\n"
    ).encode() + cp50221(body)
    assert "①".encode("iso2022_jp_ext", "replace") == b"?"  # Python's codecs refuse it
    mail = parse_mail(raw)
    assert facts(mail) == (
        "takahashi@jp.example",
        "髙橋 一郎",
        subject,
        "髙橋様\n\nお見積もりの件、①納期は3週間、②価格は下記の通りです。",
    )


# Per charset: sender name, subject, body — what a customer writing in it would send.
UNDECLARED = {
    "shift_jis": ("cp932", "田中 花子", "見積もりのお願い",
                  "お世話になっております。キッチンの見積もりをお願いいたします。\n田中"),
    "gb2312": ("gb2312", "张伟", "关于厨房的报价",
               "您好，我想咨询一下橱柜的价格和交货时间。\n谢谢！"),
    "gbk": ("gbk", "张伟", "关于厨房的报价（急）",
            "您好，我想咨询一下橱柜的价格和交货时间，越快越好。\n谢谢！"),
    "gb18030": ("gb18030", "张伟", "关于厨房的报价",
                "您好，我想咨询一下橱柜的价格和交货时间。\n谢谢！"),
    "big5": ("big5", "陳大文", "關於廚房的報價",
             "您好，我想詢問一下櫥櫃的價格和交貨時間。\n謝謝！"),
    "euc-kr": ("euc-kr", "김민수", "주방 견적 문의",
               "안녕하세요. 주방 가구 가격과 배송 기간을 알고 싶습니다.\n감사합니다."),
    "koi8-r": ("koi8-r", "Иван Петров", "Запрос цены на кухню",
               'Здравствуйте! Сколько стоит кухня "Модерн" с доставкой?\nИван'),
    "windows-1251": ("cp1251", "Иван Петров", "Запрос цены на кухню",
                     "Здравствуйте! Сколько стоит кухня «Модерн» с доставкой?\nИван"),
}  # fmt: skip


def eight_bit(codec: str, name: str, subject: str, body: str, label: str | None) -> bytes:
    ctype = "text/plain" + (f"; charset={label}" if label else "")
    head = (
        f"From: {name} <customer@mail.example>\r\nSubject: {subject}\r\n"
        f"{TO}MIME-Version: 1.0\r\nContent-Type: {ctype}\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n"
    )
    return head.encode(codec) + body.replace("\n", "\r\n").encode(codec) + b"\r\n"


@pytest.mark.parametrize("charset", sorted(UNDECLARED))
def test_undeclared_8bit_headers_and_body(charset: str) -> None:
    codec, name, subject, body = UNDECLARED[charset]
    mail = parse_mail(eight_bit(codec, name, subject, body, None))
    assert facts(mail) == ("customer@mail.example", name, subject, body)


@pytest.mark.parametrize("charset", ["shift_jis", "gbk", "big5", "euc-kr", "windows-1251"])
@pytest.mark.parametrize("label", ["us-ascii", "iso-8859-1"])
def test_8bit_text_mislabelled_as_latin(charset: str, label: str) -> None:
    codec, name, subject, body = UNDECLARED[charset]
    mail = parse_mail(eight_bit(codec, name, subject, body, label))
    assert facts(mail) == ("customer@mail.example", name, subject, body)


def test_a_declared_charset_that_decodes_cleanly_wins_over_detection() -> None:
    """Latin text with a few accents stays Latin (no Cyrillic or CJK reading)."""
    body = "Bonjour, je voudrais un devis pour la cuisine « Modèle » — merci d'avance."
    raw = eight_bit("cp1252", "Hélène Dubois", "Devis cuisine été", body, "iso-8859-1")
    assert facts(parse_mail(raw)) == (
        "customer@mail.example",
        "Hélène Dubois",
        "Devis cuisine été",
        body,
    )
    undeclared = eight_bit("cp1252", "Hélène Dubois", "Devis cuisine été", body, None)
    assert facts(parse_mail(undeclared))[1:] == ("Hélène Dubois", "Devis cuisine été", body)


# ---------------------------------------------------------------- forwards, placeholders

FWD_HEAD = (
    "From: Anna Lee <anna@c.example>\r\nSubject: Fwd: Order\r\n" + TO + "MIME-Version: 1.0\r\n"
)
INNER = (
    "From: Boris Orlov <boris@d.example>\r\nTo: anna@c.example\r\nSubject: Order\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n\r\nPlease send 20 chairs to Kazan.\r\n"
)


@pytest.mark.parametrize(
    "body",
    [
        # Gmail, inline: the separator and the forwarded header block, no own words.
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        "---------- Forwarded message ---------\r\nFrom: Boris Orlov <boris@d.example>\r\n"
        "Date: Sun, 22 Nov 2026 at 10:00\r\nSubject: Order\r\nTo: <anna@c.example>\r\n\r\n"
        "Please send 20 chairs to Kazan.\r\n",
        # Outlook, inline.
        "Content-Type: text/plain; charset=utf-8\r\n\r\n\r\n\r\n"
        "________________________________\r\nFrom: Boris Orlov <boris@d.example>\r\n"
        "Sent: Sunday, November 22, 2026 10:00 AM\r\nTo: Anna Lee\r\nSubject: Order\r\n\r\n"
        "Please send 20 chairs to Kazan.\r\n",
        # Thunderbird: an empty text part and the forwarded mail as message/rfc822.
        'Content-Type: multipart/mixed; boundary="m"\r\n\r\n--m\r\n'
        "Content-Type: text/plain; charset=utf-8\r\n\r\n\r\n--m\r\n"
        "Content-Type: message/rfc822\r\n\r\n" + INNER + "--m--\r\n",
        # Gmail HTML-only forward.
        "Content-Type: text/html; charset=utf-8\r\n\r\n"
        '<div dir="ltr"><br><div class="gmail_quote"><div dir="ltr" class="gmail_attr">'
        "---------- Forwarded message ---------<br>From: <strong>Boris Orlov</strong> "
        "&lt;boris@d.example&gt;<br>Subject: Order<br></div><br><br>"
        "<div>Please send 20 chairs to Kazan.</div></div></div>\r\n",
        # iPhone: only the client's own line above the forward.
        "Content-Type: text/plain; charset=utf-8\r\n\r\nSent from my iPhone\r\n\r\n"
        "Begin forwarded message:\r\n\r\n> From: Boris Orlov <boris@d.example>\r\n"
        "> Subject: Order\r\n> \r\n> Please send 20 chairs to Kazan.\r\n",
        # Only a signature above the forward.
        "Content-Type: text/plain; charset=utf-8\r\n\r\n\r\n-- \r\nAnna Lee\r\nC Ltd\r\n\r\n"
        "---------- Forwarded message ---------\r\nFrom: Boris Orlov <boris@d.example>\r\n"
        "Subject: Order\r\n\r\nPlease send 20 chairs to Kazan.\r\n",
        # Yandex/Mail.ru on a phone, in Russian.
        "Content-Type: text/plain; charset=utf-8\r\n\r\nОтправлено с iPhone\r\n\r\n"
        "-------- Пересылаемое сообщение --------\r\n"
        '22.11.2026, 10:00, "Boris Orlov" <boris@d.example>:\r\n\r\n'
        "Please send 20 chairs to Kazan.\r\n",
    ],
    ids=["gmail", "outlook", "rfc822", "gmail-html", "iphone", "signature", "ru-phone"],
)
def test_a_forward_without_own_words_shows_the_forwarded_text(body: str) -> None:
    mail = parse_mail((FWD_HEAD + body).encode())
    assert facts(mail)[:3] == ("anna@c.example", "Anna Lee", "Fwd: Order")
    assert "Please send 20 chairs to Kazan." in mail.text
    assert "Boris Orlov" in mail.text
    assert "iPhone" not in mail.text
    assert mail.quoted == ""


def test_a_forward_with_own_words_keeps_them_as_the_text() -> None:
    body = (
        "Content-Type: text/plain; charset=utf-8\r\n\r\nBoris needs chairs, can you quote?\r\n"
        "\r\n---------- Forwarded message ---------\r\nFrom: Boris Orlov <boris@d.example>\r\n"
        "Subject: Order\r\n\r\nPlease send 20 chairs to Kazan.\r\n"
    )
    mail = parse_mail((FWD_HEAD + body).encode())
    assert mail.text == "Boris needs chairs, can you quote?"
    assert "Please send 20 chairs to Kazan." in mail.quoted


@pytest.mark.parametrize(
    "plain",
    [
        "",
        "-",
        "This is an HTML message. Please use an HTML capable mail program to read it.",
        "Your email client does not support HTML messages.",
        "Это письмо в формате HTML.",
    ],
)
def test_a_placeholder_text_part_beside_html_reads_the_html(plain: str) -> None:
    raw = (
        "From: Shop Client <client@c.example>\r\nSubject: Chairs\r\n" + TO + "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/alternative; boundary="a"\r\n\r\n--a\r\n'
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{plain}\r\n--a\r\n"
        "Content-Type: text/html; charset=utf-8\r\n\r\n"
        "<html><body><p>I need a <b>quote</b> for 20 chairs.</p></body></html>\r\n--a--\r\n"
    ).encode()
    mail = parse_mail(raw)
    assert facts(mail) == (
        "client@c.example",
        "Shop Client",
        "Chairs",
        "I need a quote for 20 chairs.",
    )


def test_a_real_short_text_part_is_kept() -> None:
    raw = (
        "From: client@c.example\r\nSubject: Chairs\r\n" + TO + "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/alternative; boundary="a"\r\n\r\n--a\r\n'
        "Content-Type: text/plain; charset=utf-8\r\n\r\nYes, 20.\r\n--a\r\n"
        "Content-Type: text/html; charset=utf-8\r\n\r\n<p>Yes, <b>20</b>.</p>\r\n--a--\r\n"
    ).encode()
    assert parse_mail(raw).text == "Yes, 20."


# ---------------------------------------------------------------- automatic mail

ACCOUNT = ChannelAccount(channel="email", account="sales", source="mail_sales")


@pytest.mark.parametrize(
    ("fields", "kind", "reason"),
    [
        ("From: Shop <noreply@shop.example>\r\n", AutoKind.NOTIFICATION,
         "sender noreply@shop.example is a no-reply / system address"),
        ("From: Shop <no-reply@shop.example>\r\n", AutoKind.NOTIFICATION,
         "sender no-reply@shop.example is a no-reply / system address"),
        ("From: Bank <DoNotReply@bank.example>\r\n", AutoKind.NOTIFICATION,
         "sender donotreply@bank.example is a no-reply / system address"),
        ("From: mailer@cms.example\r\n", AutoKind.NOTIFICATION,
         "sender mailer@cms.example is a no-reply / system address"),
        ("From: GitHub <notifications@github.example>\r\n", AutoKind.NOTIFICATION,
         "sender notifications@github.example is a no-reply / system address"),
        ("From: Jira <jira@corp.example>\r\nX-JIRA-FingerPrint: 4f2a\r\n",
         AutoKind.NOTIFICATION, "X-Jira-Fingerprint header (ticketing or monitoring system)"),
        ("From: ops@corp.example\r\nX-Mailer: Zabbix 6.4\r\n", AutoKind.NOTIFICATION,
         "X-Mailer Zabbix (ticketing or monitoring system)"),
        ("From: News <news@shop.example>\r\nList-Unsubscribe: <https://shop.example/u/1>\r\n",
         AutoKind.BULK, "List-Unsubscribe header (list or newsletter mail)"),
        ("From: Shop <hello@shop.example>\r\nFeedback-ID: 1:campaign:esp\r\n", AutoKind.BULK,
         "Feedback-ID header (list or newsletter mail)"),
        ("From: Shop <hello@shop.example>\r\nX-Mailgun-Campaign-Id: spring\r\n", AutoKind.BULK,
         "X-Mailgun-Campaign-ID header (list or newsletter mail)"),
    ],
)  # fmt: skip
def test_automatic_mail_beyond_headers(fields: str, kind: AutoKind, reason: str) -> None:
    mail = parse_mail((fields + "Subject: Your order\r\n" + TO + BODY).encode())
    assert (mail.auto, mail.auto_reason) == (kind, reason)
    msg = inbound_from_mail(ACCOUNT, mail, [], folder="INBOX", uidvalidity=1, uid=1)
    assert msg.automatic
    assert msg.meta["reason_note"] == f"automatic: {reason}"


@pytest.mark.parametrize(
    "sender", ["ivan@ru.example", "sales@corp.example", "info@shop.example", "noreplyer@x.example"]
)
def test_people_are_not_automatic(sender: str) -> None:
    mail = parse_mail(("From: " + sender + "\r\nSubject: Order\r\n" + TO + BODY).encode())
    assert (mail.auto, mail.auto_reason) == (None, None)


SITE_FORM = (
    "From: Kuhni Site <noreply@kuhni.example>\r\n"
    "Reply-To: =?UTF-8?B?0JjQstCw0L0g0J/QtdGC0YDQvtCy?= <ivan@ru.example>\r\n"
    "Subject: =?UTF-8?B?0JfQsNGP0LLQutCwINGBINGB0LDQudGC0LA=?=\r\n"
    + TO
    + "Content-Type: text/plain; charset=utf-8\r\n\r\n"
    "Имя: Иван Петров\r\nТелефон: +7 903 111-22-33\r\nНужна кухня.\r\n"
).encode()


@pytest.mark.parametrize("pattern", ["noreply@kuhni.example", "*@KUHNI.example"])
def test_the_allow_list_makes_a_site_form_a_customer_in_reply_to(pattern: str) -> None:
    mail = parse_mail(SITE_FORM)
    assert facts(mail) == (
        "noreply@kuhni.example",
        "Kuhni Site",
        "Заявка с сайта",
        "Имя: Иван Петров\nТелефон: +7 903 111-22-33\nНужна кухня.",
    )
    assert mail.auto is AutoKind.NOTIFICATION
    plain = inbound_from_mail(ACCOUNT, mail, [], folder="INBOX", uidvalidity=1, uid=1)
    assert plain.automatic
    assert plain.sender.email == "noreply@kuhni.example"

    allowed = ACCOUNT.model_copy(update={"customer_senders": [pattern]})
    msg = inbound_from_mail(allowed, mail, [], folder="INBOX", uidvalidity=1, uid=1)
    assert not msg.automatic
    assert (msg.sender.email, msg.sender.name) == ("ivan@ru.example", "Иван Петров")
    assert msg.reply_to == "ivan@ru.example"
    assert "auto" not in msg.meta
    assert msg.meta["reason_note"] == (
        "noreply@kuhni.example is a customer sender of this mailbox; the customer is the Reply-To"
    )


def test_the_allow_list_never_turns_a_bounce_into_a_customer() -> None:
    raw = (
        "From: MAILER-DAEMON@kuhni.example\r\nReturn-Path: <>\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n" + TO + "\r\n"
        "This is the mail system. Your message could not be delivered.\r\n"
    ).encode()
    mail = parse_mail(raw)
    allowed = ACCOUNT.model_copy(update={"customer_senders": ["*@kuhni.example"]})
    msg = inbound_from_mail(allowed, mail, [], folder="INBOX", uidvalidity=1, uid=1)
    assert mail.auto is AutoKind.BOUNCE
    assert msg.automatic
