"""Finding 3 of the security review: a malformed signature, token or secret — non-ASCII,
bytes that are not UTF-8, the wrong type — is a refusal (401/403) on every webhook
channel, never a 500, and stores nothing.

Requests are written byte for byte over a TCP connection to the running service (an HTTP
client library would refuse to send such header values), so the service sees exactly what
a hostile client can send.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import quote_from_bytes, urlsplit

import orjson
import pytest

from channels.signing import as_bytes, matches, same, sign
from config.models import ChannelAccount
from tests.service import InProcess, config_with, in_process

SECRETS = {
    "OMNIROUTE_TEST_SIG_API": "api-secret",
    "OMNIROUTE_TEST_SIG_PBX": "pbx-secret",
    "OMNIROUTE_TEST_SIG_TG_TOKEN": "123456:telegram-bot-token",
    "OMNIROUTE_TEST_SIG_TG_HOOK": "telegram-webhook-secret",
    "OMNIROUTE_TEST_SIG_WA_TOKEN": "whatsapp-access-token",
    "OMNIROUTE_TEST_SIG_WA_APP": "whatsapp-app-secret",
    "OMNIROUTE_TEST_SIG_WA_VERIFY": "whatsapp-verify-token",
    "OMNIROUTE_TEST_SIG_VIBER": "viber-auth-token",
    "OMNIROUTE_TEST_SIG_VK_TOKEN": "vk-community-token",
    "OMNIROUTE_TEST_SIG_VK_CALLBACK": "vk-callback-secret",
    "OMNIROUTE_TEST_SIG_AVITO": "avito-client-secret",
    "OMNIROUTE_TEST_SIG_AVITO_HOOK": "avito-webhook-token-0123456789",
    "OMNIROUTE_TEST_SIG_MANGO": "mango-salt",
    "OMNIROUTE_TEST_SIG_MEGAFON": "megafon-crm-token",
    "OMNIROUTE_TEST_SIG_ZADARMA": "zadarma-api-secret",
}
A = "sig"  # every account's name
TG_HOOK_ENV = "OMNIROUTE_TEST_SIG_TG_HOOK"


def accounts() -> list[ChannelAccount]:
    def acc(channel: str, secret_env: str, **settings: str | int | bool) -> ChannelAccount:
        return ChannelAccount(
            channel=channel, account=A, source="site", secret_env=secret_env, settings=settings
        )

    return [
        acc("api", "OMNIROUTE_TEST_SIG_API"),
        acc("pbx", "OMNIROUTE_TEST_SIG_PBX"),
        acc(
            "telegram",
            "OMNIROUTE_TEST_SIG_TG_TOKEN",
            webhook_secret_env="OMNIROUTE_TEST_SIG_TG_HOOK",
        ),
        acc(
            "whatsapp",
            "OMNIROUTE_TEST_SIG_WA_TOKEN",
            app_secret_env="OMNIROUTE_TEST_SIG_WA_APP",
            verify_token_env="OMNIROUTE_TEST_SIG_WA_VERIFY",
            phone_number_id="106540352242922",
        ),
        acc("viber", "OMNIROUTE_TEST_SIG_VIBER"),
        acc(
            "vk",
            "OMNIROUTE_TEST_SIG_VK_TOKEN",
            group_id=219_000_001,
            confirmation="a1b2c3d4",
            callback_secret_env="OMNIROUTE_TEST_SIG_VK_CALLBACK",
        ),
        acc(
            "avito",
            "OMNIROUTE_TEST_SIG_AVITO",
            client_id="avito-client",
            user_id=94_235_311,
            webhook_token_env="OMNIROUTE_TEST_SIG_AVITO_HOOK",
        ),
        acc("mango", "OMNIROUTE_TEST_SIG_MANGO", vpbx_api_key="mango-vpbx-key"),
        acc("megafon", "OMNIROUTE_TEST_SIG_MEGAFON"),
        acc("zadarma", "OMNIROUTE_TEST_SIG_ZADARMA", timezone="UTC"),
    ]


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)


@asynccontextmanager
async def running(mongo_uri: str, db_name: str) -> AsyncIterator[InProcess]:
    async with in_process(mongo_uri, db_name, config=config_with(*accounts())) as svc:
        yield svc


async def raw_request(
    base: str,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes = b"",
    method: bytes = b"POST",
) -> tuple[int, bytes]:
    """One HTTP/1.1 request written as these exact bytes; the status and body answered."""
    url = urlsplit(base)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    head = [method + b" " + target + b" HTTP/1.1", f"Host: {url.netloc}".encode()]
    head += [name + b": " + value for name, value in headers]
    head += [b"Content-Length: " + str(len(body)).encode(), b"Connection: close"]
    writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


# Header values a hostile client can send: UTF-8 that is not ASCII, bytes that are not
# UTF-8, and both inside an otherwise well-formed signature.
ODD_VALUES: list[bytes] = [
    b"sha256=" + "é".encode() * 64,
    b"sha256=\xff\xfe\x80" + b"0" * 61,
    "подпись".encode(),
    b"\xc3\x28\xa0\xa1",
]
# The same as form or path text (percent-encoded).
ODD_TEXT = [quote_from_bytes(v).encode() for v in ODD_VALUES]

JSON = (b"Content-Type", b"application/json")
FORM = (b"Content-Type", b"application/x-www-form-urlencoded")
PBX_BODY = orjson.dumps(
    {"event": "call.started", "call_id": "1700000000.1", "direction": "in", "from": "+79001234567"}
)
API_BODY = orjson.dumps(
    {"external_id": "form-1", "sender": {"phone": "+79001234567"}, "text": "kitchen"}
)
TG_BODY = orjson.dumps(
    {
        "update_id": 1,
        "message": {
            "message_id": 1,
            "date": 1_700_000_000,
            "chat": {"id": 1, "type": "private"},
            "from": {"id": 1, "is_bot": False, "first_name": "Ivan"},
            "text": "hi",
        },
    }
)
WA_BODY = orjson.dumps({"object": "whatsapp_business_account", "entry": []})
VIBER_BODY = orjson.dumps({"event": "message", "timestamp": 1_700_000_000_000})


def cases() -> list[tuple[str, bytes, list[tuple[bytes, bytes]], bytes, bytes]]:
    """(channel, target, headers, body, method) for every malformed credential."""
    now = str(int(time.time())).encode()
    out: list[tuple[str, bytes, list[tuple[bytes, bytes]], bytes, bytes]] = []
    for value, text in zip(ODD_VALUES, ODD_TEXT, strict=True):
        stamp = (b"X-Omniroute-Timestamp", now)
        sig = (b"X-Omniroute-Signature", value)
        zadarma_form = b"event=NOTIFY_START&pbx_call_id=1&caller_id=79001234567&called_did=1"
        out += [
            ("api", b"/webhooks/api/" + A.encode(), [JSON, stamp, sig], API_BODY, b"POST"),
            ("pbx", b"/webhooks/pbx/" + A.encode(), [JSON, stamp, sig], PBX_BODY, b"POST"),
            # An odd timestamp beside a well-formed signature.
            (
                "api",
                b"/webhooks/api/" + A.encode(),
                [JSON, (b"X-Omniroute-Timestamp", value), (b"X-Omniroute-Signature", b"sha256=0")],
                API_BODY,
                b"POST",
            ),
            (
                "telegram",
                b"/webhooks/telegram/" + A.encode(),
                [JSON, (b"X-Telegram-Bot-Api-Secret-Token", value)],
                TG_BODY,
                b"POST",
            ),
            (
                "whatsapp",
                b"/webhooks/whatsapp/" + A.encode(),
                [JSON, (b"X-Hub-Signature-256", value)],
                WA_BODY,
                b"POST",
            ),
            (
                "whatsapp",
                b"/webhooks/whatsapp/"
                + A.encode()
                + b"?hub.mode=subscribe&hub.challenge=42&hub.verify_token="
                + text,
                [],
                b"",
                b"GET",
            ),
            (
                "viber",
                b"/webhooks/viber/" + A.encode(),
                [JSON, (b"X-Viber-Content-Signature", value)],
                VIBER_BODY,
                b"POST",
            ),
            (
                "vk",
                b"/webhooks/vk/" + A.encode(),
                [JSON],
                b'{"type":"message_new","group_id":219000001,"object":{},"secret":"'
                + value.replace(b'"', b"")
                + b'"}',
                b"POST",
            ),
            ("avito", b"/webhooks/avito/" + A.encode() + b"/" + text, [JSON], b"{}", b"POST"),
            (
                "mango",
                b"/webhooks/mango/" + A.encode() + b"/events/call",
                [FORM],
                b"vpbx_api_key=mango-vpbx-key&json=%7B%7D&sign=" + text,
                b"POST",
            ),
            (
                "mango",
                b"/webhooks/mango/" + A.encode() + b"/events/call",
                [FORM],
                b"vpbx_api_key=" + text + b"&json=%7B%7D&sign=00",
                b"POST",
            ),
            (
                "megafon",
                b"/webhooks/megafon/" + A.encode(),
                [FORM],
                b"cmd=history&callid=1&crm_token=" + text,
                b"POST",
            ),
            (
                "zadarma",
                b"/webhooks/zadarma/" + A.encode(),
                [FORM, (b"Signature", value)],
                zadarma_form + b"&call_start=" + text,
                b"POST",
            ),
        ]
    return out


async def test_malformed_credentials_are_refused_on_every_channel(
    mongo_uri: str, db_name: str
) -> None:
    async with running(mongo_uri, db_name) as svc:
        answers: list[tuple[str, bytes, int, bytes]] = []
        for channel, target, headers, body, method in cases():
            status, answer = await raw_request(svc.client.base, target, headers, body, method)
            answers.append((channel, target[:60], status, answer[:200]))
        wrong = [a for a in answers if a[2] not in (401, 403)]
        assert wrong == [], wrong
        assert {a[0] for a in answers} == {a.channel for a in accounts()}
        # Nothing of them was kept.
        for name in ("intake", "messages", "calls", "call_claims"):
            assert await svc.store[name].count_documents({}) == 0, name


def test_same_never_raises_and_only_matches_equal_values() -> None:
    expected = sign("secret", "1700000000", b"{}")
    assert same(expected, expected)
    assert same(expected.encode(), expected)
    odd: list[str | bytes | None] = [
        None,
        "",
        "é" * 71,
        "\udcff\udcfe",  # undecodable bytes as aiohttp keeps them
        "\ud800",  # a lone surrogate no decoder produces
        b"\xff" * 71,
        expected[:-1],
        expected + "0",
    ]
    for given in odd:
        assert same(expected, given) is False, given
        if isinstance(given, str):
            assert matches("secret", "1700000000", b"{}", given) is False
    assert same("", "") is False  # an unset secret matches nothing
    assert as_bytes("\udcff") == b"\xff"
