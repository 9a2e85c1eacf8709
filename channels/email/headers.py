"""Header values of a mail → text, addresses, dates and ids, tolerant of what senders write.

Works on the raw header values the ``email`` parser keeps (``Message.raw_items()``): 8-bit
bytes in headers are read with :func:`channels.email.charset.decode_8bit_header`, RFC 2047
encoded words are decoded here (also malformed ones: unknown charsets, bad base64 padding,
a multi-byte character split across two words, words glued to text, a missing ``?=``).
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime, timedelta, timezone
from email.utils import parsedate_tz

from channels.email.charset import decode_8bit_header, decode_text

_FOLD = re.compile(r"\r?\n(?=[ \t])|\r(?=[ \t])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_SPACES = re.compile(r"\s+")
_ENCODED_WORD = re.compile(r"=\?([^?\s]{1,64}?)(?:\*[^?\s]*)?\?([bBqQ])\?([^?]*)(?:\?=|\??$)")
_QP_HEX = re.compile(rb"=([0-9A-Fa-f]{2})")
_ADDR_SPEC = re.compile(r'^(?:"[^"\r\n]*"|[^@\s<>()",;:\[\]\\]+)@[^@\s<>()",;:\\]+$')
_ADDR_IN_TEXT = re.compile(r"[^\s<>()\",;:\[\]\\]+@[^\s<>()\",;:\[\]\\]+\.[^\s<>()\",;:\\.]+")
_MSG_ID = re.compile(r"<([^<>]*)>")
_QUOTED_PAIR = re.compile(r"\\(.)")


def unfold(value: str) -> str:
    return _FOLD.sub("", value).replace("\r", " ").replace("\n", " ")


def _b_decode(text: str) -> bytes | None:
    data = re.sub(r"[^A-Za-z0-9+/]", "", text)
    if not data and text.strip():
        return None
    for cut in (0, 1, 2, 3):
        chunk = data[: len(data) - cut] if cut else data
        try:
            return base64.b64decode(chunk + "=" * (-len(chunk) % 4))
        except (binascii.Error, ValueError):
            continue
    return None


def _q_decode(text: str) -> bytes:
    raw = text.replace("_", " ").encode("utf-8", "surrogateescape")
    return _QP_HEX.sub(lambda m: bytes([int(m.group(1), 16)]), raw)


def decode_words(value: str, repairs: list[str] | None = None) -> str:
    """Decode RFC 2047 encoded words in ``value`` (never raises).

    Adjacent words in the same charset are joined as bytes before decoding, so a UTF-8
    character split between two words survives; white space between two encoded words
    is dropped, as RFC 2047 says.
    """
    if "=?" not in value:
        return value
    out: list[str] = []
    pending: list[tuple[str, bytes]] = []  # (charset, bytes) of adjacent encoded words
    pos = 0

    def flush() -> None:
        start = 0
        while start < len(pending):
            charset = pending[start][0]
            end = start
            while end < len(pending) and pending[end][0] == charset:
                end += 1
            chunk = b"".join(data for _cs, data in pending[start:end])
            text, fixes = decode_text(chunk, charset)
            if repairs is not None:
                repairs.extend(fixes)
            out.append(text)
            start = end
        pending.clear()

    for m in _ENCODED_WORD.finditer(value):
        gap = value[pos : m.start()]
        if gap and not (pending and gap.isspace()):
            flush()
            out.append(gap)
        charset, enc, text = m.group(1), m.group(2).lower(), m.group(3)
        data = _b_decode(text) if enc == "b" else _q_decode(text)
        if not m.group(0).endswith("?=") and repairs is not None:
            repairs.append("encoded_word_unterminated")
        if data is None:
            flush()
            out.append(m.group(0))
            if repairs is not None:
                repairs.append("encoded_word_bad_base64")
        else:
            pending.append((charset.lower(), data))
        pos = m.end()
    flush()
    out.append(value[pos:])
    return "".join(out)


def header_text(raw: str, hints: tuple[str, ...] = (), repairs: list[str] | None = None) -> str:
    """An unstructured header (Subject, a display name) as readable text."""
    value, fixes = decode_8bit_header(unfold(raw), hints)
    if repairs is not None:
        repairs.extend(fixes)
    value = decode_words(value, repairs)
    value = _CONTROL.sub(" ", value.replace("\t", " "))
    return _SPACES.sub(" ", value).strip()


# ---------------------------------------------------------------- addresses


def _split_entries(value: str) -> list[str]:
    """Split an address list on commas/semicolons outside quotes, <> and comments."""
    entries: list[str] = []
    buf: list[str] = []
    quoted = False
    angle = 0
    depth = 0
    escape = False
    for ch in value:
        if escape:
            buf.append(ch)
            escape = False
            continue
        if ch == "\\":
            escape = True
            buf.append(ch)
            continue
        if quoted:
            quoted = ch != '"'
        elif ch == '"':
            quoted = True
        elif ch == "(":
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
        elif ch == "<" and not depth:
            angle += 1
        elif ch == ">" and angle:
            angle -= 1
        elif ch in ",;" and not depth and not angle:
            entries.append("".join(buf))
            buf = []
            continue
        buf.append(ch)
    entries.append("".join(buf))
    return [e for e in (x.strip() for x in entries) if e]


def _strip_comments(value: str) -> tuple[str, str]:
    """Remove (comments) outside quotes; returns the rest and the comments' text."""
    rest: list[str] = []
    comments: list[str] = []
    depth = 0
    quoted = False
    escape = False
    for ch in value:
        if escape:  # a quoted pair: the character itself, never a delimiter
            (comments if depth else rest).append(ch)
            escape = False
        elif ch == "\\" and (quoted or depth):
            escape = True
            if quoted:
                rest.append(ch)
        elif quoted:
            rest.append(ch)
            quoted = ch != '"'
        elif ch == '"' and not depth:
            quoted = True
            rest.append(ch)
        elif ch == "(":
            depth += 1
            if depth > 1:
                comments.append(ch)
        elif ch == ")" and depth:
            depth -= 1
            if depth:
                comments.append(ch)
            else:
                comments.append(" ")
        elif depth:
            comments.append(ch)
        else:
            rest.append(ch)
    return "".join(rest), "".join(comments).strip()


def _clean_addr(addr: str) -> str | None:
    addr = addr.strip().strip("'").strip()
    if addr.startswith('"') and addr.endswith('"') and addr.count('"') == 2:
        addr = addr[1:-1].strip()
    if addr.lower().startswith("mailto:"):
        addr = addr[7:]
    return addr if _ADDR_SPEC.match(addr) else None


def _clean_name(name: str, repairs: list[str] | None) -> str | None:
    name = name.strip()
    if len(name) >= 2 and name[0] == '"' and name[-1] == '"':
        name = name[1:-1]
    # Quoted pairs (RFC 5322 3.2.1): a backslash makes the next character literal.
    name = _QUOTED_PAIR.sub(r"\1", name).strip().strip("'")
    text = header_text(name, repairs=repairs) if name else ""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        text = text[1:-1].strip()
    return text or None


def parse_addresses(
    raw: str, hints: tuple[str, ...] = (), repairs: list[str] | None = None
) -> list[tuple[str | None, str | None]]:
    """``(display name, address)`` pairs of an address header; the address as written.

    Entries with no usable address keep their name with address None (the caller drops
    them except for From). Junk glued after an ``<addr>`` and bare words without ``@`` are
    ignored; addresses found in them are kept as extra entries.
    """
    value, fixes = decode_8bit_header(unfold(raw), hints)
    if repairs is not None:
        repairs.extend(fixes)
    value = _CONTROL.sub(" ", value)
    result: list[tuple[str | None, str | None]] = []
    pending: str | None = None  # a name-only entry, maybe the "Last" of "Last, First <a>"
    for entry in _split_entries(value):
        # Group syntax "name: a@b, c@d;" — the group name is not an address.
        group = re.match(r'^([^<>"@:]*):(?!:)', entry)
        if group:
            entry = entry[group.end() :].strip()
            if not entry:
                continue
        rest, comment = _strip_comments(entry)
        angle = re.search(r"<([^<>]*)>", rest)
        if angle:
            name = rest[: angle.start()].strip()
            if pending is not None:
                name = f"{pending}, {name}" if name else pending
                pending = None
            display = _clean_name(name, repairs) or _clean_name(comment, repairs)
            result.append((display, _clean_addr(angle.group(1))))
            result.extend(
                (None, _clean_addr(a)) for a in _ADDR_IN_TEXT.findall(rest[angle.end() :])
            )
            continue
        addrs = [a for a in (_clean_addr(t) for t in rest.split() if "@" in t) if a]
        if not addrs:
            addrs = [a for a in (_clean_addr(t) for t in _ADDR_IN_TEXT.findall(rest)) if a]
        if addrs:
            name = comment or pending or ""
            pending = None
            result.append((_clean_name(name, repairs) if name else None, addrs[0]))
            result.extend((None, a) for a in addrs[1:])
            continue
        if pending is not None:
            result.append((_clean_name(pending, repairs), None))
        pending = rest.strip() if _clean_name(rest, None) else comment
    if pending:
        result.append((_clean_name(pending, repairs), None))
    return result


def address_list(
    raw_values: list[str], hints: tuple[str, ...] = (), repairs: list[str] | None = None
) -> list[str]:
    """Distinct addresses of one or more header values, in order, as written."""
    seen: set[str] = set()
    out: list[str] = []
    for raw in raw_values:
        for _name, addr in parse_addresses(raw, hints, repairs):
            if addr and addr.lower() not in seen:
                seen.add(addr.lower())
                out.append(addr)
    return out


# ---------------------------------------------------------------- dates and ids

_ISO_DATE = re.compile(
    r"(\d{4})-(\d{1,2})-(\d{1,2})[T ](\d{1,2}):(\d{2})(?::(\d{2}))?(?:\.\d+)?\s*"
    r"(Z|[+-]\d{2}:?\d{2})?"
)


def parse_date(raw: str) -> datetime | None:
    """An aware UTC datetime, or None when the value is missing or unreadable."""
    value = _SPACES.sub(" ", unfold(raw)).strip()
    if not value:
        return None
    for candidate in (value, _strip_comments(value)[0].strip()):
        try:
            parsed = parsedate_tz(candidate)
        except (TypeError, ValueError, IndexError, OverflowError):
            parsed = None
        if parsed is None:
            continue
        try:
            year = parsed[0]
            if year < 100:  # parsedate_tz already maps most two-digit years; be sure
                year += 2000 if year < 50 else 1900
            base = datetime(year, parsed[1], parsed[2], parsed[3], parsed[4], parsed[5])
            offset = parsed[9] or 0
            if abs(offset) >= 24 * 3600:
                offset = 0
            return base.replace(tzinfo=timezone(timedelta(seconds=offset))).astimezone(UTC)
        except (ValueError, OverflowError, TypeError):
            continue
    m = _ISO_DATE.search(value)
    if m:
        try:
            year, month, day, hour, minute = (int(g) for g in m.groups()[:5])
            base = datetime(year, month, day, hour, minute, int(m.group(6) or 0))
            tz = m.group(7)
            if tz and tz != "Z":
                sign = -1 if tz[0] == "-" else 1
                digits = tz[1:].replace(":", "")
                delta = timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
                base = base.replace(tzinfo=timezone(sign * delta))
            else:
                base = base.replace(tzinfo=UTC)
            return base.astimezone(UTC)
        except (ValueError, OverflowError):
            return None
    return None


def _clean_id(value: str) -> str:
    return _SPACES.sub("", value).strip()


def parse_message_id(raw: str) -> str | None:
    """The id inside ``<…>`` (or the bare value), without brackets; None when empty."""
    value = unfold(raw).strip()
    m = _MSG_ID.search(value)
    ident = _clean_id(m.group(1)) if m else _clean_id(value.split()[0] if value.split() else "")
    ident = _CONTROL.sub("", ident)
    return ident or None


def parse_id_list(raw_values: list[str]) -> list[str]:
    """Ids of In-Reply-To/References headers, in order, without brackets or duplicates."""
    seen: set[str] = set()
    out: list[str] = []
    for raw in raw_values:
        value = unfold(raw)
        ids = [_clean_id(m) for m in _MSG_ID.findall(value)]
        if not ids:
            ids = [t for t in re.split(r"[\s,]+", value) if "@" in t]
        for ident in ids:
            ident = _CONTROL.sub("", ident)
            if ident and ident not in seen:
                seen.add(ident)
                out.append(ident)
    return out


# ---------------------------------------------------------------- subjects

_PREFIX = re.compile(
    r"^\s*(?:"
    r"re|fwd?|aw|wg|sv|vs|vb|vl|antw|doorst|rif|tr|ref|odp|pd|res|enc|rv|ynt|ilt|"
    r"πρθ|σχετ|השב|הועבר|"
    r"отв|ответ|пересл|пересылка|переслано|fw"
    r")\s*(?:\[\d+\]|\(\d+\)|\^\d+)?\s*[:：]"
    r"|^\s*(?:回复|回覆|答复|转发|轉寄)\s*[:：]",
    re.IGNORECASE,
)


def strip_subject_prefixes(subject: str) -> str:
    """'Re: Fwd: AW: Ответ: RE[2]: hello' -> 'hello' (for threading fallback and "Re:")."""
    value = subject.strip()
    while True:
        m = _PREFIX.match(value)
        if not m:
            return value
        value = value[m.end() :].strip()
