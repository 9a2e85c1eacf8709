"""The robots the language could not say before: tasks cancelled when their lead closes,
is converted or deleted; ``while`` on the current stage and ``open``; ``set_field`` with the
service clock's time; a reminder before a task's deadline (the oil distributor's lead
check: a 22-hour task, its supervisor told after 24 hours only while still unchecked)."""

from __future__ import annotations

from pathlib import Path

from crm_store import tasks
from tests.automation_support import msk, robots
from tests.test_automation_engine import config_with_rules
from tests.test_cli import run

ADMIN = "sergey.volkov"

RULES = """
rules:
  - id: lead_check
    on: lead.created
    do:
      - create_task: {title: "Check the lead", deadline: 22h, remind_before: 2h}
  - id: checked_at
    on: stage.entered
    if: {stage: in_work}
    do:
      - set_field: {field: checked_at, now: true}
  - id: unchecked
    on: lead.created
    after: 24h
    in_stage: false
    while: {stage: new}
    do:
      - notify: {to: head, text: "Lead {entity.title} was not checked in 24 hours"}
  - id: still_open
    on: lead.created
    after: 24h
    in_stage: false
    while: {open: true}
    do:
      - notify: {to: head, text: "Lead {entity.title} is still open"}
"""


async def test_tasks_cancelled_when_lead_closes_converts_or_is_deleted(
    mongo_uri: str, db_name: str, tmp_path: Path
) -> None:
    cfg, _ = config_with_rules(tmp_path, RULES)
    async with robots(mongo_uri, db_name, config=cfg) as r:
        failed = await r.lead_from("v2-1", "+79008880001")
        converted = await r.lead_from("v2-2", "+79008880002")
        deleted = await r.lead_from("v2-3", "+79008880003")
        done = await r.lead_from("v2-4", "+79008880004")
        await r.run()
        assert len(await r.tasks(status="open")) == 4
        [finished] = await r.tasks(entity_id=done["_id"])
        await tasks.complete(r.store, finished["_id"], by=ADMIN)

        await r.move("lead", failed["_id"], "not_interested")
        status, _ = await r.api("POST", f"/api/v1/leads/{converted['_id']}/convert", ADMIN, {})
        assert status == 201
        status, _ = await r.api("DELETE", f"/api/v1/leads/{deleted['_id']}", ADMIN)
        assert status == 200
        await r.move("lead", done["_id"], "qualified")
        await r.run()

        reasons = {
            t["entity_id"]: (t["status"], t.get("cancel_reason"))
            for t in await r.tasks(rule_id="lead_check")
        }
        assert reasons == {
            failed["_id"]: ("cancelled", "the lead was closed (failed)"),
            converted["_id"]: ("cancelled", "the lead was converted into a deal"),
            deleted["_id"]: ("cancelled", "the lead was deleted"),
            done["_id"]: ("done", None),  # done before its lead closed: stays done
        }
        cancelled = await r.events("task.cancelled")
        assert sorted(e["refs"]["lead_id"] for e in cancelled) == sorted(
            [failed["_id"], converted["_id"], deleted["_id"]]
        )
        # Handled again (a crash replays the log): nothing changes, no new event.
        await r.worker.close_tasks(cancelled[0] | {"type": "lead.deleted"})
        assert len(await r.events("task.cancelled")) == 3


async def test_lead_check_reminder_while_stage_and_checked_at(
    mongo_uri: str, db_name: str, tmp_path: Path
) -> None:
    cfg, _ = config_with_rules(tmp_path, RULES)
    start = msk(2025, 5, 19, 10, 0)
    async with robots(mongo_uri, db_name, config=cfg, start=start) as r:
        checked = await r.lead_from("v2-10", "+79008880010", "Checked")
        forgotten = await r.lead_from("v2-11", "+79008880011", "Forgotten")
        junk = await r.lead_from("v2-12", "+79008880012", "Junk")
        quick = await r.lead_from("v2-13", "+79008880013", "Quick")
        await r.run()
        [task] = await r.tasks(entity_id=forgotten["_id"])
        assert task["deadline"] == msk(2025, 5, 20, 8, 0)
        assert task["remind_at"] == task[tasks.REMIND_DUE] == msk(2025, 5, 20, 6, 0)
        [quick_task] = await r.tasks(entity_id=quick["_id"])
        await tasks.complete(r.store, quick_task["_id"], by=ADMIN)

        await r.until(msk(2025, 5, 19, 11, 0))
        await r.move("lead", checked["_id"], "in_work")
        await r.move("lead", junk["_id"], "spam")
        await r.run()
        assert (await r.get("lead", checked["_id"]))["fields"]["checked_at"] == msk(
            2025, 5, 19, 11, 0
        )

        await r.until(msk(2025, 5, 20, 5, 59))
        assert [n for n in await r.notes() if n.get("task_id")] == []
        await r.until(msk(2025, 5, 20, 6, 1))
        await r.advance(minutes=5)
        reminders = [n for n in await r.notes() if n.get("task_id")]
        # The forgotten and the checked lead's open tasks; not the done one, nor junk's.
        assert sorted(n["entity"]["id"] for n in reminders) == sorted(
            [checked["_id"], forgotten["_id"]]
        )
        assert all("Check the lead" in n["text"] for n in reminders)
        # Sent: out of the reminder pass's index range, and not sent again.
        for t in await r.tasks(entity_id=forgotten["_id"]):
            assert tasks.REMIND_DUE not in t
            assert t["reminded_at"] is not None
        await r.advance(minutes=5)
        assert len([n for n in await r.notes() if n.get("task_id")]) == len(reminders)
        assert {n["user_id"] for n in reminders} == {task["assignee_id"]} | {
            t["assignee_id"] for t in await r.tasks(entity_id=checked["_id"])
        }

        await r.until(msk(2025, 5, 20, 10, 1))
        unchecked = await r.notes(rule_id="unchecked")
        still_open = await r.notes(rule_id="still_open")
        # Only the lead still in "new" is unchecked; the junk lead (closed) is nobody's news.
        assert {n["entity"]["id"] for n in unchecked} == {forgotten["_id"], quick["_id"]}
        assert {n["entity"]["id"] for n in still_open} == {
            forgotten["_id"],
            quick["_id"],
            checked["_id"],
        }


def test_check_config_warns_where_calendar_days_land_work_on_a_day_off(tmp_path: Path) -> None:
    _, target = config_with_rules(
        tmp_path,
        """\
        rules:
          - id: control_call
            on: stage.entered
            if: {pipeline: orders, stage: approval}
            after: 3d
            do:
              - create_task: {title: "Control call"}
          - id: measure
            on: deal.created
            do:
              - create_task: {title: "Measure", deadline: 2 days}
          - id: fine
            on: deal.created
            after: 2wd
            do:
              - create_task: {title: "Working days", deadline: 1wd}
          - id: escalate
            on: deal.created
            after: 15d
            do:
              - notify: {to: head, text: "Forgotten"}
        """,
    )
    r = run("check-config", str(target))
    assert r.code == 0, r.err
    warned = [line for line in r.err.splitlines() if "calendar days" in line]
    assert warned == [
        "warning: rule control_call: after 3d counts calendar days and can land on a day off"
        " (a Sunday, a holiday); if working days are meant, write 3wd (3 working days)",
        "warning: rule measure: do[0].create_task.deadline 2d counts calendar days and can"
        " land on a day off (a Sunday, a holiday); if working days are meant, write 2wd"
        " (2 working days)",
    ]


PROCESS_RULES = """
rules:
  - id: lab
    on: stage.entered
    if: {pipeline: orders, stage: approval}
    do:
      - start_process: {pipeline: direct, stage: in_progress, fields: [estimate_amount]}
"""


async def test_linked_process_completion_moves_the_parent(
    mongo_uri: str, db_name: str, tmp_path: Path
) -> None:
    cfg, _ = config_with_rules(tmp_path, PROCESS_RULES)
    async with robots(mongo_uri, db_name, config=cfg) as r:
        lead = await r.lead_from("v2-p1", "+79008880101", "Лаборатория")
        status, deal = await r.api("POST", f"/api/v1/leads/{lead['_id']}/convert", ADMIN, {})
        assert status == 201
        await r.set("deal", deal["id"], estimate_amount=90000)
        await r.move("deal", deal["id"], "approval")
        await r.run()
        parent = await r.get("deal", deal["id"])
        [child_id] = parent["children"]
        child = await r.get("deal", child_id)
        assert (child["pipeline_id"], child["stage_id"], child["parent_id"]) == (
            "direct",
            "in_progress",
            deal["id"],
        )
        assert child["fields"] == {"estimate_amount": 90000}
        assert child["contact_id"] == parent["contact_id"]
        # The stage move runs the rule again: still one process.
        await r.run()
        assert (await r.get("deal", deal["id"]))["children"] == [child_id]

        # The process wins: the parent (its next stage's guards met) moves on.
        await r.set(
            "deal",
            deal["id"],
            contract_number="K-1",
            amount=90000,
            payment_due_date="2025-06-01",
        )
        await r.move("deal", child_id, "won")
        await r.run()
        parent = await r.get("deal", deal["id"])
        assert parent["stage_id"] == "awaiting_payment"
        moves = [
            e for e in await r.events("deal.stage_changed") if e["refs"]["deal_id"] == deal["id"]
        ]
        assert [m["data"]["to"] for m in moves] == ["approval", "awaiting_payment"]
        # A replay of the completion moves nothing again.
        [won] = [
            e for e in await r.events("deal.stage_changed") if e["refs"]["deal_id"] == child_id
        ]
        await r.worker.complete_process(won)
        assert (await r.get("deal", deal["id"]))["stage_id"] == "awaiting_payment"


async def test_reminders_set_before_the_upgrade_are_sent_once(
    mongo_uri: str, db_name: str, tmp_path: Path
) -> None:
    """Tasks written by an older version: one armed (``remind_at`` only) is sent once
    armed as the service's start arms it; one whose reminder an older process sent while
    leaving the mark is not sent again, and loses the mark."""
    cfg, _ = config_with_rules(tmp_path, RULES)
    start = msk(2025, 5, 19, 10, 0)
    async with robots(mongo_uri, db_name, config=cfg, start=start) as r:
        base = {
            "title": "Call back",
            "assignee_id": ADMIN,
            "status": tasks.OPEN,
            "deadline": msk(2025, 5, 19, 12, 0),
            "remind_at": msk(2025, 5, 19, 9, 0),
            "created_at": msk(2025, 5, 18, 9, 0),
        }
        await r.store["tasks"].insert_many(
            [
                {**base, "_id": "earlier-armed"},
                {
                    **base,
                    "_id": "earlier-sent",
                    tasks.REMIND_DUE: base["remind_at"],
                    "reminded_at": msk(2025, 5, 19, 9, 1),
                },
                {**base, "_id": "earlier-done", "status": tasks.DONE},
                # Nobody to tell: claimed all the same, not left in the pass's range.
                {**base, "_id": "nobody", "assignee_id": None, tasks.REMIND_DUE: base["remind_at"]},
            ]
        )
        await r.run()
        assert [n for n in await r.notes() if n.get("task_id")] == []
        sent = await r.store["tasks"].find_one({"_id": "earlier-sent"})
        assert sent is not None
        assert tasks.REMIND_DUE not in sent
        nobody = await r.store["tasks"].find_one({"_id": "nobody"})
        assert nobody is not None
        assert tasks.REMIND_DUE not in nobody
        assert nobody["reminded_at"] is not None
        # A deadline an older process moved: remind_at moved on, the mark stayed.
        later = msk(2025, 5, 19, 11, 0)
        await r.store["tasks"].insert_one(
            {
                **base,
                "_id": "earlier-moved",
                "remind_at": later,
                tasks.REMIND_DUE: base["remind_at"],
            }
        )
        assert await tasks.arm_earlier_reminders(r.store, dry_run=True) == 2
        assert await tasks.arm_earlier_reminders(r.store) == 2
        assert await tasks.arm_earlier_reminders(r.store) == 0
        moved = await r.store["tasks"].find_one({"_id": "earlier-moved"})
        assert moved is not None
        assert moved[tasks.REMIND_DUE] == later
        await r.run()
        await r.advance(minutes=5)
        notes = [n for n in await r.notes() if n.get("task_id")]
        assert [n["task_id"] for n in notes] == ["earlier-armed"]
        await r.until(msk(2025, 5, 19, 11, 1))
        notes = [n for n in await r.notes() if n.get("task_id")]
        assert [n["task_id"] for n in notes] == ["earlier-armed", "earlier-moved"]
