"""Mango Office click-to-call over real HTTP: ``POST /api/v1/calls`` → a signed
``/vpbx/commands/callback`` to a local fake of Mango's command API (tests/fakes/mango.py,
exact requests recorded), our request id as ``command_id`` (a repeat places the call once),
Mango's result codes mapped (3100 → 422 with the reason, 5xxx → 503, try again), and the
call's later events carrying that ``command_id`` linked to the request.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest

from crm_store import call_requests
from tests.calls_support import bearer, call_of
from tests.fakes.mango import CALLBACK_PATH, FakeMango
from tests.service import InProcess, config_with, in_process
from tests.test_channel_mango import ACCOUNT, API_KEY, LINE, SALT, base, mango_account
from tests.test_channel_mango import mango_env as mango_env  # autouse: the salt's variable

ANNA = "anna.smirnova"
ADMIN = "sergey.volkov"


@asynccontextmanager
async def running(mongo_uri: str, db_name: str) -> AsyncIterator[tuple[InProcess, FakeMango]]:
    async with FakeMango(API_KEY, SALT) as fake:
        account = mango_account()
        settings = {
            **account.settings,
            "api_base": fake.api_base,
            f"login.{ANNA}": "101",
            f"login.{ADMIN}": "102",
        }
        account = account.model_copy(update={"settings": {**settings, "timeout_s": 5}})
        async with in_process(mongo_uri, db_name, config=config_with(account)) as svc:
            yield svc, fake


async def place(
    svc: InProcess, body: dict[str, Any], user: str = ANNA
) -> tuple[int, dict[str, Any]]:
    headers = await bearer(svc, user)
    async with svc.client.http.post(
        f"{svc.client.base}/api/v1/calls", data=orjson.dumps(body), headers=headers
    ) as resp:
        return resp.status, orjson.loads(await resp.read())


async def test_click_to_call_sends_a_signed_callback_once_and_links_the_call(
    mongo_uri: str, db_name: str
) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        request = {"phone": "8 (900) 123-45-67", "channel": "mango", "request_id": "req-1"}
        status, answer = await place(svc, request)
        assert status == 202, answer
        assert answer == {
            "channel": "mango",
            "account": ACCOUNT,
            "user_id": ANNA,
            "login": "101",
            "phone": "+79001234567",
            "provider_call_id": "req-1",
        }
        [command] = fake.commands
        assert command.path == CALLBACK_PATH
        assert set(command.form) == {"vpbx_api_key", "sign", "json"}
        assert command.json == {
            "command_id": "req-1",
            "from": {"extension": "101"},
            "to_number": "79001234567",
        }
        text = API_KEY + command.form["json"] + SALT  # the sign, computed independently
        assert command.form["sign"] == hashlib.sha256(text.encode()).hexdigest()
        # The same request again (a double click, a retry): answered, not placed again.
        status, again = await place(svc, request)
        assert (status, again) == (202, answer)
        assert len(fake.commands) == 1
        # Another user naming the same id learns nothing of it and places nothing.
        status, refused = await place(svc, {**request, "user_id": ADMIN}, ADMIN)
        assert (status, refused["code"]) == (409, "request_id_taken"), refused
        assert "79001234567" not in orjson.dumps(refused).decode()
        assert len(fake.commands) == 1
        stored = await call_requests.collection(svc.store).find_one({"_id": "req-1"})
        assert stored is not None
        assert (stored["state"], stored["by"], stored["login"]) == ("placed", ANNA, "101")
        # Mango's events of the call carry the command id: the call is linked to it.
        now = int(time.time())
        appeared = {
            "entry_id": "MTAxLT-cb1",
            "call_id": "MTAxLT-cb1-leg1",
            "timestamp": now,
            "seq": 1,
            "call_state": "Appeared",
            "location": "abonent",
            "from": {"extension": "101", "number": "sip:101@mebel.mangosip.ru"},
            "to": {"number": "79001234567", "line_number": LINE},
            "command_id": "req-1",
        }
        summary = {
            "entry_id": "MTAxLT-cb1",
            "call_direction": 2,
            "from": {"extension": "101"},
            "to": {"number": "79001234567"},
            "line_number": LINE,
            "create_time": now,
            "talk_time": now + 9,
            "end_time": now + 70,
            "entry_result": 1,
            "command_id": "req-1",
        }
        for kind, event in (("call", appeared), ("summary", summary)):
            status_, body = await fake.post(base(svc), kind, event)
            assert status_ == 200, body
        await svc.routed()
        call = await call_of(svc, "mango", ACCOUNT, "MTAxLT-cb1")
        assert (call.request_id, call.direction, call.customer) == ("req-1", "out", "+79001234567")
        assert (call.agent, call.talk_s) == ("101", 61)


@pytest.mark.parametrize(
    ("result", "http", "status", "code"),
    [
        (3100, 200, 422, "mango_invalid_parameters"),
        (5001, 200, 503, "mango_5001"),
        (1000, 503, 503, "mango_1000"),
        (4001, 200, 502, "mango_4001"),
    ],
)
async def test_mango_result_codes(
    mongo_uri: str, db_name: str, result: int, http: int, status: int, code: str
) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        fake.answer_next(result, http)
        request = {"phone": "+79001234567", "channel": "mango", "request_id": f"r-{result}"}
        got, problem = await place(svc, request)
        assert (got, problem["code"]) == (status, code), problem
        if result == 3100:
            assert "invalid parameters" in problem["detail"]
        # A failed request may be tried again under the same id; now Mango takes it.
        got, answer = await place(svc, request)
        assert got == 202, answer
        assert [c.json["command_id"] for c in fake.commands] == [request["request_id"]] * 2


async def test_a_wrong_salt_is_refused_by_mango(
    mongo_uri: str, db_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        monkeypatch.setenv("OMNIROUTE_TEST_MANGO_SALT", "not-the-salt")
        got, problem = await place(svc, {"phone": "+79001234567", "channel": "mango"})
        assert (got, problem["code"]) == (502, "mango_3102"), problem
        [command] = fake.commands
        assert command.json["command_id"]  # a fresh id when the client gave none
