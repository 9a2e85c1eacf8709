"""Intake records: ``omniroute intake list`` and ``omniroute intake reparse``."""

from __future__ import annotations

import argparse
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from config.loader import load_config
from config.settings import get_settings
from crm_store.documents import IntakeStatus
from crm_store.store import Store
from ingest.cli.common import fmt_time, store_cmd
from ingest.reparse import listed, reparse, selection

_AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def since_arg(value: str) -> datetime:
    """``--since``: an ISO date or time (UTC unless it says otherwise), or an age such
    as ``30m``, ``12h``, ``7d``."""
    text = value.strip()
    ago = _AGO.match(text)
    if ago:
        return datetime.now(UTC) - timedelta(**{_UNITS[ago.group(2)]: float(ago.group(1))})
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {value!r} (an ISO date or time, or an age like 12h, 7d)"
        ) from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _error_line(doc: dict[str, Any]) -> str:
    error = str(doc.get("error") or "")
    lines = [line for line in error.splitlines() if line.strip()]
    return lines[-1][:160] if lines else ""


@store_cmd
async def cmd_intake_list(store: Store, args: argparse.Namespace) -> int:
    query = selection(args.status, args.channel, args.since)
    count = 0
    async for doc in listed(store, query, args.limit):
        count += 1
        where = f"{doc.get('channel')}/{doc.get('account')}"
        received = fmt_time(doc.get("received_at"))
        line = f"{doc['_id']}  {doc.get('status', '-'):<9} {where:<24} {received}"
        error = _error_line(doc)
        print(f"{line}  {error}" if error else line)
    if count == 0:
        print("no intake records match", file=sys.stderr)
    return 0


@store_cmd
async def cmd_intake_reparse(store: Store, args: argparse.Namespace) -> int:
    config = load_config(get_settings().config_dir)
    report = await reparse(store, config, args.channel, args.since)
    for rid, produced in report.reparsed.items():
        print(f"{rid}  reparsed: {len(produced)} message(s) {' '.join(produced)}".rstrip())
    for rid, error in report.still_unparsed.items():
        print(f"{rid}  still unparsed: {error.splitlines()[-1][:160] if error else ''}")
    for rid, why in report.skipped.items():
        print(f"{rid}  skipped: {why}")
    print(
        f"{len(report.reparsed)} reparsed, {len(report.still_unparsed)} still unparsed, "
        f"{len(report.skipped)} skipped. New messages are routed by the running service's "
        "recovery sweep."
    )
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "intake",
        help="intake records: list them, read unparsed deliveries again",
        description="Intake records: what every channel took in, and deliveries kept "
        "unparsed (docs/webhooks.md).",
    )
    cmds = p.add_subparsers(dest="intake_command", metavar="SUBCOMMAND", required=True)
    statuses = [s.value for s in IntakeStatus]

    ls = cmds.add_parser("list", help="list intake records, newest first")
    ls.add_argument("--status", choices=statuses, help="only records in this status")
    ls.add_argument("--channel", help="only this channel (telegram, vk, email …)")
    ls.add_argument("--since", type=since_arg, help="received since (ISO time, or 12h, 7d)")
    ls.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    ls.set_defaults(func=cmd_intake_list)

    rp = cmds.add_parser(
        "reparse",
        help="read unparsed deliveries again (after an upgrade) and route what they hold",
    )
    rp.add_argument("--channel", help="only this channel")
    rp.add_argument("--since", type=since_arg, help="received since (ISO time, or 12h, 7d)")
    rp.set_defaults(func=cmd_intake_reparse)
