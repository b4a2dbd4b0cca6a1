"""The transcript of a hearing: machine segments, clerk revisions, notes and recesses.

A pure model with a JSON form; the hub stores it. Times are UTC milliseconds (the project's
convention; the streaming layer's µs are divided down when a segment is added). The machine text
of a segment is never overwritten: a clerk's correction is appended to ``revisions`` and the
latest revision is the segment's current :attr:`Segment.text`, which every export shows.
"""

from __future__ import annotations

import msgspec

from transcription.stream import FinalSegment


class TranscriptWord(msgspec.Struct, frozen=True):
    """One recognised word (UTC ms) and its confidence."""

    text: str
    start_ms: int
    end_ms: int
    conf: float


class Revision(msgspec.Struct, frozen=True):
    """A clerk's correction of a segment: the new text, who, when (UTC ms)."""

    text: str
    by: str
    at_ms: int


class Segment(msgspec.Struct, kw_only=True):
    """One utterance of one seat."""

    id: str
    seat: str
    speaker: str
    start_ms: int
    end_ms: int
    machine_text: str
    confidence: float = 0.0
    words: list[TranscriptWord] = msgspec.field(default_factory=list)
    revisions: list[Revision] = msgspec.field(default_factory=list)

    @property
    def text(self) -> str:
        """The current text: the latest revision, else the machine text."""
        return self.revisions[-1].text if self.revisions else self.machine_text


class Note(msgspec.Struct, frozen=True):
    """A timestamped note by the judge or clerk."""

    at_ms: int
    author: str
    text: str


class Recess(msgspec.Struct, frozen=True):
    """A recess from ``from_ms`` to ``to_ms`` (UTC ms), with its reason."""

    from_ms: int
    to_ms: int
    reason: str = ""


class TranscriptError(ValueError):
    """Bad transcript JSON or an unknown segment id."""


class Transcript(msgspec.Struct, kw_only=True):
    """A hearing's transcript. ``started_ms`` is the origin of SRT/WebVTT cue times."""

    title: str = ""
    started_ms: int | None = None
    segments: list[Segment] = msgspec.field(default_factory=list)
    notes: list[Note] = msgspec.field(default_factory=list)
    recesses: list[Recess] = msgspec.field(default_factory=list)

    def add_final(self, final: FinalSegment, *, speaker: str | None = None) -> Segment:
        """Append a streamed final (µs → ms); ``speaker`` defaults to the seat name."""
        segment = Segment(
            id=f"s{len(self.segments) + 1}",
            seat=final.seat,
            speaker=speaker or final.seat,
            start_ms=final.start_us // 1000,
            end_ms=final.end_us // 1000,
            machine_text=final.text,
            confidence=final.confidence,
            words=[
                TranscriptWord(w.text, w.start_us // 1000, w.end_us // 1000, w.conf)
                for w in final.words
            ],
        )
        self.segments.append(segment)
        return segment

    def segment(self, segment_id: str) -> Segment:
        """The segment with ``segment_id``; :class:`TranscriptError` if there is none."""
        for s in self.segments:
            if s.id == segment_id:
                return s
        raise TranscriptError(f"no segment {segment_id!r}")

    def revise(self, segment_id: str, text: str, *, by: str, at_ms: int) -> Revision:
        """Record a clerk's correction; the machine text stays as it was."""
        revision = Revision(text=text, by=by, at_ms=at_ms)
        self.segment(segment_id).revisions.append(revision)
        return revision

    def add_note(self, at_ms: int, author: str, text: str) -> Note:
        """Add a timestamped note."""
        note = Note(at_ms=at_ms, author=author, text=text)
        self.notes.append(note)
        return note

    def add_recess(self, from_ms: int, to_ms: int, reason: str = "") -> Recess:
        """Record a recess; ``to_ms`` before ``from_ms`` is refused."""
        if to_ms < from_ms:
            raise TranscriptError(f"recess ends ({to_ms}) before it starts ({from_ms})")
        recess = Recess(from_ms=from_ms, to_ms=to_ms, reason=reason)
        self.recesses.append(recess)
        return recess

    def ordered(self) -> list[Segment]:
        """Segments by start time (seats interleave), ties by id order of arrival."""
        return sorted(self.segments, key=lambda s: s.start_ms)

    def origin_ms(self) -> int:
        """``started_ms``, else the earliest segment start (0 for an empty transcript)."""
        if self.started_ms is not None:
            return self.started_ms
        return min((s.start_ms for s in self.segments), default=0)

    def to_json(self) -> bytes:
        """The JSON form (machine text, revisions, words, notes, recesses)."""
        return msgspec.json.encode(self)

    @classmethod
    def from_json(cls, data: bytes | str) -> Transcript:
        """Parse and validate the JSON form; :class:`TranscriptError` names what is wrong."""
        try:
            return msgspec.json.decode(data, type=cls)
        except msgspec.ValidationError as exc:
            raise TranscriptError(f"bad transcript JSON: {exc}") from exc
        except msgspec.DecodeError as exc:
            raise TranscriptError(f"transcript is not JSON: {exc}") from exc
