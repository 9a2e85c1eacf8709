"""A property-based pass over every operator API input: never a 5xx, never a crashed hub.

Every endpoint the app declares (inbox/api.py ``OPERATIONS``) gets hypothesis-generated
requests over real HTTP into the running service with a real store, as an admin and as a
manager (valid tokens, so the input reaches the handlers): path ids (seeded ids, random
text, huge numbers), query parameters (the declared ones and unknown ones) and bodies
(shaped like the declared model, any JSON, or bytes) drawn from values chosen to break
parsers — integers beyond 64 bits, times without a UTC equivalent, forged cursors,
control characters. Every answer must be below 500 and, when it is an error, problem+json.
tests/test_inbox_schema.py checks the answers against the schema; this one goes beyond
what the schema allows.

The WebSocket gets random frames (text, JSON commands with wild values, binary) and
abrupt closes; afterwards the hub still streams a new event to a fresh socket.

Bounded: a fixed number of examples per endpoint and role, generated deterministically
(``derandomize``), about 20 s on the 2-core build machine (OMNIROUTE_FUZZ_EXAMPLES raises
the count). Hypothesis runs in a worker thread and
sends each request through the test's event loop, where the service runs.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import orjson
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from yarl import URL

import inbox.routes  # noqa: F401 - registers every endpoint
from inbox.api import OPERATIONS, Operation
from tests.service import InProcess
from tests.test_inbox_rbac import ADMIN, ANNA, MATRIX, World, fill
from tests.test_inbox_ws import connect, event_of, frames_until, write
from tests.test_security_inbox import desk

# Per endpoint and role, and WebSocket batches of up to 30 frames: 20 in `make test` (the
# suite's 20-minute budget); OMNIROUTE_FUZZ_EXAMPLES=200 for a deeper pass.
EXAMPLES = int(os.environ.get("OMNIROUTE_FUZZ_EXAMPLES", "20"))
WS_BATCHES = EXAMPLES
PLACEHOLDER = re.compile(r"\{(\w+)\}")
# Query parameters never drawn: ``wait`` long-polls (up to 30 s per example); its bounds
# are tested in tests/test_events_feed.py.
NOT_DRAWN = {"wait"}

BIG_INTS = st.sampled_from(
    [2**63 - 1, 2**63, 2**64, 2**70, -(2**63), -(2**63) - 1, 10**40, -1, 0, 1]
)
INTS = st.one_of(st.integers(), BIG_INTS)
OFFSETS = st.integers(-1439, 1439).map(lambda m: timezone(timedelta(minutes=m)))
# Times at and beyond the edges (the first two parse but have no UTC equivalent).
EDGE_TIMES = st.sampled_from(
    [
        "9999-12-31T23:59:59-23:59",
        "0001-01-01T00:00:00+23:59",
        "9999-12-31T23:59:59.999999Z",
        "0001-01-01T00:00:00Z",
        "1969-12-31T23:59:59Z",
        "2026-12-07T10:00:00+03:00",
        "2099-01-01T00:00:00Z",
        "2026-13-45T25:61:61Z",
        "2026-12-07",
        "1e300",
        "-1",
    ]
)
TIMES = st.one_of(
    EDGE_TIMES,
    st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=OFFSETS
    ).map(datetime.isoformat),
    st.datetimes(timezones=st.just(UTC)).map(lambda d: str(int(d.timestamp()))),
)
TEXT = st.text(max_size=40)
NASTY_TEXT = st.sampled_from(
    ["", " ", "\x00", "a\r\nb", "../../etc/passwd", "$where", '{"$gt": ""}', "🙂" * 50, "x" * 5000]
)


def cursor_of(parts: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(parts).encode()).decode().rstrip("=")


SCALARS = st.one_of(st.none(), st.booleans(), INTS, st.floats(), TEXT, NASTY_TEXT, TIMES)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
CURSORS = st.one_of(
    st.tuples(EDGE_TIMES, TEXT).map(lambda p: cursor_of(list(p))),
    st.lists(st.one_of(TIMES, TEXT, INTS, st.none()), max_size=3).map(cursor_of),
    TEXT,
)


def values(known: list[str]) -> st.SearchStrategy[Any]:
    """A value for a field: the edge cases first (each its own branch, so each is drawn
    often), then anything, or a seeded id."""
    return st.one_of(
        BIG_INTS, EDGE_TIMES, CURSORS, NASTY_TEXT, SCALARS, JSON, st.sampled_from(known)
    )


def as_query(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def fields_of(model: type[BaseModel] | None) -> list[str]:
    return list(model.model_fields) if model is not None else []


def one_field(names: list[str], known: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """One of ``names`` set to a drawn value (the rest left valid, so the value reaches
    the handler instead of failing next to another field's)."""
    if not names:
        return st.just({})
    return st.tuples(st.sampled_from(names), values(known)).map(lambda kv: {kv[0]: kv[1]})


def request_for(op: Operation, world: World, who: str) -> st.SearchStrategy[dict[str, Any]]:
    """A request to ``op``: a path, a query string, a body — mostly the valid request of
    the RBAC matrix (tests/test_inbox_rbac.py) with one input changed, so each drawn value
    gets past the others to the code that handles it."""
    known = sorted(world.ids.values())
    row = MATRIX[(op.method, op.path)]
    holes = PLACEHOLDER.findall(op.path)
    hole_values = st.one_of(
        st.sampled_from(known), TEXT.filter(bool), BIG_INTS.map(str), NASTY_TEXT.filter(bool)
    )

    def filled(parts: tuple[str, ...]) -> str:
        path = op.path
        for hole, value in zip(holes, parts, strict=True):
            path = path.replace("{" + hole + "}", quote(value, safe=""), 1)
        return path

    valid_path = quote(fill(row.path, world), safe="/")
    path = st.one_of(
        *[st.just(valid_path)] * 3, st.tuples(*[hole_values for _ in holes]).map(filled)
    )

    names = [n for n in fields_of(op.query) if n not in NOT_DRAWN]
    declared = st.fixed_dictionaries({}, optional={n: values(known) for n in names})
    # An unknown parameter is refused before the handler runs: drawn, but rarely.
    unknown = st.dictionaries(st.text(max_size=8), values(known), max_size=2)
    query = st.one_of(st.just({}), *[one_field(names, known)] * 3, declared, unknown).map(
        lambda q: {k: as_query(v) for k, v in q.items() if k not in NOT_DRAWN}
    )

    body: st.SearchStrategy[Any]
    if op.body_content_type.startswith("multipart/"):
        body = st.one_of(
            st.tuples(st.binary(max_size=2048), st.one_of(TEXT, NASTY_TEXT)).map(
                lambda t: ("multipart", t)
            ),
            st.binary(max_size=256).map(lambda b: ("raw", b)),
        )
    else:
        base = row.body(world, who) if row.body else {}
        base = base if isinstance(base, dict) else {}
        mutated = one_field(sorted({*fields_of(op.body), *base}), known).map(
            lambda change: ("json", {**base, **change})
        )
        body = st.one_of(
            *[mutated] * 3,
            st.fixed_dictionaries({}, optional={n: values(known) for n in fields_of(op.body)}).map(
                lambda b: ("json", b)
            ),
            JSON.map(lambda b: ("json", b)),
            st.binary(max_size=256).map(lambda b: ("raw", b)),
            st.just(("none", None)),
        )
    return st.fixed_dictionaries({"path": path, "query": query, "body": body})


def url_of(base: str, req: dict[str, Any]) -> URL:
    query = urlencode(req["query"], quote_via=quote)
    return URL(f"{base}{req['path']}{'?' + query if query else ''}", encoded=True)


def multipart(content: bytes, name: str) -> tuple[bytes, str]:
    """A form with one file: its name raw UTF-8 as a browser sends it, or RFC 5987
    percent-encoded when it holds what cannot stand in a header (CR, LF, NUL, quotes)."""
    boundary = "fuzz-b0undary-7d1c"
    if name.isprintable() and not {'"', "\\"} & set(name):
        disposition = f'filename="{name}"'
    else:
        disposition = f"filename*=UTF-8''{quote(name, safe='')}"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; {disposition}\r\n'
        "Content-Type: text/plain\r\n\r\n"
    )
    body = head.encode() + content + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


async def send(
    svc: InProcess, token: str, op: Operation, req: dict[str, Any]
) -> tuple[int, str, bytes]:
    headers = {"Authorization": f"Bearer {token}"}
    kind, payload = req["body"]
    data: Any = None
    if kind == "json":
        data = json.dumps(payload).encode()  # json: it writes integers beyond 64 bits
        headers["Content-Type"] = "application/json"
    elif kind == "raw":
        data = payload
        headers["Content-Type"] = "application/json"
    elif kind == "multipart":
        data, headers["Content-Type"] = multipart(*payload)
    async with svc.client.http.request(
        op.method, url_of(svc.client.base, req), data=data, headers=headers
    ) as resp:
        return resp.status, resp.content_type, await resp.read()


def fuzz_operation(
    loop: asyncio.AbstractEventLoop,
    svc: InProcess,
    world: World,
    op: Operation,
    who: str,
    failures: list[str],
) -> int:
    """Run hypothesis over one operation as one user (in a worker thread); returns how
    many requests were sent."""
    sent = 0

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(req=request_for(op, world, who))
    def one(req: dict[str, Any]) -> None:
        nonlocal sent
        future = asyncio.run_coroutine_threadsafe(send(svc, world.tokens[who], op, req), loop)
        status, ctype, body = future.result(timeout=60)
        sent += 1
        # The router's own 404/405 (a path no endpoint matches: an id with "{" or "/")
        # and the HTTP parser's 400 for a request line over 8190 bytes are plain text;
        # every handler's refusal is problem+json. A 5xx only where the RBAC matrix
        # documents one (click-to-call's 502: the PBX is not configured).
        url = str(url_of("", req))
        plain_ok = status in (404, 405) or (status == 400 and len(url) > 8000)
        allowed = MATRIX[(op.method, op.path)].allowed
        bad = (status >= 500 and status not in allowed) or (
            status >= 400 and not plain_ok and ctype != "application/problem+json"
        )
        if bad:
            failures.append(
                f"{who} {op.method} {url:.500} {req['body']!r:.300}"
                f" → {status} {ctype} {body[:300]!r}"
            )

    one()
    return sent


def fuzz_operations(
    loop: asyncio.AbstractEventLoop, svc: InProcess, world: World, failures: list[str]
) -> int:
    """Every operation but the WebSocket, as the admin and as a manager."""
    ops = [op for op in OPERATIONS if op.path != "/api/v1/ws"]
    return sum(
        fuzz_operation(loop, svc, world, op, who, failures) for op in ops for who in (ADMIN, ANNA)
    )


async def test_no_operator_api_input_makes_a_server_error(mongo_uri: str, db_name: str) -> None:
    async with desk(mongo_uri, db_name) as d:
        failures: list[str] = []
        loop = asyncio.get_running_loop()
        sent = await asyncio.to_thread(fuzz_operations, loop, d.svc, d.world, failures)
        ops = len([op for op in OPERATIONS if op.path != "/api/v1/ws"])
        assert sent >= ops * 2 * EXAMPLES // 2, f"only {sent} requests for {ops} operations"
        assert not failures, f"{len(failures)} bad answers:\n" + "\n".join(failures[:25])


# --- the WebSocket -------------------------------------------------------------------


WS_TEXT = st.one_of(
    JSON.map(json.dumps),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["resume", "ping", "subscribe", ""])},
        optional={"after": st.one_of(INTS, st.floats(), TEXT, st.none()), "x": JSON},
    ).map(json.dumps),
    TEXT,
    NASTY_TEXT,
)
WS_FRAME = st.one_of(
    WS_TEXT.map(lambda t: ("text", t)),
    st.binary(max_size=512).map(lambda b: ("binary", b)),
    st.just(("close", None)),
)


async def answers_ping(ws: aiohttp.ClientWebSocketResponse) -> None:
    """The socket is still served: a ping gets its pong (after any frames before it); a
    close from the server (a crashed handler) fails here."""
    await ws.send_str(orjson.dumps({"type": "ping"}).decode())
    got = await frames_until(ws, lambda f: f["type"] == "pong")
    assert all(f["type"] in ("cursor", "error", "pong", "resync", "event") for f in got), got


async def ws_batch(svc: InProcess, token: str, batch: list[tuple[str, Any]]) -> int:
    """Send one batch of frames, closing and reconnecting where the batch says; each
    socket answers a ping before it is closed. Returns how many closes the batch made."""
    ws = await connect(svc, token)
    closes = 0
    for kind, payload in batch:
        if kind == "text":
            await ws.send_str(payload)
        elif kind == "binary":
            await ws.send_bytes(payload)
        else:
            await answers_ping(ws)
            await ws.close()
            closes += 1
            ws = await connect(svc, token)
    await answers_ping(ws)
    await ws.close()
    return closes


def fuzz_websocket(loop: asyncio.AbstractEventLoop, svc: InProcess, token: str) -> int:
    closes = 0

    @settings(
        max_examples=WS_BATCHES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(batch=st.lists(WS_FRAME, min_size=1, max_size=30))
    def one(batch: list[tuple[str, Any]]) -> None:
        nonlocal closes
        closes += asyncio.run_coroutine_threadsafe(ws_batch(svc, token, batch), loop).result(60)

    one()
    return closes


async def test_random_websocket_frames_never_crash_the_hub(mongo_uri: str, db_name: str) -> None:
    async with desk(mongo_uri, db_name) as d:
        token = d.world.tokens[ANNA]
        loop = asyncio.get_running_loop()
        closes = await asyncio.to_thread(fuzz_websocket, loop, d.svc, token)
        assert closes > 0  # the abrupt closes were exercised too
        # The hub still streams: a fresh socket gets the next event.
        fresh = await connect(d.svc, token)
        conv = await write(d.svc, "fuzz-after-ws", "+79001110099")
        frames_seen = await frames_until(fresh, lambda f: event_of(f, "message.attached"))
        assert frames_seen[-1]["event"]["refs"]["conversation_id"] == conv["_id"]
        await fresh.close()
