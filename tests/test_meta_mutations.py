"""Messenger and Instagram readers against mutated real payloads (tests/mutations.py, the
same contract as tests/test_parser_mutations.py): a Messenger message, an Instagram
message and a Page feed comment, each field dropped, unknown fields and kinds, huge ids,
odd dates, wrong types, odd unicode → ``read`` never raises past its contract, nothing
answers 5xx, and a variant whose who / where / what stays readable is kept.
"""

from __future__ import annotations

import aiohttp
import pytest

from channels.instagram import InstagramChannel
from channels.messenger import MessengerChannel
from channels.meta import SIGNATURE_HEADER, signature
from tests import test_channel_instagram as ig
from tests import test_channel_messenger as fb
from tests.meta_support import APP_SECRET, ENV
from tests.mutations import Need, Variant, readable, sample, usable_id
from tests.test_parser_mutations import (
    DEAD,
    EXCEPTION_TEXT,
    NOW,
    Case,
    Example,
    any_of,
    in_intake,
    post,
    produced,
    read_variant,
    request,
    running,
    variants,
)

FB_ITEM = "entry.0.messaging.0"
FB_CHANGE = "entry.0.changes.0"
IG_ITEM = "entry.0.messaging.0"


def sign(body: bytes) -> dict[str, str]:
    return {SIGNATURE_HEADER: signature(APP_SECRET, body)}


MESSENGER = Case(
    channel=MessengerChannel(),
    account=fb.fb_account(DEAD),
    path=fb.PATH,
    sign=sign,
    env=ENV,
    examples=(
        Example(
            "messenger_message",
            {
                "object": "page",
                "entry": [
                    {
                        "id": fb.PAGE,
                        "time": NOW * 1000 + 123,
                        "messaging": [
                            {
                                "sender": {"id": fb.PSID},
                                "recipient": {"id": fb.PAGE},
                                "timestamp": NOW * 1000 + 456,
                                "message": {
                                    "mid": "m_Qx7BqkYFh2Ue1s0cKz",
                                    "text": "Здравствуйте, заказ 1182 не пришёл",
                                    "quick_reply": {"payload": "ORDER_STATUS"},
                                    "reply_to": {"mid": "m_AbC", "is_self_reply": False},
                                    "attachments": [
                                        {
                                            "type": "image",
                                            "payload": {
                                                "url": "https://lookaside.fbsbx.com/x.jpg",
                                                "sticker_id": 369239263222822,
                                            },
                                        }
                                    ],
                                },
                            }
                        ],
                    }
                ],
            },
            (
                Need("object", ("object",), any_of("page")),
                Need("page", ("entry.0.id",), any_of(fb.PAGE)),
                Need("who", (f"{FB_ITEM}.sender.id",)),
                Need("kind", (f"{FB_ITEM}.message",), lambda v: isinstance(v, dict)),
                Need("not_echo", (f"{FB_ITEM}.message.is_echo",), lambda v: v is not True),
                Need("not_deleted", (f"{FB_ITEM}.message.is_deleted",), lambda v: v is not True),
            ),
            kind_keys=(f"{FB_ITEM}.message",),
        ),
        Example(
            "feed_comment",
            {
                "object": "page",
                "entry": [
                    {
                        "id": fb.PAGE,
                        "time": NOW,
                        "changes": [
                            {
                                "field": "feed",
                                "value": {
                                    "item": "comment",
                                    "verb": "add",
                                    "comment_id": "122131676912594941_1213590066982748",
                                    "post_id": f"{fb.PAGE}_122131676912594941",
                                    "parent_id": f"{fb.PAGE}_122131676912594941",
                                    "from": {"id": "6641023378852201", "name": "Ирина К."},
                                    "message": "Сколько стоит доставка?",
                                    "created_time": NOW,
                                    "post": {
                                        "id": f"{fb.PAGE}_122131676912594941",
                                        "status_type": "mobile_status_update",
                                        "is_published": True,
                                    },
                                },
                            }
                        ],
                    }
                ],
            },
            (
                Need("object", ("object",), any_of("page")),
                Need("page", ("entry.0.id",), any_of(fb.PAGE)),
                Need("field", (f"{FB_CHANGE}.field",), any_of("feed")),
                Need("item", (f"{FB_CHANGE}.value.item",), any_of("comment")),
                Need("verb", (f"{FB_CHANGE}.value.verb",), any_of("add")),
                Need("which", (f"{FB_CHANGE}.value.comment_id",)),
                Need(
                    "who",
                    (f"{FB_CHANGE}.value.from.id",),
                    lambda v: usable_id(v) and str(v).strip() != fb.PAGE,
                ),
            ),
            kind_paths=(f"{FB_CHANGE}.field", f"{FB_CHANGE}.value.item", f"{FB_CHANGE}.value.verb"),
        ),
    ),
)

INSTAGRAM = Case(
    channel=InstagramChannel(),
    account=ig.ig_account(DEAD),
    path=ig.PATH,
    sign=sign,
    env=ENV,
    examples=(
        Example(
            "instagram_message",
            {
                "object": "instagram",
                "entry": [
                    {
                        "id": ig.IGID,
                        "time": NOW * 1000,
                        "messaging": [
                            {
                                "sender": {"id": ig.IGSID},
                                "recipient": {"id": ig.IGID},
                                "timestamp": NOW * 1000 - 100,
                                "message": {
                                    "mid": "aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOjE3ODQx",
                                    "text": "Есть размер M?",
                                    "reply_to": {
                                        "story": {
                                            "url": "https://lookaside.fbsbx.com/ig_messaging_cdn/?asset_id=1",
                                            "id": "17900011122233344",
                                        }
                                    },
                                },
                            }
                        ],
                    }
                ],
            },
            (
                Need("object", ("object",), any_of("instagram")),
                Need("account", ("entry.0.id",), any_of(ig.IGID)),
                Need("who", (f"{IG_ITEM}.sender.id",)),
                Need("kind", (f"{IG_ITEM}.message",), lambda v: isinstance(v, dict)),
                Need("not_echo", (f"{IG_ITEM}.message.is_echo",), lambda v: v is not True),
                Need("not_deleted", (f"{IG_ITEM}.message.is_deleted",), lambda v: v is not True),
            ),
            kind_keys=(f"{IG_ITEM}.message",),
        ),
    ),
)

CASES = {"messenger": MESSENGER, "instagram": INSTAGRAM}


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Case:
    chosen = CASES[request.param]
    for name, value in chosen.env.items():
        monkeypatch.setenv(name, value)
    return chosen


def test_examples_are_read_as_they_are(case: Case) -> None:
    for example in case.examples:
        assert readable(example.payload, example.needs), example.name
        body = Variant("none", "", "unmutated", example.payload).encode()
        parsed = case.channel.read(case.account, request(case, body))
        assert produced(parsed, example.produces), example.name


def test_every_mutation_through_read(case: Case) -> None:
    counted = {"variants": 0, "readable": 0, "read": 0}
    for example in case.examples:
        for variant in variants(case, example):
            counted["variants"] += 1
            counted["readable"] += readable(variant, example.needs)
            counted["read"] += read_variant(case, example, variant) is not None
    assert counted["variants"] > 100
    assert counted["readable"] > counted["variants"] // 2


async def test_a_sample_over_http(case: Case, mongo_uri: str, db_name: str) -> None:
    checked = [
        (example, v)
        for example in case.examples
        for v in sample(variants(case, example), 0.1, salt=example.name)
    ]
    async with running(case, mongo_uri, db_name) as svc:
        for example, variant in checked:
            parsed = read_variant(case, example, variant)
            try:
                status, text = await post(svc, case, variant.encode())
            except aiohttp.ClientError as exc:
                raise AssertionError(f"{variant.description}: {exc!r}") from exc
            assert status < 500, (variant.description, status, text)
            assert not EXCEPTION_TEXT.search(text), (variant.description, text)
            if readable(variant, example.needs):
                assert 200 <= status < 300, (variant.description, status, text)
            if parsed is not None and parsed.messages:
                assert await in_intake(svc, parsed), variant.description
        await svc.routed()
        failed = [d async for d in svc.store.intake.find({"status": "failed"}, {"error": 1})]
        assert failed == []
        assert await svc.store.intake.count_documents({"status": "routed"}) > 0
    assert len(checked) >= 10
