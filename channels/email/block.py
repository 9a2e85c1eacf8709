"""The header block as senders really write it, repaired before the ``email`` parser.

The stdlib parser ends the header block at the first line that is not a header field or a
continuation, so one malformed line (no colon, a continuation that lost its indent) hands
From, Subject and Message-ID after it to the body; a byte-order mark or a stray line before
the first field, or a space before a colon (``Subject : x``), leaves a mail with no header
fields at all. :func:`repair` rewrites only the header block (up to the first empty line):

* a BOM and lines before the first header field are dropped (an mbox ``From `` line is
  kept: the parser reads it as the envelope);
* ``Name : value`` becomes ``Name: value``;
* a malformed line with well-formed fields after it becomes a continuation of the field
  before it, so every field after it is read. Malformed lines after the last well-formed
  field are left alone: there the body began without an empty line.

Pure; the repairs made are returned for the mail's diagnostics.
"""

from __future__ import annotations

import re

_BOM = b"\xef\xbb\xbf"
_FIELD = re.compile(rb"^[\x21-\x39\x3b-\x7e]+:")
_SPACED_FIELD = re.compile(rb"^([\x21-\x39\x3b-\x7e]+)[ \t]+:")
_HEADER_LIMIT = 256 * 1024  # header blocks longer than this are not repaired
_FIELD_NAME = re.compile(rb"^([\x21-\x39\x3b-\x7e]+)[ \t]*:")
_KNOWN = frozenset(
    {
        b"from", b"sender", b"reply-to", b"to", b"cc", b"bcc", b"subject", b"date",
        b"message-id", b"in-reply-to", b"references", b"received", b"return-path",
        b"mime-version", b"delivered-to", b"precedence", b"auto-submitted", b"importance",
        b"priority", b"user-agent", b"organization", b"comments", b"keywords",
        b"authentication-results", b"received-spf", b"domainkey-signature",
        b"disposition-notification-to", b"errors-to", b"feedback-id",
    }
)  # fmt: skip
_KNOWN_PREFIXES = (
    b"x-", b"content-", b"list-", b"arc-", b"dkim-", b"thread-", b"resent-", b"accept-",
    b"original-",
)  # fmt: skip


def repair(raw: bytes) -> tuple[bytes, list[str]]:
    """``raw`` with its header block repaired, and the repairs made (none: ``raw`` itself)."""
    repairs: list[str] = []
    data = raw
    if data.startswith(_BOM):
        data = data[len(_BOM) :]
        repairs.append("header_bom_removed")
    ends = [
        i
        for i in (data.find(b"\n\n", 0, _HEADER_LIMIT), data.find(b"\n\r\n", 0, _HEADER_LIMIT))
        if i >= 0
    ]
    end = min(ends) + 1 if ends else min(len(data), _HEADER_LIMIT)
    lines = data[:end].splitlines(keepends=True)
    if not lines:
        return data, repairs
    if all(_plain(line, i) for i, line in enumerate(lines)):  # the usual case: nothing to do
        return data, repairs
    fixed = _repair_lines(lines, repairs)
    if not repairs:
        return raw, []
    return b"".join(fixed) + data[end:], repairs


def _plain(line: bytes, index: int) -> bool:
    """A well-formed field, a continuation, or the mbox envelope line first."""
    return (
        line[:1] in (b" ", b"\t")
        or _FIELD.match(line) is not None
        or (index == 0 and line.startswith(b"From "))
    )


def _is_field(line: bytes) -> bool:
    return bool(_FIELD.match(line) or _SPACED_FIELD.match(line))


def _is_known_field(line: bytes) -> bool:
    m = _FIELD_NAME.match(line)
    return m is not None and (
        m.group(1).lower() in _KNOWN or m.group(1).lower().startswith(_KNOWN_PREFIXES)
    )


def _repair_lines(lines: list[bytes], repairs: list[str]) -> list[bytes]:
    fields = [i for i, line in enumerate(lines) if _is_field(line)]
    if not fields:
        return lines
    # Only a header field a mail system writes marks the block as going on: a body that
    # began without an empty line may well hold "Phone: …" lines.
    known = [i for i in fields if _is_known_field(lines[i])]
    first, last = fields[0], (known[-1] if known else fields[0])
    out: list[bytes] = []
    if first:
        envelope = lines[0].startswith(b"From ") and first == 1
        if envelope:
            out.append(lines[0])
        else:
            repairs.append("junk_before_headers_dropped")
    for i in range(first, len(lines)):
        line = lines[i]
        if (m := _SPACED_FIELD.match(line)) is not None:
            line = m.group(1) + b":" + line[m.end() :]
            repairs.append("space_before_colon")
        elif i < last and not _FIELD.match(line) and line[:1] not in (b" ", b"\t"):
            line = b" " + line
            repairs.append("malformed_header_line")
        out.append(line)
    return out
