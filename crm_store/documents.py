"""Typed views of the stored documents that routing reads and writes.

Documents are stored as plain dicts; these models are the boundary where they are read
back (``Model.model_validate(doc)``) so the rest of the code works with types.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


def stable_id(*parts: str) -> str:
    """A short deterministic id (96 bits of SHA-256) for a composite natural key."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
    return digest[:24]


def intake_id(channel: str, account: str, provider_id: str) -> str:
    """The intake record's ``_id``: unique per provider message, so retries collide."""
    return stable_id("intake", channel, account, provider_id)


def conversation_id(channel: str, account: str, thread: str) -> str:
    return stable_id("conversation", channel, account, thread)


class Doc(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    id: str = Field(alias="_id")


class IntakeStatus(StrEnum):
    PENDING = "pending"
    ROUTED = "routed"
    FAILED = "failed"
    # An authentic webhook delivery its channel could not read: kept with its (redacted)
    # raw body and the error, never routed; ``omniroute intake reparse`` reads it again.
    UNPARSED = "unparsed"
    # An unparsed record that a later reparse read: ``produced`` lists the intake ids.
    REPARSED = "reparsed"
    # E-mail that cannot be read at all (channels/email).
    BROKEN = "broken"


def unparsed_id(channel: str, account: str, body_sha256: str) -> str:
    """An unparsed delivery's ``_id``: a provider retry of the same body collides."""
    return stable_id("unparsed", channel, account, body_sha256)


class TargetKind(StrEnum):
    LEAD = "lead"
    DEAL = "deal"
    CONTACT = "contact"
    NONE = "none"


class Target(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: TargetKind
    id: str | None = None
    open: bool = True


class ContactDoc(Doc):
    identities: list[str] = Field(default_factory=list)
    name: str | None = None
    responsible_id: str | None = None
    # "routing" when routing created it for an unknown sender; "manual"/"import" otherwise.
    origin: str = "routing"
    origin_intake_id: str | None = None
    spam: bool = False
    # The company the contact works for (docs/companies.md): a lead or deal routing
    # creates for the contact is the company's too.
    company_id: str | None = None


class LeadDoc(Doc):
    contact_id: str
    pipeline_id: str
    stage_id: str
    open: bool = True
    is_repeat: bool = False
    source_id: str | None = None
    responsible_id: str | None = None
    origin_intake_id: str | None = None
    spam: bool = False
    created_at: datetime | None = None


class DealDoc(Doc):
    contact_id: str
    pipeline_id: str
    stage_id: str
    open: bool = True
    is_repeat: bool = False
    source_id: str | None = None
    responsible_id: str | None = None
    origin_intake_id: str | None = None
    last_activity_at: datetime | None = None


class ConversationDoc(Doc):
    channel: str
    account: str
    thread: str
    contact_id: str | None = None
    target: Target = Target(kind=TargetKind.NONE, open=False)
    origin_intake_id: str | None = None
    # Every identity key the conversation's sender has written with.
    sender_keys: list[str] = Field(default_factory=list)


class IntakeDoc(Doc):
    channel: str
    account: str
    provider_id: str
    source_id: str
    status: IntakeStatus = IntakeStatus.PENDING
    message: dict[str, Any]
    received_at: datetime
    attempts: int = 0
