"""One person across channels: they write in Instagram Direct and share their phone (the
quick reply Meta sends for ``user_phone_number``: the number is the text), then comment
under the community's VK post writing the same number differently — one contact, whose
open lead the comment joins, holding both messenger identities and the phone."""

from __future__ import annotations

import pytest

from tests.meta_support import ENV
from tests.meta_support import post as meta_post
from tests.service import config_with, in_process
from tests.test_channel_instagram import ACCOUNT as IG_ACCOUNT
from tests.test_channel_instagram import IGSID, dm, ig_account, instagram
from tests.test_channel_instagram import PATH as IG_PATH
from tests.test_channel_vk import (
    ACCOUNT,
    CALLBACK_ENV,
    CALLBACK_SECRET,
    TOKEN,
    TOKEN_ENV,
    USER,
    envelope,
    vk_account,
)
from tests.test_channel_vk import post as vk_post
from tests.test_vk_comments import comment, key

DEAD = "http://127.0.0.1:9"  # nothing is sent


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {**ENV, TOKEN_ENV: TOKEN, CALLBACK_ENV: CALLBACK_SECRET}.items():
        monkeypatch.setenv(name, value)


async def test_instagram_direct_then_a_vk_comment_with_the_phone_is_one_contact(
    mongo_uri: str, db_name: str
) -> None:
    config = config_with(vk_account(), ig_account(DEAD))
    async with in_process(mongo_uri, db_name, config=config) as svc:
        shared = dm("m_phone_1", text="+7 900 123-45-67", quick_reply={"payload": "+79001234567"})
        status, answer = await meta_post(svc, IG_PATH, instagram([shared]))
        assert status == 200, answer
        await svc.routed()
        [contact] = [c async for c in svc.store.contacts.find({})]
        assert "phone:+79001234567" in contact["identities"]
        assert f"instagram:{IG_ACCOUNT}:{IGSID}" in contact["identities"]

        text = "Мой номер 8 (900) 123-45-67, когда будет в наличии?"
        assert (await vk_post(svc, envelope("wall_reply_new", comment(5821, text))))[2] == "ok"
        await svc.routed()
        doc = await svc.store.messages.find_one({"provider_id": key(5821)})
        assert doc is not None
        assert doc["kind"] == "comment"
        assert doc["sender"] == {"external_user_id": str(USER), "phone": "+79001234567"}
        assert doc["contact_id"] == contact["_id"]
        assert doc["decision"]["rule"] == "open_lead"
        assert await svc.store.contacts.count_documents({}) == 1
        assert await svc.store.leads.count_documents({}) == 1
        merged = await svc.store.contacts.find_one({"_id": contact["_id"]})
        assert merged is not None
        assert f"vk:{ACCOUNT}:{USER}" in merged["identities"]
        # Two conversations (the DM thread and the post), one contact.
        convs = [c async for c in svc.store.conversations.find({})]
        assert len(convs) == 2
        assert {c["contact_id"] for c in convs} == {contact["_id"]}
