"""Running the automation engine in tests: the service (HTTP intake, routing) with its own
automation worker switched off, and a worker driven by the test on a fake clock."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import orjson

from automation.clock import FakeClock
from automation.worker import AutomationWorker
from config.loader import CONFIG_FILES, load_config
from config.models import AppConfig
from config.settings import DEFAULT_CONFIG_DIR
from crm_store import entities, tokens
from crm_store.stages import move_stage
from crm_store.store import Document
from tests.service import InProcess, api_body, in_process

MSK = ZoneInfo("Europe/Moscow")
Kind = Literal["lead", "deal"]
EXAMPLES = DEFAULT_CONFIG_DIR / "examples"
SEEDS = ("kitchen_shop", "forensic_lab", "oil_distributor", "eco_goods")


def msk(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=MSK)


def seed_dir(name: str) -> Path:
    return DEFAULT_CONFIG_DIR if name == "furniture" else EXAMPLES / name


def seed_config(name: str) -> AppConfig:
    return load_config(seed_dir(name))


def copy_seed(name: str, target: Path) -> Path:
    """A copy of a seed's configuration directory (to break or extend)."""
    target.mkdir(parents=True, exist_ok=True)
    for file in CONFIG_FILES:
        if (seed_dir(name) / file).is_file():
            shutil.copy(seed_dir(name) / file, target / file)
    return target


@dataclass
class Robots:
    """The service plus an automation worker on a fake clock."""

    svc: InProcess
    worker: AutomationWorker
    clock: FakeClock

    @property
    def store(self) -> Any:
        return self.svc.store

    @property
    def config(self) -> AppConfig:
        return self.worker.config

    async def run(self) -> int:
        """Let routing finish, then the robots handle everything that is due."""
        await self.svc.routed()
        return await self.worker.drain()

    async def advance(self, **kwargs: float) -> int:
        self.clock.advance(timedelta(**kwargs))
        return await self.worker.drain()

    async def until(self, when: datetime) -> int:
        self.clock.set(when)
        return await self.worker.drain()

    async def lead_from(self, external_id: str, phone: str, name: str = "Ivan") -> Document:
        status, body = await self.svc.client.post_api(api_body(external_id, phone=phone, name=name))
        assert status == 200, body
        await self.svc.routed()
        [mid] = body["accepted"]
        msg = await self.store.messages.find_one({"_id": mid})
        assert msg is not None
        kind, target = msg["target"]["kind"], msg["target"]["id"]
        doc: Document | None = await entities.get(self.store, kind, target)
        assert doc is not None
        return doc

    async def move(self, kind: Kind, entity_id: str, stage: str, by: str = "anna.smirnova") -> None:
        """An operator's stage move (through the stage guards), at the fake clock's now."""
        doc = await entities.get(self.store, kind, entity_id)
        assert doc is not None
        pipeline = self.config.pipeline(doc["pipeline_id"])
        await move_stage(self.store, kind, entity_id, pipeline, stage, by, at=self.clock.now())

    async def set(self, kind: Kind, entity_id: str, **fields: Any) -> None:
        """An operator's field edit, at the fake clock's now."""
        await entities.set_fields(
            self.store, kind, entity_id, fields, by="anna.smirnova", at=self.clock.now()
        )

    async def get(self, kind: str, entity_id: str) -> Document:
        doc = await entities.get(self.store, kind, entity_id)
        assert doc is not None
        return doc

    async def tasks(self, **query: Any) -> list[Document]:
        return [t async for t in self.store["tasks"].find(query, sort=[("created_at", 1)])]

    async def notes(self, **query: Any) -> list[Document]:
        cursor = self.store["notifications"].find(query, sort=[("created_at", 1)])
        return [n async for n in cursor]

    async def outbound(self) -> list[Document]:
        cursor = self.store.messages.find({"direction": "out"}, sort=[("received_at", 1)])
        return [m async for m in cursor]

    async def events(self, type_: str) -> list[Document]:
        return [e async for e in self.store.events.find({"type": type_}, sort=[("seq", 1)])]

    async def token(self, user: str) -> str:
        token, _ = await tokens.issue(self.store, user)
        return token

    async def api(
        self, method: str, path: str, user: str, body: Any = None
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {await self.token(user)}"}
        url = f"{self.svc.client.base}{path}"
        data = orjson.dumps(body) if body is not None else None
        async with self.svc.client.http.request(method, url, headers=headers, data=data) as resp:
            raw = await resp.read()
            return resp.status, (orjson.loads(raw) if raw else {})


@asynccontextmanager
async def robots(
    mongo_uri: str,
    db_name: str,
    *,
    config: AppConfig | None = None,
    start: datetime | None = None,
    owner: str = "test-robots",
    **settings: Any,
) -> AsyncIterator[Robots]:
    """The service on ``config`` (default: the shipped example) with automation off, and
    a worker of our own on a fake clock starting at ``start``."""
    cfg = config or load_config(DEFAULT_CONFIG_DIR)
    clock = FakeClock(start or msk(2025, 5, 19, 10, 0))
    async with in_process(mongo_uri, db_name, cfg, automation_enabled=False, **settings) as svc:
        worker = AutomationWorker(svc.store, cfg, owner=owner, clock=clock, start_at_end=False)
        await worker.prepare()
        try:
            yield Robots(svc, worker, clock)
        finally:
            await worker.stop()
