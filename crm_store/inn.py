"""Russian company identifiers, validated as the tax service defines them (pure).

- **INN** (ИНН): 10 digits for an organisation, 12 for a sole trader; the last digit(s)
  are check digits — a weighted sum of the digits before, ``mod 11 mod 10``.
- **KPP** (КПП): 9 characters — a 4-digit tax office code, 2 characters (digits or capital
  Latin letters: the reason code), 3 digits.

:func:`inn_problem` / :func:`kpp_problem` answer ``None`` for a valid value, else a
sentence an operator can act on (the API returns it as a 422 field error).
"""

from __future__ import annotations

import re

_W10 = (2, 4, 10, 3, 5, 9, 4, 6, 8)
_W11 = (7, 2, 4, 10, 3, 5, 9, 4, 6, 8)
_W12 = (3, 7, 2, 4, 10, 3, 5, 9, 4, 6, 8)
_KPP = re.compile(r"\d{4}[0-9A-Z]{2}\d{3}")


def _check(digits: str, weights: tuple[int, ...]) -> int:
    return sum(int(d) * w for d, w in zip(digits, weights, strict=True)) % 11 % 10


def inn_problem(inn: str) -> str | None:
    """Why ``inn`` is not a valid INN, or None."""
    if not inn.isascii() or not inn.isdigit():
        return "an INN is digits only"
    if len(inn) == 10:
        if _check(inn[:9], _W10) != int(inn[9]):
            return "the INN's check digit is wrong (a typo?)"
        return None
    if len(inn) == 12:
        if _check(inn[:10], _W11) != int(inn[10]) or _check(inn[:11], _W12) != int(inn[11]):
            return "the INN's check digits are wrong (a typo?)"
        return None
    return "an INN has 10 digits (an organisation) or 12 (a sole trader)"


def valid_inn(inn: str) -> bool:
    return inn_problem(inn) is None


def kpp_problem(kpp: str) -> str | None:
    """Why ``kpp`` is not a valid KPP, or None."""
    if _KPP.fullmatch(kpp) is None:
        return "a KPP is 9 characters: 4 digits, 2 digits or capital letters, 3 digits"
    return None
