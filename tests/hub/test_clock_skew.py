"""hub/clock_skew.py: an agent's clock measured from its live messages on a fake hub clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.alerts import AlertBoard
from hub.clock_skew import ClockSkew, SkewAlerter, alert_key, describe_offset

HOUR = 3_600_000
T0 = 1_796_000_000_000  # hub clock, ms


class Agent:
    """An agent sending one message every ``every_ms`` (hub clock) with its clock ``offset_ms``
    off and ``delay_ms`` of transit; ``send`` returns the timestamp the hub files."""

    def __init__(self, skew: ClockSkew, name: str = "court-1", every_ms: int = 1000) -> None:
        self.skew = skew
        self.name = name
        self.every_ms = every_ms
        self.now = T0
        self.offset_ms = 0
        self.delay_ms = 15

    def send(self) -> tuple[int, int]:
        """(timestamp the agent stamped, timestamp the hub files)."""
        self.now += self.every_ms
        stamped = self.now - self.delay_ms + self.offset_ms
        return stamped, self.skew.observe(self.name, stamped, self.now)

    def run(self, n: int) -> list[tuple[int, int]]:
        return [self.send() for _ in range(n)]


def test_a_healthy_agent_is_never_touched() -> None:
    skew = ClockSkew()
    agent = Agent(skew)
    for delay in (5, 900, 1900, 40):  # jitter up to the threshold
        agent.delay_ms = delay
        assert all(stamped == filed for stamped, filed in agent.run(20))
    assert skew.skewed() == {}
    assert skew.offset_ms("court-1") == 0


def test_forward_step_is_adopted_after_a_few_messages_and_filed_on_the_hub_clock() -> None:
    skew = ClockSkew(confirm_messages=3)
    agent = Agent(skew)
    agent.run(5)
    agent.offset_ms = HOUR
    sent = agent.run(10)
    # every one filed on the hub's clock: the first two (not confirmed yet) at their arrival
    for stamped, filed in sent:
        assert abs(filed - (stamped - HOUR)) <= 20  # the offset is measured, delay included
    assert abs(skew.offset_ms("court-1") - HOUR) <= 20
    assert skew.stats()["court-1"]["steps"] == 1


def test_a_step_confirmed_by_slower_messages_keeps_the_agent_order() -> None:
    """The first message after a step arrives quickly, the next ones slowly: those before the
    confirmation are filed at their (late) arrival, and the offset comes from the quick one.
    Filing later messages at ``stamp - offset`` must not put them before those arrivals: the
    console's "latest value" would go back in time (seen on a loaded hub)."""
    skew = ClockSkew(confirm_messages=3)
    agent = Agent(skew, every_ms=100)
    agent.run(5)
    agent.offset_ms = HOUR
    agent.delay_ms = 2
    sent = agent.run(1)
    agent.delay_ms = 400
    sent += agent.run(6)
    filed = [f for _, f in sent]
    assert filed == sorted(filed) and len(set(filed)) == len(filed), filed
    assert abs(skew.offset_ms("court-1") - HOUR) <= 500  # still the measured step
    for stamped, f in sent:
        assert abs(f - (stamped - HOUR)) <= 500


def test_backward_step_is_adopted_at_once_and_never_files_over_stored_points() -> None:
    """Timestamps going backwards cannot be a backlog: the step is believed after a few
    messages, and those before it are filed at their arrival, not 5 s back on top of the
    points stored for those seconds."""
    skew = ClockSkew(confirm_messages=3, confirm_behind_s=10)
    agent = Agent(skew)
    earlier = {filed for _, filed in agent.run(10)}
    agent.offset_ms = -5_000
    sent = agent.run(3)
    assert abs(skew.offset_ms("court-1") + 5_000) <= 20
    for stamped, filed in sent:
        assert abs(filed - (stamped + 5_000)) <= 20
        assert filed not in earlier
    assert skew.stats()["court-1"]["steps"] == 1


def test_an_agent_first_heard_behind_is_reported_after_a_while_but_never_refiled() -> None:
    """A clock behind without proof (its stamps never went backwards) is indistinguishable from
    messages arriving late: reported after ``confirm_behind_s``, its stamps kept as sent."""
    skew = ClockSkew(confirm_messages=3, confirm_behind_s=10)
    agent = Agent(skew)
    agent.offset_ms = -5_000
    agent.run(9)  # 9 s of messages 5 s behind: could still be a backlog
    assert skew.offset_ms("court-1") == 0
    sent = agent.run(3)
    assert abs(skew.offset_ms("court-1") + 5_000) <= 20  # alerted: the clock is 5 s behind
    assert all(filed == stamped for stamped, filed in sent)
    assert skew.stats()["court-1"]["corrected"] == 0


def test_a_backlog_of_late_messages_is_not_skew() -> None:
    """The hub away 8 s while the broker queues, then the queue drained in 3 s: every message
    of the backlog is late (up to 8 s behind), none is taken for skew nor refiled."""
    skew = ClockSkew()
    agent = Agent(skew, every_ms=10)
    agent.run(10)
    queued = [agent.now + 10 * i for i in range(1, 801)]  # stamped in order while the hub is away
    resume = queued[-1]
    for i, stamped in enumerate(queued):
        received = resume + i * 4  # drained faster than they were sent
        assert skew.observe("court-1", stamped, received) == stamped
    agent.now = resume + len(queued) * 4
    assert all(stamped == filed for stamped, filed in agent.run(100))
    assert skew.skewed() == {}


def test_clock_back_resolves_and_stops_correcting() -> None:
    skew = ClockSkew()
    agent = Agent(skew)
    agent.run(3)
    agent.offset_ms = HOUR
    agent.run(5)
    agent.offset_ms = 0
    # messages that agree with the hub's clock are kept as sent, before and after the return
    for stamped, filed in agent.run(5):
        assert filed == stamped
    assert skew.offset_ms("court-1") == 0
    assert skew.stats()["court-1"]["steps"] == 2


def test_each_agent_has_its_own_clock() -> None:
    skew = ClockSkew()
    court, hall = Agent(skew, "court-1"), Agent(skew, "hall-1")
    court.offset_ms = HOUR
    court.run(5)
    hall.run(5)
    assert set(skew.skewed()) == {"court-1"}


@pytest.mark.parametrize(
    ("offset", "text"),
    [
        (HOUR, "1 h 0 min 0.0 s ahead"),
        (HOUR - 15, "1 h 0 min 0.0 s ahead"),
        (-5_000, "5.0 s behind"),
        (-61_500, "1 min 1.5 s behind"),
    ],
)
def test_describe_offset(offset: int, text: str) -> None:
    assert describe_offset(offset) == text


async def test_alert_raised_with_the_offset_and_resolved(tmp_path: Path) -> None:
    board = await AlertBoard.open(tmp_path)
    try:
        skew = ClockSkew(confirm_behind_s=10)
        alerter = SkewAlerter(board)
        skew.add_listener(alerter)
        agent = Agent(skew)
        agent.offset_ms = HOUR
        agent.run(5)
        await alerter.drain()
        [alert] = board.active()
        assert alert.key == alert_key("court-1") == "clock-skew:court-1"
        assert "1 h 0 min" in alert.message and "ahead" in alert.message
        agent.offset_ms = 0
        agent.run(5)
        await alerter.drain()
        assert board.active() == []
        assert not board.is_active("clock-skew:court-1")
    finally:
        await board.close()
