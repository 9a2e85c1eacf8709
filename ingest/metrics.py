"""Prometheus metrics of one service process (``GET /metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.intake = Counter(
            "omniroute_intake_total",
            "Webhook messages by channel and outcome (accepted, duplicate, rejected, unavailable)",
            ["channel", "outcome"],
            registry=self.registry,
        )
        self.routed = Counter(
            "omniroute_routed_total",
            "Routed messages by decision rule",
            ["rule"],
            registry=self.registry,
        )
        self.routing_failures = Counter(
            "omniroute_routing_failures_total",
            "Routing attempts that failed",
            registry=self.registry,
        )
        self.routing_latency = Histogram(
            "omniroute_routing_latency_seconds",
            "From intake acceptance to routed",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.store_errors = Counter(
            "omniroute_store_errors_total",
            "Store operations that failed",
            ["op"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
