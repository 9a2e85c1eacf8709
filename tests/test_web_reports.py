"""The Reports view in a real browser (Debian's chromium driven by Playwright) against the
running service: a director opens it, picks a period, and sees charts that really drew
(a canvas of non-zero size) and totals equal to the API's for the same query; a table's
CSV downloads with the API's bytes; a manager has no Reports tab. Skipped, saying why,
only when /usr/bin/chromium is missing."""

from __future__ import annotations

from typing import Any

import orjson
from playwright.async_api import expect

from crm_store import tokens
from crm_store.reports import rollup
from tests.service import InProcess, in_process
from tests.test_reports import generate
from tests.test_web_inbox import chromium, needs_chromium, shot, sign_in, watch_errors

IVAN, ANNA = "ivan.petrov", "anna.smirnova"
QUERY = "from=2026-01-01&to=2026-02-28&group=day"


async def api(svc: InProcess, token: str, path: str) -> Any:
    async with svc.client.http.get(
        f"{svc.client.base}{path}", headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.read()
        return orjson.loads(body) if resp.content_type.endswith("json") else body


def js_str(value: object) -> str:
    """How the page writes a figure into data-value (JavaScript's String())."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@needs_chromium
async def test_reports_view_draws_the_apis_figures(mongo_uri: str, db_name: str) -> None:
    async with in_process(mongo_uri, db_name) as svc, chromium() as browser:
        await generate(svc)
        # History written behind the rollups (as in tests/test_reports.py): the figures
        # come from the collections, not from rollups the worker is still catching up on.
        await rollup.set_ready(svc.store, False)
        ivan, _ = await tokens.issue(svc.store, IVAN)
        anna, _ = await tokens.issue(svc.store, ANNA)

        page = await browser.new_page(accept_downloads=True)
        errors = watch_errors(page)
        await page.goto(svc.client.base + "/")
        await sign_in(page, ivan)
        await page.get_by_test_id("reports-tab").click()
        view = page.get_by_test_id("reports")
        await expect(view).to_be_visible()
        await page.get_by_test_id("reports-from").fill("2026-01-01")
        await page.get_by_test_id("reports-to").fill("2026-02-28")
        for name in ("volume", "funnel", "responsiveness"):
            await page.get_by_test_id(f"report-{name}").click()
            await page.get_by_test_id("reports-from").fill("2026-01-01")
            await page.get_by_test_id("reports-to").fill("2026-02-28")
            want = await api(svc, ivan, f"/api/v1/reports/{name}?{QUERY}")
            for metric, value in want["totals"].items():
                shown = page.get_by_test_id(f"total-{metric}")
                await expect(shown).to_have_attribute("data-value", js_str(value))
            canvas = page.locator("[data-testid=reports-chart] canvas").first
            await expect(canvas).to_be_visible()
            box = await canvas.bounding_box()
            assert box is not None
            assert box["width"] > 100
            assert box["height"] > 100
            await shot(page, f"reports-{name}")
        # The CSV of the responsiveness report's first table, as the API gives it.
        async with page.expect_download() as got:
            await page.get_by_test_id("csv-first_response").click()
        download = await got.value
        path = await download.path()
        assert path is not None
        data = path.read_bytes()
        assert data.startswith(b"\xef\xbb\xbf")
        want_csv = await api(
            svc, ivan, f"/api/v1/reports/responsiveness.csv?{QUERY}&table=first_response"
        )
        assert data == want_csv
        assert not errors, errors

        # A manager's inbox has no Reports tab.
        other = await browser.new_page()
        await other.goto(svc.client.base + "/")
        await sign_in(other, anna)
        await expect(other.get_by_test_id("me")).to_be_visible()
        await expect(other.get_by_test_id("reports-tab")).to_have_count(0)


async def test_the_chart_library_is_served_with_its_policy(mongo_uri: str, db_name: str) -> None:
    async with in_process(mongo_uri, db_name) as svc:
        http, base = svc.client.http, svc.client.base
        async with http.get(f"{base}/static/vendor/uPlot.iife.min.js") as resp:
            assert (resp.status, resp.content_type) == (200, "text/javascript")
            assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
            assert (await resp.text()).startswith("/*! https://github.com/leeoniya/uPlot (v1.6.32)")
        for name in ("reports.js", "reports.css"):
            async with http.get(f"{base}/static/{name}") as resp:
                assert resp.status == 200, name
        for path in (
            "/static/vendor/uPlot.LICENSE",
            "/static/vendor/..%2Freports.js",
            "/static/vendor/nope.js",
        ):
            async with http.get(f"{base}{path}") as resp:
                assert resp.status == 404, path
