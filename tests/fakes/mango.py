"""Mango Office's side of the VPBX call notifications (CHANNEL_PROTOCOLS.md §6b).

:meth:`FakeMango.post` sends one notification as Mango does: form fields
``vpbx_api_key``, ``sign`` and ``json`` (the event as a JSON string) to
``<base URL>/events/call`` or ``/events/summary``, where
``sign = sha256_hex(vpbx_api_key + json + salt)`` over the exact ``json`` string sent.
The signature is computed here independently of channels/mango.py.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson


@dataclass
class FakeMango:
    api_key: str
    salt: str

    def sign(self, json_text: str, *, api_key: str | None = None, salt: str | None = None) -> str:
        key = self.api_key if api_key is None else api_key
        text = key + json_text + (self.salt if salt is None else salt)
        return hashlib.sha256(text.encode()).hexdigest()

    async def post(
        self,
        base_url: str,
        kind: str,
        event: dict[str, Any] | str,
        *,
        sign: str | None = None,
        api_key: str | None = None,
    ) -> tuple[int, bytes]:
        """POST to ``{base_url}/events/{kind}``; ``event`` as a dict or the exact JSON."""
        json_text = event if isinstance(event, str) else orjson.dumps(event).decode()
        form = {
            "vpbx_api_key": self.api_key if api_key is None else api_key,
            "sign": self.sign(json_text) if sign is None else sign,
            "json": json_text,
        }
        url = f"{base_url}/events/{kind}"
        async with aiohttp.ClientSession() as http, http.post(url, data=form) as r:
            return r.status, await r.read()
