"""E-mail: mailboxes read over IMAP, replies sent over SMTP.

Inbound mail does not come as webhooks: ``ingest/mail_sync.py`` reads each mailbox over
IMAP, ``channels/email/mime.py`` parses every mail, and :func:`inbound_from_mail` here turns the
result into an :class:`InboundMessage` like every other channel's. The message's
``provider_id`` is the Message-ID (or ``sha256:<hash of the raw mail>`` when it has
none), so a mail fetched twice — after a crash, a UIDVALIDITY change, by two processes —
is stored once. The sender's address is the identity (routing case-folds it); Reply-To,
when present, is where replies go. ``references`` carries In-Reply-To and References, so
routing continues the conversation of any message of the thread it knows, ours included.

Automatic mail — auto-replies, bounces, list and bulk mail, anything with a null
reverse-path — is marked ``automatic``: stored and attached where it belongs, never a new
lead. A mail that cannot be parsed at all is still stored (raw) with ``meta.broken``.

Replies: :meth:`EmailChannel.send` sends over SMTP (aiosmtplib; STARTTLS, implicit TLS or
plain) from the mailbox's address with a Message-ID derived from our message id (a retry
after a crash sends the same id), ``In-Reply-To``/``References`` from the conversation
and a ``Re:`` subject; optionally a copy is APPENDed to the Sent folder. Messages sent by
automation carry ``Auto-Submitted: auto-replied`` and are refused when the message they
would answer was itself automatic (RFC 3834).

Account settings (``channels.yaml``; the mailbox password only through ``secret_env``) are
validated by :class:`MailboxSettings`; see docs/channels/email.md for every key.
"""

from __future__ import annotations

import email.utils
import fnmatch
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Literal

import aiosmtplib
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from channels.base import (
    Attachment,
    InboundMessage,
    OutboundMessage,
    Parsed,
    Sender,
    SendError,
    SendResult,
    WebhookChannel,
    WebhookError,
    WebhookRequest,
    setting_env,
)
from channels.email.imap import ImapSession
from channels.email.mime import AutoKind, ParsedMail, strip_subject_prefixes
from channels.identity import normalize_email
from config.models import ChannelAccount
from crm_store.files import StoredFile, clean_name

log = structlog.get_logger("omniroute.email")

MB = 1024 * 1024


class MailboxSettings(BaseModel):
    """The ``settings`` of an e-mail account."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # IMAP (intake)
    host: str = Field(min_length=1)
    port: int = Field(default=993, gt=0, lt=65536)
    tls: bool = True  # implicit TLS (IMAPS); false: plain IMAP (tests, local relays)
    tls_verify: bool = True
    user: str = Field(min_length=1)
    folder: str = "INBOX"
    mark_seen: bool = False
    idle: bool = True
    # Polling interval without IDLE, and the longest single IDLE wait.
    poll_s: float = Field(default=60.0, gt=0)
    # The safety net: every full_scan_s the whole folder is compared with intake.
    full_scan_s: float = Field(default=3600.0, gt=0)
    fetch_batch: int = Field(default=100, gt=0, le=200)
    fetch_batch_bytes: int = Field(default=8 * MB, gt=0)
    max_attachment_bytes: int = Field(default=25 * MB, ge=0)
    timeout_s: float = Field(default=60.0, gt=0)
    backoff_max_s: float = Field(default=300.0, gt=0)
    lease_s: float = Field(default=60.0, gt=1)
    # SMTP (replies)
    address: str | None = None  # From: address (default: user)
    display_name: str | None = None
    smtp_host: str | None = None  # default: host
    smtp_port: int = Field(default=587, gt=0, lt=65536)
    smtp_security: Literal["starttls", "tls", "none"] = "starttls"
    smtp_user: str | None = None  # default: user
    smtp_password_env: str | None = None  # default: the account's secret
    sent_folder: str | None = None  # APPEND a copy of every reply there
    # Stored files named on a reply are attached (MIME) up to this many bytes per mail;
    # the rest go as signed links, under ``oversize_note``.
    max_send_attachments_bytes: int = Field(default=20 * MB, ge=0)
    oversize_note: str = Field(
        default="Файлы слишком велики для письма, их можно скачать по ссылкам:",
        max_length=500,
    )

    @property
    def from_address(self) -> str:
        return self.address or self.user


def mailbox_settings(account: ChannelAccount) -> MailboxSettings:
    """The account's settings, validated; raises ``ValidationError`` naming the keys."""
    return MailboxSettings.model_validate(account.settings)


class NoWebhooks(WebhookError):
    status = 404
    code = "no_webhooks"


def _address(raw: str | None) -> str | None:
    """An address fit for an identity, or None."""
    if not raw:
        return None
    addr = raw.strip()
    return addr if len(addr) <= 320 and normalize_email(addr) is not None else None


def is_customer_sender(account: ChannelAccount, address: str | None) -> bool:
    """Whether ``address`` is on the mailbox's allow-list (``customer_senders``: exact
    addresses or ``*`` patterns, case-insensitive)."""
    if not address or not account.customer_senders:
        return False
    addr = address.strip().casefold()
    return any(fnmatch.fnmatchcase(addr, p.strip().casefold()) for p in account.customer_senders)


def _clip(text: str | None, n: int) -> str | None:
    return None if text is None else text[:n]


def _kind(mime_type: str) -> str:
    major = mime_type.split("/", 1)[0]
    return {"image": "image", "audio": "audio", "video": "video"}.get(major, "file")


def thread_references(parsed: ParsedMail) -> list[str]:
    """In-Reply-To, then References newest first, without repeats."""
    seen: set[str] = set()
    out: list[str] = []
    for ref in [*parsed.in_reply_to, *reversed(parsed.references)]:
        if ref and ref not in seen and len(ref) <= 512:
            seen.add(ref)
            out.append(ref)
    return out[:200]


def inbound_from_mail(
    account: ChannelAccount,
    parsed: ParsedMail,
    files: list[StoredFile],
    *,
    provider_id: str | None = None,
    folder: str,
    uidvalidity: int,
    uid: int,
) -> InboundMessage:
    """One parsed mail as the message routing sees."""
    sender = _address(parsed.from_addr)
    name = _clip(parsed.from_name, 256)
    reply_to = next((a for a in map(_address, parsed.reply_to) if a), None) or sender
    auto, auto_reason = parsed.auto, parsed.auto_reason
    notes: list[str] = []
    if parsed.sender_source not in (None, "From"):
        notes.append(f"sender read from {parsed.sender_source} (no usable From)")
    if auto is not AutoKind.BOUNCE and is_customer_sender(account, parsed.from_addr):
        # A site form mailing from noreply@ on a customer's behalf: the customer is the
        # Reply-To (when there is one), and the mail is theirs, not automatic.
        notes.append(f"{parsed.from_addr} is a customer sender of this mailbox")
        auto, auto_reason = None, None
        form_customer = next((a for a in map(_address, parsed.reply_to) if a), None)
        if form_customer is not None and form_customer != sender:
            notes.append("the customer is the Reply-To")
            sender, name = form_customer, _clip(parsed.reply_to_name, 256)
    if auto is not None and auto_reason:
        notes.append(f"automatic: {auto_reason}")
    # No usable sender address (no From, or a mail that could not be parsed): nobody to
    # make a lead for or to answer; stored and flagged only.
    automatic = auto is not None or parsed.null_return_path or sender is None
    meta: dict[str, str | int | bool | None] = {
        "subject": _clip(parsed.subject, 998),
        "folder": folder,
        "uidvalidity": uidvalidity,
        "uid": uid,
        "message_id": parsed.message_id if parsed.has_message_id else None,
        "content_hash": parsed.content_hash,
    }
    if auto is not None:
        meta["auto"] = auto.value
    if auto_reason:
        meta["auto_reason"] = auto_reason[:300]
    if notes:
        # Added to the routing decision's reason (routing/router.py).
        meta["reason_note"] = "; ".join(notes)[:500]
    if parsed.null_return_path:
        meta["null_return_path"] = True
    if parsed.bounced_recipients:
        meta["bounced_recipients"] = ",".join(parsed.bounced_recipients)
    if parsed.quoted:
        meta["quoted"] = parsed.quoted
    if parsed.broken:
        meta["broken"] = parsed.broken
    if parsed.reply_to:
        meta["reply_to"] = ",".join(parsed.reply_to)[:998]
    if parsed.auto is AutoKind.BOUNCE and (
        failed := _address(next(iter(parsed.bounced_recipients), None))
    ):
        # A bounce belongs with the customer whose address failed, not with the
        # MAILER-DAEMON that wrote it; and nothing ever answers it.
        meta["from"] = sender
        sender, name, reply_to = failed, None, None
    text = parsed.text
    if not text.strip() and parsed.subject:
        text = parsed.subject
    return InboundMessage(
        channel=account.channel,
        account=account.account,
        provider_id=(provider_id or parsed.message_id)[:512],
        thread_id=None,
        sender=Sender(email=sender, name=name),
        text=text,
        sent_at=parsed.date,
        attachments=[
            Attachment(
                kind=_kind(f.mime_type),
                file_id=f.id,
                name=_clip(f.name, 512),
                mime_type=_clip(f.mime_type, 255),
                size=f.size,
            )
            for f in files
        ],
        automatic=automatic,
        reply_to=reply_to,
        meta=meta,
        references=thread_references(parsed),
    )


def broken_inbound(
    account: ChannelAccount, raw: bytes, reason: str, *, folder: str, uidvalidity: int, uid: int
) -> InboundMessage:
    """The last resort for a mail nothing could be made of: stored, flagged, no lead."""
    digest = hashlib.sha256(raw).hexdigest()
    return InboundMessage(
        channel=account.channel,
        account=account.account,
        provider_id=f"sha256:{digest}",
        sender=Sender(),
        automatic=True,
        meta={
            "folder": folder,
            "uidvalidity": uidvalidity,
            "uid": uid,
            "content_hash": digest,
            "broken": reason[:500],
        },
    )


def reply_subject(subject: str | None) -> str:
    base = strip_subject_prefixes(subject or "").strip()
    return f"Re: {base}" if base else "Re:"


def compose(
    settings: MailboxSettings,
    msg: OutboundMessage,
    at: datetime,
    files: Sequence[MailFile] = (),
) -> EmailMessage:
    """The reply as it goes out (also the copy APPENDed to the Sent folder): ``files``
    attached, every other attachment as a link in the text."""
    frm = settings.from_address
    domain = frm.rpartition("@")[2] or "localhost"
    mail = EmailMessage()
    mail["From"] = email.utils.formataddr((settings.display_name or "", frm))
    mail["To"] = msg.recipient
    mail["Subject"] = reply_subject(msg.subject)
    mail["Date"] = email.utils.format_datetime(at)
    mail["Message-ID"] = f"<{msg.id}@{domain}>"
    parent = msg.in_reply_to or msg.answers
    if parent:
        mail["In-Reply-To"] = f"<{parent}>"
        chain = [r for r in msg.references if r != parent]
        mail["References"] = " ".join(f"<{r}>" for r in [*chain, parent])
    if msg.automatic:
        mail["Auto-Submitted"] = "auto-replied"
    attached = {f.file_id for f in files}
    text = msg.text
    links = [
        f"{a.name or a.kind}: {a.url}"
        for a in msg.attachments
        if a.url and not (a.file_id and a.file_id in attached)
    ]
    if links:
        # A stored file left out (over the size cap, or gone) is said to be one.
        note = [settings.oversize_note] if any(a.file_id for a in msg.attachments) else []
        text = text.rstrip("\n") + "\n\n" + "\n".join([*note, *links])
    mail.set_content(text)
    for f in files:
        maintype, _, subtype = f.mime_type.partition("/")
        if not (maintype and subtype) or maintype in ("multipart", "message", "text"):
            # text/* would be re-encoded by the library; multipart/message need objects.
            maintype, subtype = "application", "octet-stream"
        # Non-ASCII names go as RFC 2231 ``filename*=utf-8''…``; no CR/LF reaches a header.
        name = clean_name(f.name) or "file"
        mail.add_attachment(f.data, maintype=maintype, subtype=subtype, filename=name)
    return mail


@dataclass(frozen=True, slots=True)
class MailFile:
    """A stored file (crm_store/files.py) attached to a reply."""

    file_id: str
    name: str
    mime_type: str
    data: bytes


def pick_attachments(
    settings: MailboxSettings, msg: OutboundMessage, sizes: Mapping[str, int]
) -> list[str]:
    """The stored files of ``msg`` (attachments with ``file_id``; ``sizes``: the stored
    ones) to attach, in order, while the total stays within
    ``max_send_attachments_bytes``; the others go as links."""
    chosen: list[str] = []
    total = 0
    for a in msg.attachments:
        size = sizes.get(a.file_id) if a.file_id else None
        if a.file_id is None or size is None or a.file_id in chosen:
            continue
        if total + size <= settings.max_send_attachments_bytes:
            chosen.append(a.file_id)
            total += size
    return chosen


def provider_id_of(mail: EmailMessage) -> str:
    return str(mail["Message-ID"]).strip().strip("<>")


class EmailChannel(WebhookChannel):
    name = "email"
    # An outbound attachment's ``file_id`` is a stored file of ours (crm_store/files.py),
    # attached to the mail — not a provider's file id (ingest/outbox.py).
    attaches_stored_files = True

    def authenticate(
        self, account: ChannelAccount, secret: str | None, req: WebhookRequest
    ) -> None:
        raise NoWebhooks("e-mail is read from the mailbox over IMAP; it has no webhook")

    def read(self, account: ChannelAccount, req: WebhookRequest) -> Parsed:
        raise NoWebhooks("e-mail is read from the mailbox over IMAP; it has no webhook")

    def check_outbound(self, account: ChannelAccount, msg: OutboundMessage) -> None:
        try:
            settings = mailbox_settings(account)
        except ValidationError as exc:
            raise SendError(
                f"mailbox settings are invalid: {exc}", retryable=False, code="email_config"
            ) from None
        if normalize_email(msg.recipient) is None:
            raise SendError(
                f"{msg.recipient!r} is not an e-mail address",
                retryable=False,
                code="email_bad_recipient",
            )
        if msg.automatic and msg.answers_automatic:
            raise SendError(
                "an automatic message never answers automatic mail (auto-reply, bounce, "
                "null reverse-path)",
                retryable=False,
                code="email_auto_loop",
            )
        if normalize_email(settings.from_address) is None:
            raise SendError(
                f"mailbox address {settings.from_address!r} is not an e-mail address",
                retryable=False,
                code="email_config",
            )

    async def send(
        self,
        account: ChannelAccount,
        secret: str | None,
        msg: OutboundMessage,
        files: Sequence[MailFile] = (),
    ) -> SendResult:
        """Send ``msg``; ``files``: the stored attachments to attach (ingest/outbox.py
        reads them; see :func:`pick_attachments`)."""
        settings = mailbox_settings(account)
        mail = compose(settings, msg, datetime.now(UTC), files)
        password = setting_env(account, "smtp_password_env") or secret
        try:
            await aiosmtplib.send(
                mail,
                hostname=settings.smtp_host or settings.host,
                port=settings.smtp_port,
                username=settings.smtp_user or settings.user,
                password=password,
                use_tls=settings.smtp_security == "tls",
                start_tls=settings.smtp_security == "starttls",
                validate_certs=settings.tls_verify,
                timeout=settings.timeout_s,
            )
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise SendError(
                f"SMTP login refused: {exc.code} {exc.message}",
                retryable=False,
                code="smtp_auth_failed",
            ) from None
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            raise SendError(
                f"recipient refused: {'; '.join(f'{r.code} {r.message}' for r in exc.recipients)}",
                retryable=all(400 <= c < 500 for c in codes),
                code="smtp_recipient_refused",
            ) from None
        except aiosmtplib.SMTPResponseException as exc:
            raise SendError(
                f"SMTP {exc.code} {exc.message}",
                retryable=400 <= exc.code < 500,
                code=f"smtp_{exc.code}",
            ) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise SendError(
                f"SMTP server unreachable: {type(exc).__name__}: {exc}",
                retryable=True,
                code="smtp_unavailable",
            ) from None
        if settings.sent_folder:
            await self._save_sent(settings, secret, mail)
        return SendResult(provider_id_of(mail))

    async def _save_sent(
        self, settings: MailboxSettings, password: str | None, mail: EmailMessage
    ) -> None:
        """APPEND the sent copy (best effort: the mail is gone already; a failure here is
        logged, never a reason to send again)."""
        assert settings.sent_folder is not None
        try:
            session = await ImapSession.open(
                settings.host,
                settings.port,
                tls=settings.tls,
                verify=settings.tls_verify,
                user=settings.user,
                password=password or "",
                timeout_s=settings.timeout_s,
            )
            try:
                await session.append(mail.as_bytes(), settings.sent_folder)
            finally:
                await session.close()
        except Exception as exc:  # logged; the reply itself went out
            log.warning(
                "email.sent_copy_failed",
                folder=settings.sent_folder,
                error=f"{type(exc).__name__}: {exc}"[:300],
            )
