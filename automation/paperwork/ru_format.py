"""Russian business-document formatting, pure (docs/documents.md).

- :func:`amount_words`: "сто двадцать три рубля 45 копеек" — the roubles in words
  (``num2words(lang="ru")``) with the rouble agreeing with the number (1 рубль, 2–4
  рубля, 5–20 рублей, 21 рубль, 111 рублей …); the kopecks as two digits, the way Russian
  invoices and contracts write them ("45 копеек", "01 копейка"), with the kopeck agreeing
  with its number too. The first letter is capitalised with ``capital=True`` (as a
  contract's "Сумма прописью" is).
- :func:`date_ru`: "7 декабря 2026 г." (the month in the genitive).
- :func:`num`: thousands separated by a NO-BREAK SPACE (U+00A0) and a decimal comma:
  "1 234 567,5". NBSP, not the thin space U+2009: Word and LibreOffice render and print
  NBSP everywhere, it never breaks a number across lines, and it is what a typist types
  (Ctrl+Shift+Space).
- :func:`money`: "1 234,50 ₽" — always two decimals, NBSP before the sign.

The functions raise :class:`FormatError` for what is not a number (or a date), or a
magnitude of 10^15 or more; the template filters (:data:`FILTERS`) print such a value as it
is instead, so one odd deal field does not fail the whole document.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from num2words import num2words

NBSP = "\u00a0"

MONTHS_GENITIVE = (
    "января",
    "февраля",
    "марта",
    "апреля",
    "мая",
    "июня",
    "июля",
    "августа",
    "сентября",
    "октября",
    "ноября",
    "декабря",
)

# The largest magnitude formatted (a quadrillion roubles): beyond it is a typo, and
# Decimal's default precision ends soon after.
MAX_AMOUNT = Decimal(10) ** 15

RUBLE = ("рубль", "рубля", "рублей")
KOPECK = ("копейка", "копейки", "копеек")


class FormatError(ValueError):
    """A value that is not a number or a date."""


def plural_form(n: int, forms: tuple[str, str, str]) -> str:
    """The noun agreeing with ``n``: forms for 1, for 2–4, for 5–20 (21 → the first,
    11–14 → the third)."""
    n = abs(n)
    if n % 100 in range(11, 15):
        return forms[2]
    last = n % 10
    if last == 1:
        return forms[0]
    if last in (2, 3, 4):
        return forms[1]
    return forms[2]


def to_decimal(value: object) -> Decimal:
    """A number from an int, float, Decimal or a string ("1 234,5" too)."""
    if isinstance(value, bool):
        raise FormatError(f"not a number: {value!r}")
    if isinstance(value, Decimal):
        out = value
    elif isinstance(value, int):
        out = Decimal(value)
    elif isinstance(value, float):
        out = Decimal(repr(value))
    elif isinstance(value, str):
        cleaned = value.replace(NBSP, "").replace("\u2009", "").replace(" ", "")
        try:
            out = Decimal(cleaned.replace(",", "."))
        except InvalidOperation:
            raise FormatError(f"not a number: {value!r}") from None
    else:
        raise FormatError(f"not a number: {value!r}")
    if not out.is_finite() or abs(out) >= MAX_AMOUNT:
        raise FormatError(f"not a number below 10^15: {value!r}")
    return out


def kopecks(value: object) -> tuple[int, int]:
    """(roubles, kopecks) of an amount rounded half-up to the kopeck."""
    cents = int((to_decimal(value) * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    sign = -1 if cents < 0 else 1
    rub, kop = divmod(abs(cents), 100)
    return sign * rub, kop


def amount_words(value: object, *, capital: bool = False) -> str:
    """ "сто двадцать три рубля 45 копеек" (see the module doc)."""
    rub, kop = kopecks(value)
    words = str(num2words(abs(rub), lang="ru"))
    if rub < 0:
        words = f"минус {words}"
    if capital:
        words = words[:1].upper() + words[1:]
    return f"{words} {plural_form(rub, RUBLE)} {kop:02d} {plural_form(kop, KOPECK)}"


def _group(digits: str) -> str:
    head = len(digits) % 3 or 3
    parts = [digits[:head]] + [digits[i : i + 3] for i in range(head, len(digits), 3)]
    return NBSP.join(parts)


def num(value: object, places: int | None = None) -> str:
    """ "1 234 567,5": NBSP thousands, a decimal comma; ``places`` fixes the decimals
    (rounded half-up), else as many as the value has (trailing zeros dropped)."""
    d = to_decimal(value)
    if places is not None:
        d = d.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    elif d == d.to_integral_value():
        d = d.quantize(Decimal(1))
    else:
        d = d.normalize()
    sign = "-" if d < 0 else ""
    text = f"{abs(d):f}"
    whole, _, frac = text.partition(".")
    out = sign + _group(whole)
    return f"{out},{frac}" if frac else out


def money(value: object, sign: str = "₽") -> str:
    """ "1 234,50 ₽"."""
    out = num(value, 2)
    return f"{out}{NBSP}{sign}" if sign else out


def _as_date(value: object) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value).date()
        except ValueError:
            raise FormatError(f"not a date: {value!r}") from None
    raise FormatError(f"not a date: {value!r}")


def date_ru(value: object, *, suffix: bool = True) -> str:
    """ "7 декабря 2026 г." (``suffix=False``: without " г.")."""
    d = _as_date(value)
    out = f"{d.day} {MONTHS_GENITIVE[d.month - 1]} {d.year}"
    return f"{out}{NBSP}г." if suffix else out


def lenient(fn: Callable[..., str]) -> Callable[..., str]:
    """A template filter that prints a value it cannot format as it is (an empty string
    for None) instead of failing the whole document over one odd deal field."""

    @functools.wraps(fn)
    def filtered(value: object, *args: Any, **kwargs: Any) -> str:
        try:
            return fn(value, *args, **kwargs)
        except (FormatError, ArithmeticError, ValueError, TypeError):
            return "" if value is None else str(value)

    return filtered


FILTERS = {
    "amount_words": lenient(amount_words),
    "date_ru": lenient(date_ru),
    "money": lenient(money),
    "num": lenient(num),
}
