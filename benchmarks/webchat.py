"""Website live chat: ``python -m benchmarks.webchat`` — see docs/channels/webchat.md.

1. The widget's size: ``inbox/web/widget.js`` raw and gzipped (Python's zlib, level 9;
   GNU ``gzip -9`` makes it some 70 bytes smaller), against the 30 KB budget.
2. ``--visitors`` concurrent visitors (default 50) on a fresh file-backed embedded store
   and the service in this process (the example config's ``main-site`` account, its
   rate limits raised for one loopback address, the business clock on a Monday 10:00).
   One operator (an administrator, who sees every conversation) is connected to
   ``/api/v1/ws``. Each visitor opens a session and its WebSocket, then ``--rounds`` times:

   a. POSTs a message; **visitor → operator** is the time from the POST until the first
      event about that message reaches the operator's WebSocket (the intake, routing and
      the live hub in between);
   b. the operator replies through ``POST /api/v1/conversations/{id}/messages``;
      **operator → visitor** is the time from that POST until the reply's frame reaches
      the visitor's WebSocket (the outbox and the webchat hub in between).

   p50 / p99 / max of each, over plain aiohttp clients (no browsers).
3. The same at **half the maximum rate** (issue #23's condition): the closed loop above
   runs as fast as the service answers — that is the maximum, in rounds per second; new
   visitors then start their rounds on a fixed schedule at half that rate (staggered, a
   late round starts at once). The PASS/MISS is on this paced phase.

Figures go to ``benchmarks/results/webchat.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from benchmarks.report import num, write_json
from benchmarks.run import machine, ms, percentile, quiet_logging
from config.loader import load_config
from config.models import AppConfig
from config.settings import DEFAULT_CONFIG_DIR, Settings
from crm_store import tokens
from crm_store.embedded import EmbeddedStore, pick_free_port
from crm_store.store import Store
from inbox.webchat_http import CLOCK_ENV
from inbox.webchat_hub import visitor_conversation
from ingest.app import create_app
from ingest.service import running_service

ROOT = Path(__file__).resolve().parent.parent
WIDGET = ROOT / "inbox" / "web" / "widget.js"
BUDGET_GZIP = 30 * 1024
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "webchat.json"
LOG_NAME = "omniroute-bench-webchat.log"
DB_NAME = "bench_webchat"
ACCOUNT = "main-site"
ORIGIN = "https://bench.example"
OPERATOR = "sergey.volkov"  # administrator: sees every conversation
MONDAY_10 = "2025-05-19T10:00:00+03:00"
WAIT_S = 60.0
# Issue #23: a customer's message on the operator's screen (and a reply on the
# visitor's) within this p99.
TARGET_P99_MS = 250.0


def bundle_size() -> dict[str, int]:
    raw = WIDGET.read_bytes()
    return {
        "raw_bytes": len(raw),
        "gzip_bytes": len(gzip.compress(raw, compresslevel=9)),
        "budget_gzip_bytes": BUDGET_GZIP,
    }


def bench_config() -> AppConfig:
    cfg = load_config(DEFAULT_CONFIG_DIR)
    accounts = []
    for a in cfg.channels.accounts:
        if (a.channel, a.account) == ("webchat", ACCOUNT):
            settings = {
                **a.settings,
                "origins": ORIGIN,
                "requests_per_minute_ip": 1_000_000,
                "messages_per_minute": 10_000,
            }
            a = a.model_copy(update={"settings": settings})
        accounts.append(a)
    return cfg.model_copy(
        update={"channels": cfg.channels.model_copy(update={"accounts": accounts})}
    )


@dataclass
class Operator:
    """The operator's live stream: when each message id was first seen."""

    seen: dict[str, float] = field(default_factory=dict)
    waiters: dict[str, asyncio.Future[float]] = field(default_factory=dict)

    def expect(self, message_id: str) -> asyncio.Future[float]:
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        if message_id in self.seen:
            fut.set_result(self.seen[message_id])
        else:
            self.waiters[message_id] = fut
        return fut

    async def read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            now = time.perf_counter()
            frame = orjson.loads(msg.data)
            if frame.get("type") != "event":
                continue
            mid = ((frame.get("event") or {}).get("refs") or {}).get("message_id")
            if not mid or mid in self.seen:
                continue
            self.seen[mid] = now
            fut = self.waiters.pop(mid, None)
            if fut is not None and not fut.done():
                fut.set_result(now)


@asynccontextmanager
async def service(uri: str) -> AsyncIterator[str]:
    os.environ[CLOCK_ENV] = MONDAY_10
    port = pick_free_port()
    settings = Settings(mongodb_uri=uri, db_name=DB_NAME, port=port)
    store = Store.open(uri, DB_NAME)
    try:
        async with running_service(settings, bench_config(), store) as svc:
            runner = web.AppRunner(create_app(svc), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            try:
                yield f"http://127.0.0.1:{port}"
            finally:
                await runner.cleanup()
    finally:
        await store.close()


async def visitor(
    http: aiohttp.ClientSession,
    base: str,
    op: Operator,
    op_token: str,
    n: int,
    rounds: int,
    to_operator: list[float],
    to_visitor: list[float],
    every_s: float = 0.0,
    offset_s: float = 0.0,
) -> None:
    """``rounds`` message-and-reply rounds; with ``every_s`` each round starts on its
    schedule (``offset_s`` + i × ``every_s`` from now), else right after the last."""
    api = f"{base}/webchat/{ACCOUNT}"
    hdr = {"Origin": ORIGIN, "Content-Type": "application/json"}
    async with http.post(f"{api}/session", data=orjson.dumps({"name": f"V{n}"}), headers=hdr) as r:
        s = await r.json()
    token = s["visitor_token"]
    conv = visitor_conversation(ACCOUNT, s["visitor_id"])
    async with http.ws_connect(
        f"{api}/ws?token={token}&after={s['cursor']}", headers={"Origin": ORIGIN}
    ) as ws:
        start = time.perf_counter() + offset_s
        for i in range(rounds):
            if every_s:
                await asyncio.sleep(max(0.0, start + i * every_s - time.perf_counter()))
            body = {"client_id": f"b{n}-{i}", "text": f"visitor {n} message {i}"}
            t0 = time.perf_counter()
            async with http.post(
                f"{api}/messages",
                data=orjson.dumps(body),
                headers={**hdr, "X-Visitor-Token": token},
            ) as r:
                sent = await r.json()
                assert r.status == 200, sent
            seen = await asyncio.wait_for(op.expect(sent["id"]), WAIT_S)
            to_operator.append(seen - t0)

            t1 = time.perf_counter()
            async with http.post(
                f"{base}/api/v1/conversations/{conv}/messages",
                data=orjson.dumps({"text": f"reply {n}.{i}"}),
                headers={"Authorization": f"Bearer {op_token}", "Content-Type": "application/json"},
            ) as r:
                reply = await r.json()
                assert r.status in (200, 201), reply
            while True:
                msg = await ws.receive(timeout=WAIT_S)
                assert msg.type is aiohttp.WSMsgType.TEXT, msg
                frame = orjson.loads(msg.data)
                if frame.get("type") == "message" and frame.get("id") == reply["id"]:
                    to_visitor.append(time.perf_counter() - t1)
                    break


def stats(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50_ms": ms(percentile(values, 50)),
        "p99_ms": ms(percentile(values, 99)),
        "max_ms": ms(max(values)),
    }


async def phase(
    http: aiohttp.ClientSession,
    base: str,
    op: Operator,
    op_token: str,
    visitors: int,
    rounds: int,
    first: int,
    rate: float | None = None,
) -> dict[str, Any]:
    """One phase: closed loop (``rate`` None) or rounds started at ``rate`` per second."""
    to_operator: list[float] = []
    to_visitor: list[float] = []
    every = visitors / rate if rate else 0.0
    started = time.perf_counter()
    await asyncio.gather(
        *(
            visitor(
                http,
                base,
                op,
                op_token,
                first + n,
                rounds,
                to_operator,
                to_visitor,
                every,
                n * every / visitors,
            )
            for n in range(visitors)
        )
    )
    elapsed = time.perf_counter() - started
    return {
        "rounds_per_s": round(visitors * rounds / elapsed, 2),
        "elapsed_s": round(elapsed, 2),
        "visitor_to_operator": stats(to_operator),
        "operator_to_visitor": stats(to_visitor),
    }


async def run(visitors: int, rounds: int, log: Path) -> dict[str, Any]:
    quiet_logging(log)
    with tempfile.TemporaryDirectory(prefix="omniroute-bench-webchat-") as tmp:
        embedded = EmbeddedStore(storage_path=Path(tmp) / "mongo")
        await embedded.start()
        try:
            async with service(embedded.uri) as base, aiohttp.ClientSession() as http:
                store = Store.open(embedded.uri, DB_NAME)
                try:
                    op_token, _ = await tokens.issue(store, OPERATOR)
                finally:
                    await store.close()
                op = Operator()
                async with http.ws_connect(f"{base}/api/v1/ws?token={op_token}") as op_ws:
                    reader = asyncio.create_task(op.read(op_ws))
                    most = await phase(http, base, op, op_token, visitors, rounds, 0)
                    half = await phase(
                        http,
                        base,
                        op,
                        op_token,
                        visitors,
                        rounds,
                        visitors,
                        most["rounds_per_s"] / 2,
                    )
                    reader.cancel()
        finally:
            await embedded.stop()
    return {
        "visitors": visitors,
        "rounds": rounds,
        "maximum": most,
        "half_rate": half,
        # the figures the targets are read from (issue #23: at half the maximum rate)
        "visitor_to_operator": half["visitor_to_operator"],
        "operator_to_visitor": half["operator_to_visitor"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.webchat", description=__doc__)
    p.add_argument("--visitors", type=int, default=50, help="concurrent visitors")
    p.add_argument("--rounds", type=int, default=4, help="message + reply rounds per visitor")
    p.add_argument("--size-only", action="store_true", help="only the widget's size")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output file")
    a = p.parse_args(argv)
    size = bundle_size()
    print(
        f"widget.js: {size['raw_bytes']:,} bytes, zlib level 9 {size['gzip_bytes']:,} bytes "
        f"(budget {BUDGET_GZIP:,})"
    )
    result: dict[str, Any] = {"bundle": size, "machine": machine(False, None)}
    result["load_average_1m_before"] = round(os.getloadavg()[0], 2)
    if not a.size_only:
        log = Path(tempfile.gettempdir()) / LOG_NAME
        live = asyncio.run(run(a.visitors, a.rounds, log))
        result["live"] = live
        for key, label in (
            ("visitor_to_operator", "visitor message → operator's WebSocket"),
            ("operator_to_visitor", "operator reply → visitor's WebSocket"),
        ):
            s = live["maximum"][key]
            print(
                f"{label} at the maximum ({num(live['maximum']['rounds_per_s'])} rounds/s, "
                f"closed loop): p50 {num(s['p50_ms'])} ms, p99 {num(s['p99_ms'])} ms"
            )
        print(f"at half the maximum rate ({num(live['half_rate']['rounds_per_s'])} rounds/s):")
        for key, label in (
            ("visitor_to_operator", "visitor message → operator's WebSocket"),
            ("operator_to_visitor", "operator reply → visitor's WebSocket"),
        ):
            s = live[key]
            verdict = "PASS" if s["p99_ms"] <= TARGET_P99_MS else "MISS"
            print(
                f"{label}: p50 {num(s['p50_ms'])} ms, p99 {num(s['p99_ms'])} ms, "
                f"max {num(s['max_ms'])} ms (n={s['n']}, {live['visitors']} visitors)"
                f"  {verdict} (p99 ≤ {TARGET_P99_MS:g} ms)"
            )
        result["target_p99_ms"] = TARGET_P99_MS
    write_json(result, a.out)
    return 0 if size["gzip_bytes"] <= BUDGET_GZIP else 1


if __name__ == "__main__":
    sys.exit(main())
