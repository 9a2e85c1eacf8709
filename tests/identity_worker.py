"""A separate process creating one identity's contact concurrently (tests/test_identities.py).

``python -m tests.identity_worker URI DB NAME N KEY...``: connects, prints ``ready``, waits
for a line on stdin (the start signal, sent to every worker at once), then runs ``N``
concurrent :func:`routing_store.create_contact` calls for the keys, each with its own
contact id, and prints ``[[contact id, created], …]`` as JSON.
"""

from __future__ import annotations

import asyncio
import json
import sys

from crm_store import routing_store as rs
from crm_store.store import Store


async def main(uri: str, db: str, name: str, n: int, keys: list[str]) -> None:
    store = Store.open(uri, db, timeout_ms=10_000)
    try:
        await store.ping()  # connected before the start signal
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        results = await asyncio.gather(
            *(
                rs.create_contact(store, {"_id": f"{name}-{i}", "identities": keys, "name": name})
                for i in range(n)
            )
        )
        print(json.dumps([[c.id, created] for c, created in results]))
    finally:
        await store.close()


if __name__ == "__main__":
    uri, db, name, n, *keys = sys.argv[1:]
    asyncio.run(main(uri, db, name, int(n), keys))
