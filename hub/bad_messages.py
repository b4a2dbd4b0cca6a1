"""Counting and rate-limited logging of rejected MQTT input.

Rejections happen in paho's network thread (the hub validates at the door, off the event loop),
while the API reads the counts on the loop: every method takes one small lock. A misbehaving
device can send thousands of bad messages a second, so each ``(agent, device, reason)`` key is
logged at most once per interval, with the number of rejections suppressed since.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from protocol.errors import BadMessage, BadReason
from protocol.topics import BASE, valid_id

log = logging.getLogger(__name__)

#: Placeholder id when a rejected topic names no usable agent or device.
UNKNOWN: Final = "?"

Key = tuple[str, str, str]  # (agent, device, reason)


@dataclass(slots=True)
class _LogState:
    last_logged: float
    suppressed: int = 0


@dataclass
class BadMessageCounter:
    """Thread-safe counts of rejected messages per ``(agent, device, reason)``."""

    log_interval_s: float = 10.0
    #: Distinct keys kept; beyond it new keys fold into ``("?", "?", reason)`` (bounded memory
    #: even when a client sprays made-up device ids).
    max_keys: int = 10_000
    clock: Callable[[], float] = time.monotonic
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _counts: Counter[Key] = field(default_factory=Counter, repr=False)
    _log_state: dict[Key, _LogState] = field(default_factory=dict, repr=False)
    _total: int = 0

    def record(self, topic: str, error: BadMessage) -> tuple[str, str]:
        """Count one rejection of a message on ``topic``; returns the ``(agent, device)`` blamed."""
        agent, device = blame(topic)
        key = (agent, device, error.reason.value)
        now = self.clock()
        with self._lock:
            if key not in self._counts and len(self._counts) >= self.max_keys:
                key = (UNKNOWN, UNKNOWN, error.reason.value)
            self._total += 1
            self._counts[key] += 1
            state = self._log_state.get(key)
            if state is None or now - state.last_logged >= self.log_interval_s:
                suppressed = state.suppressed if state else 0
                self._log_state[key] = _LogState(now)
                emit = True
            else:
                state.suppressed += 1
                emit = False
        if emit:
            log.warning(
                "bad message agent=%s device=%s reason=%s suppressed=%d topic=%s detail=%s",
                agent,
                device,
                error.reason.value,
                suppressed,
                topic[:120],
                error.detail[:200],
            )
        return agent, device

    @property
    def total(self) -> int:
        """All rejections since start."""
        with self._lock:
            return self._total

    def count(
        self, agent: str | None = None, device: str | None = None, reason: BadReason | None = None
    ) -> int:
        """Rejections matching every given part of the key."""
        with self._lock:
            return sum(
                n
                for (a, d, r), n in self._counts.items()
                if (agent is None or a == agent)
                and (device is None or d == device)
                and (reason is None or r == reason.value)
            )

    def by_reason(self) -> dict[str, int]:
        """``reason -> count``."""
        totals: Counter[str] = Counter()
        with self._lock:
            for (_, _, reason), n in self._counts.items():
                totals[reason] += n
        return dict(totals)

    def by_key(self) -> dict[Key, int]:
        """``(agent, device, reason) -> count``."""
        with self._lock:
            return dict(self._counts)


def blame(topic: str) -> tuple[str, str]:
    """Best-effort ``(agent, device)`` named by a topic that may itself be malformed."""
    prefix = BASE + "/"
    if not topic.startswith(prefix):
        return UNKNOWN, UNKNOWN
    parts = topic[len(prefix) :].split("/")
    agent = parts[0] if valid_id(parts[0]) else UNKNOWN
    device = parts[1] if len(parts) >= 3 and valid_id(parts[1]) else UNKNOWN
    return agent, device
