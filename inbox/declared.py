"""The endpoints written before inbox/api.py — the event feed and subscriptions
(inbox/events_api.py), tasks and notifications (inbox/tasks_api.py), click-to-call
(inbox/calls_api.py) — declared here with the models of what they take and answer, so
they are routed, authenticated and documented in the OpenAPI document like every other.
Their handlers are unchanged: each is called with the request, the service and the
authenticated caller. Also the website live chat's two operator endpoints
(inbox/webchat_api.py), whose handlers already take a ``Call``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from crm_store.event_catalogue import Envelope
from inbox import calls_api, events_api, tasks_api, webchat_api
from inbox.api import Call, route
from inbox.auth import Principal
from ingest.context import Service

Legacy = Callable[[web.Request, Service, Principal], Awaitable[web.Response]]


def _declare(method: str, path: str, legacy: Legacy, **kwargs: Any) -> None:
    async def handler(call: Call) -> web.StreamResponse:
        return await legacy(call.request, call.svc, call.principal)

    handler.__name__ = legacy.__name__
    handler.__doc__ = None
    route(method, path, **kwargs)(handler)


# --- the event feed and subscriptions (docs/events.md, docs/webhooks.md)


class EventsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    after: int = Field(default=0, ge=0, le=2**62, description="the last sequence you have")
    limit: int = Field(default=100, ge=1, le=events_api.MAX_LIMIT)
    wait: int = Field(default=0, ge=0, le=30, description="long-poll up to this many seconds")
    types: str | None = Field(default=None, max_length=2000, description="comma-separated")


class EventsPage(BaseModel):
    events: list[Envelope]
    next_after: int = Field(description="pass as after next time (covers filtered events)")


class SubscriptionView(BaseModel):
    id: str
    url: str | None = None
    types: list[str] | None = None
    active: bool | None = None
    cursor: Any = None
    max_age_s: Any = None
    created_at: datetime | None = None
    kind: Any = None
    replay_of: Any = None
    until_seq: Any = None
    head: Any = None
    secret: str | None = Field(default=None, description="only in the answer to create")


class SubscriptionList(BaseModel):
    subscriptions: list[SubscriptionView]


class DeliveriesQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["delivered", "failing", "dead"] | None = None
    limit: int = Field(default=100, ge=1, le=events_api.MAX_LIMIT)


class DeliveryList(BaseModel):
    deliveries: list[dict[str, Any]]


_declare(
    "GET",
    "/api/v1/events",
    events_api.list_events,
    summary="The ordered event feed, filtered by what the caller may see",
    tag="events",
    query=EventsQuery,
    response=EventsPage,
)
_declare(
    "POST",
    "/api/v1/subscriptions",
    events_api.create_subscription,
    summary="Subscribe a URL to events (admins); the answer carries the signing secret",
    tag="events",
    body=events_api.SubscriptionIn,
    response=SubscriptionView,
    status=201,
)
_declare(
    "GET",
    "/api/v1/subscriptions",
    events_api.list_subscriptions,
    summary="Webhook subscriptions (admins)",
    tag="events",
    response=SubscriptionList,
)
_declare(
    "GET",
    "/api/v1/subscriptions/{id}",
    events_api.get_subscription,
    summary="One subscription (admins)",
    tag="events",
    response=SubscriptionView,
    errors=(404,),
)
_declare(
    "DELETE",
    "/api/v1/subscriptions/{id}",
    events_api.delete_subscription,
    summary="Stop a subscription (admins)",
    tag="events",
    raw={204: ("", "stopped")},
    errors=(404,),
)
_declare(
    "GET",
    "/api/v1/subscriptions/{id}/deliveries",
    events_api.list_deliveries,
    summary="A subscription's deliveries; status=dead lists the dead letters (admins)",
    tag="events",
    query=DeliveriesQuery,
    response=DeliveryList,
    errors=(404,),
)
_declare(
    "POST",
    "/api/v1/subscriptions/{id}/replay",
    events_api.replay_range,
    summary="Deliver a range of the feed again (admins)",
    tag="events",
    body=events_api.ReplayIn,
    response=SubscriptionView,
    status=202,
    errors=(404,),
)
_declare(
    "POST",
    "/api/v1/deliveries/{id}/replay",
    events_api.replay_delivery,
    summary="Deliver one event again (admins)",
    tag="events",
    response=SubscriptionView,
    status=202,
    errors=(404,),
)


# --- tasks and notifications (docs/automation.md)


class TasksQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["open", "done"] | None = None
    assignee: str | None = Field(default=None, max_length=128, description="default: you")
    watching: bool = Field(default=False, description="tasks you watch instead")
    limit: int = Field(default=100, ge=1, le=tasks_api.MAX_LIMIT)


class TaskOut(BaseModel):
    id: str
    title: str | None = None
    description: str | None = None
    template: str | None = None
    entity: dict[str, Any] | None = None
    contact_id: str | None = None
    assignee_id: str | None = None
    watchers: list[str] | None = None
    checklist: list[dict[str, Any]] | None = None
    deadline: datetime | None = None
    status: str | None = None
    rule_id: str | None = None
    created_at: datetime | None = None
    completed_at: datetime | None = None
    completed_by: str | None = None


class TaskList(BaseModel):
    tasks: list[TaskOut]


class NotificationsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    unread: bool = False
    limit: int = Field(default=100, ge=1, le=tasks_api.MAX_LIMIT)


class NotificationOut(BaseModel):
    id: str
    user_id: str | None = None
    text: str | None = None
    entity: dict[str, Any] | None = None
    contact_id: str | None = None
    rule_id: str | None = None
    created_at: datetime | None = None
    read_at: datetime | None = None


class NotificationList(BaseModel):
    notifications: list[NotificationOut]


_declare(
    "GET",
    "/api/v1/tasks",
    tasks_api.list_tasks,
    summary="Your tasks (or a colleague's you may see), open ones by deadline",
    tag="tasks",
    query=TasksQuery,
    response=TaskList,
)
_declare(
    "POST",
    "/api/v1/tasks/{id}/complete",
    tasks_api.complete_task,
    summary="Mark a task done",
    tag="tasks",
    response=TaskOut,
    errors=(404,),
)
_declare(
    "POST",
    "/api/v1/tasks/{id}/reopen",
    tasks_api.reopen_task,
    summary="Open a done task again",
    tag="tasks",
    response=TaskOut,
    errors=(404,),
)
_declare(
    "GET",
    "/api/v1/notifications",
    tasks_api.list_notifications,
    summary="Your notifications, newest first",
    tag="tasks",
    query=NotificationsQuery,
    response=NotificationList,
)
_declare(
    "POST",
    "/api/v1/notifications/{id}/read",
    tasks_api.read_notification,
    summary="Mark one of your notifications read",
    tag="tasks",
    response=NotificationOut,
    errors=(404,),
)


# --- click-to-call (docs/channels/telephony.md)


class CallPlaced(BaseModel):
    channel: str
    account: str
    user_id: str
    login: str
    phone: str
    provider_call_id: str | None


_declare(
    "POST",
    "/api/v1/calls",
    calls_api.create_call,
    summary="Click-to-call: the PBX rings the employee, then the customer",
    tag="calls",
    body=calls_api.CallRequest,
    response=CallPlaced,
    status=202,
    errors=(404, 502),
)


# --- the website live chat, the operator's side (docs/channels/webchat-protocol.md)

route(
    "POST",
    "/api/v1/conversations/{id}/typing",
    summary="Tell the customer an operator is typing (webchat visitors on every process)",
    tag="conversations",
    body=webchat_api.TypingBody,
    response=webchat_api.TypingView,
    errors=(404,),
)(webchat_api.operator_typing)
route(
    "GET",
    "/api/v1/conversations/{id}/visitor",
    summary="The webchat visitor of a conversation: online, typing, verified, last page",
    description="404 for a conversation of another channel. Presence is this process's.",
    tag="conversations",
    response=webchat_api.VisitorView,
    errors=(404,),
)(webchat_api.visitor_state)
