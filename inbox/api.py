"""The operator API's plumbing: one declaration per endpoint feeds both the aiohttp route
and the OpenAPI document (inbox/openapi.py).

An endpoint is an ``async def fn(call: Call) -> BaseModel | web.StreamResponse`` declared
with :func:`route`, naming the pydantic models of its query string, JSON body and answer.
The wrapper here does what every endpoint needs, in one place:

- authenticates the Bearer token (inbox/auth.py) unless ``public=True``;
- validates the query and the body against their models (unknown query parameters and
  body fields are refused): a refusal is 422 ``invalid_request`` whose ``errors`` name
  each field (``{"in": "query", "field": "limit", "message": …}``);
- serialises the answer through its model, so what is sent is what the schema says;
- turns every refusal into problem+json with a stable ``code``: :class:`ApiError`,
  422 validation, 400 ``invalid_json``, 503 ``store_unavailable`` (the store did not
  answer: retry), 500 ``internal_error`` (logged, never with request data).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pymongo.errors import PyMongoError

from inbox.auth import ApiError, Principal, authenticate
from ingest.context import SERVICE, Service, json_response, problem

log = structlog.get_logger("omniroute.api")

M = TypeVar("M", bound=BaseModel)
Answer = BaseModel | web.StreamResponse


class Problem(BaseModel):
    """An error answer (RFC 9457 problem+json)."""

    type: str = Field(description="urn:omniroute:error:<code>")
    title: str
    status: int
    code: str = Field(description="stable machine-readable error code")
    detail: str
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="validation errors: one per field ({in, field, message})"
    )


class NoQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass(slots=True)
class Call:
    """One authenticated request, its parsed input and the service."""

    request: web.Request
    svc: Service
    who: Principal | None
    query: BaseModel
    body: BaseModel | None

    @property
    def principal(self) -> Principal:
        assert self.who is not None, "a public endpoint has no principal"
        return self.who

    def q(self, model: type[M]) -> M:
        assert isinstance(self.query, model)
        return self.query

    def b(self, model: type[M]) -> M:
        assert isinstance(self.body, model)
        return self.body

    def path(self, name: str) -> str:
        return self.request.match_info[name]


Handler = Callable[[Call], Awaitable[Answer]]


@dataclass(frozen=True, slots=True)
class Operation:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    description: str = ""
    query: type[BaseModel] = NoQuery
    body: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    # Other answers than the model: {status: (content type, description)}.
    raw: dict[int, tuple[str, str]] = field(default_factory=dict)
    errors: tuple[int, ...] = ()
    public: bool = False
    body_content_type: str = "application/json"


OPERATIONS: list[Operation] = []


def route(
    method: str,
    path: str,
    *,
    summary: str,
    tag: str,
    description: str = "",
    query: type[BaseModel] = NoQuery,
    body: type[BaseModel] | None = None,
    response: type[BaseModel] | None = None,
    status: int = 200,
    raw: dict[int, tuple[str, str]] | None = None,
    errors: tuple[int, ...] = (),
    public: bool = False,
    body_content_type: str = "application/json",
) -> Callable[[Handler], Handler]:
    """Declare an endpoint (see the module doc)."""

    def deco(fn: Handler) -> Handler:
        OPERATIONS.append(
            Operation(
                method.upper(),
                path,
                fn,
                summary,
                tag,
                description or (fn.__doc__ or "").strip(),
                query,
                body,
                response,
                status,
                raw or {},
                errors,
                public,
                body_content_type,
            )
        )
        return fn

    return deco


def field_errors(where: str, exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {
            "in": where,
            "field": ".".join(str(p) for p in e["loc"]) or where,
            "message": e["msg"],
        }
        for e in exc.errors(include_url=False, include_input=False)
    ]


def _invalid(where: str, exc: ValidationError) -> web.Response:
    errors = field_errors(where, exc)
    fields = ", ".join(dict.fromkeys(str(e["field"]) for e in errors))
    return problem(
        422, "invalid_request", f"the request {where} does not validate: {fields}", errors=errors
    )


def _query_values(request: web.Request) -> dict[str, str]:
    values: dict[str, str] = {}
    for key in request.query:
        got = request.query.getall(key)
        values[key] = got[-1]
    return values


async def _read_json(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        return {}
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(400, "invalid_json", "the body is not valid JSON") from None


def wrap(op: Operation) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        svc = request.app[SERVICE]
        try:
            principal = None if op.public else await authenticate(request, svc.store, svc.config)
            try:
                query = op.query.model_validate(_query_values(request))
            except ValidationError as exc:
                return _invalid("query", exc)
            body: BaseModel | None = None
            if op.body is not None and op.body_content_type == "application/json":
                data = await _read_json(request)
                try:
                    body = op.body.model_validate(data)
                except ValidationError as exc:
                    return _invalid("body", exc)
            call = Call(request, svc, principal, query, body)
            answer = await op.handler(call)
        except ApiError as exc:
            return problem(exc.status, exc.code, exc.detail, **exc.extra)
        except PyMongoError as exc:
            svc.metrics.store_errors.labels("api").inc()
            log.warning("api.store_unavailable", path=op.path, error=type(exc).__name__)
            resp = problem(503, "store_unavailable", "the store did not answer; retry later")
            resp.headers["Retry-After"] = "2"
            return resp
        except (web.HTTPException, ConnectionResetError):
            raise
        except Exception:
            log.exception("api.internal_error", path=op.path, method=op.method)
            return problem(500, "internal_error", "the server failed; the error is logged")
        if isinstance(answer, web.StreamResponse):
            return answer
        return json_response(answer.model_dump(mode="json"), status=op.status)

    return handler


def setup(app: web.Application) -> None:
    """Add every declared operation to the app (once each)."""
    for op in OPERATIONS:
        app.router.add_route(op.method, op.path, wrap(op))
