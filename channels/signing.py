"""The HMAC-SHA256 signature omniroute uses both ways: on the generic API channel's
incoming requests and on the webhooks it delivers to consumers; and the one safe way to
compare a presented secret, token or signature, for every channel.

``signature = "sha256=" + hex(HMAC-SHA256(secret, timestamp + "." + body))``

Header values reach us as text decoded from whatever bytes the client sent (aiohttp keeps
undecodable bytes as lone surrogates), so they may hold non-ASCII characters and even
characters that cannot be encoded. :func:`same` compares such a value with the expected
one without ever raising: anything malformed is simply "not equal" (401/403 upstream),
never a 500.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["as_bytes", "matches", "same", "sign"]


def as_bytes(value: str | bytes | None) -> bytes:
    """UTF-8 bytes of any header or field value: undecodable bytes kept as they came (the
    surrogate escapes aiohttp uses), any other unencodable character as ``?``."""
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value.encode("utf-8", "replace")


def same(expected: str | bytes, given: str | bytes | None) -> bool:
    """Constant-time equality of a secret value and a presented one, whatever the presented
    one holds (non-ASCII, lone surrogates, nothing). An empty expected value never
    matches."""
    want = as_bytes(expected)
    return bool(want) and hmac.compare_digest(want, as_bytes(given))


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(as_bytes(secret), as_bytes(timestamp) + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def matches(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """Constant-time check of a presented signature (any header value: a malformed one
    does not match)."""
    return same(sign(secret, timestamp, body), signature)
