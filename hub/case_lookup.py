"""What a litigant sees when a hall kiosk looks a case up (``case_query`` → ``case_info``).

courthub knows a case through its hearings (``hub/hearings.py``: case number, venues, state,
scheduled time); the court's case-management system stays the authority for everything else, so
the answer is limited to what the hearings say: the case's state, its next scheduled hearing and
the courtroom. The judge is not known here and is left out (the protocol makes it optional).

Case numbers are compared after Unicode NFKC normalisation and without spaces, so the full-width
brackets a kiosk's Chinese input method types (``（2026）京0105民初12345号``) match the
half-width ones a clerk typed (``(2026)京0105民初12345号``).
"""

from __future__ import annotations

import unicodedata
import zoneinfo
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from hub.hearings import CLOSED, OPEN, RECESS, SCHEDULED, SEALED, Hearing

#: the litigant-facing state of a case, by its latest hearing's state (Chinese first)
STATUS_TEXT = {
    SCHEDULED: "已排期开庭 / hearing scheduled",
    OPEN: "正在开庭 / in session",
    RECESS: "休庭中 / in recess",
    CLOSED: "已开庭审理 / heard",
    SEALED: "已开庭审理 / heard",
}


def normalise_case_no(case_no: str) -> str:
    """The comparable form of a case number (NFKC, no whitespace)."""
    return "".join(unicodedata.normalize("NFKC", case_no).split())


class CaseDirectory:
    """Answers kiosk case queries from the hearings the hub knows."""

    def __init__(
        self,
        hearings: Callable[[], Iterable[Hearing]],
        venue_name: Callable[[str], str],
        timezone: str,
        clock: Callable[[], float],
    ) -> None:
        """``hearings``: every hearing (e.g. ``HearingService.all``); ``venue_name``: a venue
        id's display name; ``timezone``: the court's (times are shown in it)."""
        self._hearings = hearings
        self._venue_name = venue_name
        self._zone = zoneinfo.ZoneInfo(timezone)
        self._clock = clock

    def lookup(self, case_no: str) -> dict[str, Any]:
        """``send_case_info`` arguments (without ``request_id``) for ``case_no``."""
        wanted = normalise_case_no(case_no)
        mine = [h for h in self._hearings() if wanted and normalise_case_no(h.case_no) == wanted]
        if not mine:
            return {"found": False}
        now_ms = int(self._clock() * 1000)
        current = [h for h in mine if h.state in (OPEN, RECESS)]
        upcoming = sorted(
            (h for h in mine if h.state == SCHEDULED and (h.scheduled_ms or 0) >= now_ms),
            key=lambda h: h.scheduled_ms or 0,
        )
        # what the litigant needs first: a hearing now, else the next one, else the last heard
        # (a scheduled hearing whose time passed without opening is shown only if nothing else)
        heard = [h for h in mine if h.state in (CLOSED, SEALED)]
        latest = max(heard or mine, key=lambda h: h.scheduled_ms or h.opened_ms)
        shown = current[0] if current else upcoming[0] if upcoming else latest
        answer: dict[str, Any] = {"found": True, "status": STATUS_TEXT[shown.state]}
        if upcoming:
            answer["next_hearing"] = self._format(upcoming[0].scheduled_ms or 0)
        if shown.venues:
            answer["courtroom"] = "、".join(self._venue_name(v) for v in shown.venues)
        return answer

    def _format(self, ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, self._zone).strftime("%Y-%m-%d %H:%M")
