"""The forensic bureau's responsible cascade, agents and watchers: a deal's new
responsible becomes its contact's and company's when its pipeline says
``cascade_responsible``; the agent of the responsible's department is set on the deal and
watches it; rules notify ``watchers``; watchers are added and removed through the API."""

from __future__ import annotations

from pathlib import Path

from config.loader import load_config
from config.models import AppConfig
from tests.automation_support import copy_seed, robots

ADMIN, ANNA, DMITRY, OLGA, IVAN = (
    "sergey.volkov",
    "anna.smirnova",
    "dmitry.kozlov",
    "olga.ivanova",
    "ivan.petrov",
)

RULES = """\
rules:
  - id: tell_watchers
    on: stage.entered
    if: {pipeline: orders, stage: approval}
    do:
      - notify: {to: watchers, text: "{entity.title} is in approval"}
"""


def bureau(tmp_path: Path) -> AppConfig:
    """The example with the bureau's settings: orders cascade; sales has an agent."""
    target = copy_seed("furniture", tmp_path / "config")
    (target / "automation.yaml").write_text(RULES, encoding="utf-8")
    cfg = load_config(target)
    pipelines = [
        p.model_copy(update={"cascade_responsible": True}) if p.id == "orders" else p
        for p in cfg.pipelines.pipelines
    ]
    departments = [
        d.model_copy(update={"agent": OLGA}) if d.id == "sales" else d
        for d in cfg.users.departments
    ]
    return cfg.model_copy(
        update={
            "pipelines": cfg.pipelines.model_copy(update={"pipelines": pipelines}),
            "users": cfg.users.model_copy(update={"departments": departments}),
        }
    )


async def test_cascade_agent_and_watchers(mongo_uri: str, db_name: str, tmp_path: Path) -> None:
    async with robots(mongo_uri, db_name, config=bureau(tmp_path)) as r:
        lead = await r.lead_from("cas-1", "+79009990001", "Бюро")
        status, deal = await r.api(
            "POST",
            f"/api/v1/leads/{lead['_id']}/convert",
            ADMIN,
            {"company": {"name": "ООО «Экспертиза»", "responsible_id": ANNA}},
        )
        assert status == 201, deal
        await r.run()
        # The agent of the responsible's department (sales) is on the deal from the start.
        fresh = await r.get("deal", deal["id"])
        assert fresh["agent_id"] == OLGA
        assert fresh["watchers"] == [OLGA]

        status, _ = await r.api(
            "PATCH", f"/api/v1/deals/{deal['id']}", ADMIN, {"responsible_id": DMITRY}
        )
        assert status == 200
        await r.run()
        contact = await r.get("contact", deal["contact_id"])
        company = await r.get("company", deal["company_id"])
        assert (contact["responsible_id"], company["responsible_id"]) == (DMITRY, DMITRY)
        cascaded = await r.events("company.responsible_changed")
        assert [(e["data"]["from"], e["data"]["to"]) for e in cascaded] == [(ANNA, DMITRY)]
        # A replay of the log changes nothing more.
        [changed] = await r.events("deal.responsible_changed")
        await r.worker.follow_responsible(changed)
        assert len(await r.events("company.responsible_changed")) == 1

        status, body = await r.api(
            "POST", f"/api/v1/deals/{deal['id']}/watchers", ADMIN, {"user_id": IVAN}
        )
        assert (status, body["watchers"]) == (200, [OLGA, IVAN])
        await r.set("deal", deal["id"], estimate_amount=120000)
        await r.move("deal", deal["id"], "approval")
        await r.run()
        told = await r.notes(rule_id="tell_watchers")
        assert sorted(n["user_id"] for n in told) == sorted([OLGA, IVAN])
        status, body = await r.api("DELETE", f"/api/v1/deals/{deal['id']}/watchers/{IVAN}", ADMIN)
        assert (status, body["watchers"], body["changed"]) == (200, [OLGA], True)
        # Olga (wholesale) does not see the sales deal: she may not add herself.
        status, _ = await r.api(
            "POST", f"/api/v1/deals/{deal['id']}/watchers", OLGA, {"user_id": OLGA}
        )
        assert status == 404


async def test_no_cascade_without_the_pipeline_setting(
    mongo_uri: str, db_name: str, tmp_path: Path
) -> None:
    async with robots(mongo_uri, db_name, config=bureau(tmp_path)) as r:
        lead = await r.lead_from("cas-2", "+79009990002", "Shop")
        status, deal = await r.api(
            "POST", f"/api/v1/leads/{lead['_id']}/convert", ADMIN, {"pipeline_id": "direct"}
        )
        assert status == 201
        before = (await r.get("contact", deal["contact_id"])).get("responsible_id")
        status, _ = await r.api(
            "PATCH", f"/api/v1/deals/{deal['id']}", ADMIN, {"responsible_id": IVAN}
        )
        await r.run()
        assert (await r.get("contact", deal["contact_id"])).get("responsible_id") == before
        assert await r.events("contact.responsible_changed") == []
