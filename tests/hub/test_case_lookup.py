"""A kiosk's case look-up answered from the hub's hearings (hub/case_lookup.py)."""

from __future__ import annotations

from hub.case_lookup import CaseDirectory, normalise_case_no
from hub.hearings import Hearing

NOW_MS = 1_795_000_000_000  # 2026-11-18 11:06:40 UTC = 19:06 in Beijing
DAY = 86_400_000
CASE = "(2026)京0105民初12345号"


def hearing(
    hid: str, state: str, *, scheduled: int | None = None, venues: tuple[str, ...] = ("court-1",)
) -> Hearing:
    return Hearing(
        id=hid,
        title="T",
        case_no=CASE,
        venues=venues,
        opened_ms=NOW_MS - 10 * DAY,
        opened_by="clerk",
        state=state,
        scheduled_ms=scheduled,
    )


def directory(*hearings: Hearing) -> CaseDirectory:
    names = {"court-1": "第一法庭", "court-2": "第二法庭"}
    return CaseDirectory(
        lambda: hearings, lambda v: names.get(v, v), "Asia/Shanghai", lambda: NOW_MS / 1000
    )


def test_full_width_brackets_and_spaces_match() -> None:
    assert normalise_case_no("（2026）京0105 民初12345号") == normalise_case_no(CASE)


def test_unknown_cases_and_empty_numbers_are_not_found() -> None:
    d = directory(hearing("h1", "closed"))
    assert d.lookup("(2025)京0105民初1号") == {"found": False}
    assert d.lookup("  ") == {"found": False}


def test_a_heard_case_with_its_next_hearing_scheduled() -> None:
    d = directory(
        hearing("h1", "sealed", scheduled=NOW_MS - 5 * DAY),
        hearing("h2", "scheduled", scheduled=NOW_MS + DAY + 3_600_000, venues=("court-2",)),
    )
    assert d.lookup("（2026）京0105民初12345号") == {
        "found": True,
        "status": "已排期开庭 / hearing scheduled",
        "next_hearing": "2026-11-19 20:06",  # court time, Beijing
        "courtroom": "第二法庭",
    }


def test_a_hearing_in_session_is_what_the_litigant_needs_to_know() -> None:
    d = directory(
        hearing("h1", "open"),
        hearing("h2", "scheduled", scheduled=NOW_MS + 7 * DAY),
    )
    answer = d.lookup(CASE)
    assert answer["status"] == "正在开庭 / in session" and answer["courtroom"] == "第一法庭"
    assert answer["next_hearing"] == "2026-11-25 19:06"


def test_a_case_heard_with_nothing_scheduled() -> None:
    d = directory(hearing("h1", "closed"), hearing("old", "scheduled", scheduled=NOW_MS - DAY))
    answer = d.lookup(CASE)
    assert answer["status"] == "已开庭审理 / heard" and "next_hearing" not in answer
