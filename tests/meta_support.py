"""What the Messenger and Instagram tests share: accounts pointed at the Graph fake,
signed posts over real HTTP into the in-process service, and store look-ups."""

from __future__ import annotations

from typing import Any

import orjson

from channels.meta import SIGNATURE_HEADER, signature
from inbox.replies import reply
from tests.helpers import wait_for
from tests.service import InProcess

APP_SECRET = "meta-app-secret"
IG_APP_SECRET = "instagram-app-secret"
VERIFY_TOKEN = "meta-verify-token"
TOKEN = "test-page-token"
ENV = {
    "OMNIROUTE_TEST_META_TOKEN": TOKEN,
    "OMNIROUTE_TEST_META_APP_SECRET": APP_SECRET,
    "OMNIROUTE_TEST_IG_APP_SECRET": IG_APP_SECRET,
    "OMNIROUTE_TEST_META_VERIFY": VERIFY_TOKEN,
}
SECRET_SETTINGS: dict[str, str | int | float | bool] = {
    "app_secret_env": "OMNIROUTE_TEST_META_APP_SECRET",
    "verify_token_env": "OMNIROUTE_TEST_META_VERIFY",
}
Json = dict[str, Any]


async def post(
    svc: InProcess,
    path: str,
    payload: Json | bytes,
    *,
    secret: str = APP_SECRET,
    headers: dict[str, str] | None = None,
) -> tuple[int, Json]:
    raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    hdrs = {"Content-Type": "application/json", SIGNATURE_HEADER: signature(secret, raw)}
    if headers is not None:
        hdrs = {"Content-Type": "application/json", **headers}
    async with svc.client.http.post(f"{svc.client.base}{path}", data=raw, headers=hdrs) as r:
        body = await r.read()
        return r.status, (orjson.loads(body) if body else {})


async def get(svc: InProcess, path: str, params: dict[str, str]) -> tuple[int, str]:
    async with svc.client.http.get(f"{svc.client.base}{path}", params=params) as r:
        return r.status, await r.text()


async def one(coll: Any, query: Json) -> Json:
    docs = [d async for d in coll.find(query)]
    assert len(docs) == 1, f"expected one document for {query}, found {docs}"
    found: Json = docs[0]
    return found


async def nothing_stored(svc: InProcess) -> None:
    for coll in (svc.store.intake, svc.store.messages, svc.store.contacts, svc.store.leads):
        assert await coll.count_documents({}) == 0


async def reply_and_wait(svc: InProcess, conv_id: str, body: str, state: str) -> Json:
    doc = await reply(svc.store, svc.service.config, conv_id, body)
    assert svc.service.outbox is not None
    svc.service.outbox.wake.set()

    async def reached() -> bool:
        found = await svc.store.messages.find_one({"_id": doc["_id"]})
        return found is not None and found["state"] == state

    await wait_for(reached, timeout=15, message=f"outbound message never reached {state}")
    out = await svc.store.messages.find_one({"_id": doc["_id"]})
    assert out is not None
    return out


async def handshake_checks(svc: InProcess, path: str) -> None:
    """Meta's GET verification: the bare challenge for the right token, 403 otherwise."""
    good = {
        "hub.mode": "subscribe",
        "hub.verify_token": VERIFY_TOKEN,
        "hub.challenge": "1158201444",
    }
    assert await get(svc, path, good) == (200, "1158201444")
    for bad in (
        {**good, "hub.verify_token": "guess"},
        {k: v for k, v in good.items() if k != "hub.verify_token"},
        {**good, "hub.mode": "unsubscribe"},
        {k: v for k, v in good.items() if k != "hub.challenge"},
    ):
        code, body = await get(svc, path, bad)
        assert code == 403, bad
        assert "1158201444" not in body


async def signature_checks(svc: InProcess, path: str, payload: Json) -> None:
    """Missing, malformed or foreign signatures: 401, nothing stored."""
    raw = orjson.dumps(payload)
    good = signature(APP_SECRET, raw)
    for headers in (
        {},
        {SIGNATURE_HEADER: ""},
        {SIGNATURE_HEADER: good[:-1] + ("0" if good[-1] != "0" else "1")},
        {SIGNATURE_HEADER: good.removeprefix("sha256=")},
        {SIGNATURE_HEADER: signature("another-secret", raw)},
        {SIGNATURE_HEADER: signature(APP_SECRET, raw + b" ")},
        {"X-Hub-Signature": good},
    ):
        code, body = await post(svc, path, raw, headers=headers)
        assert (code, body.get("code")) == (401, "unauthorized"), headers
    await nothing_stored(svc)
