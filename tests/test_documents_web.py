"""The deal card's "Send to customer" in a real browser (Debian's chromium via
Playwright, as tests/test_web_documents.py): the contract goes through the deal's
conversation to the integration behind the API channel (the file's link fetched back
byte for byte), and a conversation whose channel cannot carry files shows the refusal.
Skipped, saying why, without /usr/bin/chromium."""

from __future__ import annotations

from datetime import UTC, datetime

from playwright.async_api import expect

from channels.base import DeliveryState
from config.models import ChannelAccount
from crm_store import tokens
from crm_store.documents import stable_id
from tests.fakes.integration import FakeIntegration
from tests.helpers import wait_for
from tests.service import api_body, config_with, in_process
from tests.test_web_inbox import WIDE, chromium, needs_chromium, shot, sign_in, watch_errors

IVAN = "ivan.petrov"


def site(reply_url: str) -> ChannelAccount:
    return ChannelAccount(
        channel="api",
        account="site",
        source="site",
        secret_env="OMNIROUTE_SECRET_API_SITE",
        settings={"reply_url": reply_url, "timeout_s": 2},
    )


@needs_chromium
async def test_send_to_customer_from_the_deal_card(mongo_uri: str, db_name: str) -> None:
    expect.set_options(timeout=15_000)
    async with (
        FakeIntegration("site-secret") as fake,
        in_process(
            mongo_uri, db_name, config_with(site(fake.url)), automation_enabled=False
        ) as svc,
        chromium() as b,
    ):
        token, _ = await tokens.issue(svc.store, IVAN)
        auth = {"Authorization": f"Bearer {token}"}
        api = f"{svc.client.base}/api/v1"
        status, _ = await svc.client.post_api(
            api_body("web-send-1", phone="+79001117799", name="Marina Orlova", text="Kitchen")
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

        page = await (await b.new_context(viewport=WIDE, locale="en-US")).new_page()
        errors = watch_errors(page)
        try:
            await page.goto(f"{svc.client.base}/")
            await sign_in(page, token)
            await page.get_by_test_id("filter-all").click()
            await page.get_by_test_id("conversation-item").filter(has_text="Marina Orlova").click()
            card = page.get_by_test_id("documents")
            await card.get_by_test_id("doc-type").select_option("contract")
            await card.get_by_test_id("doc-create").click()
            row = card.get_by_test_id("document-row")
            await expect(row).to_have_attribute("data-status", "generated")

            await row.get_by_test_id("doc-send").click()
            await expect(row).to_have_attribute("data-status", "sent")
            await expect(card.get_by_test_id("doc-note")).to_have_text("Sent via api")

            async def delivered() -> bool:
                return bool(fake.received)

            await wait_for(delivered, timeout=20, message="the integration got no reply")
            [attachment] = fake.received[0].body["attachments"]
            stored = await svc.store["deal_documents"].find_one({"deal_id": deal["id"]})
            assert stored is not None
            assert attachment["name"] == f"Договор {stored['number']} v1.docx"
            assert attachment.get("file_id") is None  # the API channel gets the link only
            async with svc.client.http.get(attachment["url"]) as resp:
                got = await resp.read()
            async with svc.client.http.get(
                f"{api}/documents/{stored['_id']}/file", headers=auth
            ) as resp:
                assert got == await resp.read()

            # The customer then wrote on Avito (text only): the deal's latest conversation
            # cannot carry the file, and the card says so; nothing is queued.
            await svc.store.conversations.insert_one(
                {
                    "_id": stable_id("conversation", "avito-send"),
                    "channel": "avito",
                    "account": "shop",
                    "contact_id": lead["contact_id"],
                    "reply_to": "avito-chat-1",
                    "assignee_id": IVAN,
                    "target": {"kind": "deal", "id": deal["id"], "open": True},
                    "last_inbound_at": datetime.now(UTC),
                }
            )
            queued = await svc.store.messages.count_documents({"direction": "out"})
            await row.get_by_test_id("doc-send").click()
            await expect(card.get_by_test_id("doc-error")).to_contain_text(
                "avito cannot carry this document"
            )
            assert await svc.store.messages.count_documents({"direction": "out"}) == queued
            await shot(page, "documents-send-1280x800")
            sent = await svc.store.messages.find_one({"direction": "out"})
            assert sent is not None
            assert sent["state"] in (DeliveryState.SENT.value, DeliveryState.DELIVERED.value)
            assert errors == []
        except BaseException:
            await shot(page, "failure-documents-send-1280x800")
            raise
