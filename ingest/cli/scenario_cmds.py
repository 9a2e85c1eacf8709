"""Dry-running the robots: ``omniroute scenario run FILE [--config DIR]``
(docs/scenarios.md)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from config.loader import ConfigError, check_config, load_config
from config.settings import Settings


def cmd_scenario_run(settings: Settings, args: argparse.Namespace) -> int:
    from automation.scenario import runner

    failed = 0
    for name in args.files:
        path = Path(name)
        config_dir = runner.config_dir_for(path, Path(args.config) if args.config else None)
        problems = check_config(config_dir)
        if problems:
            for p in problems:
                print(p, file=sys.stderr)
            return 2
        try:
            result = asyncio.run(runner.run(path, load_config(config_dir)))
        except (runner.ScenarioError, ConfigError) as exc:
            print(exc, file=sys.stderr)
            return 2
        failed += 0 if result.ok else 1
    return 1 if failed else 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "scenario",
        help="play a scripted timeline against a throw-away store (dry-run the robots)",
    )
    ss = p.add_subparsers(dest="scenario_command", metavar="ACTION", required=True)
    run = ss.add_parser(
        "run",
        help="play scenario files on a virtual clock; print the timeline and check the "
        "expectations (exit 1 if any fails)",
    )
    run.add_argument("files", nargs="+", metavar="FILE")
    run.add_argument(
        "--config",
        help="configuration directory (default: the scenario's own directory if it holds "
        "one, else OMNIROUTE_CONFIG_DIR's default)",
    )
    run.set_defaults(func=cmd_scenario_run)
