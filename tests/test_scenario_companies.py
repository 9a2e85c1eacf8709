"""The scenario language's business-customer pieces (automation/scenario/): the contact,
company and document checks (pure, each able to fail and saying what it found), a
comment under a post, a task answered with a field, a lead converted with its company, a
bad INN refused as a failed step — played against the example configurations."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from automation.scenario import expect, inbound, runner
from automation.scenario.model import Expectation, Person, Write
from automation.scenario.world import World
from config.models import ChannelAccount
from tests.automation_support import seed_config

TZ = ZoneInfo("Europe/Moscow")


def world() -> World:
    w = World()
    w.contacts = {"olga": ["c1"]}
    w.contact_docs = {"c1": {"_id": "c1", "responsible_id": "anna", "company_id": "k1"}}
    w.companies = {
        "k1": {
            "_id": "k1",
            "name": "ООО «Вектор»",
            "inn": "7707083893",
            "responsible_id": "anna",
            "fields": {"segment": "transport"},
        }
    }
    w.deals = [
        {
            "_id": "d1",
            "contact_id": "c1",
            "pipeline_id": "sales",
            "fields": {"checked_at": datetime(2026, 3, 2, 9, 0, tzinfo=UTC)},
        }
    ]
    w.documents = [{"deal_id": "d1", "type": "contract", "number": "1", "status": "generated"}]
    return w


@pytest.mark.parametrize(
    ("check", "ok"),
    [
        ({"contact": {"of": "olga", "responsible": "anna", "company": "вектор"}}, True),
        ({"contact": {"of": "olga", "responsible": "boris"}}, False),
        (
            {"company": {"of": "olga", "inn": "7707083893", "fields": {"segment": "transport"}}},
            True,
        ),
        ({"company": {"of": "olga", "fields": {"segment": "wholesale"}}}, False),
        ({"document": {"of": "olga", "type": "contract", "status": "generated"}}, True),
        ({"document": {"of": "olga", "type": "contract", "status": "signed"}}, False),
        ({"document": {"of": "olga", "type": "invoice", "count": 0}}, True),
        ({"deal": {"of": "olga", "fields": {"checked_at": "2026-03-02 12:00"}}}, True),
        ({"deal": {"of": "olga", "fields": {"checked_at": "2026-03-02 09:00"}}}, False),
    ],
)
def test_checks(check: dict[str, object], ok: bool) -> None:
    outcome = expect.check(Expectation.model_validate(check), world(), TZ)
    assert outcome.ok is ok, outcome
    if not ok:
        assert outcome.found  # says what it found instead


def test_who_sees_a_deal() -> None:
    w = world()
    w.sees = lambda user, doc: user == "anna"
    seen = {"deal": {"of": "olga", "seen_by": ["anna"], "hidden_from": ["boris"]}}
    assert expect.check(Expectation.model_validate(seen), w, TZ).ok
    wrong = {"deal": {"of": "olga", "seen_by": ["boris"]}}
    outcome = expect.check(Expectation.model_validate(wrong), w, TZ)
    assert (outcome.ok, outcome.found) == (False, "{'seen_by': []}")


def test_an_expectation_has_one_check_and_no_company_is_a_failure() -> None:
    with pytest.raises(ValidationError, match="exactly one of"):
        Expectation.model_validate({"contact": {"of": "olga"}, "company": {"of": "olga"}})
    alone = World(contacts={"olga": ["c1"]}, contact_docs={"c1": {"_id": "c1"}})
    outcome = expect.check(Expectation.model_validate({"company": {"of": "olga"}}), alone, TZ)
    assert (outcome.ok, outcome.found) == (False, "no company")


def test_a_comment_is_a_comment_only_where_posts_have_comments() -> None:
    person = Person(name="Дмитрий", phone="+79031230303")
    vk = ChannelAccount(channel="vk", account="community", source="social")
    step = Write(who="d", channel="vk", text="Опт от скольки?", comment_on="wall-1_7")
    [msg] = inbound.message("d", person, step, vk, 1, datetime.now(UTC)).messages
    assert (msg.kind, msg.post and msg.post.id) == ("comment", "wall-1_7")
    assert msg.thread_id == f"comment:wall-1_7:{msg.sender.external_user_id}"
    tg = ChannelAccount(channel="telegram", account="bot", source="social")
    with pytest.raises(inbound.StepError, match="no comments"):
        inbound.message(
            "d", person, step.model_copy(update={"channel": "telegram"}), tg, 2, datetime.now(UTC)
        )


SCENARIO = """
name: a lead answered, converted with its company; a bad INN
start: 2026-03-02 09:00
operator: irina.lebedeva
people:
  a: {name: Сергей, phone: "+79161110101"}
  b: {name: Ольга, phone: "+79161110202"}
steps:
  - write: {who: a, channel: api, account: site, text: "Масла для парка"}
  - complete: {task: "состоятельность", entity: {lead: a}, fields: {quality: valid}}
    expect:
      - lead: {of: a, stage: client_check, fields: {quality: valid}}
      - task: {title: "состоятельность", status: done}
  - convert: {lead: a, pipeline: deals, company: {name: ООО «Магистраль», inn: "7703123457"}}
    expect:
      - deal: {of: a, pipeline: deals}
      - company: {of: a, name: ООО «Магистраль», responsible: irina.lebedeva}
  - write: {who: b, channel: api, account: site, text: "Ещё заявка"}
  - company: {of: b, name: ООО «Опечатка», inn: "7703123450"}
"""


async def test_answer_convert_with_company_and_a_bad_inn(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO, encoding="utf-8")
    lines: list[str] = []
    result = await runner.run(path, seed_config("oil_distributor"), lines.append)
    text = "\n".join(lines)
    assert result.passed == 4, text
    assert result.failed == 1, text
    [failed] = result.failed_steps
    assert "check digit" in failed
