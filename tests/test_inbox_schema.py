"""schemathesis against /api/v1/openapi.json of a running ``omniroute serve``: every
operation fuzzed with a bounded number of examples and a fixed seed (deterministic);
no 5xx anywhere, every answer conforms to the documented schema, status and content
type. The service runs as its own process, so the fuzzer talks to it exactly as a
client would; it is seeded with a routed conversation so the id-taking endpoints see a
real one (the coverage phase reuses the documented examples)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import aiohttp
import orjson

from crm_store import tokens
from crm_store.store import Store
from tests.helpers import wait_for
from tests.service import ACCOUNT_SECRET, api_body, proc, signed_headers

ST = str(Path(sys.executable).with_name("st"))
MAX_EXAMPLES = int(os.environ.get("OMNIROUTE_FUZZ_EXAMPLES", "8"))
SEED = 20261204
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "response_headers_conformance",
    ]
)


async def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    mongo_uri: str, db_name: str, tmp_path: Path
) -> None:
    service = proc(mongo_uri, db_name, tmp_path, OMNIROUTE_AUTOMATION_ENABLED="false")
    await service.start()
    store = Store.open(mongo_uri, db_name)
    try:
        token, _ = await tokens.issue(store, "sergey.volkov")
        body = orjson.dumps(api_body("schema-1", phone="+79005550101", name="Fuzz"))
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{service.base}/webhooks/api/site",
                data=body,
                headers=signed_headers(ACCOUNT_SECRET["site"], body),
            ) as resp,
        ):
            assert resp.status == 200

        async def routed() -> bool:
            return await store.conversations.count_documents({}) == 1

        await wait_for(routed, timeout=20, message="the seed message was not routed")
        st = await asyncio.create_subprocess_exec(
            ST,
            "run",
            f"{service.base}/api/v1/openapi.json",
            "--header",
            f"Authorization: Bearer {token}",
            "--checks",
            CHECKS,
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            str(SEED),
            "--generation-deterministic",
            "--phases",
            "examples,coverage,fuzzing",
            "--exclude-path",
            "/api/v1/ws",
            # Long-polls up to `wait` (30 s) per example; its parameters are tested in
            # tests/test_events_feed.py.
            "--exclude-path",
            "/api/v1/events",
            "--request-timeout",
            "20",
            "--workers",
            "1",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=tmp_path,  # its .schemathesis/ cache stays out of the checkout
        )
        out, _ = await st.communicate()
        text = out.decode(errors="replace")
        (tmp_path / "schemathesis.txt").write_text(text)
        assert st.returncode == 0, text[-6000:]
        assert "No issues found" in text or "passed" in text, text[-3000:]
    finally:
        await store.close()
        await service.stop()
