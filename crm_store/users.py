"""Users managed through the API, over the ones in users.yaml.

``users.yaml`` is the starting directory; the admin API (inbox/users_api.py) stores each
created or edited user whole in the ``users`` collection, and that record wins over the
YAML's. :class:`Directory` applies the overlay to the running configuration *in place*
(the user list is the one part of the configuration that changes while the service
runs, so every component holding the configuration — auth, routing's round robin,
automation — sees the change): at once in the process that made it, within
``REFRESH_S`` in the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime

import structlog
from pymongo.errors import PyMongoError

from config.models import Absence, AppConfig, User
from crm_store.store import Document, Store

log = structlog.get_logger("omniroute.users")
REFRESH_S = 5.0


async def overlay(store: Store) -> list[User]:
    return [
        User.model_validate({k: v for k, v in d.items() if k not in ("_id", "updated_at", "by")})
        async for d in store["users"].find({})
    ]


async def stored_absences(store: Store) -> list[Absence]:
    """Absences entered through the API (``absences`` collection), with their ids."""
    return [
        Absence.model_validate(
            {k: v for k, v in d.items() if k in ("user", "from", "to", "deputy")} | {"id": d["_id"]}
        )
        async for d in store["absences"].find({})
    ]


async def add_absence(store: Store, absence: Absence, by: str) -> Absence:
    """Store an absence (a new id); the Directory applies it to the configuration."""
    stored = absence.model_copy(update={"id": uuid.uuid4().hex})
    doc: Document = {
        "_id": stored.id,
        **stored.model_dump(mode="json", by_alias=True, exclude={"id"}),
        "created_at": datetime.now(UTC),
        "by": by,
    }
    await store["absences"].insert_one(doc)
    return stored


async def delete_absence(store: Store, user_id: str, absence_id: str) -> bool:
    result = await store["absences"].delete_one({"_id": absence_id, "user": user_id})
    return bool(result.deleted_count)


async def save(store: Store, user: User, by: str) -> None:
    doc: Document = {**user.model_dump(mode="json"), "updated_at": datetime.now(UTC), "by": by}
    await store["users"].replace_one({"_id": user.id}, {"_id": user.id, **doc}, upsert=True)


class Directory:
    """The running configuration's users: the YAML's plus the stored overlay."""

    def __init__(self, config: AppConfig) -> None:
        self.config = config
        self.base = list(config.users.users)
        self.base_absences = list(config.users.absences)
        self.from_api: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def apply(self, stored: list[User]) -> None:
        merged = {u.id: u for u in self.base}
        merged.update({u.id: u for u in stored})
        self.from_api = {u.id for u in stored}
        self.config.users.users[:] = list(merged.values())

    def apply_absences(self, stored: list[Absence]) -> None:
        """The file's absences plus the API's, in place (like the users)."""
        self.config.users.absences[:] = [*self.base_absences, *stored]

    async def refresh(self, store: Store) -> None:
        self.apply(await overlay(store))
        self.apply_absences(await stored_absences(store))

    async def start(self, store: Store) -> None:
        with contextlib.suppress(PyMongoError):
            await self.refresh(store)
        self._task = asyncio.create_task(self._loop(store), name="users-refresh")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self, store: Store) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            try:
                await self.refresh(store)
            except PyMongoError as exc:
                log.warning("users.refresh_failed", error=type(exc).__name__)
