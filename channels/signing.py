"""The HMAC-SHA256 signature omniroute uses both ways: on the generic API channel's
incoming requests and on the webhooks it delivers to consumers.

``signature = "sha256=" + hex(HMAC-SHA256(secret, timestamp + "." + body))``
"""

from __future__ import annotations

import hashlib
import hmac


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def matches(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """Constant-time check of a presented signature."""
    return hmac.compare_digest(sign(secret, timestamp, body), signature)
