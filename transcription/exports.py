"""Transcript exports: SRT, WebVTT, plain text, JSON, and the paged court transcript.

Every export shows each segment's *current* text — the clerk's latest revision, else the machine
text (:attr:`transcription.transcript.Segment.text`); only :func:`to_json` also carries the
machine text and the revision history. SRT/WebVTT cue times count from the transcript's origin
(``started_ms``, else its first segment); the text exports show wall-clock times in the court's
time zone, given by the caller (an IANA name such as ``"Asia/Shanghai"`` or a ``tzinfo``).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo

from transcription.transcript import Transcript

FORMATS = ("srt", "vtt", "txt", "json", "court")


def _zone(tz: tzinfo | str) -> tzinfo:
    return ZoneInfo(tz) if isinstance(tz, str) else tz


def _clock(ms: int, tz: tzinfo, seconds: bool = True) -> str:
    local = datetime.fromtimestamp(ms / 1000, UTC).astimezone(tz)
    return local.strftime("%H:%M:%S" if seconds else "%H:%M")


def _offset(ms: int, sep: str) -> str:
    ms = max(0, ms)
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, milli = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{milli:03d}"


def to_srt(transcript: Transcript) -> str:
    """SubRip: one cue per segment, ``Speaker: text``."""
    origin = transcript.origin_ms()
    cues = [
        f"{i}\n{_offset(s.start_ms - origin, ',')} --> {_offset(s.end_ms - origin, ',')}\n"
        f"{s.speaker}: {s.text}\n"
        for i, s in enumerate(transcript.ordered(), 1)
    ]
    return "\n".join(cues)


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_webvtt(transcript: Transcript) -> str:
    """WebVTT with a ``<v Speaker>`` voice tag per cue."""
    origin = transcript.origin_ms()
    parts = ["WEBVTT\n"]
    for s in transcript.ordered():
        parts.append(
            f"{_offset(s.start_ms - origin, '.')} --> {_offset(s.end_ms - origin, '.')}\n"
            f"<v {_vtt_escape(s.speaker)}>{_vtt_escape(s.text)}\n"
        )
    return "\n".join(parts)


@dataclass(frozen=True, slots=True)
class _Entry:
    at_ms: int
    order: int  # recesses before notes before speech at the same instant
    head: str
    body: str


def _entries(transcript: Transcript, tz: tzinfo) -> list[_Entry]:
    out = [
        _Entry(r.from_ms, 0, _recess_marker(r.from_ms, r.to_ms, r.reason, tz), "")
        for r in transcript.recesses
    ]
    out += [
        _Entry(n.at_ms, 1, f"〔备注 {_clock(n.at_ms, tz)} {n.author}〕", n.text)
        for n in transcript.notes
    ]
    out += [
        _Entry(
            s.start_ms,
            2,
            f"{s.speaker}  {_clock(s.start_ms, tz)}–{_clock(s.end_ms, tz)}",
            s.text,
        )
        for s in transcript.segments
    ]
    return sorted(out, key=lambda e: (e.at_ms, e.order))


def _recess_marker(from_ms: int, to_ms: int, reason: str, tz: tzinfo) -> str:
    why = f"（{reason}）" if reason else ""
    return f"——休庭 {_clock(from_ms, tz, False)}–{_clock(to_ms, tz, False)}{why}——"


def to_text(transcript: Transcript, *, tz: tzinfo | str) -> str:
    """One line per utterance/note/recess, in time order, local times."""
    zone = _zone(tz)
    lines = []
    for e in _entries(transcript, zone):
        if e.order == 2:  # speech: "[10:00:01] 审判长: text"
            speaker, _, times = e.head.partition("  ")
            lines.append(f"[{times.split('–')[0]}] {speaker}: {e.body}")
        else:
            lines.append(f"{e.head}{e.body}")
    return "\n".join(lines) + ("\n" if lines else "")


def to_json(transcript: Transcript) -> str:
    """The full model as JSON (machine text, revisions, words, notes, recesses)."""
    return transcript.to_json().decode()


def _width(ch: str) -> int:
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def _wrap(text: str, width: int) -> list[str]:
    """Break ``text`` into lines of at most ``width`` columns (CJK characters count two)."""
    lines, line, used = [], "", 0
    for ch in text:
        w = _width(ch)
        if used + w > width and line:
            lines.append(line.rstrip())
            line, used = "", 0
            if ch == " ":
                continue
        line += ch
        used += w
    if line.strip() or not lines:
        lines.append(line.rstrip())
    return lines


def to_court_transcript(
    transcript: Transcript,
    *,
    tz: tzinfo | str,
    lines_per_page: int = 25,
    width: int = 60,
) -> str:
    """The court's paper layout: numbered pages of ``lines_per_page`` numbered lines.

    Each utterance starts with a line ``Speaker  HH:MM:SS–HH:MM:SS`` (local time), followed by
    its text wrapped at ``width`` columns and indented; recesses show as
    ``——休庭 10:31–10:45（原因）——`` and notes as ``〔备注 time author〕text``. Each page starts
    with ``第 N 页 / 共 M 页`` (after the title, if any); pages are separated by a form feed.
    """
    if lines_per_page < 1 or width < 10:
        raise ValueError("lines_per_page must be >= 1 and width >= 10")
    zone = _zone(tz)
    body: list[str] = []
    for e in _entries(transcript, zone):
        if e.order == 0:
            body.append(e.head)
        elif e.order == 1:
            body += _wrap(e.head + e.body, width)
        else:
            body.append(e.head)
            body += ["    " + line for line in _wrap(e.body, width - 4)]
    pages = [body[i : i + lines_per_page] for i in range(0, len(body), lines_per_page)] or [[]]
    digits = len(str(lines_per_page))
    out = []
    for n, page in enumerate(pages, 1):
        head = f"第 {n} 页 / 共 {len(pages)} 页"
        if transcript.title:
            head = f"{transcript.title}    {head}"
        numbered = [f"{i:>{digits}}  {line}".rstrip() for i, line in enumerate(page, 1)]
        out.append("\n".join([head, "", *numbered]) + "\n")
    return "\f".join(out)


def render(transcript: Transcript, fmt: str, *, tz: tzinfo | str = "UTC") -> str:
    """The export named ``fmt`` (one of :data:`FORMATS`)."""
    if fmt == "srt":
        return to_srt(transcript)
    if fmt == "vtt":
        return to_webvtt(transcript)
    if fmt == "txt":
        return to_text(transcript, tz=tz)
    if fmt == "json":
        return to_json(transcript)
    if fmt == "court":
        return to_court_transcript(transcript, tz=tz)
    raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
