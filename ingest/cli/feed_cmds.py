"""The event feed's consumers: subscriptions, events schema."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pydantic import ValidationError

from config.settings import Settings
from crm_store.store import Store
from ingest.cli.common import store_cmd


@store_cmd
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


@store_cmd
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


@store_cmd
async def cmd_subs_remove(store: Store, args: argparse.Namespace) -> int:
    from crm_store import subscriptions as subs

    if not await subs.deactivate(store, args.subscription_id):
        print(f"no active subscription {args.subscription_id}", file=sys.stderr)
        return 1
    print(f"removed {args.subscription_id}")
    return 0


@store_cmd
async def cmd_subs_replay(store: Store, args: argparse.Namespace) -> int:
    from crm_store import subscriptions as subs

    parent = await subs.get(store, args.subscription_id)
    if parent is None:
        print(f"no subscription {args.subscription_id}", file=sys.stderr)
        return 1
    replay = await subs.create_replay(store, parent, args.from_seq, args.to_seq)
    print(f"replay {replay['_id']}: events {args.from_seq}..{args.to_seq} → {parent['url']}")
    return 0


@store_cmd
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


@store_cmd
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

    from crm_store.event_catalogue import EVENT_TYPES, markdown, schema

    if args.markdown:
        print(markdown())
    else:
        print(json.dumps({t: schema(t) for t in EVENT_TYPES}, indent=2))
    return 0


def register(sub: Any) -> None:
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
