"""The web inbox in a real browser: Debian's chromium driven by Playwright against the
running service (embedded store, real HTTP and WebSocket).

An operator signs in with a token; a site form (a signed generic-API webhook) posted after
the page is open shows up live; they reply and the integration behind the API channel (the
fake in tests/fakes/integration.py) receives it while the delivery tick moves on the page;
they convert the lead, try to move the deal to a stage with a required field and see the
error next to that field, fill it in and move; the WebSocket drops and the page resumes
from its cursor; a Viber reply's tick follows Viber's receipts. Then the narrow layout in
Russian: one pane at a time with back navigation. PBX calls show their record and
recording link. Screenshots go to test-artifacts/web/. The browser tests are skipped,
saying why, only when /usr/bin/chromium is missing.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from playwright.async_api import (
    Browser,
    ConsoleMessage,
    Page,
    Response,
    ViewportSize,
    WebSocketRoute,
    async_playwright,
    expect,
)

from crm_store import tokens
from tests import test_channel_pbx as pbx
from tests.fakes.integration import FakeIntegration
from tests.fakes.viber import FakeViber
from tests.helpers import wait_for
from tests.service import ROOT, api_body, config_with, in_process
from tests.test_api_channel_replies import site
from tests.test_channel_viber import TOKEN_ENV, hook, message, receipt, user, viber_account
from tests.test_webchat_api import CONFIG as WEBCHAT_CONFIG
from tests.test_webchat_api import PAGE
from tests.test_webchat_api import send as visitor_send
from tests.test_webchat_api import session as visitor_session
from tests.test_webchat_ws import frames_until, visitor_ws

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts" / "web"
ADMIN = "sergey.volkov"
IVAN = "ivan.petrov"  # director of sales: sees the site's conversations whoever has them
WIDE = ViewportSize(width=1280, height=800)
NARROW = ViewportSize(width=390, height=844)
VIBER_TOKEN = "4453b6ac12345678-e02c5f12174805f9-daec9cbb5448c51f"
PAGE_URL, REFERRER = str(PAGE["url"]), str(PAGE["referrer"])  # the webchat visitor's page

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's chromium is not installed (/usr/bin/chromium): apt-get install chromium",
)


@pytest.fixture(autouse=True)
def viber_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, VIBER_TOKEN)


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield browser
        finally:
            await browser.close()


def watch_errors(page: Page) -> list[str]:
    """Script errors, console errors and server failures (5xx) while the page runs. The
    refusals the test provokes (401 for a bad token, 422 for a guarded stage) are answers
    the page shows, not errors: the browser's "Failed to load resource" lines are skipped."""
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))

    def console(msg: ConsoleMessage) -> None:
        if msg.type == "error" and not msg.text.startswith("Failed to load resource"):
            errors.append(f"console: {msg.text}")

    def response(resp: Response) -> None:
        if resp.status >= 500:
            errors.append(f"{resp.status} {resp.request.method} {resp.url}")

    page.on("console", console)
    page.on("response", response)
    return errors


async def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


class Sockets:
    """The page's WebSockets, passed through to the service, with a handle on each (to
    drop one as a network failure would, and to see what the reconnect asks for)."""

    def __init__(self) -> None:
        self.routes: list[WebSocketRoute] = []

    def __call__(self, ws: WebSocketRoute) -> None:
        ws.connect_to_server()
        self.routes.append(ws)


async def sign_in(page: Page, token: str) -> None:
    await page.get_by_test_id("token").fill(token)
    await page.get_by_test_id("sign-in").click()
    await expect(page.get_by_test_id("live")).to_have_attribute("data-live", "on")


@needs_chromium
async def test_operator_works_a_conversation_in_the_browser(mongo_uri: str, db_name: str) -> None:
    expect.set_options(timeout=15_000)
    for stale in ARTIFACTS.glob("failure-*.png"):
        stale.unlink()
    async with (
        FakeIntegration("site-secret") as fake,
        FakeViber(VIBER_TOKEN) as viber,
        in_process(
            mongo_uri, db_name, config=config_with(site(fake.url), viber_account(viber.base))
        ) as svc,
        chromium() as browser,
    ):
        token, _ = await tokens.issue(svc.store, IVAN)
        wide = await browser.new_context(viewport=WIDE, locale="en-US")
        page = await wide.new_page()
        errors = watch_errors(page)
        sockets = Sockets()
        await page.route_web_socket(re.compile(r"/api/v1/ws"), sockets)
        try:
            await page.goto(f"{svc.client.base}/")
            await expect(page.get_by_test_id("sign-in")).to_have_text("Sign in")
            await sign_in(page, token)
            await expect(page.get_by_test_id("me")).to_have_text("Ivan Petrov")
            await page.get_by_test_id("filter-all").click()
            await expect(page.get_by_test_id("conversations")).to_contain_text(
                "No conversations here."
            )

            # A site form arrives while the page is open: it appears without a reload.
            body = api_body(
                "web-1", phone="+79001112233", name="Maria Ivanova", text="I need a kitchen, 3 m"
            )
            status, answer = await svc.client.post_api(body)
            assert status == 200, answer
            item = page.get_by_test_id("conversation-item").filter(has_text="Maria Ivanova")
            await expect(item).to_be_visible()
            await expect(item.get_by_test_id("unread")).to_have_text("1")
            await expect(item.locator(".ch")).to_have_attribute("data-channel", "api")
            await item.click()
            messages = page.get_by_test_id("message")
            await expect(messages.filter(has_text="I need a kitchen, 3 m")).to_have_attribute(
                "data-direction", "in"
            )
            await expect(page.get_by_test_id("conversation-title")).to_have_text("Maria Ivanova")
            await expect(item.get_by_test_id("unread")).to_have_count(0)  # opened: read

            # Another message from the customer lands in the open conversation, live;
            # markup in it is text, never markup.
            status, _ = await svc.client.post_api(
                api_body("web-2", phone="+79001112233", text="<b>and</b> a wardrobe")
            )
            assert status == 200
            second = messages.filter(has_text="<b>and</b> a wardrobe")
            await expect(second).to_be_visible()
            await expect(second.locator("b")).to_have_count(0)

            # Reply with a file: the integration receives both; the tick moves on live.
            await page.get_by_test_id("attach").set_input_files(
                {"name": "plan.txt", "mimeType": "text/plain", "buffer": b"wall: 3.2 m"}
            )
            await expect(page.get_by_test_id("pending-file")).to_have_text("plan.txt×")
            await page.get_by_test_id("reply-text").fill("Hello! What width is the wall?")
            await page.get_by_test_id("send").click()
            reply = messages.filter(has_text="Hello! What width is the wall?")
            await expect(reply).to_have_attribute("data-direction", "out")
            await expect(reply.get_by_test_id("attachment")).to_contain_text("plan.txt")
            await expect(reply.get_by_test_id("tick")).to_have_attribute("data-state", "sent")
            await expect(page.get_by_test_id("pending-file")).to_have_count(0)

            async def received() -> bool:
                return fake.texts() == ["Hello! What width is the wall?"]

            await wait_for(received, timeout=15, message="the integration got no reply")
            sent = fake.received[0].body
            assert sent["recipient"] == "phone:+79001112233"
            [attachment] = sent["attachments"]
            assert attachment["name"] == "plan.txt"
            async with svc.client.http.get(attachment["url"]) as resp:
                assert (resp.status, await resp.read()) == (200, b"wall: 3.2 m")

            # An internal note is shown apart and never sent.
            await page.get_by_test_id("as-note").check()
            await page.get_by_test_id("reply-text").fill("Call her after 6 pm")
            await page.get_by_test_id("send").click()
            await expect(messages.filter(has_text="Call her after 6 pm")).to_have_attribute(
                "data-direction", "note"
            )
            await page.get_by_test_id("as-note").uncheck()
            assert len(fake.received) == 1

            # Take it, then the CRM panel: convert the lead, move the deal to a stage
            # that needs a field; the refusal names the field next to its input.
            await page.get_by_test_id("take").click()
            await expect(page.get_by_test_id("conversation-assignee")).to_have_text("Ivan Petrov")
            crm = page.get_by_test_id("crm")
            await expect(crm.get_by_test_id("current-stage")).to_have_attribute("data-stage", "new")
            await crm.get_by_test_id("convert").click()
            stage = crm.get_by_test_id("current-stage")
            await expect(stage).to_have_attribute("data-stage", "estimate")
            await crm.get_by_test_id("stage-select").select_option("approval")
            await crm.get_by_test_id("move-stage").click()
            error = crm.get_by_test_id("field-error-estimate_amount")
            await expect(error).to_have_text("Fill this in to enter “Согласование”.")
            field = crm.get_by_test_id("field-estimate_amount")
            await expect(field).to_have_attribute("aria-invalid", "true")
            await expect(field).to_be_focused()
            await expect(stage).to_have_attribute("data-stage", "estimate")
            await shot(page, "inbox-1280x800")

            await field.fill("120000")
            await crm.get_by_test_id("save-fields").click()
            await expect(error).to_have_count(0)
            await crm.get_by_test_id("stage-select").select_option("approval")
            await crm.get_by_test_id("move-stage").click()
            await expect(stage).to_have_attribute("data-stage", "approval")
            deal = await svc.store.deals.find_one({})
            assert deal is not None
            assert (deal["stage_id"], deal["fields"]["estimate_amount"]) == ("approval", 120000)

            # Switching the language re-renders the open page in Russian and back.
            await page.get_by_test_id("lang").select_option("ru")
            await expect(page.get_by_test_id("send")).to_have_text("Отправить")
            await expect(crm.get_by_test_id("move-stage")).to_have_text("Перевести")
            await page.get_by_test_id("lang").select_option("en")
            await expect(page.get_by_test_id("send")).to_have_text("Send")

            # The connection drops: the page reconnects from the last cursor it had and
            # carries on live.
            assert "after=" not in sockets.routes[0].url
            await sockets.routes[0].close()
            await expect(page.get_by_test_id("live")).to_have_attribute("data-live", "off")
            await expect(page.get_by_test_id("live")).to_have_attribute("data-live", "on")
            resumed = re.search(r"[?&]after=(\d+)", sockets.routes[-1].url)
            assert resumed is not None, sockets.routes[-1].url
            assert int(resumed.group(1)) > 0

            # A Viber customer writes; the reply goes out through the fake Viber API and
            # the tick follows Viber's receipts as they arrive.
            status, _ = await viber.callback(
                hook(svc),
                message(
                    4912661846655238145,
                    {"type": "text", "text": "Is the sofa in stock?"},
                    user("01234567890A=", name="Pavel Orlov"),
                ),
            )
            assert status == 200
            vitem = page.get_by_test_id("conversation-item").filter(has_text="Pavel Orlov")
            await expect(vitem.locator(".ch")).to_have_attribute("data-channel", "viber")
            await vitem.click()
            await expect(page.get_by_test_id("conversation-title")).to_have_text("Pavel Orlov")
            await page.get_by_test_id("reply-text").fill("Yes, in grey and blue")
            await page.get_by_test_id("reply-text").press("Control+Enter")
            vreply = messages.filter(has_text="Yes, in grey and blue")
            tick = vreply.get_by_test_id("tick")
            await expect(tick).to_have_attribute("data-state", "sent")
            [out] = [r for r in viber.sent() if r.json.get("text") == "Yes, in grey and blue"]
            assert out.json["receiver"] == "01234567890A="
            stored = await svc.store.messages.find_one({"text": "Yes, in grey and blue"})
            assert stored is not None
            for event, state in (("delivered", "delivered"), ("seen", "read")):
                status, _ = await viber.callback(hook(svc), receipt(event, stored["provider_id"]))
                assert status == 200
                await expect(tick).to_have_attribute("data-state", state)

            # Hand it to Anna and snooze it: it leaves the list of open conversations.
            await page.get_by_test_id("assign").select_option("anna.smirnova")
            assignee = page.get_by_test_id("conversation-assignee")
            await expect(assignee).to_have_text("Anna Smirnova")
            await page.get_by_test_id("snooze").select_option("1h")
            status_label = page.get_by_test_id("conversation-status")
            await expect(status_label).to_have_attribute("data-status", "snoozed")
            await expect(vitem).to_have_count(0)
            viber_conv = await svc.store.conversations.find_one({"channel": "viber"})
            assert viber_conv is not None
            assert (viber_conv["assignee_id"], viber_conv["status"]) == ("anna.smirnova", "snoozed")
            assert errors == []
        except BaseException:
            await shot(page, "failure-1280x800")
            raise

        # The narrow screen, in Russian (the browser's language): one pane at a time.
        narrow = await browser.new_context(viewport=NARROW, locale="ru-RU", is_mobile=True)
        phone = await narrow.new_page()
        errors = watch_errors(phone)
        try:
            await phone.goto(f"{svc.client.base}/")
            await expect(phone.get_by_test_id("sign-in")).to_have_text("Войти")
            await phone.get_by_test_id("token").fill("omr_not-a-token")
            await phone.get_by_test_id("sign-in").click()
            await expect(phone.get_by_test_id("login-error")).to_contain_text("Токен неизвестен")
            await sign_in(phone, token)
            items = phone.get_by_test_id("conversation-item")
            await phone.get_by_test_id("status-filter").select_option("")
            await expect(items).to_have_count(2)  # all: Maria's and the snoozed Viber one
            await phone.get_by_test_id("filter-mine").click()
            await expect(items).to_have_count(1)  # mine: the one Ivan took
            item = items.filter(has_text="Maria Ivanova")
            await expect(item).to_be_visible()
            await shot(phone, "list-390x844")
            await item.click()
            await expect(phone.get_by_test_id("conversations")).to_be_hidden()
            outbound = phone.get_by_test_id("message").filter(has_text="What width")
            await expect(outbound.get_by_test_id("tick")).to_have_attribute("title", "отправлено")
            await shot(phone, "conversation-390x844")
            await phone.get_by_test_id("open-crm").click()
            await expect(phone.get_by_test_id("crm")).to_be_visible()
            await expect(phone.get_by_test_id("messages")).to_be_hidden()
            await expect(phone.get_by_test_id("current-stage")).to_have_text("Согласование")
            await shot(phone, "crm-390x844")
            await phone.go_back()
            await expect(phone.get_by_test_id("messages")).to_be_visible()
            await phone.go_back()
            await expect(phone.get_by_test_id("conversations")).to_be_visible()
            await phone.get_by_test_id("sign-out").click()
            await expect(phone.get_by_test_id("token")).to_be_visible()
            assert await phone.evaluate("localStorage.getItem('omniroute.token')") is None
            assert errors == []
        except BaseException:
            await shot(phone, "failure-390x844")
            raise


@needs_chromium
async def test_a_form_conversation_says_it_cannot_reply_and_a_guard_asks_for_its_field(
    mongo_uri: str, db_name: str
) -> None:
    """The example's site form has no way back to the customer: the page says so in
    operator words before anyone types, and the box writes internal notes only. A stage
    whose entry condition is unmet ("the payment due date is set") offers an input for the
    field it tests."""
    expect.set_options(timeout=15_000)
    async with in_process(mongo_uri, db_name) as svc, chromium() as browser:
        token, _ = await tokens.issue(svc.store, IVAN)
        auth = {"Authorization": f"Bearer {token}"}
        api = f"{svc.client.base}/api/v1"
        status, _ = await svc.client.post_api(
            api_body("web-f1", phone="+79001113344", name="Oleg Smirnov", text="A kitchen, 4 m")
        )
        assert status == 200
        await svc.routed()
        conv = await svc.store.conversations.find_one({})
        lead = await svc.store.leads.find_one({})
        assert conv is not None
        assert lead is not None
        # The API tells before anyone types, in words for the operator.
        async with svc.client.http.get(f"{api}/conversations/{conv['_id']}", headers=auth) as r:
            detail = await r.json()
        assert (detail["can_reply"], detail["reply_blocked"]) == (False, "form_cannot_reply")
        assert "site form" in detail["reply_blocked_reason"]
        # An order in "approval" with the contract and amount filled, not the due date.
        async with svc.client.http.post(
            f"{api}/leads/{lead['_id']}/convert", headers=auth, json={}
        ) as r:
            deal = await r.json()
            assert r.status == 201, deal
        fields = {"estimate_amount": 150000, "contract_number": "C-12", "amount": 150000}
        async with svc.client.http.patch(
            f"{api}/deals/{deal['id']}", headers=auth, json={"fields": fields}
        ) as r:
            assert r.status == 200, await r.text()
        async with svc.client.http.post(
            f"{api}/deals/{deal['id']}/stage", headers=auth, json={"stage_id": "approval"}
        ) as r:
            assert r.status == 200, await r.text()

        page = await (await browser.new_context(viewport=WIDE, locale="en-US")).new_page()
        errors = watch_errors(page)
        try:
            await page.goto(f"{svc.client.base}/")
            await sign_in(page, token)
            await page.get_by_test_id("filter-all").click()
            await page.get_by_test_id("conversation-item").filter(has_text="Oleg Smirnov").click()
            blocked = page.get_by_test_id("reply-blocked")
            await expect(blocked).to_be_visible()
            await expect(blocked).to_contain_text("came from a site form")
            await expect(blocked).to_contain_text("by phone or e-mail")
            text = await blocked.inner_text()
            for key in ("reply_url", "settings", "channel_cannot_send", "api/site"):
                assert key not in text
            note_box = page.get_by_test_id("as-note")
            await expect(note_box).to_be_checked()
            await expect(note_box).to_be_disabled()
            await expect(page.get_by_test_id("send")).to_have_text("Save note")
            await page.get_by_test_id("reply-text").fill("Call back on Monday")
            await page.get_by_test_id("send").click()
            messages = page.get_by_test_id("message")
            await expect(messages.filter(has_text="Call back on Monday")).to_have_attribute(
                "data-direction", "note"
            )
            assert await svc.store.messages.count_documents({"direction": "out"}) == 0

            # The guard's condition names its field: an input is offered, with what it needs.
            crm = page.get_by_test_id("crm")
            stage = crm.get_by_test_id("current-stage")
            await expect(stage).to_have_attribute("data-stage", "approval")
            await crm.get_by_test_id("stage-select").select_option("awaiting_payment")
            await crm.get_by_test_id("move-stage").click()
            error = crm.get_by_test_id("field-error-payment_due_date")
            await expect(error).to_have_text("Needed: the payment due date is set.")
            field = crm.get_by_test_id("field-payment_due_date")
            await expect(field).to_have_attribute("aria-invalid", "true")
            await expect(field).to_be_focused()
            await shot(page, "guard-condition-1280x800")
            await field.fill("2025-06-20")
            await crm.get_by_test_id("save-fields").click()
            await expect(error).to_have_count(0)
            await crm.get_by_test_id("stage-select").select_option("awaiting_payment")
            await crm.get_by_test_id("move-stage").click()
            await expect(stage).to_have_attribute("data-stage", "awaiting_payment")
            # In Russian the notice speaks Russian.
            await page.get_by_test_id("lang").select_option("ru")
            await expect(page.get_by_test_id("reply-blocked")).to_contain_text("формы сайта")
            assert errors == []
        except BaseException:
            await shot(page, "failure-form-1280x800")
            raise


@needs_chromium
async def test_calls_show_their_record_and_recording(
    mongo_uri: str, db_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    expect.set_options(timeout=15_000)
    monkeypatch.setenv(pbx.SECRET_ENV, pbx.SECRET)
    async with pbx.running(mongo_uri, db_name) as (svc, fake), chromium() as browser:
        await pbx.lifecycle(svc, fake, pbx.answered("c-1"))
        await pbx.lifecycle(svc, fake, pbx.unanswered("c-2", from_="+79007654321"))
        token, _ = await tokens.issue(svc.store, ADMIN)
        page = await (await browser.new_context(viewport=WIDE, locale="en-US")).new_page()
        errors = watch_errors(page)
        try:
            await page.goto(f"{svc.client.base}/")
            await sign_in(page, token)
            await page.get_by_test_id("filter-all").click()
            await page.get_by_test_id("status-filter").select_option("")
            items = page.get_by_test_id("conversation-item")
            await expect(items).to_have_count(2)
            await expect(items.first.locator(".ch")).to_have_attribute("data-channel", "pbx")
            messages = page.get_by_test_id("message")
            missed = answered = False
            for n in range(2):
                await items.nth(n).click()
                await expect(messages).to_have_count(1)
                text = await messages.first.inner_text()
                if "Missed call" in text:
                    await expect(messages.first.get_by_test_id("recording")).to_have_count(0)
                    missed = True
                else:
                    recording = messages.first.get_by_test_id("recording")
                    await expect(recording).to_have_attribute(
                        "href", "https://pbx.example.com/rec/c-1.wav"
                    )
                    await expect(messages.first).to_contain_text("Call · 1:35 · answered")
                    answered = True
            assert missed
            assert answered
            assert errors == []
        except BaseException:
            await shot(page, "failure-calls-1280x800")
            raise


@needs_chromium
async def test_a_website_visitor_is_shown_live_with_the_page_and_campaign(
    mongo_uri: str, db_name: str
) -> None:
    """A visitor (the webchat HTTP API and WebSocket, driven from here) writes and types:
    the operator's page shows the conversation, the visitor online and typing, the page,
    referrer and UTM (on the lead too); the operator's typing reaches the visitor's socket
    and stops with the reply; the visitor reads it ("has read"), then leaves ("offline")."""
    expect.set_options(timeout=15_000)
    async with (
        in_process(mongo_uri, db_name, config=WEBCHAT_CONFIG) as svc,
        chromium() as browser,
    ):
        token, _ = await tokens.issue(svc.store, IVAN)
        visitor = await visitor_session(svc, name="Olga Visitor")
        status, answer, _ = await visitor_send(svc, visitor["visitor_token"], "w-1")
        assert status == 200, answer
        markup = '<img src=x onerror="document.title=1">and a <b>sink</b>'
        status, answer, _ = await visitor_send(svc, visitor["visitor_token"], "w-2", markup)
        assert status == 200, answer
        ws = await visitor_ws(svc, visitor["visitor_token"])
        page = await (await browser.new_context(viewport=WIDE, locale="en-US")).new_page()
        errors = watch_errors(page)
        try:
            await page.goto(f"{svc.client.base}/")
            await sign_in(page, token)
            await page.get_by_test_id("filter-all").click()
            item = page.get_by_test_id("conversation-item").filter(has_text="Olga Visitor")
            await expect(item.locator(".ch")).to_have_attribute("data-channel", "webchat")
            await item.click()
            messages = page.get_by_test_id("message")
            sink = messages.filter(has_text="and a <b>sink</b>")
            await expect(sink).to_contain_text('<img src=x onerror="document.title=1">')
            await expect(sink.locator("img, b")).to_have_count(0)

            bar = page.get_by_test_id("visitor")
            presence = bar.get_by_test_id("visitor-presence")
            await expect(presence).to_have_attribute("data-state", "online")
            await expect(presence).to_have_text("online")
            await expect(bar.get_by_test_id("visit-page")).to_contain_text(PAGE_URL)
            await expect(bar.get_by_test_id("visit-page").locator("a")).to_have_attribute(
                "href", PAGE_URL
            )
            await expect(bar.get_by_test_id("visit-referrer")).to_contain_text(REFERRER)
            utm = bar.get_by_test_id("visit-utm")
            await expect(utm).to_contain_text("utm_source=yandex")
            await expect(utm).to_contain_text("utm_campaign=kitchens-spring")
            # The lead keeps where it came from.
            lead_visit = page.get_by_test_id("crm").get_by_test_id("lead-visit")
            await expect(lead_visit.get_by_test_id("visit-page")).to_contain_text(PAGE_URL)
            await expect(lead_visit.get_by_test_id("visit-utm")).to_contain_text("utm_medium=cpc")

            # The visitor types, then stops.
            typing = bar.get_by_test_id("visitor-typing")
            await expect(typing).to_have_count(0)
            await ws.send_str('{"type": "typing", "on": true}')
            await expect(typing).to_have_text(" · typing…")
            await shot(page, "webchat-visitor-1280x800")
            await ws.send_str('{"type": "typing", "on": false}')
            await expect(typing).to_have_count(0)

            # The operator types: the visitor's socket hears it; sending stops it.
            await page.get_by_test_id("reply-text").press_sequentially("We do, any le")
            got = await frames_until(ws, lambda f: f["type"] == "typing")
            assert got[-1] == {"type": "typing", "on": True}
            await page.get_by_test_id("reply-text").press_sequentially("ngth")
            await page.get_by_test_id("send").click()
            got = await frames_until(
                ws, lambda f: f["type"] == "message" and f["direction"] == "out"
            )
            assert {"type": "typing", "on": False} in got, got
            reply = got[-1]
            assert reply["text"] == "We do, any length"

            # The visitor reads it: the tick and the bar say so.
            read = bar.get_by_test_id("visitor-read")
            await expect(read).to_have_count(0)
            await ws.send_str(f'{{"type": "read", "up_to": "{reply["id"]}"}}')
            sent = messages.filter(has_text="We do, any length")
            await expect(sent.get_by_test_id("tick")).to_have_attribute("data-state", "read")
            await expect(read).to_have_text(" · has read your reply")

            # The visitor leaves.
            await ws.close()
            await expect(presence).to_have_attribute("data-state", "offline")
            await expect(presence).to_have_text("offline")
            await shot(page, "webchat-offline-1280x800")
            assert errors == []
        except BaseException:
            await shot(page, "failure-webchat-1280x800")
            raise
        finally:
            await ws.close()


async def test_the_page_and_its_files_are_served_under_a_strict_policy(
    mongo_uri: str, db_name: str
) -> None:
    async with in_process(mongo_uri, db_name) as svc:
        http, base = svc.client.http, svc.client.base
        async with http.get(f"{base}/") as resp:
            assert resp.status == 200
            assert resp.content_type == "text/html"
            assert '<script type="module" src="/static/app.js">' in await resp.text()
            csp = resp.headers["Content-Security-Policy"]
            assert "script-src 'self'" in csp
            assert "default-src 'none'" in csp
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
        for name, kind in (("app.js", "text/javascript"), ("app.css", "text/css")):
            async with http.get(f"{base}/static/{name}") as resp:
                assert (resp.status, resp.content_type) == (200, kind)
        for path in ("/static/index.html", "/static/..%2Fweb_page.py", "/static/nope.js"):
            async with http.get(f"{base}{path}") as resp:
                assert resp.status == 404, path
