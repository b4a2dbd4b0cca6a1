"""One dedicated thread per SQLite database: every call runs there, in submission order.

A ``sqlite3`` connection belongs to the thread that opened it, and SQLite work must never block
the event loop (DESIGN.md); a single-worker executor gives both. The hub store, the account store
and the audit log each own one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class DbThread:
    """A named single worker thread; :meth:`run` awaits a blocking call made on it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._executor: ThreadPoolExecutor | None = None

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._executor is not None

    def start(self) -> None:
        """Create the thread (idempotent)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.name)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the thread; ``RuntimeError`` when it is not running."""
        if self._executor is None:
            raise RuntimeError(f"{self.name} is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def stop(self, *, wait: bool = True) -> None:
        """Let queued calls finish (``wait``) and end the thread (idempotent)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=wait)
