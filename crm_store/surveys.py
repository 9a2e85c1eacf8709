"""Quality surveys: one per deal, its signed link, the customer's answer (docs/survey.md).

Collection ``survey_answers``, one document per survey (a contract the reports read)::

    {_id: <survey id>, deal_id, source_deal_id, pipeline, survey, responsible_id,
     department, questions: [keys], answers: {key: 1..5}, comment, lang,
     sent_at, answered_at (None until answered), expires_at, followed_up_at}

The survey id is derived from (deal, survey): asking twice gives the same survey and the
same link. The answer is one conditional update (``answered_at: None`` → the time): of two
answers racing, one wins; the other, and every later one, changes nothing.

The link is ``/survey/{token}``, ``token = <survey id>.<exp>.<sig>`` with ``sig`` the
base64url HMAC-SHA256 of ``"survey:<id>.<exp>"`` under the service key (the file-link key:
``OMNIROUTE_FILE_LINK_KEY`` or the one kept in the store, inbox/file_links.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from pymongo import ReturnDocument

from channels.signing import same
from config.models import Survey
from config.settings import get_settings
from crm_store import files
from crm_store.documents import stable_id
from crm_store.events import append, event
from crm_store.store import Document, Store

COLLECTION = "survey_answers"
_TOKEN = re.compile(r"^([0-9a-f]{24})\.([0-9]{1,12})\.([A-Za-z0-9_-]{43})$")


class Verdict(StrEnum):
    GENUINE = "genuine"
    FORGED = "forged"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class Signer:
    key: bytes

    def sig(self, survey_id: str, exp: int) -> str:
        mac = hmac.new(self.key, f"survey:{survey_id}.{exp}".encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()

    def token(self, survey_id: str, expires_at: datetime) -> str:
        exp = int(expires_at.timestamp())
        return f"{survey_id}.{exp}.{self.sig(survey_id, exp)}"

    def check(self, token: str, now: datetime) -> tuple[Verdict, str | None]:
        """The token's verdict and survey id (None when forged). The signature is checked
        before the expiry, and before anything is looked up."""
        m = _TOKEN.match(token)
        if m is None:
            return Verdict.FORGED, None
        survey_id, exp = m.group(1), int(m.group(2))
        if not same(self.sig(survey_id, exp), m.group(3)):
            return Verdict.FORGED, None
        if now.timestamp() >= exp:
            return Verdict.EXPIRED, survey_id
        return Verdict.GENUINE, survey_id


async def signer(store: Store) -> Signer:
    configured = get_settings().file_link_key
    if configured is not None:
        return Signer(configured.get_secret_value().encode())
    return Signer(await files.link_key(store))


def survey_id(deal_id: str, survey: str) -> str:
    return stable_id("survey", deal_id, survey)


async def create(
    store: Store,
    deal: Document,
    survey: Survey,
    *,
    department: str | None,
    at: datetime,
) -> Document:
    """The deal's survey, created on first call (later calls return it unchanged)."""
    sid = survey_id(deal["_id"], survey.id)
    doc: Document | None = await store[COLLECTION].find_one_and_update(
        {"_id": sid},
        {
            "$setOnInsert": {
                "deal_id": deal["_id"],
                "source_deal_id": deal.get("copied_from"),
                "contact_id": deal.get("contact_id"),
                "pipeline": deal.get("pipeline_id"),
                "survey": survey.id,
                "responsible_id": deal.get("responsible_id"),
                "department": department,
                "questions": [q.key for q in survey.questions],
                "answers": {},
                "comment": None,
                "lang": None,
                "sent_at": at,
                "answered_at": None,
                "expires_at": at + timedelta(days=survey.link_ttl_days),
            }
        },
        upsert=True,
        return_document=ReturnDocument.AFTER,
    )
    assert doc is not None
    return doc


async def get(store: Store, sid: str) -> Document | None:
    found: Document | None = await store[COLLECTION].find_one({"_id": sid})
    return found


async def answer(
    store: Store,
    sid: str,
    answers: dict[str, int],
    comment: str | None,
    lang: str,
    at: datetime,
) -> Document | None:
    """Store the answer if the survey has none yet; the stored survey, or None when it
    was answered before (nothing changes then)."""
    doc: Document | None = await store[COLLECTION].find_one_and_update(
        {"_id": sid, "answered_at": None},
        {"$set": {"answers": answers, "comment": comment, "lang": lang, "answered_at": at}},
        return_document=ReturnDocument.AFTER,
    )
    return doc


def summary(doc: Document, top: int) -> tuple[float, bool]:
    """The average of the answers and whether every one is ``top``."""
    values = [int(v) for v in (doc.get("answers") or {}).values()]
    if not values:
        return 0.0, False
    return round(sum(values) / len(values), 2), all(v >= top for v in values)


async def announce(store: Store, doc: Document, top: int) -> None:
    """``survey.answered`` (once: its id is the survey's), then the survey is marked
    followed up."""
    average, all_top = summary(doc, top)
    data: dict[str, Any] = {
        "deal_id": doc["deal_id"],
        "survey": doc.get("survey"),
        "answers": doc.get("answers") or {},
        "average": average,
        "all_top": all_top,
    }
    refs: dict[str, str | None] = {"deal_id": doc["deal_id"], "contact_id": doc.get("contact_id")}
    at: datetime = doc.get("answered_at") or datetime.now(UTC)
    await append(
        store,
        [event("survey.answered", refs, data, key=[doc["_id"]], at=at)],
        maybe_written=True,
    )
    await store[COLLECTION].update_one(
        {"_id": doc["_id"]}, {"$set": {"followed_up_at": datetime.now(UTC)}}
    )
