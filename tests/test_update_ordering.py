"""Edits, deletions and receipts that arrive out of order, twice, or before their message.

Over real HTTP into the running service with provider payloads (Telegram
``edited_message`` with ``edit_date``, VK ``message_edit`` with ``update_time``,
WhatsApp ``edit`` messages and status receipts): an update that overtakes its message is
parked in ``pending_updates`` before the 2xx and applied once the message is stored; an
edit applies only when newer than what the message says, and a stale or repeated one
changes nothing, adds no history entry and emits no event.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

import tests.fakes.whatsapp as fake_whatsapp
from channels.base import DeliveryState, MessageDeletion, StatusUpdate
from crm_store import outbox, updates
from crm_store.documents import intake_id
from crm_store.pending import COLLECTION as PENDING
from crm_store.store import Store
from inbox.replies import reply
from tests import test_channel_telegram as tg
from tests import test_channel_vk as vk
from tests import test_channel_whatsapp as wa
from tests.fakes.whatsapp import FakeWhatsApp
from tests.helpers import wait_for
from tests.service import InProcess, config_with, in_process


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        tg.TOKEN_ENV: tg.TOKEN,
        tg.WEBHOOK_ENV: tg.WEBHOOK_SECRET,
        vk.TOKEN_ENV: vk.TOKEN,
        vk.CALLBACK_ENV: vk.CALLBACK_SECRET,
        **wa.ENV,
    }.items():
        monkeypatch.setenv(name, value)


def tg_edit(original: dict[str, Any], text: str, after_s: int) -> dict[str, Any]:
    """Telegram's ``edited_message``: the message with its new text and ``edit_date``."""
    return tg.update(
        "edited_message", {**original, "text": text, "edit_date": original["date"] + after_s}
    )


def tg_id(original: dict[str, Any]) -> str:
    return intake_id("telegram", tg.BOT, tg.pid(original))


async def message_doc(svc: InProcess, mid: str) -> dict[str, Any]:
    doc = await svc.store.messages.find_one({"_id": mid})
    assert doc is not None, f"message {mid} not stored"
    return doc


def history(doc: dict[str, Any]) -> list[str]:
    return [e["text"] for e in doc.get("edits", [])]


async def count(svc: InProcess, collection: str, query: dict[str, Any] | None = None) -> int:
    return await svc.store[collection].count_documents(query or {})


async def edited_events(svc: InProcess, mid: str) -> list[int]:
    return [
        e["data"]["number"]
        async for e in svc.store.events.find(
            {"type": "message.edited", "refs.message_id": mid}, sort=[("seq", 1)]
        )
    ]


# --------------------------------------------------------------------------- edits


async def test_edit_before_its_message_is_applied_when_the_message_is_routed(
    mongo_uri: str, db_name: str
) -> None:
    async with tg.service(mongo_uri, db_name) as (svc, _):
        original = tg.message("I need a sfoa")
        mid = tg_id(original)
        # The edit's delivery overtakes the message's: kept before the 2xx.
        status, body = await tg.post(svc, tg_edit(original, "I need a sofa", 3))
        assert (status, body["accepted"]) == (200, [])
        assert (await count(svc, PENDING), await count(svc, "messages")) == (1, 0)
        parked = await svc.store[PENDING].find_one({})
        assert parked is not None
        assert parked["key"] == mid
        assert parked["expires_at"] - parked["received_at"] == timedelta(days=30)
        status, body = await tg.post(svc, tg.update(body=original))
        assert (status, body["accepted"]) == (200, [mid])
        await svc.routed()
        msg = await message_doc(svc, mid)
        assert msg["text"] == "I need a sofa"
        assert history(msg) == ["I need a sfoa"]
        assert msg["edited_at"].timestamp() == original["date"] + 3
        conv = await svc.store.conversations.find_one({"_id": msg["conversation_id"]})
        assert conv is not None
        assert conv["last_inbound"]["text"] == "I need a sofa"  # the inbox list's preview
        assert await edited_events(svc, mid) == [1]
        assert await count(svc, PENDING) == 0
        # The edit delivered once more (Telegram retries): nothing changes.
        await tg.post(svc, tg_edit(original, "I need a sofa", 3))
        assert history(await message_doc(svc, mid)) == ["I need a sfoa"]
        assert (await edited_events(svc, mid), await count(svc, PENDING)) == ([1], 0)


async def test_edit_while_its_message_waits_for_routing(mongo_uri: str, db_name: str) -> None:
    """The customer fixes a typo before the message is routed: the message is stored
    with its original text, then the edit applies, with the original in the history."""
    async with tg.service(mongo_uri, db_name) as (svc, _):
        worker = svc.service.worker
        await worker.stop()  # routing waits: the record stays in intake
        original = tg.message("Wardrobe, 2 m wide, oak")
        mid = tg_id(original)
        assert (await tg.post(svc, tg.update(body=original)))[0] == 200
        assert (await tg.post(svc, tg_edit(original, "Wardrobe, 2.4 m wide, oak", 1)))[0] == 200
        assert (await count(svc, "intake", {"status": "pending"}), await count(svc, PENDING)) == (
            1,
            1,
        )
        await worker.start()
        await svc.routed()
        msg = await message_doc(svc, mid)
        assert (msg["text"], history(msg)) == (
            "Wardrobe, 2.4 m wide, oak",
            ["Wardrobe, 2 m wide, oak"],
        )
        assert await edited_events(svc, mid) == [1]


async def test_edits_newest_first_and_redelivered_change_nothing_twice(
    mongo_uri: str, db_name: str
) -> None:
    async with tg.service(mongo_uri, db_name) as (svc, _):
        # A stored message gets two edits, delivered newest first, then each again.
        live = tg.message("a table 120 cm")
        live_id = tg_id(live)
        await tg.post(svc, tg.update(body=live))
        await svc.routed()
        newest, older = tg_edit(live, "a table 160 cm", 20), tg_edit(live, "a table 140 cm", 10)
        for payload in (newest, older, newest, older):
            assert (await tg.post(svc, payload))[0] == 200
        msg = await message_doc(svc, live_id)
        assert msg["text"] == "a table 160 cm"
        assert history(msg) == ["a table 120 cm"]
        assert msg["edited_at"].timestamp() == live["date"] + 20
        assert await edited_events(svc, live_id) == [1]

        # Both edits before their message, newest first: applied in the provider's order
        # once it is stored — each one once.
        early = tg.message("chairs: 4")
        early_id = tg_id(early)
        await tg.post(svc, tg_edit(early, "chairs: 6", 20))
        await tg.post(svc, tg_edit(early, "chairs: 5", 10))
        await tg.post(svc, tg_edit(early, "chairs: 6", 20))  # a retry parks nothing new
        assert await count(svc, PENDING) == 2
        await tg.post(svc, tg.update(body=early))
        await svc.routed()
        msg = await message_doc(svc, early_id)
        assert msg["text"] == "chairs: 6"
        assert history(msg) == ["chairs: 4", "chairs: 5"]
        assert await edited_events(svc, early_id) == [1, 2]
        await tg.post(svc, tg_edit(early, "chairs: 5", 10))
        assert (await message_doc(svc, early_id))["text"] == "chairs: 6"
        assert (await count(svc, PENDING), await edited_events(svc, early_id)) == (0, [1, 2])


async def test_vk_edits_by_update_time_and_without_it(mongo_uri: str, db_name: str) -> None:
    async with vk.service(mongo_uri, db_name) as svc:
        mid = intake_id("vk", vk.ACCOUNT, f"{vk.USER}_21")
        original = vk.message(21, "Хочу диван")

        def edit(text: str, update_time: int | None) -> dict[str, Any]:
            body = {**vk.message(21, text)}
            if update_time is not None:
                body["update_time"] = update_time
            return vk.envelope("message_edit", body)

        # The edit overtakes the message, and an older edit arrives after both.
        assert (await vk.post(svc, edit("Хочу два дивана", original["date"] + 60)))[2] == "ok"
        assert (await vk.post(svc, vk.message_new(original)))[2] == "ok"
        await svc.routed()
        assert (await vk.post(svc, edit("Хочу диван и стол", original["date"] + 30)))[2] == "ok"
        msg = await message_doc(svc, mid)
        assert (msg["text"], history(msg)) == ("Хочу два дивана", ["Хочу диван"])
        assert msg["edited_at"].timestamp() == original["date"] + 60

        # Edits without a provider time apply in arrival order; a redelivered one (its
        # text current, or overtaken) never puts the same text into the history again.
        untimed = [edit("Хочу три дивана", None), edit("Хочу четыре дивана", None)]
        for payload in (*untimed, untimed[1], untimed[0]):
            assert (await vk.post(svc, payload))[2] == "ok"
        msg = await message_doc(svc, mid)
        assert msg["text"] == "Хочу четыре дивана"
        assert history(msg) == ["Хочу диван", "Хочу два дивана", "Хочу три дивана"]
        assert await edited_events(svc, mid) == [1, 2, 3]


async def test_whatsapp_edit_before_its_message(mongo_uri: str, db_name: str) -> None:
    async with FakeWhatsApp(wa.TOKEN) as fake, wa.service(mongo_uri, db_name, fake) as svc:
        edit = wa.message(
            "wamid.EDIT-7",
            "edit",
            {
                "original_message_id": "wamid.ORIG-7",
                "message": {"type": "text", "text": {"body": "I need 4 chairs"}},
            },
        )
        edit["timestamp"] = wa.ts(10)
        code, body = await wa.post(svc, wa.envelope(wa.value([edit])))
        assert (code, body["accepted"]) == (200, [])
        original = wa.text("wamid.ORIG-7", "I need 3 chairs")
        original["timestamp"] = wa.ts(30)
        code, body = await wa.post(svc, wa.envelope(wa.value([original])))
        assert (code, len(body["accepted"])) == (200, 1)
        await svc.routed()
        msg = await wa.inbound(svc, "wamid.ORIG-7")
        assert (msg["text"], history(msg)) == ("I need 4 chairs", ["I need 3 chairs"])
        assert await count(svc, PENDING) == 0


# --------------------------------------------------------------------------- receipts


async def test_receipts_before_our_send_returned_its_id_are_applied(
    mongo_uri: str, db_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WhatsApp reports "delivered" and "read" for a wamid before our send request has
    returned it (the webhook overtakes the API response): kept, and applied the moment
    the outbox stores the wamid."""
    wamid_hex = uuid.uuid4().hex
    wamid = "wamid.HBgL" + wamid_hex.upper()
    # The fake Graph API hands out this wamid for the next message it accepts.
    monkeypatch.setattr(
        fake_whatsapp, "uuid", SimpleNamespace(uuid4=lambda: SimpleNamespace(hex=wamid_hex))
    )
    async with FakeWhatsApp(wa.TOKEN) as fake, wa.service(mongo_uri, db_name, fake) as svc:
        conv = await wa.conversation_with(svc)
        # One clock reading for both: WhatsApp's timestamps are whole seconds, and a second
        # ticking between two readings would give "delivered" the same one as "read".
        now = int(time.time())
        for state, ago in (("read", 1), ("delivered", 2)):
            stamp = wa.status(wamid, state, timestamp=str(now - ago))
            code, _ = await wa.post(svc, wa.envelope(wa.value(statuses=[stamp])))
            assert code == 200
        assert await count(svc, PENDING, {"kind": "status"}) == 2
        parked = await svc.store[PENDING].find_one({"kind": "status"})
        assert parked is not None  # kept a day at most: ours overtake a send by seconds
        assert parked["expires_at"] - parked["received_at"] == timedelta(days=1)
        out = await reply(svc.store, svc.service.config, conv["_id"], "The table is 300 EUR.")
        assert svc.service.outbox is not None
        svc.service.outbox.wake.set()

        async def read() -> bool:
            doc = await svc.store.messages.find_one({"_id": out["_id"]})
            return doc is not None and doc.get("state") == "read" and "send_due_at" not in doc

        await wait_for(read, timeout=15, message="the early receipts were not applied")
        doc = await message_doc(svc, out["_id"])
        assert (doc["provider_id"], fake.sent) == (wamid, [wamid])
        assert [h["state"] for h in doc["state_history"]] == ["queued", "sent", "delivered", "read"]
        changes = [
            e["data"]["state"]
            async for e in svc.store.events.find(
                {"type": "message.delivery_changed", "refs.message_id": out["_id"]},
                sort=[("seq", 1)],
            )
        ]
        assert changes == ["delivered", "read"]
        assert await count(svc, PENDING) == 0


# --------------------------------------------------------------------------- deletions


async def test_deletion_before_its_message_marks_it_deleted_and_keeps_the_text(
    mongo_uri: str, db_name: str
) -> None:
    """No channel reports deletions yet (WhatsApp ``revoke`` is next); the store side is
    ready: a deletion that overtakes its message is kept and applied once."""
    async with tg.service(mongo_uri, db_name) as (svc, _):
        original = tg.message("call me at 8 900 123-45-67")
        mid = tg_id(original)
        gone = MessageDeletion(
            channel="telegram",
            account=tg.BOT,
            provider_id=tg.pid(original),
            deleted_at=datetime.fromtimestamp(original["date"] + 5, UTC),
        )
        assert await updates.apply_deletion(svc.store, gone) is False
        await tg.post(svc, tg.update(body=original))
        await svc.routed()
        assert await updates.apply_deletion(svc.store, gone) is True  # a repeat
        msg = await message_doc(svc, mid)
        assert (msg["deleted"], msg["text"]) == (True, "call me at 8 900 123-45-67")
        assert msg["deleted_at"].timestamp() == original["date"] + 5
        assert await count(svc, "events", {"type": "message.deleted"}) == 1
        assert await count(svc, PENDING) == 0


async def test_whatsapp_revoke_over_http_before_and_after_its_message(
    mongo_uri: str, db_name: str
) -> None:
    """The webhook applies a channel's deletions: a ``revoke`` that overtakes its message
    is parked and applied once; a redelivered one changes nothing."""
    async with FakeWhatsApp(wa.TOKEN) as fake, wa.service(mongo_uri, db_name, fake) as svc:
        revoke = wa.message("wamid.GONE-9", "revoke", {"original_message_id": "wamid.ORIG-9"})
        revoke["timestamp"] = wa.ts(40)
        code, body = await wa.post(svc, wa.envelope(wa.value([revoke])))
        assert (code, body["accepted"]) == (200, [])
        assert await count(svc, PENDING) == 1
        original = wa.text("wamid.ORIG-9", "my card number is 4276 …")
        original["timestamp"] = wa.ts(30)
        code, body = await wa.post(svc, wa.envelope(wa.value([original])))
        assert (code, len(body["accepted"])) == (200, 1)
        await svc.routed()
        code, _ = await wa.post(svc, wa.envelope(wa.value([revoke])))  # redelivered
        assert code == 200
        msg = await wa.inbound(svc, "wamid.ORIG-9")
        assert (msg["deleted"], msg["text"]) == (True, "my card number is 4276 …")
        assert await count(svc, "events", {"type": "message.deleted"}) == 1
        assert await count(svc, PENDING) == 0


# --------------------------------------------------------------------------- concurrency


async def test_messages_and_their_edits_posted_at_once_all_end_edited(
    mongo_uri: str, db_name: str
) -> None:
    pairs = 30
    async with tg.service(mongo_uri, db_name) as (svc, _):
        originals = [
            tg.message(f"order {n}: sofa", user={**tg.IVAN, "id": 5000 + n}) for n in range(pairs)
        ]
        payloads = [tg.update(body=m) for m in originals] + [
            tg_edit(m, f"order {n}: sofa, grey", 1) for n, m in enumerate(originals)
        ]
        random.Random(16).shuffle(payloads)
        results = await asyncio.gather(*(tg.post(svc, p) for p in payloads))
        assert [status for status, _ in results] == [200] * 2 * pairs
        await svc.routed()
        for n, m in enumerate(originals):
            msg = await message_doc(svc, tg_id(m))
            assert (msg["text"], history(msg)) == (f"order {n}: sofa, grey", [f"order {n}: sofa"])
        assert await count(svc, "events", {"type": "message.edited"}) == pairs
        assert await count(svc, PENDING) == 0


# --------------------------------------------------------------------------- crash


async def test_crash_between_storing_the_message_and_applying_its_edit(
    mongo_uri: str, db_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process dies after routing stored the message and before it applied the edit
    parked for it: another process's recovery sweep routes the record again, and the
    edit applies — once."""
    real_apply = updates.apply_pending
    calls = 0

    async def dies_once(store: Store, keys: Any) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            # The process "dies" here: this task never goes on, and its records look like
            # those of a process that is gone.
            expired = datetime.now(UTC) - timedelta(seconds=1)
            await store.intake.update_many(
                {}, {"$set": {"lease_until": expired, "owner": "crashed-process"}}
            )
            await asyncio.Event().wait()
        return await real_apply(store, keys)

    config = config_with(tg.tg_account())
    options: dict[str, Any] = {"recovery_interval_s": 0.2, "intake_lease_s": 30}
    async with (
        in_process(mongo_uri, db_name, config=config, **options) as dying,
        in_process(mongo_uri, db_name, config=config, **options) as survivor,
    ):
        original = tg.message("a bed 160x200")
        mid = tg_id(original)
        assert (await tg.post(dying, tg_edit(original, "a bed 180x200", 2)))[0] == 200
        monkeypatch.setattr(updates, "apply_pending", dies_once)
        assert (await tg.post(dying, tg.update(body=original)))[0] == 200
        await survivor.routed()
        assert calls >= 2
        msg = await message_doc(survivor, mid)
        assert (msg["text"], history(msg)) == ("a bed 180x200", ["a bed 160x200"])
        assert await edited_events(survivor, mid) == [1]
        assert await count(survivor, PENDING) == 0
        assert await count(survivor, "messages") == 1


async def test_crash_after_the_send_stored_the_provider_id_never_sends_again(
    mongo_uri: str, db_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outbox stores the provider's id first and finishes the send after (state,
    event, early receipts, out of the outbox). A process that dies in between leaves the
    message claimable: the next claim finishes it — the early receipt applied, one
    ``message.sent`` — and never hands it out to be sent a second time."""
    store = Store.open(mongo_uri, db_name, timeout_ms=10_000)
    try:
        await store.ensure_indexes()
        conv = {"_id": "conv-1", "channel": "whatsapp", "account": "main", "reply_to": "x"}
        await store.conversations.insert_one(conv)
        queued = await outbox.queue(store, conv, text="The sofa ships on Monday.")
        [claimed] = await outbox.claim_due(store, "dying", 30.0, 10)
        # The provider's "delivered" arrives before the send returns its id: parked.
        early = StatusUpdate(
            channel="whatsapp",
            account="main",
            provider_id="wamid.X1",
            state=DeliveryState.DELIVERED,
        )
        assert await updates.apply_status(store, early) is False
        assert await store[PENDING].count_documents({}) == 1

        async def dies(store: Store, keys: Any) -> int:
            raise ConnectionResetError("drill: the process dies here")

        monkeypatch.setattr(updates, "apply_pending", dies)
        with pytest.raises(ConnectionResetError):
            await outbox.mark_sent(store, claimed, "wamid.X1")
        monkeypatch.undo()
        # Its lease runs out; another process claims the due messages.
        await store.messages.update_one(
            {"_id": queued["_id"]}, {"$set": {"send_lease_until": datetime.now(UTC)}}
        )
        assert await outbox.claim_due(store, "survivor", 30.0, 10) == []
        doc = await store.messages.find_one({"_id": queued["_id"]})
        assert doc is not None
        assert (doc["provider_id"], doc["state"], doc["attempts"]) == ("wamid.X1", "delivered", 1)
        assert "send_due_at" not in doc
        assert [h["state"] for h in doc["state_history"]] == ["queued", "sent", "delivered"]
        assert await store.events.count_documents({"type": "message.sent"}) == 1
        assert await store[PENDING].count_documents({}) == 0
        assert await outbox.claim_due(store, "later", 30.0, 10) == []
    finally:
        await store.close()
