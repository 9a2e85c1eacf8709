"""Routing of public comments: the account's ``comments`` setting (lead | attach), each
rule with its reason — the pure rules, then VK comments over real HTTP into the running
service — and check-config's refusal of any other value."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from config import CONFIG_FILES, check_config
from config.models import Source, comments_mode
from config.settings import DEFAULT_CONFIG_DIR
from routing.decide import Action, Context, Rule, decide
from tests.service import InProcess
from tests.test_channel_vk import (
    CALLBACK_ENV,
    CALLBACK_SECRET,
    TOKEN,
    TOKEN_ENV,
    envelope,
    message,
    message_new,
    post,
    service,
    vk_account,
)
from tests.test_decide import contact, conversation, deal, lead
from tests.test_vk_comments import comment, key

SOURCE = Source(id="site", name="Site", pipeline="leads", line="sales")


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    monkeypatch.setenv(CALLBACK_ENV, CALLBACK_SECRET)


# --- the pure rules -----------------------------------------------------------------------


def ctx(comment_mode: str | None, **kw: Any) -> Context:
    values: dict[str, Any] = {
        "intake_id": "i1",
        "source": SOURCE,
        "automatic": False,
        "conversation": None,
        "contact": None,
        "active_deal": None,
        "open_lead": None,
        "has_history": False,
        "comment": comment_mode,
    }
    return Context(**{**values, **kw})


def test_attach_never_creates_a_lead() -> None:
    unknown = decide(ctx("attach"))
    assert (unknown.rule, unknown.action, unknown.target_id) == (
        Rule.COMMENT,
        Action.STORE_ONLY,
        None,
    )
    assert "comments: attach" in unknown.reason
    assert "unknown commenter" in unknown.reason
    known = decide(ctx("attach", contact=contact(origin="manual"), has_history=True))
    assert (known.rule, known.action, known.target_id) == (
        Rule.COMMENT,
        Action.ATTACH_CONTACT,
        "contact-1",
    )
    assert "kept on contact contact-1" in known.reason


def test_attach_still_joins_what_is_open() -> None:
    c = contact(origin="manual")
    assert decide(ctx("attach", contact=c, active_deal=deal())).action is Action.ATTACH_DEAL
    assert decide(ctx("attach", contact=c, open_lead=lead())).action is Action.ATTACH_LEAD
    assert decide(ctx("attach", conversation=conversation())).rule is Rule.CONVERSATION


def test_lead_mode_and_direct_messages_route_as_before() -> None:
    for mode in ("lead", None):
        assert decide(ctx(mode)).rule is Rule.NEW_LEAD
        known = ctx(mode, contact=contact(origin="manual"), has_history=True)
        assert decide(known).rule is Rule.REPEAT_LEAD


def test_the_setting_defaults_to_lead() -> None:
    assert comments_mode(vk_account()) == "lead"
    assert comments_mode(vk_account(comments="attach")) == "attach"
    assert comments_mode(None) == "lead"


# --- over HTTP ------------------------------------------------------------------------------


async def routed_comment(svc: InProcess, cid: int, **extra: Any) -> dict[str, Any]:
    assert (await post(svc, envelope("wall_reply_new", comment(cid, **extra))))[2] == "ok"
    await svc.routed()
    doc = await svc.store.messages.find_one({"provider_id": key(cid)})
    assert doc is not None
    return doc


async def test_attach_mode_unknown_commenter_is_kept_unrouted(mongo_uri: str, db_name: str) -> None:
    async with service(mongo_uri, db_name, comments="attach") as svc:
        doc = await routed_comment(svc, 5821)
        assert doc["decision"]["rule"] == "comment"
        assert doc["decision"]["action"] == "store_only"
        assert (doc["contact_id"], doc["target"]["kind"]) == (None, "none")
        assert await svc.store.leads.count_documents({}) == 0
        assert await svc.store.contacts.count_documents({}) == 0
        conv = await svc.store.conversations.find_one({"_id": doc["conversation_id"]})
        assert conv is not None
        assert conv.get("assignee_id") is None
        assert conv.get("department") is None
        assert conv["unread"] == 1
        # A direct message from the same person still creates a lead.
        await post(svc, message_new(message(1)))
        await svc.routed()
        assert await svc.store.leads.count_documents({}) == 1


async def test_attach_mode_known_contact_attaches_to_their_deal(
    mongo_uri: str, db_name: str
) -> None:
    async with service(mongo_uri, db_name, comments="attach") as svc:
        await post(svc, message_new(message(1)))
        await svc.routed()
        dm = await svc.store.messages.find_one({})
        assert dm is not None
        # Their open lead first …
        first = await routed_comment(svc, 5821)
        assert first["decision"]["rule"] == "open_lead"
        assert first["target"]["id"] == dm["target"]["id"]
        assert first["contact_id"] == dm["contact_id"]
        # … then, the lead closed and a deal open, the deal.
        await svc.store.leads.update_many(
            {}, {"$set": {"open": False}, "$unset": {"open_contact": ""}}
        )
        await svc.store.deals.insert_one(
            {
                "_id": "deal-vk",
                "contact_id": dm["contact_id"],
                "pipeline_id": "orders",
                "stage_id": "estimate",
                "open": True,
                "is_repeat": False,
                "responsible_id": "anna.smirnova",
                "title": "Диван",
                "fields": {},
                "created_at": datetime.now(UTC),
                "last_activity_at": datetime.now(UTC),
            }
        )
        other_post = await routed_comment(svc, 6001, post_id=4500)
        assert other_post["decision"]["rule"] == "active_deal"
        assert other_post["decision"]["reason"].startswith("contact has active deal deal-vk")
        assert other_post["target"] == {"kind": "deal", "id": "deal-vk", "open": True}
        # The deal closed too: the comment stays on the contact, no repeat lead.
        await svc.store.deals.update_many({}, {"$set": {"open": False}})
        later = await routed_comment(svc, 6100, post_id=4600)
        assert later["decision"]["rule"] == "comment"
        assert later["decision"]["action"] == "attach_contact"
        assert later["contact_id"] == dm["contact_id"]
        assert await svc.store.leads.count_documents({}) == 1


async def test_lead_mode_known_contact_gets_a_repeat_lead(mongo_uri: str, db_name: str) -> None:
    async with service(mongo_uri, db_name) as svc:
        await post(svc, message_new(message(1)))
        await svc.routed()
        await svc.store.leads.update_many(
            {}, {"$set": {"open": False}, "$unset": {"open_contact": ""}}
        )
        doc = await routed_comment(svc, 5821)
        assert doc["decision"]["rule"] == "repeat_lead"
        assert await svc.store.leads.count_documents({}) == 2


# --- check-config ---------------------------------------------------------------------------


def test_check_config_refuses_an_unknown_comments_mode(tmp_path: Path) -> None:
    target = tmp_path / "config"
    target.mkdir()
    for name in CONFIG_FILES:
        shutil.copy(DEFAULT_CONFIG_DIR / name, target / name)
    path = target / "channels.yaml"
    text = path.read_text(encoding="utf-8")
    anchor = "      group_id: 218000111\n"
    assert text.count(anchor) == 1
    path.write_text(text.replace(anchor, anchor + "      comments: sometimes\n"), encoding="utf-8")
    [problem] = check_config(target)
    line = next(i for i, s in enumerate(path.read_text().splitlines(), 1) if "comments:" in s)
    assert (problem.file, problem.line) == ("channels.yaml", line)
    assert problem.key.endswith(".settings.comments")
    assert problem.message == "must be 'lead' or 'attach', not 'sometimes'"
    path.write_text(text.replace(anchor, anchor + "      comments: attach\n"), encoding="utf-8")
    assert check_config(target) == []
