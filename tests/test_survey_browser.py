"""The survey page in a real browser: Debian's chromium driven by Playwright, a phone
viewport, Russian first, switched to English, answered, and "already answered" after a
reload. Skipped, saying why, only when /usr/bin/chromium is missing. Screenshots go to
test-artifacts/web/."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, ViewportSize, async_playwright

from crm_store import surveys
from tests.automation_support import robots
from tests.service import ROOT
from tests.test_survey import nps_deal

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts" / "web"
PHONE = ViewportSize(width=390, height=844)

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's chromium is not installed (/usr/bin/chromium): apt-get install chromium",
)


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield browser
        finally:
            await browser.close()


def watch_errors(page: Page) -> list[str]:
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))

    def console(msg: ConsoleMessage) -> None:
        if msg.type == "error" and not msg.text.startswith("Failed to load resource"):
            errors.append(f"console: {msg.text}")

    page.on("console", console)
    return errors


async def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def test_survey_on_a_phone(mongo_uri: str, db_name: str) -> None:
    async with robots(mongo_uri, db_name, start=datetime.now(UTC)) as r, chromium() as browser:
        nps, path = await nps_deal(r, "b-1", "+79001230201")
        context = await browser.new_context(
            viewport=PHONE, is_mobile=True, has_touch=True, locale="ru-RU"
        )
        page = await context.new_page()
        errors = watch_errors(page)
        await page.goto(f"{r.svc.client.base}{path}")
        # Russian, the questions visible, nothing English shown.
        await page.get_by_text("Работа менеджера").wait_for()
        assert not await page.get_by_text("The manager").is_visible()
        # Tap targets are large: every 1–5 button at least 44 px high.
        buttons = page.locator(".score span")
        assert await buttons.count() == 20
        for i in range(await buttons.count()):
            box = await buttons.nth(i).bounding_box()
            assert box is not None
            assert box["height"] >= 44
            assert box["x"] + box["width"] <= PHONE["width"]
        # Answer two in Russian, switch to English (no reload: the choices stay), finish.
        questions = page.locator("fieldset.question")
        await questions.nth(0).locator(".score span").nth(4).tap()
        await questions.nth(1).locator(".score span").nth(3).tap()
        await shot(page, "survey-ru")
        await page.locator("#switch").tap()
        await page.get_by_text("The manager").wait_for()
        assert not await page.get_by_text("Работа менеджера").is_visible()
        assert await questions.nth(0).locator("input").nth(4).is_checked()
        await questions.nth(2).locator(".score span").nth(4).tap()
        await questions.nth(3).locator(".score span").nth(4).tap()
        await page.locator("textarea[name=comment]").fill("Great installers")
        await shot(page, "survey-en")
        await page.locator("button.send").tap()
        await page.get_by_text("Thank you! Your answer is saved.").wait_for()
        stored = await surveys.get(r.store, surveys.survey_id(nps["_id"], "nps"))
        assert stored is not None
        assert stored["answers"] == {
            "manager": 5,
            "manufacturing": 4,
            "delivery": 5,
            "installation": 5,
        }
        assert (stored["comment"], stored["lang"]) == ("Great installers", "en")
        # A reload (the browser re-requests the page) says it was answered.
        await page.goto(f"{r.svc.client.base}{path}")
        await page.get_by_text("Вы уже ответили на этот опрос").wait_for()
        await shot(page, "survey-answered")
        assert errors == []
        await context.close()
