"""The composition root: store (embedded or configured), config, app, worker.

Graceful shutdown (SIGTERM or SIGINT; docs/deployment.md): :class:`Drain` makes
``/readyz`` answer 503 and new webhooks 503 with ``Retry-After`` (the provider or the
proxy sends them elsewhere or later) while the webhook requests already in flight finish;
then the listener closes, routing gets a bounded time to finish what this process
accepted, the workers stop, and :func:`release_leases` hands everything this process
still holds back at once, so another process takes it over without waiting for a lease
to run out. A second signal cuts the waiting short.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog
from aiohttp import web
from pymongo.errors import PyMongoError

from config.loader import load_config
from config.models import AppConfig
from config.settings import Settings
from crm_store import routing_store as rs
from crm_store import tasks
from crm_store.embedded import OPEN_S, EmbeddedStore
from crm_store.intake import GroupCommit, id_chunks
from crm_store.store import Store
from ingest.app import create_app, create_metrics_app
from ingest.context import Service, problem
from ingest.deliveries import DeliveryWorker
from ingest.limits import HttpPolicy
from ingest.loop_lag import LoopLagProbe
from ingest.mail_sync import MailSync
from ingest.memory import tune_allocator
from ingest.metrics import Metrics
from ingest.outbox import OutboxWorker
from ingest.retention import RawRetention
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
        uri = (
            f"mongodb://{EMBEDDED_HOST}:{settings.embedded_port}/"
            "?directConnection=true&retryWrites=false"  # as EmbeddedStore.uri: see there
        )
    if uri is None:
        embedded = EmbeddedStore(
            storage_path=settings.data_dir / "mongo", port=settings.embedded_port
        )
        log.info(
            "store.embedded_starting",
            path=str(settings.data_dir / "mongo"),
            port=settings.embedded_port,
        )
        await embedded.start(timeout=OPEN_S)
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


async def migrate_old_layout(store: Store) -> None:
    """A store written before the ``identities`` collection is migrated before this process
    routes anything (``omniroute db migrate``, idempotent and safe beside running
    processes: docs/scaling.md), so an upgrade needs no manual step."""
    from crm_store import migrations

    if not await migrations.old_layout(store):
        return
    log.info("store.migrating_identities")
    report = await migrations.migrate_identities(store)
    log.info(
        "store.migrated_identities",
        contacts=report.contacts,
        keys_written=report.keys_written,
        conflicts=len(report.conflicts),
    )


@asynccontextmanager
async def running_service(
    settings: Settings, config: AppConfig, store: Store
) -> AsyncIterator[Service]:
    await ensure_indexes_with_retry(store)
    await migrate_old_layout(store)
    armed = await tasks.arm_earlier_reminders(store)
    if armed:
        log.info("store.reminders_armed", tasks=armed)
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
        HttpPolicy.from_settings(settings),
    )
    # Further background workers (anything with async start() and stop()): started after
    # the core ones, stopped before them, in reverse order.
    background: list[Background] = [
        LoopLagProbe(metrics),
        RawRetention(
            store,
            metrics,
            retention_days=settings.raw_retention_days,
            interval_s=settings.raw_sweep_interval_s,
        ),
    ]
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
    # --- SMS delivery states polled from gateways without callbacks (docs/channels/sms.md)
    from ingest.sms_status import SmsStatusPoller

    background.append(SmsStatusPoller(store, config))
    # --- telephony: call events announced after the 2xx (docs/channels/telephony.md)
    from ingest.call_announcer import CallAnnouncer

    background.append(CallAnnouncer(store, config.service_pipelines()))
    # --- the live hubs: woken by any process's events where the store has change streams
    from ingest.event_watch import EventWatch

    background.append(EventWatch(store))
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
    # --- report rollups (crm_store/reports/rollup.py)
    if settings.report_rollups_enabled:
        from automation.calendar import WorkingCalendar
        from crm_store.reports.rollup import RollupWorker

        background.append(
            RollupWorker(
                store,
                WorkingCalendar.from_config(config.calendar),
                owner=owner,
                poll_s=settings.report_rollups_poll_s,
                pace_s=settings.report_rollups_pace_s,
                day_share=settings.report_rollups_day_share,
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
        try:
            await release_leases(store, owner)
        except PyMongoError as exc:  # the leases then run out by themselves
            log.warning("service.leases_not_released", error=type(exc).__name__)


# --- graceful shutdown ------------------------------------------------------------

#: Draining ends once no webhook request is in flight and none arrived for this long
#: (the proxy has seen the 503s and sends elsewhere; connections still in the listen
#: backlog are answered rather than reset) — or after DRAIN_MAX_S in any case.
DRAIN_QUIET_S = 0.5
DRAIN_MAX_S = 10.0
#: After the listener closes: how long other requests (operator API) may still run.
HTTP_SHUTDOWN_S = 5.0
#: How long routing may go on with what this process accepted before the rest is left
#: to the recovery sweep of other processes (released at once, see release_leases).
ROUTE_DRAIN_S = 5.0
DRAIN_RETRY_AFTER_S = 1

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Drain:
    """The HTTP side of a graceful shutdown, as an aiohttp middleware.

    Before :meth:`begin` it only counts the webhook requests in flight. After it,
    ``/readyz`` answers 503 (load balancers take the process out of rotation), a new
    webhook request answers 503 ``draining`` with ``Retry-After`` (nothing stored; the
    provider's retry or the proxy's next upstream stores it — intake is idempotent), and
    every response closes its connection. Requests already in flight finish normally.
    """

    def __init__(self) -> None:
        self.draining = False
        self.inflight = 0
        self.last_arrival = time.monotonic()
        self.hurry = asyncio.Event()

    def begin(self) -> None:
        self.draining = True
        self.last_arrival = time.monotonic()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        webhook = request.path.startswith("/webhooks/")
        if self.draining:
            if webhook:
                self.last_arrival = time.monotonic()
                return self._refuse("the service is shutting down; retry later")
            if request.path == "/readyz":
                return self._refuse("the service is shutting down")
        if webhook:
            self.inflight += 1
        try:
            response: web.StreamResponse = await handler(request)
        finally:
            if webhook:
                self.inflight -= 1
        if self.draining and not response.prepared:
            response.force_close()
        return response

    def _refuse(self, detail: str) -> web.Response:
        response = problem(503, "draining", detail)
        response.headers["Retry-After"] = str(DRAIN_RETRY_AFTER_S)
        response.force_close()
        return response

    async def settle(self, quiet_s: float = DRAIN_QUIET_S, max_s: float = DRAIN_MAX_S) -> bool:
        """Wait until no webhook request is in flight and none arrived for ``quiet_s``;
        False if ``max_s`` (or a second signal) came first."""
        deadline = time.monotonic() + max_s
        while not self.hurry.is_set():
            now = time.monotonic()
            if self.inflight == 0 and now - self.last_arrival >= quiet_s:
                return True
            if now >= deadline:
                return False
            await asyncio.sleep(0.05)
        return False


async def finish_routing(
    store: Store, owner: str, hurry: asyncio.Event, max_s: float = ROUTE_DRAIN_S
) -> bool:
    """Give the routing worker up to ``max_s`` to route what this process holds; False
    if records are left (they are released and another process's sweep routes them)."""
    deadline = time.monotonic() + max_s
    while not hurry.is_set() and time.monotonic() < deadline:
        try:
            if not await store.intake.find_one({"status": "pending", "owner": owner}, {"_id": 1}):
                return True
        except PyMongoError:
            return False
        await asyncio.sleep(0.1)
    return False


async def release_leases(store: Store, owner: str) -> dict[str, int]:
    """Hand back every lease ``owner`` still holds, so other processes take the work over
    at once instead of after the lease runs out. Each worker releases what it knows of on
    its own stop; this also covers what a cancelled task held (an intake batch being
    routed, a reply being sent, timers being fired). Call it only after the workers
    stopped. Returns how many documents each collection had released."""
    t = datetime.now(UTC)
    released: dict[str, int] = {}

    async def give_back(
        name: str,
        leased: dict[str, Any],
        update: dict[str, Any],
        *,
        owner_field: str = "owner",
        hint: str | None = None,
    ) -> None:
        """Release the documents of ``name`` matching ``leased`` that ``owner`` holds.

        ``leased`` is answered by an index (``hint`` names it where the embedded store
        would not pick it: a partial index); the owner is checked here, then the updates
        go by ``_id`` with the whole condition again (a document taken over meanwhile is
        left alone). A filter on the owner itself would scan the collection on the
        embedded store — messages and timers grow with the business."""
        mine = [
            d["_id"]
            async for d in store[name].find(leased, {owner_field: 1}, hint=hint)
            if d.get(owner_field) == owner
        ]
        count = 0
        for chunk in id_chunks(mine):
            result = await store[name].update_many(
                {"_id": {"$in": chunk}, owner_field: owner, **leased}, {"$set": update}
            )
            count += result.modified_count
        released[name] = count

    # Intake records accepted (or recovered) here and not routed: the recovery sweep of
    # any process claims them now (docs/architecture.md).
    await give_back("intake", {"status": "pending", "lease_until": {"$gt": t}}, {"lease_until": t})
    # Replies claimed by our outbox worker and not sent (crm_store/outbox.py).
    await give_back(
        "messages",
        {"send_due_at": {"$exists": True}, "send_lease_until": {"$gt": t}},
        {"send_lease_until": _EPOCH},
        owner_field="send_owner",
        hint="outbox_due",
    )
    # Timers claimed for firing: a recovered timer looks up what its firing already did
    # (crm_store/timers.py). A timer waiting for a retry has no owner and is left alone.
    await give_back(
        "timers",
        {"state": "running", "lease_until": {"$gt": t}},
        {"lease_until": _EPOCH},
    )
    # Webhook subscriptions being delivered (crm_store/subscriptions.py).
    await give_back("subscriptions", {"lease_until": {"$gt": t}}, {"lease_until": _EPOCH})
    # The automation event cursor (crm_store/cursors.py).
    await give_back(
        "automation_cursors",
        {"lease_until": {"$gt": t}},
        {"lease_until": _EPOCH, "owner": None},
    )
    # Named leases: IMAP mailboxes (crm_store/mailboxes.py).
    await give_back("leases", {"until": {"$gt": t}}, {"until": _EPOCH})
    if any(released.values()):
        log.info("service.leases_released", **{k: v for k, v in released.items() if v})
    return released


async def serve(settings: Settings) -> None:
    tune_allocator()  # memory freed after a flood of bodies goes back (ingest/memory.py)
    config = load_config(settings.config_dir)
    async with store_for(settings) as store, running_service(settings, config, store) as svc:
        app = create_app(svc)
        drain = Drain()
        app.middlewares.append(drain.middleware)
        # keepalive_timeout: a connection that sends no complete request head for this
        # long (when it opens, or between keep-alive requests) is closed.
        runner = web.AppRunner(
            app,
            access_log=None,
            shutdown_timeout=HTTP_SHUTDOWN_S,
            keepalive_timeout=settings.header_timeout_s,
        )
        await runner.setup()
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        log.info(
            "service.listening", url=f"http://{settings.host}:{settings.port}", owner=svc.owner
        )
        metrics_runner: web.AppRunner | None = None
        if settings.metrics_port is not None:
            metrics_runner = web.AppRunner(
                create_metrics_app(svc),
                access_log=None,
                keepalive_timeout=settings.header_timeout_s,
            )
            await metrics_runner.setup()
            await web.TCPSite(metrics_runner, settings.metrics_host, settings.metrics_port).start()
            log.info(
                "service.metrics_listening",
                url=f"http://{settings.metrics_host}:{settings.metrics_port}/metrics",
            )
        stop = asyncio.Event()

        def on_signal() -> None:
            if stop.is_set():
                drain.hurry.set()  # a second signal: stop waiting
            stop.set()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, on_signal)
        try:
            await stop.wait()
            log.info("service.draining")
            drain.begin()
            settled = await drain.settle()
            log.info("service.stopping", inflight=drain.inflight, settled=settled)
        finally:
            await runner.cleanup()
            if metrics_runner is not None:
                await metrics_runner.cleanup()
        routed = await finish_routing(store, svc.owner, drain.hurry)
        log.info("service.http_closed", routed_all=routed)
