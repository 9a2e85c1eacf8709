"""The container's liveness check: GET /healthz on OMNIROUTE_PORT; exit 0 when it answers
200. Standard library only (the Dockerfile's HEALTHCHECK runs it)."""

from __future__ import annotations

import os
import sys
import urllib.request


def main() -> int:
    port = os.environ.get("OMNIROUTE_PORT", "8080")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return 0 if resp.status == 200 else 1
    except OSError as exc:
        print(f"healthz: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
