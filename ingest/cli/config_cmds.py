"""Running and setting up the service: serve, check-config, db, webhooks."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from automation.day_off_checks import day_off_warnings
from automation.people import recipient_warnings
from config.loader import ConfigError, check_config, load_config, missing_secrets
from config.settings import Settings
from crm_store.store import Store
from ingest.cli.common import store_cmd

# The secrets `make run` sets itself (a development value, unless already set): not a
# problem of the configuration (tests/test_cli.py checks the Makefile sets exactly these).
MAKE_RUN_SECRETS = frozenset({"OMNIROUTE_SECRET_API_SITE"})


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from ingest.service import serve

    print(f"web inbox: http://{settings.host}:{settings.port}/", flush=True)
    try:
        asyncio.run(serve(settings))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


def cmd_check_config(settings: Settings, args: argparse.Namespace) -> int:
    config_dir = Path(args.dir) if args.dir else settings.config_dir
    problems = check_config(config_dir)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) in {config_dir}", file=sys.stderr)
        return 1
    cfg = load_config(config_dir)
    for name in missing_secrets(cfg):
        if name in MAKE_RUN_SECRETS:
            print(
                f"note: environment variable {name} is not set here; `make run` sets a "
                "development value for it (set your own outside development)",
                file=sys.stderr,
            )
        else:
            print(f"warning: environment variable {name} is not set", file=sys.stderr)
    for level, text in [*recipient_warnings(cfg), *day_off_warnings(cfg)]:
        print(f"{level}: {text}", file=sys.stderr)
    print(
        f"{config_dir}: OK — {len(cfg.channels.accounts)} channel accounts, "
        f"{len(cfg.pipelines.pipelines)} pipelines, {len(cfg.sources.sources)} sources, "
        f"{len(cfg.users.users)} users"
    )
    return 0


@store_cmd
async def cmd_db_indexes(store: Store, args: argparse.Namespace) -> int:
    created = await store.ensure_indexes()
    for coll, names in sorted(created.items()):
        print(f"{coll}: {', '.join(names) if names else '(_id only)'}")
    return 0


def cmd_webhooks_register(settings: Settings, args: argparse.Namespace) -> int:
    from channels import REGISTRY
    from channels.base import SendError, WebhookRegistrar
    from config.loader import resolve_secret

    cfg = load_config(settings.config_dir)
    accounts = [
        a
        for a in cfg.channels.accounts
        if a.enabled
        and (args.channel is None or a.channel == args.channel)
        and (args.account is None or a.account == args.account)
    ]

    async def main() -> int:
        failed = 0
        for a in accounts:
            channel = REGISTRY.get(a.channel)
            if not isinstance(channel, WebhookRegistrar):
                print(
                    f"{a.channel}/{a.account}: register the URL in the provider's cabinet: "
                    f"{args.base_url.rstrip('/')}/webhooks/{a.channel}/{a.account}"
                )
                continue
            try:
                url = await channel.register_webhook(a, resolve_secret(a), args.base_url)
            except SendError as exc:
                failed += 1
                print(f"{a.channel}/{a.account}: FAILED: {exc.detail}", file=sys.stderr)
            else:
                print(f"{a.channel}/{a.account}: registered {url}")
        return 1 if failed else 0

    return asyncio.run(main())


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="run the HTTP service and the routing workers",
        description="Run the service. Without OMNIROUTE_MONGODB_URI it starts "
        "the embedded store with its data under OMNIROUTE_DATA_DIR (./var).",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "check-config",
        help="validate the YAML configuration",
        description="Validate every configuration file and the references "
        "between them; print each problem as file:line:column: key: message.",
    )
    p.add_argument("dir", nargs="?", help="configuration directory (default: OMNIROUTE_CONFIG_DIR)")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("db", help="store maintenance")
    dbsub = p.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    q = dbsub.add_parser("indexes", help="create missing collections and indexes (idempotent)")
    q.set_defaults(func=cmd_db_indexes)
    p = sub.add_parser("webhooks", help="provider webhook registration")
    whsub = p.add_subparsers(dest="webhooks_command", metavar="ACTION", required=True)
    q = whsub.add_parser(
        "register",
        help="register our webhook URL with each provider that allows it",
        description="Point every configured account's provider at BASE_URL/webhooks/... "
        "(Telegram setWebhook with a secret token, Viber set_webhook, Avito subscribe). "
        "For providers without such an API the URL to enter in their cabinet is printed.",
    )
    q.add_argument("--base-url", required=True, help="public https URL of this service")
    q.add_argument("--channel", help="only this channel")
    q.add_argument("--account", help="only this account")
    q.set_defaults(func=cmd_webhooks_register)
