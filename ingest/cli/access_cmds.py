"""Operators' API tokens: tokens issue / revoke / list."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from config.loader import load_config
from config.settings import get_settings
from crm_store.store import Store
from ingest.cli.common import fmt_time, store_cmd


@store_cmd
async def cmd_tokens_issue(store: Store, args: argparse.Namespace) -> int:
    from crm_store import tokens

    cfg = load_config(get_settings().config_dir)
    known = cfg.user(args.user) or await store["users"].find_one({"_id": args.user})
    if known is None:  # neither in users.yaml nor created through the API
        print(f"no user {args.user!r} in users.yaml or the store", file=sys.stderr)
        return 1
    token, doc = await tokens.issue(store, args.user, args.name or "")
    print(f"token id {doc['token_id']} for {args.user} (shown once, store it now):")
    print(token)
    return 0


@store_cmd
async def cmd_tokens_revoke(store: Store, args: argparse.Namespace) -> int:
    from crm_store import tokens

    if not await tokens.revoke(store, args.token_id):
        print(f"no active token {args.token_id}", file=sys.stderr)
        return 1
    print(f"revoked {args.token_id}")
    return 0


@store_cmd
async def cmd_tokens_list(store: Store, args: argparse.Namespace) -> int:
    from crm_store import tokens

    for t in await tokens.list_tokens(store, args.user):
        state = f"revoked {fmt_time(t['revoked_at'])}" if t.get("revoked_at") else "active"
        print(
            f"{t['token_id']}  {t['user_id']}  {t.get('name') or '-'}  "
            f"created {fmt_time(t['created_at'])}  {state}"
        )
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("tokens", help="API tokens (Bearer) of users")
    tsub = p.add_subparsers(dest="tokens_command", metavar="ACTION", required=True)
    q = tsub.add_parser(
        "issue", help="issue a token for a user (users.yaml or created through the API)"
    )
    q.add_argument("--user", required=True)
    q.add_argument("--name", help="what the token is for")
    q.set_defaults(func=cmd_tokens_issue)
    q = tsub.add_parser("revoke", help="revoke a token by its id")
    q.add_argument("token_id")
    q.set_defaults(func=cmd_tokens_revoke)
    q = tsub.add_parser("list", help="list tokens (never the tokens themselves)")
    q.add_argument("--user")
    q.set_defaults(func=cmd_tokens_list)
