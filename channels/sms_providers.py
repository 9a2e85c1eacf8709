"""SMS gateway adapters: SMS.ru, SMSC.ru and a generic HTTP gateway (docs/channels/sms.md).

Each adapter does three things with the gateway, and nothing with the store:

* :meth:`Provider.send` — one text to one number, once. It returns the gateway's message
  id or raises :class:`~channels.base.SendError`. A failure whose outcome is unknown (the
  request may have reached the gateway: a timeout, a dropped connection) is retried only
  where the gateway cannot send twice; otherwise it raises with ``unknown=True`` and the
  message is left ``unknown`` — never sent blindly again.
* :meth:`Provider.status` — polls delivery states of sent messages.
* :meth:`Provider.callback` — reads the gateway's delivery-status callback.

Gateway states map to :class:`~channels.base.DeliveryState` as CHANNEL_PROTOCOLS.md §12.3
says; a code outside the table is ``None`` (no change).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import aiohttp
import orjson

from channels.base import DeliveryState, SendError, WebhookRequest

# --- settings ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Credentials:
    """The account's credentials, read from the environment variables it names."""

    api_id: str | None = None  # SMS.ru
    login: str | None = None  # SMSC.ru
    password: str | None = None
    apikey: str | None = None
    token: str | None = None  # the generic gateway's {token}


@dataclass(frozen=True, slots=True)
class Target:
    """One send: the number as the gateway wants it (E.164 digits, no ``+``), the text,
    the sender name and our client id."""

    phone: str
    text: str
    sender: str | None
    client_id: str


@dataclass(frozen=True, slots=True)
class Polled:
    """A delivery state a gateway reports for one of our messages."""

    provider_id: str
    state: DeliveryState | None
    error: str | None = None
    at: datetime | None = None


class Provider(Protocol):
    name: str
    # True: a send whose outcome is unknown may be repeated without a second SMS (the
    # gateway dedupes on our client id, or we can ask it whether the message exists).
    reconciles: bool
    # The body the gateway expects in answer to its callback.
    callback_ack: str

    async def send(
        self, http: aiohttp.ClientSession, base: str, cred: Credentials, t: Target
    ) -> str: ...

    async def status(
        self,
        http: aiohttp.ClientSession,
        base: str,
        cred: Credentials,
        items: list[tuple[str, str]],
    ) -> list[Polled]: ...

    def callback(self, req: WebhookRequest) -> list[Polled]: ...


def _fail(provider: str, code: object, text: str, *, retryable: bool = False) -> SendError:
    return SendError(
        f"{provider}: {text} (code {code})",
        retryable=retryable,
        retry_after=60.0 if retryable else None,
        code=f"{provider.lower().replace('.', '')}_{code}",
    )


def _unknown(provider: str, exc: BaseException) -> SendError:
    return SendError(
        f"{provider}: no answer after the request was sent ({type(exc).__name__}); "
        "the SMS may or may not have gone out — not resent",
        retryable=False,
        code="sms_outcome_unknown",
        unknown=True,
    )


def _never_sent(provider: str, exc: BaseException) -> SendError:
    return SendError(
        f"{provider}: cannot connect ({type(exc).__name__})",
        retryable=True,
        code="sms_connect_failed",
    )


def _form(req: WebhookRequest) -> dict[str, list[str]]:
    """A form body's fields (repeated names kept in order) plus the query's."""
    fields: dict[str, list[str]] = {}
    try:
        text = req.body.decode("utf-8")
    except UnicodeDecodeError:
        text = req.body.decode("cp1251", "replace")
    for k, v in urllib.parse.parse_qsl(text, keep_blank_values=True):
        fields.setdefault(k, []).append(v)
    for k, v in req.query.items():
        fields.setdefault(k, []).append(v)
    return fields


def _json_or_form(req: WebhookRequest) -> dict[str, Any]:
    """A callback body read as a JSON object, else a form; values are strings."""
    body = req.body.strip()
    if body.startswith(b"{"):
        value = orjson.loads(body)
        if isinstance(value, dict):
            return {**dict(req.query), **value}
    return {k: v[-1] for k, v in _form(req).items()}


async def _post(
    http: aiohttp.ClientSession, url: str, data: Mapping[str, str], provider: str
) -> tuple[int, bytes]:
    """POST a form; a connection never made is retryable, any later failure unknown."""
    try:
        async with http.post(url, data=dict(data)) as resp:
            return resp.status, await resp.read()
    except aiohttp.ClientConnectorError as exc:
        raise _never_sent(provider, exc) from None
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise _unknown(provider, exc) from None


async def _get_json(http: aiohttp.ClientSession, url: str, params: Mapping[str, str]) -> Any:
    async with http.get(url, params=dict(params)) as resp:
        if resp.status >= 400:
            raise aiohttp.ClientResponseError(
                resp.request_info, (), status=resp.status, message="status poll"
            )
        return orjson.loads(await resp.read())


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


# --- SMS.ru -----------------------------------------------------------------------------

SMSRU_BASE = "https://sms.ru"
SMSRU_RETRYABLE = frozenset({220, 500})
SMSRU_STATES: dict[int, DeliveryState] = {
    100: DeliveryState.QUEUED,
    101: DeliveryState.SENT,
    102: DeliveryState.SENT,
    103: DeliveryState.DELIVERED,
    110: DeliveryState.READ,
    **{c: DeliveryState.FAILED for c in (104, 105, 106, 107, 108, 150)},
}
SMSRU_STATUS_TEXT = {
    104: "TTL expired",
    105: "deleted by the operator",
    106: "phone failure",
    107: "unknown reason",
    108: "rejected",
    150: "no route to the number",
}


class SmsRu:
    """SMS.ru (CHANNEL_PROTOCOLS.md §12.1). No client-side id: a send whose answer is lost
    is ``unknown``."""

    name = "smsru"
    reconciles = False
    callback_ack = "100"

    async def send(
        self, http: aiohttp.ClientSession, base: str, cred: Credentials, t: Target
    ) -> str:
        if not cred.api_id:
            raise SendError("SMS.ru: api_id is not set", retryable=False, code="sms_no_credentials")
        data = {"api_id": cred.api_id, "to": t.phone, "msg": t.text, "json": "1"}
        if t.sender:
            data["from"] = t.sender
        status, body = await _post(http, f"{base}/sms/send", data, "SMS.ru")
        answer = _json(body)
        if status >= 500:
            raise _fail("SMS.ru", f"http_{status}", "server error", retryable=True)
        if not isinstance(answer, dict):
            # The gateway answered, but not in its shape: it may have sent.
            raise SendError(
                f"SMS.ru: unreadable answer (HTTP {status})",
                retryable=False,
                code="sms_outcome_unknown",
                unknown=True,
            )
        top = _int(answer.get("status_code"))
        if answer.get("status") != "OK" or top != 100:
            code = top if top is not None else "?"
            text = str(answer.get("status_text") or "request refused")
            raise _fail("SMS.ru", code, text, retryable=top in SMSRU_RETRYABLE)
        per = (
            (answer.get("sms") or {}).get(t.phone) if isinstance(answer.get("sms"), dict) else None
        )
        if not isinstance(per, dict):
            raise SendError(
                "SMS.ru: the answer has no result for the number",
                retryable=False,
                code="sms_outcome_unknown",
                unknown=True,
            )
        if per.get("status") == "OK" and per.get("sms_id"):
            return str(per["sms_id"])
        per_code = _int(per.get("status_code"))
        text = str(per.get("status_text") or "refused")
        raise _fail(
            "SMS.ru",
            per_code if per_code is not None else "?",
            text,
            retryable=per_code in SMSRU_RETRYABLE,
        )

    async def status(
        self,
        http: aiohttp.ClientSession,
        base: str,
        cred: Credentials,
        items: list[tuple[str, str]],
    ) -> list[Polled]:
        if not items or not cred.api_id:
            return []
        ids = ",".join(pid for pid, _ in items)
        answer = await _get_json(
            http, f"{base}/sms/status", {"api_id": cred.api_id, "sms_id": ids, "json": "1"}
        )
        found = answer.get("sms") if isinstance(answer, dict) else None
        out: list[Polled] = []
        for pid, _ in items:
            one = found.get(pid) if isinstance(found, dict) else None
            if isinstance(one, dict):
                out.append(self._polled(pid, _int(one.get("status_code"))))
        return out

    def callback(self, req: WebhookRequest) -> list[Polled]:
        out: list[Polled] = []
        form = _form(req)
        for entry in [v for k, vs in form.items() if k.startswith("data[") for v in vs]:
            lines = [line.strip() for line in entry.split("\n")]
            if len(lines) < 3 or lines[0] != "sms_status" or not lines[1]:
                continue  # another record type
            at = None
            if len(lines) > 3 and (ts := _int(lines[3])) is not None and 0 < ts < 2**33:
                at = datetime.fromtimestamp(ts, UTC)
            polled = self._polled(lines[1], _int(lines[2]))
            out.append(Polled(polled.provider_id, polled.state, polled.error, at))
        return out

    @staticmethod
    def _polled(pid: str, code: int | None) -> Polled:
        state = SMSRU_STATES.get(code) if code is not None else None
        error = None
        if state is DeliveryState.FAILED and code is not None:
            error = f"SMS.ru: {SMSRU_STATUS_TEXT.get(code, 'failed')} (status {code})"
        return Polled(pid, state, error)


# --- SMSC.ru ----------------------------------------------------------------------------

SMSC_BASE = "https://smsc.ru"
SMSC_RETRYABLE = frozenset({4, 9})
SMSC_ERRORS = {
    1: "bad parameters",
    2: "bad login or password, or the address is not allowed",
    3: "no funds",
    4: "address temporarily blocked",
    5: "bad date format",
    6: "message forbidden (text or sender name)",
    7: "bad phone number format",
    8: "the message cannot be delivered to this number",
    9: "too many identical or concurrent requests",
}
SMSC_STATES: dict[int, DeliveryState] = {
    -1: DeliveryState.QUEUED,
    0: DeliveryState.SENT,
    1: DeliveryState.DELIVERED,
    2: DeliveryState.READ,
    4: DeliveryState.READ,
    **{c: DeliveryState.FAILED for c in (3, 20, 22, 23, 24, 25)},
}
SMSC_STATUS_TEXT = {
    3: "expired",
    20: "undeliverable",
    22: "bad number",
    23: "prohibited",
    24: "no funds",
    25: "unavailable number",
}
# The client id SMSC takes: up to 40 of these characters.
SMSC_ID = re.compile(r"^[A-Za-z0-9._-]{1,40}$")


class SmsC:
    """SMSC.ru (CHANNEL_PROTOCOLS.md §12.2). We send our own ``id``; after a lost answer
    ``status.php`` by that id and the phone tells whether the message exists — so a lost
    answer is reconciled, and resent only when SMSC says it has no such message."""

    name = "smsc"
    reconciles = True
    callback_ack = "OK"

    def _auth(self, cred: Credentials) -> dict[str, str]:
        if cred.apikey:
            return {"apikey": cred.apikey}
        if cred.login and cred.password:
            return {"login": cred.login, "psw": cred.password}
        raise SendError(
            "SMSC: login/password are not set", retryable=False, code="sms_no_credentials"
        )

    async def send(
        self, http: aiohttp.ClientSession, base: str, cred: Credentials, t: Target
    ) -> str:
        data = {
            **self._auth(cred),
            "phones": t.phone,
            "mes": t.text,
            "id": t.client_id,
            "charset": "utf-8",
            "fmt": "3",
        }
        if t.sender:
            data["sender"] = t.sender
        try:
            status, body = await _post(http, f"{base}/sys/send.php", data, "SMSC")
        except SendError as exc:
            if not exc.unknown:
                raise
            return await self._reconcile(http, base, cred, t, exc)
        answer = _json(body)
        if status >= 500:
            return await self._reconcile(
                http, base, cred, t, _fail("SMSC", f"http_{status}", "server error", retryable=True)
            )
        if not isinstance(answer, dict):
            return await self._reconcile(
                http,
                base,
                cred,
                t,
                SendError(
                    "SMSC: unreadable answer",
                    retryable=False,
                    unknown=True,
                    code="sms_outcome_unknown",
                ),
            )
        if "error_code" in answer or "error" in answer:
            code = _int(answer.get("error_code"))
            text = SMSC_ERRORS.get(code or 0) or str(answer.get("error") or "refused")
            raise _fail(
                "SMSC", code if code is not None else "?", text, retryable=code in SMSC_RETRYABLE
            )
        return str(answer.get("id") or t.client_id)

    async def _reconcile(
        self,
        http: aiohttp.ClientSession,
        base: str,
        cred: Credentials,
        t: Target,
        cause: SendError,
    ) -> str:
        """Ask SMSC whether our id exists for the phone: yes → it was sent; "not found"
        (−3) → safe to send again (retryable); no answer → unknown."""
        try:
            found = await self._poll(http, base, cred, [(t.client_id, t.phone)])
        except (TimeoutError, aiohttp.ClientError, ValueError, TypeError):
            found = []
        if not found:
            raise SendError(
                cause.detail + "; the status check did not tell either",
                retryable=False,
                code="sms_outcome_unknown",
                unknown=True,
            )
        if found[0].error == "not_found":
            raise SendError(
                cause.detail + "; SMSC has no such message: sending again",
                retryable=True,
                code=cause.code,
            )
        return t.client_id

    async def status(
        self,
        http: aiohttp.ClientSession,
        base: str,
        cred: Credentials,
        items: list[tuple[str, str]],
    ) -> list[Polled]:
        return [p for p in await self._poll(http, base, cred, items) if p.error != "not_found"]

    async def _poll(
        self,
        http: aiohttp.ClientSession,
        base: str,
        cred: Credentials,
        items: list[tuple[str, str]],
    ) -> list[Polled]:
        if not items:
            return []
        params = {
            **self._auth(cred),
            "id": ",".join(pid for pid, _ in items),
            "phone": ",".join(phone for _, phone in items),
            "fmt": "3",
            "charset": "utf-8",
        }
        answer = await _get_json(http, f"{base}/sys/status.php", params)
        rows = answer if isinstance(answer, list) else [answer]
        out: list[Polled] = []
        for (pid, _), row in zip(items, rows, strict=False):
            if not isinstance(row, dict):
                continue
            if _int(row.get("error_code")) is not None:
                continue
            code = _int(row.get("status"))
            if code == -3:
                out.append(Polled(pid, None, "not_found"))
                continue
            out.append(
                self._polled(pid, code, _int(row.get("err")), _int(row.get("last_timestamp")))
            )
        return out

    def callback(self, req: WebhookRequest) -> list[Polled]:
        data = _json_or_form(req)
        pid = str(data.get("id") or "").strip()
        if not pid or "status" not in data:
            return []  # an incoming SMS or a call confirmation: not ours to read
        return [
            self._polled(
                pid, _int(data.get("status")), _int(data.get("err")), _int(data.get("time"))
            )
        ]

    @staticmethod
    def _polled(pid: str, code: int | None, err: int | None, ts: int | None) -> Polled:
        state = SMSC_STATES.get(code) if code is not None else None
        error = None
        if state is DeliveryState.FAILED and code is not None:
            detail = f", err {err}" if err else ""
            error = f"SMSC: {SMSC_STATUS_TEXT.get(code, 'failed')} (status {code}{detail})"
        at = datetime.fromtimestamp(ts, UTC) if ts is not None and 0 < ts < 2**33 else None
        return Polled(pid, state, error, at)


# --- the generic HTTP gateway -----------------------------------------------------------


class Gateway:
    """A gateway described by the account's settings (docs/channels/sms.md#generic):

    ``gateway_send_url`` and ``gateway_send_params`` (``name={placeholder}&…``; the
    placeholders ``{to}`` ``{to_plus}`` ``{text}`` ``{sender}`` ``{id}`` ``{token}`` are
    URL-encoded into each value), ``gateway_method`` (POST sends a form, GET a query),
    ``gateway_id_field`` and ``gateway_error_field`` (dotted paths in the JSON answer),
    ``gateway_dedupes`` (the gateway refuses a second message with the same ``{id}``: lost
    answers are retried), ``gateway_status_url``/``gateway_status_params`` (``{id}``),
    ``gateway_status_field``, and ``gateway_states`` (``DELIVRD:delivered,UNDELIV:failed``)
    used by polling and by callbacks (``gateway_callback_id_field``,
    ``gateway_callback_status_field``, read from a JSON or form body)."""

    name = "gateway"
    callback_ack = "OK"

    def __init__(self, settings: Mapping[str, object]) -> None:
        self.settings = settings
        self.reconciles = bool(settings.get("gateway_dedupes", False))

    def _s(self, key: str, default: str = "") -> str:
        value = self.settings.get(key, default)
        return str(value) if value is not None else default

    @staticmethod
    def _fill(template: str, values: Mapping[str, str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, value in urllib.parse.parse_qsl(template, keep_blank_values=True):
            out[name] = re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), ""), value)
        return out

    def states(self) -> dict[str, DeliveryState]:
        out: dict[str, DeliveryState] = {}
        for pair in self._s("gateway_states").split(","):
            code, _, state = pair.strip().partition(":")
            if code and state in DeliveryState.__members__.values():
                out[code] = DeliveryState(state)
        return out

    async def send(
        self, http: aiohttp.ClientSession, base: str, cred: Credentials, t: Target
    ) -> str:
        values = {
            "to": t.phone,
            "to_plus": "+" + t.phone,
            "text": t.text,
            "sender": t.sender or "",
            "id": t.client_id,
            "token": cred.token or "",
        }
        url = base + self._s("gateway_send_url", "/send")
        params = self._fill(self._s("gateway_send_params"), values)
        retry_lost = self.reconciles
        try:
            if self._s("gateway_method", "POST").upper() == "GET":
                async with http.get(url, params=params) as resp:
                    status, body = resp.status, await resp.read()
            else:
                async with http.post(url, data=params) as resp:
                    status, body = resp.status, await resp.read()
        except aiohttp.ClientConnectorError as exc:
            raise _never_sent("Gateway", exc) from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            if retry_lost:
                raise SendError(
                    f"Gateway: no answer ({type(exc).__name__}); it dedupes on our id: retrying",
                    retryable=True,
                    code="sms_no_answer",
                ) from None
            raise _unknown("Gateway", exc) from None
        if status >= 500 or status == 429:
            raise _fail("Gateway", f"http_{status}", "server busy or failing", retryable=True)
        answer = _json(body)
        error = (
            _path(answer, self._s("gateway_error_field"))
            if self._s("gateway_error_field")
            else None
        )
        if status >= 400 or error:
            raise _fail("Gateway", f"http_{status}", str(error or "refused"))
        pid = _path(answer, self._s("gateway_id_field", "id"))
        if pid is None or pid == "":
            raise SendError(
                "Gateway: the answer has no message id",
                retryable=False,
                code="sms_outcome_unknown",
                unknown=True,
            )
        return str(pid)

    async def status(
        self,
        http: aiohttp.ClientSession,
        base: str,
        cred: Credentials,
        items: list[tuple[str, str]],
    ) -> list[Polled]:
        if not self._s("gateway_status_url"):
            return []
        states = self.states()
        out: list[Polled] = []
        for pid, phone in items:
            params = self._fill(
                self._s("gateway_status_params", "id={id}"),
                {"id": pid, "to": phone, "token": cred.token or ""},
            )
            answer = await _get_json(http, base + self._s("gateway_status_url"), params)
            code = _path(answer, self._s("gateway_status_field", "status"))
            state = states.get(str(code)) if code is not None else None
            out.append(
                Polled(pid, state, f"Gateway: {code}" if state is DeliveryState.FAILED else None)
            )
        return out

    def callback(self, req: WebhookRequest) -> list[Polled]:
        data = _json_or_form(req)
        pid = _path(data, self._s("gateway_callback_id_field", "id"))
        code = _path(data, self._s("gateway_callback_status_field", "status"))
        if pid is None or code is None:
            return []
        state = self.states().get(str(code))
        return [
            Polled(str(pid), state, f"Gateway: {code}" if state is DeliveryState.FAILED else None)
        ]


def _path(value: Any, path: str) -> Any:
    for part in path.split(".") if path else []:
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


PROVIDERS: dict[str, Provider] = {"smsru": SmsRu(), "smsc": SmsC()}
DEFAULT_BASE = {"smsru": SMSRU_BASE, "smsc": SMSC_BASE}


def provider_of(settings: Mapping[str, object]) -> Provider:
    """The adapter an account's ``provider`` setting names (``gateway``: the generic one
    built from the account's settings). Unknown names raise ``KeyError``."""
    name = str(settings.get("provider", ""))
    if name == "gateway":
        return Gateway(settings)
    return PROVIDERS[name]
