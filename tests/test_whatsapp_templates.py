"""WhatsApp message templates end to end: configured per account (check-config), chosen by
an operator over the API or by an automation rule, sent through the outbox to a local fake
of the Graph API (tests/fakes/whatsapp.py, exact requests recorded), allowed outside the
24 h window where text is refused, and refused at once when unknown, with the wrong
number of parameters, or not approved according to Meta's status webhook.
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import expect

from automation.rules import AutomationFile
from channels.base import OutboundMessage, SendError, TemplateRef, TemplateStatus, WebhookRequest
from channels.whatsapp import WhatsAppChannel
from config.loader import check_config
from config.models import AppConfig
from crm_store import tokens
from tests.automation_support import copy_seed, robots
from tests.fakes.whatsapp import Failure, FakeWhatsApp
from tests.helpers import wait_for
from tests.mutations import get, mutations
from tests.service import InProcess, config_with, in_process
from tests.test_channel_whatsapp import (
    ENV,
    PNID,
    TOKEN,
    WA,
    envelope,
    post,
    text,
    value,
    wa_account,
    wa_config,
)
from tests.test_web_inbox import chromium, needs_chromium, sign_in, watch_errors

ADMIN = "sergey.volkov"
OLGA = "olga.ivanova"  # wholesale: does not see the sales conversation
TEMPLATES: list[dict[str, Any]] = [
    {
        "name": "order_ready",
        "language": "ru",
        "category": "utility",
        "params": ["номер заказа", "дата"],
        "text": "Заказ {{1}} готов, забрать можно с {{2}}.",
    },
    {
        "name": "follow_up",
        "language": "ru",
        "category": "marketing",
        "params": ["имя"],
        "text": "{{1}}, вы ещё думаете о кухне?",
    },
]
CHANNEL = WhatsAppChannel()
OBJECT = "whatsapp_business_account"


def config(api_base: str, rules: dict[str, Any] | None = None) -> AppConfig:
    base = wa_config(api_base)
    account = wa_account(api_base).model_copy(update={"templates": TEMPLATES})
    cfg = config_with(account, base=base)
    if rules is not None:
        cfg = cfg.model_copy(update={"automation": AutomationFile.model_validate(rules)})
    return cfg


@pytest.fixture(autouse=True)
def wa_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value_ in ENV.items():
        monkeypatch.setenv(name, value_)


@pytest_asyncio.fixture(loop_scope="session")
async def fake() -> AsyncIterator[FakeWhatsApp]:
    async with FakeWhatsApp(TOKEN) as f:
        yield f


@asynccontextmanager
async def service(mongo_uri: str, db_name: str, fake: FakeWhatsApp) -> AsyncIterator[InProcess]:
    fake.requests.clear()
    async with in_process(mongo_uri, db_name, config=config(fake.base)) as svc:
        yield svc


async def api(
    svc: InProcess, method: str, path: str, user: str = ADMIN, body: Any = None
) -> tuple[int, Any]:
    token, _ = await tokens.issue(svc.store, user)
    headers = {"Authorization": f"Bearer {token}"}
    async with svc.client.http.request(
        method, f"{svc.client.base}{path}", headers=headers, json=body
    ) as r:
        return r.status, await r.json(content_type=None)


async def closed_window_conversation(svc: InProcess) -> dict[str, Any]:
    """The customer wrote 25 hours ago: free text may no longer be sent."""
    assert (await post(svc, envelope(value([text("wamid.IN1", "Сколько стоит кухня?")]))))[0] == 200
    await svc.routed()
    conv = await svc.store.conversations.find_one({"channel": "whatsapp"})
    assert conv is not None
    old = datetime.now(UTC) - timedelta(hours=25)
    await svc.store.conversations.update_one(
        {"_id": conv["_id"]}, {"$set": {"last_inbound_at": old}}
    )
    return conv


async def settled(svc: InProcess, message_id: str) -> dict[str, Any]:
    assert svc.service.outbox is not None
    svc.service.outbox.wake.set()

    async def done() -> bool:
        doc = await svc.store.messages.find_one({"_id": message_id})
        return doc is not None and doc["state"] in ("sent", "failed")

    await wait_for(done, timeout=15, message="the template was never sent or failed")
    doc = await svc.store.messages.find_one({"_id": message_id})
    assert doc is not None
    return doc


def template_update(event: str, at: int, name: str = "order_ready", **extra: Any) -> dict[str, Any]:
    """Meta's ``message_template_status_update`` change (entry time = when)."""
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "102290129340398",
                "time": at,
                "changes": [
                    {
                        "field": "message_template_status_update",
                        "value": {
                            "event": event,
                            "message_template_id": 594425479261596,
                            "message_template_name": name,
                            "message_template_language": "ru",
                            "reason": "NONE",
                            **extra,
                        },
                    }
                ],
            }
        ],
    }


# --- the operator ------------------------------------------------------------------------


async def test_operator_sends_a_template_outside_the_window_where_text_is_refused(
    mongo_uri: str, db_name: str, fake: FakeWhatsApp
) -> None:
    async with service(mongo_uri, db_name, fake) as svc:
        conv = await closed_window_conversation(svc)
        path = f"/api/v1/conversations/{conv['_id']}"
        code, listed = await api(svc, "GET", f"{path}/templates")
        assert code == 200, listed
        assert listed["window_open"] is False
        assert [(t["name"], t["status"], t["sendable"]) for t in listed["items"]] == [
            ("order_ready", "approved", True),
            ("follow_up", "approved", True),
        ]
        assert listed["items"][0]["params"] == ["номер заказа", "дата"]
        # Free text is refused at once, and the reason points at templates.
        code, refused = await api(svc, "POST", f"{path}/messages", body={"text": "Ещё актуально?"})
        assert (code, refused["code"]) == (422, "window_closed"), refused
        assert "template" in refused["detail"]
        # Someone who does not see the conversation learns nothing of it.
        body = {"name": "order_ready", "params": ["A-1", "пятницы"]}
        assert (await api(svc, "POST", f"{path}/template", OLGA, body))[0] == 404
        assert (await api(svc, "GET", f"{path}/templates", OLGA))[0] == 404
        # The template goes out; the stored message shows the rendered preview.
        code, queued = await api(svc, "POST", f"{path}/template", body=body)
        assert code == 201, queued
        assert queued["text"] == "Заказ A-1 готов, забрать можно с пятницы."
        sent = await settled(svc, queued["id"])
        assert sent["state"] == "sent"
        assert sent["provider_id"] == fake.sent[-1]
        assert sent["template"] == {
            "name": "order_ready",
            "language": "ru",
            "params": ["A-1", "пятницы"],
        }
        [req] = fake.requests
        assert req.path == f"/v25.0/{PNID}/messages"
        assert req.json() == {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": WA,
            "type": "template",
            "template": {
                "name": "order_ready",
                "language": {"code": "ru"},
                "components": [
                    {
                        "type": "body",
                        "parameters": [
                            {"type": "text", "text": "A-1"},
                            {"type": "text", "text": "пятницы"},
                        ],
                    }
                ],
            },
        }


async def test_unknown_template_or_wrong_parameters_are_refused_at_once(
    mongo_uri: str, db_name: str, fake: FakeWhatsApp
) -> None:
    async with service(mongo_uri, db_name, fake) as svc:
        conv = await closed_window_conversation(svc)
        path = f"/api/v1/conversations/{conv['_id']}/template"
        cases = [
            ({"name": "spring_sale", "params": []}, "template_unknown", "not configured"),
            ({"name": "order_ready", "params": ["A-1"]}, "template_params", "takes 2"),
            ({"name": "order_ready", "params": ["A-1", " "]}, "template_params", "empty"),
            (
                {"name": "order_ready", "language": "en_US", "params": ["A-1", "B"]},
                "template_unknown",
                "(en_US)",
            ),
        ]
        for body, code_, words in cases:
            code, problem = await api(svc, "POST", path, body=body)
            assert (code, problem["code"]) == (422, code_), (body, problem)
            assert words in problem["detail"], problem
        code, problem = await api(svc, "POST", path, body={"name": "x", "extra": 1})
        assert code == 422, problem
        assert await svc.store.messages.count_documents({"direction": "out"}) == 0
        assert fake.requests == []


async def test_status_webhook_pauses_a_template_and_an_older_update_changes_nothing(
    mongo_uri: str, db_name: str, fake: FakeWhatsApp
) -> None:
    async with service(mongo_uri, db_name, fake) as svc:
        conv = await closed_window_conversation(svc)
        path = f"/api/v1/conversations/{conv['_id']}"
        now = int(time.time())
        paused = template_update(
            "PAUSED",
            now,
            other_info={"title": "FIRST_PAUSE", "description": "low quality rating"},
        )
        for payload in (paused, paused, template_update("APPROVED", now - 3600)):
            code, answer = await post(svc, payload)
            assert (code, answer["accepted"]) == (200, []), answer
        code, listed = await api(svc, "GET", f"{path}/templates")
        order_ready = next(t for t in listed["items"] if t["name"] == "order_ready")
        assert (order_ready["status"], order_ready["sendable"]) == ("paused", False)
        assert "low quality rating" in order_ready["reason"]
        body = {"name": "order_ready", "params": ["A-1", "пятницы"]}
        code, problem = await api(svc, "POST", f"{path}/template", body=body)
        assert (code, problem["code"]) == (422, "template_not_approved"), problem
        assert "paused" in problem["detail"]
        # A template queued before the pause (automation, another process) fails in the
        # outbox with the same reason instead of reaching Graph.
        doc = await _queue_template(svc, conv, "order_ready", ["A-2", "субботы"])
        failed = await settled(svc, doc["_id"])
        assert (failed["state"], failed["error_code"]) == ("failed", "template_not_approved")
        # Reinstated: it goes out again.
        assert (await post(svc, template_update("APPROVED", now + 60)))[0] == 200
        code, queued = await api(svc, "POST", f"{path}/template", body=body)
        assert code == 201, queued
        assert (await settled(svc, queued["id"]))["state"] == "sent"
        assert [r.json()["template"]["name"] for r in fake.requests] == ["order_ready"]


async def _queue_template(
    svc: InProcess, conv: dict[str, Any], name: str, params: list[str]
) -> dict[str, Any]:
    from crm_store import outbox

    ref = TemplateRef(name=name, params=params)
    return await outbox.queue(svc.store, conv, text="preview", template=ref.model_dump())


async def test_graph_refusing_a_template_fails_the_message_with_its_reason(
    mongo_uri: str, db_name: str, fake: FakeWhatsApp
) -> None:
    async with service(mongo_uri, db_name, fake) as svc:
        conv = await closed_window_conversation(svc)
        fake.template_refusals["follow_up"] = Failure(
            400, 132001, "Template name does not exist in the translation", "follow_up (ru)"
        )
        try:
            path = f"/api/v1/conversations/{conv['_id']}/template"
            code, queued = await api(
                svc, "POST", path, body={"name": "follow_up", "params": ["Иван"]}
            )
            assert code == 201, queued
            failed = await settled(svc, queued["id"])
        finally:
            fake.template_refusals.clear()
        assert (failed["state"], failed["error_code"]) == ("failed", "whatsapp_132001")
        assert "does not exist" in failed["error"]


# --- automation ------------------------------------------------------------------------


async def test_an_automation_rule_sends_a_template_with_rendered_params(
    mongo_uri: str, db_name: str, fake: FakeWhatsApp
) -> None:
    rules = {
        "rules": [
            {
                "id": "greet-on-whatsapp",
                "on": "message.received",
                "if": {"channel": "whatsapp"},
                "do": [
                    {
                        "send_message": {
                            "template": {"name": "follow_up", "params": ["{contact.name}"]}
                        }
                    },
                    # Not configured (check-config would say so): the action fails, visibly.
                    {"send_message": {"template": {"name": "spring_sale", "params": []}}},
                ],
            }
        ]
    }
    fake.requests.clear()
    cfg = config(fake.base, rules)
    async with robots(mongo_uri, db_name, config=cfg, start=datetime.now(UTC)) as r:
        assert (await post(r.svc, envelope(value([text("wamid.IN9", "Привет")]))))[0] == 200
        await r.run()
        [out] = await r.outbound()
        assert out["automatic"] is True
        assert out["text"] == "Ivan Petrov, вы ещё думаете о кухне?"
        assert out["template"] == {"name": "follow_up", "language": "ru", "params": ["Ivan Petrov"]}
        sent = await settled(r.svc, out["_id"])
        assert sent["state"] == "sent"
        [req] = fake.requests
        parameters = req.json()["template"]["components"][0]["parameters"]
        assert parameters == [{"type": "text", "text": "Ivan Petrov"}]
        [failed] = await r.events("automation.failed")
        assert (failed["data"]["action"], failed["data"]["code"]) == (
            "send_message",
            "template_unknown",
        )
        assert "spring_sale" in failed["data"]["error"]


# --- configuration and the channel's own checks ---------------------------------------


def test_check_config_reports_bad_templates_at_their_line(tmp_path: Path) -> None:
    cfg_dir = copy_seed("furniture", tmp_path / "cfg")
    shipped = (cfg_dir / "channels.yaml").read_text()
    anchor = '      phone_number_id: "106540352242922"\n'
    assert anchor in shipped
    # The shipped example's own templates (checked clean below) are replaced by bad ones.
    start = shipped.index(anchor) + len(anchor)
    end = shipped.index("\n  - channel:", start) + 1
    channels = shipped[:start] + "\n" + shipped[end:]
    assert "templates:" in shipped[start:end]
    at = channels[: channels.index(anchor)].count("\n") + 2  # the line of "templates:"

    def problems_with(templates: str) -> list[str]:
        block = textwrap.indent(textwrap.dedent(templates), "    ")
        (cfg_dir / "channels.yaml").write_text(channels.replace(anchor, anchor + block))
        return [str(p) for p in check_config(cfg_dir)]

    problems = problems_with(
        """\
        templates:
          - name: order_ready
            params: [номер заказа]
            text: "Заказ {{1}} готов к {{2}}"
          - name: Bad Name
            text: "hi"
        """
    )
    assert len(problems) == 2, problems
    assert problems[0].startswith(f"channels.yaml:{at + 1}:"), problems
    assert "placeholders" in problems[0]
    assert problems[1].startswith(f"channels.yaml:{at + 4}:"), problems
    assert "'Bad Name'" in problems[1]
    problems = problems_with(
        """\
        templates:
          - {name: order_ready, params: [номер], text: "Заказ {{1}}"}
          - {name: order_ready, language: en_US, text: "Order ready"}
          - {name: order_ready, params: [n], text: "Заказ {{1}}!"}
        """
    )
    assert problems == [
        f"channels.yaml:{at + 3}:16: accounts[5].templates[2].name: duplicate template "
        f"'order_ready (ru)' (first on line {at + 1})"
    ], problems
    assert check_config(copy_seed("furniture", tmp_path / "clean")) == []


def test_check_config_checks_templates_in_rules(tmp_path: Path) -> None:
    cfg_dir = copy_seed("furniture", tmp_path / "cfg")
    rules = (cfg_dir / "automation.yaml").read_text().rstrip("\n") + textwrap.indent(
        textwrap.dedent(
            """
            - id: wa-templates
              on: lead.created
              do:
                - send_message: {channel: whatsapp, template: {name: order_ready, params: [x]}}
                - send_message: {channel: whatsapp, template: {name: spring_sale}}
                - send_message: {channel: api, template: {name: order_ready, params: [a, b]}}
                - send_message: {template: {name: order_ready, params: ["{contact.nme", b]}}
            """
        ),
        "  ",
    )
    (cfg_dir / "automation.yaml").write_text(rules + "\n")
    found = [str(p) for p in check_config(cfg_dir) if p.file == "automation.yaml"]
    expected = [
        "do[0].send_message.template.params: template 'order_ready' takes 2 params, 1 given",
        "do[1].send_message.template.name: template 'spring_sale' is not configured on "
        "whatsapp account 'main'",
        "do[2].send_message.template: templates are WhatsApp's: use channel whatsapp",
        "do[3].send_message.template.params[0]: an unclosed",
    ]
    for words in expected:
        assert any(words in p for p in found), (words, found)
    assert len(found) == len(expected), found


def outbound(**kw: Any) -> OutboundMessage:
    return OutboundMessage(
        id="out-1",
        channel="whatsapp",
        account="main",
        recipient=f"{PNID}:{WA}",
        text="",
        **kw,
    )


def test_check_outbound_allows_a_template_at_any_time_and_refuses_bad_ones() -> None:
    account = wa_account("http://unused").model_copy(update={"templates": TEMPLATES})
    long_ago = datetime.now(UTC) - timedelta(days=30)
    ok = TemplateRef(name="order_ready", params=["A-1", "B"])
    CHANNEL.check_outbound(account, outbound(template=ok, last_inbound_at=long_ago))
    CHANNEL.check_outbound(account, outbound(template=ok, last_inbound_at=None))
    for ref, code in (
        (TemplateRef(name="nope", params=[]), "template_unknown"),
        (TemplateRef(name="order_ready", params=["A-1"]), "template_params"),
        (TemplateRef(name="order_ready", params=["A-1", "x" * 1025]), "template_params"),
    ):
        with pytest.raises(SendError) as err:
            CHANNEL.check_outbound(account, outbound(template=ref))
        assert (err.value.code, err.value.retryable) == (code, False)
    # No templates configured at all: the reason says so.
    with pytest.raises(SendError) as err:
        CHANNEL.check_outbound(wa_account("http://unused"), outbound(template=ok))
    assert "configured: none" in err.value.detail


# --- the status update reader against mutated payloads (tests/mutations.py) -------------


def test_template_status_mutations_never_raise_and_keep_what_is_readable() -> None:
    account = wa_account("http://unused")
    example = template_update("PAUSED", 1733554800, other_info={"title": "FIRST_PAUSE"})
    kept = 0
    for variant in mutations(example, kind_paths=["entry.0.changes.0.field"]):
        req = WebhookRequest("POST", {}, {}, variant.encode())
        if not isinstance(variant.payload, dict):
            continue  # a body that is not an object is kept unparsed by ingest
        parsed = CHANNEL.read(account, req)
        for verdict in parsed.templates:
            TemplateStatus.model_validate(verdict.model_dump())
        value_ = get(variant.payload, "entry.0.changes.0.value") or {}
        name = get(value_, "message_template_name") if isinstance(value_, dict) else None
        event = get(value_, "event") if isinstance(value_, dict) else None
        field = get(variant.payload, "entry.0.changes.0.field")
        if (
            field == "message_template_status_update"
            and variant.payload.get("object", OBJECT) == OBJECT
            and isinstance(name, str)
            and name.strip()
            and isinstance(event, str)
            and event.strip()
            and isinstance(get(variant.payload, "entry"), list)
        ):
            assert len(parsed.templates) == 1, variant.description
            kept += 1
    assert kept > 50, kept


async def test_template_status_mutations_over_http_are_never_5xx(
    mongo_uri: str, db_name: str, fake: FakeWhatsApp
) -> None:
    example = template_update("REJECTED", int(time.time()), reason="INVALID_FORMAT")
    every = list(mutations(example, kind_paths=["entry.0.changes.0.field"]))
    async with service(mongo_uri, db_name, fake) as svc:
        for variant in every[:: max(1, len(every) // 25)]:
            code, _ = await post(svc, variant.encode())
            assert code == 200, variant.description
        assert await svc.store.messages.count_documents({}) == 0


# --- the web inbox ------------------------------------------------------------------------


@needs_chromium
async def test_the_composer_offers_a_template_when_the_window_is_closed(
    mongo_uri: str, db_name: str, fake: FakeWhatsApp
) -> None:
    expect.set_options(timeout=15_000)
    async with service(mongo_uri, db_name, fake) as svc, chromium() as browser:
        conv = await closed_window_conversation(svc)
        token, _ = await tokens.issue(svc.store, ADMIN)
        page = await (await browser.new_context(locale="en-US")).new_page()
        errors = watch_errors(page)
        await page.goto(f"{svc.client.base}/")
        await sign_in(page, token)
        await page.get_by_test_id("filter-all").click()
        await page.locator(f'[data-testid="conversation-item"][data-id="{conv["_id"]}"]').click()
        offer = page.get_by_test_id("template-offer")
        await expect(offer).to_have_text("Send template")
        await offer.click()
        await expect(page.get_by_test_id("template-preview")).to_have_text(
            "Заказ {{1}} готов, забрать можно с {{2}}."
        )
        await page.get_by_test_id("template-param-1").fill("A-7")
        await page.get_by_test_id("template-param-2").fill("понедельника")
        await expect(page.get_by_test_id("template-preview")).to_have_text(
            "Заказ A-7 готов, забрать можно с понедельника."
        )
        await page.get_by_test_id("template-send").click()
        sent = page.get_by_test_id("message").filter(has_text="Заказ A-7 готов")
        await expect(sent).to_have_attribute("data-direction", "out")
        await expect(sent.get_by_test_id("tick")).to_have_attribute("data-state", "sent")
        [req] = fake.requests
        assert req.json()["template"]["components"][0]["parameters"][0]["text"] == "A-7"
        assert errors == []
