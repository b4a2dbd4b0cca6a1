"""Sealing a hearing writes its checked transcript (corrections, notes, breaks) in every export
format, and the seal's manifest hashes those files: the text the clerk signed is what is kept."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from hub.hearing_record import FILE_NAMES, RecordWriter, build_transcript
from hub.hearings import HearingService
from hub.recording_index import DB_FILE, RecordingIndex
from hub.transcript_store import TranscriptStore
from transcription.stream import FinalSegment, Word


def final(seat: str, text: str, start_s: float, end_s: float, base_us: int) -> FinalSegment:
    start, end = base_us + int(start_s * 1e6), base_us + int(end_s * 1e6)
    return FinalSegment(seat, text, start, end, (Word(text, start, end, 0.9),), 0.9)


async def test_seal_writes_the_checked_transcript_and_the_manifest_hashes_it(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "hub"
    index = await RecordingIndex.open(data_dir / DB_FILE, data_dir / "recordings")
    hearings = await HearingService.open(data_dir, index)
    store = await TranscriptStore.open(data_dir)
    try:
        hearings.prepare_seal = RecordWriter(store, hearings, data_dir, "Asia/Shanghai")
        hearing = await hearings.open_hearing(
            title="张三诉李四", case_no="(2026)民初1号", venues=["court-1"], by="judge1"
        )
        base = hearing.opened_ms * 1000
        first = await store.add_final(hearing.id, "t-judge", final("judge", "개정", 1, 2, base))
        await store.add_final(hearing.id, "t-plaintiff", final("plaintiff", "네", 3, 4, base))
        await store.revise(first, "现在开庭", by="clerk1")
        await store.add_note(
            hearing.id, ts_ms=hearing.opened_ms + 2500, author="judge1", text="原告到庭"
        )
        await hearings.recess(hearing.id, reason="recess", by="judge1")
        await hearings.resume(hearing.id, by="judge1")
        await hearings.close_hearing(hearing.id, by="judge1")

        transcript = await build_transcript(store, hearings, hearing)
        assert [s.text for s in transcript.ordered()] == ["现在开庭", "네"]
        assert transcript.segments[0].machine_text == "개정"  # the machine text is kept
        assert len(transcript.recesses) == 1 and transcript.notes[0].text == "原告到庭"

        await hearings.seal(hearing.id, by="clerk1")
        folder = data_dir / "transcripts" / hearing.id
        files = {name: (folder / name) for name in FILE_NAMES.values()}
        assert all(p.is_file() for p in files.values())
        court = files["court-transcript.txt"].read_text(encoding="utf-8")
        assert "现在开庭" in court and "개정" not in court and "休庭" in court
        srt = files["transcript.srt"].read_text(encoding="utf-8")
        assert "00:00:01,000 --> 00:00:02,000" in srt and "现在开庭" in srt
        assert "<v judge>" in files["transcript.vtt"].read_text(encoding="utf-8")
        # the manifest lists every transcript file with its hash
        manifest = json.loads(hearings.manifest_path(hearing.id).read_text(encoding="utf-8"))
        listed = {Path(t["path"]).name: t["sha256"] for t in manifest["transcripts"]}
        assert listed == {
            name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in files.items()
        }
    finally:
        await store.close()
        await hearings.close()
        await index.close()
