"""A PBX speaking the generic call webhook (docs/channels/telephony.md), as the Asterisk
dialplan script there does: JSON events signed with HMAC-SHA256 over
``timestamp + "." + body``. The signature is computed here with :mod:`hmac` directly, not
with the project's signing module."""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson


def signature(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


@dataclass
class FakePbx:
    secret: str

    async def post(
        self,
        url: str,
        event: dict[str, Any] | bytes,
        *,
        secret: str | None = None,
        timestamp: int | None = None,
        signed: bool = True,
    ) -> tuple[int, bytes]:
        body = event if isinstance(event, bytes) else orjson.dumps(event)
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        headers = {"Content-Type": "application/json"}
        if signed:
            headers["X-Omniroute-Timestamp"] = stamp
            headers["X-Omniroute-Signature"] = signature(
                self.secret if secret is None else secret, stamp, body
            )
        async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as r:
            return r.status, await r.read()
