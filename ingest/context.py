"""What every HTTP handler shares: the service's parts and the JSON/problem responses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from config.models import AppConfig
from crm_store.intake import GroupCommit
from crm_store.store import Store
from ingest.accept import IntakeWriter
from ingest.deliveries import DeliveryWorker
from ingest.limits import HttpPolicy
from ingest.metrics import Metrics
from ingest.outbox import OutboxWorker
from ingest.worker import RoutingWorker


@dataclass(slots=True)
class Service:
    """Everything a request handler needs."""

    config: AppConfig
    store: Store
    worker: RoutingWorker
    metrics: Metrics
    owner: str
    lease_s: float = 30.0
    outbox: OutboxWorker | None = None
    deliveries: DeliveryWorker | None = None
    intake: GroupCommit | None = None
    http: HttpPolicy = field(default_factory=HttpPolicy)

    @property
    def writer(self) -> IntakeWriter:
        """The intake write path of this process (ingest/accept.py)."""
        return IntakeWriter(
            self.store, self.owner, self.lease_s, self.intake, self.config.service_pipelines()
        )


SERVICE: web.AppKey[Service] = web.AppKey("service", Service)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def problem(status: int, code: str, detail: str, **extra: Any) -> web.Response:
    body = {
        "type": f"urn:omniroute:error:{code}",
        "title": code.replace("_", " "),
        "status": status,
        "code": code,
        "detail": detail,
        **extra,
    }
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/problem+json"
    )
