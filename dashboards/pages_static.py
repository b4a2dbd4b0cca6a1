"""The console's scripts and style sheets, vendored in the package (``dashboards/static``).

Court intranets are closed: every asset a page uses is served from here, nothing from outside.
Only plain file names with a known extension are served — no folders, no listing, no ``..`` — so a
request can never reach a file outside ``static/``.

| route                  | roles  |
|------------------------|--------|
| ``GET /static/{name}`` | anyone |
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from types import MappingProxyType
from typing import Final

from aiohttp import web

from dashboards.auth import Role
from dashboards.pages import add_security_headers
from dashboards.routes import Route

log = logging.getLogger(__name__)

STATIC_DIR: Final = Path(__file__).resolve().with_name("static")
#: one plain file name: no separators, no leading dot, a known extension
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*\.[a-z0-9]+")
CONTENT_TYPES: Final = MappingProxyType(
    {
        ".js": "text/javascript; charset=utf-8",
        ".css": "text/css; charset=utf-8",
        ".svg": "image/svg+xml",
        ".woff2": "font/woff2",
        ".png": "image/png",
    }
)


def static_path(name: str) -> Path | None:
    """The file ``name`` names inside ``static/``, or ``None`` when it may not be served."""
    if not _NAME.fullmatch(name):
        return None
    path = STATIC_DIR / name
    if path.suffix not in CONTENT_TYPES or path.parent != STATIC_DIR:
        return None
    return path


async def static_file(request: web.Request) -> web.StreamResponse:
    """One vendored asset (revalidated on each load: they are small and change with releases)."""
    path = static_path(request.match_info["name"])
    if path is None:
        raise web.HTTPNotFound()
    response = web.FileResponse(
        path,
        headers={"Content-Type": CONTENT_TYPES[path.suffix], "Cache-Control": "no-cache"},
    )
    add_security_headers(response)
    return response


ROUTES: Final[tuple[Route, ...]] = (
    Route("GET", "/static/{name}", static_file, frozenset({Role.ANONYMOUS})),
)
