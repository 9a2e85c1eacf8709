"""Authentic deliveries that cannot be read are kept, never refused: ``unparsed`` intake
records over real HTTP, ``omniroute intake list`` / ``reparse`` (idempotent), and
deliveries read in part (``Parsed.unreadable``)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from channels.api import ApiChannel
from channels.base import Parsed, WebhookRequest
from config.models import ChannelAccount
from crm_store import intake
from crm_store.documents import intake_id, unparsed_id
from ingest.cli import build_parser
from ingest.reparse import reparse
from tests.helpers import wait_for
from tests.service import ACCOUNT_SECRET, InProcess, api_body, in_process, signed_headers

ROOT = Path(__file__).resolve().parent.parent
Json = dict[str, Any]
# Fragments of Python exception texts that must never reach a response body.
EXCEPTION_TEXT = ("Traceback", "Error:", "Exception", "unexpected character", "line 1 column")


async def post_api_raw(svc: InProcess, raw: bytes) -> tuple[int, str, bytes]:
    url = f"{svc.client.base}/webhooks/api/site"
    headers = signed_headers(ACCOUNT_SECRET["site"], raw)
    async with svc.client.http.post(url, data=raw, headers=headers) as resp:
        return resp.status, resp.content_type, await resp.read()


def unparsed_count_metric(text: str, channel: str = "api") -> float:
    prefix = f'omniroute_intake_total{{channel="{channel}",outcome="unparsed"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return 0.0


def unparsed_of(raw: bytes, channel: str = "api", account: str = "site") -> str:
    """The id of the unparsed record a body (with no secret in it) is kept under."""
    return unparsed_id(channel, account, hashlib.sha256(raw).hexdigest())


async def test_an_authentic_unreadable_delivery_is_kept_as_unparsed_and_answered_2xx(
    mongo_uri: str, db_name: str
) -> None:
    async with in_process(mongo_uri, db_name) as svc:
        raw = b'{"external_id": "form-7", "sender": {"phone": "+79001234567"}, "text": '
        status, _, body = await post_api_raw(svc, raw)
        assert status == 200, body
        for fragment in EXCEPTION_TEXT:
            assert fragment not in body.decode()
        record = await svc.store.intake.find_one({"_id": unparsed_of(raw)})
        assert record is not None
        assert (record["status"], record["channel"], record["account"]) == (
            "unparsed",
            "api",
            "site",
        )
        assert record["source_id"] == "site"
        assert record["raw"] == raw
        assert record["request"] == {
            "method": "POST",
            "query": {},
            "content_type": "application/json",
        }
        assert record["error"]
        assert "owner" not in record
        assert "lease_until" not in record

        # The provider retries the same body: the same record, stored once.
        assert (await post_api_raw(svc, raw))[0] == 200
        assert await svc.store.intake.count_documents({"status": "unparsed"}) == 1
        status, metrics = await svc.client.get("/metrics")
        assert unparsed_count_metric(metrics.decode()) == 1.0

        # Neither routing nor any recovery sweep ever takes it.
        assert await intake.claim_expired(svc.store, "another-process", 30.0, 100) == []
        assert await svc.store.messages.count_documents({}) == 0


async def test_a_reader_that_raises_keeps_the_delivery_and_says_where(
    mongo_uri: str, db_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def reader_that_breaks(
        self: ApiChannel, account: ChannelAccount, req: WebhookRequest
    ) -> Parsed:
        fields: dict[str, Any] = {}
        fields["sender"]  # a KeyError, as a parser's slip
        raise AssertionError("unreachable")

    monkeypatch.setattr(ApiChannel, "read", reader_that_breaks)
    async with in_process(mongo_uri, db_name) as svc:
        raw = orjson.dumps(api_body("form-9", phone="+79001234569"))
        status, ctype, body = await post_api_raw(svc, raw)
        assert (status, ctype) == (200, "application/json")
        assert orjson.loads(body) == {
            "ok": True,
            "accepted": [],
            "duplicates": [],
            "unparsed": unparsed_of(raw),
        }
        record = await svc.store.intake.find_one({"_id": unparsed_of(raw)})
        assert record is not None
        assert record["error"] == "KeyError: 'sender'"


async def test_a_delivery_read_in_part_stores_what_it_read_and_keeps_the_whole_body(
    mongo_uri: str, db_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_read = ApiChannel.read

    def read_skipping_a_part(
        self: ApiChannel, account: ChannelAccount, req: WebhookRequest
    ) -> Parsed:
        parsed = real_read(self, account, req)
        return Parsed(messages=parsed.messages, unreadable=["attachments[1]: KeyError 'url'"])

    monkeypatch.setattr(ApiChannel, "read", read_skipping_a_part)
    async with in_process(mongo_uri, db_name) as svc:
        raw = orjson.dumps(api_body("form-8", phone="+79001234568"))
        status, _, body = await post_api_raw(svc, raw)
        answer = orjson.loads(body)
        assert status == 200
        assert answer["accepted"] == [intake_id("api", "site", "form-8")]
        record = await svc.store.intake.find_one({"_id": answer["unparsed"]})
        assert record is not None
        assert record["status"] == "unparsed"
        assert "attachments[1]: KeyError 'url'" in record["error"]
        await svc.routed()
        assert await svc.store.messages.count_documents({}) == 1


async def test_reparse_reads_again_routes_and_a_second_run_changes_nothing(
    mongo_uri: str, db_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_read = ApiChannel.read

    def old_reader(self: ApiChannel, account: ChannelAccount, req: WebhookRequest) -> Parsed:
        raise KeyError("sender")  # the parser before the upgrade

    async with in_process(mongo_uri, db_name) as svc:
        monkeypatch.setattr(ApiChannel, "read", old_reader)
        kept = []
        for n in range(3):
            raw = orjson.dumps(api_body(f"form-{n}", phone=f"+7900123450{n}", text=f"Sofa {n}"))
            status, _, body = await post_api_raw(svc, raw)
            assert status == 200
            kept.append(orjson.loads(body)["unparsed"])
        broken = b'{"external_id": "form-x"'  # stays unreadable after the upgrade too
        assert (await post_api_raw(svc, broken))[0] == 200
        broken_id = unparsed_of(broken)
        assert await svc.store.messages.count_documents({}) == 0

        monkeypatch.setattr(ApiChannel, "read", real_read)  # the upgrade
        report = await reparse(svc.store, svc.service.config, channel="api")
        assert sorted(report.reparsed) == sorted(kept)
        assert list(report.still_unparsed) == [broken_id]
        assert report.still_unparsed[broken_id]
        for n, rid in enumerate(kept):
            record = await svc.store.intake.find_one({"_id": rid})
            assert record is not None
            assert record["status"] == "reparsed"
            assert record["produced"] == [intake_id("api", "site", f"form-{n}")]

        # The running service's recovery sweep routes what the reparse wrote.
        async def routed() -> bool:
            return await svc.store.messages.count_documents({"direction": "in"}) == 3

        await wait_for(routed, timeout=20, message="reparsed messages were not routed")
        await svc.routed()
        before = [d async for d in svc.store.intake.find({}, sort=[("_id", 1)])]
        leads = await svc.store.leads.count_documents({})

        second = await reparse(svc.store, svc.service.config, channel="api")
        assert (second.reparsed, list(second.still_unparsed)) == ({}, [broken_id])
        after = [d async for d in svc.store.intake.find({}, sort=[("_id", 1)])]
        assert after == before
        assert await svc.store.leads.count_documents({}) == leads == 3


async def test_reparse_keeps_to_the_channel_and_time_asked_for(
    mongo_uri: str, db_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def old_reader(self: ApiChannel, account: ChannelAccount, req: WebhookRequest) -> Parsed:
        raise ValueError("old parser")

    async with in_process(mongo_uri, db_name) as svc:
        monkeypatch.setattr(ApiChannel, "read", old_reader)
        raw = orjson.dumps(api_body("form-late", phone="+79001230000"))
        rid = orjson.loads((await post_api_raw(svc, raw))[2])["unparsed"]
        monkeypatch.undo()
        other = await reparse(svc.store, svc.service.config, channel="telegram")
        record = await svc.store.intake.find_one({"_id": rid})
        assert record is not None
        after_it = record["received_at"] + timedelta(seconds=1)
        later = await reparse(svc.store, svc.service.config, since=after_it)
        assert (other.reparsed, later.reparsed) == ({}, {})
        record = await svc.store.intake.find_one({"_id": rid})
        assert record is not None
        assert record["status"] == "unparsed"


def test_intake_list_accepts_every_status_the_store_uses() -> None:
    parser = build_parser()
    for status in ("unparsed", "pending", "failed", "routed", "broken", "reparsed"):
        args = parser.parse_args(["intake", "list", "--status", status, "--since", "7d"])
        assert args.status == status
    with pytest.raises(SystemExit):
        parser.parse_args(["intake", "list", "--status", "lost"])
    with pytest.raises(SystemExit):
        parser.parse_args(["intake", "reparse", "--since", "last tuesday"])


async def test_the_cli_lists_unparsed_records_and_reparses_them(
    mongo_uri: str, db_name: str
) -> None:
    async with in_process(mongo_uri, db_name) as svc:
        raw = b'{"external_id": "form-cli", "sender": ['
        assert (await post_api_raw(svc, raw))[0] == 200
        rid = unparsed_of(raw)
        env = {
            **os.environ,
            "OMNIROUTE_MONGODB_URI": mongo_uri,
            "OMNIROUTE_DB_NAME": db_name,
            "OMNIROUTE_LOG_FORMAT": "json",
        }

        async def cli(*args: str) -> str:
            # In a thread: the service in this process keeps serving while the CLI runs.
            done = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "ingest.cli", "intake", *args],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, done.stderr
            return done.stdout

        listed = await cli("list", "--status", "unparsed", "--channel", "api")
        assert rid in listed
        assert "unparsed" in listed
        assert rid not in await cli("list", "--status", "routed")
        out = await cli("reparse", "--channel", "api")
        assert f"{rid}  still unparsed" in out
        assert "0 reparsed, 1 still unparsed" in out
