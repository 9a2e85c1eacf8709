"""What the benchmark posts: API-channel webhook bodies.

Every body is a realistic site-form request (phone, name, a paragraph of text). Its
intake record — the message normalized and stored with the raw body beside it — is about
1 KB of BSON. The raw insert baseline does not rebuild that record: it inserts copies of
one record the service really stored (read back after a calibration message), so both
sides write the same bytes whatever ingest/ puts in the record.
"""

from __future__ import annotations

from typing import Any

import bson
import orjson

from crm_store.store import Document

ACCOUNT = "site"  # config/channels.yaml: api/site → source "site" (pipeline "leads")
SECRET_ENV = "OMNIROUTE_SECRET_API_SITE"
SECRET = "bench-site-secret"

_TEXT = (
    "Good afternoon! We are renovating our apartment and would like a quote for a built-in "
    "kitchen: about 3.2 m along the wall plus an island, matte fronts, a stone worktop, "
    "and appliances we already have (oven, hob, dishwasher). Could a measurer come next "
    "week, preferably in the evening after 18:00? Please also tell me the lead time and "
    "whether you install on weekends. Thank you, "
)


def phone(n: int) -> str:
    """A distinct valid Russian mobile number per ``n`` (n < 10**7)."""
    return f"+7 900 {n // 10000:03d}-{n % 10000 // 100:02d}-{n % 100:02d}"


def body(external_id: str, sender: int, thread: str | None = None) -> bytes:
    """One webhook body from sender number ``sender`` (optionally in chat ``thread``)."""
    data: dict[str, Any] = {
        "external_id": external_id,
        "sender": {"phone": phone(sender), "name": f"Customer {sender}"},
        "text": _TEXT + f"Customer {sender}.",
    }
    if thread is not None:
        data["thread_id"] = thread
    return orjson.dumps(data)


def bson_size(doc: Document) -> int:
    return len(bson.encode(doc))
