"""A comment conversation in the web inbox (Debian's chromium via Playwright, as
tests/test_web_inbox.py): a VK comment arrives over the Callback API; the operator sees the
post's link above it, answers publicly and then privately with the composer's switch (the
VK API fake receives wall.createComment, then messages.send), finds no Hide (VK has none)
and deletes the comment (wall.deleteComment; the comment is marked deleted); a comment the
customer deletes in VK is marked deleted live."""

from __future__ import annotations

import pytest
from playwright.async_api import Dialog, expect

from crm_store import tokens
from tests.fakes.vk import FakeVk
from tests.helpers import wait_for
from tests.test_channel_vk import (
    CALLBACK_ENV,
    CALLBACK_SECRET,
    GROUP,
    TOKEN,
    TOKEN_ENV,
    USER,
    envelope,
    post,
    service,
)
from tests.test_vk_comments import POST, comment
from tests.test_web_inbox import (
    ADMIN,
    WIDE,
    chromium,
    needs_chromium,
    shot,
    sign_in,
    watch_errors,
)


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    monkeypatch.setenv(CALLBACK_ENV, CALLBACK_SECRET)


@needs_chromium
async def test_operator_answers_and_deletes_a_vk_comment(mongo_uri: str, db_name: str) -> None:
    expect.set_options(timeout=15_000)
    async with (
        FakeVk(TOKEN).running() as fake,
        service(mongo_uri, db_name, api_base=fake.base) as svc,
        chromium() as browser,
    ):
        assert (await post(svc, envelope("wall_reply_new", comment(5821))))[2] == "ok"
        await svc.routed()
        token, _ = await tokens.issue(svc.store, ADMIN)
        page = await (await browser.new_context(viewport=WIDE, locale="en-US")).new_page()
        errors = watch_errors(page)
        try:
            await page.goto(f"{svc.client.base}/")
            await sign_in(page, token)
            await page.get_by_test_id("filter-all").click()
            item = page.get_by_test_id("conversation-item").filter(
                has_text="Когда будет в наличии?"
            )
            await item.click()
            link = page.get_by_test_id("comment-post-link")
            await expect(link).to_have_attribute(
                "href", f"https://vk.com/wall-{GROUP}_{POST}?reply=5821"
            )
            await expect(page.get_by_test_id("comment-mode-public")).to_be_checked()

            # Public (the default): a reply under the comment.
            await page.get_by_test_id("reply-text").fill("Будет 15 июня.")
            await page.get_by_test_id("send").click()

            async def commented() -> bool:
                return len(fake.comments) == 1

            await wait_for(commented, timeout=15, message="no wall.createComment")
            assert fake.comments[0]["reply_to_comment"] == "5821"
            assert fake.comments[0]["message"] == "Будет 15 июня."

            # Private: a VK message to the commenter.
            await page.get_by_test_id("comment-mode-private").check()
            await page.get_by_test_id("reply-text").fill("Напишу вам в личку")
            await page.get_by_test_id("send").click()

            async def messaged() -> bool:
                return len(fake.delivered) == 1

            await wait_for(messaged, timeout=15, message="no messages.send")
            assert fake.delivered[0]["peer_id"] == str(USER)
            assert len(fake.comments) == 1

            # VK has no hidden comments: only Delete is offered.
            theirs = page.get_by_test_id("message").filter(has_text="Когда будет в наличии?")
            await expect(theirs.get_by_test_id("comment-delete")).to_be_visible()
            await expect(theirs.get_by_test_id("comment-hide")).to_have_count(0)

            async def accept(dialog: Dialog) -> None:
                await dialog.accept()

            page.on("dialog", accept)
            await theirs.get_by_test_id("comment-delete").click()
            await expect(theirs.get_by_test_id("comment-deleted")).to_be_visible()
            assert [d["comment_id"] for d in fake.deleted_comments] == ["5821"]
            await expect(theirs.get_by_test_id("comment-delete")).to_have_count(0)

            # The customer comments again, then deletes it in VK: marked live.
            again = comment(5822, "А серый есть?", parents_stack=[])
            assert (await post(svc, envelope("wall_reply_new", again)))[2] == "ok"
            second = page.get_by_test_id("message").filter(has_text="А серый есть?")
            await expect(second.get_by_test_id("comment-delete")).to_be_visible()
            gone = {"owner_id": -GROUP, "id": 5822, "deleter_id": USER, "post_id": POST}
            assert (await post(svc, envelope("wall_reply_delete", gone)))[2] == "ok"
            await expect(second.get_by_test_id("comment-deleted")).to_be_visible()
            await shot(page, "vk-comment")
            assert errors == []
        except BaseException:
            await shot(page, "failure-vk-comment")
            raise
