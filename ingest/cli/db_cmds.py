"""Store migrations: ``omniroute db migrate`` (crm_store/migrations.py).

The ``db`` command itself belongs to config_cmds (``db indexes``); this area adds its
``migrate`` action to it.
"""

from __future__ import annotations

import argparse
from typing import Any

from crm_store.migrations import migrate_identities
from crm_store.store import Store
from crm_store.tasks import arm_earlier_reminders
from ingest.cli.common import store_cmd


@store_cmd
async def cmd_db_migrate(store: Store, args: argparse.Namespace) -> int:
    report = await migrate_identities(store, dry_run=args.dry_run)
    verb = "would write" if args.dry_run else "wrote"
    print(f"identities: {report.contacts} live contacts read, {verb} {report.keys_written} keys")
    for name in report.dropped:
        done = "would be dropped" if args.dry_run else "dropped"
        print(f"index {name}: {done} (see docs/scaling.md)")
    armed = await arm_earlier_reminders(store, dry_run=args.dry_run)
    print(f"task reminders: {verb} {armed} (remind_due_at: docs/automation.md)")
    if not args.dry_run:
        print(f"indexes: {report.created_indexes} created")
    for c in report.conflicts:
        print(
            f"conflict: {c.key} belongs to contact {c.owner}; contact {c.other} shows it too"
            f" (merge them if they are one person: POST /api/v1/contacts/{c.owner}/merge)"
        )
    if not (report.wrote or armed) and not args.dry_run:
        print("nothing to do: the store is migrated")
    return 0


def _db_actions(sub: Any) -> Any:
    """The ``db`` command's actions (declared by config_cmds), or a new ``db`` command."""
    db = sub.choices.get("db")
    if db is None:
        db = sub.add_parser("db", help="store maintenance")
        return db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    for action in db._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise RuntimeError("the db command has no actions")


def register(sub: Any) -> None:
    q = _db_actions(sub).add_parser(
        "migrate",
        help="bring the store to this version's layout (identities, retired indexes, task "
        "reminders; idempotent, safe while the service runs)",
    )
    q.add_argument("--dry-run", action="store_true", help="report what it would do, write nothing")
    q.set_defaults(func=cmd_db_migrate)
