"""The website live-chat widget (inbox/web/widget.js) in a real browser: Debian's chromium
driven by Playwright, two origins on loopback — a customer's site (a tiny aiohttp app that
sends a strict Content-Security-Policy and a stylesheet that tries to restyle everything)
and the chat server. The chat server here is tests/fakes/webchat_server.py, a stand-in
built to the wire contract (docs/channels/webchat-protocol.md), so these tests prove the
widget's side: Shadow DOM isolation under a strict CSP, the pre-chat form, optimistic send
retried with the same client id after a cut (stored once), pending messages kept across a
reload, history after a reload, text never rendered as HTML, typing and read both ways,
reconnect from the cursor, the long-poll fallback, the offline form, a refused origin,
identity fields passed to the session, keyboard and phone layout.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import struct
import subprocess
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    FilePayload,
    Page,
    Route,
    ViewportSize,
    async_playwright,
    expect,
)

from channels.identity import messenger_key
from config.models import AppConfig
from crm_store import tokens
from inbox.webchat_http import CLOCK_ENV
from inbox.webchat_hub import visitor_conversation
from tests.fakes.webchat_server import FakeWebchat, Visitor
from tests.helpers import free_port, wait_for
from tests.service import InProcess, config_with, in_process
from tests.test_webchat_api import MAIN_SITE, ident_hash

CHROMIUM = Path("/usr/bin/chromium")
ACCOUNT = "main-site"
FAKE_SECRET = "webchat-main-site-secret"
ACCENT = "rgb(31, 111, 235)"  # "#1f6feb"
WIDE = ViewportSize(width=1280, height=800)
PHONE = ViewportSize(width=390, height=844)
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"]

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's chromium is not installed (/usr/bin/chromium): apt-get install chromium",
)

HOST_CSS = """
button, div, p, span, textarea, input { background: rgb(255, 0, 0) !important;
  font-size: 40px !important; color: rgb(0, 255, 0) !important; display: block; }
"""
HOST_JS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.__violations.push(e.violatedDirective + " " + e.blockedURI);
});
"""


@dataclass
class HostSite:
    """The customer's site: one page embedding the widget from the chat server."""

    chat_base: str
    lang: str = "ru"
    script_data: str = ""
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, query: str = "") -> str:
        return f"{self.origin}/kitchens{query}"

    async def __aenter__(self) -> HostSite:
        app = web.Application()
        app.router.add_get("/kitchens", self._page)
        app.router.add_get("/host.css", self._static(HOST_CSS, "text/css"))
        app.router.add_get("/host.js", self._static(HOST_JS, "text/javascript"))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _static(self, text: str, ctype: str) -> Any:
        async def handler(_: web.Request) -> web.Response:
            return web.Response(text=text, content_type=ctype)

        return handler

    async def _page(self, _: web.Request) -> web.Response:
        chat, ws = self.chat_base, self.chat_base.replace("http://", "ws://")
        # the CSP docs/channels/webchat.md tells a site to add, and nothing else for us
        csp = (
            f"default-src 'none'; script-src 'self' {chat}; connect-src {chat} {ws}; "
            f"img-src {chat}; style-src 'self'"
        )
        html = (
            f'<!doctype html><html lang="{self.lang}"><head><meta charset="utf-8">'
            '<title>Kitchens to order</title><link rel="stylesheet" href="/host.css">'
            '<script src="/host.js"></script></head><body><h1>Kitchens</h1>'
            f'<script src="{chat}/widget/{ACCOUNT}.js" {self.script_data} async></script>'
            "</body></html>"
        )
        return web.Response(
            text=html, content_type="text/html", headers={"Content-Security-Policy": csp}
        )


@asynccontextmanager
async def scene(
    *, fake_origins: list[str] | None = None, viewport: ViewportSize = WIDE, **host: Any
) -> AsyncIterator[tuple[FakeWebchat, HostSite, Page, BrowserContext]]:
    async with (
        FakeWebchat(ACCOUNT, FAKE_SECRET, origins=[]) as fake,
        HostSite(fake.base, **host) as site,
    ):
        fake.origins = fake_origins if fake_origins is not None else [site.origin]
        async with async_playwright() as pw:
            browser: Browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
            try:
                ctx = await browser.new_context(viewport=viewport)
                page = await ctx.new_page()
                yield fake, site, page, ctx
            finally:
                await browser.close()


def console_errors(page: Page) -> list[str]:
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))

    def console(msg: ConsoleMessage) -> None:
        if msg.type == "error" and not msg.text.startswith("Failed to load resource"):
            errors.append(msg.text)

    page.on("console", console)
    return errors


async def visitor_of(fake: FakeWebchat) -> Visitor:
    async def one() -> bool:
        return len(fake.visitors) == 1

    await wait_for(one, message="no session")
    return fake.only_visitor()


async def pending_in_storage(page: Page) -> list[str]:
    raw = await page.evaluate(f"localStorage.getItem('omniroute-webchat:{ACCOUNT}')")
    return [p["text"] for p in json.loads(raw or "{}").get("pending", [])]


@needs_chromium
async def test_a_visitor_chats_through_cuts_reconnects_and_reloads() -> None:
    expect.set_options(timeout=15_000)
    async with scene() as (fake, site, page, ctx):
        errors = console_errors(page)
        await page.goto(site.url("?utm_source=yandex&utm_campaign=kitchens"))
        launcher = page.locator("[data-part=launcher]")
        # host styles do not reach into the shadow root; ours apply under the strict CSP
        await expect(launcher).to_have_css("background-color", ACCENT)
        await expect(launcher).to_have_css("font-size", "15px")
        await expect(launcher).to_have_attribute("aria-label", "Открыть чат")

        await launcher.click()
        dialog = page.get_by_role("dialog")
        await expect(dialog).to_be_visible()
        await expect(page.locator("[data-part=greeting]")).to_have_text("Здравствуйте! Чем помочь?")
        # the pre-chat form: phone required
        await page.locator("[data-part=submit]").click()
        await expect(page.locator("[data-part=status]")).to_contain_text("Телефон")
        await page.locator("[data-field=phone]").fill("+7 916 123-45-67")
        await page.locator("[data-field=name]").fill("Анна")
        await page.locator("[data-part=submit]").click()
        visitor = await visitor_of(fake)
        first = visitor.sessions[-1]
        assert first["phone"] == "+7 916 123-45-67"
        assert first["name"] == "Анна"
        assert first["page"]["utm"] == {"source": "yandex", "campaign": "kitchens"}
        assert first["page"]["url"].startswith(site.url())

        # a message with markup is text; Enter sends
        box = page.locator("[data-part=input]")
        await expect(box).to_be_focused()
        await box.fill('<img src=x onerror="window.__pwned=1">Нужна кухня')
        await box.press("Enter")
        mine = page.locator(".msg.in")
        await expect(mine).to_have_count(1)
        await expect(mine.first).to_have_attribute("data-state", "sent")
        await expect(mine.first).to_contain_text('<img src=x onerror="window.__pwned=1">')
        assert await page.locator("[data-part=log] img").count() == 0
        assert len(visitor.stored) == 1

        # the operator: typing, a reply with markup, read — and the visitor's read and typing
        await fake.typing(visitor, True)
        await expect(page.locator("[data-part=typing]")).to_have_text("Оператор печатает…")
        reply_id = await fake.reply(visitor, "<b>Здравствуйте!</b> Какой размер?")
        await expect(page.locator(".msg.out")).to_contain_text("<b>Здравствуйте!</b>")
        await expect(page.locator("[data-part=typing]")).to_have_text("")
        assert await page.locator("[data-part=log] b").count() == 0

        async def visitor_read() -> bool:
            return {"type": "read", "up_to": reply_id} in visitor.frames_in

        await wait_for(visitor_read, message="the widget did not report read")
        await fake.read(visitor, "in-1")
        await expect(mine.first).to_have_attribute("data-state", "read")
        await box.press_sequentially("3 м")

        async def visitor_typing() -> bool:
            return {"type": "typing", "on": True} in visitor.frames_in

        await wait_for(visitor_typing, message="the widget did not send typing")
        await box.fill("")

        # the socket drops; a reply while it is down arrives after the reconnect from the cursor
        cursor_before = visitor.cursor()
        connects = len(fake.ws_after)
        await fake.drop_sockets()
        await fake.reply(visitor, "Пока вас не было")
        await expect(page.locator(".msg.out")).to_have_count(2)
        assert fake.ws_after[connects] == cursor_before

        # the network cuts after the server stored the message: retried, stored once
        cuts = [1]

        async def cut_after_store(route: Route) -> None:
            if route.request.method == "POST" and cuts[0]:
                cuts[0] -= 1
                await route.fetch()
                await route.abort("connectionreset")
            else:
                await route.continue_()

        await page.route("**/webchat/*/messages", cut_after_store)
        await box.fill("Перезвоните мне")
        await box.press("Enter")
        await expect(mine).to_have_count(2)
        await expect(mine.nth(1)).to_have_attribute("data-state", "sent")
        client_id = str(await mine.nth(1).get_attribute("data-client-id"))

        async def retried() -> bool:  # until the server answers, even if the feed showed it
            return visitor.posts.count(client_id) == 2

        await wait_for(retried, message="the cut send was not retried with its client id")
        assert [b["text"] for b in visitor.stored.values()].count("Перезвоните мне") == 1
        await page.unroute("**/webchat/*/messages")

        # offline in the browser: the bubble waits, then goes when the network is back
        await ctx.set_offline(True)
        await box.fill("Вы тут?")
        await box.press("Enter")
        await expect(mine.nth(2)).to_have_attribute("data-state", "sending")
        assert await pending_in_storage(page) == ["Вы тут?"]
        await ctx.set_offline(False)
        await expect(mine.nth(2)).to_have_attribute("data-state", "sent")
        assert await pending_in_storage(page) == []

        # a send that never reaches the server survives a reload and goes out after it
        await page.route("**/webchat/*/messages", lambda route: route.abort())
        await box.fill("Отправлю после перезагрузки")
        await box.press("Enter")
        await expect(mine.nth(3)).to_have_attribute("data-state", "sending")
        assert await pending_in_storage(page) == ["Отправлю после перезагрузки"]
        await page.unroute("**/webchat/*/messages")
        await page.reload()
        await launcher.click()
        # history kept: the same visitor, every message once, in order, no pre-chat again
        await expect(page.locator(".msg")).to_have_count(6)
        await expect(page.locator(".msg.in").nth(3)).to_have_attribute("data-state", "sent")
        texts = await page.locator(".msg").evaluate_all("els => els.map(e => e.dataset.direction)")
        assert texts == ["in", "out", "out", "in", "in", "in"]
        assert len(fake.visitors) == 1
        assert [b["text"] for b in visitor.stored.values()][-1] == "Отправлю после перезагрузки"
        assert await page.locator("[data-part=prechat-form]").count() == 0

        # keyboard: Tab stays inside the open dialog, in order; Escape closes it and the
        # focus goes back to the launcher
        await page.locator("[data-part=input]").focus()
        order = []
        for _ in range(5):
            await page.keyboard.press("Tab")
            order.append(
                await page.evaluate(
                    "document.querySelector('[data-omniroute-webchat]')"
                    ".shadowRoot.activeElement.dataset.part"
                )
            )
        assert order == ["send", "close", "log", "attach", "input"]
        await page.keyboard.press("Escape")
        await expect(dialog).to_be_hidden()
        await expect(launcher).to_be_focused()
        await expect(launcher).to_have_attribute("aria-expanded", "false")

        assert await page.evaluate("window.__pwned") is None
        assert await page.evaluate("window.__violations") == []
        assert errors == []


@needs_chromium
async def test_long_poll_when_sockets_fail_and_the_phone_layout() -> None:
    expect.set_options(timeout=20_000)
    async with scene(viewport=PHONE) as (fake, site, page, _):
        fake.prechat = "name:off phone:off email:off"
        fake.ws_enabled = False
        await page.goto(site.url())
        await page.locator("[data-part=launcher]").click()
        panel = page.get_by_role("dialog")
        await expect(panel).to_be_visible()
        box = await panel.bounding_box()
        assert box is not None
        assert (box["width"], box["height"]) == (390, 844)
        await page.locator("[data-part=input]").fill("Есть доставка?")
        await page.locator("[data-part=send]").click()
        visitor = await visitor_of(fake)
        await expect(page.locator(".msg.in")).to_have_attribute("data-state", "sent")

        async def gave_up_on_sockets() -> bool:
            return len(fake.ws_after) >= 2

        await wait_for(gave_up_on_sockets, timeout=15, message="the widget never retried")
        await fake.reply(visitor, "Да, по Москве бесплатно")
        await expect(page.locator(".msg.out")).to_have_text(re.compile("по Москве бесплатно"))


@needs_chromium
async def test_offline_form_in_english() -> None:
    expect.set_options(timeout=15_000)
    async with scene(lang="en") as (fake, site, page, _):
        fake.online = False
        fake.next_open_at = "2026-12-08T06:00:00Z"
        await page.goto(site.url())
        await page.locator("[data-part=launcher]").click()
        await expect(page.locator("[data-part=offline-note]")).to_contain_text("We are offline.")
        await expect(page.locator("[data-part=offline-note]")).to_contain_text("Back online:")
        await page.locator("[data-field=text]").fill("Please call me about a kitchen")
        await page.locator("[data-part=submit]").click()
        await expect(page.locator("[data-part=status]")).to_contain_text("Phone")
        await page.locator("[data-field=phone]").fill("+7 916 000-00-01")
        await page.locator("[data-part=submit]").click()
        await expect(page.locator("[data-part=answer-by]")).to_contain_text(
            "Thank you! We will answer by 8 Dec 2026"
        )
        visitor = await visitor_of(fake)
        [left] = visitor.stored.values()
        assert left["text"] == "Please call me about a kitchen"
        assert left["phone"] == "+7 916 000-00-01"


@needs_chromium
async def test_a_site_not_in_the_origins_gets_nothing() -> None:
    async with scene(fake_origins=["https://www.example.ru"]) as (fake, site, page, _):
        warnings: list[str] = []
        page.on("console", lambda m: warnings.append(m.text) if m.type == "warning" else None)
        await page.goto(site.url())

        async def refused() -> bool:
            return "/webchat/main-site/config" in fake.refused

        await wait_for(refused, message="the config request never came")

        async def warned() -> bool:
            return any("not available" in w for w in warnings)

        await wait_for(warned, message="the widget did not give up")
        assert await page.locator("[data-omniroute-webchat]").count() == 0
        assert fake.visitors == {}


@needs_chromium
async def test_identity_fields_reach_the_session() -> None:
    right = hmac.new(FAKE_SECRET.encode(), b"user-42", hashlib.sha256).hexdigest()
    wrong = "0" * 64
    for given, verified in ((wrong, False), (right, True)):
        data = f'data-identifier="user-42" data-identifier-hash="{given}" data-email="a@b.ru"'
        async with scene(script_data=data) as (fake, site, page, _):
            fake.prechat = "name:optional phone:required email:optional"
            await page.goto(site.url())
            await page.locator("[data-part=launcher]").click()
            # an identified visitor skips the pre-chat form
            await expect(page.locator("[data-part=input]")).to_be_visible()
            visitor = await visitor_of(fake)
            sent = visitor.sessions[0]
            assert (sent["identifier"], sent["identifier_hash"], sent["email"]) == (
                "user-42",
                given,
                "a@b.ru",
            )
            assert visitor.verified is verified


def test_identity_snippets_compute_the_same_hash() -> None:
    """The Python and Node snippets of docs/channels/webchat.md against a fixed vector."""
    doc = (Path(__file__).resolve().parent.parent / "docs/channels/webchat.md").read_text()
    py = re.search(r"```python\n(.*?)```", doc, re.S)
    js = re.search(r"```javascript\n(.*?)```", doc, re.S)
    assert py
    assert js
    want = hmac.new(b"s3cret", b"user-42", hashlib.sha256).hexdigest()
    ns: dict[str, Any] = {}
    exec(py.group(1), ns)
    assert ns["identifier_hash"]("user-42", "s3cret") == want
    node = Path("/usr/bin/node")
    if not node.exists():
        pytest.skip("node is not installed")
    out = subprocess.run(
        [str(node), "-e", js.group(1) + "\nconsole.log(identifierHash('user-42', 's3cret'));"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert out.stdout.strip() == want


# ---- against the running service ---------------------------------------------------------
# The same widget against omniroute itself (embedded store, the example config's account
# main-site with its origins set to the host page): the issue's browser list.

ANNA = "anna.smirnova"  # a manager of the site's sales line
MONDAY_10 = "2025-05-19T10:00:00+03:00"  # working hours
SATURDAY = "2025-05-17T12:00:00+03:00"  # off: next working start Monday 09:00 MSK


def service_config(*origins: str) -> AppConfig:
    settings = {**MAIN_SITE.settings, "origins": " ".join(origins)}
    return config_with(MAIN_SITE.model_copy(update={"settings": settings}))


@asynccontextmanager
async def service_scene(
    mongo_uri: str, db_name: str, *, operator_online: bool = True, **host: Any
) -> AsyncIterator[tuple[InProcess, HostSite, Browser]]:
    async with HostSite("", **host) as site:
        cfg = service_config(site.origin)
        async with in_process(mongo_uri, db_name, cfg) as svc, async_playwright() as pw:
            site.chat_base = svc.client.base
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
            try:
                if not operator_online:
                    yield svc, site, browser
                    return
                token, _ = await tokens.issue(svc.store, ANNA)
                url = f"{svc.client.base}/api/v1/ws?token={token}"
                async with svc.client.http.ws_connect(url) as ws:
                    await ws.receive(timeout=10)  # joined: the line has an operator online
                    yield svc, site, browser
            finally:
                await browser.close()


def tiny_png() -> bytes:
    """A real 1×1 PNG (so that the browser can draw it)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\x1f\x6f\xeb")
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


async def visitor_id_in(page: Page) -> str:
    raw = await page.evaluate(f"localStorage.getItem('omniroute-webchat:{ACCOUNT}')")
    token = json.loads(raw or "{}").get("token") or ""
    assert token.startswith("v1."), raw
    return str(token.split(".")[1])


async def as_operator(svc: InProcess, path: str, body: dict[str, Any]) -> dict[str, Any]:
    token, _ = await tokens.issue(svc.store, ANNA)
    async with svc.client.http.post(
        f"{svc.client.base}{path}",
        data=json.dumps(body),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    ) as resp:
        data: dict[str, Any] = await resp.json()
        assert resp.status in (200, 201), data
        return data


@needs_chromium
async def test_service_visitor_writes_lead_operator_replies_reload_and_a_cut_send(
    mongo_uri: str, db_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    expect.set_options(timeout=20_000)
    monkeypatch.setenv(CLOCK_ENV, MONDAY_10)
    async with service_scene(mongo_uri, db_name) as (svc, site, browser):
        page = await (await browser.new_context(viewport=WIDE)).new_page()
        errors = console_errors(page)
        await page.goto(site.url("?utm_source=yandex&utm_campaign=kitchens"))
        launcher = page.locator("[data-part=launcher]")
        await expect(launcher).to_have_css("background-color", ACCENT)
        await launcher.click()
        await page.locator("[data-field=name]").fill("Анна Смирнова")
        await page.locator("[data-field=phone]").fill("+7 916 123-45-67")
        await page.locator("[data-part=submit]").click()
        box = page.locator("[data-part=input]")
        await box.fill("Нужна кухня 3,2 м <script>alert(1)</script>")
        await box.press("Enter")
        mine = page.locator(".msg.in")
        await expect(mine.first).to_have_attribute("data-state", "sent")

        # the visitor's message is an intake record, routed into a lead with the page
        await svc.routed()
        visitor = await visitor_id_in(page)
        conv = visitor_conversation(ACCOUNT, visitor)
        msg = await svc.store.messages.find_one({"conversation_id": conv, "direction": "in"})
        assert msg is not None
        assert msg["text"] == "Нужна кухня 3,2 м <script>alert(1)</script>"
        lead = await svc.store.leads.find_one({"contact_id": msg["contact_id"]})
        assert lead is not None
        assert lead["meta"]["utm_source"] == "yandex"
        assert lead["meta"]["page_url"].startswith(site.url())
        contact = await svc.store.contacts.find_one({"_id": msg["contact_id"]})
        assert contact is not None
        assert "phone:+79161234567" in contact["identities"]

        # the operator types and replies through the operator API: the visitor sees it live
        await as_operator(svc, f"/api/v1/conversations/{conv}/typing", {"on": True})
        await expect(page.locator("[data-part=typing]")).not_to_have_text("")
        reply = await as_operator(
            svc, f"/api/v1/conversations/{conv}/messages", {"text": "Здравствуйте! Сделаем."}
        )
        await expect(page.locator(".msg.out")).to_contain_text("Здравствуйте! Сделаем.")

        async def reply_read() -> bool:  # the panel is open: the widget reports read
            doc = await svc.store.messages.find_one({"_id": reply["id"]})
            return doc is not None and doc.get("state") == "read"

        await wait_for(reply_read, timeout=15, message="the reply was not marked read")
        await as_operator(svc, f"/api/v1/conversations/{conv}/read", {})
        await expect(mine.first).to_have_attribute("data-state", "read")

        # the network cuts after the service stored the next message: stored once
        cuts = [1]

        async def cut_after_store(route: Route) -> None:
            if route.request.method == "POST" and cuts[0]:
                cuts[0] -= 1
                await route.fetch()
                await route.abort("connectionreset")
            else:
                await route.continue_()

        await page.route("**/webchat/*/messages", cut_after_store)
        await box.fill("Перезвоните мне")
        await box.press("Enter")
        await expect(mine.nth(1)).to_have_attribute("data-state", "sent")
        await page.unroute("**/webchat/*/messages")
        await svc.routed()
        query = {"conversation_id": conv, "direction": "in", "text": "Перезвоните мне"}
        assert await svc.store.messages.count_documents(query) == 1
        assert await svc.store.intake.count_documents({"channel": "webchat"}) == 2

        # a picture: uploaded, sent, shown from its signed link (img-src of the chat origin)
        await page.locator("input[type=file]").set_input_files(
            files=FilePayload(name="plan.png", mimeType="image/png", buffer=tiny_png())
        )
        picture = mine.nth(2).locator("img")
        await expect(picture).to_have_attribute("alt", "plan.png")
        await expect(mine.nth(2)).to_have_attribute("data-state", "sent")
        await expect(picture).to_have_js_property("naturalWidth", 1)

        # the visitor reloads: the same conversation, the history in order
        await page.reload()
        await page.locator("[data-part=launcher]").click()
        await expect(page.locator(".msg")).to_have_count(4)
        directions = await page.locator(".msg").evaluate_all(
            "els => els.map(e => e.dataset.direction)"
        )
        assert directions == ["in", "out", "in", "in"]
        assert await visitor_id_in(page) == visitor
        assert await page.evaluate("window.__violations") == []
        assert errors == []


@needs_chromium
async def test_service_offline_form_on_a_saturday_and_a_site_not_in_the_origins(
    mongo_uri: str, db_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    expect.set_options(timeout=20_000)
    monkeypatch.setenv(CLOCK_ENV, SATURDAY)
    async with (
        service_scene(mongo_uri, db_name, operator_online=False, lang="en") as (svc, site, br),
        HostSite(svc.client.base) as stranger,
    ):
        page = await (await br.new_context(viewport=WIDE)).new_page()
        await page.goto(site.url())
        await page.locator("[data-part=launcher]").click()
        await expect(page.locator("[data-part=offline-note]")).to_contain_text("We are offline")
        await page.locator("[data-field=text]").fill("Need a wardrobe, call me")
        await page.locator("[data-part=submit]").click()
        await expect(page.locator("[data-part=status]")).to_contain_text("Leave a phone")
        await page.locator("[data-field=phone]").fill("+7 900 555-03-03")
        await page.locator("[data-part=submit]").click()
        # Monday 09:00 Moscow, in the browser's zone (UTC here): 06:00
        await expect(page.locator("[data-part=answer-by]")).to_contain_text(
            "We will answer by 19 May 2025"
        )
        await svc.routed()
        msg = await svc.store.messages.find_one({"channel": "webchat"})
        assert msg is not None
        lead = await svc.store.leads.find_one({"contact_id": msg["contact_id"]})
        assert lead is not None
        assert lead["meta"]["offline_form"] is True

        # the same widget on a site whose origin is not listed: refused, nothing drawn
        other = await (await br.new_context(viewport=WIDE)).new_page()
        warnings: list[str] = []
        other.on("console", lambda m: warnings.append(m.text) if m.type == "warning" else None)
        await other.goto(stranger.url())

        async def gave_up() -> bool:
            return any("not available" in w for w in warnings)

        await wait_for(gave_up, message="the widget did not give up on a foreign origin")
        assert await other.locator("[data-omniroute-webchat]").count() == 0
        assert await svc.store.intake.count_documents({"channel": "webchat"}) == 1


@needs_chromium
async def test_service_identity_wrong_hash_is_anonymous_right_hash_joins(
    mongo_uri: str, db_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    expect.set_options(timeout=20_000)
    monkeypatch.setenv(CLOCK_ENV, MONDAY_10)
    key = messenger_key("webchat", ACCOUNT, "id:user-42")
    async with service_scene(mongo_uri, db_name) as (svc, site, br):
        for given, joins in (
            (ident_hash("user-42", "not-the-key"), False),
            (ident_hash("user-42"), True),
        ):
            site.script_data = f'data-identifier="user-42" data-identifier-hash="{given}"'
            page = await (await br.new_context(viewport=WIDE)).new_page()  # a new visitor
            await page.goto(site.url())
            await page.locator("[data-part=launcher]").click()
            await page.locator("[data-part=input]").fill("Здравствуйте")
            await page.locator("[data-part=input]").press("Enter")
            await expect(page.locator(".msg.in")).to_have_attribute("data-state", "sent")
            await svc.routed()
            conv = visitor_conversation(ACCOUNT, await visitor_id_in(page))
            msg = await svc.store.messages.find_one({"conversation_id": conv})
            assert msg is not None
            contact = await svc.store.contacts.find_one({"_id": msg["contact_id"]})
            assert contact is not None
            assert (key in contact["identities"]) is joins
