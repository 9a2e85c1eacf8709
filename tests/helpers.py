"""Small helpers shared by the test suite."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_for(
    predicate: Callable[[], Awaitable[object]],
    timeout: float = 10.0,  # noqa: ASYNC109 - a polling helper, by design
    interval: float = 0.05,
    message: str | None = None,
) -> None:
    """Await ``predicate()`` until it returns something truthy; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    attempts = 0
    while True:
        attempts += 1
        if await predicate():
            return
        if time.monotonic() >= deadline:
            name = getattr(predicate, "__qualname__", repr(predicate))
            raise AssertionError(
                message or f"condition {name} not met within {timeout}s ({attempts} checks)"
            )
        await asyncio.sleep(interval)
