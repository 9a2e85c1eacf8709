"""Polls SMS gateways for delivery states (docs/channels/sms.md#statuses).

For accounts of channel ``sms`` whose settings have ``poll_interval_s`` (gateways without
callbacks, or as a safety net): every interval, the account's SMS still ``queued``/``sent``
at the gateway (sent in the last ``poll_window_h`` hours, 72 by default) are asked for, and
what the gateway reports moves their delivery state forward exactly as a callback would
(crm_store/updates.py: never backwards, one event per change).

For a gateway that can be asked by our own id (SMSC.ru), messages left ``unknown`` after a
lost answer are asked for too: found, they get the gateway's id and its state.

Every process may poll; the updates are idempotent, so two pollers only cost requests.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import aiohttp
import structlog
from pymongo.errors import PyMongoError

from channels.base import SendError
from channels.sms import SmsChannel, client_id, provider
from config.models import AppConfig, ChannelAccount
from crm_store import updates
from crm_store.store import Document, Store
from ingest.tasks import cancel

log = structlog.get_logger("omniroute.sms_status")

BATCH = 100


def _float(account: ChannelAccount, key: str, default: float) -> float:
    raw = account.settings.get(key, default)
    try:
        return float(raw) if isinstance(raw, (int, float, str)) else default
    except ValueError:
        return default


def polled_accounts(config: AppConfig) -> list[ChannelAccount]:
    return [
        a
        for a in config.channels.accounts
        if a.channel == "sms" and a.enabled and _float(a, "poll_interval_s", 0.0) > 0
    ]


async def poll_account(store: Store, account: ChannelAccount, now: datetime | None = None) -> int:
    """One poll of one account; returns how many messages' states moved."""
    channel = SmsChannel()
    since = (now or datetime.now(UTC)) - timedelta(hours=_float(account, "poll_window_h", 72))
    base: Document = {
        "channel": "sms",
        "account": account.account,
        "direction": "out",
        "sent_at": {"$gte": since},
        "state": {"$in": ["queued", "sent"]},
        "provider_id": {"$exists": True},
    }
    docs = [
        d async for d in store.messages.find(base, {"provider_id": 1, "recipient": 1}).limit(BATCH)
    ]
    moved = 0
    items = [(str(d["provider_id"]), str(d.get("recipient") or "")) for d in docs]
    for status in await channel.poll(account, items) if items else []:
        moved += await updates.apply_status(store, status)
    if provider(account).reconciles:
        moved += await _reconcile_unknown(store, channel, account, since)
    return moved


async def _reconcile_unknown(
    store: Store, channel: SmsChannel, account: ChannelAccount, since: datetime
) -> int:
    query: Document = {
        "channel": "sms",
        "account": account.account,
        "direction": "out",
        "state": "unknown",
        "provider_id": {"$exists": False},
        "received_at": {"$gte": since},
    }
    docs = [d async for d in store.messages.find(query, {"recipient": 1}).limit(BATCH)]
    by_client = {client_id(d["_id"]): d for d in docs}
    items = [(cid, str(d.get("recipient") or "")) for cid, d in by_client.items()]
    moved = 0
    for status in await channel.poll(account, items) if items else []:
        doc = by_client.get(status.provider_id)
        if doc is None:
            continue
        # The gateway has it: it was sent. Its id is ours (SMSC takes our id).
        at = datetime.now(UTC)
        await store.messages.update_one(
            {"_id": doc["_id"], "provider_id": {"$exists": False}, "state": "unknown"},
            {
                "$set": {
                    "provider_id": status.provider_id,
                    "state": "sent",
                    "sent_at": at,
                    "state_at": at,
                },
                "$push": {"state_history": {"state": "sent", "at": at}},
                "$unset": {"error": "", "error_code": ""},
            },
        )
        moved += await updates.apply_status(store, status)
    return moved


class SmsStatusPoller:
    def __init__(self, store: Store, config: AppConfig) -> None:
        self.store = store
        self.accounts = polled_accounts(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.accounts:
            self._task = asyncio.create_task(self._run(), name="sms_status")

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None

    async def _run(self) -> None:
        every = min(_float(a, "poll_interval_s", 60.0) for a in self.accounts)
        while True:
            for account in self.accounts:
                try:
                    await poll_account(self.store, account)
                except (
                    PyMongoError,
                    aiohttp.ClientError,
                    SendError,
                    ValueError,
                    TimeoutError,
                ) as exc:
                    log.warning(
                        "sms_status.poll_failed", account=account.account, error=type(exc).__name__
                    )
            await asyncio.sleep(every)
