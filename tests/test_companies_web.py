"""The company card of the web inbox in a real browser (chromium via Playwright): an
operator opens a customer's conversation, adds the contact's company — a mistyped INN is
refused next to its field — then edits it; the store holds what the page said."""

from __future__ import annotations

from playwright.async_api import expect

from crm_store import tokens
from crm_store.companies import id_for_inn
from tests.service import api_body, in_process
from tests.test_web_inbox import ADMIN, WIDE, chromium, needs_chromium, shot, sign_in, watch_errors

INN = "7707083893"


@needs_chromium
async def test_company_card_adds_and_edits_the_contacts_company(
    mongo_uri: str, db_name: str
) -> None:
    expect.set_options(timeout=15_000)
    async with in_process(mongo_uri, db_name) as svc, chromium() as browser:
        status, body = await svc.client.post_api(
            api_body("web-co-1", phone="+79005551234", name="Пётр", text="Нужен счёт")
        )
        assert status == 200
        await svc.routed()
        msg = await svc.store.messages.find_one({"_id": body["accepted"][0]})
        assert msg is not None
        token, _ = await tokens.issue(svc.store, ADMIN)
        page = await (await browser.new_context(viewport=WIDE, locale="en-US")).new_page()
        errors = watch_errors(page)
        try:
            await page.goto(f"{svc.client.base}/")
            await sign_in(page, token)
            await page.get_by_test_id("filter-all").click()
            await page.get_by_test_id("conversation-item").first.click()
            card = page.get_by_test_id("company")
            await expect(card).to_contain_text("No company.")
            await card.get_by_test_id("company-add").click()
            await card.get_by_test_id("company-name").fill("ООО «Вектор»")
            await card.get_by_test_id("company-inn").fill("7707083894")
            await card.get_by_test_id("company-save").click()
            await expect(card.get_by_role("alert")).to_contain_text("check digit")
            assert await svc.store["companies"].count_documents({}) == 0

            await card.get_by_test_id("company-inn").fill(INN)
            await card.get_by_test_id("company-save").click()
            await expect(card.get_by_test_id("company-name")).to_have_text("ООО «Вектор»")
            await expect(card).to_contain_text(INN)
            contact = await svc.store.contacts.find_one({"_id": msg["contact_id"]})
            assert contact is not None
            assert contact["company_id"] == id_for_inn(INN)

            await card.get_by_test_id("company-edit").click()
            await card.get_by_test_id("company-address").fill("Москва, Тверская 1")
            await card.get_by_test_id("company-type").select_option("partner")
            await card.get_by_test_id("company-save").click()
            await expect(card).to_contain_text("Москва, Тверская 1")
            company = await svc.store["companies"].find_one({"_id": id_for_inn(INN)})
            assert company is not None
            assert (company["address"], company["type"]) == ("Москва, Тверская 1", "partner")
            assert errors == []
        except BaseException:
            await shot(page, "failure-company-card-1280x800")
            raise
