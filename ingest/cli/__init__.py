"""The ``omniroute`` command: one module per area, each adding its subcommands through
``register(sub)``."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from config.settings import Settings, get_settings
from ingest.cli import (
    access_cmds,
    config_cmds,
    db_cmds,
    feed_cmds,
    inspect_cmds,
    intake_cmds,
    reports_cmds,
    scenario_cmds,
)
from ingest.cli.feed_cmds import cmd_events_schema
from ingest.logging import configure_logging

DESCRIPTION = """\
omniroute takes in customer messages from every channel, routes each one to a new lead,
a repeat lead or the customer's active deal, and stores everything in MongoDB.

Settings come from OMNIROUTE_* environment variables (see docs/configuration.md);
routing setup from the YAML files in OMNIROUTE_CONFIG_DIR."""

AREAS = (
    config_cmds,
    db_cmds,
    inspect_cmds,
    access_cmds,
    feed_cmds,
    intake_cmds,
    scenario_cmds,
    reports_cmds,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omniroute",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for area in AREAS:
        area.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)
    func: Callable[[Settings, argparse.Namespace], int] = args.func
    return func(settings, args)


__all__ = ["build_parser", "cmd_events_schema", "main"]
