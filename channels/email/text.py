"""Mail bodies as readable text: HTML → text, format=flowed, and quoted-reply separation.

:func:`html_to_text` is a small linear-time HTML reader (no DOM, no dependencies):
paragraphs and line breaks survive, lists become ``- item`` / ``1. item``, links become
``text (url)``, ``<blockquote>`` lines get a ``> `` prefix, scripts, styles and the head are
dropped. With ``mark_quotes`` it puts a marker line where a mail client's own "quoted
reply starts here" element begins (Gmail's ``gmail_quote``, Outlook's ``divRplyFwdMsg`` /
``appendonsend``, Apple/Thunderbird ``<blockquote type="cite">`` …).

:func:`split_quoted` cuts the text where the previous correspondence begins: that marker,
"-----Original Message-----" / "Пересылаемое сообщение" separators, Outlook header blocks
(From/Sent/To/Subject, От/Отправлено/Кому/Тема), attribution lines ("On … wrote:",
"… пишет:") and a trailing block of ``>`` lines. See docs/channels/email-parsing.md.
"""

from __future__ import annotations

import html
import re

QUOTE_MARK = "\ue000\ue001quote\ue001\ue000"
# Deeper blockquotes and lists are rendered at this depth (the output stays linear).
_MAX_NESTING = 8

_BLOCK_1 = frozenset(
    {
        "div", "tr", "li", "dd", "dt", "center", "section", "article", "header", "footer",
        "address", "form", "fieldset", "main", "nav", "aside", "figure", "figcaption",
        "caption", "tbody", "thead", "tfoot", "o:p",
    }
)  # fmt: skip
_BLOCK_2 = frozenset(
    {"p", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "dl", "table", "pre", "hr"}
)
_SKIP = frozenset(
    {"script", "style", "head", "title", "template", "noscript", "object", "svg", "xml"}
)
_MARKERS = (
    "gmail_quote",
    "divrplyfwdmsg",
    "appendonsend",
    "mail-editor-reference-message-container",
    "olk_src_body_section",
    "outlookmessageheader",
    "stopspelling",
    "moz-cite-prefix",
    "yahoo_quoted",
    "protonmail_quote",
    "zmail_extra",
)
# Elements that change the layout; all others (span, font, b …) only carry text.
_STRUCTURAL = _BLOCK_1 | _BLOCK_2 | {"br", "a", "img", "li", "blockquote", "td", "th"}
_MARKER_HINT = re.compile(r"(?:id|class|type)\s*=", re.IGNORECASE)
_TAG = re.compile(r"(/?)([a-zA-Z][\w:.-]*)(.*)", re.DOTALL)
_ATTR = re.compile(r"""([a-zA-Z_:][\w:.-]*)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))""")
_INVISIBLE = re.compile("[\u200b-\u200d\u2060\ufeff\u00ad\u034f\u180e]")
_SKIP_END = {name: re.compile(rf"</{re.escape(name)}\s*>", re.I) for name in _SKIP}


class _Writer:
    """Lines of rendered text, each with its blockquote depth."""

    def __init__(self) -> None:
        self.lines: list[tuple[int, str]] = []
        self.cur: list[str] = []
        self.cur_depth = 0
        self.depth = 0
        self.breaks = 0  # line ends requested before the next text (2 = a blank line)
        self.captures: list[list[str]] = []  # anchor texts being collected

    def text(self, value: str, pre: bool = False) -> None:
        if not value:
            return
        if pre:
            for i, chunk in enumerate(value.split("\n")):
                if i:
                    self.br()
                if chunk:
                    self.put(chunk, keep_space=True)
            return
        value = _collapse(value)
        if value == " ":
            if self.cur and not self.cur[-1].endswith(" ") and not self.breaks:
                self.cur.append(" ")
                for cap in self.captures:
                    cap.append(" ")
            return
        self.put(value)

    def put(self, value: str, keep_space: bool = False) -> None:
        if self.breaks:
            if self.cur or self.lines:
                self.lines.append((self.cur_depth, "".join(self.cur)))
                self.cur = []
                blank_depth = min(self.cur_depth, self.depth)
                self.lines.extend((blank_depth, "") for _ in range(self.breaks - 1))
            self.breaks = 0
        if not self.cur:
            self.cur_depth = self.depth
        if not keep_space and (not self.cur or self.cur[-1].endswith(" ")):
            value = value.lstrip(" ")
        if value:
            self.cur.append(value)
            for cap in self.captures:
                cap.append(value)

    def brk(self, count: int) -> None:
        self.breaks = max(self.breaks, count)

    def br(self) -> None:
        if self.cur or self.lines:
            self.breaks = min(self.breaks + 1, 2)

    def line(self, value: str) -> None:
        """A whole line of its own (the quote marker)."""
        self.brk(1)
        if not (self.cur or self.lines):
            self.lines.append((0, ""))
        self.put(value)
        self.brk(1)

    def render(self) -> str:
        out: list[str] = []
        for depth, text in [*self.lines, (self.cur_depth, "".join(self.cur))]:
            body = text.rstrip(" ")
            depth = min(depth, _MAX_NESTING)
            prefix = "> " * depth if body else ">" * depth
            out.append(f"{prefix}{body}".rstrip())
        return tidy("\n".join(out))


def _attrs(raw: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for m in _ATTR.finditer(raw):
        found.setdefault(m.group(1).lower(), m.group(2) or m.group(3) or m.group(4) or "")
    return found


def _link_suffix(href: str, anchor: str) -> str:
    href = html.unescape(href).strip()
    lowered = href.lower()
    if lowered.startswith("mailto:"):
        addr = href[7:].split("?", 1)[0]
        return "" if not addr or addr.lower() in anchor.lower() else f" ({addr})"
    if not lowered.startswith(("http://", "https://", "ftp://", "www.")):
        return ""
    bare = re.sub(r"^https?://", "", href, flags=re.I).rstrip("/")
    text = anchor.strip()
    if not text:
        return href
    if bare.lower() in text.lower() or href.lower() in text.lower():
        return ""
    return f" ({href})"


def html_to_text(source: str, mark_quotes: bool = False) -> str:
    """Readable text of an HTML document or fragment (linear time, never raises)."""
    source = source.replace(QUOTE_MARK, "")
    w = _Writer()
    n = len(source)
    pos = 0
    next_gt = -1
    pre = 0
    lists: list[list[int]] = []  # per open list: [ordered?, counter]
    links: list[str] = []
    marked = not mark_quotes
    while pos < n:
        lt = source.find("<", pos)
        if lt < 0:
            _emit_text(w, source[pos:], pre)
            break
        if lt > pos:
            _emit_text(w, source[pos:lt], pre)
        if source.startswith("<!--", lt):
            end = source.find("-->", lt + 4)
            pos = n if end < 0 else end + 3
            continue
        if next_gt <= lt:
            next_gt = source.find(">", lt + 1)
        if next_gt < 0:
            _emit_text(w, source[lt:], pre)
            break
        inner = source[lt + 1 : next_gt]
        m = _TAG.match(inner)
        if not m:
            if inner[:1] in ("!", "?"):
                pos = next_gt + 1
            else:
                _emit_text(w, "<", pre)
                pos = lt + 1
            continue
        pos = next_gt + 1
        name, rest = m.group(2).lower(), m.group(3)
        if m.group(1):
            if name in _STRUCTURAL:
                pre = _close(w, name, lists, links, pre)
            continue
        if name in _SKIP:
            if not rest.rstrip().endswith("/"):
                end_m = _SKIP_END[name].search(source, pos)
                pos = n if end_m is None else end_m.end()
            continue
        if not marked and _MARKER_HINT.search(rest) and _is_marker(name, _attrs(rest)):
            w.line(QUOTE_MARK)
            marked = True
        if name in _STRUCTURAL:
            attrs = _attrs(rest) if name in ("a", "img") else {}
            pre = _open(w, name, attrs, lists, links, pre)
    return w.render()


def _open(
    w: _Writer, name: str, attrs: dict[str, str], lists: list[list[int]], links: list[str], pre: int
) -> int:
    if name == "br":
        w.br()
    elif name == "a":
        links.append(attrs.get("href", ""))
        w.captures.append([])
    elif name == "img":
        alt = attrs.get("alt", "").strip()
        if alt and links:
            w.text(alt)
    elif name in ("ul", "ol"):
        lists.append([1 if name == "ol" else 0, 0])
        w.brk(1)
    elif name == "li":
        w.brk(1)
        indent = "  " * min(max(0, len(lists) - 1), _MAX_NESTING)
        if lists and lists[-1][0]:
            lists[-1][1] += 1
            w.put(f"{indent}{lists[-1][1]}. ", keep_space=True)
        else:
            w.put(f"{indent}- ", keep_space=True)
    elif name == "blockquote":
        w.brk(1)
        w.depth += 1
    elif name == "pre":
        w.brk(2)
        return pre + 1
    elif name in _BLOCK_2:
        w.brk(2)
    elif name in _BLOCK_1:
        w.brk(1)
    elif name in ("td", "th"):
        w.text(" ")
    return pre


def _close(w: _Writer, name: str, lists: list[list[int]], links: list[str], pre: int) -> int:
    if name == "a":
        if links and w.captures:
            href = links.pop()
            anchor = "".join(w.captures.pop())
            suffix = _link_suffix(href, anchor)
            if suffix:
                w.text(suffix if anchor.strip() else suffix.strip())
    elif name in ("ul", "ol"):
        if lists:
            lists.pop()
        w.brk(1 if lists else 2)
    elif name == "blockquote":
        w.depth = max(0, w.depth - 1)
        w.brk(1)
    elif name == "pre":
        w.brk(2)
        return max(0, pre - 1)
    elif name in _BLOCK_2:
        w.brk(2)
    elif name in _BLOCK_1:
        w.brk(1)
    elif name in ("td", "th"):
        w.text(" ")
    return pre


def _emit_text(w: _Writer, raw: str, pre: int) -> None:
    value = html.unescape(raw) if "&" in raw else raw
    if not value.isascii():
        value = _INVISIBLE.sub("", value)
    w.text(value, pre=bool(pre))


def _collapse(value: str) -> str:
    """Runs of white space (any Unicode space, NBSP included) as one space."""
    words = value.split()
    if not words:
        return " "
    head = " " if value[0].isspace() else ""
    tail = " " if value[-1].isspace() else ""
    return f"{head}{' '.join(words)}{tail}"


def _is_marker(name: str, attrs: dict[str, str]) -> bool:
    if name == "blockquote" and attrs.get("type", "").lower() == "cite":
        return True
    if not attrs:
        return False
    ident = f"{attrs.get('id', '')} {attrs.get('class', '')}".lower()
    return any(marker in ident for marker in _MARKERS)


# ---------------------------------------------------------------- plain text helpers

_BLANKS = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")


def tidy(text: str) -> str:
    """Line ends normalised, trailing spaces and runs of blank lines removed."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return _BLANKS.sub("\n\n", text).strip("\n")


def unflow(text: str, delsp: bool) -> str:
    """Join RFC 3676 format=flowed soft line breaks (a line ending in a space)."""
    out: list[str] = []
    buf = ""
    buf_depth = -1
    for raw in text.split("\n"):
        depth = len(raw) - len(raw.lstrip(">"))
        line = raw[depth:]
        if line.startswith(" "):
            line = line[1:]  # space-stuffing
        if buf_depth >= 0 and depth != buf_depth:
            out.append(">" * buf_depth + (" " if buf_depth else "") + buf)
            buf, buf_depth = "", -1
        flowed = line.endswith(" ") and line != "-- "
        if flowed and delsp:
            line = line[:-1]
        buf += line
        buf_depth = depth
        if not flowed:
            out.append(">" * depth + (" " if depth and buf else "") + buf)
            buf, buf_depth = "", -1
    if buf_depth >= 0:
        out.append(">" * buf_depth + (" " if buf_depth else "") + buf)
    return "\n".join(out)


# ---------------------------------------------------------------- quote separation

_SEPARATOR = re.compile(
    r"^[\s>]*(?:-{2,}|_{2,}|={2,})\s*(?:original message|forwarded message|"
    r"исходное сообщение|пересылаемое сообщение|перенаправленное сообщение|"
    r"переадресованное сообщение|пересланное сообщение|ursprüngliche nachricht|"
    r"weitergeleitete nachricht|message d'origine|message transféré|mensaje original|"
    r"mensaje reenviado|mensagem original|messaggio originale|oorspronkelijk bericht)"
    r"\s*(?:-{2,}|_{2,}|={2,})?\s*$"
    r"|^\s*(?:begin forwarded message|начало переадресованного сообщения|"
    r"начало пересылаемого сообщения|inicio del mensaje reenviado)\s*:\s*$",
    re.IGNORECASE,
)
_ATTRIBUTION = re.compile(
    r"^\s*(?:on\b.{3,300}\bwrote\s*:"
    r"|.{0,300}\b(?:пишет|написал|написала|написал\(а\))\s*:"
    r"|am\b.{3,300}\bschrieb\b.{0,200}:"
    r"|le\b.{3,300}\ba écrit\s*:"
    r"|el\b.{3,300}\bescribió\s*:"
    r"|.{0,300}\b(?:wrote|writes)\s*:)\s*$",
    re.IGNORECASE,
)
_ATTRIBUTION_VERB = re.compile(
    r"wrote|writes|пишет|написал|schrieb|a écrit|escribió", re.IGNORECASE
)
_DATEISH = re.compile(r"\d{1,4}[./:-]\d{1,2}|@")
_LABEL = re.compile(
    r"^\s*\*?\s*(from|sent|date|to|cc|subject|от|отправлено|дата|кому|копия|тема|von|gesendet|"
    r"an|betreff|de|envoyé|à|objet|enviado|para|asunto|da|inviato|a|oggetto)\s*\*?\s*:",
    re.IGNORECASE,
)
_FROM_LABELS = {"from", "от", "von", "de", "da"}
_SUBJECT_LABELS = {"subject", "тема", "betreff", "objet", "asunto", "oggetto"}
_WHEN_TO_LABELS = {
    "sent", "date", "to", "отправлено", "дата", "кому", "gesendet", "an", "envoyé", "à",
    "enviado", "para", "inviato", "a",
}  # fmt: skip
_SIG = re.compile(r"^--\s?$")
_RULE = re.compile(r"^\s*(?:_{5,}|-{5,}|={5,}|—{3,}|-- ?|--)\s*$")


def _label(line: str) -> str | None:
    m = _LABEL.match(line)
    return m.group(1).lower() if m else None


def _header_block(lines: list[str], i: int) -> bool:
    if _label(lines[i]) not in _FROM_LABELS:
        return False
    seen: set[str] = set()
    for line in lines[i + 1 : i + 8]:
        label = _label(line)
        if label is None:
            if line.strip():
                continue
            break
        seen.add(label)
    return bool(seen & _SUBJECT_LABELS) and bool(seen & _WHEN_TO_LABELS)


def _is_attribution(line: str, following: list[str]) -> bool:
    stripped = line.strip()
    if not stripped.endswith(":") or len(stripped) > 400:
        return False
    nxt = next((x for x in following if x.strip()), None)
    if nxt is None:
        return False
    if _ATTRIBUTION_VERB.search(stripped) and _ATTRIBUTION.match(stripped):
        return True
    return nxt.lstrip().startswith(">") and bool(_DATEISH.search(stripped))


def _quote_start(lines: list[str]) -> int | None:
    count = len(lines)
    ends_colon = [line.rstrip().endswith(":") for line in lines]
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped == QUOTE_MARK:
            return _with_attribution(lines, i)
        # Cheap tests first: most lines cannot start a quote.
        if (stripped[0] in "-_=>" or ends_colon[i]) and _SEPARATOR.match(stripped):
            return _with_rule(lines, i)
        if ":" in stripped[:24] and _header_block(lines, i):
            return _with_rule(lines, i)
        if ends_colon[i] and _is_attribution(line, lines[i + 1 : i + 4]):
            return i
        # Gmail wraps a long attribution over two lines.
        if (
            i + 1 < count
            and ends_colon[i + 1]
            and stripped[0] != ">"
            and _ATTRIBUTION_VERB.search(lines[i + 1])
            and _ATTRIBUTION.match(f"{stripped} {lines[i + 1].strip()}")
            and any(x.strip() for x in lines[i + 2 : i + 5])
        ):
            return i
    # A trailing block of ">" lines (top-posting without an attribution we know).
    end = len(lines) - 1
    while end >= 0 and not lines[end].strip():
        end -= 1
    if end < 0 or not lines[end].lstrip().startswith(">"):
        return None
    start = end
    while start > 0 and (lines[start - 1].lstrip().startswith(">") or not lines[start - 1].strip()):
        start -= 1
    while start < end and not lines[start].strip():
        start += 1
    prev = start - 1
    while prev >= 0 and not lines[prev].strip():
        prev -= 1
    if prev >= 0 and lines[prev].strip().endswith(":") and _DATEISH.search(lines[prev]):
        return prev
    return start


def _with_attribution(lines: list[str], i: int) -> int:
    prev = i - 1
    while prev >= 0 and not lines[prev].strip():
        prev -= 1
    if prev >= 0 and lines[prev].strip().endswith(":"):
        line = lines[prev].strip()
        if _ATTRIBUTION.match(line) or _DATEISH.search(line):
            return prev
    return i


def _with_rule(lines: list[str], i: int) -> int:
    prev = i - 1
    while prev >= 0 and not lines[prev].strip():
        prev -= 1
    return prev if prev >= 0 and _RULE.match(lines[prev]) else i


def split_quoted(text: str) -> tuple[str, str]:
    """``(new text, quoted part)``; the quoted part is "" when nothing was recognised.

    When everything would be quoted (a forward without a comment, a mail that is only a
    quote) nothing is split: the whole text is the new text.
    """
    lines = text.split("\n")
    start = _quote_start(lines)
    if start is None:
        return _clean_new(lines), ""
    new = _clean_new(lines[:start])
    quoted = tidy("\n".join(x for x in lines[start:] if x.strip() != QUOTE_MARK))
    if not new.strip():
        return _clean_new(lines), ""
    if _is_forward(lines, start) and not _own_words(lines[:start]):
        # A forward whose only own lines are a signature or "Sent from my iPhone": what
        # was forwarded is the message.
        return _clean_new(lines[start:]), ""
    return new, quoted


_FORWARD = re.compile(
    r"forward|пересыла|переадрес|переслан|перенаправ|weitergeleitet|transféré|reenviado",
    re.IGNORECASE,
)
# Lines a mail client adds below a message: not words of the sender's own.
_BOILERPLATE = re.compile(
    r"^\s*(?:sent from my \w+|sent from (?:mail|outlook|yahoo mail|yandex|my mobile)\b.*|"
    r"get outlook for \w+.*|отправлено (?:с|из) .+|sent from .{1,40}(?:iphone|ipad|android)"
    r".*|envoyé de mon \w+|von meinem \w+ gesendet)\s*$",
    re.IGNORECASE,
)


def _is_forward(lines: list[str], start: int) -> bool:
    """Whether the quote starting at ``start`` is a forwarded message (not a reply)."""
    for line in lines[start : start + 3]:
        if line.strip():
            return bool(_SEPARATOR.match(line.strip()) and _FORWARD.search(line))
    return False


def _own_words(lines: list[str]) -> bool:
    """Whether the lines before a forward hold words of the sender's own (not only a
    signature after its ``-- `` delimiter or a mail client's "Sent from …" line)."""
    for line in lines:
        if _SIG.match(line):
            return False
        text = line.strip()
        if text and text != QUOTE_MARK and not _BOILERPLATE.match(line) and not _RULE.match(line):
            return True
    return False


def _clean_new(lines: list[str]) -> str:
    """Without the quote marker and signature delimiters; no separator lines at the end."""
    kept = [x for x in lines if x.strip() != QUOTE_MARK and not _SIG.match(x)]
    while kept and (not kept[-1].strip() or _RULE.match(kept[-1])):
        kept.pop()
    return tidy("\n".join(kept))
