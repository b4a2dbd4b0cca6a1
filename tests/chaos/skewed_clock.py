"""A process whose wall clock can be stepped at run time (libfaketime), like an NTP step or a
badly set BIOS clock on a venue PC (chaos suite, fault ``clock jump``).

The container cannot set the system clock (no ``CAP_SYS_TIME``), so the agent runs under
libfaketime (Debian ``libfaketime``, scripts/install-system-deps.sh):

- ``LD_PRELOAD=libfaketimeMT.so.1`` (the thread-safe build: the agent reads the clock from
  several threads) with ``FAKETIME_TIMESTAMP_FILE`` holding the offset
  (``+3600``, ``-5``, ``+0``) and ``FAKETIME_NO_CACHE=1``: every clock read looks at the file, so
  rewriting it steps the process's ``CLOCK_REALTIME`` at once (:meth:`SkewedClock.step`);
- ``FAKETIME_DONT_FAKE_MONOTONIC=1``: an NTP step leaves ``CLOCK_MONOTONIC`` alone, so must we
  (and with a faked monotonic clock, condition-variable waits hang: libfaketime issue #390).

libfaketime 0.9.10 (bookworm) with ``DONT_FAKE_MONOTONIC`` breaks ``clock_nanosleep(
CLOCK_MONOTONIC, TIMER_ABSTIME)`` (EINVAL: wolfcw/libfaketime#426), which Python 3.11's
``time.sleep`` uses; paho's reconnect wait calls ``time.sleep``. :func:`main` (the agent's
entry under libfaketime) therefore replaces ``time.sleep`` with a relative wait before running
the agent — a fix of the test tool, not of the code under test.
"""

from __future__ import annotations

import os
import select
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

LIBFAKETIME: Final = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")


def available() -> bool:
    """libfaketime is installed (scripts/install-system-deps.sh)."""
    return LIBFAKETIME.exists()


@dataclass(frozen=True)
class SkewedClock:
    """The offset file of one process's faked clock."""

    path: Path

    def step(self, offset_s: float) -> None:
        """Set the process's wall clock to real time + ``offset_s`` (atomic rename)."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(f"{offset_s:+.3f}\n")
        tmp.replace(self.path)

    def env(self) -> dict[str, str]:
        """Environment of a process running on this clock (starts at the file's offset)."""
        if not self.path.exists():
            self.step(0)
        return {
            **os.environ,
            "LD_PRELOAD": str(LIBFAKETIME),
            "FAKETIME_TIMESTAMP_FILE": str(self.path),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }


def _sleep(seconds: float) -> None:
    """``time.sleep`` without ``clock_nanosleep(TIMER_ABSTIME)`` (see the module docstring)."""
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        select.select([], [], [], left)


def main() -> int:
    """``python tests/chaos/skewed_clock.py --config venue.toml``: an edge agent (under
    libfaketime) with the ``time.sleep`` work-around."""
    time.sleep = _sleep  # type: ignore[assignment]  # floats only: all the agent passes
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from edge_agents.cli import main as agent_main

    return int(agent_main() or 0)


if __name__ == "__main__":
    sys.exit(main())
