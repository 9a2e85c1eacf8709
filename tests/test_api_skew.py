"""The API channel's clock-skew window, pinned at its edges.

A signed request whose timestamp is more than 5 minutes (300 s) from the server's clock is
a replay and refused; 299 s either way is a slow client and accepted. The edges are pinned
in seconds, not relative to ``MAX_SKEW_S``, so a widened (or narrowed) window fails here.
"""

from __future__ import annotations

import time

import orjson
import pytest

from channels.api import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign, verify
from channels.base import Unauthorized, WebhookRequest
from crm_store.documents import intake_id
from tests.service import ACCOUNT_SECRET, api_body, in_process, signed_headers

SECRET = ACCOUNT_SECRET["site"]
NOW = 1_765_000_000  # a fixed server clock, unix seconds
BODY = orjson.dumps(api_body("skew-1", phone="+79001234567", text="I need a wardrobe"))


def request(stamp: int, body: bytes = BODY) -> WebhookRequest:
    """A correctly signed request stamped ``stamp``."""
    ts = str(stamp)
    return WebhookRequest(
        method="POST",
        headers={TIMESTAMP_HEADER: ts, SIGNATURE_HEADER: sign(SECRET, ts, body)},
        query={},
        body=body,
    )


@pytest.mark.parametrize("skew", [0, 1, 299, 300, -1, -299, -300])
def test_a_timestamp_within_five_minutes_either_way_is_accepted(skew: int) -> None:
    verify(SECRET, request(NOW + skew), now=NOW)  # raises when refused


@pytest.mark.parametrize("skew", [301, -301, 3000, -3000, 3600, -86400])
def test_a_timestamp_over_five_minutes_either_way_is_refused(skew: int) -> None:
    with pytest.raises(Unauthorized, match="5 minutes"):
        verify(SECRET, request(NOW + skew), now=NOW)


def test_the_window_is_measured_against_the_clock_given() -> None:
    """A fractional server clock: 300.5 s away is over the window, 299.5 s is not."""
    with pytest.raises(Unauthorized):
        verify(SECRET, request(NOW), now=NOW + 300.5)
    with pytest.raises(Unauthorized):
        verify(SECRET, request(NOW), now=NOW - 300.5)
    verify(SECRET, request(NOW), now=NOW + 299.5)
    verify(SECRET, request(NOW), now=NOW - 299.5)


# Over HTTP the server reads its own clock, which moves while the request travels: the
# edges are checked with 10 s to spare on each side (still far inside a widened window).
@pytest.mark.parametrize(
    ("skew", "status"),
    [(290, 200), (-290, 200), (310, 401), (-310, 401)],
    ids=["ahead_ok", "behind_ok", "ahead_refused", "behind_refused"],
)
async def test_the_webhook_applies_the_same_window(
    mongo_uri: str, db_name: str, skew: int, status: int
) -> None:
    async with in_process(mongo_uri, db_name) as svc:
        headers = signed_headers(SECRET, BODY, ts=int(time.time()) + skew)
        url = f"{svc.client.base}/webhooks/api/site"
        async with svc.client.http.post(url, data=BODY, headers=headers) as r:
            answer = orjson.loads(await r.read())
            assert r.status == status, answer
        if status == 200:
            assert answer["accepted"] == [intake_id("api", "site", "skew-1")]
        else:
            assert answer["code"] == "unauthorized"
            assert await svc.store.intake.count_documents({}) == 0
