"""Identity normalisation: every way a sender can be recognised, as one string key.

Keys look like ``phone:+79001234567``, ``email:ivan@example.com`` or
``<channel>:<account>:<user id>`` for messenger ids, which only mean something inside
the channel account that issued them. WhatsApp's ``wa_id`` is a phone number.
"""

from __future__ import annotations

import phonenumbers

from channels.base import Sender

DEFAULT_REGION = "RU"
# Channels whose user ids are phone numbers.
PHONE_ID_CHANNELS = frozenset({"whatsapp"})


def normalize_phone(raw: str, region: str = DEFAULT_REGION) -> str | None:
    """E.164 form of a phone number, or None when it is not a possible number.

    ``8 (900) 123-45-67``, ``+7 900 123 45 67`` and ``79001234567`` are one number.
    """
    text = raw.strip()
    if not text:
        return None
    digits = "".join(ch for ch in text if ch.isdigit())
    if not text.startswith("+") and len(digits) > 10 and not digits.startswith("8"):
        # International numbers written without the plus (WhatsApp wa_id, PBX caller ids).
        text = "+" + digits
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def normalize_email(raw: str) -> str | None:
    """Case-folded address, or None when it is not an address at all."""
    text = raw.strip().strip("<>").strip()
    local, sep, domain = text.rpartition("@")
    if not sep or not local or "." not in domain or any(c.isspace() for c in text):
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
        if channel in PHONE_ID_CHANNELS and (phone := normalize_phone(uid)):
            key = phone_key(phone)
            if key not in keys:
                keys.append(key)
        elif uid:
            keys.append(messenger_key(channel, account, uid))
    return keys
