"""Reports: rebuilding the report rollups (crm_store/reports/rollup.py, docs/reports.md)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime
from typing import Any

from config.settings import Settings


def _since(value: str) -> datetime:
    """A date (UTC midnight) or an instant with an offset."""
    at = datetime.fromisoformat(value)
    if at.tzinfo is None:
        if "T" in value or " " in value:
            raise argparse.ArgumentTypeError("an instant needs an offset (…+03:00 or …Z)")
        at = at.replace(tzinfo=UTC)
    return at


def cmd_rebuild(settings: Settings, args: argparse.Namespace) -> int:
    from automation.calendar import WorkingCalendar
    from config.loader import ConfigError, load_config
    from crm_store.reports import rollup
    from ingest.service import store_for

    try:
        config = load_config(settings.config_dir)
    except ConfigError as exc:
        print(f"configuration: {exc}", file=sys.stderr)
        return 2
    cal = WorkingCalendar.from_config(config.calendar)

    async def main() -> int:
        async with store_for(settings) as store:
            t0 = time.monotonic()
            try:
                if args.days:
                    n = await rollup.resum_days(store, cal)
                else:
                    n = await rollup.rebuild(store, cal, since=args.since)
            except ValueError as exc:
                print(f"reports rebuild: {exc}", file=sys.stderr)
                return 2
            st = await rollup.status(store)
            what = "day totals re-summed" if args.days else "rollups rebuilt"
            unit = "days" if args.days else "conversations"
            print(
                f"report {what}: {n} {unit} in {time.monotonic() - t0:.1f} s; "
                f"cursor at {st.cursor}, ready"
            )
            return 0

    return asyncio.run(main())


def register(sub: Any) -> None:
    p = sub.add_parser("reports", help="report rollups")
    rsub = p.add_subparsers(dest="reports_command", metavar="ACTION", required=True)
    q = rsub.add_parser(
        "rebuild",
        help="recompute the report rollups from the collections (an existing store, or "
        "after the rollup definition changed); safe while the service runs",
    )
    how = q.add_mutually_exclusive_group()
    how.add_argument(
        "--since",
        type=_since,
        help="only conversations with an inbound message at or after this date/instant",
    )
    how.add_argument(
        "--days",
        action="store_true",
        help="only sum the day totals again (the upgrade from rollups that differ only in "
        "them: docs/reports.md)",
    )
    q.set_defaults(func=cmd_rebuild)
