"""The MIME tree of a parsed mail → its text, quoted part, HTML and files (for channels/email/mime).

Read like a mail client does: ``multipart/alternative`` gives the text/plain branch for
the text and the last HTML branch for ``html``; ``multipart/related`` is its root part plus
inline resources; ``multipart/mixed`` (and any other multipart) concatenates its inline text
parts; a ``message/rfc822`` part is a forwarded mail whose text is appended after a short
From/Date/Subject/To header and whose attachments are listed; in a ``multipart/report`` the
first part is the text, ``message/delivery-status`` gives the DSN fields and the returned
message is an attachment. A multipart without (or with a wrong) boundary gets its boundary
guessed from the body, else its body is read as text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesParser
from email.policy import Policy, compat32
from email.utils import collapse_rfc2231_value
from urllib.parse import unquote

from channels.email.auto import dsn_fields_from_text
from channels.email.charset import decode_8bit_header, decode_text
from channels.email.headers import decode_words, header_text
from channels.email.text import QUOTE_MARK, html_to_text, split_quoted, tidy, unflow

MAX_DEPTH = 40
MAX_PARTS = 2000
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_CID_REF = re.compile(r"""cid:([^\s"'<>)]+)""", re.IGNORECASE)
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_:.+-]+)""", re.I)
_BOUNDARY_LINE = re.compile(r"^--([^\s\"\\]{1,200}?)(?:--)?[ \t]*\r?$", re.MULTILINE)
_FORWARD_HEADERS = (("From", "from"), ("Date", "date"), ("Subject", "subject"), ("To", "to"))


@dataclass(frozen=True, slots=True)
class PartFile:
    """An attachment or inline resource, before it becomes a MailAttachment."""

    name: str | None
    mime_type: str
    data: bytes
    content_id: str | None
    inline: bool


@dataclass(frozen=True, slots=True)
class Body:
    text: str  # new text, quoted part split off, forwarded mails appended
    quoted: str
    html: str | None
    own_text: str  # the sender's own text before quote separation
    files: list[PartFile]
    has_dsn: bool  # a delivery-status report (not inside a forwarded mail)
    dsn_blocks: list[list[tuple[str, str]]]
    # Another multipart/report's report-type ("disposition-notification" …), or None.
    report_type: str | None = None


@dataclass(slots=True)
class _Segment:
    """One piece of body: a text/plain and/or HTML rendering, or a forwarded mail."""

    plain: str | None = None
    html: str | None = None
    forwarded: bool = False
    quoted: str = ""


@dataclass(slots=True)
class _Pending:
    name: str | None
    mime_type: str
    data: bytes
    content_id: str | None
    disposition: str | None


@dataclass(slots=True)
class _State:
    attachments: list[_Pending] = field(default_factory=list)
    html_seen: list[str] = field(default_factory=list)
    dsn_blocks: list[list[tuple[str, str]]] = field(default_factory=list)
    has_dsn: bool = False
    report_type: str | None = None
    parts: int = 0


def read_body(msg: Message, hints: tuple[str, ...], defects: list[str]) -> Body:
    """Walk ``msg``; repairs are appended to ``defects``."""
    return _Tree(msg, hints, defects).read()


class _Tree:
    def __init__(self, msg: Message, hints: tuple[str, ...], defects: list[str]) -> None:
        self.msg = msg
        self.policy = msg.policy
        self.hints = hints
        self.defects = defects
        self.state = _State()

    def read(self) -> Body:
        segments = self._collect(self.msg, 0, forwarded=False)
        own_text = _own_text(segments)
        if not own_text.strip() and (preamble := _preamble(self.msg)):
            # Old bounces write their human-readable part before the first boundary.
            own_text = preamble
        text, quoted = split_quoted(own_text)
        text, quoted = _with_forwards(text, quoted, segments)
        html_parts = [s.html for s in segments if not s.forwarded and s.html]
        return Body(
            text=text,
            quoted=quoted,
            html="\n".join(html_parts) if html_parts else None,
            own_text=own_text,
            files=self._files(),
            has_dsn=self.state.has_dsn,
            dsn_blocks=self.state.dsn_blocks,
            report_type=self.state.report_type,
        )

    def _collect(self, part: Message, depth: int, forwarded: bool) -> list[_Segment]:
        st = self.state
        st.parts += 1
        if depth > MAX_DEPTH or st.parts > MAX_PARTS:
            self.defects.append("mime_tree_too_deep_or_large")
            return []
        ctype = _ctype(part)
        maintype, _, subtype = ctype.partition("/")
        if maintype == "multipart":
            if not part.is_multipart():
                repaired = self._repair_multipart(part, ctype)
                if repaired is None:
                    self.defects.append("multipart_without_boundary_read_as_text")
                    return [_Segment(plain=self._text(part, "text/plain"))]
                part = repaired
            children = [c for c in _children(part) if isinstance(c, Message)]
            if subtype == "alternative":
                return self._alternative(children, depth, forwarded)
            if subtype == "related":
                return self._related(part, children, depth, forwarded)
            if subtype == "report":
                return self._report(part, children, depth, forwarded)
            segments: list[_Segment] = []
            for child in children:
                segments.extend(self._collect(child, depth + 1, forwarded))
            return segments
        if ctype in ("message/rfc822", "message/global"):
            return self._forward(part, depth, forwarded)
        if ctype in ("message/delivery-status", "message/global-delivery-status"):
            if not forwarded:
                self.state.has_dsn = True
                self.state.dsn_blocks.extend(_dsn_blocks(part))
            return []
        return self._leaf(part, ctype, depth)

    def _leaf(self, part: Message, ctype: str, depth: int) -> list[_Segment]:
        disposition = _disposition(part)
        name = _filename(part, self.hints, self.defects)
        is_body_text = ctype in ("text/plain", "text/html") or (
            depth == 0 and ctype.startswith("text/")
        )
        if is_body_text and disposition != "attachment" and not name:
            text = self._text(part, ctype)
            if ctype == "text/html":
                self.state.html_seen.append(text)
                return [_Segment(html=text)]
            return [_Segment(plain=text)]
        self._attach(part, ctype, name)
        return []

    def _alternative(self, children: list[Message], depth: int, forwarded: bool) -> list[_Segment]:
        plain: str | None = None
        html: str | None = None
        extra: list[_Segment] = []
        for child in children:
            segs = self._collect(child, depth + 1, forwarded)
            plains = [s.plain for s in segs if s.plain is not None and not s.forwarded]
            htmls = [s.html for s in segs if s.html is not None and not s.forwarded]
            if plains and plain is None:
                plain = "\n\n".join(plains)
            if htmls:
                html = "\n".join(htmls)
            extra.extend(s for s in segs if s.forwarded)
        if plain is None and html is None:
            return extra
        return [_Segment(plain=plain, html=html), *extra]

    def _related(
        self, part: Message, children: list[Message], depth: int, forwarded: bool
    ) -> list[_Segment]:
        if not children:
            return []
        start = param(part, "start")
        root = children[0]
        root_type = (param(part, "type") or "").strip().lower()
        if start:
            wanted = start.strip().strip("<>")
            for child in children:
                if _content_id(child) == wanted:
                    root = child
                    break
        elif root_type and _ctype(root) != root_type:
            # MHTML (a saved web page) may put images before the page its "type" names.
            root = next((c for c in children if _ctype(c) == root_type), root)
        segments = self._collect(root, depth + 1, forwarded)
        for child in children:
            if child is not root:
                ctype = _ctype(child)
                if ctype.startswith(("multipart/", "message/")):
                    segments.extend(self._collect(child, depth + 1, forwarded))
                else:
                    self._attach(child, ctype)
        return segments

    def _report(
        self, part: Message, children: list[Message], depth: int, forwarded: bool
    ) -> list[_Segment]:
        report = (param(part, "report-type") or "").lower()
        if not forwarded and report in ("delivery-status", "global-delivery-status"):
            self.state.has_dsn = True
        elif not forwarded and report:
            self.state.report_type = report
        segments: list[_Segment] = []
        for index, child in enumerate(children):
            ctype = _ctype(child)
            if not forwarded and ctype in _REPORT_PARTS and not self.state.has_dsn:
                self.state.report_type = _REPORT_PARTS[ctype]
            if index == 0 or ctype.startswith("multipart/"):
                segments.extend(self._collect(child, depth + 1, forwarded))
            elif ctype in ("message/rfc822", "message/global", "text/rfc822-headers"):
                self._attach(child, ctype)
            else:
                segments.extend(self._collect(child, depth + 1, forwarded))
        return segments

    def _forward(self, part: Message, depth: int, forwarded: bool) -> list[_Segment]:
        inner = _inner_message(part, self.policy)
        if inner is None:
            self._attach(part, _ctype(part))
            return []
        segments = self._collect(inner, depth + 1, forwarded=True)
        text, quoted = split_quoted(_own_text(segments))
        text, quoted = _with_forwards(text, quoted, segments)
        summary: list[str] = []
        inner_headers = header_map(inner)
        for label, key in _FORWARD_HEADERS:
            if inner_headers.get(key):
                value = header_text(inner_headers[key][0], self.hints)
                if value:
                    summary.append(f"{label}: {value}")
        body = "\n".join(["---------- Forwarded message ----------", *summary])
        if text:
            body = f"{body}\n\n{text}"
        return [_Segment(plain=body, forwarded=True, quoted=quoted)]

    def _repair_multipart(self, part: Message, ctype: str) -> Message | None:
        """Re-read a multipart whose boundary is missing or wrong, guessing it from the body."""
        data = _payload_bytes(part)
        m = _BOUNDARY_LINE.search(data.decode("latin-1"))
        # A boundary opens and closes (or separates) parts: it occurs at least twice.
        if m is None:
            return None
        token = re.escape(m.group(1).encode("latin-1"))
        if len(re.findall(rb"(?m)^--" + token, data)) < 2:
            return None
        subtype = ctype.partition("/")[2]
        if not re.fullmatch(r"[a-z0-9.+-]{1,40}", subtype):
            subtype = "mixed"
        head = f'Content-Type: multipart/{subtype}; boundary="{m.group(1)}"\n\n'
        head_bytes = head.encode("latin-1")
        repaired: Message = BytesParser(policy=self.policy).parsebytes(head_bytes + data)
        if not (repaired.is_multipart() and _children(repaired)):
            return None
        self.defects.append("multipart_boundary_repaired")
        return repaired

    # ------------------------------------------------------------ leaves

    def _text(self, part: Message, ctype: str) -> str:
        data = _payload_bytes(part)
        charset = param(part, "charset")
        if ctype == "text/html" and not charset:
            m = _META_CHARSET.search(data[:4096])
            if m:
                charset = m.group(1).decode("ascii", "replace")
        text, repairs = decode_text(data, charset, self.hints)
        self.defects.extend(repairs)
        text = CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
        if ctype == "text/plain" and (param(part, "format") or "").lower() == "flowed":
            text = unflow(text, (param(part, "delsp") or "").lower() == "yes")
        return text

    def _attach(self, part: Message, ctype: str, name: str | None = None) -> None:
        if name is None:
            name = _filename(part, self.hints, self.defects)
        if ctype.startswith("message/") or ctype == "text/rfc822-headers":
            data = _message_bytes(part)
        else:
            data = _payload_bytes(part)
        self.state.attachments.append(
            _Pending(
                name=name,
                mime_type=ctype,
                data=data,
                content_id=_content_id(part),
                disposition=_disposition(part),
            )
        )

    def _files(self) -> list[PartFile]:
        refs: set[str] = set()
        for html in self.state.html_seen:
            if "cid:" in html.lower():
                refs.update(unquote(m).strip().lower() for m in _CID_REF.findall(html))
        return [
            PartFile(
                name=a.name,
                mime_type=a.mime_type,
                data=a.data,
                content_id=a.content_id,
                inline=a.disposition == "inline"
                or (a.content_id is not None and a.content_id.lower() in refs),
            )
            for a in self.state.attachments
        ]


# ---------------------------------------------------------------- helpers


def header_map(msg: Message) -> dict[str, list[str]]:
    headers: dict[str, list[str]] = {}
    for name, value in msg.raw_items():
        headers.setdefault(str(name).strip().lower(), []).append(str(value))
    return headers


def is_null_path(value: str) -> bool:
    stripped = re.sub(r"\s+", "", value)
    return stripped in ("<>", "", '<"">')


def _children(part: Message) -> list[Message]:
    payload = part.get_payload()
    return [p for p in payload if isinstance(p, Message)] if isinstance(payload, list) else []


def _ctype(part: Message) -> str:
    try:
        ctype = part.get_content_type()
    except Exception:
        return "application/octet-stream"
    return str(ctype).lower()


def param(part: Message, name: str) -> str | None:
    try:
        value = part.get_param(name)
    except Exception:
        return None
    if value is None:
        return None
    if isinstance(value, tuple):
        try:
            value = collapse_rfc2231_value(value)
        except Exception:
            value = str(value[2])
    text = str(value).strip()
    return text or None


def _disposition(part: Message) -> str | None:
    try:
        value = part.get_content_disposition()
    except Exception:
        return None
    return str(value).lower() if value else None


def _content_id(part: Message) -> str | None:
    try:
        values = part.get_all("content-id") or []
    except Exception:
        return None
    for value in values:
        ident = re.sub(r"\s+", "", str(value)).strip("<>")
        if ident:
            return ident
    return None


_PATH_SEPARATORS = re.compile(r"^.*[/\\]")


def _filename(part: Message, hints: tuple[str, ...], repairs: list[str]) -> str | None:
    try:
        name = part.get_filename()
    except Exception:
        name = param(part, "name")
    if name is None:
        name = param(part, "filename")  # some clients put it on Content-Type
    if name is None:
        return None
    text, fixes = decode_8bit_header(str(name), hints)
    repairs.extend(fixes)
    text = decode_words(text, repairs)
    text = CONTROL.sub("", text.replace("\t", " ").replace("\r", "").replace("\n", ""))
    text = _PATH_SEPARATORS.sub("", text).strip().strip('"').strip()
    return text or None


def _payload_bytes(part: Message) -> bytes:
    try:
        data = part.get_payload(decode=True)
    except Exception:
        data = None
    if isinstance(data, bytes):
        return data
    payload = part.get_payload()
    if isinstance(payload, str):
        return payload.encode("utf-8", "surrogateescape")
    return b""


def _inner_message(part: Message, pol: Policy) -> Message | None:
    payload = part.get_payload()
    if isinstance(payload, list):
        return next((p for p in payload if isinstance(p, Message)), None)
    data = _payload_bytes(part)
    if not data.strip():
        return None
    parsed: Message = BytesParser(policy=pol).parsebytes(data)
    return parsed


def _message_bytes(part: Message) -> bytes:
    payload = part.get_payload()
    if isinstance(payload, list):
        inner = next((p for p in payload if isinstance(p, Message)), None)
        if inner is None:
            return b""
        try:
            return inner.as_bytes(policy=compat32)
        except Exception:
            try:
                return inner.as_string(policy=compat32).encode("utf-8", "surrogateescape")
            except Exception:
                return b""
    return _payload_bytes(part)


def _dsn_blocks(part: Message) -> list[list[tuple[str, str]]]:
    payload = part.get_payload()
    if isinstance(payload, list):
        blocks = [
            [(str(k), str(v)) for k, v in block.raw_items()]
            for block in payload
            if isinstance(block, Message)
        ]
        if any(blocks):
            return blocks
    text, _repairs = decode_text(_payload_bytes(part), param(part, "charset"))
    return dsn_fields_from_text(text)


# What a text/plain part beside a real HTML part says when it is only a placeholder.
_PLACEHOLDER = re.compile(
    r"html[- ]?(?:message|e-?mail|version|capable|compatible|format|content|only)|"
    r"(?:does not|doesn't|cannot|can't|unable to) (?:support|display|show|read) html|"
    r"view (?:this|the) (?:e-?mail|message) (?:in|online|with)|enable html|"
    r"в формате html|html-верси|не поддерживает html|включите html",
    re.IGNORECASE,
)
_LETTER = re.compile(r"[^\W\d_]")


def is_placeholder(plain: str) -> bool:
    """A text/plain part that stands in for the HTML (empty, punctuation only, or a
    "this is an HTML message" notice) rather than rendering it."""
    text = plain.strip()
    return not _LETTER.search(text) or (len(text) <= 300 and bool(_PLACEHOLDER.search(text)))


# The machine-readable part of a multipart/report → its report-type (for a report whose
# report-type parameter is missing or garbled).
_REPORT_PARTS = {
    "message/disposition-notification": "disposition-notification",
    "message/global-disposition-notification": "disposition-notification",
    "message/feedback-report": "feedback-report",
}
_MIME_NOTICE = re.compile(r"multi-?part message in mime format|mime-?encoded", re.IGNORECASE)


def _preamble(msg: Message) -> str:
    """The text before a multipart's first boundary, unless it is the usual notice."""
    text = msg.preamble if msg.is_multipart() and isinstance(msg.preamble, str) else ""
    text = tidy(CONTROL.sub("", text))
    return "" if not _LETTER.search(text) or _MIME_NOTICE.search(text) else text


def _segment_text(segment: _Segment) -> str:
    if segment.html and segment.plain is not None and is_placeholder(segment.plain):
        html_text = html_to_text(segment.html, mark_quotes=True)
        if _LETTER.search(html_text):
            return html_text
    if segment.plain is not None and segment.plain.strip():
        # The HTML reader's quote marker means nothing in a sender's plain text.
        return segment.plain.replace(QUOTE_MARK, "")
    if segment.html:
        return html_to_text(segment.html, mark_quotes=True)
    return ""


def _own_text(segments: list[_Segment]) -> str:
    """The sender's own text: every segment but the forwarded mails."""
    pieces = [_segment_text(s) for s in segments if not s.forwarded]
    return tidy("\n\n".join(p for p in pieces if p.strip()))


def _with_forwards(text: str, quoted: str, segments: list[_Segment]) -> tuple[str, str]:
    forwards = [s for s in segments if s.forwarded]
    if not forwards:
        return text, quoted
    texts = [text] if text else []
    quotes = [quoted] if quoted else []
    for seg in forwards:
        if seg.plain:
            texts.append(seg.plain)
        if seg.quoted:
            quotes.append(seg.quoted)
    return tidy("\n\n".join(texts)), tidy("\n\n".join(quotes))
