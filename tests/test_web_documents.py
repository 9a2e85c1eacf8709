"""The deal card's documents in a real browser (Debian's chromium via Playwright, as
tests/test_web_inbox.py): an operator opens a conversation whose lead became a deal,
creates a contract from the card, downloads it, uploads the signed scan, and the row says
signed — the registry and the store agree. Skipped, saying why, without /usr/bin/chromium.
"""

from __future__ import annotations

import asyncio
import io

import docx
from playwright.async_api import expect

from crm_store import tokens
from tests.service import api_body, in_process
from tests.test_web_inbox import WIDE, chromium, needs_chromium, shot, sign_in, watch_errors

IVAN = "ivan.petrov"
PDF = b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"


@needs_chromium
async def test_create_download_and_sign_a_document_on_the_deal_card(
    mongo_uri: str, db_name: str
) -> None:
    expect.set_options(timeout=15_000)
    async with in_process(mongo_uri, db_name, automation_enabled=False) as svc, chromium() as b:
        token, _ = await tokens.issue(svc.store, IVAN)
        auth = {"Authorization": f"Bearer {token}"}
        api = f"{svc.client.base}/api/v1"
        status, _ = await svc.client.post_api(
            api_body("web-doc-1", phone="+79001117788", name="Marina Volkova", text="Wardrobe")
        )
        assert status == 200
        await svc.routed()
        lead = await svc.store.leads.find_one({})
        assert lead is not None
        async with svc.client.http.post(
            f"{api}/leads/{lead['_id']}/convert", headers=auth, json={}
        ) as r:
            deal = await r.json()
            assert r.status == 201, deal
        # No line items (the API's fields are scalars; items come from integrations): the
        # deal's amount is the total.
        async with svc.client.http.patch(
            f"{api}/deals/{deal['id']}", headers=auth, json={"fields": {"amount": 45000}}
        ) as r:
            assert r.status == 200, await r.text()

        page = await (await b.new_context(viewport=WIDE, locale="en-US")).new_page()
        errors = watch_errors(page)
        try:
            await page.goto(f"{svc.client.base}/")
            await sign_in(page, token)
            await page.get_by_test_id("filter-all").click()
            await page.get_by_test_id("conversation-item").filter(has_text="Marina Volkova").click()
            card = page.get_by_test_id("documents")
            await expect(card).to_contain_text("No documents yet.")
            await card.get_by_test_id("doc-type").select_option("contract")
            await card.get_by_test_id("doc-create").click()
            row = card.get_by_test_id("document-row")
            await expect(row).to_have_count(1)
            await expect(row).to_have_attribute("data-status", "generated")
            stored = await svc.store["deal_documents"].find_one({"deal_id": deal["id"]})
            assert stored is not None
            await expect(row).to_contain_text(f"№ {stored['number']}")

            async with page.expect_download() as got:
                await row.get_by_test_id("doc-download").click()
            download = await got.value
            path = await download.path()
            assert path is not None
            raw = await asyncio.to_thread(path.read_bytes)
            paragraphs = [p.text for p in docx.Document(io.BytesIO(raw)).paragraphs]
            assert paragraphs[0] == f"ДОГОВОР № {stored['number']}"
            assert any("Сорок пять тысяч рублей 00 копеек" in p for p in paragraphs)

            await row.get_by_test_id("signed-file").set_input_files(
                files=[{"name": "signed.pdf", "mimeType": "application/pdf", "buffer": PDF}]
            )
            await expect(row).to_have_attribute("data-status", "signed")
            await expect(row.get_by_test_id("doc-signed")).to_be_visible()
            await shot(page, "documents-1280x800")
            fresh = await svc.store["deal_documents"].find_one({"_id": stored["_id"]})
            assert fresh is not None
            assert (fresh["status"], fresh["signed_file_id"] is not None) == ("signed", True)
            assert errors == []
        except BaseException:
            await shot(page, "failure-documents-1280x800")
            raise
