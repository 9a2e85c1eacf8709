"""A scenario's customer steps as a channel would have read them.

The runner hands these to the same durable intake write every webhook uses
(:func:`ingest.accept.store_parsed`), so routing and the robots see exactly what a real
delivery would give them; the providers' wire formats are the channel tests' concern.
Each person has stable per-channel ids (derived from the scenario's name for them).
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from automation.scenario.model import Call, Person, Write
from channels import calls
from channels.base import (
    CallDirection,
    CallEvent,
    CallStage,
    Disposition,
    InboundMessage,
    Parsed,
    PostRef,
    Sender,
)
from config.models import ChannelAccount

# Channels whose sender is a phone number by nature.
PHONE_NATIVE = frozenset({"whatsapp", "sms"})
# Channels that only report calls.
TELEPHONY = frozenset({"megafon", "mango", "zadarma", "pbx"})
# Channels with public comments under posts.
COMMENTS = frozenset({"vk", "messenger", "instagram"})
# Channels a customer cannot write in.
OUTBOUND_ONLY = frozenset({"sms"})


class StepError(ValueError):
    """A step the configuration cannot carry out (an unknown channel account …)."""


def user_id(person_key: str, channel: str) -> str:
    """The person's stable id in a messenger (digits, as most providers' ids are)."""
    digest = hashlib.sha256(f"{person_key}:{channel}".encode()).hexdigest()
    return str(int(digest[:12], 16) % 10**10 + 10**9)


def pick_account(
    accounts: list[ChannelAccount], channel: str, account: str | None
) -> ChannelAccount:
    found = [
        a
        for a in accounts
        if a.channel == channel and a.enabled and (account is None or a.account == account)
    ]
    if not found:
        named = f"{channel}/{account}" if account else channel
        raise StepError(f"no enabled {named} account in the configuration")
    return found[0]


def message(
    person_key: str, person: Person, step: Write, account: ChannelAccount, seq: int, at: datetime
) -> Parsed:
    channel = account.channel
    if channel in OUTBOUND_ONLY or channel in TELEPHONY:
        raise StepError(f"a customer cannot write on {channel}: use call (telephony) or another")
    ext = None if channel in ("api", "email") else user_id(person_key, channel)
    phone = person.phone if (step.shares_phone or channel in PHONE_NATIVE) else None
    email = person.email if (step.shares_email or channel == "email") else None
    if channel == "api":
        phone, email = person.phone, person.email
    if channel == "whatsapp" and phone:
        ext = "".join(ch for ch in phone if ch.isdigit())
    if channel == "email" and not email:
        raise StepError(f"{person_key} has no e-mail to write from")
    sender = Sender(phone=phone, email=email, name=person.name, external_user_id=ext)
    comment: dict[str, object] = {}
    if step.comment_on is not None:
        if channel not in COMMENTS:
            raise StepError(f"there are no comments under posts on {channel}")
        comment = {
            "kind": "comment",
            "post": PostRef(id=step.comment_on),
            "thread_id": f"comment:{step.comment_on}:{ext}",
        }
    msg = InboundMessage(
        **comment,
        channel=channel,
        account=account.account,
        provider_id=f"scenario-{seq}",
        sender=sender,
        text=step.text,
        sent_at=at,
        reply_to=email if channel == "email" else ext,
    )
    return Parsed(messages=[msg])


def call(
    person_key: str, person: Person, step: Call, account: ChannelAccount, seq: int, at: datetime
) -> Parsed:
    if account.channel not in TELEPHONY:
        raise StepError(f"{account.channel}/{account.account} is not a telephony account")
    if not person.phone:
        raise StepError(f"{person_key} has no phone to call from")
    call_id = f"scenario-call-{seq}"
    talk = 0
    if step.answered_by is not None:
        talk = int(step.talk.amount * 60 if step.talk is not None else 120)
        if step.talk is not None and step.talk.unit.value == "hours":
            talk = step.talk.amount * 3600
    base = {
        "channel": account.channel,
        "account": account.account,
        "call_id": call_id,
        "direction": CallDirection.IN,
        "customer": person.phone,
    }
    ring = CallEvent(**base, event="scenario.ring", stage=CallStage.RINGING, at=at, started_at=at)
    ended_at = at + timedelta(seconds=20 + talk)
    end = CallEvent(
        **base,
        event="scenario.end",
        stage=CallStage.ENDED,
        disposition=Disposition.ANSWERED if step.answered_by else Disposition.MISSED,
        agent=step.answered_by,
        final=True,
        at=ended_at,
        started_at=at,
        answered_at=at + timedelta(seconds=20) if step.answered_by else None,
        ended_at=ended_at,
        duration_s=20 + talk,
        talk_s=talk,
    )
    # The reports and the call's message (the one routing takes), as a channel returns them.
    return calls.parsed(ring, end)
