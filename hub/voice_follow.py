"""Voice follow: the courtroom's PTZ camera turns to whoever is speaking.

The hearing service calls :meth:`VoiceFollow.on_loudest_seat` when a seat's microphone becomes
the loudest in a venue. The camera of that venue (an agent's ``visca_ptz`` device) is sent
``recall_preset {"seat": seat}`` (the driver maps the seat to its preset). Two rules keep the
picture calm:

- the same seat again does nothing;
- after a switch the camera holds for ``min_hold_s``: a seat that becomes the loudest meanwhile
  does not switch at once (no ping-pong between two people talking over each other); if it is
  still the latest loudest seat when the hold ends, the camera goes there then.

A failed command (camera offline, VISCA error, deadline) is a warning and a counter, never an
exception: following the voice is a convenience, the hearing goes on without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hub.commands import CommandOutcome

log = logging.getLogger(__name__)

#: ``HubService.call_command``'s shape: (agent, device, name, args, timeout_s) -> outcome
CallCommand = Callable[[str, str, str, dict[str, Any], float], Awaitable[CommandOutcome]]


@dataclass
class _Venue:
    agent: str
    device: str
    seat: str | None = None  # where the camera points (or is being sent)
    switched_at: float | None = None
    wanted: str | None = None  # the latest loudest seat
    follow_up: asyncio.Task[None] | None = None


class VoiceFollow:
    """Points each venue's PTZ camera at the loudest seat (see the module docstring)."""

    def __init__(
        self,
        call_command: CallCommand,
        cameras: Mapping[str, tuple[str, str]],
        *,
        min_hold_s: float = 3.0,
        command_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``cameras``: venue id -> (agent id, PTZ device id); ``clock``: seconds, monotonic."""
        if min_hold_s < 0:
            raise ValueError(f"min_hold_s must be >= 0, not {min_hold_s}")
        self._call = call_command
        self._venues = {venue: _Venue(agent, device) for venue, (agent, device) in cameras.items()}
        self.min_hold_s = min_hold_s
        self.command_timeout_s = command_timeout_s
        self._clock = clock
        self._stats: Counter[str] = Counter()

    def stats(self) -> dict[str, int]:
        """Counters: recalls_sent, recalls_failed, same_seat, held, deferred, unknown_venue."""
        keys = ("recalls_sent", "recalls_failed", "same_seat", "held", "deferred", "unknown_venue")
        return {key: self._stats[key] for key in keys}

    def seat(self, venue: str) -> str | None:
        """The seat the venue's camera was last sent to (None before the first switch)."""
        state = self._venues.get(venue)
        return state.seat if state else None

    async def on_loudest_seat(self, venue: str, seat: str) -> bool:
        """``seat`` became the loudest in ``venue``; True when a preset recall was sent (and ok)."""
        state = self._venues.get(venue)
        if state is None:
            self._stats["unknown_venue"] += 1
            log.debug("voice follow: no camera for venue=%s seat=%s", venue, seat)
            return False
        state.wanted = seat
        if seat == state.seat:
            self._stats["same_seat"] += 1
            return False
        remaining = self._hold_remaining(state)
        if remaining > 0:
            self._stats["held"] += 1
            log.debug("voice follow held venue=%s seat=%s for=%.2fs", venue, seat, remaining)
            if state.follow_up is None or state.follow_up.done():
                state.follow_up = asyncio.create_task(
                    self._after_hold(venue, state, remaining), name=f"voice follow {venue}"
                )
            return False
        return await self._switch(venue, state, seat)

    async def close(self) -> None:
        """Cancel switches waiting for a hold to end."""
        for state in self._venues.values():
            task, state.follow_up = state.follow_up, None
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def _hold_remaining(self, state: _Venue) -> float:
        if state.switched_at is None:
            return 0.0
        return state.switched_at + self.min_hold_s - self._clock()

    async def _after_hold(self, venue: str, state: _Venue, delay: float) -> None:
        """When the hold ends, go to the latest loudest seat if it is not where the camera is."""
        while True:
            await asyncio.sleep(delay)
            delay = self._hold_remaining(state)
            if delay <= 0:
                break
        seat = state.wanted
        if seat is not None and seat != state.seat:
            self._stats["deferred"] += 1
            await self._switch(venue, state, seat)

    async def _switch(self, venue: str, state: _Venue, seat: str) -> bool:
        previous = (state.seat, state.switched_at)
        # claimed before the await: a talker who cuts in meanwhile sees the hold
        state.seat, state.switched_at = seat, self._clock()
        try:
            outcome = await self._call(
                state.agent,
                state.device,
                "recall_preset",
                {"seat": seat},
                self.command_timeout_s,
            )
        except Exception as exc:  # the hub's call should not raise; never let it stop a hearing
            outcome = CommandOutcome(ok=False, error=f"{type(exc).__name__}: {exc}")
        if outcome.ok:
            self._stats["recalls_sent"] += 1
            log.info(
                "voice follow venue=%s seat=%s agent=%s device=%s",
                venue,
                seat,
                state.agent,
                state.device,
            )
            return True
        self._stats["recalls_failed"] += 1
        if state.seat == seat:  # the camera did not move: the next call may retry at once
            state.seat, state.switched_at = previous
        log.warning(
            "voice follow failed venue=%s seat=%s agent=%s device=%s status=%s error=%s",
            venue,
            seat,
            state.agent,
            state.device,
            outcome.status.value,
            outcome.error,
        )
        return False


async def follow_loudest_seats(
    follow: VoiceFollow,
    venues: list[str],
    *,
    loudest_seat: Callable[[str], str | None],
    recording: Callable[[str], bool],
    interval_s: float = 0.5,
) -> None:
    """Until cancelled: every ``interval_s``, tell ``follow`` the loudest seat of each venue
    whose hearing records (``recording(venue)``) — the audio recorder's levels, with their own
    hysteresis, are the source; between hearings the camera stays where it is."""
    while True:
        await asyncio.sleep(interval_s)
        for venue in venues:
            try:
                if not recording(venue):
                    continue
                seat = loudest_seat(venue)
                if seat is not None:
                    await follow.on_loudest_seat(venue, seat)
            except Exception:  # following the voice must not stop over one bad pass
                log.exception("voice follow pass failed venue=%s", venue)
