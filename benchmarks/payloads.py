"""Realistic webhook requests of every channel we ingest, signed as each provider signs
them, plus the store documents of senders routing has seen before.

Used by the mixed-load benchmark (``python -m benchmarks.mix``) and the load drills
(tests/test_load_drills.py). The requests go to the accounts of the shipped configuration
(config/channels.yaml: ``api/site``, ``telegram/sales-bot``, ``whatsapp/main``,
``viber/mebel-bot``, ``vk/community``, ``avito/shop``, ``pbx/showroom``); the secrets those
accounts name are in :data:`SECRETS` (env var → value) and must be in the service's
environment.

Authenticity, per provider (as the channel tests build it):

=========  ==============================================================================
api, pbx   ``X-Omniroute-Timestamp`` + ``X-Omniroute-Signature: sha256=HMAC(secret, ts.body)``
telegram   ``X-Telegram-Bot-Api-Secret-Token`` = the webhook secret
whatsapp   ``X-Hub-Signature-256: sha256=HMAC(app secret, body)``
viber      ``X-Viber-Content-Signature: hex HMAC(auth token, body)``
vk         ``"secret"`` in the JSON body (Callback API secret key), ``group_id`` must match
avito      an unguessable token as the last URL segment
=========  ==============================================================================

A :class:`Person` is one customer, numbered: the same number always gives the same phone,
Telegram/VK/Avito/Viber user ids and chat ids. :func:`seed_documents` writes what routing
itself would have stored after that person's first message in a channel (contact, open
lead, conversation, message), so load can be aimed at existing conversations and known
contacts. :func:`self_check` proves the seed's identity keys and conversation ids equal
what the real channel parsers and routing compute.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from channels.api import SIGNATURE_HEADER, TIMESTAMP_HEADER
from channels.api import sign as api_sign
from config.models import AppConfig
from crm_store.documents import conversation_id, intake_id, stable_id

Document = dict[str, Any]

# --- the shipped accounts and their secrets ------------------------------------------------

SECRETS: dict[str, str] = {
    "OMNIROUTE_SECRET_API_SITE": "bench-site-secret-0f3c9a",
    "OMNIROUTE_SECRET_PBX_SHOWROOM": "bench-asterisk-secret-5d41402abc4b2a76",
    "OMNIROUTE_SECRET_TELEGRAM_WEBHOOK": "bench_tg-Secret-token-71",
    "OMNIROUTE_SECRET_WHATSAPP_APP_SECRET": "bench-wa-app-secret",
    "OMNIROUTE_SECRET_WHATSAPP_VERIFY_TOKEN": "bench-wa-verify",
    "OMNIROUTE_SECRET_VIBER_TOKEN": "4453b6ac12345678-e02c5f12174805f9-daec9cbb5448c51f",
    "OMNIROUTE_SECRET_VK_CALLBACK": "bench-vk-callback-secret",
    "OMNIROUTE_SECRET_AVITO_WEBHOOK": "bench-avito-hook-token-pL3sD9fG6hJ2kQ8w",
}
API_ACCOUNT, API_SECRET = "site", SECRETS["OMNIROUTE_SECRET_API_SITE"]
PBX_ACCOUNT, PBX_SECRET = "showroom", SECRETS["OMNIROUTE_SECRET_PBX_SHOWROOM"]
TG_ACCOUNT, TG_SECRET = "sales-bot", SECRETS["OMNIROUTE_SECRET_TELEGRAM_WEBHOOK"]
WA_ACCOUNT, WA_SECRET = "main", SECRETS["OMNIROUTE_SECRET_WHATSAPP_APP_SECRET"]
WA_PNID, WA_DISPLAY, WA_WABA = "106540352242922", "74951234567", "102290129340398"
VIBER_ACCOUNT, VIBER_TOKEN = "mebel-bot", SECRETS["OMNIROUTE_SECRET_VIBER_TOKEN"]
VK_ACCOUNT, VK_SECRET, VK_GROUP = "community", SECRETS["OMNIROUTE_SECRET_VK_CALLBACK"], 218000111
AVITO_ACCOUNT, AVITO_TOKEN = "shop", SECRETS["OMNIROUTE_SECRET_AVITO_WEBHOOK"]
AVITO_USER = 94235311  # our Avito account (config/channels.yaml)
PBX_LINE = "+74951234567"

CHANNELS = ("api", "telegram", "whatsapp", "viber", "vk", "avito", "pbx")
ACCOUNTS = {
    "api": API_ACCOUNT,
    "telegram": TG_ACCOUNT,
    "whatsapp": WA_ACCOUNT,
    "viber": VIBER_ACCOUNT,
    "vk": VK_ACCOUNT,
    "avito": AVITO_ACCOUNT,
    "pbx": PBX_ACCOUNT,
}
# Channels whose sender is known by phone number: a known contact can turn up there.
PHONE_CHANNELS = ("api", "whatsapp", "pbx")

_TEXTS = (
    "Здравствуйте! Хотим кухню 3,2 м с островом, фасады матовые, столешница из камня. "
    "Можно замерщика на следующей неделе после 18:00?",
    "Добрый день, сколько стоит диван «Осло» в велюре, и есть ли он на складе?",
    "Hello, we are renovating the flat and need a built-in wardrobe, 2.4 m wide, "
    "mirror doors. What is the lead time?",
    "Подскажите, пожалуйста, доставка в Подольск входит в стоимость? И сборка?",
    "Уточните статус заказа, пожалуйста: обещали позвонить ещё вчера.",
    "Can you send the fabric samples for the armchair? Grey or beige, thanks.",
    "Спасибо, договорились. Ждём монтажников в субботу к 10.",
)


def _text(n: int) -> str:
    return _TEXTS[n % len(_TEXTS)]


# --- people ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Person:
    """Customer number ``n`` (0 ≤ n < 10**9): every id derived from it."""

    n: int

    @property
    def phone(self) -> str:  # a valid Russian mobile number, E.164
        return f"+79{self.n % 10**9:09d}"

    @property
    def wa_id(self) -> str:
        return self.phone[1:]

    @property
    def name(self) -> str:
        return f"Клиент {self.n}"

    @property
    def telegram_id(self) -> int:
        return 5_000_000_000 + self.n

    @property
    def vk_id(self) -> int:  # < 2·10⁹: a private dialog, not a group chat
        return 100_000_000 + self.n

    @property
    def avito_id(self) -> int:
        return 300_000_000 + self.n

    @property
    def avito_chat(self) -> str:
        return f"u2i-bench{self.n:010d}"

    @property
    def viber_id(self) -> str:
        return base64.b64encode(f"viber-{self.n:010d}".encode()).decode()

    def identity_keys(self, channel: str) -> list[str]:
        """The identity keys routing derives from this person's message in ``channel``."""
        account = ACCOUNTS[channel]
        if channel in PHONE_CHANNELS:
            return [f"phone:{self.phone}"]
        uid = {
            "telegram": str(self.telegram_id),
            "viber": self.viber_id,
            "vk": str(self.vk_id),
            "avito": str(self.avito_id),
        }[channel]
        return [f"{channel}:{account}:{uid}"]

    def thread(self, channel: str, api_thread: str | None = None) -> str:
        """routing.router.thread_of for this person's message in ``channel``."""
        if channel == "api":
            return f"thread:{api_thread}" if api_thread else f"sender:phone:{self.phone}"
        return {
            "telegram": f"thread:{self.telegram_id}",
            "whatsapp": f"thread:{WA_PNID}:{self.wa_id}",
            "viber": f"thread:{self.viber_id}",
            "vk": f"sender:vk:{VK_ACCOUNT}:{self.vk_id}",
            "avito": f"thread:{self.avito_chat}",
            "pbx": f"sender:phone:{self.phone}",
        }[channel]

    def conversation_id(self, channel: str, api_thread: str | None = None) -> str:
        return conversation_id(channel, ACCOUNTS[channel], self.thread(channel, api_thread))


def seed_thread(n: int) -> str:
    """The API-channel chat of seeded person ``n`` (a site chat widget's thread id)."""
    return f"chat-{n}"


# --- requests ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """One webhook POST, ready to send."""

    channel: str
    account: str
    path: str  # /webhooks/…
    headers: dict[str, str]
    body: bytes
    provider_id: str | None  # of the message it carries (None: it carries none)
    kind: str = ""  # the load mix's label: existing / known / new / duplicate / invalid
    person: int | None = None

    @property
    def intake_id(self) -> str | None:
        if self.provider_id is None:
            return None
        return intake_id(self.channel, self.account, self.provider_id)

    def as_kind(self, kind: str) -> Request:
        return Request(
            self.channel,
            self.account,
            self.path,
            self.headers,
            self.body,
            self.provider_id,
            kind,
            self.person,
        )


def _json_headers(**extra: str) -> dict[str, str]:
    return {"Content-Type": "application/json", **extra}


def _signed_omniroute(secret: str, body: bytes, stamp: int | None = None) -> dict[str, str]:
    ts = str(int(time.time()) if stamp is None else stamp)
    return _json_headers(**{TIMESTAMP_HEADER: ts, SIGNATURE_HEADER: api_sign(secret, ts, body)})


def api(p: Person, external_id: str, thread: str | None = None, text: str | None = None) -> Request:
    """A site-form / chat-widget request (the generic API channel)."""
    data: dict[str, Any] = {
        "external_id": external_id,
        "sender": {"phone": p.phone, "name": p.name},
        "text": text or _text(p.n),
        "sent_at": datetime.now(UTC).isoformat(),
    }
    if thread is not None:
        data["thread_id"] = thread
    body = orjson.dumps(data)
    return Request(
        "api",
        API_ACCOUNT,
        f"/webhooks/api/{API_ACCOUNT}",
        _signed_omniroute(API_SECRET, body),
        body,
        external_id,
        person=p.n,
    )


def pbx(p: Person, call_id: str) -> Request:
    """An Asterisk hang-up report of an answered inbound call (the generic call webhook)."""
    ended = datetime.now(UTC).replace(microsecond=0)
    event = {
        "event": "call.ended",
        "call_id": call_id,
        "leg_id": f"{call_id}.1",
        "direction": "in",
        "from": p.phone[1:],  # Asterisk's CALLERID(num) often drops the "+"
        "to": PBX_LINE,
        "extension": "101",
        "agent": "ivan.petrov",
        "started_at": (ended - timedelta(seconds=95)).isoformat(),
        "answered_at": (ended - timedelta(seconds=83)).isoformat(),
        "ended_at": ended.isoformat(),
        "duration_sec": 95,
        "billsec": 83,
        "disposition": "ANSWER",
        "hangup_cause": "16",
        "seq": 3,
    }
    body = orjson.dumps(event)
    return Request(
        "pbx",
        PBX_ACCOUNT,
        f"/webhooks/pbx/{PBX_ACCOUNT}",
        _signed_omniroute(PBX_SECRET, body),
        body,
        f"call:{call_id}",
        person=p.n,
    )


def telegram(p: Person, message_id: int, update_id: int) -> Request:
    """A private-chat text message to the bot (Bot API ``Update``)."""
    user = {
        "id": p.telegram_id,
        "is_bot": False,
        "first_name": "Клиент",
        "last_name": str(p.n),
        "username": f"client{p.n}",
        "language_code": "ru",
    }
    chat = {
        "type": "private",
        **{k: user[k] for k in ("id", "first_name", "last_name", "username")},
    }
    update = {
        "update_id": update_id,
        "message": {
            "message_id": message_id,
            "date": int(time.time()) - 1,
            "chat": chat,
            "from": user,
            "text": _text(p.n),
        },
    }
    body = orjson.dumps(update)
    return Request(
        "telegram",
        TG_ACCOUNT,
        f"/webhooks/telegram/{TG_ACCOUNT}",
        _json_headers(**{"X-Telegram-Bot-Api-Secret-Token": TG_SECRET}),
        body,
        f"{p.telegram_id}:{message_id}",
        person=p.n,
    )


def whatsapp_signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def whatsapp(p: Person, wamid: str) -> Request:
    """A Cloud API ``messages`` notification with one text message."""
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": WA_DISPLAY, "phone_number_id": WA_PNID},
        "contacts": [{"profile": {"name": p.name}, "wa_id": p.wa_id}],
        "messages": [
            {
                "from": p.wa_id,
                "id": wamid,
                "timestamp": str(int(time.time()) - 1),
                "type": "text",
                "text": {"body": _text(p.n)},
            }
        ],
    }
    envelope = {
        "object": "whatsapp_business_account",
        "entry": [{"id": WA_WABA, "changes": [{"field": "messages", "value": value}]}],
    }
    body = orjson.dumps(envelope)
    return Request(
        "whatsapp",
        WA_ACCOUNT,
        f"/webhooks/whatsapp/{WA_ACCOUNT}",
        _json_headers(**{"X-Hub-Signature-256": whatsapp_signature(WA_SECRET, body)}),
        body,
        wamid,
        person=p.n,
    )


def viber_signature(token: str, body: bytes) -> str:
    return hmac.new(token.encode(), body, hashlib.sha256).hexdigest()


def viber(p: Person, token: int) -> Request:
    """A ``message`` callback with a text message."""
    callback = {
        "event": "message",
        "timestamp": int(time.time() * 1000) - 500,
        "chat_hostname": "SN-CHAT-05_",
        "message_token": token,
        "sender": {
            "id": p.viber_id,
            "name": p.name,
            "avatar": "https://media-direct.cdn.viber.com/download_photo?dlid=abc&fltp=jpg",
            "country": "RU",
            "language": "ru",
            "api_version": 10,
        },
        "message": {"type": "text", "text": _text(p.n)},
        "silent": False,
    }
    body = orjson.dumps(callback)
    return Request(
        "viber",
        VIBER_ACCOUNT,
        f"/webhooks/viber/{VIBER_ACCOUNT}",
        _json_headers(**{"X-Viber-Content-Signature": viber_signature(VIBER_TOKEN, body)}),
        body,
        str(token),
        person=p.n,
    )


def vk(p: Person, cmid: int, event_id: str) -> Request:
    """A Callback API ``message_new`` event (API 5.199) in a DM with the community."""
    message = {
        "date": int(time.time()) - 1,
        "from_id": p.vk_id,
        "id": 9000 + cmid,
        "version": 10_000_000 + cmid,
        "out": 0,
        "fwd_messages": [],
        "important": False,
        "is_hidden": False,
        "attachments": [],
        "conversation_message_id": cmid,
        "text": _text(p.n),
        "peer_id": p.vk_id,
        "random_id": 0,
    }
    event = {
        "group_id": VK_GROUP,
        "type": "message_new",
        "event_id": event_id,
        "v": "5.199",
        "object": {
            "message": message,
            "client_info": {
                "button_actions": ["text", "vkpay", "open_app", "location", "open_link"],
                "keyboard": True,
                "inline_keyboard": True,
                "carousel": True,
                "lang_id": 0,
            },
        },
        "secret": VK_SECRET,
    }
    body = orjson.dumps(event)
    return Request(
        "vk",
        VK_ACCOUNT,
        f"/webhooks/vk/{VK_ACCOUNT}",
        _json_headers(**{"User-Agent": "VKCallback"}),
        body,
        f"{p.vk_id}_{cmid}",
        person=p.n,
    )


def avito(p: Person, mid: str) -> Request:
    """A Messenger API v3 webhook notification of a text message about an ad."""
    now = int(time.time())
    notification = {
        "id": f"evt-{mid}",
        "version": "v3.0.0",
        "timestamp": now,
        "payload": {
            "type": "message",
            "value": {
                "id": mid,
                "chat_id": p.avito_chat,
                "user_id": AVITO_USER,
                "author_id": p.avito_id,
                "created": now - 1,
                "published_at": datetime.fromtimestamp(now - 1, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "type": "text",
                "chat_type": "u2i",
                "item_id": 2816739540 + p.n % 1000,
                "content": {"text": _text(p.n)},
            },
        },
    }
    body = orjson.dumps(notification)
    return Request(
        "avito",
        AVITO_ACCOUNT,
        f"/webhooks/avito/{AVITO_ACCOUNT}/{AVITO_TOKEN}",
        _json_headers(),
        body,
        mid,
        person=p.n,
    )


# --- requests that must be refused ------------------------------------------------------------


def invalid(kind: str, seq: int) -> Request:
    """A request that must be refused with 4xx and store nothing: ``oversize`` (a 1.2 MiB
    API body, over the account's 1 MiB limit), ``malformed`` (broken JSON under a wrong
    signature: an authentic broken body is kept, see :func:`unreadable`), ``badsig`` (a
    valid body with a wrong signature / secret), rotating through the channels by
    ``seq``."""
    p = Person(900_000_000 + seq)
    if kind == "oversize":
        r = api(p, f"oversize-{seq}", text="x" * (1_200_000))
        return r.as_kind("invalid")
    if kind == "malformed":
        return unreadable(seq, api_secret="wrong-secret", wa_secret="wrong-secret")
    if kind != "badsig":
        raise ValueError(kind)
    which = seq % 6
    if which == 0:
        r = api(p, f"badsig-{seq}")
        headers = {**r.headers, SIGNATURE_HEADER: api_sign("wrong-secret", "1", r.body)}
    elif which == 1:
        r = telegram(p, 1, 1)
        headers = {**r.headers, "X-Telegram-Bot-Api-Secret-Token": "guessed-token"}
    elif which == 2:
        r = whatsapp(p, f"wamid.badsig{seq}")
        headers = {**r.headers, "X-Hub-Signature-256": whatsapp_signature("other", r.body)}
    elif which == 3:
        r = viber(p, 7_000_000 + seq)
        headers = {**r.headers, "X-Viber-Content-Signature": viber_signature("x", r.body)}
    elif which == 4:
        r = pbx(p, f"badsig-{seq}")
        stale = _signed_omniroute(PBX_SECRET, r.body, stamp=int(time.time()) - 3600)
        headers = {**r.headers, **stale}  # right key, an hour-old timestamp
    else:
        r = avito(p, f"badsig-{seq}")
        return Request(
            r.channel,
            r.account,
            r.path.rsplit("/", 1)[0] + "/not-the-token-0000000000",
            r.headers,
            r.body,
            r.provider_id,
            "invalid",
        )
    return Request(r.channel, r.account, r.path, headers, r.body, r.provider_id, "invalid")


def unreadable(seq: int, *, api_secret: str = API_SECRET, wa_secret: str = WA_SECRET) -> Request:
    """Broken JSON (API channel or WhatsApp by ``seq``), signed with the given secrets.
    Correctly signed it is authentic: answered 2xx and kept as an ``unparsed`` intake
    record, never refused for its shape."""
    body = b'{"external_id": "broken-' + str(seq).encode() + b'", "sender": {"phone": '
    if seq % 2:
        return Request(
            "api",
            API_ACCOUNT,
            f"/webhooks/api/{API_ACCOUNT}",
            _signed_omniroute(api_secret, body),
            body,
            None,
            "invalid",
        )
    return Request(
        "whatsapp",
        WA_ACCOUNT,
        f"/webhooks/whatsapp/{WA_ACCOUNT}",
        _json_headers(**{"X-Hub-Signature-256": whatsapp_signature(wa_secret, body)}),
        body,
        None,
        "invalid",
    )


def vk_wrong_secret(seq: int) -> Request:
    r = vk(Person(900_000_000 + seq), 1, f"evt-bad-{seq}")
    data = orjson.loads(r.body)
    data["secret"] = "wrong-secret"
    return Request(r.channel, r.account, r.path, r.headers, orjson.dumps(data), r.provider_id)


# Every way a request is refused, in turn: a body over the limit, broken JSON, a wrong
# signature / secret header / stale timestamp / URL token (``badsig`` rotates over the
# channels), and VK's wrong secret in the body.
REFUSED_KINDS = ("oversize", "malformed", "badsig", "badsig", "vk")


def refused(seq: int) -> Request:
    """The ``seq``-th request that must be refused with 4xx and store nothing."""
    kind = REFUSED_KINDS[seq % len(REFUSED_KINDS)]
    return vk_wrong_secret(seq).as_kind("invalid") if kind == "vk" else invalid(kind, seq)


# --- the mix -------------------------------------------------------------------------------

# The channel of a new sender, and of a seeded person's first conversation.
CHANNEL_WEIGHTS = {
    "api": 30,
    "whatsapp": 20,
    "telegram": 15,
    "vk": 10,
    "avito": 10,
    "pbx": 10,
    "viber": 5,
}


def seeded_channel(n: int) -> str:
    """The channel seeded person ``n`` first wrote through (deterministic, by weight)."""
    slot = (n * 2654435761) % 100  # spread, not striped
    for ch, w in CHANNEL_WEIGHTS.items():
        if slot < w:
            return ch
        slot -= w
    return "api"


def seeded_phone_person(seeded: int, rnd: random.Random) -> int:
    """A seeded person whose first channel identified them by phone."""
    for _ in range(100):
        n = rnd.randrange(seeded)
        if seeded_channel(n) in PHONE_CHANNELS:
            return n
    raise RuntimeError("no seeded person with a phone identity")


@dataclass
class MixGenerator:
    """Builds request lists with the issue's mix, over ``seeded`` pre-seeded people.

    - **existing** (70 % of originals): a seeded person writes again in the conversation
      they opened (same channel, same chat);
    - **known** (20 %): a seeded person known by phone writes somewhere new — a new site
      chat (API, new ``thread_id``), or WhatsApp / a phone call when they first came
      through another channel;
    - **new** (10 %): a person never seen, through a channel picked by weight;
    - **duplicate** (5 % of all requests): an exact copy (same bytes, same headers) of a
      request sent earlier in the list — a provider's retry.

    One generator hands out unique provider ids and new people for its whole life, so
    successive lists (phases) never collide; ``new_base`` separates generators.
    """

    seeded: int
    seed: int = 1
    new_base: int = 500_000_000
    shares: tuple[float, float, float] = (0.70, 0.20, 0.10)
    duplicate_share: float = 0.05
    rnd: random.Random = field(init=False)
    _seq: int = field(init=False, default=0)
    _new: int = field(init=False, default=0)
    _used_known: set[tuple[int, str]] = field(init=False, default_factory=set)
    new_people: list[tuple[int, str]] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.rnd = random.Random(self.seed)
        if self.seeded < 1:
            raise ValueError("the mix needs at least one seeded person")

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def message(self, p: Person, channel: str, api_thread: str | None = None) -> Request:
        s = self.next_seq()
        tag = f"{self.new_base}-{s}"
        if channel == "api":
            return api(p, f"form-{tag}", thread=api_thread)
        if channel == "pbx":
            return pbx(p, f"bench-{tag}")
        if channel == "telegram":
            return telegram(p, self.new_base + s, 700_000_000 + s)
        if channel == "whatsapp":
            return whatsapp(p, f"wamid.HBgL{tag}")
        if channel == "viber":
            return viber(p, self.new_base * 10_000 + s)
        if channel == "vk":
            return vk(p, self.new_base + s, f"e{tag}")
        if channel == "avito":
            return avito(p, f"m{tag}")
        raise ValueError(channel)

    def existing(self) -> Request:
        n = self.rnd.randrange(self.seeded)
        ch = seeded_channel(n)
        return self.message(Person(n), ch, seed_thread(n) if ch == "api" else None).as_kind(
            "existing"
        )

    def known(self) -> Request:
        n = seeded_phone_person(self.seeded, self.rnd)
        first = seeded_channel(n)
        options = [c for c in ("whatsapp", "pbx") if c != first and (n, c) not in self._used_known]
        if options and self.rnd.random() < 0.5:
            ch = self.rnd.choice(options)
            self._used_known.add((n, ch))
            return self.message(Person(n), ch).as_kind("known")
        # A new site chat: the widget's fresh thread id.
        return self.message(Person(n), "api", f"chat-{n}-{self.next_seq()}").as_kind("known")

    def new(self) -> Request:
        self._new += 1
        n = self.new_base + self._new
        ch = self.rnd.choices(list(CHANNEL_WEIGHTS), weights=list(CHANNEL_WEIGHTS.values()))[0]
        self.new_people.append((n, ch))
        return self.message(Person(n), ch).as_kind("new")

    def one(self, kind: str) -> Request:
        return {"existing": self.existing, "known": self.known, "new": self.new}[kind]()

    def requests(self, count: int, kind: str = "mix") -> list[Request]:
        """``count`` requests: the mix (``kind="mix"``), one path only (``existing``,
        ``known``, ``new``), or ``duplicate`` (count/2 originals of the mix, each sent
        again later)."""
        if kind == "duplicate":
            originals = self.requests(max(1, count // 2), "mix")
            originals = [r for r in originals if r.kind != "duplicate"]
            return originals + [r.as_kind("duplicate") for r in originals]
        if kind != "mix":
            return [self.one(kind) for _ in range(count)]
        out: list[Request] = []
        kinds = ("existing", "known", "new")
        for i in range(count):
            if i >= 10 and self.rnd.random() < self.duplicate_share:
                # A provider's retry of something sent a little earlier.
                earlier = out[self.rnd.randrange(max(0, i - 200), i - 5)]
                if earlier.kind != "duplicate":
                    out.append(earlier.as_kind("duplicate"))
                    continue
            out.append(self.one(self.rnd.choices(kinds, weights=self.shares)[0]))
        return out


# --- seeding ---------------------------------------------------------------------------------


def seed_documents(
    config: AppConfig, start: int, stop: int, *, messages: bool = True
) -> dict[str, list[Document]]:
    """What routing stores after the first message of persons ``start``..``stop-1``, each
    through :func:`seeded_channel`: a contact (``origin: routing``), an open lead in the
    first stage of its source's pipeline, the conversation pointing at the lead, and (if
    ``messages``) the message; the contact's keys in ``identities`` (crm_store/identities.py).
    Same fields, ids and derivations as routing/router.py."""
    sources = {ch: config.account(ch, ACCOUNTS[ch]) for ch in CHANNELS}
    out: dict[str, list[Document]] = {
        "identities": [],
        "contacts": [],
        "leads": [],
        "conversations": [],
    }
    if messages:
        out["messages"] = []
    base = datetime.now(UTC) - timedelta(days=30)
    line_cache: dict[str, list[tuple[str, str | None]]] = {}
    for n in range(start, stop):
        p = Person(n)
        ch = seeded_channel(n)
        account = sources[ch]
        assert account is not None, f"no {ch}/{ACCOUNTS[ch]} account in the configuration"
        source = config.source(account.source)
        pipeline = config.pipeline(source.pipeline)
        line = source.line or ""
        if line not in line_cache:
            line_cache[line] = [
                (u.id, u.department) for u in (config.line_users(line) if line else [])
            ]
        users = line_cache[line]
        responsible, department = users[n % len(users)] if users else (source.responsible, None)
        at = base + timedelta(seconds=n % 2_000_000)
        provider = f"seed-{n}"
        iid = intake_id(ch, ACCOUNTS[ch], provider)
        keys = p.identity_keys(ch)
        contact_id = stable_id("contact", iid)
        lead_id = stable_id("lead", iid)
        thread = p.thread(ch, seed_thread(n) if ch == "api" else None)
        conv_id = conversation_id(ch, ACCOUNTS[ch], thread)
        target = {"kind": "lead", "id": lead_id, "open": True}
        text = _text(n)
        out["identities"] += [{"_id": k, "contact_id": contact_id, "created_at": at} for k in keys]
        out["contacts"].append(
            {
                "_id": contact_id,
                "identities": keys,
                "name": p.name,
                "phones": [k[6:] for k in keys if k.startswith("phone:")],
                "emails": [],
                "responsible_id": responsible,
                "origin": "routing",
                "origin_intake_id": iid,
                "spam": False,
                "created_at": at,
            }
        )
        out["leads"].append(
            {
                "_id": lead_id,
                "contact_id": contact_id,
                "pipeline_id": pipeline.id,
                "stage_id": source.stage or pipeline.first_stage.id,
                "open": True,
                "is_repeat": False,
                "source_id": source.id,
                "responsible_id": responsible,
                "identities": keys,
                "title": f"{p.name} — {source.name}",
                "fields": {},
                "meta": {},
                "origin_intake_id": iid,
                "created_at": at,
                "stage_entered_at": at,
                "last_activity_at": at,
                "open_contact": contact_id,
            }
        )
        out["conversations"].append(
            {
                "_id": conv_id,
                "channel": ch,
                "account": ACCOUNTS[ch],
                "thread": thread,
                "status": "open",
                "created_at": at,
                "origin_intake_id": iid,
                "last_message_at": at,
                "last_inbound_at": at,
                "last_inbound": {
                    "provider_id": provider,
                    "references": [],
                    "subject": None,
                    "automatic": False,
                    "text": text[:200],
                },
                "sender_keys": keys,
                "message_count": 1,
                "unread": 1,
                "target": target,
                "contact_id": contact_id,
                "assignee_id": responsible,
                "department": department,
            }
        )
        if messages:
            out["messages"].append(
                {
                    "_id": iid,
                    "direction": "in",
                    "channel": ch,
                    "account": ACCOUNTS[ch],
                    "provider_id": provider,
                    "source_id": source.id,
                    "conversation_id": conv_id,
                    "contact_id": contact_id,
                    "target": target,
                    "sender": {"name": p.name},
                    "identities": keys,
                    "text": text,
                    "attachments": [],
                    "sent_at": at,
                    "received_at": at,
                    "routed_at": at,
                    "automatic": False,
                    "meta": {},
                    "decision": {
                        "rule": "new_lead",
                        "action": "create_lead",
                        "reason": "seeded",
                        "target_id": lead_id,
                    },
                }
            )
    return out


def self_check(config: AppConfig) -> None:
    """Parse a request of every channel with the real channel module (secrets from
    :data:`SECRETS`) and check the provider id, identity keys and conversation id that
    routing derives against what this module assumes. Raises AssertionError."""
    import os

    from channels import REGISTRY
    from channels.base import WebhookRequest
    from channels.identity import identity_keys
    from config.loader import resolve_secret
    from routing.router import thread_of

    saved = {k: os.environ.get(k) for k in SECRETS}
    os.environ.update(SECRETS)
    try:
        gen = MixGenerator(seeded=50)
        for n in range(0, 40):
            ch = seeded_channel(n)
            p = Person(n)
            first_thread = seed_thread(n) if ch == "api" else None
            for req, api_thread in (
                (gen.message(p, ch, first_thread), first_thread),
                (gen.message(p, "api", "chat-x"), "chat-x"),
                (gen.message(p, "pbx"), None),
                (gen.message(p, "whatsapp"), None),
            ):
                account = config.account(req.channel, req.account)
                assert account is not None, (req.channel, req.account)
                token = req.path.rsplit("/", 1)[1] if req.channel == "avito" else None
                parsed = REGISTRY[req.channel].parse(
                    account,
                    resolve_secret(account),
                    WebhookRequest("POST", req.headers, {}, req.body, token),
                )
                [msg] = parsed.messages
                assert msg.provider_id == req.provider_id, (msg.provider_id, req.provider_id)
                keys = identity_keys(msg.channel, msg.account, msg.sender)
                assert keys == p.identity_keys(req.channel), (keys, req.channel)
                got, want = thread_of(msg, keys), p.thread(req.channel, api_thread)
                assert got == want, (req.channel, got, want)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
