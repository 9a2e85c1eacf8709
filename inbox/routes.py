"""Every /api/v1 endpoint module, imported so its ``route`` declarations register, then
added to the app (inbox/api.py). One line per module.

Every answer of the app carries ``X-Content-Type-Options: nosniff`` (a JSON answer is never
sniffed into HTML by a browser), set once here for all of them."""

from __future__ import annotations

from aiohttp import web

from inbox import (  # noqa: F401 - imported for their route declarations
    api,
    call_log_api,
    comments_api,
    companies_api,
    contacts_api,
    conversations_api,
    declared,
    documents_api,
    entities_api,
    export_api,
    file_links,
    live_api,
    messages_api,
    openapi,
    reports_api,
    survey_page,
    templates_api,
    users_api,
    watchers_api,
    web_page,
)


async def _nosniff(_: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")


def setup(app: web.Application) -> None:
    app.on_response_prepare.append(_nosniff)
    api.setup(app)
    file_links.setup(app)
    live_api.setup(app)
    users_api.setup(app)
    web_page.setup(app)
    survey_page.setup(app)
