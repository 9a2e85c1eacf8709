"""Zadarma's NOTIFY_START answered with who is calling, over real HTTP: a signed start from
a known contact's number gets ``caller_name`` (and, where configured, ``redirect`` to the
responsible's extension) as JSON, and the call is stored as for any other start; an
unknown number gets the plain acknowledgement; the other reports never carry a name.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson

from channels.base import Caller
from channels.zadarma import ZadarmaChannel
from config.loader import load_config
from config.settings import DEFAULT_CONFIG_DIR
from tests.calls_support import call_of, known_contact
from tests.fakes.zadarma import FakeZadarma
from tests.service import InProcess, config_with, in_process
from tests.test_channel_zadarma import ACCOUNT, DID, KEY, SECRET, hook, zadarma_account

# The autouse fixture of the channel tests: the secrets, and START a minute and a half ago.
from tests.test_channel_zadarma import zadarma_env as zadarma_env

# Every user of the example has an extension: whoever the round robin makes responsible.
USERS = [u.id for u in load_config(DEFAULT_CONFIG_DIR).users.users]
EXTENSIONS = {f"login.{user}": str(201 + i) for i, user in enumerate(USERS)}


@asynccontextmanager
async def running(
    mongo_uri: str, db_name: str, **settings: str | int | bool
) -> AsyncIterator[tuple[InProcess, FakeZadarma]]:
    async with FakeZadarma(KEY, SECRET) as fake:
        base = zadarma_account(fake.base)
        account = base.model_copy(update={"settings": {**base.settings, **settings}})
        async with in_process(mongo_uri, db_name, config=config_with(account)) as svc:
            yield svc, fake


def start_fields(call: str, caller: str) -> dict[str, str]:
    from tests import test_channel_zadarma as z  # START is set per test by the fixture

    return {"pbx_call_id": call, "caller_id": caller, "called_did": DID, "call_start": z.START}


async def test_known_caller_gets_name_and_redirect_unknown_gets_the_plain_answer(
    mongo_uri: str, db_name: str
) -> None:
    async with running(
        mongo_uri, db_name, redirect_to_responsible=True, redirect_timeout_s=15, **EXTENSIONS
    ) as (svc, fake):
        lead = await known_contact(svc, "8 900 123 45 67", name="Иван Петров")
        status, raw = await fake.notify(
            hook(svc), "NOTIFY_START", **start_fields("z-k", "79001234567")
        )
        assert status == 200, raw
        assert orjson.loads(raw) == {
            "caller_name": "Иван Петров",
            "redirect": EXTENSIONS[f"login.{lead['responsible_id']}"],
            "return_timeout": 15,
        }
        # The start is stored as any other: the call, on the contact's lead.
        await svc.routed()
        call = await call_of(svc, "zadarma", ACCOUNT, "z-k")
        assert (call.status, call.customer) == ("ringing", "+79001234567")
        msg = await svc.store.messages.find_one({"_id": call.message_id})
        assert msg is not None
        assert msg["target"]["id"] == lead["_id"]
        # Later reports of the call carry no name (the answer is the acknowledgement).
        internal = {**start_fields("z-k", "79001234567"), "internal": "201"}
        status, raw = await fake.notify(hook(svc), "NOTIFY_INTERNAL", **internal)
        assert status == 200
        assert "caller_name" not in orjson.loads(raw)
        # An unknown number: the plain acknowledgement, the call stored all the same.
        status, raw = await fake.notify(
            hook(svc), "NOTIFY_START", **start_fields("z-u", "79009998877")
        )
        assert status == 200
        answer = orjson.loads(raw)
        assert answer["ok"] is True
        assert "caller_name" not in answer
        assert "redirect" not in answer
        await svc.routed()
        assert (await call_of(svc, "zadarma", ACCOUNT, "z-u")).customer == "+79009998877"
        # A forged start (wrong signature) learns nothing of the contact.
        status, raw = await fake.notify(
            hook(svc), "NOTIFY_START", signature="Zm9yZ2Vk", **start_fields("z-f", "79001234567")
        )
        assert status == 401
        assert "Иван".encode() not in raw


async def test_without_redirect_only_the_name_is_answered(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name, **EXTENSIONS) as (svc, fake):
        await known_contact(svc, "+7 900 555-44-33", name="Мария")
        status, raw = await fake.notify(
            hook(svc), "NOTIFY_START", **start_fields("z-n", "79005554433")
        )
        assert (status, orjson.loads(raw)) == (200, {"caller_name": "Мария"})


def test_caller_reply_shapes() -> None:
    channel = ZadarmaChannel()
    account = zadarma_account("http://unused").model_copy(
        update={"settings": {"redirect_to_responsible": True, "login.anna.smirnova": 101}}
    )
    known = Caller(contact_id="c1", name="Анна", responsible_id="anna.smirnova")
    body = channel.caller_reply(account, known)
    assert body.reply_content_type == "application/json"
    assert orjson.loads(body.reply or "") == {
        "caller_name": "Анна",
        "redirect": "101",
        "return_timeout": 20,
    }
    # A responsible without an extension: no redirect; a nameless contact: nothing to say.
    other = Caller(contact_id="c2", name="Олег", responsible_id="olga.ivanova")
    assert orjson.loads(channel.caller_reply(account, other).reply or "") == {"caller_name": "Олег"}
    assert channel.caller_reply(account, Caller("c3", None, None)).reply is None
    assert channel.caller_reply(account, None).reply is None
