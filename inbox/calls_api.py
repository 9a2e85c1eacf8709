"""Click-to-call: ``POST /api/v1/calls`` — the PBX rings the employee, then the customer.

Body ``{"phone": "...", "user_id": "...", "channel": "...", "account": "...",
"request_id": "..."}``; only ``phone`` is required. ``request_id`` makes the request
idempotent: a request already placed under that id is answered again without a second call
(crm_store/call_requests.py); a PBX that takes it (Mango: ``command_id``) reports the
call's events under it, and the call record keeps it. ``user_id`` defaults to the
caller's own user; calling for someone else needs an admin, or a director who sees that
user's department. The telephony account is ``channel``/``account`` if given, else the
first enabled account that can place calls and knows the user's PBX login
(``settings.login.<user id>``).

Answers: ``202`` the PBX took the request (``provider_call_id`` if it gave one); ``401`` /
``403`` (inbox/auth.py); ``404`` no such telephony account; ``422`` a bad body, an
unknown user, no PBX login for the user, or the PBX found the request invalid (Mango's
3100: its reason in ``detail``); ``409`` the same ``request_id`` is being placed right
now, or is another user's; ``502`` the PBX refused (its reason in ``detail``, a stable
``code``); ``503`` the PBX is unreachable or busy (try again).
"""

from __future__ import annotations

import uuid

import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator

from channels import REGISTRY
from channels.base import SendError
from channels.calls import ClickToCall, user_login
from channels.identity import normalize_phone
from config.loader import resolve_secret
from config.models import ChannelAccount, Role, User
from crm_store import call_requests
from inbox.auth import ApiError, Principal
from ingest.context import Service, json_response

log = structlog.get_logger("omniroute.calls_api")


class CallRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    phone: str = Field(min_length=1, max_length=64, description="the customer's number")
    user_id: str | None = Field(default=None, max_length=64, description="default: yourself")
    channel: str | None = Field(default=None, max_length=64)
    account: str | None = Field(default=None, max_length=64)
    request_id: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
        description="your idempotency key: a repeat places the call once",
    )

    @field_validator("phone")
    @classmethod
    def _phone(cls, value: str) -> str:
        e164 = normalize_phone(value)
        if e164 is None:
            raise ValueError("not a phone number")
        return e164


def _user(svc: Service, principal: Principal, user_id: str | None) -> User:
    if user_id is None or user_id == principal.user.id:
        return principal.user
    user = svc.config.user(user_id)
    if user is None or not user.active:
        raise ApiError(422, "unknown_user", f"no active user {user_id!r}")
    may = principal.is_admin or (
        principal.user.role is Role.DIRECTOR and principal.sees_department(user.department)
    )
    if not may:
        raise ApiError(403, "forbidden", "you may only place calls as yourself")
    return user


def _accounts(svc: Service, req: CallRequest) -> list[tuple[ChannelAccount, ClickToCall]]:
    """The telephony accounts that may place this call, in configuration order."""
    found: list[tuple[ChannelAccount, ClickToCall]] = []
    for account in svc.config.channels.accounts:
        if not account.enabled or (req.channel and account.channel != req.channel):
            continue
        if req.account and account.account != req.account:
            continue
        channel = REGISTRY.get(account.channel)
        if isinstance(channel, ClickToCall):
            found.append((account, channel))
    if not found:
        raise ApiError(404, "no_telephony_account", "no enabled account that can place calls")
    return found


async def _body(request: web.Request) -> object:
    try:
        return await request.json()
    except ValueError:
        raise ApiError(400, "invalid_json", "the body is not JSON") from None


async def create_call(request: web.Request, svc: Service, principal: Principal) -> web.Response:
    req = CallRequest.model_validate(await _body(request))
    user = _user(svc, principal, req.user_id)
    candidates = _accounts(svc, req)
    chosen = next(((a, c, login) for a, c in candidates if (login := user_login(a, user.id))), None)
    if chosen is None:
        raise ApiError(
            422,
            "no_pbx_login",
            f"user {user.id!r} has no PBX login (settings.login.{user.id}) on "
            + ", ".join(f"{a.channel}/{a.account}" for a, _ in candidates),
        )
    account, channel, login = chosen
    request_id = req.request_id or uuid.uuid4().hex
    answer = {
        "channel": account.channel,
        "account": account.account,
        "user_id": user.id,
        "login": login,
        "phone": req.phone,
    }
    earlier = await call_requests.begin(svc.store, request_id, {**answer, "by": principal.user.id})
    if earlier is not None:
        if earlier.get("by") != principal.user.id:  # someone else's id: nothing of it shown
            raise ApiError(409, "request_id_taken", "this request_id is already used; pick another")
        if earlier.get("state") != "placed":
            raise ApiError(409, "call_in_progress", f"call request {request_id} is being placed")
        stored = {k: earlier.get(k) for k in answer}
        return json_response(
            {**stored, "provider_call_id": earlier.get("provider_call_id") or None}, status=202
        )
    try:
        if getattr(channel, "takes_request_id", False) is True:
            call_id = await channel.make_call(  # type: ignore[call-arg]
                account, resolve_secret(account), login, req.phone, request_id=request_id
            )
        else:
            call_id = await channel.make_call(account, resolve_secret(account), login, req.phone)
    except SendError as exc:
        await call_requests.failed(svc.store, request_id, exc.detail)
        log.warning(
            "calls.click_to_call_failed",
            channel=account.channel,
            account=account.account,
            user_id=user.id,
            code=exc.code,
        )
        invalid = exc.code.endswith("invalid_parameters")
        status = 503 if exc.retryable else 422 if invalid else 502
        raise ApiError(status, exc.code, exc.detail) from None
    await call_requests.placed(svc.store, request_id, call_id)
    log.info(
        "calls.click_to_call",
        channel=account.channel,
        account=account.account,
        user_id=user.id,
        by=principal.user.id,
    )
    return json_response({**answer, "provider_call_id": call_id or None}, status=202)
