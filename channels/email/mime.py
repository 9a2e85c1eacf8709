"""Raw RFC 5322 mail → one typed :class:`ParsedMail`; pure, no I/O, never raises.

Parsing is the stdlib ``email`` package (``policy.default``, and ``policy.compat32`` when
``default`` raises on a message) made robust around it: header values are decoded from
the raw values the parser keeps (:mod:`channels.email.headers`), bodies through the charset
repair of :mod:`channels.email.charset`, the MIME tree is read by :mod:`channels.email.tree`,
HTML and quoted replies by :mod:`channels.email.text`, automatic mail is recognised by
:mod:`channels.email.auto`. See docs/channels/email-parsing.md.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from datetime import datetime
from email import policy
from email.message import Message
from email.parser import BytesParser
from email.policy import EmailPolicy, Policy

from channels.email import block
from channels.email.auto import AUTO_HEADERS, AutoKind, explain, failed_recipients
from channels.email.charset import LATIN, clean_text, codec_for, decode_text
from channels.email.detect import detect
from channels.email.headers import (
    address_list,
    header_text,
    parse_addresses,
    parse_date,
    parse_id_list,
    parse_message_id,
    strip_subject_prefixes,
    unfold,
)
from channels.email.text import split_quoted, tidy
from channels.email.tree import CONTROL, MAX_PARTS, header_map, is_null_path, param, read_body

__all__ = [
    "AutoKind",
    "MailAttachment",
    "ParsedMail",
    "parse_mail",
    "strip_subject_prefixes",
]


@dataclass(frozen=True, slots=True)
class MailAttachment:
    name: str | None  # decoded file name (RFC 2231 / encoded words), None if absent
    mime_type: str  # lower-case, e.g. "application/pdf"
    data: bytes  # decoded payload
    content_id: str | None  # without <>
    inline: bool  # Content-Disposition inline / cid-referenced


@dataclass(frozen=True, slots=True)
class ParsedMail:
    message_id: str  # Message-ID without <>; else "sha256:" + hex sha256 of the raw bytes
    has_message_id: bool
    content_hash: str  # hex sha256 of the raw bytes
    from_addr: str | None  # the sender's address exactly as written (no case folding)
    from_name: str | None  # decoded display name
    # The field the sender was read from: "From", "From #2" (the first From unusable),
    # "Sender", "Reply-To", "Return-Path"; None when no field had an address.
    sender_source: str | None
    reply_to: list[str]  # Reply-To addresses
    reply_to_name: str | None  # the first Reply-To address's display name
    to: list[str]
    cc: list[str]
    subject: str  # decoded; "" when missing
    date: datetime | None  # aware UTC; None when missing/unparseable
    text: str  # the new text (quoted replies and signature separators removed)
    quoted: str  # the separated quoted part ("" when none)
    html: str | None  # the HTML body if there was one (decoded str)
    in_reply_to: list[str]  # ids without <>
    references: list[str]  # ids without <>, in header order (oldest first)
    attachments: list[MailAttachment]
    auto: AutoKind | None
    auto_reason: str | None  # the rule that made the mail automatic, in words
    null_return_path: bool  # Return-Path: <>
    bounced_recipients: list[str]  # failed DSN Final-/Original-Recipient, lower-cased
    broken: str | None  # why the message could not be parsed at all; else None
    defects: list[str]  # email-package defects and our own repairs, for diagnostics


# Where the author's address is looked for, in order (field name, header key).
_SENDER_FIELDS = (
    ("From", "from"),
    ("Sender", "sender"),
    ("Reply-To", "reply-to"),
    ("Return-Path", "return-path"),
)

# Header fields at least one of which any real message has.
_KNOWN_HEADERS = frozenset(
    {
        "from", "sender", "to", "cc", "bcc", "subject", "date", "message-id", "received",
        "return-path", "mime-version", "content-type", "reply-to", "in-reply-to",
        "references", "delivered-to", "x-original-to", "content-transfer-encoding",
    }
)  # fmt: skip


class _RawHeaderPolicy(EmailPolicy):
    """``policy.default`` except that header values are fetched as unfolded raw strings.

    The MIME structure, the defects and the EmailMessage class are policy.default's; only
    the header objects are not built: every value is decoded by channels.email.headers, and
    building them (``_header_value_parser``) costs 5-35 ms per mail with many parts and
    raises on some malformed values.
    """

    def header_fetch_parse(self, name: str, value: str) -> str:
        return _LINE_BREAKS.sub("", str(value))


_LINE_BREAKS = re.compile(r"\r\n|\r|\n")
_DEFAULT = _RawHeaderPolicy()


def parse_mail(raw: bytes) -> ParsedMail:
    """Never raises (any exception inside becomes `broken`)."""
    try:
        data = bytes(raw)
    except Exception:
        data = b""
    digest = hashlib.sha256(data).hexdigest()
    try:
        return _clean(_parse(data, digest))
    except Exception as exc:  # the contract: a ParsedMail, whatever the bytes
        reason = clean_text(f"{type(exc).__name__}: {exc}"[:200])
        try:
            return _clean(_salvage(data, digest, reason, []))
        except Exception:
            return _salvage(b"", digest, reason, [])


def _clean(mail: ParsedMail) -> ParsedMail:
    """Every string valid Unicode (no surrogate escapes from 8-bit header bytes)."""

    def many(values: list[str]) -> list[str]:
        return [clean_text(v) for v in values]

    def opt(value: str | None) -> str | None:
        return None if value is None else clean_text(value)

    return replace(
        mail,
        message_id=clean_text(mail.message_id),
        from_addr=opt(mail.from_addr),
        from_name=opt(mail.from_name),
        reply_to=many(mail.reply_to),
        reply_to_name=opt(mail.reply_to_name),
        auto_reason=opt(mail.auto_reason),
        to=many(mail.to),
        cc=many(mail.cc),
        subject=clean_text(mail.subject),
        text=clean_text(mail.text),
        quoted=clean_text(mail.quoted),
        html=opt(mail.html),
        in_reply_to=many(mail.in_reply_to),
        references=many(mail.references),
        attachments=[
            replace(
                a,
                name=opt(a.name),
                mime_type=clean_text(a.mime_type),
                content_id=opt(a.content_id),
            )
            for a in mail.attachments
        ],
        bounced_recipients=many(mail.bounced_recipients),
        broken=opt(mail.broken),
        defects=many(mail.defects),
    )


def _parse(raw: bytes, digest: str) -> ParsedMail:
    if not raw.strip():
        return _salvage(raw, digest, "empty message", [])
    failures: list[str] = []
    repaired, repairs = block.repair(raw)
    for pol in (_DEFAULT, policy.compat32):
        try:
            msg: Message = BytesParser(policy=pol).parsebytes(repaired)
            return _Reader(msg, repaired, digest, [*repairs, *failures]).result()
        except Exception as exc:
            failures.append(f"{_policy_name(pol)}_failed:{type(exc).__name__}")
    return _salvage(raw, digest, f"could not be parsed ({failures[-1]})", failures)


def _policy_name(pol: Policy) -> str:
    return "compat32" if pol is policy.compat32 else "default"


def _looks_binary(raw: bytes) -> bool:
    sample = raw[:8192]
    if b"\x00" in sample:
        return True
    control = sum(1 for b in sample if b < 0x20 and b not in (9, 10, 12, 13, 27))
    return control * 20 > len(sample)


def _salvage(raw: bytes, digest: str, reason: str, defects: list[str]) -> ParsedMail:
    """A broken message: no header fields, binary data, or the parser failed."""
    text = quoted = ""
    if raw.strip() and not _looks_binary(raw):
        decoded, repairs = decode_text(raw, None)
        defects = [*defects, *repairs]
        text, quoted = split_quoted(tidy(CONTROL.sub("", decoded)))
    elif raw.strip():
        reason = "binary data, not a message" if reason == "no header fields" else reason
    return ParsedMail(
        message_id=f"sha256:{digest}",
        has_message_id=False,
        content_hash=digest,
        from_addr=None,
        from_name=None,
        sender_source=None,
        reply_to=[],
        reply_to_name=None,
        to=[],
        cc=[],
        subject="",
        date=None,
        text=text,
        quoted=quoted,
        html=None,
        in_reply_to=[],
        references=[],
        attachments=[],
        auto=None,
        auto_reason=None,
        null_return_path=False,
        bounced_recipients=[],
        broken=reason,
        defects=_unique(defects),
    )


def _non_latin(label: str) -> bool:
    codec = codec_for(label)
    return codec is not None and codec not in LATIN and codec != "utf_8"


def _undeclared_8bit(raw: bytes) -> str | None:
    """The charset of a mail's 8-bit lines when they are not UTF-8; else None."""
    if raw.isascii():
        return None
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        return None
    lines = [line for line in raw[:65536].splitlines() if not line.isascii()]
    return detect(b"\n".join(lines)[:8192])


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


class _Reader:
    def __init__(self, msg: Message, raw: bytes, digest: str, defects: list[str]) -> None:
        self.msg = msg
        self.raw = raw
        self.digest = digest
        self.defects = defects
        self.policy = msg.policy
        self.headers = header_map(msg)
        self.hints = self._charset_hints()

    # ------------------------------------------------------------ the result

    def result(self) -> ParsedMail:
        if self.policy is policy.compat32:
            self.defects.append("parsed_with_compat32")
        if not any(name in _KNOWN_HEADERS for name in self.headers):
            return _salvage(self.raw, self.digest, "no header fields", self.defects)
        h = self.headers
        fix = self.defects
        from_name, from_addr, from_raw, sender_source = self._sender()
        if sender_source not in (None, "From"):
            fix.append(f"sender_from:{sender_source}")
        subject = header_text(h["subject"][0], self.hints, fix) if h.get("subject") else ""
        date = parse_date(h["date"][0]) if h.get("date") else None
        msg_id = parse_message_id(h["message-id"][0]) if h.get("message-id") else None
        return_path = h.get("return-path", [None])[0]
        null_return_path = return_path is not None and is_null_path(return_path)

        body = read_body(self.msg, self.hints, fix)

        auto_found = explain(
            {name: [unfold(v) for v in h[name]] for name in AUTO_HEADERS if name in h},
            subject=subject,
            from_raw=header_text(from_raw, self.hints) if from_raw else "",
            body_start=body.own_text[:4000],
            has_delivery_status=body.has_dsn,
            null_return_path=null_return_path,
            report_type=body.report_type,
        )
        auto = auto_found[0] if auto_found else None
        bounced = failed_recipients(body.dsn_blocks)
        if auto is AutoKind.BOUNCE and not bounced and h.get("x-failed-recipients"):
            bounced = [a.lower() for a in address_list(h["x-failed-recipients"], self.hints)]
        return ParsedMail(
            message_id=msg_id or f"sha256:{self.digest}",
            has_message_id=msg_id is not None,
            content_hash=self.digest,
            from_addr=from_addr,
            from_name=from_name,
            sender_source=sender_source,
            reply_to=address_list(h.get("reply-to", []), self.hints, fix),
            reply_to_name=self._first_name(h.get("reply-to", [])),
            to=address_list(h.get("to", []), self.hints, fix),
            cc=address_list(h.get("cc", []), self.hints, fix),
            subject=subject,
            date=date,
            text=body.text,
            quoted=body.quoted,
            html=body.html,
            in_reply_to=parse_id_list(h.get("in-reply-to", [])),
            references=parse_id_list(h.get("references", [])),
            attachments=[
                MailAttachment(f.name, f.mime_type, f.data, f.content_id, f.inline)
                for f in body.files
            ],
            auto=auto,
            auto_reason=auto_found[1] if auto_found else None,
            null_return_path=null_return_path,
            bounced_recipients=bounced,
            broken=None,
            defects=_unique([*self._email_defects(), *self.defects]),
        )

    def _sender(self) -> tuple[str | None, str | None, str, str | None]:
        """``(name, address, raw value, the field it came from)`` of the mail's author.

        The first From value with a usable address (a mail may carry several, the first
        one unusable); with none, Sender, then Reply-To, then Return-Path. The name is
        the first one seen when no field has an address.
        """
        h = self.headers
        first_name: str | None = None
        first_raw = ""
        for field, key in _SENDER_FIELDS:
            for n, raw in enumerate(h.get(key, [])):
                if key == "return-path" and is_null_path(raw):
                    continue
                for name, addr in parse_addresses(raw, self.hints, self.defects):
                    if addr:
                        label = field if n == 0 or key != "from" else f"From #{n + 1}"
                        return name or first_name, addr, raw, label
                    if name and first_name is None:
                        first_name = name
                first_raw = first_raw or raw
        return first_name, None, first_raw, None

    def _first_name(self, raw_values: list[str]) -> str | None:
        for raw in raw_values:
            for name, addr in parse_addresses(raw, self.hints):
                if addr:
                    return name
        return None

    def _charset_hints(self) -> tuple[str, ...]:
        found: list[str] = []
        for count, part in enumerate(self.msg.walk()):
            if count > 50:
                break
            charset = param(part, "charset")
            if charset and charset.lower() not in found:
                found.append(charset.lower())
        if not any(_non_latin(c) for c in found) and (codec := _undeclared_8bit(self.raw)):
            # 8-bit text no part declares: the whole mail's 8-bit lines are a sample long
            # enough to tell the charset that short headers are then read in.
            found.append(codec)
            self.defects.append(f"charset_detected_for_mail:{codec}")
        return tuple(found)

    def _email_defects(self) -> list[str]:
        names: list[str] = []
        for count, part in enumerate(self.msg.walk()):
            if count > MAX_PARTS:
                break
            names.extend(type(d).__name__ for d in getattr(part, "defects", []))
        return names
