"""Identity normalisation: phones (E.164, default region RU), e-mails, messenger ids."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from channels.base import Sender
from channels.identity import (
    email_key,
    identity_keys,
    messenger_key,
    normalize_email,
    normalize_phone,
    phone_key,
)

PROPERTY = settings(max_examples=300, deadline=None, database=None)

# --- phones ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "8 (900) 123-45-67",
        "+7 900 123 45 67",
        "79001234567",
        "9001234567",
        "89001234567",
        "+7(900)1234567",
        "+7-900-123-45-67",
        "8-900-123-45-67",
        "7 (900) 123 45 67",
        "  +7 900 123-45-67  ",
        "tel:+79001234567",
    ],
)
def test_russian_spellings_are_one_number(raw: str) -> None:
    assert normalize_phone(raw) == "+79001234567"


@pytest.mark.parametrize(
    ("raw", "e164"),
    [
        ("8 (495) 123-45-67", "+74951234567"),  # Moscow landline, trunk prefix 8
        ("8-800-555-35-35", "+78005553535"),  # toll-free: 8 is the trunk prefix here too
        ("+44 20 7946 0958", "+442079460958"),
        ("+44 (0) 20 7946 0958", "+442079460958"),  # the UK's "(0)" trunk prefix is dropped
        ("+1 212 555 0100", "+12125550100"),
        ("+49 30 123456", "+4930123456"),
        ("+375 29 123-45-67", "+375291234567"),
        ("442079460958", "+442079460958"),  # an international number without its plus
        ("380501234567", "+380501234567"),
    ],
)
def test_foreign_and_landline_numbers(raw: str, e164: str) -> None:
    assert normalize_phone(raw) == e164


@pytest.mark.parametrize(
    "raw",
    ["", "   ", "abc", "phone", "+", "++", "---", "()", "+7", "8", "n/a", "тел."],
)
def test_junk_is_not_a_phone(raw: str) -> None:
    assert normalize_phone(raw) is None


@pytest.mark.parametrize("raw", ["1", "12", "123", "1234", "8 900", "+7 900", "+7 900 12"])
def test_too_short_is_not_a_phone(raw: str) -> None:
    assert normalize_phone(raw) is None


def test_too_long_is_not_a_phone() -> None:
    assert normalize_phone("+7 900 123 45 67 89 01 23") is None


def test_default_region_is_russia() -> None:
    # A national UK spelling is not London in the default region RU …
    assert normalize_phone("020 7946 0958") != "+442079460958"
    # … while a national Russian one is Russian.
    assert normalize_phone("8 495 123 45 67") == "+74951234567"


def test_phone_region_can_be_overridden_for_short_national_numbers() -> None:
    assert normalize_phone("030 123456", region="DE") == "+4930123456"


@pytest.mark.parametrize(
    ("raw", "region", "e164"),
    [("020 7946 0958", "GB", "+442079460958"), ("07700 900123", "GB", "+447700900123")],
)
def test_phone_region_can_be_overridden(raw: str, region: str, e164: str) -> None:
    """Regression: every digit string over 10 digits was read as international."""
    assert normalize_phone(raw, region=region) == e164


# --- phones: properties ----------------------------------------------------------------

SEPARATORS = st.sampled_from(["", " ", "-", " - ", ".", "  "])


@st.composite
def ru_mobile_spellings(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A Russian mobile number (9XX XXX XX XX) and several ways people write it."""
    national = "9" + draw(st.text(alphabet="0123456789", min_size=9, max_size=9))
    code, a, b, c = national[:3], national[3:6], national[6:8], national[8:]
    spellings = []
    for _ in range(draw(st.integers(min_value=2, max_value=6))):
        prefix = draw(st.sampled_from(["8", "+7", "7", "", "+7 ", "8 ", "7 "]))
        sep = draw(SEPARATORS)
        group = draw(
            st.sampled_from(
                [
                    f"{code}{sep}{a}{sep}{b}{sep}{c}",
                    f"({code}){sep}{a}{sep}{b}{sep}{c}",
                    f"{sep}({code}){sep}{a}-{b}-{c}",
                    f"{code}{a}{b}{c}",
                    f"{code}{sep}{a}{b}{c}",
                ]
            )
        )
        pad = draw(st.sampled_from(["", " ", "\t"]))
        spellings.append(f"{pad}{prefix}{group}{pad}")
    return "+7" + national, spellings


@PROPERTY
@given(ru_mobile_spellings())
def test_every_spelling_of_a_ru_mobile_is_one_e164(case: tuple[str, list[str]]) -> None:
    e164, spellings = case
    assert {normalize_phone(s) for s in spellings} == {e164}


@PROPERTY
@given(ru_mobile_spellings())
def test_phone_normalisation_is_idempotent_on_ru_numbers(case: tuple[str, list[str]]) -> None:
    _, spellings = case
    for s in spellings:
        once = normalize_phone(s)
        assert once is not None
        assert normalize_phone(once) == once


@PROPERTY
@given(
    cc=st.sampled_from(["1", "7", "33", "39", "44", "49", "86", "90", "375", "380", "998"]),
    first=st.sampled_from("123456789"),
    rest=st.text(alphabet="0123456789", min_size=5, max_size=10),
    plus=st.sampled_from(["+", "+", ""]),
    sep=SEPARATORS,
)
def test_phone_normalisation_is_idempotent_on_international_numbers(
    cc: str, first: str, rest: str, plus: str, sep: str
) -> None:
    once = normalize_phone(f"{plus}{cc}{sep}{first}{rest}")
    if once is not None:
        assert once.startswith("+")
        assert once[1:].isdigit()
        assert normalize_phone(once) == once


@PROPERTY
@given(st.text(max_size=40))
def test_phone_normalisation_never_raises_and_yields_e164(raw: str) -> None:
    out = normalize_phone(raw)
    if out is not None:
        assert out.startswith("+")
        assert out[1:].isdigit()
        assert 3 <= len(out) <= 16


@pytest.mark.parametrize("raw", ["43001200000", "+31 000 000 000 0", "31000000000"])
def test_phone_normalisation_is_idempotent_with_doubled_trunk_prefix(raw: str) -> None:
    """Regression: phonenumbers' E.164 of these parsed to yet another number."""
    once = normalize_phone(raw)
    if once is not None:
        assert normalize_phone(once) == once


@PROPERTY
@given(st.text(alphabet="0123456789+-() ", max_size=20))
def test_phone_normalisation_is_idempotent_on_any_digits(raw: str) -> None:
    once = normalize_phone(raw)
    if once is not None:
        assert normalize_phone(once) == once


# --- e-mail ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("Ivan@Example.COM", "ivan@example.com"),
        ("ivan@example.com", "ivan@example.com"),
        ("  IVAN@example.com  ", "ivan@example.com"),
        ("<Ivan@Example.com>", "ivan@example.com"),
        ("first.last+tag@Sub.Example.org", "first.last+tag@sub.example.org"),
        ("ПОЧТА@Пример.РФ", "почта@пример.рф"),
        ("Straße@Example.de", "strasse@example.de"),  # casefold, not just lower()
        ("Root@LocalHost", "root@localhost"),  # a domain without a dot is an address
    ],
)
def test_email_is_case_folded(raw: str, norm: str) -> None:
    assert normalize_email(raw) == norm


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "plain",
        "ivan@",
        "@example.com",
        "ivan@.",
        "ivan@example..com",
        "ivan at example.com",
        "ivan@exa mple.com",
        "iv an@example.com",
        "<>",
    ],
)
def test_junk_is_not_an_email(raw: str) -> None:
    assert normalize_email(raw) is None


@pytest.mark.parametrize("raw", ["a@@example.com", "a@b.example@example.com"])
def test_two_at_signs_are_not_an_email(raw: str) -> None:
    """Regression: rpartition kept 'a@' as the local part."""
    assert normalize_email(raw) is None


@PROPERTY
@given(st.emails())
def test_email_normalisation_is_idempotent(raw: str) -> None:
    once = normalize_email(raw)
    assert once is not None
    assert normalize_email(once) == once
    assert normalize_email(raw.upper()) == normalize_email(raw.lower())


# --- identity keys ---------------------------------------------------------------------


def test_key_shapes() -> None:
    assert phone_key("+79001234567") == "phone:+79001234567"
    assert email_key("a@b.co") == "email:a@b.co"
    assert messenger_key("telegram", "bot1", "42") == "telegram:bot1:42"


def test_keys_are_ordered_phone_email_messenger() -> None:
    sender = Sender(
        external_user_id="42", email="Ivan@Example.com", phone="8 (900) 123-45-67", name="Ivan"
    )
    assert identity_keys("telegram", "bot1", sender) == [
        "phone:+79001234567",
        "email:ivan@example.com",
        "telegram:bot1:42",
    ]


@pytest.mark.parametrize(
    ("channel", "account", "uid", "key"),
    [
        ("telegram", "bot1", "42", "telegram:bot1:42"),
        ("vk", "group7", "1001", "vk:group7:1001"),
        ("viber", "bot", "abc==", "viber:bot:abc=="),
        ("avito", "acc", " 777 ", "avito:acc:777"),
    ],
)
def test_messenger_ids_are_scoped_to_channel_and_account(
    channel: str, account: str, uid: str, key: str
) -> None:
    assert identity_keys(channel, account, Sender(external_user_id=uid)) == [key]


def test_same_user_id_in_two_accounts_is_two_identities() -> None:
    a = identity_keys("telegram", "bot1", Sender(external_user_id="42"))
    b = identity_keys("telegram", "bot2", Sender(external_user_id="42"))
    c = identity_keys("vk", "bot1", Sender(external_user_id="42"))
    assert len({*a, *b, *c}) == 3


def test_whatsapp_wa_id_is_a_phone() -> None:
    assert identity_keys("whatsapp", "main", Sender(external_user_id="79001234567")) == [
        "phone:+79001234567"
    ]


def test_whatsapp_wa_id_equal_to_phone_is_one_key() -> None:
    sender = Sender(phone="8 900 123 45 67", external_user_id="79001234567")
    assert identity_keys("whatsapp", "main", sender) == ["phone:+79001234567"]


def test_whatsapp_wa_id_and_other_phone_are_two_keys() -> None:
    sender = Sender(phone="+7 900 000 00 01", email="a@b.co", external_user_id="447700900123")
    assert identity_keys("whatsapp", "main", sender) == [
        "phone:+79000000001",
        "email:a@b.co",
        "phone:+447700900123",
    ]


def test_whatsapp_id_that_is_no_phone_stays_a_messenger_id() -> None:
    assert identity_keys("whatsapp", "main", Sender(external_user_id="group-xyz")) == [
        "whatsapp:main:group-xyz"
    ]


def test_non_whatsapp_numeric_ids_are_not_phones() -> None:
    # A Telegram user id that looks like a phone number is still a Telegram id.
    assert identity_keys("telegram", "bot", Sender(external_user_id="79001234567")) == [
        "telegram:bot:79001234567"
    ]


def test_junk_identities_are_skipped() -> None:
    sender = Sender(phone="call me", email="not-an-address", external_user_id="   ", name="X")
    assert identity_keys("api", "site", sender) == []


def test_junk_phone_does_not_hide_the_other_identities() -> None:
    sender = Sender(phone="n/a", email="A@B.co", external_user_id="u1")
    assert identity_keys("api", "site", sender) == ["email:a@b.co", "api:site:u1"]


def test_no_identity_at_all() -> None:
    assert identity_keys("api", "site", Sender(name="Anonymous")) == []


@PROPERTY
@given(ru_mobile_spellings(), st.sampled_from(["whatsapp", "api", "telegram"]))
def test_any_ru_spelling_gives_the_same_phone_key(
    case: tuple[str, list[str]], channel: str
) -> None:
    e164, spellings = case
    keys = {tuple(identity_keys(channel, "acc", Sender(phone=s))) for s in spellings}
    assert keys == {(f"phone:{e164}",)}
