"""A hearing's written record: its transcript (with corrections), notes and breaks, as files.

:func:`build_transcript` assembles the :class:`transcription.transcript.Transcript` of a hearing
from the transcript store (final segments with their revisions, notes) and the hearing's events
(recesses); :class:`RecordWriter` renders every export format into
``data_dir/transcripts/<hearing>/`` when the hearing is sealed, so the seal's manifest hashes
exactly the text the clerk checked (the rules: recognised text becomes the record only once it
is checked and signed).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from hub.hearings import Hearing, HearingService
from hub.transcript_store import TranscriptStore
from transcription.exports import FORMATS, render
from transcription.transcript import Note, Recess, Revision, Segment, Transcript, TranscriptWord

TRANSCRIPTS = "transcripts"
#: file name per export format
FILE_NAMES = {
    "json": "transcript.json",
    "srt": "transcript.srt",
    "vtt": "transcript.vtt",
    "txt": "transcript.txt",
    "court": "court-transcript.txt",
}


async def build_transcript(
    store: TranscriptStore, hearings: HearingService, hearing: Hearing
) -> Transcript:
    """The hearing's transcript as the exports read it (current texts, revisions, notes, breaks)."""
    transcript = Transcript(
        title=f"{hearing.case_no} {hearing.title}".strip(), started_ms=hearing.opened_ms
    )
    for stored in await store.segments(hearing.id):
        transcript.segments.append(
            Segment(
                id=f"s{stored.id}",
                seat=stored.seat,
                speaker=stored.seat,
                start_ms=stored.start_us // 1000,
                end_ms=stored.end_us // 1000,
                machine_text=stored.machine_text,
                confidence=stored.confidence,
                words=[
                    TranscriptWord(
                        str(w["text"]),
                        int(w["start_us"]) // 1000,
                        int(w["end_us"]) // 1000,
                        float(w["conf"]),
                    )
                    for w in stored.words
                ],
                revisions=[Revision(r.text, r.by, r.at_ms) for r in stored.revisions],
            )
        )
    for note in await store.notes(hearing.id):
        transcript.notes.append(Note(note.ts_ms, note.author, note.text))
    for start, end, reason in await hearings.recesses(hearing.id):
        transcript.recesses.append(Recess(start, end if end is not None else start, reason))
    return transcript


class RecordWriter:
    """Writes a hearing's transcript files before its seal (``HearingService.prepare_seal``)."""

    def __init__(
        self, store: TranscriptStore, hearings: HearingService, data_dir: Path, timezone: str
    ) -> None:
        self.store = store
        self.hearings = hearings
        self.folder = data_dir / TRANSCRIPTS
        self.timezone = timezone

    async def __call__(self, hearing: Hearing) -> list[Path]:
        """Render every format into ``transcripts/<hearing>/``; the paths written."""
        transcript = await build_transcript(self.store, self.hearings, hearing)
        texts = {fmt: render(transcript, fmt, tz=self.timezone) for fmt in FORMATS}
        return await asyncio.to_thread(self._write, hearing.id, texts)

    def _write(self, hearing_id: str, texts: dict[str, str]) -> list[Path]:
        folder = self.folder / hearing_id
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for fmt, text in texts.items():
            path = folder / FILE_NAMES[fmt]
            tmp = path.with_name(path.name + ".tmp")
            with tmp.open("w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(path)
            written.append(path)
        return written
