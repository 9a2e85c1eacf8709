"""Process settings from ``OMNIROUTE_*`` environment variables.

Settings say *how* this process runs (where MongoDB is, which port to listen on, how
to log); the YAML files in :attr:`Settings.config_dir` say *what* it routes. See
``docs/configuration.md``.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The directory of this package: the example configuration shipped as package data.
DEFAULT_CONFIG_DIR = Path(__file__).resolve().parent

_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG", "NOTSET")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OMNIROUTE_", extra="ignore")

    # MongoDB connection string; None starts the embedded store under data_dir/"mongo".
    mongodb_uri: str | None = None
    db_name: str = "omniroute"

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)

    # auto: console output when stderr is a TTY, JSON lines otherwise.
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: str = "INFO"

    config_dir: Path = DEFAULT_CONFIG_DIR
    data_dir: Path = Path("var")
    embedded_port: int = Field(default=27018, ge=0, le=65535)

    # Default request body limit (a channel account may set its own).
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    # Proxies (CIDR list) whose X-Forwarded-For names the client; from anywhere else the
    # connection's address is the client's (docs/security.md).
    trusted_proxies: list[str] = Field(default_factory=list)
    # Raw webhook bodies are kept this long after the delivery was routed (the parsed
    # message stays); unparsed ones until they are re-read.
    raw_retention_days: float = Field(default=30.0, gt=0)
    # How often the retention sweeper looks for raw bodies past raw_retention_days.
    raw_sweep_interval_s: float = Field(default=600.0, gt=0)

    # Slow and huge requests (docs/security.md "Request limits and timeouts"): a
    # connection that has not sent a complete request head within header_timeout_s (also
    # the idle time allowed between keep-alive requests; keep it above a proxy's upstream
    # keep-alive time) is closed; a webhook body not received in full within
    # body_timeout_s is answered 408; at most max_body_reads webhook bodies are read at
    # once, more answer 503 with Retry-After.
    header_timeout_s: float = Field(default=75.0, gt=0)
    body_timeout_s: float = Field(default=30.0, gt=0)
    max_body_reads: int = Field(default=64, gt=0)

    # GET /metrics: with metrics_port set it is served only on metrics_host:metrics_port
    # (not on the main port); with metrics_token set it needs "Authorization: Bearer
    # <token>" (docs/security.md "Errors and monitoring").
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_token: str | None = None

    # The key that signs file links handed out without a token (docs/security.md "Files
    # and download links"); 32+ random characters, the same on every process. Unset: one
    # is generated once and kept in the store (collection service_keys).
    file_link_key: SecretStr | None = None

    # Intake routing: claims per batch, recovery sweep interval, claim lease.
    route_batch_size: int = Field(default=64, gt=0)
    recovery_interval_s: float = Field(default=5.0, gt=0)
    intake_lease_s: float = Field(default=30.0, gt=0)

    # Webhook deliveries to consumers: per-request timeout, first retry delay (doubling,
    # with jitter), how often idle subscriptions look for new events.
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    webhook_retry_base_s: float = Field(default=1.0, gt=0)
    webhook_poll_s: float = Field(default=1.0, gt=0)
    # How long a process holds a subscription it works on; after a crash, another
    # process takes it over at most this much later.
    webhook_lease_s: float = Field(default=30.0, gt=0)

    # Pipeline automation (docs/automation.md): run the rule engine in this process; how
    # often it looks for new events and due timers; how long a process holds the event
    # cursor or a claimed timer (after a crash another takes over at most this much
    # later); timers claimed per round; the delay before a failed firing is retried.
    automation_enabled: bool = True
    automation_poll_s: float = Field(default=1.0, gt=0)
    automation_lease_s: float = Field(default=30.0, gt=0)
    automation_timer_batch: int = Field(default=50, gt=0)
    automation_retry_s: float = Field(default=30.0, gt=0)

    # Report rollups (docs/reports.md): keep volume's inbound messages and
    # responsiveness's episodes per conversation from the event log in this process
    # (one process at a time holds the cursor); off: reports read the collections.
    report_rollups_enabled: bool = True
    report_rollups_poll_s: float = Field(default=1.0, gt=0)
    # After a page of events it worked on, the worker waits this long before the next: in
    # a burst the events of one conversation or lead gather into one recomputation
    # instead of one per page (the rollups then trail the log by about this much).
    report_rollups_pace_s: float = Field(default=2.0, ge=0)
    # A day's totals are summed again at most this share of the time: after a sum that
    # took d seconds, that day waits d × (1/share − 1) before the next (a busy day's sum
    # reads every conversation-day of it; today's then trails by that wait). 1: no wait.
    report_rollups_day_share: float = Field(default=0.1, gt=0, le=1)

    # Webchat presence (crm_store/presence.py): an operator's or visitor's WebSocket
    # counts as connected for presence_ttl_s after its last heartbeat (sent every third
    # of it), so a process that died stops counting at most this much later.
    presence_ttl_s: float = Field(default=60.0, gt=0)

    @field_validator("mongodb_uri")
    @classmethod
    def _empty_uri_is_none(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            return None
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for net in value:
            ipaddress.ip_network(net.strip(), strict=False)  # ValueError: not a CIDR
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level == "WARN":
            level = "WARNING"
        if level not in _LEVELS:
            raise ValueError(f"unknown log level {value!r}; expected one of {', '.join(_LEVELS)}")
        return level

    @property
    def log_level_no(self) -> int:
        """The numeric :mod:`logging` level."""
        return logging.getLevelNamesMapping()[self.log_level]

    @property
    def embedded_data_dir(self) -> Path:
        """Where the embedded store keeps its data."""
        return self.data_dir / "mongo"


def get_settings() -> Settings:
    """Read the settings from the environment (not cached: each call reads it anew)."""
    return Settings()
