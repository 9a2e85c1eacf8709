"""Every /api/v1 endpoint module, imported so its ``route`` declarations register, then
added to the app (inbox/api.py). One line per module."""

from __future__ import annotations

from aiohttp import web

from inbox import (  # noqa: F401 - imported for their route declarations
    api,
    call_log_api,
    contacts_api,
    conversations_api,
    declared,
    entities_api,
    export_api,
    live_api,
    messages_api,
    openapi,
    users_api,
    web_page,
)


def setup(app: web.Application) -> None:
    api.setup(app)
    messages_api.setup_public(app)
    live_api.setup(app)
    users_api.setup(app)
    web_page.setup(app)
