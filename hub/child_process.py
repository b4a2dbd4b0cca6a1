"""Child processes (ffmpeg) that must not outlive the hub, even after ``kill -9``.

An orphaned ffmpeg would keep writing segments nobody indexes and hold the camera's only
connection; Linux's ``PR_SET_PDEATHSIG`` makes the kernel kill it with its parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import signal
import sys
from collections.abc import Callable

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
# resolved once in the parent: between fork and exec the child only calls the C function
# (no dlopen, no import), which is what makes it safe as a preexec_fn in a threaded hub
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def die_with_parent() -> None:
    """``preexec_fn``: the child gets SIGKILL when the parent dies (Linux; no-op elsewhere)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)


def preexec() -> Callable[[], None] | None:
    """The ``preexec_fn`` to pass to subprocess creation."""
    return die_with_parent if sys.platform.startswith("linux") else None


async def stop_process(proc: asyncio.subprocess.Process, *, grace_s: float = 3.0) -> int | None:
    """Ask ``proc`` to finish (SIGTERM: ffmpeg closes its current file), kill it after ``grace_s``.

    ffmpeg blocked in a network read (a stalled camera) only notices the *second* SIGTERM (its
    interrupt callback counts signals), so a second one follows after half a second; it still
    finishes the open segment cleanly.
    """
    if proc.returncode is not None:
        return proc.returncode
    for wait_s in (min(0.5, grace_s), max(grace_s - 0.5, 0.1)):
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            return await asyncio.wait_for(proc.wait(), wait_s)
        except TimeoutError:
            continue
    log.warning("child did not stop on SIGTERM, killing pid=%s", proc.pid)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    return await proc.wait()
