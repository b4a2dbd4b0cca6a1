"""The counter (window) page: one clerk works one window of the hall.

| route           | roles          |
|-----------------|----------------|
| ``GET /counter`` | counter, admin |

The clerk picks the window once (remembered in the browser's ``localStorage``); the page shows
its current ticket big, one-click buttons for call next, recall, start serving, done, no-show,
transfer (to another service) and hold, the waiting counts of the window's services, and errors
inline (the queue's Chinese message first). ``static/counter.js`` calls
``/api/v1/queue/counters/{counter}/…`` with the CSRF header and refreshes on every queue change
it hears on the board channel (``/ws/board``: numbers only, no sign-in needed).
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from dashboards.pages import RENDERER_KEY, NavItem
from dashboards.queue_api import COUNTER_ROLES, QUEUE_KEY
from dashboards.routes import Route

#: the pages' entries in the top bar (the board's shows to admin and technician)
COUNTER_NAV: Final = NavItem("/counter", "nav.counter", "tile.counter", "i-user")
BOARD_NAV: Final = NavItem("/board", "nav.board", "tile.board", "i-emblem")
QUEUE_NAV: Final = (COUNTER_NAV, BOARD_NAV)


async def counter_page(request: web.Request) -> web.Response:
    """The window's controls."""
    queue = request.app.get(QUEUE_KEY)
    services = list(queue.config.services) if queue is not None else []
    counters = list(queue.config.counters) if queue is not None else []
    return request.app[RENDERER_KEY].render(
        request,
        "counter.html",
        page="counter",
        title_key="counter.title",
        services=services,
        counters=counters,
        queue_running=queue is not None,
    )


ROUTES: Final[tuple[Route, ...]] = (Route("GET", "/counter", counter_page, COUNTER_ROLES),)
