"""VK's comment reader against a mutated real ``wall_reply_new`` (tests/mutations.py), as
tests/test_parser_mutations.py does for every messaging channel: every variant through
``channel.read`` (storable output; a comment whenever who / which / what are readable;
only :class:`WebhookError` may escape), and a ~10 % sample over real HTTP (never a 5xx,
the readable ones' comments in intake, everything kept routed)."""

from __future__ import annotations

import pytest

from channels.vk import VkChannel
from tests import test_channel_vk as vk
from tests.mutations import Need, Variant, equals, readable, sample, usable_text
from tests.test_parser_mutations import (
    EXCEPTION_TEXT,
    NOW,
    Case,
    Example,
    in_intake,
    positive_id,
    read_variant,
    running,
    variants,
)
from tests.test_parser_mutations import post as post_variant
from tests.test_vk_comments import comment

WALL_REPLY = Example(
    "wall_reply_new",
    vk.envelope(
        "wall_reply_new",
        comment(5821, date=NOW),
        event_id="6b3e1c0d9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d",
    ),
    (
        Need("type", ("type",), equals("wall_reply_new")),
        Need("who", ("object.from_id",), positive_id),
        Need("which", ("object.id",), positive_id),
        Need("what", ("object.text",), usable_text),
    ),
    kind_paths=("type",),
)

CASE = Case(
    channel=VkChannel(),
    account=vk.vk_account(),
    path=f"/webhooks/vk/{vk.ACCOUNT}",
    skip=("secret", "group_id"),
    env={vk.TOKEN_ENV: vk.TOKEN, vk.CALLBACK_ENV: vk.CALLBACK_SECRET},
    examples=(WALL_REPLY,),
)


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in CASE.env.items():
        monkeypatch.setenv(name, value)


def test_the_example_is_a_comment() -> None:
    assert readable(WALL_REPLY.payload, WALL_REPLY.needs)
    unmutated = Variant("none", "", "unmutated", WALL_REPLY.payload)
    parsed = read_variant(CASE, WALL_REPLY, unmutated)
    assert parsed is not None
    [msg] = parsed.messages
    assert (msg.provider_id, msg.parent_id) == (
        f"wall_comment-{vk.GROUP}_5821",
        f"wall_comment-{vk.GROUP}_5800",
    )


def test_every_mutation_through_read() -> None:
    counted = {"variants": 0, "readable": 0, "comments": 0}
    for variant in variants(CASE, WALL_REPLY):
        counted["variants"] += 1
        ok = readable(variant, WALL_REPLY.needs)
        counted["readable"] += ok
        parsed = read_variant(CASE, WALL_REPLY, variant)
        if ok:
            assert parsed is not None
            [msg] = parsed.messages
            assert msg.kind == "comment", variant.description
            assert msg.post is not None, variant.description
            assert (msg.thread_id or "").startswith("comment:"), variant.description
    assert counted["variants"] > 100
    assert counted["readable"] > counted["variants"] // 2


async def test_a_sample_over_http(mongo_uri: str, db_name: str) -> None:
    checked = sample(variants(CASE, WALL_REPLY), 0.1, salt=WALL_REPLY.name)
    async with running(CASE, mongo_uri, db_name) as svc:
        kept = 0
        for variant in checked:
            parsed = read_variant(CASE, WALL_REPLY, variant)
            status, text = await post_variant(svc, CASE, variant.encode())
            assert status < 500, (variant.description, status, text)
            assert not EXCEPTION_TEXT.search(text), (variant.description, text)
            if parsed is not None and parsed.messages:
                assert await in_intake(svc, parsed), variant.description
                kept += 1
        await svc.routed()
        assert kept > 0
        assert await svc.store.intake.count_documents({"status": "failed"}) == 0
