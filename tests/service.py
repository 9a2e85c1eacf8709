"""Running omniroute for tests: in this process on a real port, or as separate processes.

Both talk HTTP over loopback and MongoDB over TCP, exactly as in production.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from channels.api import sign
from config.loader import load_config
from config.models import AppConfig, ChannelAccount
from config.settings import DEFAULT_CONFIG_DIR, Settings
from crm_store.store import Store
from ingest.app import create_app
from ingest.context import Service
from ingest.service import running_service
from tests.helpers import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
SECRETS = {
    "OMNIROUTE_SECRET_API_SITE": "site-secret",
    "OMNIROUTE_SECRET_API_SHOP": "shop-secret",
}
os.environ.update(SECRETS)
ACCOUNT_SECRET = {"site": "site-secret", "shop": "shop-secret"}


def config_with(*accounts: ChannelAccount, base: AppConfig | None = None) -> AppConfig:
    """The example config (or ``base``) plus extra channel accounts (replacing accounts
    of the same channel and name)."""
    cfg = base or load_config(DEFAULT_CONFIG_DIR)
    replaced = {(a.channel, a.account) for a in accounts}
    kept = [a for a in cfg.channels.accounts if (a.channel, a.account) not in replaced]
    channels = cfg.channels.model_copy(update={"accounts": [*kept, *accounts]})
    return cfg.model_copy(update={"channels": channels})


def api_body(
    external_id: str,
    *,
    phone: str | None = None,
    email: str | None = None,
    name: str | None = None,
    user: str | None = None,
    text: str = "Hello, I would like a kitchen",
    thread_id: str | None = None,
) -> dict[str, Any]:
    sender = {
        k: v
        for k, v in {"phone": phone, "email": email, "name": name, "external_user_id": user}.items()
        if v is not None
    }
    body: dict[str, Any] = {"external_id": external_id, "sender": sender, "text": text}
    if thread_id:
        body["thread_id"] = thread_id
    return body


def signed_headers(secret: str, body: bytes, ts: int | None = None) -> dict[str, str]:
    stamp = str(ts if ts is not None else int(time.time()))
    return {
        "Content-Type": "application/json",
        "X-Omniroute-Timestamp": stamp,
        "X-Omniroute-Signature": sign(secret, stamp, body),
    }


@dataclass
class Client:
    """Posts to one service base URL."""

    base: str
    http: aiohttp.ClientSession

    async def post_api(
        self,
        body: dict[str, Any] | bytes,
        account: str = "site",
        secret: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        raw = body if isinstance(body, bytes) else orjson.dumps(body)
        hdrs = signed_headers(secret or ACCOUNT_SECRET.get(account, "x"), raw)
        hdrs.update(headers or {})
        async with self.http.post(
            f"{self.base}/webhooks/api/{account}", data=raw, headers=hdrs
        ) as resp:
            data = await resp.read()
            return resp.status, (orjson.loads(data) if data else {})

    async def get(self, path: str) -> tuple[int, bytes]:
        async with self.http.get(f"{self.base}{path}") as resp:
            return resp.status, await resp.read()


@dataclass
class InProcess:
    service: Service
    store: Store
    client: Client

    async def routed(self) -> None:
        """Wait until everything accepted so far is routed."""

        async def done() -> bool:
            return await self.store.intake.count_documents({"status": "pending"}) == 0

        await wait_for(done, timeout=20, message="intake still pending")


def test_settings(mongo_uri: str, db_name: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "mongodb_uri": mongo_uri,
        "db_name": db_name,
        "port": free_port(),
        "recovery_interval_s": 0.5,
        "intake_lease_s": 30.0,
        # Day totals summed after every page: the tests compare them as soon as the log is
        # applied (tests/test_report_episode_days.py tests the wait itself).
        "report_rollups_day_share": 1.0,
    }
    values.update(overrides)
    return Settings(**values)


@asynccontextmanager
async def in_process(
    mongo_uri: str, db_name: str, config: AppConfig | None = None, **overrides: Any
) -> AsyncIterator[InProcess]:
    settings = test_settings(mongo_uri, db_name, **overrides)
    cfg = config or load_config(DEFAULT_CONFIG_DIR)
    store = Store.open(mongo_uri, db_name)
    try:
        async with running_service(settings, cfg, store) as svc:
            runner = web.AppRunner(create_app(svc), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", settings.port)
            await site.start()
            try:
                async with aiohttp.ClientSession() as http:
                    yield InProcess(svc, store, Client(f"http://127.0.0.1:{settings.port}", http))
            finally:
                await runner.cleanup()
    finally:
        await store.close()


@dataclass
class Proc:
    """An ``omniroute serve`` child process."""

    port: int
    env: dict[str, str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 20.0) -> None:  # noqa: ASYNC109
        log = self.log.open("ab")
        self.popen = subprocess.Popen(  # noqa: ASYNC220 - returns at once
            [sys.executable, "-m", "ingest.cli", "serve"],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

        async def healthy() -> bool:
            if self.popen is not None and self.popen.poll() is not None:
                raise AssertionError(f"service exited: {self.log.read_text()[-2000:]}")
            try:
                async with aiohttp.ClientSession() as s, s.get(f"{self.base}/healthz") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await wait_for(healthy, timeout=timeout, interval=0.1)

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait()

    async def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            for _ in range(100):
                if self.popen.poll() is not None:
                    return
                await asyncio.sleep(0.1)
            self.kill()


def proc(mongo_uri: str, db_name: str, log_dir: Path, **env: str) -> Proc:
    port = free_port()
    environ = {
        **os.environ,
        "OMNIROUTE_MONGODB_URI": mongo_uri,
        "OMNIROUTE_DB_NAME": db_name,
        "OMNIROUTE_PORT": str(port),
        "OMNIROUTE_LOG_FORMAT": "json",
        "OMNIROUTE_RECOVERY_INTERVAL_S": "0.5",
        **env,
    }
    return Proc(port, environ, log_dir / f"service-{port}.log")
