"""How many SMS segments a text takes (docs/channels/sms.md#segments).

A text that fits the GSM 03.38 alphabet is sent as GSM-7: 160 characters in one SMS,
153 per segment when it is split (the rest of each segment is the concatenation header).
The extension table's characters (``^{}\\[~]|€`` and form feed) take two septets each.
Anything else — Cyrillic, emoji — makes the whole text UCS-2: 70 characters in one SMS,
67 per segment; a character outside the Basic Multilingual Plane takes two UTF-16 units.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")

Encoding = Literal["gsm7", "ucs2"]


@dataclass(frozen=True, slots=True)
class Segments:
    encoding: Encoding
    # Septets (GSM-7) or UTF-16 code units (UCS-2) the text takes.
    units: int
    count: int


def segments(text: str) -> Segments:
    """The encoding, length in units and number of segments of ``text``."""
    if all(c in GSM7_BASIC or c in GSM7_EXTENSION for c in text):
        units = sum(2 if c in GSM7_EXTENSION else 1 for c in text)
        return Segments("gsm7", units, _count(units, 160, 153))
    units = len(text.encode("utf-16-le")) // 2
    return Segments("ucs2", units, _count(units, 70, 67))


def _count(units: int, single: int, part: int) -> int:
    if units <= single:
        return 1
    return -(-units // part)
