"""The ``sms`` channel: outbound only (docs/channels/sms.md).

Sending goes through the account's gateway adapter (channels/sms_providers.py: SMS.ru,
SMSC.ru or the generic HTTP gateway) to the contact's E.164 phone. The webhook side takes
only the gateway's delivery-status callbacks, at ``/webhooks/sms/{account}/{token}``: the
gateways sign nothing, so the last path segment must equal the account's secret
(``secret_env``), compared in constant time.

Account settings (``settings:`` in channels.yaml):

* ``provider``: ``smsru`` | ``smsc`` | ``gateway``; ``sender``: the approved sender name;
* credentials by environment variable name: ``api_id_env`` (SMS.ru), ``login_env`` +
  ``password_env`` or ``apikey_env`` (SMSC.ru), ``token_env`` (the gateway's ``{token}``);
* ``base_url`` (default: the provider's), ``timeout_s`` (10), ``max_segments`` (8),
  ``domestic_only`` (true: only +7 numbers), ``region`` for numbers written without a
  country code (RU);
* the generic gateway's ``gateway_*`` keys (channels/sms_providers.py :class:`Gateway`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import aiohttp

from channels.base import (
    DeliveryState,
    OutboundMessage,
    Parsed,
    SendError,
    SendResult,
    StatusUpdate,
    Unauthorized,
    WebhookChannel,
    WebhookRequest,
    setting_env,
    setting_str,
)
from channels.identity import normalize_phone
from channels.signing import same
from channels.sms_providers import (
    DEFAULT_BASE,
    SMSC_ID,
    Credentials,
    Polled,
    Provider,
    Target,
    provider_of,
)
from channels.sms_segments import segments
from config.models import ChannelAccount

PROVIDERS = ("smsru", "smsc", "gateway")


def provider(account: ChannelAccount) -> Provider:
    try:
        return provider_of(account.settings)
    except KeyError:
        raise SendError(
            f"unknown SMS provider {account.settings.get('provider')!r} "
            f"(one of {', '.join(PROVIDERS)})",
            retryable=False,
            code="sms_bad_settings",
        ) from None


def base_url(account: ChannelAccount) -> str:
    name = str(account.settings.get("provider", ""))
    return (setting_str(account, "base_url") or DEFAULT_BASE.get(name, "")).rstrip("/")


def credentials(account: ChannelAccount) -> Credentials:
    return Credentials(
        api_id=setting_env(account, "api_id_env"),
        login=setting_env(account, "login_env"),
        password=setting_env(account, "password_env"),
        apikey=setting_env(account, "apikey_env"),
        token=setting_env(account, "token_env"),
    )


def client_id(message_id: str) -> str:
    """Our id as the gateway takes it (SMSC: ≤ 40 of ``[A-Za-z0-9._-]``)."""
    if SMSC_ID.match(message_id):
        return message_id
    return hashlib.sha256(message_id.encode()).hexdigest()[:40]


def phone_digits(account: ChannelAccount, recipient: str) -> str:
    """The recipient as E.164 digits without ``+``; refused when it is not a phone."""
    region = setting_str(account, "region", "RU") or "RU"
    e164 = normalize_phone(recipient, region) if recipient else None
    if e164 is None:
        raise SendError(
            f"not a phone number: {recipient[:64]!r}", retryable=False, code="sms_bad_number"
        )
    if account.settings.get("domestic_only", True) and not (
        e164.startswith("+7") and len(e164) == 12
    ):
        raise SendError(
            f"{e164} is not a Russian mobile number (the account is domestic only)",
            retryable=False,
            code="sms_bad_number",
        )
    return e164[1:]


def _float_setting(account: ChannelAccount, key: str, default: float) -> float:
    raw = account.settings.get(key, default)
    try:
        value = float(raw) if isinstance(raw, (int, float, str)) else default
    except ValueError:
        value = default
    return value if value >= 0 else default


def _timeout(account: ChannelAccount) -> float:
    return _float_setting(account, "timeout_s", 10.0) or 10.0


def _max_segments(account: ChannelAccount) -> int:
    raw = account.settings.get("max_segments", 8)
    return raw if isinstance(raw, int) and not isinstance(raw, bool) and raw > 0 else 8


class SmsChannel(WebhookChannel):
    name = "sms"
    ack_reply: str | None = "100"
    secret_fields: tuple[str, ...] = ("api_id", "psw", "apikey", "md5", "sha1")

    # --- webhooks: delivery-status callbacks only

    def authenticate(
        self, account: ChannelAccount, secret: str | None, req: WebhookRequest
    ) -> None:
        if not secret or not same(secret, req.path_token):
            raise Unauthorized("unknown or missing callback token in the path")

    def read(self, account: ChannelAccount, req: WebhookRequest) -> Parsed:
        adapter = provider_of(account.settings)
        statuses = [_status(account, p) for p in adapter.callback(req) if p.state is not None]
        return Parsed(statuses=statuses, reply=adapter.callback_ack)

    # --- sending

    def sends_at_most_once(self, account: ChannelAccount) -> bool:
        """A send interrupted by the process's death is never repeated by the outbox: it
        is marked ``unknown`` (for a gateway that can be asked by our id, the status
        poller settles it: ingest/sms_status.py)."""
        return True

    def check_outbound(self, account: ChannelAccount, msg: OutboundMessage) -> None:
        provider(account)
        phone_digits(account, msg.recipient)
        if msg.attachments or msg.template is not None:
            raise SendError("an SMS carries text only", retryable=False, code="sms_text_only")
        if not msg.text.strip():
            raise SendError("an empty SMS", retryable=False, code="sms_empty")
        seg = segments(msg.text)
        if seg.count > _max_segments(account):
            raise SendError(
                f"the text takes {seg.count} SMS segments ({seg.encoding}); "
                f"the limit is {_max_segments(account)}",
                retryable=False,
                code="sms_too_long",
            )

    async def send(
        self, account: ChannelAccount, secret: str | None, msg: OutboundMessage
    ) -> SendResult:
        adapter = provider(account)
        target = Target(
            phone=phone_digits(account, msg.recipient),
            text=msg.text,
            sender=setting_str(account, "sender"),
            client_id=client_id(msg.id),
        )
        timeout = aiohttp.ClientTimeout(total=_timeout(account))
        try:
            async with aiohttp.ClientSession(timeout=timeout) as http:
                pid = await adapter.send(http, base_url(account), credentials(account), target)
        except SendError as exc:
            # The gateway's "try later" waits (SMSC: ≥ 60 s) can be set per account.
            if (
                exc.retryable
                and exc.retry_after is not None
                and "retry_after_s" in account.settings
            ):
                exc.retry_after = _float_setting(account, "retry_after_s", exc.retry_after)
            raise
        return SendResult(provider_id=pid, state=DeliveryState.SENT)

    async def poll(
        self, account: ChannelAccount, items: list[tuple[str, str]]
    ) -> list[StatusUpdate]:
        """Delivery states of sent messages ``(provider id, recipient)`` from the gateway
        (ingest/sms_status.py); states it does not report are left out."""
        adapter = provider(account)
        wanted = [(pid, phone_digits(account, rcpt)) for pid, rcpt in items]
        timeout = aiohttp.ClientTimeout(total=_timeout(account))
        async with aiohttp.ClientSession(timeout=timeout) as http:
            found = await adapter.status(http, base_url(account), credentials(account), wanted)
        return [_status(account, p) for p in found if p.state is not None]


def _status(account: ChannelAccount, p: Polled) -> StatusUpdate:
    assert p.state is not None
    return StatusUpdate(
        channel="sms",
        account=account.account,
        provider_id=p.provider_id[:512],
        state=p.state,
        at=p.at,
        error=p.error,
    )


def settings_problems(settings: Mapping[str, object]) -> list[tuple[str | None, str]]:
    """What check-config reports about an SMS account's settings: ``(key, message)``
    (key None: the settings as a whole)."""
    out: list[tuple[str | None, str]] = []
    name = settings.get("provider")
    if name not in PROVIDERS:
        out.append(("provider", f"must be one of {', '.join(PROVIDERS)}, not {name!r}"))
        return out
    if name == "smsru" and "api_id_env" not in settings:
        out.append((None, "SMS.ru needs 'api_id_env' (the variable holding the api_id)"))
    if (
        name == "smsc"
        and "apikey_env" not in settings
        and not ("login_env" in settings and "password_env" in settings)
    ):
        out.append((None, "SMSC.ru needs 'login_env' and 'password_env' (or 'apikey_env')"))
    if name == "gateway" and not settings.get("gateway_send_url"):
        out.append((None, "the generic gateway needs 'gateway_send_url'"))
    sender = settings.get("sender")
    if sender is not None and not (isinstance(sender, str) and 0 < len(sender) <= 11):
        out.append(("sender", "a sender name is 1 to 11 characters"))
    for key in ("timeout_s", "max_segments", "poll_interval_s", "retry_after_s"):
        value = settings.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or value < 0
        ):
            out.append((key, "must be a non-negative number"))
    return out
