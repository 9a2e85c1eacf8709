"""E-mail drills: a service process killed mid-sync, and real-world mail corpora.

The kill drill runs the service as a separate process (``omniroute serve`` with a config
directory whose only mailbox is a throw-away Dovecot), SIGKILLs it while the initial sync
of a large mailbox is in progress, and starts another: every mail ends up stored and
routed exactly once, and the checkpoint never ran ahead of intake.

The corpus drill appends the Chatwoot ``.eml`` files (MIT, tests/fixtures/email/chatwoot),
the CPython ``test_email`` messages (PSF, tests/fixtures/email/cpython) and MimeKit's
messages and mbox entries (MIT, tests/fixtures/email/mimekit) to Dovecot: every one is
stored (one intake record per distinct Message-ID / content hash), none stops the poller,
and what is known about a mail (sender, subject, text) is what is stored.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from crm_store import mailboxes
from crm_store.store import Store
from tests.helpers import wait_for
from tests.mail_support import (
    MAIL_PASSWORD,
    Dovecot,
    append,
    dovecot_available,
    email_account,
    imap_client,
    mail,
    mail_config,
    routed_mail,
    split_mbox,
)
from tests.service import ROOT, in_process, proc

pytestmark = pytest.mark.skipif(
    not dovecot_available(), reason="Dovecot is not installed (make test installs it)"
)

SALES = "sales@example.test"
CHATWOOT = ROOT / "tests" / "fixtures" / "email" / "chatwoot"
CPYTHON = ROOT / "tests" / "fixtures" / "email" / "cpython"
MIMEKIT = ROOT / "tests" / "fixtures" / "email" / "mimekit"


@pytest.fixture
def dovecot() -> Any:
    server = Dovecot({SALES: MAIL_PASSWORD})
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


def config_dir(tmp: Path, account: Any) -> Path:
    """The example configuration with one e-mail account: ``account``."""
    out = tmp / "config"
    shutil.copytree(ROOT / "config", out, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    cfg = mail_config(account)
    channels = {"accounts": [a.model_dump(exclude_defaults=True) for a in cfg.channels.accounts]}
    (out / "channels.yaml").write_text(yaml.safe_dump(channels, sort_keys=False))
    return out


@pytest.mark.slow
async def test_killed_mid_sync_loses_nothing_and_duplicates_nothing(
    mongo_uri: str, db_name: str, dovecot: Dovecot, tmp_path: Path
) -> None:
    total = 120
    await append(
        dovecot,
        SALES,
        *(
            mail(
                sender=f"buyer{i}@drill.test",
                to=SALES,
                subject=f"Order {i}",
                text=f"Please quote item {i}.\n" * 50,
                message_id=f"drill-{i}@drill.test" if i % 3 else None,
            )
            for i in range(total)
        ),
    )
    acct = email_account("sales", "mail_sales", dovecot, SALES, fetch_batch=5, lease_s=3.0)
    env = {
        "OMNIROUTE_CONFIG_DIR": str(config_dir(tmp_path, acct)),
        # What the killed process accepted but did not route is recovered this soon.
        "OMNIROUTE_INTAKE_LEASE_S": "3",
    }
    store = Store.open(mongo_uri, db_name)
    first = proc(mongo_uri, db_name, tmp_path, **env)
    second = proc(mongo_uri, db_name, tmp_path, **env)
    try:
        await first.start()

        async def mid_sync() -> bool:
            return await store.intake.count_documents({}) >= 20

        await wait_for(mid_sync, timeout=60, interval=0.01)
        first.kill()
        stored = await store.intake.count_documents({})
        assert stored < total, "the sync finished before the kill: make the mailbox bigger"
        # The checkpoint never runs ahead of intake: every UID up to it is stored.
        cp = await mailboxes.checkpoint(store, mailboxes.mailbox_key("sales", "INBOX"))
        uids = {d["mail"]["uid"] async for d in store.intake.find({}, {"mail.uid": 1})}
        assert set(range(1, cp.last_uid + 1)) <= uids

        await second.start()
        msgs = await routed_mail(store, "sales", total, timeout=120)
        assert len(msgs) == total
        assert len({m["provider_id"] for m in msgs}) == total
        assert await store.intake.count_documents({}) == total
        assert await store.leads.count_documents({}) == total

        async def all_routed() -> bool:
            return await store.intake.count_documents({"status": {"$ne": "routed"}}) == 0

        await wait_for(all_routed, timeout=30)
    finally:
        await first.stop()
        await second.stop()
        await store.close()


def corpus() -> list[tuple[str, bytes]]:
    """(name, bytes) of every corpus mail: Chatwoot, CPython, MimeKit's messages and the
    messages of its mbox files."""
    files = sorted(CHATWOOT.glob("*.eml"))
    if CPYTHON.exists():
        files += sorted(CPYTHON.glob("msg_*.txt"))
    files += sorted((MIMEKIT / "messages").iterdir())
    mails = [(f.name, f.read_bytes()) for f in files]
    for box in sorted((MIMEKIT / "mbox").glob("*.mbox.txt")):
        mails += [(f"{box.name}#{n}", m) for n, m in enumerate(split_mbox(box.read_bytes()))]
    return mails


# What is known about some of the Chatwoot mails, read by hand from the files: sender
# (as routing stores it), subject, and the start of the text.
KNOWN: list[tuple[str, str, str]] = [
    ("text@example.com", "test text only mail", "text only mail"),
    ("tejaswini@ex.com", "test html only mail", "This is html only mail"),
    ("Test@chatwoot.com", "Discussion: Let's debate these attachments", "Let's talk about"),
    ("example@gmail.com", "أهلين عميلنا الكريم", ""),
    # MimeKit
    ("x@x.com", "日本語メールテスト (testing Japanese emails)", "Let's see if both"),
    ("jeff@xamarin.com", "Another test message with an unmunged From line", "This is my"),
    ("sender@example.com", "Message 4", "Body of message 4."),
]


async def test_real_world_corpora_are_all_stored(
    mongo_uri: str, db_name: str, dovecot: Dovecot
) -> None:
    mails = corpus()
    assert len(mails) >= 40 + 32 + 9
    client = await imap_client(dovecot, SALES)
    appended: list[tuple[str, bytes]] = []
    try:
        for name, raw in mails:
            resp = await client.append(raw, mailbox="INBOX")
            if resp.result == "OK":
                appended.append((name, raw))
    finally:
        await client.logout()
    # Dovecot accepts everything a mail client could send (bare LF, 8-bit headers …).
    refused = sorted({n for n, _r in mails} - {n for n, _r in appended})
    assert len(appended) >= len(mails) - 2, refused

    # One record per distinct mail: ids are reused across these files (several share
    # one Message-ID with different content), identical files are one mail.
    distinct = len({raw for _n, raw in appended})
    acct = email_account("sales", "mail_sales", dovecot, SALES, fetch_batch=25)
    async with in_process(mongo_uri, db_name, mail_config(acct)) as svc:

        async def all_in() -> bool:
            return await svc.store.intake.count_documents({}) >= distinct

        await wait_for(all_in, timeout=60)
        await svc.routed()
        assert await svc.store.intake.count_documents({}) == distinct
        # Nothing lost: every mail is routed, or kept as broken (no header at all).
        broken = await svc.store.intake.count_documents({"status": "broken"})
        assert broken <= 1  # CPython's msg_19: a digest body without any header
        routed = await svc.store.intake.count_documents({"status": "routed"})
        assert routed + broken == distinct
        stored = [m async for m in svc.store.messages.find({"direction": "in"})]
        assert len(stored) == routed
        for sender, subject, text in KNOWN:
            hits = [
                m
                for m in stored
                if m["sender"].get("email") == sender and m["meta"].get("subject") == subject
            ]
            assert hits, f"no stored mail from {sender} with subject {subject!r}"
            assert any(m["text"].strip().startswith(text) for m in hits), [
                m["text"][:80] for m in hits
            ]
        # The poller is still alive: one more mail arrives and is routed.
        await append(
            dovecot,
            SALES,
            mail(sender="after@corpus.test", to=SALES, subject="After", text="still here"),
        )

        async def after() -> bool:
            return bool(await svc.store.messages.find_one({"sender.email": "after@corpus.test"}))

        await wait_for(after, timeout=20)
