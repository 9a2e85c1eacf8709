"""Prometheus metrics of one service process (``GET /metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
LOOP_PROBE_S = 0.05


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.intake = Counter(
            "omniroute_intake_total",
            "Webhook messages by channel and outcome (accepted, duplicate, rejected, unavailable,"
            " unparsed: an authentic delivery kept unread; network_refused: a client outside"
            " the account's allowed_networks)",
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
        # Every HTTP answer by route (the matched route's pattern, "unmatched" for 404s
        # outside any route) and status; handler exceptions (answered 500 by the error
        # middleware) also by route; requests cut short while their body was read.
        self.responses = Counter(
            "omniroute_http_responses_total",
            "HTTP responses by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.handler_errors = Counter(
            "omniroute_http_handler_errors_total",
            "Exceptions that escaped an HTTP handler (answered 500), by route",
            ["route"],
            registry=self.registry,
        )
        self.aborted = Counter(
            "omniroute_http_aborted_total",
            "Requests cut short: body_timeout, body_too_large, busy (no read slot), disconnected",
            ["reason"],
            registry=self.registry,
        )
        self.raw_dropped = Counter(
            "omniroute_raw_bodies_dropped_total",
            "Raw webhook bodies dropped by the retention sweeper",
            registry=self.registry,
        )
        self.store_errors = Counter(
            "omniroute_store_errors_total",
            "Store operations that failed",
            ["op"],
            registry=self.registry,
        )

        # Where an acknowledgement's time goes: the webhook handler from its first line to
        # its response (channel = a known channel's name, else "unknown"), the durable
        # writes inside it, and how late the event loop runs its callbacks (a busy loop
        # delays every request: routing's CPU work shares the loop with the handlers).
        self.webhook_seconds = Histogram(
            "omniroute_webhook_seconds",
            "Webhook handling time in this process, by channel",
            ["channel"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.intake_write_seconds = Histogram(
            "omniroute_intake_write_seconds",
            "A webhook's durable writes (intake, call reports) until acknowledged by the store",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.loop_lag_seconds = Histogram(
            "omniroute_event_loop_lag_seconds",
            f"How late a {LOOP_PROBE_S}s event-loop timer fires",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
