"""What every area of the ``omniroute`` command shares."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from config.settings import Settings
from crm_store.store import Store


def store_cmd(
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


def fmt_time(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if hasattr(value, "strftime") else "-"
