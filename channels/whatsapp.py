"""WhatsApp Business Cloud API (Meta Graph webhooks), in and out.

Inbound: ``/webhooks/whatsapp/{account}``.

* ``GET`` is Meta's verification handshake: ``hub.mode=subscribe`` with our verify token
  → the ``hub.challenge`` as ``text/plain``; anything else → 403.
* ``POST`` must carry ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256(raw body, app secret)>``
  (missing or wrong → 401, nothing stored). Every ``entry[].changes[]`` with
  ``field == "messages"`` is read: each ``messages[]`` item is one :class:`InboundMessage`
  (dedup key: its wamid), ``statuses[]`` are receipts for our outbound messages, ``edit``
  messages replace the text of the stored one, ``revoke`` items are deletions
  (:class:`MessageDeletion`). Other fields (``smb_message_echoes``,
  ``account_update`` …) are acknowledged and ignored. Reactions and system notices are kept
  as text but marked ``automatic`` (they never open a lead); attachments are metadata only.
* The reader is lenient (channels/lenient.py): a lone object where a list is expected is
  read as a list of one, ids of any JSON type and size are kept as strings (an over-long
  one cut, with a hash of the whole), implausible timestamps are None, names and file
  names are cut to the model's limits, a message without a readable wamid is keyed by a
  hash of the item. An item that still cannot be read (no sender) is skipped and named in
  ``Parsed.unreadable``: the rest of the batch is stored, and ingest keeps the whole body
  as ``unparsed`` too. A body that is not a JSON object raises (kept as ``unparsed``).
  Edits carry the edit's ``timestamp`` as ``edited_at``, receipts theirs as ``at``.

Outbound: ``POST {api_base}/{api_version}/{phone_number_id}/messages`` with the access
token as Bearer; free-form text only inside the 24 h customer-service window, an approved
template (``OutboundMessage.template``, configured in the account's ``templates``:
channels/whatsapp_templates.py) at any time. ``message_template_status_update`` changes
are Meta's verdicts on the templates (:class:`TemplateStatus`, kept by
crm_store/wa_templates.py).

Account settings (``channels.yaml``; secrets only as environment variable NAMES):

``secret_env``
    the access token (system-user or business token) for sending.
``app_secret_env``
    the Meta app secret that signs the webhooks (required to accept any POST).
``verify_token_env``
    the verify token typed into the App Dashboard (required for the GET handshake).
``phone_number_id``
    the business number to send from when the conversation does not say (replies go
    from the number the customer wrote to).
``api_base``
    default ``https://graph.facebook.com``.
``api_version``
    default ``v25.0``.
``timeout_s``
    total timeout of one send request in seconds, default 10.

The approved message templates are the account's ``templates`` (a list next to
``settings``; channels/whatsapp_templates.py).

Addresses: ``InboundMessage.reply_to`` (and ``thread_id``) is
``"{phone_number_id}:{wa_id}"`` — or ``"{phone_number_id}:{user_id}"`` (business-scoped user
id, sent as ``recipient`` instead of ``to``) for users whose phone number Meta withholds.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import structlog
from pydantic import ValidationError

from channels import lenient
from channels import whatsapp_templates as templates
from channels.base import (
    Attachment,
    DeliveryState,
    InboundMessage,
    MessageDeletion,
    MessageEdit,
    OutboundMessage,
    Parsed,
    Sender,
    SendError,
    SendResult,
    StatusUpdate,
    TemplateStatus,
    WebhookChannel,
    WebhookRequest,
    setting_str,
)

# Kept importable from here (tests and tools sign WhatsApp bodies with them).
from channels.meta import SIGNATURE_HEADER as SIGNATURE_HEADER
from channels.meta import handshake, verify_signature
from channels.meta import signature as signature
from config.models import ChannelAccount

log = structlog.get_logger("omniroute.whatsapp")

DEFAULT_API_BASE = "https://graph.facebook.com"
DEFAULT_API_VERSION = "v25.0"
DEFAULT_TIMEOUT_S = 10.0
WINDOW = timedelta(hours=24)
MAX_TEXT = 4096
MEDIA_KINDS = {
    "image": "image",
    "video": "video",
    "audio": "audio",
    "document": "file",
    "sticker": "sticker",
}
STATES = {
    "sent": DeliveryState.SENT,
    "delivered": DeliveryState.DELIVERED,
    "read": DeliveryState.READ,
    "failed": DeliveryState.FAILED,
}
# 130429 throughput, 131056 pair rate (same user), 80007 WABA rate, 4 app call limit.
RATE_LIMIT_CODES = {130429, 131056, 80007, 4}
PAIR_RATE_LIMIT_WAIT_S = 6.0  # about one message per 6 s to the same user
TRANSIENT_CODES = {1, 2, 131000, 131016}  # unknown / service / something went wrong
WINDOW_CLOSED = 131047

Json = dict[str, Any]
Meta = dict[str, str | int | bool | None]


# --- inbound --------------------------------------------------------------------------


# Meta's handshake and signature are shared with Messenger and Instagram.
_verify_signature = verify_signature
_handshake = handshake


def _dicts(value: Any) -> Iterator[Json]:
    """The objects of what should be a list of them (a lone object counts as one)."""
    return lenient.objs(value)


def _obj(value: Any) -> Json:
    return lenient.obj(value)


def _str(value: Any, limit: int = 256) -> str | None:
    """An id or short string, whatever the JSON type (see :func:`lenient.ident`)."""
    return lenient.ident(value, limit)


def _time(value: Any) -> datetime | None:
    """Meta's timestamps are unix seconds as strings; an implausible one is None."""
    return lenient.epoch(value)


def _media(kind: str, obj: Json) -> Attachment:
    voice = kind == "audio" and obj.get("voice") is True
    size = obj.get("file_size")
    return Attachment(
        kind="voice" if voice else MEDIA_KINDS[kind],
        file_id=_str(obj.get("id"), 512),
        url=lenient.url(obj.get("url")),
        name=lenient.clip(obj.get("filename"), 512),
        mime_type=lenient.clip(obj.get("mime_type"), 255),
        size=lenient.size(size),
    )


def _location(loc: Json) -> tuple[str, list[Attachment]]:
    lat, lon = lenient.number(loc.get("latitude")), lenient.number(loc.get("longitude"))
    point = f"{lat}, {lon}" if lat is not None and lon is not None else None
    name = lenient.clip(loc.get("name"), 512)
    lines = [s for s in (name, lenient.text(loc.get("address")), point) if s]
    url = lenient.url(loc.get("url")) or (f"geo:{lat},{lon}" if point else None)
    return "\n".join(lines), [Attachment(kind="location", url=url, name=name)]


def _contact_card(card: Json) -> str:
    name = lenient.clip(_obj(card.get("name")).get("formatted_name"), 256) or "Contact"
    phones = [p.get("phone") or p.get("wa_id") for p in _dicts(card.get("phones"))]
    emails = [e.get("email") for e in _dicts(card.get("emails"))]
    values = ", ".join(t for v in (*phones, *emails) if (t := lenient.text(v)))
    return f"{name}: {values}" if values else str(name)


def _order(order: Json) -> str:
    lines = [t] if (t := lenient.text(order.get("text"))) else []
    for item in _dicts(order.get("product_items")):
        lines.append(
            f"{item.get('quantity', 1)} × {item.get('product_retailer_id', '?')}"
            f" @ {item.get('item_price', '?')} {item.get('currency', '')}".rstrip()
        )
    return "\n".join(lines) or "[order]"


def _content(msg: Json, meta: Meta) -> tuple[str, list[Attachment]] | None:
    """Text and attachments of one ``messages[]`` item (extra facts go to ``meta``);
    None when the item is not a customer message we keep."""
    kind = lenient.clip(msg.get("type"), 64) or "unknown"
    body = _obj(msg.get(kind))
    if kind == "text":
        return lenient.text(body.get("body")), []
    if kind in MEDIA_KINDS:
        return lenient.text(body.get("caption")), [_media(kind, body)]
    if kind == "location":
        return _location(body)
    if kind == "contacts":
        return "\n".join(_contact_card(c) for c in _dicts(msg.get("contacts"))), []
    if kind == "interactive":
        reply = _obj(body.get(lenient.clip(body.get("type"), 64) or "reply"))
        meta["reply_id"] = _str(reply.get("id")) or _str(reply.get("name"))
        said = (lenient.text(reply.get(k)) for k in ("title", "body", "response_json"))
        return next((t for t in said if t), ""), []
    if kind == "button":
        meta["reply_payload"] = _str(body.get("payload"))
        return lenient.text(body.get("text")), []
    if kind == "reaction":
        emoji = lenient.text(body.get("emoji"))
        if not emoji:  # a reaction removed
            return None
        meta["reaction_to"] = _str(body.get("message_id"), 512)
        return emoji, []
    if kind == "order":
        meta["catalog_id"] = _str(body.get("catalog_id"))
        return _order(body), []
    if kind == "system":
        kind_of = lenient.clip(body.get("type"), 64) or "event"
        return lenient.text(body.get("body")) or f"[system: {kind_of}]", []
    if kind == "revoke":  # a deletion notice: read by _deletion
        return None
    # unsupported / unknown / anything newer: keep that the customer wrote something.
    errors = list(_dicts(msg.get("errors")))
    if errors:
        meta["error_code"] = _str(errors[0].get("code"))
        details = lenient.text(_obj(errors[0].get("error_data")).get("details")) or lenient.text(
            errors[0].get("title")
        )
        return f"[{kind} message: {details}]" if details else f"[{kind} message]", []
    return f"[{kind} message]", []


def _edit(account: ChannelAccount, msg: Json) -> MessageEdit | None:
    edit = _obj(msg.get("edit"))
    original = _str(edit.get("original_message_id"), 512)
    inner = _obj(edit.get("message"))
    content = _content(inner, {}) if inner else None
    if not original or content is None:
        return None
    return MessageEdit(
        channel="whatsapp",
        account=account.account,
        provider_id=original,
        text=content[0],
        attachments=content[1],
        edited_at=_time(msg.get("timestamp")),
    )


def _deletion(account: ChannelAccount, msg: Json) -> MessageDeletion | None:
    """A ``revoke`` item: the customer deleted the message ``original_message_id``."""
    original = _str(_obj(msg.get("revoke")).get("original_message_id"), 512)
    if original is None:
        return None
    return MessageDeletion(
        channel="whatsapp",
        account=account.account,
        provider_id=original,
        deleted_at=_time(msg.get("timestamp")),
    )


def _status(account: ChannelAccount, st: Json) -> StatusUpdate | None:
    state, wamid = STATES.get(str(st.get("status"))), _str(st.get("id"), 512)
    if state is None or wamid is None:
        return None  # e.g. "deleted", "warning", "played"
    errors = [
        f"{e.get('code')}: {e.get('title') or e.get('message') or 'error'}"
        + (f" — {d}" if (d := _obj(e.get("error_data")).get("details")) else "")
        for e in _dicts(st.get("errors"))
    ]
    return StatusUpdate(
        channel="whatsapp",
        account=account.account,
        provider_id=wamid,
        state=state,
        at=_time(st.get("timestamp")),
        error="; ".join(errors) or None,
    )


def _message(account: ChannelAccount, value: Json, msg: Json) -> InboundMessage | None:
    # A message whose wamid cannot be read is keyed by a hash of the item (redeliveries
    # still dedupe); one without a sender cannot be stored (kept as unparsed).
    wamid = _str(msg.get("id"), 512) or lenient.item_id(msg)
    wa_id, user_id = _str(msg.get("from")), _str(msg.get("from_user_id"))
    if not (wa_id or user_id):
        raise ValueError("a WhatsApp message without a readable sender (from, from_user_id)")
    meta_in = _obj(value.get("metadata"))
    number = _str(meta_in.get("phone_number_id"), 128) or setting_str(account, "phone_number_id")
    meta: Meta = {
        "wa_type": _str(msg.get("type")),
        "phone_number_id": number,
        "display_phone_number": _str(meta_in.get("display_phone_number")),
    }
    content = _content(msg, meta)
    if content is None:
        return None
    contact = next(
        (
            c
            for c in _dicts(value.get("contacts"))
            if (wa_id and _str(c.get("wa_id")) == wa_id)
            or (user_id and _str(c.get("user_id")) == user_id)
        ),
        {},
    )
    profile = _obj(contact.get("profile"))
    if profile.get("username"):
        meta["username"] = _str(profile["username"])
    context = _obj(msg.get("context"))
    if in_reply_to := _str(context.get("id"), 512):
        meta["in_reply_to"] = in_reply_to
    if context.get("forwarded") is True or context.get("frequently_forwarded") is True:
        meta["forwarded"] = True
    referral = _obj(msg.get("referral"))  # Click-to-WhatsApp ads: kept on the lead
    for key in ("source_type", "source_id", "source_url", "headline", "ctwa_clid"):
        if referral.get(key):
            meta[f"referral_{key}"] = _str(referral[key])
    address = f"{number}:{wa_id or user_id}" if number else (wa_id or user_id)
    # wa_id is the phone number in international format, digits only.
    phone = f"+{wa_id}" if wa_id is not None and wa_id.isdigit() and len(wa_id) <= 30 else None
    return InboundMessage(
        channel="whatsapp",
        account=account.account,
        provider_id=wamid,
        thread_id=address,
        sender=Sender(
            phone=phone,
            external_user_id=user_id or (None if phone else wa_id),
            name=lenient.clip(profile.get("name"), 256),
        ),
        text=content[0],
        sent_at=_time(msg.get("timestamp")),
        attachments=content[1],
        # Reactions and system notices never open a lead on their own.
        automatic=meta["wa_type"] in ("reaction", "system"),
        reply_to=address,
        meta={k: v for k, v in meta.items() if v is not None},
    )


def _template_status(account: ChannelAccount, value: Json) -> TemplateStatus | None:
    """A ``message_template_status_update`` value: ``event`` (APPROVED, REJECTED, PAUSED,
    DISABLED …), ``message_template_name``, ``message_template_language``, ``reason``
    (or ``other_info.title``/``description`` for a pause); None without a name."""
    name, event = _str(value.get("message_template_name"), 512), _str(value.get("event"), 64)
    if not name or not event:
        return None
    # A language code nobody writes (over 16 characters): the verdict is the name's.
    language = _str(value.get("message_template_language"), 64)
    info = _obj(value.get("other_info"))
    said = (lenient.text(value.get("reason")), lenient.text(info.get("title")))
    reason = " — ".join(t for t in (*said, lenient.text(info.get("description"))) if t)
    return TemplateStatus(
        channel="whatsapp",
        account=account.account,
        name=name,
        language=language if language is None or len(language) <= 16 else None,
        status=event.lower(),
        reason=reason[:1000] or None,
        template_id=_str(value.get("message_template_id")),
        at=_time(value.get("timestamp")),
    )


def _skipped(account: ChannelAccount, item: Json, exc: Exception) -> str:
    """Log an item of a signed batch that could not be read; its error for
    ``Parsed.unreadable`` (ingest then keeps the whole body as unparsed as well, so the
    item can be read again after an upgrade; the rest of the batch is stored now)."""
    if isinstance(exc, ValidationError):
        what = "invalid " + ", ".join(
            ".".join(map(str, e["loc"])) for e in exc.errors(include_input=False)
        )
    else:
        what = str(exc)
    item_id = lenient.ident(item.get("id"), 80)
    log.warning("whatsapp.item_skipped", account=account.account, id=item_id, error=what[:200])
    return f"item {item_id or '?'}: {type(exc).__name__}: {what[:200]}"


class WhatsAppChannel(WebhookChannel):
    name = "whatsapp"

    def authenticate(
        self, account: ChannelAccount, secret: str | None, req: WebhookRequest
    ) -> None:
        if req.method == "GET":
            _handshake(account, req.query)
        else:
            _verify_signature(account, req)

    def read(self, account: ChannelAccount, req: WebhookRequest) -> Parsed:
        if req.method == "GET":
            return _handshake(account, req.query)
        body = lenient.load_object(req.body)
        parsed = Parsed()
        # Another Meta product's webhook is not ours; a body without "object" is read.
        if body.get("object", "whatsapp_business_account") != "whatsapp_business_account":
            return parsed
        for entry in _dicts(body.get("entry")):
            for change in _dicts(entry.get("changes")):
                if change.get("field") == "message_template_status_update":
                    value = {"timestamp": entry.get("time"), **_obj(change.get("value"))}
                    try:
                        if (verdict := _template_status(account, value)) is not None:
                            parsed.templates.append(verdict)
                    except Exception as exc:
                        parsed.unreadable.append(_skipped(account, value, exc))
                    continue
                if change.get("field", "messages") != "messages":
                    continue  # echoes, account/quality updates …
                value = _obj(change.get("value"))
                for msg in _dicts(value.get("messages")):
                    try:
                        if msg.get("type") == "edit":
                            if (edit := _edit(account, msg)) is not None:
                                parsed.edits.append(edit)
                        elif msg.get("type") == "revoke":
                            if (gone := _deletion(account, msg)) is not None:
                                parsed.deletions.append(gone)
                        elif (inbound := _message(account, value, msg)) is not None:
                            parsed.messages.append(inbound)
                    except Exception as exc:  # one unreadable item: the rest is stored
                        parsed.unreadable.append(_skipped(account, msg, exc))
                for st in _dicts(value.get("statuses")):
                    try:
                        if (status := _status(account, st)) is not None:
                            parsed.statuses.append(status)
                    except Exception as exc:
                        parsed.unreadable.append(_skipped(account, st, exc))
        return parsed

    # --- outbound ---------------------------------------------------------------------

    def _address(self, account: ChannelAccount, recipient: str) -> tuple[str | None, str]:
        number, sep, to = recipient.rpartition(":")
        return (number if sep and number else setting_str(account, "phone_number_id")), to

    def check_outbound(self, account: ChannelAccount, msg: OutboundMessage) -> None:
        number, to = self._address(account, msg.recipient)
        if not to:
            raise SendError(
                "the conversation has no WhatsApp address", retryable=False, code="no_recipient"
            )
        if not number:
            raise SendError(
                "no phone_number_id to send from (settings.phone_number_id)",
                retryable=False,
                code="not_configured",
            )
        if msg.template is not None:
            templates.check(account, msg.template)  # allowed outside the window
            return
        if msg.attachments:
            _check_media(msg)
        elif not msg.text.strip():
            raise SendError("the message has no text", retryable=False, code="empty_message")
        if len(msg.text) > MAX_TEXT:
            raise SendError(
                f"WhatsApp text is limited to {MAX_TEXT} characters ({len(msg.text)} given)",
                retryable=False,
                code="text_too_long",
            )
        last = msg.last_inbound_at
        if last is not None and last.tzinfo is None:
            last = last.replace(tzinfo=UTC)
        if last is None or datetime.now(UTC) - last > WINDOW:
            since = f"last customer message {last.isoformat()}" if last else "no customer message"
            raise SendError(
                f"outside WhatsApp's 24 h customer-service window ({since}): free text cannot "
                "be sent now — send an approved template instead, or "
                "wait for the customer to write again",
                retryable=False,
                code="window_closed",
            )

    async def send(
        self, account: ChannelAccount, secret: str | None, msg: OutboundMessage
    ) -> SendResult:
        if not secret:
            raise SendError(
                "no access token configured (secret_env)", retryable=False, code="not_configured"
            )
        number, to = self._address(account, msg.recipient)
        base = (setting_str(account, "api_base") or DEFAULT_API_BASE).rstrip("/")
        version = setting_str(account, "api_version") or DEFAULT_API_VERSION
        payload: Json = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            ("to" if to.isdigit() else "recipient"): to,
            "type": "text",
            "text": {"body": msg.text, "preview_url": False},
        }
        if msg.template is not None:
            del payload["text"]
            payload.update(type="template", template=templates.payload(msg.template))
        elif msg.attachments:
            del payload["text"]
            kind, media = _media_payload(msg)
            payload.update({"type": kind, kind: media})
        if msg.in_reply_to:
            payload["context"] = {"message_id": msg.in_reply_to}
        timeout_s = _timeout_s(account)
        timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0))
        try:
            async with httpx.AsyncClient(timeout=timeout) as client:
                resp = await client.post(
                    f"{base}/{version}/{number}/messages",
                    content=orjson.dumps(payload),
                    headers={
                        "Authorization": f"Bearer {secret}",
                        "Content-Type": "application/json",
                    },
                )
        except httpx.TimeoutException as exc:
            raise SendError(
                f"WhatsApp API timed out: {type(exc).__name__}", retryable=True, code="timeout"
            ) from None
        except httpx.HTTPError as exc:
            raise SendError(
                f"WhatsApp API unreachable: {type(exc).__name__}: {exc}",
                retryable=True,
                code="connection_error",
            ) from None
        try:
            data = _obj(orjson.loads(resp.content))
        except orjson.JSONDecodeError:
            data = {}
        if resp.status_code == 200:
            ids = [m.get("id") for m in _dicts(data.get("messages"))]
            if ids and isinstance(ids[0], str) and ids[0]:
                return SendResult(provider_id=ids[0])
            # It may have gone out: a retry could duplicate it, so fail it visibly.
            raise SendError(
                f"WhatsApp API answered 200 without a message id: {resp.text[:300]}",
                retryable=False,
                code="bad_response",
            )
        raise _send_error(resp, _obj(data.get("error")))


# One file per message, fetched by WhatsApp from its link (our signed file link); the text
# goes as its caption. attachment kind → WhatsApp message type.
MEDIA_TYPES = {"file": "document", "image": "image"}
MAX_CAPTION = 1024


def _check_media(msg: OutboundMessage) -> None:
    if len(msg.attachments) > 1:
        raise SendError(
            "WhatsApp sends one file per message; send the files one by one",
            retryable=False,
            code="too_many_attachments",
        )
    [a] = msg.attachments
    if a.kind not in MEDIA_TYPES or not a.url:
        raise SendError(
            "WhatsApp sends a document or an image by its link; "
            f"a {a.kind!r} attachment{'' if a.url else ' without a link'} cannot be sent",
            retryable=False,
            code="attachments_unsupported",
        )
    if len(msg.text) > MAX_CAPTION:
        raise SendError(
            f"a WhatsApp file's caption is limited to {MAX_CAPTION} characters "
            f"({len(msg.text)} given)",
            retryable=False,
            code="text_too_long",
        )


def _media_payload(msg: OutboundMessage) -> tuple[str, Json]:
    """The document or image object of a message with one attachment (checked)."""
    [a] = msg.attachments
    kind = MEDIA_TYPES[a.kind]
    media: Json = {"link": a.url}
    if msg.text.strip():
        media["caption"] = msg.text
    if kind == "document" and a.name:
        media["filename"] = a.name
    return kind, media


def _timeout_s(account: ChannelAccount) -> float:
    try:
        value = float(setting_str(account, "timeout_s") or DEFAULT_TIMEOUT_S)
    except ValueError:
        return DEFAULT_TIMEOUT_S
    return value if value > 0 else DEFAULT_TIMEOUT_S


def _retry_after(resp: httpx.Response) -> float | None:
    try:
        return max(float(resp.headers.get("Retry-After", "")), 0.0)
    except ValueError:
        return None


def _send_error(resp: httpx.Response, err: Json) -> SendError:
    """Map a Graph API error response to a :class:`SendError`."""
    code = err.get("code") if isinstance(err.get("code"), int) else None
    details = _obj(err.get("error_data")).get("details")
    reason = " — ".join(str(s) for s in (err.get("message"), details) if s) or resp.text[:300]
    detail = f"WhatsApp API error {code if code is not None else resp.status_code}: {reason}"
    if resp.status_code == 429 or code in RATE_LIMIT_CODES:
        wait = _retry_after(resp)
        if wait is None and code == 131056:
            wait = PAIR_RATE_LIMIT_WAIT_S
        return SendError(detail, retryable=True, retry_after=wait, code="rate_limited")
    if code == WINDOW_CLOSED:
        return SendError(
            f"{detail}. The 24 h customer-service window is closed: free text cannot be "
            "sent — send an approved template instead",
            retryable=False,
            code="window_closed",
        )
    if resp.status_code >= 500 or code in TRANSIENT_CODES or err.get("is_transient") is True:
        return SendError(
            detail, retryable=True, retry_after=_retry_after(resp), code="provider_unavailable"
        )
    return SendError(
        detail,
        retryable=False,
        code=f"whatsapp_{code}" if code is not None else f"http_{resp.status_code}",
    )
