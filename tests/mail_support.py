"""Real mail servers for the e-mail tests: a throw-away Dovecot (IMAP) and aiosmtpd (SMTP).

Dovecot runs in the foreground from a temp directory on a free loopback port, with
plain-text logins from a passwd-file and Maildirs owned by ``nobody`` (Dovecot refuses
uid 0 for mail processes). ``make test`` installs Debian's ``dovecot-imapd`` when it is
missing; the tests that need it skip with a clear reason only when it cannot be found.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import aioimaplib
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.helpers import free_port

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"

CONF = """\
base_dir = {d}/run
state_dir = {d}/state
instance_name = dovecot-{port}
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
log_path = {d}/dovecot.log
mail_location = maildir:{d}/mail/%u/Maildir
first_valid_uid = 1
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/users
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={d}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
namespace inbox {{
  inbox = yes
  mailbox Sent {{
    special_use = \\Sent
    auto = create
  }}
}}
"""


def dovecot_available() -> bool:
    return os.path.exists(DOVECOT)


class Dovecot:
    """One Dovecot instance; ``stop()``/``start()`` keep the mail (an outage drill)."""

    def __init__(self, users: dict[str, str]) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="omniroute-dovecot-"))
        self.dir.chmod(0o755)  # Dovecot's auth process reads the passwd-file as `dovecot`
        self.port = free_port()
        self.users = users
        self.proc: subprocess.Popen[bytes] | None = None
        for sub in ("run", "state", "mail"):
            (self.dir / sub).mkdir()
        shutil.chown(self.dir / "mail", "nobody", "nogroup")
        (self.dir / "users").write_text(
            "".join(f"{u}:{{PLAIN}}{p}\n" for u, p in users.items()), encoding="utf-8"
        )
        (self.dir / "dovecot.conf").write_text(
            CONF.format(d=self.dir, port=self.port), encoding="utf-8"
        )

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(self.dir / "dovecot.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                import socket

                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            time.sleep(0.05)
        raise RuntimeError(f"dovecot did not start; see {self.dir / 'dovecot.log'}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def reset_uidvalidity(self, user: str, folder: str = "INBOX") -> None:
        """Make the server announce a new UIDVALIDITY (as after a mailbox rebuild): the
        Maildir's uidlist is removed while the server is stopped; the mails stay."""
        maildir = self.dir / "mail" / user / "Maildir"
        if folder != "INBOX":
            maildir = maildir / f".{folder}"
        (maildir / "dovecot-uidlist").unlink()
        for name in ("dovecot.index", "dovecot.index.cache", "dovecot.index.log"):
            with contextlib.suppress(FileNotFoundError):
                (maildir / name).unlink()


async def imap_client(server: Dovecot, user: str) -> aioimaplib.IMAP4:
    client = aioimaplib.IMAP4(host="127.0.0.1", port=server.port, timeout=30)
    await client.wait_hello_from_server()
    resp = await client.login(user, server.users[user])
    assert resp.result == "OK", resp
    return client


async def append(server: Dovecot, user: str, *raws: bytes, folder: str = "INBOX") -> None:
    """Deliver mails as an MTA would (APPEND over IMAP, one connection)."""
    client = await imap_client(server, user)
    try:
        for raw in raws:
            resp = await client.append(raw, mailbox=folder)
            assert resp.result == "OK", resp
    finally:
        with contextlib.suppress(Exception):
            await client.logout()


async def folder_messages(server: Dovecot, user: str, folder: str) -> list[EmailMessage]:
    client = await imap_client(server, user)
    try:
        await client.select(folder)
        resp = await client.uid("fetch", "1:*", "(BODY.PEEK[])")
        return [
            BytesParser(policy=default_policy).parsebytes(bytes(line))
            for line in resp.lines
            if isinstance(line, bytearray)
        ]
    finally:
        with contextlib.suppress(Exception):
            await client.logout()


async def seen(server: Dovecot, user: str, folder: str = "INBOX") -> list[bool]:
    """Per mail in the folder (UID order): is it flagged \\Seen? By the UID of each FETCH
    line: the answer can also carry untagged FETCH lines for flags another session set
    meanwhile (the poller's), which would otherwise count as more mails."""
    client = await imap_client(server, user)
    try:
        await client.select(folder)
        resp = await client.uid("fetch", "1:*", "(UID FLAGS)")
        flags: dict[int, bool] = {}
        for line in map(bytes, resp.lines):
            uid = re.search(rb"\bUID (\d+)", line)
            if b" FETCH " in line and uid:
                flags[int(uid.group(1))] = b"\\Seen" in line
        return [flags[u] for u in sorted(flags)]
    finally:
        with contextlib.suppress(Exception):
            await client.logout()


def mail(
    *,
    sender: str,
    to: str,
    subject: str,
    text: str,
    message_id: str | None = None,
    in_reply_to: str | None = None,
    references: list[str] | None = None,
    headers: dict[str, str] | None = None,
) -> bytes:
    """A plain customer mail as a real client would write it."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = "Mon, 23 Nov 2026 10:00:00 +0300"
    if message_id is not None:
        msg["Message-ID"] = f"<{message_id}>"
    if in_reply_to is not None:
        msg["In-Reply-To"] = f"<{in_reply_to}>"
    if references:
        msg["References"] = " ".join(f"<{r}>" for r in references)
    for k, v in (headers or {}).items():
        msg[k] = v
    msg.set_content(text)
    return msg.as_bytes()


@dataclass
class SmtpSink:
    """An aiosmtpd server that keeps every mail it receives (AUTH PLAIN on loopback)."""

    user: str
    password: str
    port: int = field(default_factory=free_port)
    received: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    fail_next: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.fail_next:
            self.fail_next -= 1
            return "451 4.3.0 try again later"
        self.received.append(
            (envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.original_content))
        )
        self.arrived.set()
        return "250 OK"

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and data.login.decode() == self.user
            and data.password.decode() == self.password
        )
        # handled=False on failure: the server answers 535 instead of nothing.
        return (
            AuthResult(success=ok, handled=ok or False)
            if ok
            else AuthResult(success=False, handled=False)
        )

    def messages(self) -> list[EmailMessage]:
        return [BytesParser(policy=default_policy).parsebytes(raw) for _, _, raw in self.received]


@contextlib.asynccontextmanager
async def smtp_sink(
    user: str = "sales@example.test", password: str = "smtp-pw"
) -> AsyncIterator[SmtpSink]:
    sink = SmtpSink(user, password)
    controller = Controller(
        sink,
        hostname="127.0.0.1",
        port=sink.port,
        authenticator=sink.authenticate,
        auth_require_tls=False,
    )
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


MAIL_PASSWORD = "imap-pw"


def email_account(
    account: str,
    source: str,
    server: Dovecot,
    user: str,
    sink: SmtpSink | None = None,
    **settings: str | int | float | bool,
) -> Any:
    """A ``channels.yaml`` e-mail account reading ``user`` on ``server`` (plain IMAP on
    loopback), sending through ``sink`` when given. Its password is put in the env."""
    from config.models import ChannelAccount

    env = f"OMNIROUTE_SECRET_MAIL_{account.upper().replace('-', '_')}"
    os.environ[env] = server.users[user]
    values: dict[str, str | int | float | bool] = {
        "host": "127.0.0.1",
        "port": server.port,
        "tls": False,
        "user": user,
        "poll_s": 2.0,
        "lease_s": 6.0,
        "backoff_max_s": 1.0,
        "timeout_s": 10.0,
    }
    if sink is not None:
        smtp_env = f"{env}_SMTP"
        os.environ[smtp_env] = sink.password
        values.update(
            smtp_host="127.0.0.1",
            smtp_port=sink.port,
            smtp_security="none",
            smtp_user=sink.user,
            smtp_password_env=smtp_env,
            sent_folder="Sent",
        )
    values.update(settings)
    return ChannelAccount(
        channel="email", account=account, source=source, secret_env=env, settings=values
    )


def mail_config(*accounts: Any) -> Any:
    """The example config with exactly these e-mail accounts (the example's own
    mailboxes, on imap.example.com, are dropped)."""
    from tests.service import config_with

    cfg = config_with(*accounts)
    mine = {(a.channel, a.account) for a in accounts}
    kept = [
        a for a in cfg.channels.accounts if a.channel != "email" or (a.channel, a.account) in mine
    ]
    return cfg.model_copy(update={"channels": cfg.channels.model_copy(update={"accounts": kept})})


def deliver_to_maildir(server: Dovecot, user: str, raw: bytes, name: str) -> None:
    """Drop a mail straight into the Maildir, as the MTA's local delivery does while the
    IMAP server is down."""
    new = server.dir / "mail" / user / "Maildir" / "new"
    new.mkdir(parents=True, exist_ok=True)
    path = new / f"{int(time.time())}.{name}.omniroute-test"
    path.write_bytes(raw)
    shutil.chown(path, "nobody", "nogroup")
    for parent in (new, new.parent):
        shutil.chown(parent, "nobody", "nogroup")


async def routed_mail(
    store: Any,
    account: str,
    count: int,
    timeout: float = 60.0,  # noqa: ASYNC109 - a polling helper
) -> list[Any]:
    """Wait until ``count`` e-mail messages of ``account`` are routed; return them."""
    from tests.helpers import wait_for

    query = {"channel": "email", "account": account, "direction": "in"}

    async def enough() -> bool:
        return bool(await store.messages.count_documents(query) >= count)

    await wait_for(enough, timeout=timeout, message=f"{count} mails of {account} not routed")
    return [d async for d in store.messages.find(query).sort("received_at", 1)]


_MBOX_FIELD = re.compile(rb"^[\x21-\x39\x3b-\x7e]+:")
# An envelope line: "From -", "From <address> …", "From MAILER-DAEMON Fri Jul  8 12:08:34 2011".
_MBOX_FROM = re.compile(rb"^From (?:-|\S*@\S*|\S+ .*(?:\d\d:\d\d|\d{4}))(?:\s|$)")


def split_mbox(data: bytes) -> list[bytes]:
    """The messages of an mbox file, each without its ``From `` envelope line.

    A message starts at an envelope ``From `` line (``-``, an address or a date after
    ``From``) followed by a header field, so an un-escaped "From Russia with love" line in
    a body (mboxo, Thunderbird) is not a boundary.
    """
    lines = data.removeprefix(b"\xef\xbb\xbf").splitlines(keepends=True)
    starts = [
        i
        for i, line in enumerate(lines)
        if _MBOX_FROM.match(line) and i + 1 < len(lines) and _MBOX_FIELD.match(lines[i + 1])
    ]
    return [
        b"".join(lines[a + 1 : b]) for a, b in zip(starts, [*starts[1:], len(lines)], strict=True)
    ]
