"""The composition root: store (embedded or configured), config, app, worker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol

import structlog
from aiohttp import web
from pymongo.errors import PyMongoError

from config.loader import load_config
from config.models import AppConfig
from config.settings import Settings
from crm_store import routing_store as rs
from crm_store.embedded import EmbeddedStore
from crm_store.intake import GroupCommit
from crm_store.store import Store
from ingest.app import create_app
from ingest.context import Service
from ingest.deliveries import DeliveryWorker
from ingest.mail_sync import MailSync
from ingest.metrics import Metrics
from ingest.outbox import OutboxWorker
from ingest.worker import RoutingWorker
from routing.router import Router

log = structlog.get_logger("omniroute.service")


class Background(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


EMBEDDED_HOST = "127.0.0.1"


def _answers(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


@asynccontextmanager
async def store_for(settings: Settings) -> AsyncIterator[Store]:
    """The configured MongoDB, or the embedded server started under ``data_dir``."""
    embedded: EmbeddedStore | None = None
    uri = settings.mongodb_uri
    if uri is None and _answers(EMBEDDED_HOST, settings.embedded_port):
        # Another omniroute process on this machine runs the embedded store: share it.
        uri = f"mongodb://{EMBEDDED_HOST}:{settings.embedded_port}/?directConnection=true"
    if uri is None:
        embedded = EmbeddedStore(
            storage_path=settings.data_dir / "mongo", port=settings.embedded_port
        )
        log.info(
            "store.embedded_starting",
            path=str(settings.data_dir / "mongo"),
            port=settings.embedded_port,
        )
        await embedded.start()
        uri = embedded.uri
    store = Store.open(uri, settings.db_name)
    try:
        yield store
    finally:
        await store.close()
        if embedded is not None:
            await embedded.stop()


async def ensure_indexes_with_retry(store: Store, attempts: int = 30) -> None:
    for i in range(attempts):
        try:
            await store.ensure_indexes()
            return
        except PyMongoError as exc:
            if i == attempts - 1:
                raise
            log.warning("store.not_ready", error=type(exc).__name__)
            await asyncio.sleep(1.0)


@asynccontextmanager
async def running_service(
    settings: Settings, config: AppConfig, store: Store
) -> AsyncIterator[Service]:
    await ensure_indexes_with_retry(store)
    # Round-robin counters exist before the first lead (see docs/store.md).
    for line in sorted({s.line for s in config.sources.sources if s.line}):
        await rs.ensure_counter(store, f"round_robin:{line}")
    metrics = Metrics()
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    router = Router(store, config)
    worker = RoutingWorker(
        store,
        router,
        metrics,
        owner=owner,
        batch_size=settings.route_batch_size,
        lease_s=settings.intake_lease_s,
        recovery_interval_s=settings.recovery_interval_s,
    )
    sender = OutboxWorker(store, config, owner=owner)
    deliveries = DeliveryWorker(
        store,
        owner=owner,
        timeout_s=settings.webhook_timeout_s,
        retry_base_s=settings.webhook_retry_base_s,
        poll_s=settings.webhook_poll_s,
        lease_s=settings.webhook_lease_s,
    )
    service = Service(
        config,
        store,
        worker,
        metrics,
        owner,
        settings.intake_lease_s,
        sender,
        deliveries,
        GroupCommit(store, owner, settings.intake_lease_s),
    )
    # Further background workers (anything with async start() and stop()): started after
    # the core ones, stopped before them, in reverse order.
    background: list[Background] = []
    # --- e-mail
    background.append(
        MailSync(
            store,
            config,
            owner=owner,
            submit=worker.submit,
            metrics=metrics,
            intake_lease_s=settings.intake_lease_s,
        )
    )
    # --- telephony
    # --- automation
    if settings.automation_enabled:
        from automation.worker import AutomationWorker

        background.append(
            AutomationWorker(
                store,
                config,
                owner=owner,
                poll_s=settings.automation_poll_s,
                lease_s=settings.automation_lease_s,
                timer_batch=settings.automation_timer_batch,
                retry_s=settings.automation_retry_s,
            )
        )
    await worker.start()
    await sender.start()
    await deliveries.start()
    started: list[Background] = []
    try:
        for b in background:
            await b.start()
            started.append(b)
        yield service
    finally:
        for b in reversed(started):
            await b.stop()
        await deliveries.stop()
        await sender.stop()
        await worker.stop()


async def serve(settings: Settings) -> None:
    config = load_config(settings.config_dir)
    async with store_for(settings) as store, running_service(settings, config, store) as svc:
        app = create_app(svc)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        log.info(
            "service.listening", url=f"http://{settings.host}:{settings.port}", owner=svc.owner
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            log.info("service.stopping")
            await runner.cleanup()
