"""Russian business-document formatting (automation/paperwork/ru_format.py): exact strings."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

import pytest

from automation.paperwork.numbering import format_number, reaches
from automation.paperwork.ru_format import (
    FILTERS,
    FormatError,
    amount_words,
    date_ru,
    money,
    num,
    plural_form,
)

NB = "\u00a0"


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (0, "ноль рублей 00 копеек"),
        (1, "один рубль 00 копеек"),
        (2, "два рубля 00 копеек"),
        (5, "пять рублей 00 копеек"),
        (11, "одиннадцать рублей 00 копеек"),
        (21, "двадцать один рубль 00 копеек"),
        (101, "сто один рубль 00 копеек"),
        (1_000_000, "один миллион рублей 00 копеек"),
        (123.45, "сто двадцать три рубля 45 копеек"),
        ("0,01", "ноль рублей 01 копейка"),
        (Decimal("2.02"), "два рубля 02 копейки"),
        (Decimal("14.11"), "четырнадцать рублей 11 копеек"),
        (Decimal("112.22"), "сто двенадцать рублей 22 копейки"),
        (2_000_000, "два миллиона рублей 00 копеек"),
        ("1 234,565", "одна тысяча двести тридцать четыре рубля 57 копеек"),  # half up
        (-3, "минус три рубля 00 копеек"),
    ],
)
def test_amount_in_words(value: object, words: str) -> None:
    assert amount_words(value) == words


def test_amount_in_words_capitalised() -> None:
    assert amount_words(123.45, capital=True) == "Сто двадцать три рубля 45 копеек"


@pytest.mark.parametrize(
    ("n", "form"),
    [(1, 0), (2, 1), (4, 1), (5, 2), (11, 2), (12, 2), (14, 2), (21, 0), (22, 1), (111, 2)],
)
def test_agreement(n: int, form: int) -> None:
    forms = ("рубль", "рубля", "рублей")
    assert plural_form(n, forms) == forms[form]


def test_dates_in_the_genitive() -> None:
    assert date_ru(date(2026, 12, 7)) == f"7 декабря 2026{NB}г."
    assert date_ru(datetime(2026, 3, 1, 23, 59)) == f"1 марта 2026{NB}г."
    assert date_ru("2026-05-31", suffix=False) == "31 мая 2026"
    with pytest.raises(FormatError):
        date_ru("31.05.2026")


def test_numbers_and_money() -> None:
    assert num(1234567.5) == f"1{NB}234{NB}567,5"
    assert num(1000) == f"1{NB}000"
    assert num(999) == "999"
    assert num(-1234) == f"-1{NB}234"
    assert num("0.125", 2) == "0,13"
    assert money(1234.5) == f"1{NB}234,50{NB}₽"
    assert money(0) == f"0,00{NB}₽"
    assert money(1_000_000) == f"1{NB}000{NB}000,00{NB}₽"
    for bad in ("abc", None, True, float("nan")):
        with pytest.raises(FormatError):
            num(bad)


def test_numbering_helpers() -> None:
    assert format_number("Д-{year}-{n:04d}", 2026, 42) == "Д-2026-0042"
    assert reaches("signed", "sent")
    assert reaches("sent", "sent")
    assert not reaches("generated", "signed")
    assert not reaches("pending", "generated")


def test_template_filters_print_what_they_cannot_format() -> None:
    with pytest.raises(FormatError):
        money(10**15)
    assert FILTERS["money"]("abc") == "abc"
    assert FILTERS["money"](None) == ""
    assert FILTERS["date_ru"]("soon") == "soon"
    assert FILTERS["amount_words"]("1e400") == "1e400"
    assert FILTERS["amount_words"](1, capital=True) == "Один рубль 00 копеек"
