"""VoiceFollow with a fake call_command and a fake clock: dedupe, hold time, failures."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import pytest

from hub.commands import CommandOutcome, CommandStatus
from hub.voice_follow import VoiceFollow


class FakeHub:
    """Records recall commands; answers with ``outcome`` (or raises ``error``)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, dict[str, Any], float]] = []
        self.outcome = CommandOutcome(ok=True, result={"ok": True})
        self.error: Exception | None = None

    async def call_command(
        self, agent: str, device: str, name: str, args: dict[str, Any], timeout_s: float
    ) -> CommandOutcome:
        self.calls.append((agent, device, name, args, timeout_s))
        if self.error is not None:
            raise self.error
        return self.outcome

    @property
    def seats(self) -> list[str]:
        return [args["seat"] for _, _, _, args, _ in self.calls]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def hub() -> FakeHub:
    return FakeHub()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def follow(hub: FakeHub, clock: Clock) -> VoiceFollow:
    return VoiceFollow(
        hub.call_command,
        {"court-1": ("court-1-agent", "ptz-1"), "court-2": ("court-2-agent", "ptz-main")},
        min_hold_s=3.0,
        clock=clock,
    )


async def test_switches_to_a_new_seat_once(follow: VoiceFollow, hub: FakeHub, clock: Clock) -> None:
    assert await follow.on_loudest_seat("court-1", "judge") is True
    assert hub.calls == [("court-1-agent", "ptz-1", "recall_preset", {"seat": "judge"}, 5.0)]
    clock.now += 10
    assert await follow.on_loudest_seat("court-1", "judge") is False  # same seat: nothing
    assert await follow.on_loudest_seat("court-2", "witness") is True  # other venue: its camera
    assert hub.calls[-1][:2] == ("court-2-agent", "ptz-main")
    assert follow.seat("court-1") == "judge" and follow.seat("court-2") == "witness"
    assert follow.stats() == {
        "recalls_sent": 2,
        "recalls_failed": 0,
        "same_seat": 1,
        "held": 0,
        "deferred": 0,
        "unknown_venue": 0,
    }


async def test_hold_time_stops_ping_pong(follow: VoiceFollow, hub: FakeHub, clock: Clock) -> None:
    assert await follow.on_loudest_seat("court-1", "plaintiff") is True
    clock.now += 1.0
    assert await follow.on_loudest_seat("court-1", "defendant") is False  # held
    clock.now += 0.5
    assert await follow.on_loudest_seat("court-1", "plaintiff") is False  # back: nothing to do
    clock.now += 2.0  # 3.5 s after the switch
    assert await follow.on_loudest_seat("court-1", "defendant") is True
    clock.now += 3.0
    assert await follow.on_loudest_seat("court-1", "plaintiff") is True
    assert hub.seats == ["plaintiff", "defendant", "plaintiff"]
    assert follow.stats()["held"] == 1 and follow.stats()["same_seat"] == 1
    await follow.close()


async def test_seat_loudest_through_the_hold_gets_the_camera_after_it(hub: FakeHub) -> None:
    follow = VoiceFollow(hub.call_command, {"court-1": ("a", "ptz")}, min_hold_s=0.2)
    assert await follow.on_loudest_seat("court-1", "judge") is True
    assert await follow.on_loudest_seat("court-1", "witness") is False
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while len(hub.calls) < 2 and loop.time() < deadline:
        await asyncio.sleep(0.01)
    assert hub.seats == ["judge", "witness"]
    assert follow.stats()["deferred"] == 1 and follow.seat("court-1") == "witness"
    await follow.close()


async def test_unknown_venue(
    follow: VoiceFollow, hub: FakeHub, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="hub.voice_follow"):
        assert await follow.on_loudest_seat("hall", "judge") is False
    assert hub.calls == [] and follow.stats()["unknown_venue"] == 1
    assert "venue=hall" in caplog.text


async def test_failed_command_is_a_warning_and_can_retry(
    follow: VoiceFollow, hub: FakeHub, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    hub.outcome = CommandOutcome(
        ok=False, error="VISCA error: command buffer full (camera 1)", status=CommandStatus.FAILED
    )
    with caplog.at_level(logging.WARNING, logger="hub.voice_follow"):
        assert await follow.on_loudest_seat("court-1", "witness") is False
    assert "command buffer full" in caplog.text and "seat=witness" in caplog.text
    assert follow.seat("court-1") is None
    hub.error = ConnectionError("broker gone")
    assert await follow.on_loudest_seat("court-1", "witness") is False  # no raise
    hub.error = None
    hub.outcome = CommandOutcome(ok=True)
    assert await follow.on_loudest_seat("court-1", "witness") is True  # not held by a failure
    assert follow.stats()["recalls_failed"] == 2 and follow.stats()["recalls_sent"] == 1
    assert hub.seats == ["witness"] * 3


async def test_talker_cutting_in_during_a_slow_recall_is_held(clock: Clock) -> None:
    release = asyncio.Event()
    seats: list[str] = []

    async def slow_call(
        agent: str, device: str, name: str, args: dict[str, Any], timeout_s: float
    ) -> CommandOutcome:
        seats.append(args["seat"])
        await release.wait()
        return CommandOutcome(ok=True)

    follow = VoiceFollow(slow_call, {"c": ("a", "ptz")}, clock=clock)
    first = asyncio.create_task(follow.on_loudest_seat("c", "judge"))
    await asyncio.sleep(0)
    assert await follow.on_loudest_seat("c", "witness") is False
    release.set()
    assert await first is True
    assert seats == ["judge"]
    await follow.close()


def test_bad_hold() -> None:
    with pytest.raises(ValueError, match="min_hold_s"):
        VoiceFollow(FakeHub().call_command, {}, min_hold_s=-1)


async def test_the_loudest_seat_of_a_recording_venue_turns_its_camera() -> None:
    """The hub's loop: levels → loudest seat → recall, only while the venue's hearing records."""
    from hub.voice_follow import follow_loudest_seats

    calls: list[tuple[str, str, str, dict[str, Any]]] = []

    async def call(
        agent: str, device: str, name: str, args: dict[str, Any], timeout_s: float
    ) -> Any:
        calls.append((agent, device, name, args))
        return CommandOutcome(ok=True)

    follow = VoiceFollow(call, {"court-1": ("court-1", "ptz-1")}, min_hold_s=0)
    loudest = {"court-1": "witness"}
    recording = {"court-1": False}
    task = asyncio.create_task(
        follow_loudest_seats(
            follow,
            ["court-1"],
            loudest_seat=loudest.get,
            recording=recording.__getitem__,
            interval_s=0.01,
        )
    )
    try:
        await asyncio.sleep(0.1)
        assert calls == []  # no hearing records: the camera stays where it is
        recording["court-1"] = True
        for _ in range(200):
            if calls:
                break
            await asyncio.sleep(0.01)
        assert calls[0][:3] == ("court-1", "ptz-1", "recall_preset")
        assert calls[0][3] == {"seat": "witness"}
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await follow.close()
