"""Bytes → text for e-mail: declared charsets repaired, undeclared ones guessed.

Mail in the wild declares charsets wrongly (windows-1251 text labelled koi8-r, 8-bit text
labelled us-ascii), uses labels Python does not know (``ks_c_5601-1987``, ``x-user-defined``,
``unicode-1-1-utf-7``) or none at all. :func:`decode_text` never raises: it tries the
declared charset (through an alias table of supersets, the way browsers read mail), checks
that single-byte Cyrillic text reads like Cyrillic, and falls back to UTF-8, the caller's
hints, a Cyrillic guess and finally windows-1252 with replacement characters.
"""

from __future__ import annotations

import codecs
import functools
import re

from channels.email.detect import cyrillic_score, detect

# Labels → the Python codec that reads them best. Supersets where the declared charset is
# a subset in practice (gb2312 mail is GBK, ks_c_5601 is cp949, latin-1 and ascii mail is
# windows-1252, as in the WHATWG encoding standard).
ALIASES: dict[str, str] = {
    "ks_c_5601-1987": "cp949",
    "ks_c_5601": "cp949",
    "ks_c_5601_1987": "cp949",
    "ksc5601": "cp949",
    "euc-kr": "cp949",
    "euc_kr": "cp949",
    "korean": "cp949",
    "gb2312": "gb18030",
    "gb_2312-80": "gb18030",
    "gbk": "gb18030",
    "cp936": "gb18030",
    "x-gbk": "gb18030",
    "chinese": "gb18030",
    "big5": "big5hkscs",
    "x-x-big5": "big5hkscs",
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "sjis": "cp932",
    "x-sjis": "cp932",
    "ms_kanji": "cp932",
    "windows-31j": "cp932",
    "iso-2022-jp": "iso2022_jp_ext",
    "us-ascii": "cp1252",
    "ascii": "cp1252",
    "ansi_x3.4-1968": "cp1252",
    "iso-8859-1": "cp1252",
    "iso8859-1": "cp1252",
    "iso_8859-1": "cp1252",
    "latin1": "cp1252",
    "latin-1": "cp1252",
    "l1": "cp1252",
    "iso-8859-9": "cp1254",
    "iso-8859-11": "cp874",
    "tis-620": "cp874",
    "windows-874": "cp874",
    "unicode-1-1-utf-7": "utf-7",
    "x-unicode-2-0-utf-7": "utf-7",
    "utf7": "utf-7",
    "utf8": "utf-8",
    "x-utf-8": "utf-8",
    "unicode-1-1-utf-8": "utf-8",
    "unicode": "utf-8",
    "cp-1251": "cp1251",
    "win-1251": "cp1251",
    "win1251": "cp1251",
    "x-cp1251": "cp1251",
    "windows1251": "cp1251",
    "cp-1252": "cp1252",
    "win-1252": "cp1252",
    "x-cp1252": "cp1252",
    "x-mac-cyrillic": "mac_cyrillic",
    "x-mac-ukrainian": "mac_cyrillic",
    "x-mac-roman": "mac_roman",
    "macintosh": "mac_roman",
    "koi8r": "koi8_r",
    "koi": "koi8_r",
    "koi8": "koi8_r",
    "cskoi8r": "koi8_r",
    "ibm866": "cp866",
    "x-ibm866": "cp866",
}

# Codecs that decode bytes to str but are not text charsets a mail may legitimately use.
_REFUSED = {
    "unicode_escape",
    "raw_unicode_escape",
    "idna",
    "punycode",
    "undefined",
    "mbcs",
    "oem",
    "charmap",
}

# Single-byte Cyrillic charsets whose mislabelling we repair by comparing readings.
CYRILLIC = frozenset({"cp1251", "koi8_r", "koi8_u", "iso8859_5", "cp866", "mac_cyrillic"})
# What mislabelled Cyrillic mail really is, most likely first (ties keep the earlier one).
_CYRILLIC_GUESS = ("cp1251", "koi8_r", "iso8859_5", "cp866")

_SAMPLE = 8192  # bytes scored when comparing readings
_NON_ASCII = re.compile("[^\x00-\x7f]")
_HIGH = re.compile(rb"[\x80-\xff]")
_SURROGATE = re.compile("[\udc80-\udcff]")


def codec_for(label: str | None) -> str | None:
    """The Python codec name for a charset label, or None when it is unusable."""
    if not label:
        return None
    name = label.strip().strip("\"'").strip().lower()
    if not name or len(name) > 64:
        return None
    # RFC 2231 language suffix ("utf-8*ru") and stray parameters.
    name = name.split("*", 1)[0].split(";", 1)[0].strip()
    name = ALIASES.get(name, name)
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError, TypeError):
        return None
    codec = info.name.replace("-", "_")
    if not getattr(info, "_is_text_encoding", True) or codec in _REFUSED:
        return None
    return codec


def _cyrillic_pick(data: bytes, candidates: tuple[str, ...]) -> tuple[str, str, int] | None:
    """``(text, codec, score)`` of the best single-byte reading (scored on a sample)."""
    sample = data[:_SAMPLE]
    best: tuple[int, str] | None = None
    for codec in candidates:
        try:
            score = cyrillic_score(sample.decode(codec))
        except UnicodeDecodeError:
            continue
        if best is None or score > best[0]:
            best = (score, codec)
    if best is None or best[0] <= 0:
        return None
    try:
        return data.decode(best[1]), best[1], best[0]
    except UnicodeDecodeError:
        return None


def _utf8_mostly(data: bytes) -> str | None:
    """UTF-8 with replacement characters when the bytes are mostly valid UTF-8."""
    text = data.decode("utf-8", "replace")
    bad = text.count("\ufffd")
    good = len(_NON_ASCII.findall(text)) - bad
    return text if good >= 2 and good >= 4 * bad else None


def decode_text(
    data: bytes, declared: str | None, hints: tuple[str, ...] = ()
) -> tuple[str, list[str]]:
    """Decode ``data`` declared as ``declared``; returns the text and the repairs made.

    Never raises. ``hints`` are other charsets seen in the same mail, tried before guessing.
    """
    repairs: list[str] = []
    if not data:
        return "", repairs
    codec = codec_for(declared)
    if declared and codec is None:
        repairs.append(f"unknown_charset:{declared.strip()[:40]}")
    compatible = codec is None or ascii_compatible(codec)
    if compatible and _HIGH.search(data) is None:
        return data.decode("ascii", "replace"), repairs
    if codec is None:
        return _guess(data, None, hints, repairs), repairs
    if codec != "utf_8" and compatible:
        # Valid UTF-8 with 8-bit sequences is practically never text in another charset.
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            repairs.append(f"charset_repaired:{codec}->utf_8")
            return text, repairs
    try:
        text = data.decode(codec)
    except (UnicodeDecodeError, LookupError, ValueError):
        if codec.startswith("iso2022_jp") and (ms := iso2022jp_ms(data)) is not None:
            repairs.append("charset_repaired:iso2022_jp->cp50221")
            return ms, repairs
        repairs.append(f"charset_mismatch:{codec}")
        return _guess(data, codec, hints, repairs), repairs
    if codec in LATIN and _dense_8bit(data):
        # 8-bit text labelled Latin/ASCII that is mostly 8-bit letters: another script.
        found = _hinted(data, hints) or detect(data)
        if found is not None and found != codec and (alt := _decode_replace(data, found)):
            repairs.append(f"charset_repaired:{codec}->{found}")
            return alt, repairs
    if codec in CYRILLIC or (codec in LATIN and _dense_8bit(data)):
        picked = _cyrillic_pick(data, _CYRILLIC_GUESS)
        if picked is not None and picked[1] != codec:
            alt_text, alt_codec, alt_score = picked
            if alt_score > max(cyrillic_score(text[:_SAMPLE]), 0) + 8:
                repairs.append(f"charset_repaired:{codec}->{alt_codec}")
                return alt_text, repairs
    return text, repairs


LATIN = frozenset({"cp1252", "latin_1", "iso8859_15", "iso8859_2", "cp1250", "ascii", "mac_roman"})


@functools.lru_cache(maxsize=256)
def ascii_compatible(codec: str) -> bool:
    """Whether ASCII bytes mean ASCII text in ``codec`` (not so for UTF-7/16/32, ISO-2022)."""
    if codec.startswith(("iso2022", "hz", "utf_16", "utf_32")):
        return False
    probe = b"Az09 +-=~<>@?_\t\n"
    try:
        return probe.decode(codec) == probe.decode("ascii")
    except (UnicodeDecodeError, LookupError, ValueError):
        return False


def _dense_8bit(data: bytes) -> bool:
    """Mostly 8-bit letters: a non-Latin alphabet, not accented Latin text."""
    sample = data[:4096]
    high = len(_HIGH.findall(sample))
    letters = sum(1 for b in sample if b > 0x40 and b not in (0x5C, 0x7C))
    return letters > 0 and high > 0.3 * letters


def _guess(data: bytes, declared: str | None, hints: tuple[str, ...], repairs: list[str]) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        if declared is not None:
            repairs.append("charset_repaired:utf_8")
        return text
    if declared is not None:
        # The declared charset with a few bad bytes beats any guess.
        replaced = _decode_replace(data, declared)
        if replaced is not None and replaced.count("\ufffd") * 100 <= max(len(replaced), 300):
            repairs.append(f"charset_replaced:{declared}")
            return replaced
    for hint in hints:
        codec = codec_for(hint)
        if codec is None or codec == declared or codec in LATIN or codec == "utf_8":
            continue
        try:
            text = data.decode(codec)
        except (UnicodeDecodeError, LookupError, ValueError):
            continue
        if codec not in CYRILLIC or cyrillic_score(text) > 0:
            repairs.append(f"charset_from_hint:{codec}")
            return text
    mostly = _utf8_mostly(data)
    if mostly is not None:
        repairs.append("charset_utf8_with_replacements")
        return mostly
    found = detect(data)
    if found is not None and (detected := _decode_replace(data, found)) is not None:
        repairs.append(f"charset_detected:{found}")
        return detected
    picked = _cyrillic_pick(data, _CYRILLIC_GUESS)
    if picked is not None and picked[2] >= 8:
        repairs.append(f"charset_guessed:{picked[1]}")
        return picked[0]
    if declared is not None:
        replaced = _decode_replace(data, declared)
        if replaced is not None:
            repairs.append(f"charset_replaced:{declared}")
            return replaced
    repairs.append("charset_guessed:cp1252")
    return data.decode("cp1252", "replace")


def _hinted(data: bytes, hints: tuple[str, ...]) -> str | None:
    """The first non-Latin charset among ``hints`` that reads ``data`` without an error."""
    for hint in hints:
        codec = codec_for(hint)
        if codec is None or codec in LATIN or not ascii_compatible(codec):
            continue
        try:
            text = data.decode(codec)
        except (UnicodeDecodeError, LookupError, ValueError):
            continue
        if codec not in CYRILLIC or cyrillic_score(text) > 0:
            return codec
    return None


def iso2022jp_ms(data: bytes) -> str | None:
    """ISO-2022-JP with Microsoft's extensions (CP50221: NEC row 13 — circled digits,
    Roman numerals — and the IBM extension kanji), which Python's iso2022 codecs refuse:
    every JIS X 0208 pair is mapped to its Shift_JIS bytes and read as CP932. None when
    the bytes are not ISO-2022-JP at all."""
    out = bytearray()
    mode = "ascii"
    i = 0
    n = len(data)
    while i < n:
        b = data[i]
        if b == 0x1B:
            seq = data[i + 1 : i + 3]
            if seq in (b"(B", b"(J"):
                mode = "ascii"
            elif seq in (b"$B", b"$@"):
                mode = "jis"
            elif seq == b"(I":
                mode = "kana"
            elif data[i + 1 : i + 4] == b"$(D":  # JIS X 0212: no CP932 equivalent
                mode = "jis0212"
                i += 4
                continue
            else:
                return None
            i += 3
            continue
        if b == 0x0E:  # SO: half-width katakana (CP50221)
            mode, i = "kana", i + 1
            continue
        if b == 0x0F:
            mode, i = "ascii", i + 1
            continue
        if b >= 0x80:
            return None
        if mode == "ascii" or b in (0x0A, 0x0D):
            out.append(b)
            i += 1
        elif mode == "kana":
            out.append(b + 0x80 if 0x21 <= b <= 0x5F else b)
            i += 1
        elif i + 1 < n:
            if mode == "jis":
                out += _jis_to_sjis(b, data[i + 1])
            else:
                out += "\ufffd".encode("cp932", "replace")
            i += 2
        else:
            i += 1
    try:
        return bytes(out).decode("cp932", "replace")
    except (UnicodeDecodeError, LookupError):
        return None


def _jis_to_sjis(c1: int, c2: int) -> bytes:
    s2 = c2 + (0x1F + (1 if c2 >= 0x60 else 0) if c1 % 2 else 0x7E)
    s1 = (c1 + 1) // 2 + 0x70
    if s1 >= 0xA0:
        s1 += 0x40
    return bytes((s1 & 0xFF, s2 & 0xFF))


def _decode_replace(data: bytes, codec: str) -> str | None:
    try:
        return data.decode(codec, "replace")
    except (LookupError, ValueError, UnicodeError):
        return None


def decode_8bit_header(value: str, hints: tuple[str, ...] = ()) -> tuple[str, list[str]]:
    """A header value as the bytes parser left it (8-bit bytes as surrogates) → text."""
    if value.isascii() or not _SURROGATE.search(value):
        return value, []
    try:
        data = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value.encode("utf-8", "replace").decode("utf-8", "replace"), ["header_bad_chars"]
    text, repairs = decode_text(data, None, hints)
    return text, ["raw_8bit_header", *repairs]


def clean_text(value: str) -> str:
    """``value`` without lone surrogates, so that it always encodes as UTF-8.

    Bytes the parser kept as surrogate escapes are read as UTF-8 (with replacement
    characters); any other lone surrogate becomes U+FFFD.
    """
    if value.isascii():
        return value
    try:
        value.encode("utf-8")  # fails exactly when there is a lone surrogate
    except UnicodeEncodeError:
        pass
    else:
        return value
    try:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
