"""The IMAP intake: one poller per configured mailbox, leased to one process at a time.

For each e-mail account, :class:`MailboxPoller` loops:

1. take the mailbox's lease (``crm_store/mailboxes.py``); while another live process
   holds it, wait and try again — when that process dies its lease runs out;
2. connect, log in, select the folder; a UIDVALIDITY other than the checkpoint's starts a
   new epoch at UID 0 (every message is fetched again and deduplicated by its intake id);
3. fetch every UID above the checkpoint — in batches bounded by count and bytes, with
   ``BODY.PEEK[]`` so nothing is marked read unless ``mark_seen`` — parse, store the
   attachments, write the batch to intake durably, hand the new records to routing, flag
   the batch ``\\Seen`` (``mark_seen``) and only then advance the checkpoint: a crash
   anywhere re-fetches, never loses. Pipelined one batch deep: the next batch is fetched
   and parsed while this one is written (:meth:`MailboxPoller._fetch_store`), so the store
   and the IMAP server work at the same time; the writes and the checkpoint stay in order;
4. every ``full_scan_s``, the safety net: the Message-IDs of the whole folder are
   compared with intake and anything missing is fetched;
5. wait for news: IDLE when the server has it (re-issued at the latest every ``poll_s``,
   far below the 29-minute limit), else sleep ``poll_s``; renew the lease; go to 3.

Any failure — the server away, a refused login, a dropped connection, the store away —
closes the session and retries with exponential backoff and jitter (capped at
``backoff_max_s``). Nothing depends on how long an outage lasts: the checkpoint says what
is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aioimaplib
import structlog
from pydantic import ValidationError
from pymongo.errors import PyMongoError

from channels.email.channel import (
    MailboxSettings,
    broken_inbound,
    inbound_from_mail,
    mailbox_settings,
)
from channels.email.imap import HEADER_CHUNK, SIZE_CHUNK, Fetched, ImapError, ImapSession
from channels.email.mime import ParsedMail, parse_mail
from config.loader import resolve_secret
from config.models import AppConfig, ChannelAccount
from crm_store import files, intake, mailboxes
from crm_store.documents import IntakeDoc, IntakeStatus, intake_id, stable_id
from crm_store.store import Document, Store
from ingest.metrics import Metrics
from ingest.tasks import cancel

log = structlog.get_logger("omniroute.mail")

# Raw mails up to this size stay in the intake record; bigger ones go to files.
RAW_INLINE_MAX = 2 * 1024 * 1024
RETRYABLE = (
    ImapError,
    aioimaplib.AioImapException,
    OSError,
    TimeoutError,
    PyMongoError,
    asyncio.IncompleteReadError,
)


# How long a failing sync waits for the batch it fetched ahead to end once cancelled.
DONE_WAIT_S = 5.0


class LeaseLost(Exception):
    """Another process holds the mailbox now: stop touching it."""


@dataclass(frozen=True, slots=True)
class Batch:
    """One fetch batch: the UIDs asked for, what the server returned (in UID order; an
    expunged UID is missing) and each returned mail parsed."""

    uids: list[int]
    fetched: list[Fetched]
    parsed: list[ParsedMail]


@dataclass(slots=True)
class SyncStats:
    fetched: int = 0
    accepted: int = 0
    duplicates: int = 0


class MailboxPoller:
    def __init__(
        self,
        store: Store,
        account: ChannelAccount,
        settings: MailboxSettings,
        password: str,
        *,
        owner: str,
        submit: Callable[[list[IntakeDoc]], None],
        metrics: Metrics | None = None,
        intake_lease_s: float = 30.0,
    ) -> None:
        self.store = store
        self.account = account
        self.settings = settings
        self.password = password
        self.owner = owner
        self.submit = submit
        self.metrics = metrics
        self.intake_lease_s = intake_lease_s
        self.key = mailboxes.mailbox_key(account.account, settings.folder)
        self.lease = f"mailbox:{self.key}"
        self.failures = 0
        self.next_full_scan = 0.0
        self.lease_renewed = 0.0
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name=f"mail:{self.key}")

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None
        with contextlib.suppress(PyMongoError):
            await mailboxes.release(self.store, self.lease, self.owner)

    async def run(self) -> None:
        bound = structlog.get_logger("omniroute.mail").bind(
            account=self.account.account, folder=self.settings.folder
        )
        while True:
            try:
                if not await mailboxes.acquire(
                    self.store, self.lease, self.owner, self.settings.lease_s
                ):
                    await asyncio.sleep(self.settings.lease_s / 3 * (0.5 + random.random()))
                    continue
                self.lease_renewed = time.monotonic()
                await self._session(bound)
            except LeaseLost:
                bound.info("mail.lease_lost")
            except RETRYABLE as exc:
                self.failures += 1
                delay = self.backoff_s()
                bound.warning(
                    "mail.retry",
                    error=f"{type(exc).__name__}: {exc}"[:300],
                    attempt=self.failures,
                    delay_s=round(delay, 2),
                )
                if self.metrics is not None:
                    self.metrics.store_errors.labels("mail").inc()
                await asyncio.sleep(delay)
            except Exception:  # a bug must not silently end the mailbox's intake
                self.failures += 1
                delay = self.backoff_s()
                bound.exception("mail.unexpected_error", attempt=self.failures, delay_s=delay)
                await asyncio.sleep(delay)

    def backoff_s(self) -> float:
        cap = self.settings.backoff_max_s
        return min(cap, 0.5 * 2.0 ** min(self.failures, 20)) * (0.5 + random.random())

    async def _session(self, bound: structlog.typing.FilteringBoundLogger) -> None:
        s = self.settings
        session = await ImapSession.open(
            s.host,
            s.port,
            tls=s.tls,
            verify=s.tls_verify,
            user=s.user,
            password=self.password,
            timeout_s=s.timeout_s,
        )
        try:
            uidvalidity = await session.select(s.folder)
            bound.info("mail.connected", idle=s.idle and session.can_idle)
            while True:
                stats = await self.sync(session, uidvalidity)
                if stats.fetched:
                    bound.info(
                        "mail.synced",
                        fetched=stats.fetched,
                        accepted=stats.accepted,
                        duplicates=stats.duplicates,
                    )
                self.failures = 0
                await self._renew()
                if s.idle and session.can_idle:
                    await session.wait_for_news(min(s.poll_s, s.lease_s / 3))
                else:
                    await asyncio.sleep(min(s.poll_s, s.lease_s / 3))
                    await session.noop()
                await self._renew()
        finally:
            await session.close()

    async def _renew(self) -> None:
        if not await mailboxes.renew(self.store, self.lease, self.owner, self.settings.lease_s):
            raise LeaseLost(self.lease)
        self.lease_renewed = time.monotonic()

    async def _renew_if_due(self) -> None:
        if time.monotonic() - self.lease_renewed > self.settings.lease_s / 3:
            await self._renew()

    # --- one sync round -------------------------------------------------------------

    async def sync(self, session: ImapSession, uidvalidity: int) -> SyncStats:
        cp = await mailboxes.checkpoint(self.store, self.key)
        if cp.uidvalidity != uidvalidity:
            log.info(
                "mail.new_epoch",
                account=self.account.account,
                uidvalidity=uidvalidity,
                previous=cp.uidvalidity,
            )
            await mailboxes.start_epoch(self.store, self.key, uidvalidity, cp.uidvalidity)
            cp = mailboxes.Checkpoint(uidvalidity, 0)
        stats = SyncStats()
        uids = await session.uids_after(cp.last_uid)
        await self._fetch_store(session, uidvalidity, uids, stats, advance=True)
        if time.monotonic() >= self.next_full_scan:
            await self.full_scan(session, uidvalidity, stats)
            self.next_full_scan = time.monotonic() + self.settings.full_scan_s
        return stats

    async def full_scan(self, session: ImapSession, uidvalidity: int, stats: SyncStats) -> None:
        """The safety net: fetch whatever in the folder is not in intake."""
        cp = await mailboxes.checkpoint(self.store, self.key)
        uids = [u for u in await session.all_uids() if u <= cp.last_uid]
        missing: list[int] = []
        for chunk in _chunks(uids, HEADER_CHUNK):
            heads = await session.fetch(chunk, "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]")
            ids = {f.uid: _message_id(f.data) for f in heads}
            wanted = {
                intake_id(self.account.channel, self.account.account, mid): u
                for u, mid in ids.items()
                if mid
            }
            found = set(await _stored(self.store, list(wanted)))
            missing += [u for i, u in wanted.items() if i not in found]
            # No Message-ID: its intake id is the content hash; the UID record says
            # whether it is stored, else it is fetched to know.
            no_id = [u for u, mid in ids.items() if not mid]
            known = await mailboxes.known_uids(self.store, self.key, uidvalidity, no_id)
            missing += [u for u in no_id if u not in known]
            await self._renew_if_due()
        before = stats.accepted
        await self._fetch_store(session, uidvalidity, sorted(set(missing)), stats, advance=False)
        await mailboxes.record_full_scan(self.store, self.key, stats.accepted - before)
        if stats.accepted > before:
            log.warning(
                "mail.full_scan_found",
                account=self.account.account,
                found=stats.accepted - before,
            )

    async def _fetch_store(
        self,
        session: ImapSession,
        uidvalidity: int,
        uids: list[int],
        stats: SyncStats,
        *,
        advance: bool,
    ) -> None:
        """Fetch and store ``uids`` batch by batch, pipelined one batch deep.

        While batch N is written to the store (files, intake, UID records), batch N+1 is
        fetched from the server and parsed in a thread — never more: the next fetch starts
        only once batch N+1 has been taken for writing, so at most two batches are in
        memory. Everything that decides what is durable stays strictly in UID order and in
        sequence: batch N is written, flagged ``\\Seen`` (``mark_seen``) and checkpointed
        before batch N+1's writes begin, and the stored-ids lookup of a batch runs only
        after every earlier batch is written (a Message-ID reused across batches is seen).
        A failure anywhere cancels the batch fetched ahead (it was only read, with
        ``BODY.PEEK[]``) and leaves the checkpoint at the last written batch.
        """
        if not uids:
            return
        sizes: dict[int, int] = {}
        for chunk in _chunks(uids, SIZE_CHUNK):
            sizes.update(await session.sizes(chunk))
        plan = _batches(uids, sizes, self.settings.fetch_batch, self.settings.fetch_batch_bytes)
        # One IMAP command at a time on the session: the fetch ahead and this batch's
        # \Seen flags take turns.
        imap = asyncio.Lock()
        ahead = [self._fetch_ahead(session, imap, plan[0])]  # at most one batch ahead
        try:
            for following in [*plan[1:], None]:
                batch = await ahead.pop()
                if following is not None:
                    ahead.append(self._fetch_ahead(session, imap, following))
                await self._write_batch(session, imap, batch, uidvalidity, stats, sizes)
                if advance:
                    await self._advance(uidvalidity, max(batch.uids))
                await self._renew_if_due()
        finally:
            await _abandon(ahead)

    def _fetch_ahead(
        self, session: ImapSession, imap: asyncio.Lock, uids: list[int]
    ) -> asyncio.Task[Batch]:
        return asyncio.create_task(
            self._fetch_batch(session, imap, uids), name=f"mail-fetch:{self.key}:{uids[0]}"
        )

    async def _fetch_batch(
        self, session: ImapSession, imap: asyncio.Lock, uids: list[int]
    ) -> Batch:
        """One batch read from the server (``BODY.PEEK[]``: nothing is flagged) and parsed."""
        async with imap:
            fetched = await session.fetch(uids)
        # Parsing is CPU work: off the event loop, so webhooks (and the store writes of the
        # batch before) are not held up meanwhile.
        parsed = await asyncio.to_thread(lambda: [parse_mail(f.data) for f in fetched])
        return Batch(uids, fetched, parsed)

    async def _write_batch(
        self,
        session: ImapSession,
        imap: asyncio.Lock,
        batch: Batch,
        uidvalidity: int,
        stats: SyncStats,
        sizes: dict[int, int],
    ) -> None:
        got = {f.uid for f in batch.fetched}
        # A UID that vanished between SEARCH and FETCH (expunged) has nothing to store.
        await self._store_batch(batch, uidvalidity, stats)
        if self.settings.mark_seen and got:
            async with imap:
                await session.mark_seen(sorted(got))
        if session_lost := [u for u in batch.uids if u not in got and u in sizes]:
            log.info("mail.expunged_meanwhile", uids=session_lost[:20])

    async def _advance(self, uidvalidity: int, last_uid: int) -> None:
        """Every mail up to ``last_uid`` is durably in intake: move the checkpoint."""
        await mailboxes.advance(self.store, self.key, uidvalidity, last_uid)

    async def _store_batch(self, batch: Batch, uidvalidity: int, stats: SyncStats) -> None:
        fetched, parsed = batch.fetched, batch.parsed
        stats.fetched += len(fetched)
        if not fetched:
            return
        pids = await self._provider_ids(parsed)
        acct = self.account
        iids = [intake_id(acct.channel, acct.account, pid) for pid in pids]
        # Every attachment of the batch in one write (ids from the intake id: a re-fetch
        # rewrites the same documents).
        wanted = [
            files.NewFile(
                stable_id("file", iid, str(n)),
                att.data,
                att.name,
                att.mime_type,
                {"intake_id": iid, "part": n, "content_id": att.content_id},
            )
            for iid, p in zip(iids, parsed, strict=True)
            for n, att in enumerate(p.attachments)
        ]
        stored = iter(
            await files.put_many(self.store, wanted, max_bytes=self.settings.max_attachment_bytes)
        )
        docs = [
            await self._intake_doc(f, p, pid, uidvalidity, [next(stored) for _ in p.attachments])
            for f, p, pid in zip(fetched, parsed, pids, strict=True)
        ]
        accepted = await intake.accept(self.store, docs, self.owner, self.intake_lease_s)
        await mailboxes.remember_uids(
            self.store,
            self.key,
            uidvalidity,
            [
                (f.uid, p.content_hash, str(d["_id"]))
                for f, p, d in zip(fetched, parsed, docs, strict=True)
                if not p.has_message_id
            ],
        )
        stats.accepted += len(accepted.new)
        stats.duplicates += len(accepted.duplicates)
        if self.metrics is not None:
            self.metrics.intake.labels("email", "accepted").inc(len(accepted.new))
            self.metrics.intake.labels("email", "duplicate").inc(len(accepted.duplicates))
        # Broken mail is kept for a person to look at (omniroute intake list --status
        # broken), never routed.
        routable = [d for d in accepted.new if d.status is IntakeStatus.PENDING]
        if routable:
            self.submit(routable)

    async def _provider_ids(self, parsed: Sequence[ParsedMail]) -> list[str]:
        """The Message-ID of each mail — unless another mail with different content was
        stored under it (senders do reuse ids): then ``<id>#<content hash>``, so both are
        kept while a re-fetch of the same mail still dedupes."""
        acct = self.account
        pids = [p.message_id[:480] for p in parsed]
        iids = [intake_id(acct.channel, acct.account, pid) for pid in pids]
        hashes: dict[str, str | None] = {
            i: ((d.get("message") or {}).get("meta") or {}).get("content_hash")
            for i, d in (await _stored(self.store, iids, {"message.meta.content_hash": 1})).items()
        }
        for i, p in enumerate(parsed):
            first = hashes.setdefault(iids[i], p.content_hash)
            if first is not None and first != p.content_hash:
                pids[i] = f"{pids[i]}#{p.content_hash[:16]}"
        return pids

    async def _intake_doc(
        self,
        f: Fetched,
        parsed: ParsedMail,
        provider_id: str,
        uidvalidity: int,
        stored: list[files.StoredFile],
    ) -> Document:
        acct, folder = self.account, self.settings.folder
        try:
            msg = inbound_from_mail(
                acct,
                parsed,
                stored,
                provider_id=provider_id,
                folder=folder,
                uidvalidity=uidvalidity,
                uid=f.uid,
            )
        except ValidationError as exc:
            reason = f"unusable after parsing: {exc.errors()[0]['msg']}"
            msg = broken_inbound(
                acct, f.data, reason, folder=folder, uidvalidity=uidvalidity, uid=f.uid
            )
            log.warning("mail.unusable", account=acct.account, uid=f.uid, reason=reason)
        broken = msg.meta.get("broken")
        if broken:
            log.warning("mail.broken", account=acct.account, uid=f.uid, reason=broken)
        doc: Document = {
            "_id": intake_id(msg.channel, msg.account, msg.provider_id),
            "channel": msg.channel,
            "account": msg.account,
            "provider_id": msg.provider_id,
            "source_id": acct.source,
            "message": msg.model_dump(mode="python"),
            "received_at": intake.now(),
            "mail": {"folder": folder, "uidvalidity": uidvalidity, "uid": f.uid},
        }
        if broken:
            doc["status"] = IntakeStatus.BROKEN.value
            doc["error"] = f"broken mail: {broken}"
        if len(f.data) <= RAW_INLINE_MAX:
            doc["raw"] = f.data
        else:
            raw = await files.put(
                self.store,
                stable_id("file", doc["_id"], "raw"),
                f.data,
                name=None,
                mime_type="message/rfc822",
                origin={"intake_id": doc["_id"], "part": "raw"},
                max_bytes=1 << 40,
            )
            doc["raw_file_id"] = raw.id
        return doc


async def _stored(
    store: Store, ids: list[str], projection: Document | None = None
) -> dict[str, Document]:
    """The intake records among ``ids``: ``_id`` ``$in`` queries of at most
    ``intake.ID_CHUNK`` ids, which the embedded server answers with point lookups (one
    query per 100 mails costs a quarter of 100 concurrent ``find_one``, and stays flat
    as intake grows)."""
    out: dict[str, Document] = {}
    for chunk in intake.id_chunks(ids):
        cursor = store.intake.find({"_id": {"$in": chunk}}, projection or {"_id": 1})
        async for d in cursor:
            out[d["_id"]] = d
    return out


async def _abandon(tasks: list[asyncio.Task[Batch]]) -> None:
    """Cancel a batch fetched ahead that will not be written (the sync is failing or being
    stopped: the error in flight is the one that counts, so the fetch's own is dropped)
    and wait briefly for it to end, so no fetch outlives its sync round."""
    with contextlib.suppress(Exception):
        await cancel(*tasks, grace_s=DONE_WAIT_S)


def _message_id(header_block: bytes) -> str | None:
    text = header_block.decode("utf-8", "replace")
    _, _, value = text.partition(":")
    value = " ".join(value.split()).strip().strip("<>").strip()
    return value or None


def _chunks(items: list[int], n: int) -> list[list[int]]:
    return [items[i : i + n] for i in range(0, len(items), n)]


def _batches(
    uids: list[int], sizes: dict[int, int], max_count: int, max_bytes: int
) -> list[list[int]]:
    """UIDs in order, grouped so a batch stays under both limits (a single bigger mail is
    a batch of its own)."""
    out: list[list[int]] = []
    cur: list[int] = []
    cur_bytes = 0
    for u in uids:
        size = sizes.get(u, 0)
        if cur and (len(cur) >= max_count or cur_bytes + size > max_bytes):
            out.append(cur)
            cur, cur_bytes = [], 0
        cur.append(u)
        cur_bytes += size
    if cur:
        out.append(cur)
    return out


class MailSync:
    """Every enabled e-mail account's poller (a background worker of the service)."""

    def __init__(
        self,
        store: Store,
        config: AppConfig,
        *,
        owner: str,
        submit: Callable[[list[IntakeDoc]], None],
        metrics: Metrics | None = None,
        intake_lease_s: float = 30.0,
    ) -> None:
        self.pollers: list[MailboxPoller] = []
        for account in config.channels.accounts:
            if account.channel != "email" or not account.enabled:
                continue
            try:
                settings = mailbox_settings(account)
            except ValidationError as exc:
                log.error("mail.bad_settings", account=account.account, error=str(exc))
                continue
            password = resolve_secret(account)
            if not password:
                log.warning(
                    "mail.no_password",
                    account=account.account,
                    secret_env=account.secret_env,
                    detail="the mailbox is not read until its password is set",
                )
                continue
            self.pollers.append(
                MailboxPoller(
                    store,
                    account,
                    settings,
                    password,
                    owner=owner,
                    submit=submit,
                    metrics=metrics,
                    intake_lease_s=intake_lease_s,
                )
            )

    async def start(self) -> None:
        for p in self.pollers:
            await p.start()

    async def stop(self) -> None:
        await asyncio.gather(*(p.stop() for p in self.pollers))
