"""Tasks and notifications of the current user (docs/automation.md).

- ``GET /api/v1/tasks?status=open|done&assignee=<user>&watching=true&limit=N`` — the
  caller's tasks (or another user's, if the caller may see that user's department; or
  those the caller watches), open ones by deadline first.
- ``POST /api/v1/tasks/{id}/complete`` / ``/reopen`` — by the assignee, a watcher, or
  someone who sees the assignee's department. Completing a done task (or reopening an open
  one) changes nothing and answers the task as it is.
- ``GET /api/v1/notifications?unread=true&limit=N`` — the caller's notifications, newest
  first; ``POST /api/v1/notifications/{id}/read`` marks one read.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from crm_store import notifications, tasks
from crm_store.store import Document
from inbox.auth import ApiError, Principal
from ingest.context import Service, json_response

MAX_LIMIT = 500


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "100")
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(422, "invalid_request", "limit must be an integer") from None
    if not 1 <= value <= MAX_LIMIT:
        raise ApiError(422, "invalid_request", f"limit must be between 1 and {MAX_LIMIT}")
    return value


def _flag(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise ApiError(422, "invalid_request", f"{name} must be true or false")
    return raw in ("true", "1")


def task_view(doc: Document) -> dict[str, Any]:
    keys = [
        "title",
        "description",
        "template",
        "entity",
        "contact_id",
        "assignee_id",
        "watchers",
        "checklist",
        "deadline",
        "status",
        "rule_id",
        "created_at",
        "completed_at",
        "completed_by",
    ]
    return {"id": doc["_id"], **{k: doc.get(k) for k in keys}}


def notification_view(doc: Document) -> dict[str, Any]:
    keys = ["user_id", "text", "entity", "contact_id", "rule_id", "created_at", "read_at"]
    return {"id": doc["_id"], **{k: doc.get(k) for k in keys}}


def _may_see_user(svc: Service, principal: Principal, user_id: str | None) -> bool:
    if user_id is None:
        return principal.is_admin
    if user_id == principal.user.id:
        return True
    user = svc.config.user(user_id)
    return user is not None and principal.sees_department(user.department)


async def list_tasks(request: web.Request, svc: Service, principal: Principal) -> web.Response:
    status = request.query.get("status")
    if status not in (None, tasks.OPEN, tasks.DONE):
        raise ApiError(422, "invalid_request", "status is open or done")
    user = request.query.get("assignee", principal.user.id)
    if svc.config.user(user) is None:
        raise ApiError(422, "invalid_request", f"unknown user {user!r}")
    if not _may_see_user(svc, principal, user):
        raise ApiError(403, "forbidden", f"the tasks of {user} are not visible to you")
    found = await tasks.list_for(
        svc.store, user, status=status, watching=_flag(request, "watching"), limit=_limit(request)
    )
    return json_response({"tasks": [task_view(t) for t in found]})


async def _task_for(svc: Service, principal: Principal, task_id: str) -> Document:
    doc = await tasks.get(svc.store, task_id)
    visible = doc is not None and (
        principal.user.id in doc.get("watchers", [])
        or _may_see_user(svc, principal, doc.get("assignee_id"))
    )
    if doc is None or not visible:
        raise ApiError(404, "not_found", f"no task {task_id}")
    return doc


async def complete_task(request: web.Request, svc: Service, principal: Principal) -> web.Response:
    await _task_for(svc, principal, request.match_info["id"])
    doc, _ = await tasks.complete(svc.store, request.match_info["id"], by=principal.user.id)
    assert doc is not None
    return json_response(task_view(doc))


async def reopen_task(request: web.Request, svc: Service, principal: Principal) -> web.Response:
    await _task_for(svc, principal, request.match_info["id"])
    doc, _ = await tasks.reopen(svc.store, request.match_info["id"], by=principal.user.id)
    assert doc is not None
    return json_response(task_view(doc))


async def list_notifications(
    request: web.Request, svc: Service, principal: Principal
) -> web.Response:
    found = await notifications.list_for(
        svc.store, principal.user.id, unread=_flag(request, "unread"), limit=_limit(request)
    )
    return json_response({"notifications": [notification_view(n) for n in found]})


async def read_notification(
    request: web.Request, svc: Service, principal: Principal
) -> web.Response:
    doc = await notifications.mark_read(svc.store, request.match_info["id"], principal.user.id)
    if doc is None:
        raise ApiError(404, "not_found", f"no notification {request.match_info['id']}")
    return json_response(notification_view(doc))
