"""Document events as automation triggers (docs/documents.md "Automation"): the kitchen
shop's contract reminder started by the contract's generation and stopped by its
signing (``until``), with no deal field involved; the ``document`` condition picks the
type; check-config's word on ``until`` without a delay."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from automation.calendar import WorkingCalendar
from automation.conditions import Snapshot
from automation.evaluate import RuleBook, facts_of, plan_event
from automation.rules import Rule, rule_problems
from config.loader import load_config
from tests.automation_support import msk, robots, seed_dir
from tests.test_documents import PDF

# The example of docs/documents.md.
EVENT_RULES = """
- id: contract-signed-reminder
  name: Remind the manager every working day until the signed contract is attached
  on: document.generated
  if: {document: contract}
  daily: {at: "10:00", working_days: true}
  times: 20
  until: {on: document.signed, if: {document: contract}}
  do:
    - notify:
        to: responsible
        text: "Attach the signed contract of «{entity.title}» (reminder {timer.n})"
"""


def kitchen_on_events(target: Path) -> Path:
    """A copy of the kitchen shop's configuration whose contract reminder runs on the
    document events, and whose contract sets no deal field when signed."""
    shutil.copytree(seed_dir("kitchen_shop"), target)
    auto = target / "automation.yaml"
    lines = auto.read_text().splitlines()
    # The shipped field-based rule, if the example still has it, gives way to ours.
    old = "  - id: contract-signed-reminder"
    start = lines.index(old) if old in lines else len(lines)
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i].startswith(("  - ", "  #"))),
        len(lines),
    )
    mine = ["  " + line for line in EVENT_RULES.strip("\n").splitlines()]
    auto.write_text("\n".join([*lines[:start], *lines[end:], *mine]) + "\n")
    manifest = target / "templates" / "templates.yaml"
    kept = [ln for ln in manifest.read_text().splitlines() if "signed_field:" not in ln]
    manifest.write_text("\n".join(kept) + "\n")
    return target


async def test_reminder_runs_from_generation_until_signing(
    mongo_uri: str, db_name: str, tmp_path: Path
) -> None:
    cfg = load_config(kitchen_on_events(tmp_path / "kitchen"))
    async with robots(mongo_uri, db_name, config=cfg, start=msk(2025, 6, 2, 9, 0)) as r:
        deal = await r.lead_from("k-ev-1", "+79001240021", name="Olga")
        manager = deal["responsible_id"]
        status, doc = await r.api(
            "POST", f"/api/v1/deals/{deal['_id']}/documents", manager, {"type": "contract"}
        )
        assert status == 201, doc
        await r.run()  # the generation starts the reminder (at 09:00)
        reminders = {"rule_id": "contract-signed-reminder"}
        await r.until(msk(2025, 6, 2, 10, 0))  # Monday
        await r.until(msk(2025, 6, 3, 10, 0))
        assert [n["user_id"] for n in await r.notes(**reminders)] == [manager, manager]

        form = aiohttp.FormData()
        form.add_field("file", PDF, filename="contract.pdf", content_type="application/pdf")
        headers = {"Authorization": f"Bearer {await r.token(manager)}"}
        url = f"{r.svc.client.base}/api/v1/documents/{doc['id']}/signed"
        async with r.svc.client.http.post(url, data=form, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
        assert "contract_signed" not in (await r.get("deal", deal["_id"]))["fields"]
        await r.run()
        [timer] = [
            t
            async for t in r.store["timers"].find(
                {"entity_id": deal["_id"], "rule_id": "contract-signed-reminder"}
            )
        ]
        assert (timer["state"], timer["end_reason"]) == ("cancelled", "until document.signed")
        await r.until(msk(2025, 6, 6, 10, 0))  # Wednesday to Friday: no more reminders
        assert len(await r.notes(**reminders)) == 2


def _event(etype: str, kind: Any) -> dict[str, Any]:
    return {
        "_id": f"ev-{etype}-{kind}",
        "type": etype,
        "occurred_at": datetime(2026, 12, 7, 9, tzinfo=UTC),
        "refs": {"deal_id": "d1"},
        "data": {"type": kind, "document_id": "x", "number": "Д-1"},
    }


def test_document_condition_picks_the_type(tmp_path: Path) -> None:
    book = RuleBook(load_config(kitchen_on_events(tmp_path / "kitchen")).automation)
    assert {"document.generated", "document.signed"} <= set(book.event_types)
    snap = Snapshot(kind="deal", id="d1", pipeline_id="kitchens")
    cal = WorkingCalendar()
    now = datetime(2026, 12, 7, 9, tzinfo=UTC)

    def plan(etype: str, kind: Any) -> Any:
        return plan_event(book, facts_of(_event(etype, kind)), snap, cal, now)

    assert len(plan("document.generated", "contract").timers) == 1
    assert plan("document.generated", "invoice").empty
    assert plan("document.generated", None).empty  # a malformed event starts nothing
    assert plan("document.signed", "contract").stopped == [
        ("contract-signed-reminder", "until document.signed")
    ]
    assert plan("document.signed", "invoice").empty
    assert plan("document.sent", "contract").empty


def test_until_needs_a_delay_and_document_an_event() -> None:
    rule = Rule.model_validate(
        {
            "id": "r",
            "on": "stage.entered",
            "if": {"document": "contract"},
            "until": {"on": "document.signed"},
            "do": [{"notify": {"to": "responsible", "text": "x"}}],
        }
    )
    problems = dict(rule_problems(rule))
    assert problems[("until",)] == "'until' needs a delay: after, every, at or daily"
    assert "only applies to document.generated" in problems[("if", "document")]
