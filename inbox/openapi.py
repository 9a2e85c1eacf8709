"""The OpenAPI 3.1 document of /api/v1, assembled from the declared operations.

Every operation (inbox/api.py ``route``) contributes its path and query parameters (from
its query model's JSON Schema), its request body, its answer and its errors; the models'
JSON Schemas (pydantic, JSON Schema 2020-12 — what OpenAPI 3.1 speaks) go under
``components/schemas``. Served at ``GET /api/v1/openapi.json``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from inbox.api import OPERATIONS, Call, Operation, Problem, route

REF = "#/components/schemas/{model}"
ERROR_TEXT = {
    400: "the body is not valid JSON",
    401: "no, unknown or revoked token",
    403: "the caller's role does not allow this",
    404: "not found, or not visible to the caller",
    409: "conflicts with the current state",
    413: "the upload is too large",
    422: "the request does not validate (errors name the fields) or is refused",
    503: "the store did not answer; retry later",
}
LINE_TOO_LONG = "the request line or a header is longer than the server reads (text/plain)"
PATH_PARAM = re.compile(r"{(\w+)(?::[^}]*)?}")


def _models() -> list[tuple[type[BaseModel], JsonSchemaMode]]:
    seen: set[tuple[type[BaseModel], str]] = set()
    out: list[tuple[type[BaseModel], JsonSchemaMode]] = []

    def add(model: type[BaseModel] | None, mode: Literal["validation", "serialization"]) -> None:
        if model is not None and (model, mode) not in seen:
            seen.add((model, mode))
            out.append((model, mode))

    add(Problem, "serialization")
    for op in OPERATIONS:
        add(op.body, "validation")
        add(op.response, "serialization")
    return out


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF)
    required = set(schema.get("required", []))
    params = []
    for name, prop in schema.get("properties", {}).items():
        description = prop.pop("description", None)
        param: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": prop,
        }
        if description:
            param["description"] = description
        params.append(param)
    return params


def _operation(op: Operation, refs: Mapping[Any, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "operationId": op.handler.__name__,
        "summary": op.summary,
        "tags": [op.tag],
    }
    if op.description:
        doc["description"] = op.description
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in PATH_PARAM.findall(op.path)
    ]
    params += _query_parameters(op.query)
    if params:
        doc["parameters"] = params
    if op.body is not None:
        doc["requestBody"] = {
            "required": True,
            "content": {op.body_content_type: {"schema": refs[(op.body, "validation")]}},
        }
    responses: dict[str, Any] = {}
    if op.response is not None:
        responses[str(op.status)] = {
            "description": op.summary,
            "content": {"application/json": {"schema": refs[(op.response, "serialization")]}},
        }
    for status, (ctypes, text) in op.raw.items():  # "text/csv, application/json": either
        content: dict[str, Any] = {c.strip(): {"schema": {}} for c in ctypes.split(",") if c}
        responses[str(status)] = {"description": text, **({"content": content} if content else {})}
    errors = set(op.errors) | {503}
    if not op.public:
        errors |= {401, 403}
    if op.body is not None:
        errors |= {400, 422}
    if len(_query_parameters(op.query)) > 0:
        errors.add(422)
    problem_ref = refs[(Problem, "serialization")]
    for status in sorted(errors):
        responses[str(status)] = {
            "description": ERROR_TEXT.get(status, "error"),
            "content": {"application/problem+json": {"schema": problem_ref}},
        }
    # A request line or header past the HTTP server's limit (8190 bytes: a very long id or
    # query) is refused by aiohttp before any handler runs, as a plain-text 400.
    line = responses.setdefault("400", {"description": LINE_TOO_LONG, "content": {}})
    if line["description"] != LINE_TOO_LONG:
        line["description"] += f"; or {LINE_TOO_LONG}"
    line.setdefault("content", {})["text/plain"] = {"schema": {"type": "string"}}
    doc["responses"] = responses
    if not op.public:
        doc["security"] = [{"bearer": []}]
    return doc


@cache
def document() -> dict[str, Any]:
    refs, defs = models_json_schema(_models(), ref_template=REF)
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        path = PATH_PARAM.sub(r"{\1}", op.path)
        paths.setdefault(path, {})[op.method.lower()] = _operation(op, refs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "omniroute operator API",
            "version": "1",
            "description": "Conversations, replies, assignment and CRM views for operators; "
            "see docs/inbox-api.md.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


@route(
    "GET",
    "/api/v1/openapi.json",
    summary="This API's OpenAPI 3.1 document",
    tag="meta",
    public=True,
    raw={200: ("application/json", "the OpenAPI 3.1 document")},
)
async def openapi_json(call: Call) -> web.StreamResponse:
    return web.json_response(document())
