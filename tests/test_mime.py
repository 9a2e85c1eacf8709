"""channels/email/mime: raw mail bytes in, one ParsedMail out — the awkward cases one by one.

Inputs are the hand-made mails in tests/fixtures/email/cases/ (shapes real clients send:
Outlook, Gmail, Yandex, Mail.ru, The Bat!, Postfix, Exim, Exchange) and bytes built here;
every expected value is written by hand. The corpora (Chatwoot, CPython) are in
tests/test_mime_corpus.py.
"""

from __future__ import annotations

import base64
import hashlib
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import channels.email.mime
from channels.email.mime import (
    AutoKind,
    MailAttachment,
    ParsedMail,
    parse_mail,
    strip_subject_prefixes,
)
from channels.email.text import html_to_text, split_quoted

CASES = Path(__file__).resolve().parent / "fixtures" / "email" / "cases"


def case(name: str) -> ParsedMail:
    return parse_mail((CASES / name).read_bytes())


def build(headers: str, body: str | bytes = "Hello.\n") -> bytes:
    """A mail from header lines (\\n-separated) and a body."""
    head = headers.strip("\n").encode("utf-8", "surrogateescape") + b"\n\n"
    return head + (body if isinstance(body, bytes) else body.encode("utf-8"))


BASIC = "From: Ivan <ivan@ru.example>\nTo: sales@kuhni.example\nMessage-ID: <m1@ru.example>"


def by_name(mail: ParsedMail) -> dict[str | None, MailAttachment]:
    return {a.name: a for a in mail.attachments}


# ---------------------------------------------------------------- charsets


def test_windows_1251_mail_declared_koi8_r_is_read_as_windows_1251() -> None:
    mail = case("koi8r_label_cp1251_body.eml")
    assert mail.broken is None
    assert mail.subject == "Счёт на кухню «Модерн»"
    assert mail.from_name == "Ольга Смирнова"
    assert mail.from_addr == "olga.smirnova@ru.example"
    assert mail.text.startswith("Здравствуйте!\n\nПрошу выставить счёт на кухонный гарнитур")
    assert "+7 916 555-12-34" in mail.text
    assert "charset_repaired:koi8_r->cp1251" in mail.defects


def test_koi8_r_that_is_really_koi8_r_is_left_alone() -> None:
    body = "Добрый день, пришлите, пожалуйста, каталог шкафов-купе.\n".encode("koi8-r")
    raw = build(BASIC + "\nSubject: x\nContent-Type: text/plain; charset=koi8-r", body)
    mail = parse_mail(raw)
    assert mail.text == "Добрый день, пришлите, пожалуйста, каталог шкафов-купе."
    assert not [d for d in mail.defects if d.startswith("charset")]


def test_ks_c_5601_1987_outlook_mail() -> None:
    mail = case("ks_c_5601_1987.eml")
    assert mail.subject == "주방 가구 견적 요청"
    assert mail.from_name == "김민수"
    assert mail.text.startswith("안녕하세요,\n\n주방 가구 견적을 부탁드립니다.")
    assert mail.date == datetime(2024, 2, 7, 1, 2, 33, tzinfo=UTC)


def test_utf7_body_and_subject() -> None:
    mail = case("utf7.eml")
    assert mail.subject == "Кухня и шкаф"
    assert mail.text == "Привет! Нужна кухня + шкаф, бюджет ~200 000 ₽."


def test_raw_utf8_headers_without_encoded_words() -> None:
    mail = case("raw_8bit_utf8_headers.eml")
    assert mail.subject == "Вопрос по доставке шкафа"
    assert mail.from_name == "Андрей Козлов"
    assert mail.to == ["sales@kuhni.example"]
    assert mail.text == "Когда привезёте шкаф-купе? Заказ №1042."
    assert "raw_8bit_header" in mail.defects


def test_raw_windows_1251_headers_are_read_with_the_body_charset() -> None:
    mail = case("raw_8bit_cp1251_headers.eml")
    assert mail.subject == "Вопрос по доставке шкафа"
    assert mail.from_name == "Андрей Козлов"
    assert mail.text == "Когда привезёте шкаф-купе? Заказ №1042."


def test_raw_windows_1251_header_without_any_declared_charset_is_guessed() -> None:
    subject = "Заказ кухни на дачу".encode("cp1251")
    raw = build(BASIC + "\nSubject: SUBJ").replace(b"SUBJ", subject)
    assert parse_mail(raw).subject == "Заказ кухни на дачу"


def test_unknown_and_missing_charsets_never_fail() -> None:
    utf8 = "Цена 185 000 руб., срок 3 недели.".encode()
    unknown = parse_mail(build(BASIC + "\nContent-Type: text/plain; charset=x-no-such", utf8))
    assert unknown.text == "Цена 185 000 руб., срок 3 недели."
    assert "unknown_charset:x-no-such" in unknown.defects
    missing = parse_mail(build(BASIC, "Цена 185 000 руб., срок 3 недели.".encode("cp1251")))
    assert missing.text == "Цена 185 000 руб., срок 3 недели."
    wrong_utf8 = parse_mail(
        build(
            BASIC + "\nContent-Type: text/plain; charset=utf-8",
            "Цена 185 000 руб., срок 3 недели.".encode("cp1251"),
        )
    )
    assert wrong_utf8.text == "Цена 185 000 руб., срок 3 недели."
    garbage = parse_mail(
        build(BASIC + '\nContent-Type: text/plain; charset="utf-8"', b"ok \xff\xfe")
    )
    assert garbage.text.startswith("ok ")


def test_latin1_label_on_utf8_and_on_windows_1251_text() -> None:
    latin = BASIC + "\nContent-Type: text/plain; charset=iso-8859-1"
    assert parse_mail(build(latin, "Привет, нужен шкаф".encode())).text == "Привет, нужен шкаф"
    cp1251 = "Привет, нужен шкаф для прихожей".encode("cp1251")
    assert parse_mail(build(latin, cp1251)).text == "Привет, нужен шкаф для прихожей"
    accented = parse_mail(build(latin, "Crème brûlée, façade".encode("latin-1")))
    assert accented.text == "Crème brûlée, façade"


def test_gb2312_label_on_gbk_text_and_big5() -> None:
    gbk = "您好，请报价：喆橱柜".encode("gbk")  # 喆 is GBK, not GB2312
    mail = parse_mail(build(BASIC + "\nContent-Type: text/plain; charset=gb2312", gbk))
    assert mail.text == "您好，请报价：喆橱柜"
    subject = base64.b64encode("报价".encode("gbk")).decode()
    assert parse_mail(build(BASIC + f"\nSubject: =?gb2312?B?{subject}?=")).subject == "报价"


# ---------------------------------------------------------------- header fields


def test_encoded_words_malformed_and_split() -> None:
    utf8 = "При".encode()
    first = base64.b64encode(utf8[:3]).decode()  # splits the second letter's two bytes
    second = base64.b64encode(utf8[3:]).decode()
    cases = {
        f"=?utf-8?B?{first}?= =?utf-8?B?{second}?=": "При",
        "=?utf-8?q?caf=C3=A9?=  =?utf-8?q?_cr=C3=A8me?=": "café crème",
        "Hello =?UTF-8?Q?W=C3=B6rld?=!": "Hello Wörld!",
        "=?x-unknown?q?caf=E9?=": "café",
        "=?utf-8?b?0J/RgNC4?": "При",  # no closing ?=
        "=?utf-8?b?0J/RgNC4?= tail": "При tail",
        "=?utf-8*ru?b?0J/RgNC4?=": "При",  # RFC 2231 language
        "abc=?utf-8?q?=D0=9F?=def": "abcПdef",
        "=?utf-8?b?!!!?=": "=?utf-8?b?!!!?=",  # undecodable: kept as written
        "Re:\r\n =?utf-8?b?0J/RgNC4?=\r\n\t=?utf-8?b?0LLQtdGC?=": "Re: Привет",
    }
    for header, expected in cases.items():
        raw = build(BASIC + "\nSubject: " + header)
        assert parse_mail(raw).subject == expected, header


def test_missing_date_subject_and_message_id() -> None:
    raw = build("From: ivan@ru.example\nTo: sales@kuhni.example")
    mail = parse_mail(raw)
    digest = hashlib.sha256(raw).hexdigest()
    assert mail.broken is None
    assert mail.subject == ""
    assert mail.date is None
    assert mail.has_message_id is False
    assert mail.message_id == f"sha256:{digest}"
    assert mail.content_hash == digest
    empty = parse_mail(build("From: a@b.example\nMessage-ID: <  >\nDate: \nSubject:"))
    assert empty.has_message_id is False
    assert empty.message_id.startswith("sha256:")
    assert empty.date is None


def test_dates_become_aware_utc() -> None:
    dates = {
        "Tue, 20 Apr 2020 04:20:20 -0400": datetime(2020, 4, 20, 8, 20, 20, tzinfo=UTC),
        "Mon,  1 Jan 2024 03:27:12 -0500 (EST)": datetime(2024, 1, 1, 8, 27, 12, tzinfo=UTC),
        "1 Feb 2024 10:00 +0300": datetime(2024, 2, 1, 7, 0, tzinfo=UTC),
        "Fri, 4 May 2001 14:05:44 -0000": datetime(2001, 5, 4, 14, 5, 44, tzinfo=UTC),
        "2024-02-01 10:11:12 +0300": datetime(2024, 2, 1, 7, 11, 12, tzinfo=UTC),
        "garbage": None,
        "Tue, 31 Feb 2024 10:00:00 +0000": None,
    }
    for value, expected in dates.items():
        mail = parse_mail(build(BASIC + f"\nDate: {value}"))
        assert mail.date == expected, value
        assert mail.date is None or mail.date.tzinfo is UTC


def test_message_ids_and_threading_headers() -> None:
    raw = build(
        "From: a@b.example\n"
        "Message-ID:   <abc.123@mail.example>  \n"
        "In-Reply-To: <x@y>, <x@y>\n <z@y>\n"
        "References: <r1@y> <r2@y>\n\t<r3@y> <r2@y>\n"
    )
    mail = parse_mail(raw)
    assert mail.message_id == "abc.123@mail.example"
    assert mail.has_message_id is True
    assert mail.in_reply_to == ["x@y", "z@y"]
    assert mail.references == ["r1@y", "r2@y", "r3@y"]
    bare = parse_mail(build("From: a@b.example\nMessage-ID: no-brackets@example\n"))
    assert bare.message_id == "no-brackets@example"


def test_address_headers_as_written() -> None:
    raw = build(
        'From: "Petrov, Ivan" <Ivan.Petrov@Example.RU>\n'
        "To: Sales <sales@kuhni.example>, =?utf-8?b?0JzQsNGA0LjRjw==?= <maria@corp.example>,"
        " undisclosed-recipients:;\n"
        "Cc: Team: a@team.example, b@team.example;, <c@team.example>junk c@team.example\n"
        'Reply-To: <mailto:orders@kuhni.example>, <"">'
    )
    mail = parse_mail(raw)
    assert mail.from_addr == "Ivan.Petrov@Example.RU"
    assert mail.from_name == "Petrov, Ivan"
    assert mail.to == ["sales@kuhni.example", "maria@corp.example"]
    assert mail.cc == ["a@team.example", "b@team.example", "c@team.example"]
    assert mail.reply_to == ["orders@kuhni.example"]


def test_old_style_sender_and_name_only_sender() -> None:
    mail = parse_mail(build("From: ivan@ru.example (Иван Петров)\nTo: b@c.example"))
    assert (mail.from_addr, mail.from_name) == ("ivan@ru.example", "Иван Петров")
    daemon = parse_mail(build('From: "" (Mail Delivery System)\nTo: b@c.example'))
    assert (daemon.from_addr, daemon.from_name) == (None, "Mail Delivery System")
    sender = parse_mail(build("Sender: Bot <bot@shop.example>\nTo: b@c.example"))
    assert sender.from_addr == "bot@shop.example"
    assert sender.sender_source == "Sender"
    assert "sender_from:Sender" in sender.defects


# ---------------------------------------------------------------- structure


def test_multipart_without_boundary_parameter_is_repaired() -> None:
    mail = case("multipart_no_boundary.eml")
    assert mail.subject == "Заявка с сайта"
    assert mail.text == "Имя: Игорь\nТелефон: +7 903 111-22-33\nКомментарий: нужна прихожая"
    assert [(a.name, a.mime_type) for a in mail.attachments] == [("form.csv", "text/csv")]
    assert mail.attachments[0].data.decode() == "name;phone\nИгорь;+79031112233\n"
    assert "multipart_boundary_repaired" in mail.defects


def test_multipart_without_any_boundary_line_is_read_as_text() -> None:
    raw = build(BASIC + "\nContent-Type: multipart/alternative", "Just text, no parts.\n")
    mail = parse_mail(raw)
    assert mail.text == "Just text, no parts."
    assert "multipart_without_boundary_read_as_text" in mail.defects


def test_forwarded_message_rfc822_keeps_its_text_and_lists_its_attachments() -> None:
    mail = case("forwarded_rfc822.eml")
    assert mail.text.startswith("Can you beat this price?\n\n---------- Forwarded message")
    assert "From: Supplier Ltd <offers@supplier.example>" in mail.text
    assert "Subject: Commercial offer #77" in mail.text
    assert mail.text.endswith("Kitchen set Modern, 3.2 m: 180 000 RUB.")
    assert [(a.name, a.mime_type) for a in mail.attachments] == [
        ("offer-77.pdf", "application/pdf")
    ]
    assert mail.attachments[0].data == b"%PDF-1.4\n% offer 77\n%%EOF\n"
    # The forwarded mail's headers are not the message's own.
    assert mail.from_addr == "olga.smirnova@ru.example"
    assert mail.message_id == "fwd-77@ru.example"


def test_attachment_names_rfc2231_and_encoded_words() -> None:
    mail = case("attachment_names.eml")
    assert mail.subject == "Счет и договор"
    files = by_name(mail)
    assert set(files) == {"Счет.pdf", "Договор № 1042.docx", "Фото кухни.jpg", None}
    assert files["Счет.pdf"].mime_type == "application/pdf"
    assert files["Счет.pdf"].data == b"%PDF-1.4 invoice"
    assert files["Фото кухни.jpg"].data.startswith(b"\xff\xd8\xff")
    assert files[None].mime_type == "application/octet-stream"
    assert files[None].data == b"\x00\x01\x02"
    assert not any(a.inline for a in mail.attachments)


def test_inline_images_by_disposition_and_by_cid_reference() -> None:
    png = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()
    raw = build(
        BASIC + '\nContent-Type: multipart/related; boundary="r"',
        "--r\nContent-Type: text/html; charset=utf-8\n\n"
        '<p>Logo: <img src="cid:logo@x"></p>\n'
        "--r\nContent-Type: image/png\nContent-ID: <logo@x>\n"
        f"Content-Transfer-Encoding: base64\n\n{png}\n"
        "--r\nContent-Type: image/png; name=unused.png\nContent-ID: <other@x>\n"
        f"Content-Transfer-Encoding: base64\n\n{png}\n"
        '--r\nContent-Type: image/png\nContent-Disposition: inline; filename="i.png"\n'
        f"Content-Transfer-Encoding: base64\n\n{png}\n--r--\n",
    )
    mail = parse_mail(raw)
    assert [(a.name, a.content_id, a.inline) for a in mail.attachments] == [
        (None, "logo@x", True),
        ("unused.png", "other@x", False),
        ("i.png", None, True),
    ]
    assert mail.attachments[0].data == b"\x89PNG\r\n\x1a\nfake"
    assert mail.text == "Logo:"
    assert mail.html is not None
    assert "cid:logo@x" in mail.html


def test_large_attachment_is_kept_whole() -> None:
    blob = random.Random(7).randbytes(3 * 1024 * 1024)
    encoded = base64.encodebytes(blob).decode()
    raw = build(
        BASIC + '\nContent-Type: multipart/mixed; boundary="b"',
        "--b\nContent-Type: text/plain\n\nSee attached.\n"
        "--b\nContent-Type: application/zip; name=big.zip\n"
        f"Content-Transfer-Encoding: base64\n\n{encoded}--b--\n",
    )
    mail = parse_mail(raw)
    assert mail.attachments[0].data == blob


# ---------------------------------------------------------------- HTML and quotes


def test_html_only_mail_becomes_readable_text() -> None:
    mail = case("html_only_formatting.eml")
    assert mail.text == (
        "Спасибо за заказ!\n\n"
        "Ваш заказ №1042 принят.\nСостав:\n\n"
        "- Кухня «Модерн»\n- Мойка Blanco\n\n"
        "1. Замер\n2. Доставка\n\n"
        "Статус: личный кабинет (https://furniture.example/orders/1042), "
        "help@furniture.example.\n\n"
        "Итого: 185 000 ₽"
    )
    assert mail.html is not None
    assert mail.html.startswith("<!DOCTYPE html>")


def test_html_to_text_details() -> None:
    html = (
        "<div>a&amp;b&nbsp;&lt;c&gt;</div><script>document.write('x')</script>"
        "<style>p { color: red }</style><p>One<br>Two</p>"
        "<ul><li>x<ul><li>y</li></ul></li></ul>"
        '<a href="https://e.example/a">https://e.example/a</a> '
        '<a href="#top">top</a> <a href="https://e.example/b"></a>'
        "<pre>  keep\n    this</pre><blockquote>quoted<br>lines</blockquote>after"
        "<p>unclosed <b>bold"
    )
    assert html_to_text(html) == (
        "a&b <c>\n\nOne\nTwo\n\n- x\n  - y\n\n"
        "https://e.example/a top https://e.example/b\n\n"
        "  keep\n    this\n\n> quoted\n> lines\nafter\n\nunclosed bold"
    )
    assert html_to_text("a < b and c > d <<< x") == "a < b and c > d <<< x"
    assert html_to_text("") == ""


def test_gmail_reply_on_wrote_wrapped_over_two_lines() -> None:
    mail = case("gmail_reply.eml")
    assert mail.text == "Yes, please make the worktop 60 cm deep."
    assert mail.quoted.startswith("On Mon, 5 Feb 2024 at 10:15, Kitchen Sales")
    assert "> what depth should the worktop be?" in mail.quoted
    assert mail.references == ["order-1042-1@kuhni.example", "order-1042-2@kuhni.example"]


def test_gmail_quote_div_in_html_only_mail() -> None:
    raw = build(
        BASIC + "\nContent-Type: text/html; charset=utf-8",
        '<div dir="ltr">Sure, Friday.</div><br><div class="gmail_quote">'
        '<div class="gmail_attr">On Fri, 1 Mar 2024, Sales wrote:<br></div>'
        '<blockquote class="gmail_quote">Can we deliver on Friday?</blockquote></div>',
    )
    mail = parse_mail(raw)
    assert mail.text == "Sure, Friday."
    assert mail.quoted == "On Fri, 1 Mar 2024, Sales wrote:\n> Can we deliver on Friday?"
    # The marker alone (no attribution line, no blockquote) is enough.
    bare = build(
        BASIC + "\nContent-Type: text/html; charset=utf-8",
        '<div>Thanks!</div><div class="gmail_quote"><div>The old message.</div></div>',
    )
    assert (parse_mail(bare).text, parse_mail(bare).quoted) == ("Thanks!", "The old message.")
    cite = build(
        BASIC + "\nContent-Type: text/html; charset=utf-8",
        '<div>Ok.</div><blockquote type="cite"><div>Earlier text.</div></blockquote>',
    )
    assert (parse_mail(cite).text, parse_mail(cite).quoted) == ("Ok.", "> Earlier text.")


def test_outlook_html_reply_divrplyfwdmsg() -> None:
    mail = case("outlook_html_reply.eml")
    assert mail.text == (
        "Hello,\n\nThursday works for us. Please call before delivery: +7 495 123-45-67."
        "\n\nRegards,\nSergey"
    )
    assert mail.quoted.startswith("From: Kitchen Sales <sales@kuhni.example>\nSent: Friday")
    assert mail.quoted.endswith("Dear Sergey, your kitchen is ready. When can we deliver it?")
    assert mail.subject == "RE: Kitchen order 1042"


def test_outlook_russian_header_block() -> None:
    mail = case("outlook_ru_reply.eml")
    assert mail.text == "Добрый день!\n\nЗамерщик может приехать в среду после 14:00.\n\nМария"
    assert mail.quoted.startswith("________________________________\nОт: Кухни на заказ")
    assert mail.quoted.endswith("Мария, когда удобно принять замерщика?")
    assert mail.subject == "Ответ: RE: Замер"


def test_yandex_reply_pishet_and_signature_delimiter() -> None:
    mail = case("yandex_reply.eml")
    # The "-- " delimiter goes, the signature (a phone number) stays.
    assert mail.text == (
        "Спасибо, цена устраивает. Оформляйте заказ.\n\nОлег Соколов\n+7 926 000-11-22"
    )
    assert mail.quoted == (
        '14.02.2024, 12:05, "Кухни на заказ" <sales@kuhni.example> пишет:\n'
        "> Олег, добрый день!\n> Стоимость кухни 185 000 руб."
    )


def test_mail_ru_html_reply_blockquote() -> None:
    mail = case("mailru_html_reply.eml")
    assert mail.text == "Доставку в субботу подтверждаю.\nАдрес: ул. Ленина, 5, кв. 12"
    assert "Анна, подтвердите, пожалуйста, доставку в субботу." in mail.quoted


def test_forwarded_inline_russian_separator() -> None:
    mail = case("forwarded_inline_ru.eml")
    assert mail.text == "Пересылаю счёт от бухгалтерии."
    assert mail.quoted.startswith("-------- Пересылаемое сообщение --------")
    assert "Счёт № 15 на сумму 185 000 руб." in mail.quoted


def test_quote_separation_rules() -> None:
    assert split_quoted("Ok.\n\n-----Original Message-----\nFrom: x\nold") == (
        "Ok.",
        "-----Original Message-----\nFrom: x\nold",
    )
    assert split_quoted("Top.\n\n> old 1\n> old 2\n") == ("Top.", "> old 1\n> old 2")
    # Interleaved answers stay: only a trailing quote block is cut.
    inline = "> question 1?\nanswer 1\n> question 2?\nanswer 2"
    assert split_quoted(inline) == (inline, "")
    # A forward without a comment is all new text.
    fwd = "---------- Forwarded message ---------\nFrom: a@b.example\n\nHello"
    assert split_quoted(fwd) == (fwd, "")
    # A delivery list is not an Outlook header block (no Subject).
    order = "From: Moscow\nTo: Kazan\nDate: 12.03\n\nThanks"
    assert split_quoted(order) == (order, "")
    outlook_de = (
        "Danke!\n\nVon: Shop <s@x.example>\nGesendet: Montag\nAn: a@b\nBetreff: Termin\n\nx"
    )
    assert split_quoted(outlook_de)[0] == "Danke!"
    thunderbird = "Хорошо.\n\n01.03.2024 10:00, Иван Петров пишет:\n> Вопрос"
    assert split_quoted(thunderbird) == (
        "Хорошо.",
        "01.03.2024 10:00, Иван Петров пишет:\n> Вопрос",
    )
    apple = "Yes.\n\nBegin forwarded message:\n\nFrom: a@b.example\nSubject: s"
    assert split_quoted(apple)[0] == "Yes."


def test_format_flowed_is_joined() -> None:
    raw = build(
        BASIC + "\nContent-Type: text/plain; charset=utf-8; format=flowed; delsp=no",
        "This is a long \nflowed paragraph.\n\n> quoted \n> continued\n",
    )
    mail = parse_mail(raw)
    assert mail.text == "This is a long flowed paragraph."
    assert mail.quoted == "> quoted continued"


# ---------------------------------------------------------------- automatic mail


def test_auto_submitted_auto_replied() -> None:
    mail = case("auto_replied.eml")
    assert mail.auto is AutoKind.AUTO_REPLY
    assert mail.null_return_path is True
    assert mail.bounced_recipients == []
    assert mail.text.startswith("I am on vacation until 26 February")


def test_exchange_out_of_office_without_auto_submitted() -> None:
    mail = case("exchange_ooo.eml")
    assert mail.auto is AutoKind.AUTO_REPLY
    assert mail.null_return_path is False
    assert mail.subject == "Автоматический ответ: Кухни"
    assert mail.text.startswith("Я в отпуске до 1 марта.")


def test_auto_reply_header_variants() -> None:
    for header in (
        "Auto-Submitted: auto-generated",
        "Auto-Submitted: auto-notified; owner-email=x@y",
        "X-Autoreply: yes",
        "X-Autorespond: Out of office",
        "X-Auto-Response-Suppress: OOF",
        "Precedence: auto_reply",
    ):
        assert parse_mail(build(BASIC + "\n" + header)).auto is AutoKind.AUTO_REPLY, header
    assert parse_mail(build(BASIC + "\nAuto-Submitted: no")).auto is None
    assert parse_mail(build(BASIC + "\nSubject: Automatic reply: Order")).auto is (
        AutoKind.AUTO_REPLY
    )
    assert parse_mail(build(BASIC + "\nSubject: Re: Order")).auto is None


def test_dsn_bounce_lists_only_failed_recipients() -> None:
    mail = case("dsn_bounce.eml")
    assert mail.auto is AutoKind.BOUNCE
    assert mail.null_return_path is True
    assert mail.bounced_recipients == ["ghost.user@nowhere.example"]
    assert mail.text.startswith("Delivery to the following recipients failed permanently:")
    assert [a.mime_type for a in mail.attachments] == ["message/rfc822"]
    assert b"Subject: Your kitchen order" in mail.attachments[0].data


def test_postfix_mailer_daemon_bounce() -> None:
    mail = case("postfix_bounce.eml")
    assert mail.auto is AutoKind.BOUNCE
    assert mail.from_addr == "MAILER-DAEMON@mx.example.org"
    assert mail.from_name == "Mail Delivery System"
    assert mail.bounced_recipients == ["no-such-user@example.org"]
    assert mail.text.startswith("This is the mail system at host mx.example.org.")
    assert [a.mime_type for a in mail.attachments] == ["text/rfc822-headers"]


def test_plain_text_exim_bounce_uses_x_failed_recipients() -> None:
    mail = case("exim_text_bounce.eml")
    assert mail.auto is AutoKind.BOUNCE
    assert mail.bounced_recipients == ["old.client@closed.example"]


def test_null_return_path_alone_is_a_bounce_and_a_forwarded_bounce_is_not() -> None:
    bare = parse_mail(build(BASIC + "\nReturn-Path: <>"))
    assert (bare.auto, bare.null_return_path) == (AutoKind.BOUNCE, True)
    forwarded = (CASES / "dsn_bounce.eml").read_bytes()
    raw = build(
        BASIC + '\nSubject: Fwd: bounce\nContent-Type: multipart/mixed; boundary="f"',
        b"--f\nContent-Type: text/plain\n\nWhy did this bounce?\n--f\n"
        b"Content-Type: message/rfc822\n\n" + forwarded + b"\n--f--\n",
    )
    mail = parse_mail(raw)
    assert mail.auto is None
    assert mail.bounced_recipients == []
    assert mail.text.startswith("Why did this bounce?")


def test_mailing_list_mail_is_bulk() -> None:
    assert case("mailing_list.eml").auto is AutoKind.BULK
    assert parse_mail(build(BASIC + "\nList-Id: <x.lists.example>")).auto is AutoKind.BULK
    assert parse_mail(build(BASIC + "\nPrecedence: junk")).auto is AutoKind.BULK
    assert parse_mail(build(BASIC)).auto is None


# ---------------------------------------------------------------- broken input


def test_mail_without_headers_is_broken_but_keeps_its_text() -> None:
    raw = (CASES / "no_headers.eml").read_bytes()
    mail = parse_mail(raw)
    assert mail.broken == "no header fields"
    assert mail.text == "Добрый день! Хочу заказать шкаф. Позвоните мне: +7 905 123-45-67"
    assert mail.message_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert mail.has_message_id is False


def test_binary_garbage_and_empty_input() -> None:
    garbage = random.Random(42).randbytes(4096)
    mail = parse_mail(garbage)
    assert mail.broken == "binary data, not a message"
    assert mail.text == ""
    assert mail.content_hash == hashlib.sha256(garbage).hexdigest()
    assert parse_mail(b"").broken == "empty message"
    assert parse_mail(b"\r\n \r\n").broken == "empty message"


def test_failure_inside_becomes_broken(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*_args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(channels.email.mime, "read_body", explode)
    raw = (CASES / "gmail_reply.eml").read_bytes()
    mail = parse_mail(raw)
    assert mail.broken == "could not be parsed (compat32_failed:RuntimeError)"
    assert mail.defects == ["default_failed:RuntimeError", "compat32_failed:RuntimeError"]
    assert mail.content_hash == hashlib.sha256(raw).hexdigest()


def test_compat32_fallback_when_the_default_policy_raises(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Raising(channels.email.mime._RawHeaderPolicy):
        def header_fetch_parse(self, name: str, value: str) -> str:
            raise ValueError("bad header")

    monkeypatch.setattr(channels.email.mime, "_DEFAULT", Raising())
    mail = case("gmail_reply.eml")
    assert mail.broken is None
    assert mail.text == "Yes, please make the worktop 60 cm deep."
    assert "default_failed:ValueError" in mail.defects
    assert "parsed_with_compat32" in mail.defects


# ---------------------------------------------------------------- subjects


def test_strip_subject_prefixes() -> None:
    assert strip_subject_prefixes("Re: Fwd: AW: Ответ: RE[2]: hello") == "hello"
    assert strip_subject_prefixes("  RE: re:FW:  Кухня  ") == "Кухня"
    assert strip_subject_prefixes("Re : SV: VS: Antw: WG: Fwd: x") == "x"
    assert strip_subject_prefixes("回复：报价") == "报价"
    assert strip_subject_prefixes("Re(3): Отв: Пересл: смета") == "смета"
    assert strip_subject_prefixes("Re:") == ""
    assert strip_subject_prefixes("[Ticket #12] Re: hello") == "[Ticket #12] Re: hello"
    assert strip_subject_prefixes("Remote work") == "Remote work"
    assert strip_subject_prefixes("Reply needed") == "Reply needed"


# ---------------------------------------------------------------- never raises

FIXTURES = sorted(CASES.glob("*.eml"))


@settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.binary(max_size=4096))
def test_parse_mail_never_raises_on_arbitrary_bytes(raw: bytes) -> None:
    mail = parse_mail(raw)
    assert mail.content_hash == hashlib.sha256(raw).hexdigest()
    assert mail.has_message_id or mail.message_id == f"sha256:{mail.content_hash}"
    assert_valid_unicode(mail)


def assert_valid_unicode(mail: ParsedMail) -> None:
    """Every string can be stored (UTF-8): no surrogate escapes leak out."""
    strings = [
        mail.message_id,
        mail.subject,
        mail.text,
        mail.quoted,
        *mail.reply_to,
        *mail.to,
        *mail.cc,
        *mail.in_reply_to,
        *mail.references,
        *mail.bounced_recipients,
        *mail.defects,
    ]
    strings += [s for s in (mail.from_addr, mail.from_name, mail.html, mail.broken) if s]
    for a in mail.attachments:
        strings += [a.mime_type, *(s for s in (a.name, a.content_id) if s)]
    for value in strings:
        value.encode("utf-8")


_HEADERISH = st.sampled_from(
    [
        b"Content-Type: multipart/mixed; boundary=",
        b"Content-Type: text/plain; charset=",
        b"Content-Transfer-Encoding: base64\n",
        b"Content-Disposition: attachment; filename*=",
        b"=?utf-8?b?",
        b"=?koi8-r?q?=",
        b"?=",
        b"--",
        b"\n\n",
        b"\r\n",
        b"<",
        b">",
        b'"',
        b"\xd0",
        b"\xff",
        b"\x00",
    ]
)


@settings(
    max_examples=200,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    st.sampled_from(FIXTURES),
    st.lists(
        st.tuples(
            st.floats(0, 1), st.integers(0, 64), st.one_of(_HEADERISH, st.binary(max_size=16))
        ),
        max_size=8,
    ),
    st.floats(0.05, 1),
)
def test_parse_mail_never_raises_on_mutated_fixtures(
    path: Path, edits: list[tuple[float, int, bytes]], keep: float
) -> None:
    data = bytearray(path.read_bytes())
    for where, cut, insert in edits:
        pos = int(where * len(data))
        data[pos : pos + cut] = insert
    raw = bytes(data[: max(1, int(len(data) * keep))])
    mail = parse_mail(raw)
    assert isinstance(mail, ParsedMail)
    assert mail.content_hash == hashlib.sha256(raw).hexdigest()
    assert all(isinstance(a.data, bytes) for a in mail.attachments)
    assert_valid_unicode(mail)
