"""Replies through the generic API channel: an operator's reply reaches the integration's
``reply_url`` signed, with the recipient the inbound message named; failures are retried
or failed as the answer says."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from channels.api import ApiChannel
from channels.base import Attachment, OutboundMessage, SendError
from config.models import ChannelAccount
from crm_store import outbox
from inbox.replies import ReplyError, reply
from tests.fakes.integration import FakeIntegration
from tests.helpers import wait_for
from tests.service import InProcess, api_body, config_with, in_process


def site(reply_url: str | None) -> ChannelAccount:
    settings: dict[str, str | int | bool] = {"timeout_s": 2}
    if reply_url:
        settings["reply_url"] = reply_url
    return ChannelAccount(
        channel="api",
        account="site",
        source="site",
        secret_env="OMNIROUTE_SECRET_API_SITE",
        settings=settings,
    )


async def state_of(svc: InProcess, message_id: str, state: str) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        assert svc.service.outbox is not None
        svc.service.outbox.wake.set()
        doc: dict[str, Any] | None = await svc.store.messages.find_one({"_id": message_id})
        return doc if doc is not None and doc["state"] == state else None

    await wait_for(reached, timeout=15, interval=0.1, message=f"reply never {state}")
    doc = await reached()
    assert doc is not None
    return doc


async def test_reply_reaches_the_integration_signed(mongo_uri: str, db_name: str) -> None:
    async with (
        FakeIntegration("site-secret") as fake,
        in_process(mongo_uri, db_name, config=config_with(site(fake.url))) as svc,
    ):
        body = api_body("r-1", phone="8 (900) 555-01-01", name="Irina", thread_id="order-77")
        assert (await svc.client.post_api(body))[0] == 200
        await svc.routed()
        conv = await svc.store.conversations.find_one({})
        assert conv is not None
        assert conv["reply_to"] == "phone:+79005550101"
        fake.script.append((503, b"busy"))  # the first try fails: the outbox retries
        out = await reply(svc.store, svc.service.config, conv["_id"], "We will call you")
        doc = await state_of(svc, out["_id"], "sent")
        assert doc["provider_id"] == "int-2"
        first, second = fake.received
        assert first.signed
        assert second.signed
        assert (
            first.body
            == second.body
            == {
                "id": out["_id"],
                "account": "site",
                "recipient": "phone:+79005550101",
                "thread_id": "order-77",
                "text": "We will call you",
                "attachments": [],
                "automatic": False,
            }
        )
        assert second.headers["Idempotency-Key"] == out["_id"]


async def test_a_4xx_answer_fails_the_reply_without_retries(mongo_uri: str, db_name: str) -> None:
    async with (
        FakeIntegration("site-secret") as fake,
        in_process(mongo_uri, db_name, config=config_with(site(fake.url))) as svc,
    ):
        assert (await svc.client.post_api(api_body("r-2", user="crm-42")))[0] == 200
        await svc.routed()
        conv = await svc.store.conversations.find_one({})
        assert conv is not None
        assert conv["reply_to"] == "user:crm-42"
        fake.script.append((400, b"unknown recipient"))
        out = await reply(svc.store, svc.service.config, conv["_id"], "Hello")
        doc = await state_of(svc, out["_id"], "failed")
        assert "unknown recipient" in doc["error"]
        assert len(fake.received) == 1  # a 4xx is not retried


async def test_without_reply_url_a_reply_is_refused_at_once(mongo_uri: str, db_name: str) -> None:
    async with in_process(mongo_uri, db_name, config=config_with(site(None))) as svc:
        assert (await svc.client.post_api(api_body("r-3", user="crm-43")))[0] == 200
        await svc.routed()
        conv = await svc.store.conversations.find_one({})
        assert conv is not None
        with pytest.raises(ReplyError) as err:
            await reply(svc.store, svc.service.config, conv["_id"], "Hello")
        assert err.value.code == "channel_cannot_send"


async def test_unreachable_url_is_retryable() -> None:
    channel = ApiChannel()
    msg = OutboundMessage(
        id="m1",
        channel="api",
        account="site",
        recipient="user:1",
        text="hi",
        attachments=[Attachment(kind="file", url="https://example.com/a.pdf")],
    )
    with pytest.raises(SendError) as err:
        await channel.send(site("http://127.0.0.1:9/replies"), "s", msg)
    assert (err.value.retryable, err.value.code) == (True, "unreachable")


async def test_a_queued_message_wakes_the_outbox_at_once(mongo_uri: str, db_name: str) -> None:
    """A message queued in this process (a robot's, an operator's) is sent without waiting
    for the outbox's next poll: with the poll an hour away it still goes out."""
    from ingest.outbox import OutboxWorker

    async with (
        FakeIntegration("site-secret") as fake,
        in_process(mongo_uri, db_name, config=config_with(site(fake.url))) as svc,
    ):
        body = api_body("wake-1", phone="8 (900) 555-02-02", name="Oleg")
        assert (await svc.client.post_api(body))[0] == 200
        await svc.routed()
        conv = await svc.store.conversations.find_one({})
        assert conv is not None
        running = svc.service.outbox
        assert running is not None
        await running.stop()  # only the hour-polling worker below may send
        slow = OutboxWorker(svc.store, svc.service.config, owner="slow", poll_s=3600.0)
        await slow.start()
        try:
            await asyncio.sleep(0.2)  # it has polled once and now waits for an hour
            doc = await outbox.queue(svc.store, conv, text="On our way", message_id="w-1")

            async def sent() -> bool:
                found = await svc.store.messages.find_one({"_id": doc["_id"]})
                return found is not None and found["state"] == "sent"

            await wait_for(sent, timeout=15, interval=0.05, message="the outbox slept on")
            assert [r.body["text"] for r in fake.received] == ["On our way"]
        finally:
            await slow.stop()
