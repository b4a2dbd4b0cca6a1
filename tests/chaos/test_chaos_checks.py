"""The telemetry check's pairing of points sent with points stored (``chaos_checks.refiled``).

Points of an agent whose clock the suite steps are stored at their stamp or refiled on the hub's
clock; the check must neither call a stored point lost nor let one stored point stand for two.
"""

from __future__ import annotations

from chaos_checks import SKEW_MATCH_MS, refiled

BACK = -5_000  # the clock fault's step back
AHEAD = 3_600_000


def _keys(device: str, times: list[int], agent: str = "hall-1") -> set[tuple[str, str, int]]:
    return {(agent, device, t) for t in times}


def test_a_refiled_point_on_the_next_points_stamp_is_not_taken_for_lost() -> None:
    """The full chaos run of session 7: after a step back by 5 s, led-1 sent every 5,013 ms
    and the hub measured -5,013 ms, so the first point's refiled time equalled the second
    point's stamp to the millisecond. Every point was stored (three sent, three stored)."""
    sent = _keys("led-1", [100_787, 105_800, 110_813])  # stamps on the agent's clock
    stored = _keys("led-1", [105_800, 110_813, 115_826])  # each filed 5,013 ms later
    lost, found = refiled(sent, stored, {"hall-1"}, (AHEAD, BACK))
    assert lost == []
    assert found == {BACK: 3}


def test_a_point_missing_from_the_store_is_lost() -> None:
    """Which of two interchangeable points is named is arbitrary; that one is lost is not."""
    sent = _keys("led-1", [100_787, 105_800, 110_813])
    stored = _keys("led-1", [105_800, 115_826])  # the second point's refile is not there
    lost, found = refiled(sent, stored, {"hall-1"}, (AHEAD, BACK))
    assert len(lost) == 1
    assert lost[0] in {("hall-1", "led-1", 100_787), ("hall-1", "led-1", 105_800)}
    assert sum(found.values()) == 2


def test_one_stored_point_never_stands_for_two_sent() -> None:
    """Two points stamped apart but both near one refiled time: one of them is lost."""
    sent = _keys("led-1", [100_000, 100_400])
    stored = _keys("led-1", [105_200])
    lost, _ = refiled(sent, stored, {"hall-1"}, (BACK,))
    assert len(lost) == 1


def test_points_of_an_agent_with_a_true_clock_match_their_stamp_only() -> None:
    sent = _keys("sensor-1", [1_000, 2_000], agent="command-1")
    stored = _keys("sensor-1", [1_000, 2_000 + 5], agent="command-1")
    lost, found = refiled(sent, stored, {"hall-1"}, (BACK,))
    assert lost == [("command-1", "sensor-1", 2_000)]
    assert found == {0: 1}


def test_a_refiled_point_further_than_the_tolerance_is_lost() -> None:
    sent = _keys("led-1", [3_700_000])
    stored = _keys("led-1", [100_000 + SKEW_MATCH_MS + 1])
    lost, _ = refiled(sent, stored, {"hall-1"}, (AHEAD,))
    assert lost == [("hall-1", "led-1", 3_700_000)]


def test_points_of_other_devices_never_match() -> None:
    sent = _keys("led-1", [100_000])
    stored = _keys("kiosk-1", [100_000])
    lost, _ = refiled(sent, stored, {"hall-1"}, (BACK,))
    assert lost == [("hall-1", "led-1", 100_000)]
