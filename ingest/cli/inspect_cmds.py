"""Looking at what was routed, and acting on a conversation: explain, inspect, send."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from channels.identity import email_key, normalize_email, normalize_phone, phone_key
from config.loader import load_config
from config.settings import get_settings
from crm_store import queries
from crm_store.store import Document, Store
from ingest.cli.common import fmt_time, store_cmd


def _target(msg: Document) -> str:
    target = msg.get("target") or {}
    return f"{target.get('kind') or '-'} {target.get('id') or ''}".rstrip()


def _print_note(msg: Document) -> None:
    print(f"note       {msg['_id']}  {msg.get('channel')}/{msg.get('account')}")
    print(f"written    {fmt_time(msg.get('received_at'))}   by {msg.get('author_id') or '-'}")
    print("routing    none: an internal note of an operator, never routed and never sent")
    print(f"target     {_target(msg)}")
    print(f"contact    {msg.get('contact_id') or '-'}   conversation {msg.get('conversation_id')}")


def _print_reply(msg: Document) -> None:
    author = msg.get("author_id") or "-"
    kind = "automatic" if msg.get("automatic") else f"by {author}"
    print(f"reply      {msg['_id']}  {msg.get('channel')}/{msg.get('account')}  {kind}")
    print(f"queued     {fmt_time(msg.get('received_at'))}   attempts {msg.get('attempts', 0)}")
    history = msg.get("state_history") or []
    steps = ", ".join(f"{h.get('state')} {fmt_time(h.get('at'))}" for h in history)
    print(f"state      {msg.get('state') or '-'}" + (f"  ({steps})" if steps else ""))
    if msg.get("provider_id"):
        print(f"provider   id {msg['provider_id']}")
    if msg.get("error"):
        print(f"error      {str(msg['error']).splitlines()[-1]}")
    print("routing    none: a reply goes out through its conversation's channel")
    print(f"target     {_target(msg)}")
    print(f"contact    {msg.get('contact_id') or '-'}   conversation {msg.get('conversation_id')}")


def _print_decision(msg: Document) -> None:
    d = msg.get("decision") or {}
    target = msg.get("target") or {}
    print(
        f"message    {msg['_id']}  {msg.get('channel')}/{msg.get('account')}  "
        f"provider id {msg.get('provider_id') or '-'}"
    )
    print(
        f"received   {fmt_time(msg.get('received_at'))}   routed {fmt_time(msg.get('routed_at'))}"
    )
    print(f"sender     {', '.join(msg.get('identities', [])) or '(no identity)'}")
    print(f"rule       {d.get('rule')}  ({d.get('action')})")
    print(f"reason     {d.get('reason')}")
    print(f"target     {target.get('kind')} {target.get('id') or ''}")
    print(f"contact    {msg.get('contact_id') or '-'}   conversation {msg.get('conversation_id')}")


@store_cmd
async def cmd_explain(store: Store, args: argparse.Namespace) -> int:
    msg, rec = await queries.find_message(store, args.message_id)
    if msg is None and rec is None:
        print(f"no message or intake record {args.message_id}", file=sys.stderr)
        return 1
    if msg is not None:
        show = {"note": _print_note, "out": _print_reply}.get(msg.get("direction") or "in")
        (show or _print_decision)(msg)
    if rec is not None:
        print(
            f"intake     status {rec.get('status')}, attempts {rec.get('attempts', 0)}"
            + (f", error: {str(rec['error']).splitlines()[-1]}" if rec.get("error") else "")
        )
    return 0


@store_cmd
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
            f"created {fmt_time(lead.get('created_at'))}"
        )
    print(f"deals ({len(r.deals)})")
    for deal in r.deals:
        state = "open" if deal.get("open") else "closed"
        print(
            f"  {deal['_id']}  {deal['pipeline_id']}/{deal['stage_id']}  {state}  "
            f"responsible {deal.get('responsible_id') or '-'}  "
            f"last activity {fmt_time(deal.get('last_activity_at'))}"
        )
    print(f"conversations ({len(r.conversations)})")
    for conv in r.conversations:
        t = conv.get("target", {})
        print(
            f"  {conv['_id']}  {conv['channel']}/{conv['account']}  {conv.get('thread')}  "
            f"→ {t.get('kind')} {t.get('id') or ''}  messages {conv.get('message_count', 0)}"
        )
    print(f"decisions (last {len(r.messages)} inbound messages)")
    for m in r.messages:
        d = m.get("decision", {})
        print(
            f"  {fmt_time(m.get('received_at'))}  {m['_id']}  {m['channel']}  "
            f"{d.get('rule')}: {d.get('reason')}"
        )
    return 0


@store_cmd
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


def register(sub: Any) -> None:
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
    p = sub.add_parser("send", help="queue a reply in a conversation (the service sends it)")
    p.add_argument("conversation_id")
    p.add_argument("text")
    p.set_defaults(func=cmd_send)
