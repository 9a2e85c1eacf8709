"""Identity normalisation: every way a sender can be recognised, as one string key.

Keys look like ``phone:+79001234567``, ``email:ivan@example.com`` or
``<channel>:<account>:<user id>`` for messenger ids, which only mean something inside
the channel account that issued them. WhatsApp's ``wa_id`` is a phone number.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import phonenumbers

if TYPE_CHECKING:  # channels/ imports this module: no import cycle at run time
    from channels.base import Sender

DEFAULT_REGION = "RU"
# Channels whose user ids are phone numbers.
PHONE_ID_CHANNELS = frozenset({"whatsapp"})
E164 = phonenumbers.PhoneNumberFormat.E164


# Pure and called several times per message (identity keys, call reports, the caller
# lookup), each call two or three phonenumbers parses: 4 % of a service process's CPU
# under the mixed-load benchmark before this cache. Bounded; the same numbers recur.
@functools.lru_cache(maxsize=65536)
def normalize_phone(raw: str, region: str = DEFAULT_REGION) -> str | None:
    """E.164 form of a phone number, or None when it is not a possible number.

    ``8 (900) 123-45-67``, ``+7 900 123 45 67`` and ``79001234567`` are one number. A
    digit string without ``+`` is read in ``region`` first and, if that gives no valid
    number, as an international number (PBX caller ids often drop the ``+``).
    """
    text = raw.strip()
    if not text:
        return None
    candidates = [text]
    digits = "".join(ch for ch in text if ch.isdigit())
    if not text.startswith("+") and len(digits) > 10:
        candidates.append("+" + digits)
    possible: str | None = None
    for candidate in candidates:
        try:
            number = phonenumbers.parse(candidate, region)
        except phonenumbers.NumberParseException:
            continue
        e164 = str(phonenumbers.format_number(number, E164))
        if not _reads_back(e164):
            continue
        if phonenumbers.is_valid_number(number):
            return e164
        if possible is None and phonenumbers.is_possible_number(number):
            possible = e164
    return possible


def _reads_back(e164: str) -> bool:
    """The E.164 string parses to itself again (so normalising is idempotent)."""
    try:
        again = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return False
    return str(phonenumbers.format_number(again, E164)) == e164


def normalize_email(raw: str) -> str | None:
    """Case-folded address, or None when it is not an address at all. A domain without a
    dot (``root@localhost``, an intranet host) is an address too."""
    text = raw.strip().strip("<>").strip()
    local, sep, domain = text.rpartition("@")
    if (
        not sep
        or not local
        or "@" in local
        or not domain.strip(".")
        or ".." in domain
        or any(c.isspace() for c in text)
    ):
        return None
    return f"{local}@{domain}".casefold()


def phone_key(phone: str) -> str:
    return f"phone:{phone}"


def email_key(email: str) -> str:
    return f"email:{email}"


def messenger_key(channel: str, account: str, user_id: str) -> str:
    return f"{channel}:{account}:{user_id}"


def identity_keys(channel: str, account: str, sender: Sender) -> list[str]:
    """All identity keys of a sender, strongest first (phone, e-mail, messenger id)."""
    keys: list[str] = []
    if sender.phone and (phone := normalize_phone(sender.phone)):
        keys.append(phone_key(phone))
    if sender.email and (email := normalize_email(sender.email)):
        keys.append(email_key(email))
    if sender.external_user_id:
        uid = sender.external_user_id.strip()
        # A WhatsApp wa_id is an international number without "+"; anything else there
        # (a business-scoped user id) is a messenger id.
        phone = normalize_phone("+" + uid) if uid.isdigit() else None
        if channel in PHONE_ID_CHANNELS and phone:
            key = phone_key(phone)
            if key not in keys:
                keys.append(key)
        elif uid:
            keys.append(messenger_key(channel, account, uid))
    return keys
