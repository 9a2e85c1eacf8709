"""A property-based fuzz pass over every webhook channel, with VALID authentication.

For each provider, random JSON (alone, or as the values of the provider's own payload
skeleton) and random bytes are signed the way the provider signs them (the same helpers
the channel tests use) and posted over real HTTP to one running service. Whatever the
body: never a 5xx, and never a Python exception text in the answer. An authentic body
that cannot be read is kept as ``unparsed`` (2xx); only VK and MegaFon, whose proof of
origin is inside the body, may refuse a body they cannot read — with 400.

Bounded: ``EXAMPLES`` per channel, one service for the module.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channels import mango, viber, whatsapp, zadarma
from channels.signing import sign as omniroute_sign
from channels.telegram import SECRET_HEADER as TELEGRAM_SECRET_HEADER
from config.loader import load_config
from config.models import ChannelAccount, Source
from config.settings import DEFAULT_CONFIG_DIR
from tests.service import InProcess, config_with, in_process

EXAMPLES = 40
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# Fragments of Python exception texts and tracebacks.
EXCEPTION_TEXT = (
    "Traceback",
    'File "',
    "Error:",
    "Exception",
    "line 1 column",
    "unexpected character",
    "object has no attribute",
    "NoneType",
    "Errno",
)

SECRETS = {
    "OMNIROUTE_FUZZ_API": "fuzz-api-secret",
    "OMNIROUTE_FUZZ_PBX": "fuzz-pbx-secret",
    "OMNIROUTE_FUZZ_TG_TOKEN": "123456:fuzz-bot-token",
    "OMNIROUTE_FUZZ_TG_HOOK": "fuzz-telegram-webhook-secret",
    "OMNIROUTE_FUZZ_WA_TOKEN": "fuzz-wa-token",
    "OMNIROUTE_FUZZ_WA_APP": "fuzz-wa-app-secret",
    "OMNIROUTE_FUZZ_WA_VERIFY": "fuzz-wa-verify",
    "OMNIROUTE_FUZZ_VIBER": "4453b6ac12345678-e02c5f12174805f9-daec9cbb5448c51f",
    "OMNIROUTE_FUZZ_VK_TOKEN": "vk1.a.fuzz-community-token",
    "OMNIROUTE_FUZZ_VK_CALLBACK": "fuzz-vk-callback-secret",
    "OMNIROUTE_FUZZ_AVITO": "fuzz-avito-client-secret",
    "OMNIROUTE_FUZZ_AVITO_HOOK": "fuzz-avito-webhook-token-0123456789",
    "OMNIROUTE_FUZZ_MEGAFON": "b1946ac92492d2347c6235b4d2611184",
    "OMNIROUTE_FUZZ_MANGO": "fuzz-mango-salt",
    "OMNIROUTE_FUZZ_ZADARMA": "fuzz-zadarma-secret",
    "OMNIROUTE_FUZZ_ZADARMA_KEY": "fuzz-zadarma-key",
}
VK_GROUP = 218_000_111
MANGO_KEY = "fuzz-mango-vpbx-api-key"
DEAD = "http://127.0.0.1:9"  # provider APIs are never reached by an inbound webhook


def accounts() -> list[ChannelAccount]:
    def acc(channel: str, secret_env: str, **settings: str | int) -> ChannelAccount:
        return ChannelAccount(
            channel=channel,
            account="fuzz",
            source="fuzz",
            secret_env=secret_env,
            settings=settings,
        )

    return [
        acc("api", "OMNIROUTE_FUZZ_API"),
        acc("pbx", "OMNIROUTE_FUZZ_PBX"),
        acc(
            "telegram",
            "OMNIROUTE_FUZZ_TG_TOKEN",
            webhook_secret_env="OMNIROUTE_FUZZ_TG_HOOK",
            api_base=DEAD,
        ),
        acc(
            "whatsapp",
            "OMNIROUTE_FUZZ_WA_TOKEN",
            app_secret_env="OMNIROUTE_FUZZ_WA_APP",
            verify_token_env="OMNIROUTE_FUZZ_WA_VERIFY",
            phone_number_id="106540352242922",
            api_base=DEAD,
        ),
        acc("viber", "OMNIROUTE_FUZZ_VIBER", api_base=DEAD),
        acc(
            "vk",
            "OMNIROUTE_FUZZ_VK_TOKEN",
            group_id=VK_GROUP,
            confirmation="4f1c9a2e",
            callback_secret_env="OMNIROUTE_FUZZ_VK_CALLBACK",
        ),
        acc(
            "avito",
            "OMNIROUTE_FUZZ_AVITO",
            client_id="fuzz-client",
            user_id=94235311,
            webhook_token_env="OMNIROUTE_FUZZ_AVITO_HOOK",
            api_base=DEAD,
        ),
        acc("megafon", "OMNIROUTE_FUZZ_MEGAFON", api_url=f"{DEAD}/crmapi/v1"),
        acc("mango", "OMNIROUTE_FUZZ_MANGO", vpbx_api_key=MANGO_KEY),
        acc(
            "zadarma",
            "OMNIROUTE_FUZZ_ZADARMA",
            api_key_env="OMNIROUTE_FUZZ_ZADARMA_KEY",
            api_base=DEAD,
        ),
    ]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def svc(mongo_uri: str) -> AsyncIterator[InProcess]:
    with pytest.MonkeyPatch.context() as mp:
        for name, value in SECRETS.items():
            mp.setenv(name, value)
        base = load_config(DEFAULT_CONFIG_DIR)
        source = Source(id="fuzz", name="Fuzz", pipeline="leads", line="sales")
        sources = base.sources.model_copy(update={"sources": [*base.sources.sources, source]})
        config = config_with(*accounts(), base=base.model_copy(update={"sources": sources}))
        db = f"t_fuzz_{uuid.uuid4().hex[:8]}"
        async with in_process(mongo_uri, db, config=config, automation_enabled=False) as s:
            yield s


# --------------------------------------------------------------------------- strategies

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 2**53 + 1, 2**63, 2**64, -(2**63) - 1, 253402300799, 10**20]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.sampled_from(["", "0", "-1", "9999-12-31T23:59:59", "1970-01-01", "null", "\x00", "Ω"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=25,
)


def skeleton(shape: Any) -> st.SearchStrategy[Any]:
    """A provider's payload shape with random values (or whole random subtrees) at its
    leaves, and keys dropped at random."""
    if isinstance(shape, dict):
        return st.fixed_dictionaries(
            {},
            optional={k: st.one_of(skeleton(v), json_values) for k, v in shape.items()},
        )
    if isinstance(shape, list):
        return st.lists(skeleton(shape[0]), max_size=3) if shape else st.just([])
    return st.one_of(st.just(shape), json_values)


SHAPES: dict[str, Any] = {
    "api": {
        "external_id": "form-1",
        "sender": {"phone": "+79001234567", "email": "a@b.ru", "name": "Ivan"},
        "text": "hi",
        "sent_at": "2024-11-20T10:15:00Z",
        "thread_id": "t1",
        "attachments": [{"kind": "file", "url": "https://x/y.pdf", "size": 1}],
    },
    "pbx": {
        "call_id": "c1",
        "event": "hangup",
        "direction": "in",
        "customer": "+79001234567",
        "line": "74951234567",
        "agent": "101",
        "disposition": "answered",
        "at": 1_700_000_000,
        "duration_s": 95,
    },
    "telegram": {
        "update_id": 1,
        "message": {
            "message_id": 1,
            "from": {"id": 1, "is_bot": False, "first_name": "Ivan"},
            "chat": {"id": 1, "type": "private"},
            "date": 1_700_000_000,
            "text": "hi",
            "photo": [{"file_id": "f", "file_unique_id": "u", "width": 1, "height": 1}],
        },
        "edited_message": {"message_id": 1, "chat": {"id": 1}, "edit_date": 1, "text": "x"},
    },
    "whatsapp": {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "1",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "metadata": {"phone_number_id": "106540352242922"},
                            "contacts": [{"profile": {"name": "Ivan"}, "wa_id": "7900"}],
                            "messages": [
                                {
                                    "from": "7900",
                                    "id": "wamid.1",
                                    "timestamp": "1700000000",
                                    "type": "text",
                                    "text": {"body": "hi"},
                                }
                            ],
                            "statuses": [{"id": "wamid.2", "status": "read", "timestamp": "1"}],
                        },
                    }
                ],
            }
        ],
    },
    "viber": {
        "event": "message",
        "timestamp": 1_700_000_000_000,
        "message_token": 5_000_000_000_000_000_000,
        "sender": {"id": "01234567890A=", "name": "Ivan"},
        "message": {"type": "text", "text": "hi", "media": "https://x"},
    },
    "avito": {
        "id": "1",
        "version": "v3.0.0",
        "timestamp": 1_700_000_000,
        "payload": {
            "type": "message",
            "value": {
                "id": "m1",
                "chat_id": "c1",
                "user_id": 94235311,
                "author_id": 1,
                "created": 1_700_000_000,
                "type": "text",
                "content": {"text": "hi"},
                "item_id": 1,
            },
        },
    },
    "vk": {
        "type": "message_new",
        "event_id": "e1",
        "v": "5.199",
        "object": {
            "message": {
                "date": 1_700_000_000,
                "from_id": 1,
                "id": 1,
                "peer_id": 1,
                "conversation_message_id": 1,
                "text": "hi",
                "attachments": [],
            }
        },
    },
    "mango": {
        "entry_id": "e1",
        "call_id": "c1",
        "timestamp": 1_700_000_000,
        "seq": 1,
        "call_state": "Appeared",
        "location": "ivr",
        "from": {"number": "79001234567"},
        "to": {"number": "74951234567", "extension": "101"},
    },
}
FORM_KEYS = {
    "megafon": [
        "cmd",
        "type",
        "phone",
        "diversion",
        "user",
        "callid",
        "status",
        "start",
        "duration",
    ],
    "zadarma": [
        "caller_id",
        "called_did",
        "call_start",
        "pbx_call_id",
        "destination",
        "internal",
        "disposition",
        "duration",
        "is_recorded",
        "call_id_with_rec",
    ],
}


def body_for(channel: str) -> st.SearchStrategy[Any]:
    """A random JSON document, the channel's shape with random values, or random bytes."""
    options = [json_values, st.binary(max_size=1500)]
    if channel in SHAPES:
        options.append(skeleton(SHAPES[channel]))
    return st.one_of(*options)


form_values = st.one_of(
    st.text(max_size=30),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from(["", "20241120T101500Z", "2024-11-20 10:15:00", "9999999999999", "-1"]),
)


def form_for(channel: str) -> st.SearchStrategy[dict[str, str]]:
    return st.dictionaries(
        st.one_of(st.sampled_from(FORM_KEYS[channel]), st.text(max_size=10)),
        form_values,
        max_size=10,
    )


# ------------------------------------------------------------------- signing and posting


def encode(body: Any) -> bytes:
    if isinstance(body, bytes):
        return body
    try:
        return orjson.dumps(body)
    except TypeError:  # an integer beyond 64 bits: the standard library writes it
        import json

        return json.dumps(body).encode()


def omniroute_headers(secret: str, raw: bytes) -> dict[str, str]:
    ts = str(int(time.time()))
    return {
        "Content-Type": "application/json",
        "X-Omniroute-Timestamp": ts,
        "X-Omniroute-Signature": omniroute_sign(secret, ts, raw),
    }


async def post(svc: InProcess, path: str, raw: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    async with svc.client.http.post(f"{svc.client.base}{path}", data=raw, headers=headers) as r:
        return r.status, await r.read()


def check(channel: str, status: int, answer: bytes, raw: bytes) -> None:
    assert status < 500, (channel, status, answer[:300], raw[:300])
    text = answer.decode("utf-8", "replace")
    for fragment in EXCEPTION_TEXT:
        assert fragment not in text, (channel, fragment, text[:300], raw[:300])
    if channel not in ("vk", "megafon"):
        # An authenticated delivery is never refused for its shape.
        assert status < 400, (channel, status, answer[:300], raw[:300])
    else:
        assert status in (200, 400), (channel, status, answer[:300], raw[:300])


def signed_json_request(channel: str, raw: bytes) -> tuple[str, dict[str, str]]:
    path = f"/webhooks/{channel}/fuzz"
    json_type = {"Content-Type": "application/json"}
    if channel == "api":
        return path, omniroute_headers(SECRETS["OMNIROUTE_FUZZ_API"], raw)
    if channel == "pbx":
        return path, omniroute_headers(SECRETS["OMNIROUTE_FUZZ_PBX"], raw)
    if channel == "telegram":
        return path, {**json_type, TELEGRAM_SECRET_HEADER: SECRETS["OMNIROUTE_FUZZ_TG_HOOK"]}
    if channel == "whatsapp":
        sig = whatsapp.signature(SECRETS["OMNIROUTE_FUZZ_WA_APP"], raw)
        return path, {**json_type, whatsapp.SIGNATURE_HEADER: sig}
    if channel == "viber":
        sig = viber.sign(SECRETS["OMNIROUTE_FUZZ_VIBER"], raw)
        return path, {**json_type, viber.SIGNATURE_HEADER: sig}
    if channel == "avito":
        return f"{path}/{SECRETS['OMNIROUTE_FUZZ_AVITO_HOOK']}", json_type
    raise AssertionError(channel)


@pytest.mark.parametrize("channel", ["api", "pbx", "telegram", "whatsapp", "viber", "avito"])
@FUZZ
@given(data=st.data())
async def test_json_channels_never_fail_on_authentic_input(
    svc: InProcess, channel: str, data: st.DataObject
) -> None:
    raw = encode(data.draw(body_for(channel), label="body"))
    path, headers = signed_json_request(channel, raw)
    status, answer = await post(svc, path, raw, headers)
    check(channel, status, answer, raw)


@FUZZ
@given(body=body_for("vk"), kind=st.one_of(st.text(max_size=20), st.just("message_new")))
async def test_vk_never_fails_on_authentic_input(svc: InProcess, body: Any, kind: str) -> None:
    """VK's proof is the ``secret`` inside the body: a random object carries it (and the
    group id); a body that is not such an object may be refused with 400."""
    if isinstance(body, dict):
        body = {
            **body,
            "type": body.get("type") if isinstance(body.get("type"), str) else kind,
            "group_id": VK_GROUP,
            "secret": SECRETS["OMNIROUTE_FUZZ_VK_CALLBACK"],
        }
    raw = encode(body)
    headers = {"Content-Type": "application/json"}
    status, answer = await post(svc, "/webhooks/vk/fuzz", raw, headers)
    check("vk", status, answer, raw)
    if isinstance(body, dict) and body["type"] != "confirmation":
        assert (status, answer) == (200, b"ok"), (answer[:300], raw[:300])


@FUZZ
@given(fields=form_for("megafon"), junk=st.binary(max_size=300), as_form=st.booleans())
async def test_megafon_never_fails_on_authentic_input(
    svc: InProcess, fields: dict[str, str], junk: bytes, as_form: bool
) -> None:
    token = SECRETS["OMNIROUTE_FUZZ_MEGAFON"]
    if as_form:
        raw = urlencode({**fields, "crm_token": token}).encode()
    else:
        raw = junk + b"&crm_token=" + token.encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    status, answer = await post(svc, "/webhooks/megafon/fuzz", raw, headers)
    check("megafon", status, answer, raw)


@FUZZ
@given(
    body=body_for("mango"),
    kind=st.sampled_from(["call", "summary", "recording", "dtmf", "sms", "x"]),
)
async def test_mango_never_fails_on_authentic_input(svc: InProcess, body: Any, kind: str) -> None:
    json_text = encode(body).decode("utf-8", "replace")
    salt = SECRETS["OMNIROUTE_FUZZ_MANGO"]
    fields = {
        "vpbx_api_key": MANGO_KEY,
        "sign": mango.sign(MANGO_KEY, json_text, salt),
        "json": json_text,
    }
    raw = urlencode(fields).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    status, answer = await post(svc, f"/webhooks/mango/fuzz/events/{kind}", raw, headers)
    check("mango", status, answer, raw)


@FUZZ
@given(fields=form_for("zadarma"), event=st.sampled_from(sorted(zadarma.SIGNED)))
async def test_zadarma_never_fails_on_authentic_input(
    svc: InProcess, fields: dict[str, str], event: str
) -> None:
    """Zadarma signs a few fields per event: those are signed as Zadarma does; a stale
    signed ``call_start`` may be refused (403, the freshness rule) — never a 5xx."""
    form = {**fields, "event": event}
    sig = zadarma.signature(SECRETS["OMNIROUTE_FUZZ_ZADARMA"], zadarma.signed_string(event, form))
    raw = urlencode(form).encode()
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        zadarma.SIGNATURE_HEADER: sig,
    }
    status, answer = await post(svc, "/webhooks/zadarma/fuzz", raw, headers)
    assert status < 500, (status, answer[:300], raw[:300])
    assert status in (200, 403), (status, answer[:300], raw[:300])
    text = answer.decode("utf-8", "replace")
    for fragment in EXCEPTION_TEXT:
        assert fragment not in text, (fragment, text[:300])


async def test_the_service_still_answers_after_the_fuzz(svc: InProcess) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{svc.client.base}/healthz") as r:
        assert r.status == 200
