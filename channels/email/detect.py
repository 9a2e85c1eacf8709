"""Which charset undeclared (or mislabelled) 8-bit text is in.

``charset-normalizer`` alone is unreliable on the short strings mail is full of (a subject,
a display name, a one-line body: it reads Shift_JIS as Korean, GB2312 as Korean), so the
candidates are the charsets such mail is written in — Shift_JIS/CP932, EUC-JP,
GB2312/GBK/GB18030, Big5, EUC-KR/CP949, KOI8-R, windows-1251 — each reading that decodes
without an error is scored on how plausible its text is for that charset's script, and
charset-normalizer's ranking only breaks ties. Pure; never raises.
"""

from __future__ import annotations

import functools
import re

from charset_normalizer import from_bytes

# The charsets undeclared 8-bit mail is written in, each with the script it carries.
PLAUSIBLE: tuple[tuple[str, str], ...] = (
    ("cp932", "ja"),
    ("euc_jp", "ja"),
    ("gb18030", "zh"),
    ("big5hkscs", "zh_tw"),
    ("cp949", "ko"),
    ("koi8_r", "ru"),
    ("cp1251", "ru"),
)
# charset-normalizer's names for the candidates.
_CN_NAMES = {"cp932": "cp932", "euc_jp": "euc_jp", "gb18030": "gb18030", "big5hkscs": "big5"}
_CN_NAMES |= {"cp949": "cp949", "koi8_r": "koi8_r", "cp1251": "cp1251"}
_SAMPLE = 8192

# The most frequent Russian letters: correct text is full of them, mis-decoded text is not.
_COMMON = re.compile("[оеаинтсрвлкмдпуяы]")
# Box-drawing and other symbols that mis-decoded Cyrillic bytes turn into.
_JUNK = re.compile("[\u2500-\u25ff¤¦§©¬®±µ¶·]")
_CYR_LOWER = re.compile("[а-яё]")
_CYR_UPPER = re.compile("[А-ЯЁ]")
_UPPER_AFTER_LOWER = re.compile("[а-яё][А-ЯЁ]")


def cyrillic_score(text: str) -> int:
    """How much ``text`` reads like Cyrillic prose (higher is better; can be negative)."""
    lower = len(_CYR_LOWER.findall(text))
    if lower == 0 and not _CYR_UPPER.search(text):
        return 0
    common = len(_COMMON.findall(text))
    mixed = len(_UPPER_AFTER_LOWER.findall(text))
    junk = len(_JUNK.findall(text))
    return 2 * common + lower - 6 * mixed - 4 * junk


_KANA = re.compile("[\u3041-\u30ff]")
_HALF_KANA = re.compile("[\uff61-\uff9f]")
_HAN = re.compile("[\u4e00-\u9fff]")
_RARE = re.compile("[\u3400-\u4dbf\ue000-\uf8ff\uf900-\ufaff\u2e80-\u2fff\U00020000-\U0003ffff]")
_HANGUL = re.compile("[\uac00-\ud7a3]")
_HANGUL_WORDS = re.compile("[\uac00-\ud7a3] [\uac00-\ud7a3]")
_CYRILLIC = re.compile("[\u0400-\u04ff]")
_LATIN_LETTER = re.compile("[A-Za-z]")
# A Cyrillic letter glued to a Latin one: a mis-decoded accent ("cafй").
_MIXED = re.compile("[A-Za-z][\u0400-\u04ff]|[\u0400-\u04ff][A-Za-z]")


@functools.lru_cache(maxsize=4096)
def _common_in(ch: str, codec: str) -> bool:
    """Whether ``ch`` is in the frequently used part of ``codec``'s double-byte table."""
    try:
        b = ch.encode(codec)
    except UnicodeEncodeError:
        return False
    if len(b) != 2:
        return False
    lead, trail = b
    if codec == "gb18030":  # GB2312 hanzi (level 1 and 2)
        return 0xB0 <= lead <= 0xF7 and trail >= 0xA1
    if codec == "big5hkscs":  # Big5 "frequently used" hanzi
        return 0xA440 <= (lead << 8 | trail) <= 0xC67E
    if codec == "cp949":  # KS X 1001 hangul syllables
        return 0xB0 <= lead <= 0xC8 and trail >= 0xA1
    if codec == "cp932":  # JIS level-1 kanji
        return 0x889F <= (lead << 8 | trail) <= 0x9872
    if codec == "euc_jp":
        return 0xB0 <= lead <= 0xCF and trail >= 0xA1
    return True


def plausibility(text: str, codec: str, script: str) -> int:
    """How much ``text`` reads like prose in ``script`` (higher is better)."""
    if script == "ru":
        if _HAN.search(text) or _HANGUL.search(text):
            return -1
        cyr = len(_CYRILLIC.findall(text))
        if cyr < 3 or cyr < len(_LATIN_LETTER.findall(text)):
            return -1  # a few 8-bit letters in Latin text: accents, not Cyrillic
        return cyrillic_score(text) - 6 * len(_MIXED.findall(text))
    rare = len(_RARE.findall(text)) + len(_CYRILLIC.findall(text))
    if script == "ja":
        kana = len(_KANA.findall(text))
        han = _HAN.findall(text)
        common = sum(1 for ch in han if _common_in(ch, codec))
        half = len(_HALF_KANA.findall(text))
        hangul = len(_HANGUL.findall(text))
        # Japanese prose without a single kana is rare: kanji alone count for less.
        own = 3 * kana + 3 * common + (len(han) - common) if kana else 2 * common
        return own - 4 * half - 4 * hangul - 4 * rare
    if script == "ko":
        good = sum(1 for ch in _HANGUL.findall(text) if _common_in(ch, codec))
        bad = len(_HANGUL.findall(text)) - good
        hanja = len(_HAN.findall(text))
        words = len(_HANGUL_WORDS.findall(text))
        return 3 * good + 2 * words - 3 * bad - 3 * hanja - 4 * rare
    han_chars = _HAN.findall(text)
    good = sum(1 for ch in han_chars if _common_in(ch, codec))
    other = len(han_chars) - good
    foreign = len(_HANGUL.findall(text)) + len(_HALF_KANA.findall(text))
    return 3 * good - other - 4 * foreign - 4 * rare


def _cn_rank(data: bytes, codecs: list[str]) -> dict[str, int]:
    names = [_CN_NAMES[c] for c in codecs]
    try:
        found = [m.encoding for m in from_bytes(data, cp_isolation=names)]
    except Exception:  # a detector bug must not cost the mail
        return {}
    back = {v: k for k, v in _CN_NAMES.items()}
    ranked = [back[n] for n in found if n in back]
    return {c: i for i, c in enumerate(ranked)}


def detect(data: bytes) -> str | None:
    """The codec undeclared 8-bit ``data`` is most plausibly in; None when none fits."""
    sample = _cut(data[:_SAMPLE]) if len(data) > _SAMPLE else data
    readings: list[tuple[str, str, str]] = []
    for codec, script in PLAUSIBLE:
        try:
            readings.append((codec, script, sample.decode(codec)))
        except UnicodeDecodeError:
            continue
    if not readings:
        return None
    scored = [(plausibility(text, codec, script), codec) for codec, script, text in readings]
    top = max(score for score, _codec in scored)
    if top <= 0:
        return None
    tied = [codec for score, codec in scored if score == top]
    if len(tied) == 1:
        return tied[0]
    rank = _cn_rank(sample, tied)
    return min(tied, key=lambda c: (rank.get(c, len(tied)), tied.index(c)))


def _cut(sample: bytes) -> bytes:
    """A sample cut at a line end, so no multi-byte character is split."""
    end = sample.rfind(b"\n")
    return sample[: end + 1] if end > 0 else sample
