"""Secrets out of raw webhook bodies before they are stored (docs/security.md).

Two passes, both pure:

- every configured secret *value* of the account — its ``secret_env`` secret and the
  value of every ``settings[*_env]`` variable — is replaced wherever it occurs in the
  body (also URL-encoded and JSON-escaped), so a provider that echoes a secret in an
  unexpected place does not put it at rest;
- the channel's ``secret_fields`` (VK ``secret``, MegaFon ``crm_token``, Mango ``sign``)
  are replaced at any depth of a JSON body and in a form body, whatever their value.

A body that is neither JSON nor a form keeps its bytes apart from the first pass.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, quote_plus, urlencode

import orjson

from config.loader import resolve_secret
from config.models import ChannelAccount

REDACTED = "[redacted]"
# Shorter values are not searched for: replacing "1" everywhere would garble the body
# and a secret that short protects nothing anyway.
MIN_SECRET_LEN = 4


def account_secrets(account: ChannelAccount) -> list[str]:
    """The secret values configured for ``account`` (set in the environment), longest
    first (a secret that contains another is replaced whole)."""
    values = {resolve_secret(account)}
    for key, name in account.settings.items():
        if key.lower().endswith("_env") and isinstance(name, str) and name:
            values.add(os.environ.get(name))
    return sorted((v for v in values if v and len(v) >= MIN_SECRET_LEN), key=len, reverse=True)


def _forms(secret: str) -> list[bytes]:
    raw = secret.encode()
    escaped = orjson.dumps(secret)[1:-1]
    return list(dict.fromkeys([raw, quote_plus(secret).encode(), escaped]))


def redact_values(data: bytes, secrets: Iterable[str]) -> bytes:
    for secret in secrets:
        for form in _forms(secret):
            data = data.replace(form, REDACTED.encode())
    return data


def redact_text(text: str, secrets: Iterable[str]) -> str:
    return redact_values(text.encode(), secrets).decode("utf-8", "replace")


def _scrub(value: Any, fields: frozenset[str]) -> tuple[Any, bool]:
    if isinstance(value, dict):
        changed = False
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key in fields and item not in (None, "", REDACTED):
                out[key] = REDACTED
                changed = True
            else:
                out[key], hit = _scrub(item, fields)
                changed = changed or hit
        return out, changed
    if isinstance(value, list):
        items = [_scrub(v, fields) for v in value]
        return [v for v, _ in items], any(hit for _, hit in items)
    return value, False


_NOT_JSON = object()


def _json(body: bytes) -> Any:
    """The body as JSON (integers of any size, unlike orjson), or ``_NOT_JSON``."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return _NOT_JSON


def redact_fields(body: bytes, fields: Iterable[str]) -> bytes:
    """``body`` with the values of ``fields`` replaced, in JSON (any depth) or a form."""
    names = frozenset(fields)
    if not names or not body:
        return body
    value = _json(body)
    if value is not _NOT_JSON:
        scrubbed, changed = _scrub(value, names)
        if not changed:
            return body
        return json.dumps(scrubbed, ensure_ascii=False, separators=(",", ":")).encode()
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        return body
    if not any(k in names for k, _ in pairs):
        return body
    return urlencode([(k, REDACTED if k in names else v) for k, v in pairs]).encode()


def redact_body(body: bytes, secrets: Iterable[str], fields: Iterable[str]) -> bytes:
    return redact_fields(redact_values(body, list(secrets)), fields)


def redact_query(query: Mapping[str, str], secrets: Iterable[str]) -> dict[str, str]:
    values = list(secrets)
    return {k: redact_text(v, values) for k, v in query.items()}
