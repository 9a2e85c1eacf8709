"""The operators' web inbox: ``GET /`` is the page, ``GET /static/{name}`` its assets.

Plain static files from ``inbox/web/`` (HTML, CSS, JS modules; no build step). The page
talks to the operator API (``/api/v1``) with the token the operator pastes in; nothing
here reads the store. Only the files listed in :data:`ASSETS` are served (no directory
walking), with a strict Content-Security-Policy: scripts and styles from this origin
only, no inline code, API calls and the WebSocket to this origin. See docs/web-inbox.md.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

WEB_DIR = Path(__file__).resolve().parent / "web"

# name → content type; nothing else under /static is served.
ASSETS = {
    "app.js": "text/javascript",
    "api.js": "text/javascript",
    "dom.js": "text/javascript",
    "i18n.js": "text/javascript",
    "documents.js": "text/javascript",
    "companies.js": "text/javascript",
    "comments.js": "text/javascript",
    "templates.js": "text/javascript",
    "app.css": "text/css",
    "reports.js": "text/javascript",
    "reports.css": "text/css",
    "favicon.svg": "image/svg+xml",
}

CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self' ws: wss:",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    )
)

HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _file(name: str, content_type: str) -> web.Response:
    body = (WEB_DIR / name).read_bytes()
    return web.Response(
        body=body, headers={**HEADERS, "Content-Type": f"{content_type}; charset=utf-8"}
    )


async def page(_: web.Request) -> web.Response:
    """``GET /``: the inbox page."""
    return _file("index.html", "text/html")


async def asset(request: web.Request) -> web.Response:
    """``GET /static/{name}``: one of the page's files."""
    name = request.match_info["name"]
    content_type = ASSETS.get(name)
    if content_type is None:
        raise web.HTTPNotFound()
    return _file(name, content_type)


# Third-party files, each with its licence beside it (docs/reports.md: uPlot).
VENDOR = {"uPlot.iife.min.js": "text/javascript"}


async def vendor_asset(request: web.Request) -> web.Response:
    """``GET /static/vendor/{name}``: a vendored library."""
    name = request.match_info["name"]
    content_type = VENDOR.get(name)
    if content_type is None:
        raise web.HTTPNotFound()
    return _file(f"vendor/{name}", content_type)


def setup(app: web.Application) -> None:
    app.router.add_get("/", page)
    app.router.add_get("/static/{name}", asset)
    app.router.add_get("/static/vendor/{name}", vendor_asset)
