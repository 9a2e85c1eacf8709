"""The ``omniroute`` command."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from config.loader import ConfigError, check_config, load_config, missing_secrets
from config.settings import Settings, get_settings
from crm_store import queries
from crm_store.store import Document, Store
from ingest.logging import configure_logging
from routing.identity import email_key, normalize_email, normalize_phone, phone_key

DESCRIPTION = """\
omniroute takes in customer messages from every channel, routes each one to a new lead,
a repeat lead or the customer's active deal, and stores everything in MongoDB.

Settings come from OMNIROUTE_* environment variables (see docs/configuration.md);
routing setup from the YAML files in OMNIROUTE_CONFIG_DIR."""


def _store_cmd(
    fn: Callable[[Store, argparse.Namespace], Awaitable[int]],
) -> Callable[[Settings, argparse.Namespace], int]:
    """Run ``fn`` against the configured store (starting the embedded one if needed)."""

    def run(settings: Settings, args: argparse.Namespace) -> int:
        from ingest.service import store_for

        async def main() -> int:
            async with store_for(settings) as store:
                return await fn(store, args)

        return asyncio.run(main())

    return run


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
        print(f"warning: environment variable {name} is not set", file=sys.stderr)
    print(
        f"{config_dir}: OK — {len(cfg.channels.accounts)} channel accounts, "
        f"{len(cfg.pipelines.pipelines)} pipelines, {len(cfg.sources.sources)} sources, "
        f"{len(cfg.users.users)} users"
    )
    return 0


@_store_cmd
async def cmd_db_indexes(store: Store, args: argparse.Namespace) -> int:
    created = await store.ensure_indexes()
    for coll, names in sorted(created.items()):
        print(f"{coll}: {', '.join(names) if names else '(_id only)'}")
    return 0


def _fmt_time(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if hasattr(value, "strftime") else "-"


def _print_decision(msg: Document) -> None:
    d = msg.get("decision", {})
    target = msg.get("target", {})
    print(
        f"message    {msg['_id']}  {msg['channel']}/{msg['account']}  "
        f"provider id {msg['provider_id']}"
    )
    print(
        f"received   {_fmt_time(msg.get('received_at'))}   routed {_fmt_time(msg.get('routed_at'))}"
    )
    print(f"sender     {', '.join(msg.get('identities', [])) or '(no identity)'}")
    print(f"rule       {d.get('rule')}  ({d.get('action')})")
    print(f"reason     {d.get('reason')}")
    print(f"target     {target.get('kind')} {target.get('id') or ''}")
    print(f"contact    {msg.get('contact_id') or '-'}   conversation {msg.get('conversation_id')}")


@_store_cmd
async def cmd_explain(store: Store, args: argparse.Namespace) -> int:
    msg, rec = await queries.find_message(store, args.message_id)
    if msg is None and rec is None:
        print(f"no message or intake record {args.message_id}", file=sys.stderr)
        return 1
    if msg is not None:
        _print_decision(msg)
    if rec is not None:
        print(
            f"intake     status {rec.get('status')}, attempts {rec.get('attempts', 0)}"
            + (f", error: {str(rec['error']).splitlines()[-1]}" if rec.get("error") else "")
        )
    return 0


@_store_cmd
async def cmd_inspect(store: Store, args: argparse.Namespace) -> int:
    identity = None
    if args.phone:
        phone = normalize_phone(args.phone)
        if phone is None:
            print(f"not a phone number: {args.phone}", file=sys.stderr)
            return 2
        identity = phone_key(phone)
    elif args.email:
        email = normalize_email(args.email)
        if email is None:
            print(f"not an e-mail address: {args.email}", file=sys.stderr)
            return 2
        identity = email_key(email)
    contact = await queries.find_contact(store, identity=identity, contact_id=args.contact)
    if contact is None:
        print("no such contact", file=sys.stderr)
        return 1
    r = await queries.contact_report(store, contact, messages=args.messages)
    c = r.contact
    print(f"contact {c['_id']}  {c.get('name') or ''}")
    print(f"  identities   {', '.join(c.get('identities', []))}")
    print(f"  responsible  {c.get('responsible_id') or '-'}   origin {c.get('origin')}")
    print(f"leads ({len(r.leads)})")
    for lead in r.leads:
        state = "open" if lead.get("open") else "closed"
        repeat = " repeat" if lead.get("is_repeat") else ""
        print(
            f"  {lead['_id']}  {lead['pipeline_id']}/{lead['stage_id']}  {state}{repeat}  "
            f"responsible {lead.get('responsible_id') or '-'}  "
            f"created {_fmt_time(lead.get('created_at'))}"
        )
    print(f"deals ({len(r.deals)})")
    for deal in r.deals:
        state = "open" if deal.get("open") else "closed"
        print(
            f"  {deal['_id']}  {deal['pipeline_id']}/{deal['stage_id']}  {state}  "
            f"last activity {_fmt_time(deal.get('last_activity_at'))}"
        )
    print(f"conversations ({len(r.conversations)})")
    for conv in r.conversations:
        t = conv.get("target", {})
        print(
            f"  {conv['_id']}  {conv['channel']}/{conv['account']}  {conv.get('thread')}  "
            f"→ {t.get('kind')} {t.get('id') or ''}  messages {conv.get('message_count', 0)}"
        )
    print(f"decisions (last {len(r.messages)})")
    for m in r.messages:
        d = m.get("decision", {})
        print(
            f"  {_fmt_time(m.get('received_at'))}  {m['_id']}  {m['channel']}  "
            f"{d.get('rule')}: {d.get('reason')}"
        )
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


@_store_cmd
async def cmd_send(store: Store, args: argparse.Namespace) -> int:
    from inbox.replies import ReplyError, reply

    cfg = load_config(get_settings().config_dir)
    try:
        doc = await reply(store, cfg, args.conversation_id, args.text)
    except ReplyError as exc:
        print(f"{exc.code}: {exc.detail}", file=sys.stderr)
        return 1
    print(
        f"queued {doc['_id']} on {doc['channel']}/{doc['account']}; the running service "
        "sends it (omniroute explain shows its state)"
    )
    return 0


@_store_cmd
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


@_store_cmd
async def cmd_tokens_revoke(store: Store, args: argparse.Namespace) -> int:
    from crm_store import tokens

    if not await tokens.revoke(store, args.token_id):
        print(f"no active token {args.token_id}", file=sys.stderr)
        return 1
    print(f"revoked {args.token_id}")
    return 0


@_store_cmd
async def cmd_tokens_list(store: Store, args: argparse.Namespace) -> int:
    from crm_store import tokens

    for t in await tokens.list_tokens(store, args.user):
        state = f"revoked {_fmt_time(t['revoked_at'])}" if t.get("revoked_at") else "active"
        print(
            f"{t['token_id']}  {t['user_id']}  {t.get('name') or '-'}  "
            f"created {_fmt_time(t['created_at'])}  {state}"
        )
    return 0


@_store_cmd
async def cmd_subs_add(store: Store, args: argparse.Namespace) -> int:
    from crm_store import subscriptions as subs
    from inbox.events_api import SubscriptionIn

    try:
        data = SubscriptionIn(
            url=args.url,
            types=args.types or [],
            secret=args.secret,
            from_seq=args.from_seq,
            max_age_s=args.max_age_s,
        )
    except ValidationError as exc:
        for e in exc.errors(include_url=False, include_input=False):
            print(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}", file=sys.stderr)
        return 2
    sub = await subs.create(
        store,
        data.url,
        data.types,
        secret=data.secret,
        from_seq=data.from_seq,
        max_age_s=data.max_age_s,
    )
    print(f"subscription {sub['_id']} → {sub['url']}  types: {', '.join(sub['types']) or 'all'}")
    print(f"signing secret (shown once): {sub['secret']}")
    return 0


@_store_cmd
async def cmd_subs_list(store: Store, args: argparse.Namespace) -> int:
    from crm_store import subscriptions as subs

    for sub in await subs.list_all(store, include_replays=args.all):
        head = sub.get("head") or {}
        state = "active" if sub.get("active") else "inactive"
        failing = f"  failing at seq {head['seq']} ({head['attempts']} attempts)" if head else ""
        print(
            f"{sub['_id']}  {state}  cursor {sub['cursor']}  {sub['url']}  "
            f"types: {', '.join(sub['types']) or 'all'}{failing}"
        )
    return 0


@_store_cmd
async def cmd_subs_remove(store: Store, args: argparse.Namespace) -> int:
    from crm_store import subscriptions as subs

    if not await subs.deactivate(store, args.subscription_id):
        print(f"no active subscription {args.subscription_id}", file=sys.stderr)
        return 1
    print(f"removed {args.subscription_id}")
    return 0


@_store_cmd
async def cmd_subs_replay(store: Store, args: argparse.Namespace) -> int:
    from crm_store import subscriptions as subs

    parent = await subs.get(store, args.subscription_id)
    if parent is None:
        print(f"no subscription {args.subscription_id}", file=sys.stderr)
        return 1
    replay = await subs.create_replay(store, parent, args.from_seq, args.to_seq)
    print(f"replay {replay['_id']}: events {args.from_seq}..{args.to_seq} → {parent['url']}")
    return 0


@_store_cmd
async def cmd_subs_redeliver(store: Store, args: argparse.Namespace) -> int:
    from crm_store import subscriptions as subs

    delivery = await subs.get_delivery(store, args.delivery_id)
    if delivery is None:
        print(f"no delivery {args.delivery_id}", file=sys.stderr)
        return 1
    parent = await subs.get(store, delivery.get("replay_of") or delivery["subscription_id"])
    if parent is None:
        print(f"its subscription is gone: {delivery['subscription_id']}", file=sys.stderr)
        return 1
    seq = int(delivery["seq"])
    replay = await subs.create_replay(store, parent, seq, seq)
    print(f"replay {replay['_id']}: event {delivery['event_id']} (seq {seq}) → {parent['url']}")
    return 0


@_store_cmd
async def cmd_subs_deliveries(store: Store, args: argparse.Namespace) -> int:
    from crm_store import subscriptions as subs

    for d in await subs.deliveries(store, args.subscription_id, status=args.status):
        print(
            f"{d['_id']}  seq {d['seq']}  {d['type']}  {d['status']}  "
            f"attempts {d['attempts']}  last {d.get('last_status') or d.get('last_error')}"
        )
    return 0


def cmd_events_schema(settings: Settings, args: argparse.Namespace) -> int:
    import json

    from inbox.event_catalogue import EVENT_TYPES, markdown, schema

    if args.markdown:
        print(markdown())
    else:
        print(json.dumps({t: schema(t) for t in EVENT_TYPES}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omniroute",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

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

    p = sub.add_parser(
        "explain",
        help="why a message was routed where it was",
        description="Print the routing decision of one message: rule, reason, "
        "target, contact, conversation, and its intake status.",
    )
    p.add_argument("message_id", help="message id (as returned by the webhook in 'accepted')")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("inspect", help="a contact's leads, deals, conversations and decisions")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--phone", help="any spelling of the phone number")
    who.add_argument("--email", help="e-mail address (case does not matter)")
    who.add_argument("--contact", help="contact id")
    p.add_argument("--messages", type=int, default=20, help="how many recent decisions to show")
    p.set_defaults(func=cmd_inspect)

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

    p = sub.add_parser("subscriptions", help="webhook subscriptions of event consumers")
    ssub = p.add_subparsers(dest="subs_command", metavar="ACTION", required=True)
    q = ssub.add_parser("add", help="push events to a URL (signed)")
    q.add_argument("url")
    q.add_argument("--types", nargs="*", help="event types (default: all)")
    q.add_argument("--secret", help="signing secret (default: generated)")
    q.add_argument("--from-seq", type=int, help="start at this sequence (default: from now)")
    q.add_argument(
        "--max-age-s",
        type=float,
        default=24 * 3600.0,
        help="retry a failing event this long before dead-lettering it (24 h)",
    )
    q.set_defaults(func=cmd_subs_add)
    q = ssub.add_parser("list", help="subscriptions and their cursors")
    q.add_argument("--all", action="store_true", help="also replays")
    q.set_defaults(func=cmd_subs_list)
    q = ssub.add_parser("remove", help="stop a subscription")
    q.add_argument("subscription_id")
    q.set_defaults(func=cmd_subs_remove)
    q = ssub.add_parser("replay", help="deliver a range of events again")
    q.add_argument("subscription_id")
    q.add_argument("from_seq", type=int)
    q.add_argument("to_seq", type=int)
    q.set_defaults(func=cmd_subs_replay)
    q = ssub.add_parser("redeliver", help="deliver one (dead-lettered) delivery again")
    q.add_argument("delivery_id")
    q.set_defaults(func=cmd_subs_redeliver)
    q = ssub.add_parser("deliveries", help="the delivery log (--status dead: dead letters)")
    q.add_argument("subscription_id")
    q.add_argument("--status", choices=["delivered", "failing", "dead"])
    q.set_defaults(func=cmd_subs_deliveries)

    p = sub.add_parser("events", help="the event catalogue")
    esub = p.add_subparsers(dest="events_command", metavar="ACTION", required=True)
    q = esub.add_parser("schema", help="JSON Schema of every event type")
    q.add_argument("--markdown", action="store_true", help="as docs/events.md")
    q.set_defaults(func=cmd_events_schema)

    p = sub.add_parser("send", help="queue a reply in a conversation (the service sends it)")
    p.add_argument("conversation_id")
    p.add_argument("text")
    p.set_defaults(func=cmd_send)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)
    func: Callable[[Settings, argparse.Namespace], int] = args.func
    return func(settings, args)


if __name__ == "__main__":
    sys.exit(main())
