"""Tasks and notifications over HTTP: listing per user, complete/reopen, who may see what."""

from __future__ import annotations

from tests.automation_support import Robots, robots

ANNA, DMITRY, IVAN, OLGA, ADMIN = (
    "anna.smirnova",
    "dmitry.kozlov",
    "ivan.petrov",
    "olga.ivanova",
    "sergey.volkov",
)


async def lead_with_task(r: Robots) -> tuple[str, str]:
    lead = await r.lead_from("api-1", "+79001119901", name="Ivan")
    from crm_store import entities

    await entities.set_responsible(r.store, "lead", lead["_id"], ANNA)
    await r.move("lead", lead["_id"], "in_work")
    await r.run()
    [task] = await r.tasks()
    return lead["_id"], task["_id"]


async def test_tasks_per_user_and_their_visibility(mongo_uri: str, db_name: str) -> None:
    async with robots(mongo_uri, db_name) as r:
        lead_id, task_id = await lead_with_task(r)
        status, body = await r.api("GET", "/api/v1/tasks", ANNA)
        assert status == 200
        [task] = body["tasks"]
        assert task["id"] == task_id
        assert (task["title"], task["status"], task["assignee_id"]) == (
            "Указать тип заказа",
            "open",
            ANNA,
        )
        assert task["entity"] == {"kind": "lead", "id": lead_id}
        assert task["checklist"] == [
            {"text": "Связаться с клиентом", "done": False},
            {"text": "Заполнить тип заказа", "done": False},
        ]
        # 19 May 2025 10:00 + 4 working hours.
        assert task["deadline"].startswith("2025-05-19T11:00:00")  # UTC
        assert (await r.api("GET", "/api/v1/tasks", DMITRY))[1] == {"tasks": []}
        # A colleague of the same department, the director above, the admin may look …
        for user in (DMITRY, IVAN, ADMIN):
            status, body = await r.api("GET", f"/api/v1/tasks?assignee={ANNA}", user)
            assert (status, len(body["tasks"])) == (200, 1), user
        # … the wholesale manager may not.
        status, body = await r.api("GET", f"/api/v1/tasks?assignee={ANNA}", OLGA)
        assert (status, body["code"]) == (403, "forbidden")
        status, body = await r.api("GET", "/api/v1/tasks?status=maybe", ANNA)
        assert (status, body["code"]) == (422, "invalid_request")
        status, body = await r.api("GET", "/api/v1/tasks?assignee=nobody", ANNA)
        assert (status, body["code"]) == (422, "invalid_request")
        async with r.svc.client.http.get(f"{r.svc.client.base}/api/v1/tasks") as resp:
            assert resp.status == 401
            assert resp.content_type == "application/problem+json"


async def test_complete_and_reopen(mongo_uri: str, db_name: str) -> None:
    async with robots(mongo_uri, db_name) as r:
        _, task_id = await lead_with_task(r)
        status, body = await r.api("POST", f"/api/v1/tasks/{task_id}/complete", OLGA)
        assert (status, body["code"]) == (404, "not_found")
        status, body = await r.api("POST", f"/api/v1/tasks/{task_id}/complete", ANNA)
        assert status == 200
        assert (body["status"], body["completed_by"]) == ("done", ANNA)
        # Completing it again changes nothing.
        status, body = await r.api("POST", f"/api/v1/tasks/{task_id}/complete", ANNA)
        assert (status, body["status"]) == (200, "done")
        assert len(await r.events("task.completed")) == 1
        status, body = await r.api("GET", "/api/v1/tasks?status=open", ANNA)
        assert body["tasks"] == []
        status, body = await r.api("POST", f"/api/v1/tasks/{task_id}/reopen", IVAN)
        assert (status, body["status"], body["completed_at"]) == (200, "open", None)
        [reopened] = await r.events("task.reopened")
        assert reopened["data"] == {
            "template": "specify_order_type",
            "assignee_id": ANNA,
            "by": IVAN,
        }
        status, _ = await r.api("POST", "/api/v1/tasks/nope/complete", ANNA)
        assert status == 404


async def test_notifications_of_the_current_user(mongo_uri: str, db_name: str) -> None:
    async with robots(mongo_uri, db_name) as r:
        lead = await r.lead_from("n-1", "+79001119902")
        from crm_store import entities

        await entities.set_responsible(r.store, "lead", lead["_id"], DMITRY)
        await r.run()
        await r.advance(hours=2)
        status, body = await r.api("GET", "/api/v1/notifications", IVAN)
        assert status == 200
        [note] = body["notifications"]
        assert note["user_id"] == IVAN
        assert note["text"].endswith(
            "2 часа не обработан (стадия «Новый лид», ответственный: Dmitry Kozlov)"
        )
        assert note["read_at"] is None
        assert (await r.api("GET", "/api/v1/notifications", DMITRY))[1] == {"notifications": []}
        status, _ = await r.api("POST", f"/api/v1/notifications/{note['id']}/read", DMITRY)
        assert status == 404
        status, body = await r.api("POST", f"/api/v1/notifications/{note['id']}/read", IVAN)
        assert status == 200
        assert body["read_at"] is not None
        status, body = await r.api("GET", "/api/v1/notifications?unread=true", IVAN)
        assert body == {"notifications": []}
        # Pushed to the inbox: the feed carries it to whoever may see the lead.
        status, body = await r.api("GET", "/api/v1/events?types=notification.created", IVAN)
        assert status == 200
        [event] = body["events"]
        assert event["data"]["user_id"] == IVAN
        assert event["refs"]["lead_id"] == lead["_id"]
