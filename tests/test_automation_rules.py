"""The rule language: loading and checking automation.yaml (file:line:col: key: message),
and the pure part of the engine — conditions, planning on events, timers coming due."""

from __future__ import annotations

import dataclasses
import textwrap
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest

from automation import expressions, templates
from automation.calendar import WorkingCalendar
from automation.conditions import Facts, Snapshot, matches
from automation.evaluate import (
    RuleBook,
    at_field_due,
    entity_of,
    facts_of,
    plan_event,
    plan_timer,
)
from automation.people import head_of, resolve
from automation.rules import AtField, AutomationFile, Condition, RoleRef, UserRef
from config import ConfigError, check_config, load_config
from config.settings import DEFAULT_CONFIG_DIR
from tests.automation_support import SEEDS, copy_seed, msk, seed_config, seed_dir

CAL = WorkingCalendar()
FURNITURE = load_config(DEFAULT_CONFIG_DIR)


def rules_yaml(tmp_path: Path, text: str) -> Path:
    """The shipped example with ``automation.yaml`` replaced by ``text``."""
    target = copy_seed("furniture", tmp_path / "config")
    (target / "automation.yaml").write_text(textwrap.dedent(text), encoding="utf-8")
    return target


def problems(tmp_path: Path, text: str) -> list[str]:
    return [str(p) for p in check_config(rules_yaml(tmp_path, text))]


def cond(data: dict[str, Any]) -> Condition:
    return Condition.model_validate(data)


def book(text: str) -> RuleBook:
    import yaml

    from config.loader import _Loader

    doc = yaml.load(textwrap.dedent(text), Loader=_Loader)
    return RuleBook(AutomationFile.model_validate(doc))


def deal(**kw: Any) -> Snapshot:
    base: dict[str, Any] = {
        "kind": "deal",
        "id": "deal-1",
        "pipeline_id": "orders",
        "stage_id": "production",
        "stage_entered_at": msk(2025, 5, 14, 12, 0),
        "responsible_id": "anna.smirnova",
        "contact_id": "contact-1",
        "contact_name": "Ivan",
        "title": "Kitchen for Ivan",
    }
    base.update(kw)
    return Snapshot(**base)


def facts(trigger: str, at: datetime | None = None, **kw: Any) -> Facts:
    return Facts(trigger, event_id="ev-1", at=at or msk(2025, 5, 14, 12, 0), **kw)


# --- the shipped examples ----------------------------------------------------------------


@pytest.mark.parametrize("seed", ["furniture", *SEEDS])
def test_every_seed_checks_clean(seed: str) -> None:
    assert check_config(seed_dir(seed)) == []
    cfg = seed_config(seed)
    assert cfg.automation.rules, seed
    assert all(r.do for r in cfg.automation.rules)


def test_the_furniture_example_has_the_seed_robots() -> None:
    rules = {r.id: r for r in FURNITURE.automation.rules}
    assert rules["lead-untouched"].after is not None
    assert str(rules["lead-untouched"].after) == "2h"
    reminder = rules["payment-reminder"]
    assert (str(reminder.every), reminder.times) == ("2wd", 3)
    assert rules["ship-on-date"].at is not None
    assert rules["missed-call"].on == ("call.missed",)
    won = FURNITURE.pipeline("orders").stage("won")
    assert won is not None
    assert [r.message for r in won.requires] == [
        "the closing documents are signed",
        "the order is paid in full",
    ]
    shipping = FURNITURE.pipeline("orders").stage("shipping")
    assert shipping is not None
    assert shipping.no_return


def test_automation_yaml_is_optional(tmp_path: Path) -> None:
    target = copy_seed("furniture", tmp_path / "config")
    (target / "automation.yaml").unlink()
    assert load_config(target).automation.rules == []


# --- check-config ------------------------------------------------------------------------


def test_errors_point_at_file_line_column_and_key(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """\
        rules:
          - id: a
            on: stage.entered
            if: {pipeline: orderz, stage: wonn, changed: x}
            do:
              - move_to_stage: {stage: nowhere}
              - create_task: {title: "Hi {entity.bogus}", assignee: {user: nobody}}
              - set_field: {field: x, compute: "a +"}
              - {}
          - id: b
            on: field.changed
            times: 3
            while: {stage: won}
            do:
              - copy_to_pipeline: {pipeline: leads}
              - close_as_junk: {stage: won}
              - send_message: {text: hi, channel: fax}
              - next_number: {counter: x, field: y, format: "{m}"}
              - webhook: {url: "ftp://x"}
          - id: b
            on: timer.due
            if: {timer: nope}
            do:
              - delete_duplicate: {}
        """,
    )
    expected = [
        "automation.yaml:4:20: rules[0].if.pipeline[0]: unknown pipeline 'orderz'",
        "automation.yaml:4:35: rules[0].if.stage[0]: no stage 'wonn' in pipelines 'leads', "
        "'orders', 'wholesale', 'direct', 'nps'",
        "automation.yaml:4:50: rules[0].if.changed: 'changed' only applies to field.changed "
        "(this rule is on stage.entered)",
        "automation.yaml:6:32: rules[0].do[0].move_to_stage.stage: no stage 'nowhere' in "
        "'leads', 'orders', 'wholesale', 'direct', 'nps'",
        "automation.yaml:7:30: rules[0].do[1].create_task.title: unknown placeholder "
        "{entity.bogus}; use entity.title, fields.<name>, contact.name, responsible.name … "
        "(docs/automation.md)",
        "automation.yaml:7:68: rules[0].do[1].create_task.assignee.user: unknown user 'nobody'",
        "automation.yaml:8:40: rules[0].do[2].set_field.compute: bad expression: the "
        "expression ends too early",
        "automation.yaml:9:9: rules[0].do[3]: an action has exactly one of: create_task, "
        "notify, set_field, move_to_stage, copy_to_pipeline, send_message, next_number, "
        "cascade_responsible, close_as_junk, delete_duplicate, webhook, document, send_sms, "
        "send_survey, start_process",
        "automation.yaml:12:12: rules[1].times: 'times' needs 'every' or 'daily'",
        "automation.yaml:13:12: rules[1].while: 'while' needs a delay: after, every, at or daily",
        "automation.yaml:15:38: rules[1].do[0].copy_to_pipeline.pipeline: copies are deals: "
        "pipeline 'leads' is of kind lead",
        "automation.yaml:16:32: rules[1].do[1].close_as_junk.stage: 'won' is not a failed "
        "stage of 'leads', 'orders', 'wholesale', 'direct', 'nps'",
        "automation.yaml:17:43: rules[1].do[2].send_message.channel: no account of channel 'fax'",
        "automation.yaml:18:53: rules[1].do[3].next_number.format: bad format (use {n}, e.g. "
        "'ORD-{n:05d}'): 'm'",
        "automation.yaml:19:24: rules[1].do[4].webhook.url: must be an http(s) URL",
        "automation.yaml:20:9: rules[2].id: duplicate rule id 'b' (first on line 10)",
        "automation.yaml:22:17: rules[2].if.timer[0]: no rule 'nope' with a delay",
    ]
    assert found == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "on: stage.entred",
            "automation.yaml:3:9: rules[0].on: Input should be 'lead.created', "
            "'lead.repeat_created', 'deal.created', 'stage.entered', 'stage.left', "
            "'field.changed', 'responsible.changed', 'message.received', 'call.missed', "
            "'task.completed', 'timer.due', 'document.generated', 'document.sent' or "
            "'document.signed', got 'stage.entred'",
        ),
        (
            "after: 5 fortnights",
            "automation.yaml:3:12: rules[0].after: not a duration: '5 fortnights'; write it "
            "like 30m, 2h, 3wh, 15d, 5wd (or: 30 minutes, 2 hours, 3 working hours, 15 days, "
            "5 working days)",
        ),
        (
            "after: -2h",
            "automation.yaml:3:12: rules[0].after: 'after' must be a positive duration, got -2h",
        ),
        ("colour: red", "automation.yaml:3:5: rules[0].colour: unknown key 'colour'"),
        (
            "at: {field: d}\n    every: 1d",
            "automation.yaml:3:9: rules[0].at: 'at' cannot be combined with 'after' or 'every'",
        ),
    ],
)
def test_one_mistake_one_problem(tmp_path: Path, text: str, expected: str) -> None:
    body = f"rules:\n  - id: a\n    {text}\n    do: [{{delete_duplicate: {{}}}}]\n"
    if not text.startswith("on:"):
        body = body.replace("    do:", "    on: field.changed\n    do:")
    assert problems(tmp_path, body) == [expected]


def test_stage_entry_conditions_are_checked(tmp_path: Path) -> None:
    target = copy_seed("furniture", tmp_path / "config")
    path = target / "pipelines.yaml"
    text = path.read_text(encoding="utf-8")
    old = "            if: {fields: {documents_signed: true}}\n"
    assert text.count(old) == 1
    path.write_text(text.replace(old, "            if: {stage: design, task: x}\n"))
    found = [str(p) for p in check_config(target)]
    line = next(i for i, t in enumerate(path.read_text().splitlines(), 1) if "task: x" in t)
    assert [f.split(": ", 1)[0] for f in found] == [
        f"pipelines.yaml:{line}:25",
        f"pipelines.yaml:{line}:39",
    ]
    assert "'stage' is not allowed here" in found[0]
    assert "'task' is not allowed here" in found[1]
    with pytest.raises(ConfigError):
        load_config(target)


def test_a_broken_pipelines_file_does_not_flood_automation(tmp_path: Path) -> None:
    # pipelines.yaml does not validate: automation's references to it are not checked.
    target = copy_seed("furniture", tmp_path / "config")
    path = target / "pipelines.yaml"
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("no_return: true", "no_return: sometimes"))
    assert [p.file for p in check_config(target)] == ["pipelines.yaml"]


# --- conditions --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "fields", "expected"),
    [
        ({"fields": {"order_type": "standard"}}, {"order_type": "standard"}, True),
        ({"fields": {"order_type": "standard"}}, {"order_type": "custom"}, False),
        ({"fields": {"order_type": ["standard", "custom"]}}, {"order_type": "custom"}, True),
        ({"fields": {"paid": None}}, {}, True),
        ({"fields": {"paid": None}}, {"paid": ""}, True),
        ({"fields": {"paid": None}}, {"paid": 0}, False),
        ({"fields": {"paid": {"filled": True}}}, {"paid": 100}, True),
        ({"fields": {"paid": {"gte": {"field": "amount"}}}}, {"paid": 100, "amount": 100}, True),
        ({"fields": {"paid": {"gte": {"field": "amount"}}}}, {"paid": 99.5, "amount": 100}, False),
        ({"fields": {"paid": {"gte": {"field": "amount"}}}}, {"paid": 100}, False),
        ({"fields": {"paid": {"gt": 10, "lt": 20}}}, {"paid": 15}, True),
        ({"fields": {"paid": {"gt": 10, "lt": 20}}}, {"paid": 20}, False),
        ({"fields": {"paid": {"gt": 10}}}, {"paid": "15"}, False),
        ({"fields": {"signed": True}}, {"signed": True}, True),
        ({"fields": {"signed": True}}, {"signed": 1}, False),
        ({"fields": {"d": {"lte": "2025-05-20"}}}, {"d": "2025-05-19"}, True),
        ({"fields": {"q": {"not_in": ["junk"]}}}, {"q": "good"}, True),
        ({"fields": {"q": {"ne": "junk"}}}, {"q": "junk"}, False),
        (
            {"any": [{"fields": {"a": 1}}, {"fields": {"b": 1}}], "not": {"fields": {"c": 1}}},
            {"b": 1},
            True,
        ),
        ({"all": [{"fields": {"a": 1}}, {"fields": {"b": 1}}]}, {"b": 1}, False),
    ],
)
def test_field_conditions(
    condition: dict[str, Any], fields: dict[str, Any], expected: bool
) -> None:
    assert matches(cond(condition), deal(fields=fields)) is expected


def test_event_conditions_look_at_the_event() -> None:
    c = cond({"pipeline": "orders", "stage": "won", "from_stage": "installation"})
    entered = facts("stage.entered", stage_id="won", from_stage="installation", to_stage="won")
    # The entity may have moved on since; the stage entered is what the event says.
    assert matches(c, deal(stage_id="lost"), entered)
    assert not matches(c, deal(stage_id="won"), dataclasses.replace(entered, from_stage="design"))
    assert not matches(c, deal(stage_id="won"))  # no event: from_stage cannot hold
    changed = cond({"changed": ["paid_amount", "amount"]})
    assert matches(changed, deal(), facts("field.changed", changed=frozenset({"amount"})))
    assert not matches(changed, deal(), facts("field.changed", changed=frozenset({"x"})))
    assert matches(
        cond({"task": "installation"}), deal(), facts("task.completed", task="installation")
    )
    assert matches(cond({"tasks": {"check": "open"}}), deal(tasks={"check": "open"}))
    assert not matches(cond({"tasks": {"check": "open"}}), deal())
    assert matches(cond({"tasks": {"check": "none"}}), deal())
    assert matches(cond({"won_deals": 1}), deal(won_deals=1))
    assert not matches(cond({"won_deals": {"gte": 2}}), deal(won_deals=1))
    assert matches(cond({"kind": ["lead", "deal"], "is_repeat": False}), deal())
    assert not matches(cond({"responsible": "dmitry.kozlov"}), deal())


def test_people() -> None:
    assert head_of(FURNITURE, "anna.smirnova") == "ivan.petrov"
    # The head of sales has nobody above him (the company has no head).
    assert head_of(FURNITURE, "ivan.petrov") is None
    # Wholesale has no head of its own: the head of sales above it.
    assert head_of(FURNITURE, "olga.ivanova") == "ivan.petrov"
    assert resolve(FURNITURE, "supervisor", "olga.ivanova") == ["ivan.petrov"]
    assert resolve(FURNITURE, UserRef(user="dmitry.kozlov"), None) == ["dmitry.kozlov"]
    managers = resolve(FURNITURE, RoleRef(role="manager"), "olga.ivanova")
    assert managers[0] == "olga.ivanova"  # her own department first
    assert set(managers) == {
        "anna.smirnova",
        "dmitry.kozlov",
        "olga.ivanova",
        "nikolai.sidorov",
        "pavel.kuznetsov",
    }
    assert resolve(FURNITURE, "responsible", None) == []


def test_templates_and_expressions() -> None:
    text = "«{entity.title}» for {contact.name}: {fields.amount} ({{literal}})"
    assert templates.problems(text) == []
    values = {"entity.title": "Kitchen", "contact.name": "Ivan", "fields.amount": 150000}
    assert templates.render(text, values) == "«Kitchen» for Ivan: 150000 ({literal})"
    assert templates.render("{fields.missing}!", {}) == "!"
    assert templates.problems("{entity}")
    assert templates.problems("{x.y}")
    assert templates.problems("an {unclosed")
    assert (
        expressions.compute(
            "amount - prepayment_amount", {"amount": 150000, "prepayment_amount": 45000.5}
        )
        == 104999.5
    )
    assert expressions.compute("(a + b) * 2 / 4", {"a": 1, "b": 3}) == 2
    assert expressions.compute("-a + 10", {"a": 3}) == 7
    with pytest.raises(expressions.ExpressionError, match="not a number"):
        expressions.compute("a - b", {"a": 1, "b": "x"})
    with pytest.raises(expressions.ExpressionError, match="has no number"):
        expressions.compute("a - b", {"a": 1})
    with pytest.raises(expressions.ExpressionError, match="position 3"):
        expressions.parse("a ^ b")


# --- events → plans ----------------------------------------------------------------------


def stage_event(frm: str | None, to: str, at: datetime) -> dict[str, Any]:
    return {
        "_id": "ev-1",
        "type": "deal.stage_changed",
        "occurred_at": at,
        "refs": {"deal_id": "deal-1", "contact_id": "contact-1"},
        "data": {"from": frm, "to": to, "pipeline_id": "orders", "by": None, "final": False},
    }


def test_events_become_triggers() -> None:
    at = msk(2025, 5, 14, 12, 0)
    left, entered = facts_of(stage_event("design", "production", at))
    assert (left.trigger, left.stage_id) == ("stage.left", "design")
    assert (entered.trigger, entered.stage_id, entered.from_stage) == (
        "stage.entered",
        "production",
        "design",
    )
    assert entity_of(stage_event("design", "production", at)) == ("deal", "deal-1")
    changed = facts_of(
        {
            "_id": "e",
            "type": "lead.field_changed",
            "occurred_at": at,
            "refs": {"lead_id": "l", "contact_id": "c"},
            "data": {"fields": {"quality": {"old": None, "new": "junk"}}, "by": "x"},
        }
    )
    assert [(f.trigger, f.changed) for f in changed] == [("field.changed", frozenset({"quality"}))]
    missed = {
        "_id": "m",
        "type": "call.missed",
        "occurred_at": at,
        "refs": {"contact_id": "c"},
        "data": {},
    }
    assert [f.trigger for f in facts_of(missed)] == ["call.missed"]
    assert entity_of(missed) == ("contact", "c")
    assert facts_of({**missed, "type": "message.sent"}) == []


def test_plan_production_overdue_timer() -> None:
    rules = RuleBook(FURNITURE.automation)
    at = msk(2025, 5, 14, 12, 0)
    snap = deal(fields={"order_type": "custom"}, stage_entered_at=at)
    plan = plan_event(
        rules, facts_of(stage_event("production_task", "production", at)), snap, CAL, at
    )
    assert plan.actions == []
    assert plan.stage_changed
    [timer] = plan.timers
    assert timer.rule_id == "production-overdue-custom"
    # 14 May + 7 working days.
    assert timer.due_at == msk(2025, 5, 23, 12, 0)
    assert (timer.in_stage, timer.stage_id, timer.stage_since) == (True, "production", at)
    # The same visit gives the same timer id; another visit another one.
    again = plan_event(
        rules, facts_of(stage_event("production_task", "production", at)), snap, CAL, at
    )
    assert again.timers[0].id == timer.id
    later = dataclasses.replace(snap, stage_entered_at=at + timedelta(days=1))
    assert (
        plan_event(rules, facts_of(stage_event("x", "production", at)), later, CAL, at).timers[0].id
        != timer.id
    )
    # Standard furniture: 5 working days; no order type: no timer at all.
    std = plan_event(
        rules,
        facts_of(stage_event("x", "production", at)),
        dataclasses.replace(snap, fields={"order_type": "standard"}),
        CAL,
        at,
    )
    assert std.timers[0].due_at == msk(2025, 5, 21, 12, 0)
    assert (
        plan_event(
            rules,
            facts_of(stage_event("x", "production", at)),
            dataclasses.replace(snap, fields={}),
            CAL,
            at,
        ).timers
        == []
    )


def test_a_stage_timer_is_not_set_when_the_entity_already_left() -> None:
    rules = RuleBook(FURNITURE.automation)
    at = msk(2025, 5, 14, 12, 0)
    moved_on = deal(fields={"order_type": "custom"}, stage_id="order_ready")
    plan = plan_event(rules, facts_of(stage_event("x", "production", at)), moved_on, CAL, at)
    assert plan.timers == []
    assert plan.stage_changed


def test_anchor_is_the_event_time_or_now_if_earlier() -> None:
    rules = RuleBook(FURNITURE.automation)
    created = {
        "_id": "e",
        "type": "lead.created",
        "occurred_at": msk(2025, 5, 19, 10, 0),
        "refs": {"lead_id": "lead-1", "contact_id": "c"},
        "data": {"pipeline_id": "leads", "stage_id": "new"},
    }
    lead = Snapshot(
        kind="lead",
        id="lead-1",
        pipeline_id="leads",
        stage_id="new",
        stage_entered_at=msk(2025, 5, 19, 10, 0),
    )
    # Handled late (the engine was down for an hour): still due 2 hours after the event.
    [t] = plan_event(rules, facts_of(created), lead, CAL, msk(2025, 5, 19, 11, 0)).timers
    assert t.due_at == msk(2025, 5, 19, 12, 0)
    # An engine clock behind the event (another process's clock, a test clock): from now.
    [t] = plan_event(rules, facts_of(created), lead, CAL, msk(2025, 5, 19, 9, 0)).timers
    assert t.due_at == msk(2025, 5, 19, 11, 0)


def test_plan_timer_fires_repeats_and_cancels() -> None:
    rules = RuleBook(FURNITURE.automation)
    since = msk(2025, 4, 30, 11, 0)
    snap = deal(stage_id="awaiting_payment", stage_entered_at=since, fields={})
    timer: dict[str, Any] = {
        "_id": "t-1",
        "rule_id": "payment-reminder",
        "due_at": msk(2025, 5, 6, 11, 0),
        "fired": 0,
        "in_stage": True,
        "stage_id": "awaiting_payment",
        "stage_since": since,
    }
    now = msk(2025, 5, 6, 11, 0)
    d = plan_timer(rules, timer, snap, CAL, now)
    assert d.fire
    assert d.n == 1
    assert [p.action.kind for p in d.actions] == ["notify"]
    # 6 May + 2 working days: 7 May, then 12 May (8–11 May are days off).
    assert d.next_due == msk(2025, 5, 12, 11, 0)
    # The 3rd firing is the last one.
    last = plan_timer(rules, {**timer, "fired": 2}, snap, CAL, now)
    assert last.fire
    assert last.next_due is None
    # Each firing has its own keys; the same firing the same keys.
    again = plan_timer(rules, timer, snap, CAL, now)
    assert [p.key for p in again.actions] == [p.key for p in d.actions]
    assert {p.key for p in last.actions}.isdisjoint(p.key for p in d.actions)
    # Paid meanwhile: cancelled, not fired.
    paid = plan_timer(rules, timer, dataclasses.replace(snap, fields={"paid_amount": 1}), CAL, now)
    assert (paid.fire, paid.reason) == (False, "its condition no longer holds")
    # Left the stage, or left and came back: this visit's timer is void.
    moved = plan_timer(rules, timer, dataclasses.replace(snap, stage_id="design"), CAL, now)
    assert (moved.fire, moved.reason) == (False, "it left the stage")
    back = dataclasses.replace(snap, stage_entered_at=since + timedelta(hours=1))
    assert not plan_timer(rules, timer, back, CAL, now).fire
    assert not plan_timer(rules, timer, None, CAL, now).fire
    assert not plan_timer(rules, {**timer, "rule_id": "gone"}, snap, CAL, now).fire


def test_repeats_do_not_catch_up() -> None:
    rules = book(
        """
        rules:
          - id: r
            on: deal.created
            every: 3wh
            do: [{notify: {to: responsible, text: x}}]
        """
    )
    timer = {"_id": "t", "rule_id": "r", "due_at": msk(2025, 5, 19, 10, 0), "fired": 0}
    # Fired on time: next 3 working hours after the due time.
    assert plan_timer(rules, timer, deal(), CAL, msk(2025, 5, 19, 10, 0)).next_due == msk(
        2025, 5, 19, 13, 0
    )
    # Fired two days late: next 3 working hours from now, not a burst of missed ones.
    late = plan_timer(rules, timer, deal(), CAL, msk(2025, 5, 21, 10, 0))
    assert late.next_due == msk(2025, 5, 21, 13, 0)


def test_at_a_date_field() -> None:
    now = msk(2025, 5, 19, 10, 0)
    on_day = AtField(field="d", time=time(9, 0))
    assert at_field_due(on_day, "2025-05-28", CAL, now) == msk(2025, 5, 28, 9, 0)
    before = AtField.model_validate({"field": "d", "offset": "-2h"})
    assert at_field_due(before, "2025-05-28T15:00:00+03:00", CAL, now) == msk(2025, 5, 28, 13, 0)
    assert at_field_due(before, datetime(2025, 5, 28, 12, 0, tzinfo=UTC), CAL, now) == msk(
        2025, 5, 28, 13, 0
    )
    day_before = AtField.model_validate({"field": "d", "offset": "-1d", "time": "10:00"})
    assert at_field_due(day_before, "2025-05-28", CAL, now) == msk(2025, 5, 27, 10, 0)
    wd_before = AtField.model_validate({"field": "d", "offset": "-1wd", "time": "10:00"})
    assert at_field_due(wd_before, "2025-05-12", CAL, now - timedelta(days=30)) == msk(
        2025, 5, 7, 10, 0
    )
    # Today but already past: at once. A past day: never. Not a date: never.
    assert at_field_due(on_day, "2025-05-19", CAL, now) == now
    assert at_field_due(on_day, "2025-05-18", CAL, now) is None
    assert at_field_due(on_day, "soon", CAL, now) is None


def test_a_changed_date_replaces_its_timer() -> None:
    rules = RuleBook(FURNITURE.automation)
    at = msk(2025, 5, 19, 10, 0)
    snap = deal(stage_id="production", fields={"shipping_date": "2025-05-28"})
    ev = {
        "_id": "e1",
        "type": "deal.field_changed",
        "occurred_at": at,
        "refs": {"deal_id": "deal-1"},
        "data": {"fields": {"shipping_date": {"old": None, "new": "2025-05-28"}}, "by": None},
    }
    plan = plan_event(rules, facts_of(ev), snap, CAL, at)
    [timer] = [t for t in plan.timers if t.rule_id == "ship-on-date"]
    assert timer.due_at == msk(2025, 5, 28, 9, 0)
    assert ("ship-on-date", timer.id) in plan.replaced
    # Cleared: no timer, and the old ones are void.
    cleared = plan_event(rules, facts_of(ev), dataclasses.replace(snap, fields={}), CAL, at)
    assert cleared.timers == []
    assert ("ship-on-date", None) in cleared.replaced


def test_rules_keyed_by_trigger_and_event_types() -> None:
    rules = RuleBook(FURNITURE.automation)
    assert [r.id for r in rules.rules_for("call.missed")] == ["missed-call"]
    assert "call.missed" in rules.event_types
    assert "message.attached" not in rules.event_types  # no rule listens to messages
    assert rules.needs_tasks is False
    oil = RuleBook(seed_config("oil_distributor").automation)
    assert oil.needs_tasks
    assert RuleBook(seed_config("eco_goods").automation).needs_won_deals
