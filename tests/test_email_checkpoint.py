"""The UID checkpoint never runs ahead of intake (issue 16 §5), and mail without a
Message-ID is not downloaded again by a restart's full scan.

A real Dovecot, the real store, the real poller. The failure is injected in our own code
path between fetch and checkpoint: the poller's batch write raises for the second batch,
after the mails were fetched and before anything could advance the checkpoint. Then a
fresh poller, with its full scan (the safety net that would hide a checkpoint run ahead)
switched off, must still find every mail: each is stored exactly once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from channels.email.channel import mailbox_settings
from channels.email.imap import Fetched, ImapSession
from crm_store import mailboxes
from crm_store.documents import IntakeDoc
from crm_store.store import Store
from ingest.mail_sync import MailboxPoller, SyncStats
from tests.mail_support import MAIL_PASSWORD, Dovecot, append, dovecot_available, email_account
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

    async def _store_batch(
        self, fetched: Sequence[Fetched], uidvalidity: int, stats: SyncStats
    ) -> None:
        self.batches += 1
        if self.batches == 2:
            raise StoreFails("the store went away between fetch and checkpoint")
        await super()._store_batch(fetched, uidvalidity, stats)


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
