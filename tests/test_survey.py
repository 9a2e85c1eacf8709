"""The furniture maker's quality survey end to end (config/pipelines.yaml ``nps``): an
order copied into the NPS pipeline gets one signed link, the customer answers over HTTP,
the answer lands in ``survey_answers`` and on the deal, ``survey.answered`` is appended,
the thresholds move the deal, and the robots invite a review or give the head of sales a
task."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from config.loader import load_config
from crm_store import entities, surveys
from tests.automation_support import Robots, copy_seed, robots

LINK = re.compile(r"(https://crm\.mebel-lux\.example)(/survey/\S+)")
HEAD_OF_SALES = "ivan.petrov"


async def nps_deal(r: Robots, external_id: str, phone: str) -> tuple[dict[str, Any], str]:
    """A customer's order copied into the NPS pipeline (as the won-to-nps rule does for a
    won order), and the survey path the robots sent them."""
    lead = await r.lead_from(external_id, phone, name="Пётр")
    nps, _ = await entities.copy_to_pipeline(
        r.store, lead, r.config.pipeline("nps"), "survey", [], key=f"won-{external_id}"
    )
    await r.run()
    [message] = await r.outbound()
    match = LINK.search(message["text"])
    assert match is not None, message["text"]
    return nps, match.group(2)


async def http(
    r: Robots, method: str, path: str, body: Any = None, **headers: str
) -> tuple[int, str, str]:
    url = f"{r.svc.client.base}{path}"
    kw: dict[str, Any] = {"headers": headers}
    if isinstance(body, dict) and headers.get("Content-Type") == "application/json":
        kw["data"] = orjson.dumps(body)
    elif body is not None:
        kw["data"] = body
    async with r.svc.client.http.request(method, url, **kw) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


FIVES = {"q_manager": "5", "q_manufacturing": "5", "q_delivery": "5", "q_installation": "5"}


async def test_link_is_signed_one_per_deal_and_answered_once(mongo_uri: str, db_name: str) -> None:
    async with robots(mongo_uri, db_name, start=datetime.now(UTC)) as r:
        nps, path = await nps_deal(r, "s-1", "+79001230101")
        [survey] = [s async for s in r.store["survey_answers"].find({})]
        assert survey["_id"] == surveys.survey_id(nps["_id"], "nps")
        assert {k: survey[k] for k in ("deal_id", "pipeline", "questions", "answered_at")} == {
            "deal_id": nps["_id"],
            "pipeline": "nps",
            "questions": ["manager", "manufacturing", "delivery", "installation"],
            "answered_at": None,
        }
        assert survey["source_deal_id"] == nps["copied_from"]
        assert survey["expires_at"] - survey["sent_at"] == timedelta(days=30)
        # Asking again gives the same survey and the same link.
        again = await surveys.create(
            r.store,
            nps,
            r.config.pipeline("nps").surveys[0],
            department=None,
            at=datetime.now(UTC),
        )
        signer = await surveys.signer(r.store)
        assert f"/survey/{signer.token(again['_id'], again['expires_at'])}" == path

        # The page: Russian by default, English by Accept-Language; both in the page.
        status, ctype, page = await http(r, "GET", path)
        assert (status, ctype) == (200, "text/html; charset=utf-8")
        assert 'data-lang="ru"' in page
        assert "Работа менеджера" in page
        assert "The manager" in page
        assert page.count('type="radio"') == 20
        status, _, page = await http(r, "GET", path, **{"Accept-Language": "en-GB,en;q=0.9"})
        assert 'data-lang="en"' in page

        # Incomplete or out of range: refused, nothing stored.
        status, _, page = await http(r, "POST", path, {**FIVES, "q_delivery": "6"})
        assert status == 422
        assert "оцените каждый пункт" in page
        status, ctype, _ = await http(
            r,
            "POST",
            path,
            {"answers": {"manager": 5}},
            **{"Content-Type": "application/json"},
        )
        assert (status, ctype) == (422, "application/problem+json")
        assert (await surveys.get(r.store, survey["_id"]))["answered_at"] is None  # type: ignore[index]

        status, _, page = await http(
            r, "POST", path, {**FIVES, "comment": "Всё отлично", "lang": "ru"}
        )
        assert status == 200
        assert "Ваш ответ сохранён" in page
        stored = await surveys.get(r.store, survey["_id"])
        assert stored is not None
        assert stored["answers"] == {
            "manager": 5,
            "manufacturing": 5,
            "delivery": 5,
            "installation": 5,
        }
        assert (stored["comment"], stored["lang"]) == ("Всё отлично", "ru")
        assert stored["answered_at"] is not None

        # Twice: "already answered", nothing changes.
        status, _, page = await http(r, "POST", path, {**FIVES, "q_manager": "1"})
        assert status == 409
        assert "уже ответили" in page
        assert await surveys.get(r.store, survey["_id"]) == stored
        status, _, page = await http(r, "GET", path)
        assert status == 200
        assert "уже ответили" in page
        assert len(await r.events("survey.answered")) == 1

        # Forged and expired links say so.
        forged = path[:-3] + ("AAA" if not path.endswith("AAA") else "BBB")
        status, _, page = await http(r, "GET", forged)
        assert status == 403
        assert "Ссылка недействительна" in page
        status, _, _ = await http(r, "GET", "/survey/nonsense")
        assert status == 403
        old = signer.token(survey["_id"], datetime.now(UTC) - timedelta(seconds=1))
        status, _, page = await http(r, "GET", f"/survey/{old}", **{"Accept-Language": "en"})
        assert status == 410
        assert "This link has expired" in page
        status, ctype, _ = await http(
            r, "POST", f"/survey/{old}", FIVES, **{"Accept": "application/json"}
        )
        assert (status, ctype) == (410, "application/problem+json")


async def test_all_fives_invites_a_review(mongo_uri: str, db_name: str) -> None:
    async with robots(mongo_uri, db_name, start=datetime.now(UTC)) as r:
        nps, path = await nps_deal(r, "s-2", "+79001230102")
        status, _, _ = await http(r, "POST", path, {**FIVES, "lang": "en"})
        assert status == 200
        deal = await r.get("deal", nps["_id"])
        assert deal["stage_id"] == "promoter"
        assert {k: v for k, v in deal["fields"].items() if k.startswith("survey_")} == {
            "survey_manager": 5,
            "survey_manufacturing": 5,
            "survey_delivery": 5,
            "survey_installation": 5,
        }
        [answered] = await r.events("survey.answered")
        assert answered["data"] == {
            "deal_id": nps["_id"],
            "survey": "nps",
            "answers": {"manager": 5, "manufacturing": 5, "delivery": 5, "installation": 5},
            "average": 5.0,
            "all_top": True,
        }
        await r.run()
        survey_msg, review = await r.outbound()
        assert "/survey/" in survey_msg["text"]
        assert review["text"] == (
            "Спасибо за высокие оценки! Будем рады вашему отзыву о компании на Яндексе: "
            "https://yandex.ru/maps/org/otilos/reviews"
        )
        assert await r.tasks(template="nps_negative") == []


async def test_one_three_is_a_task_for_the_head_of_sales(mongo_uri: str, db_name: str) -> None:
    async with robots(mongo_uri, db_name, start=datetime.now(UTC)) as r:
        nps, path = await nps_deal(r, "s-3", "+79001230103")
        status, _ctype, body = await http(
            r,
            "POST",
            path,
            {
                "answers": {"manager": 5, "manufacturing": 5, "delivery": 3, "installation": 5},
                "comment": "Delivery was two days late",
                "lang": "en",
            },
            **{"Content-Type": "application/json"},
        )
        assert (status, orjson.loads(body)) == (200, {"ok": True, "state": "answered"})
        deal = await r.get("deal", nps["_id"])
        assert deal["stage_id"] == "detractor"
        assert deal["fields"]["survey_delivery"] == 3
        assert deal["fields"]["survey_comment"] == "Delivery was two days late"
        [answered] = await r.events("survey.answered")
        assert (answered["data"]["average"], answered["data"]["all_top"]) == (4.5, False)
        await r.run()
        [task] = await r.tasks(template="nps_negative")
        assert task["assignee_id"] == HEAD_OF_SALES
        assert len(await r.outbound()) == 1  # the survey link only: no review invitation


async def test_the_link_goes_by_sms_when_the_rule_says_so(
    mongo_uri: str, db_name: str, tmp_path: Path
) -> None:
    """``send_survey: {via: sms}``: the link is texted to the contact's phone on the SMS
    account (one message, queued on channel sms in the contact's SMS conversation)."""
    target = copy_seed("furniture", tmp_path / "furniture")
    rules = target / "automation.yaml"
    text = rules.read_text(encoding="utf-8")
    assert "send_survey: {survey: nps}" in text
    rules.write_text(
        text.replace("send_survey: {survey: nps}", "send_survey: {survey: nps, via: sms}")
    )
    channels = target / "channels.yaml"
    channels.write_text(
        channels.read_text(encoding="utf-8")
        + """
  - channel: sms
    account: texts
    source: site
    secret_env: OMNIROUTE_SECRET_SMS_CALLBACK
    settings: {provider: smsru, sender: MebelLux, api_id_env: OMNIROUTE_SMSRU_API_ID}
""",
        encoding="utf-8",
    )
    config = load_config(target)
    async with robots(
        mongo_uri, db_name, config=config, start=datetime(2026, 3, 2, 9, tzinfo=UTC)
    ) as r:
        lead = await r.lead_from("sms-survey-1", "+79005550707", name="Пётр")
        await entities.copy_to_pipeline(
            r.store, lead, r.config.pipeline("nps"), "survey", [], key="won-sms-survey-1"
        )
        await r.run()
        [message] = [m for m in await r.outbound() if m["channel"] == "sms"]
        assert message["account"] == "texts"
        assert message["recipient"] == "+79005550707"
        assert LINK.search(message["text"]) is not None, message["text"]
        assert [m for m in await r.outbound() if m["channel"] != "sms"] == []
