"""One row of a route table: method, path, handler and the roles that may call it.

Every module of the web console that serves routes exposes a ``ROUTES`` tuple of :class:`Route`;
the console is assembled from those tables and :mod:`dashboards.auth` refuses any route that no
table declares. Adding a route therefore always means deciding who may call it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from dashboards.auth import Role, RouteRule

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Route:
    """One row of a route table."""

    method: str
    path: str
    handler: Handler
    roles: frozenset[Role]

    @property
    def rule(self) -> RouteRule:
        """The access rule of this route."""
        return RouteRule(self.method, self.path, self.roles)
