"""The UID checkpoint never runs ahead of intake (issue 16 §5), and mail without a
Message-ID is not downloaded again by a restart's full scan.

A real Dovecot, the real store, the real poller. The failure is injected in our own code
path between fetch and checkpoint: the poller's batch write raises for the second batch,
after the mails were fetched and before anything could advance the checkpoint. Then a
fresh poller, with its full scan (the safety net that would hide a checkpoint run ahead)
switched off, must still find every mail: each is stored exactly once.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from typing import Any

import pytest

from channels.email.channel import mailbox_settings
from channels.email.imap import ImapSession
from crm_store import mailboxes
from crm_store.documents import IntakeDoc
from crm_store.store import Store
from ingest.mail_sync import Batch, MailboxPoller, SyncStats
from tests.mail_support import (
    MAIL_PASSWORD,
    Dovecot,
    append,
    dovecot_available,
    email_account,
    seen,
)
from tests.mail_support import mail as make_mail

pytestmark = pytest.mark.skipif(
    not dovecot_available(), reason="Dovecot is not installed (make test installs it)"
)

SALES = "sales@example.test"
TOTAL = 12
BATCH = 4


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    server = Dovecot({SALES: MAIL_PASSWORD})
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


class StoreFails(Exception):
    pass


class FailingSecondBatch(MailboxPoller):
    """The poller with its batch write failing once: on the second batch."""

    batches = 0

    async def _store_batch(self, batch: Batch, uidvalidity: int, stats: SyncStats) -> None:
        self.batches += 1
        if self.batches == 2:
            raise StoreFails("the store went away between fetch and checkpoint")
        await super()._store_batch(batch, uidvalidity, stats)


async def poller(cls: type[MailboxPoller], store: Store, account: Any) -> MailboxPoller:
    """A poller holding its mailbox's lease, as its run loop would before a sync."""
    submitted: list[IntakeDoc] = []
    p = cls(
        store,
        account,
        mailbox_settings(account),
        MAIL_PASSWORD,
        owner="test",
        submit=submitted.extend,
    )
    assert await mailboxes.acquire(store, p.lease, p.owner, p.settings.lease_s)
    return p


async def session(server: Dovecot) -> tuple[ImapSession, int]:
    s = await ImapSession.open(
        "127.0.0.1", server.port, tls=False, verify=False, user=SALES,
        password=MAIL_PASSWORD, timeout_s=10.0,
    )  # fmt: skip
    return s, await s.select("INBOX")


async def stored_uids(store: Store) -> list[int]:
    return sorted([d["mail"]["uid"] async for d in store.intake.find({}, {"mail.uid": 1})])


async def test_checkpoint_never_passes_a_batch_that_was_not_stored(
    mongo_uri: str, db_name: str, dovecot: Dovecot
) -> None:
    await append(
        dovecot,
        SALES,
        *(
            make_mail(
                sender=f"buyer{i}@cp.test",
                to=SALES,
                subject=f"Order {i}",
                text=f"Please quote item {i}.",
                # Every third mail has no Message-ID (keyed by its content hash).
                message_id=f"cp-{i}@cp.test" if i % 3 else None,
            )
            for i in range(1, TOTAL + 1)
        ),
    )
    account = email_account("sales", "mail_sales", dovecot, SALES, fetch_batch=BATCH)
    store = Store.open(mongo_uri, db_name)
    key = mailboxes.mailbox_key("sales", "INBOX")
    try:
        failing = await poller(FailingSecondBatch, store, account)
        imap, uidvalidity = await session(dovecot)
        try:
            with pytest.raises(StoreFails):
                await failing.sync(imap, uidvalidity)
        finally:
            await imap.close()
        cp = await mailboxes.checkpoint(store, key)
        # The first batch is stored and checkpointed; the failed second one is not.
        assert await stored_uids(store) == list(range(1, BATCH + 1))
        assert cp.last_uid == BATCH

        # Recovery without the safety net: only the checkpoint says where to go on.
        healthy = await poller(MailboxPoller, store, account)
        healthy.next_full_scan = math.inf
        imap, uidvalidity = await session(dovecot)
        try:
            stats = await healthy.sync(imap, uidvalidity)
        finally:
            await imap.close()
        assert stats.fetched == TOTAL - BATCH
        assert await stored_uids(store) == list(range(1, TOTAL + 1))
        assert await store.intake.count_documents({}) == TOTAL
        assert (await mailboxes.checkpoint(store, key)).last_uid == TOTAL
    finally:
        await store.close()


async def test_full_scan_does_not_download_stored_mail_without_message_id(
    mongo_uri: str, db_name: str, dovecot: Dovecot
) -> None:
    await append(
        dovecot,
        SALES,
        *(
            make_mail(sender=f"n{i}@cp.test", to=SALES, subject=f"No id {i}", text=f"text {i}")
            for i in range(1, 6)
        ),
        make_mail(sender="m@cp.test", to=SALES, subject="With id", text="x", message_id="m@cp"),
    )
    account = email_account("sales", "mail_sales", dovecot, SALES, fetch_batch=BATCH)
    store = Store.open(mongo_uri, db_name)
    try:
        first = await poller(MailboxPoller, store, account)
        imap, uidvalidity = await session(dovecot)
        try:
            stats = await first.sync(imap, uidvalidity)
            assert stats.fetched == 6
            # A restart: a new poller's first round runs the full scan over every UID.
            restarted = await poller(MailboxPoller, store, account)
            again = await restarted.sync(imap, uidvalidity)
        finally:
            await imap.close()
        assert again.fetched == 0
        assert await store.intake.count_documents({}) == 6
        assert await store["mail_uids"].count_documents({}) == 5
    finally:
        await store.close()


PIPE_TOTAL = 20
PIPE_FAILING = 3  # the third of five batches fails to write


class Pipeline(MailboxPoller):
    """The poller watched from the store and the server at each step of the pipelined
    sync. Batch 1's write is slow, so the fetch ahead has time to run (and an unbounded
    one would read every batch); batch ``fail_at`` fails to write."""

    fail_at = 0

    def __init__(self, *args: Any, server: Dovecot, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.server = server
        self.events: list[tuple[str, int]] = []
        self.written: list[list[int]] = []
        self.in_memory = 0  # batches fetched and not yet written
        self.most_in_memory = 0

    async def checkpoint_is_sound(self) -> int:
        """The checkpoint as stored now: every UID up to it is in intake, and only the
        mails of written batches are flagged \\Seen."""
        # Read in this order: the checkpoint and the flags follow the intake writes, so
        # what they say must hold for intake read after them.
        cp = (await mailboxes.checkpoint(self.store, self.key)).last_uid
        flagged = [u for u, s in enumerate(await seen(self.server, SALES), 1) if s]
        stored = await stored_uids(self.store)
        assert set(range(1, cp + 1)) <= set(stored), (cp, stored)
        assert set(flagged) <= set(stored), (flagged, stored)
        return cp

    async def _fetch_batch(self, session: ImapSession, imap: Any, uids: list[int]) -> Batch:
        await self.checkpoint_is_sound()
        batch = await super()._fetch_batch(session, imap, uids)
        self.events.append(("fetched", uids[0]))
        self.in_memory += 1
        self.most_in_memory = max(self.most_in_memory, self.in_memory)
        return batch

    async def _store_batch(self, batch: Batch, uidvalidity: int, stats: SyncStats) -> None:
        # Written in UID order, each batch only once every UID before it is checkpointed
        # (this mailbox's UIDs have no gaps).
        cp = await self.checkpoint_is_sound()
        assert cp == batch.uids[0] - 1, (cp, batch.uids, self.written)
        self.events.append(("writing", batch.uids[0]))
        if not self.written:
            await asyncio.sleep(1.0)
        if len(self.written) + 1 == self.fail_at:
            raise StoreFails("the store went away while the next batch was being fetched")
        await super()._store_batch(batch, uidvalidity, stats)
        self.written.append(batch.uids)
        self.in_memory -= 1
        self.events.append(("written", batch.uids[0]))

    async def _advance(self, uidvalidity: int, last_uid: int) -> None:
        await self.checkpoint_is_sound()
        assert last_uid == self.written[-1][-1]
        await super()._advance(uidvalidity, last_uid)
        assert await self.checkpoint_is_sound() == last_uid


async def test_pipelined_sync_writes_in_order_and_checkpoints_only_written_mail(
    mongo_uri: str, db_name: str, dovecot: Dovecot
) -> None:
    """The fetch of batch N+1 overlaps the write of batch N, one batch deep at most; the
    writes, the \\Seen flags and the checkpoint stay in UID order and never run ahead of
    intake — also when a write fails while the next batch is already fetched."""
    await append(
        dovecot,
        SALES,
        *(
            make_mail(
                sender=f"buyer{i}@pipe.test",
                to=SALES,
                subject=f"Order {i}",
                text=f"Please quote item {i}.",
                message_id=f"pipe-{i}@pipe.test" if i % 3 else None,
            )
            for i in range(1, PIPE_TOTAL + 1)
        ),
    )
    account = email_account(
        "sales", "mail_sales", dovecot, SALES, fetch_batch=BATCH, mark_seen=True
    )
    store = Store.open(mongo_uri, db_name)
    key = mailboxes.mailbox_key("sales", "INBOX")
    batches = [list(range(u, u + BATCH)) for u in range(1, PIPE_TOTAL + 1, BATCH)]

    def pipeline(fail_at: int) -> Pipeline:
        p = Pipeline(
            store,
            account,
            mailbox_settings(account),
            MAIL_PASSWORD,
            owner="test",
            submit=lambda _docs: None,
            server=dovecot,
        )
        p.fail_at = fail_at
        return p

    try:
        failing = pipeline(PIPE_FAILING)
        failing.next_full_scan = math.inf
        assert await mailboxes.acquire(store, failing.lease, "test", failing.settings.lease_s)
        imap, uidvalidity = await session(dovecot)
        try:
            with pytest.raises(StoreFails):
                await failing.sync(imap, uidvalidity)
            # The batch fetched ahead of the failed write does not outlive the round.
            assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("mail-fetch:")]
        finally:
            await imap.close()
        # Batch 2 was fetched while batch 1 was being written (the pipeline), batch 3 not
        # before batch 1 was written (one batch ahead at most).
        ev = failing.events
        assert ev.index(("fetched", 5)) < ev.index(("written", 1)), ev
        assert ev.index(("written", 1)) < ev.index(("fetched", 9)), ev
        assert failing.most_in_memory <= 2
        assert failing.written == batches[: PIPE_FAILING - 1]
        written = (PIPE_FAILING - 1) * BATCH
        assert await stored_uids(store) == list(range(1, written + 1))
        assert (await mailboxes.checkpoint(store, key)).last_uid == written
        assert await seen(dovecot, SALES) == [u <= written for u in range(1, PIPE_TOTAL + 1)]

        # A fresh poller, without the full scan: the checkpoint alone says where to go on.
        healthy = pipeline(0)
        healthy.next_full_scan = math.inf
        imap, uidvalidity = await session(dovecot)
        try:
            stats = await healthy.sync(imap, uidvalidity)
        finally:
            await imap.close()
        assert healthy.written == batches[PIPE_FAILING - 1 :]
        assert healthy.most_in_memory <= 2
        assert stats.fetched == stats.accepted == PIPE_TOTAL - written
        assert await stored_uids(store) == list(range(1, PIPE_TOTAL + 1))
        assert await store.intake.count_documents({}) == PIPE_TOTAL
        assert (await mailboxes.checkpoint(store, key)).last_uid == PIPE_TOTAL
        assert all(await seen(dovecot, SALES))
    finally:
        await store.close()
