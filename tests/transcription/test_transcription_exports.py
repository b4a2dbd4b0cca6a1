"""Transcript model and exports on a hand-built hearing (times in Asia/Shanghai, UTC+8)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from transcription.exports import render, to_court_transcript, to_srt, to_text, to_webvtt
from transcription.stream import FinalSegment, Word
from transcription.transcript import Transcript, TranscriptError

TZ = "Asia/Shanghai"
START = int(datetime(2026, 3, 2, 2, 0, 0, tzinfo=UTC).timestamp() * 1000)  # 10:00:00 local


def seg(seat: str, start_s: float, end_s: float, text: str) -> FinalSegment:
    s_us, e_us = START * 1000 + int(start_s * 1e6), START * 1000 + int(end_s * 1e6)
    return FinalSegment(seat, text, s_us, e_us, (Word(text, s_us, e_us, 0.9),), 0.9)


@pytest.fixture
def hearing() -> Transcript:
    t = Transcript(started_ms=START)
    t.add_final(seg("审判长", 1.0, 3.5, "现在开庭"))
    t.add_final(seg("原告", 4.0, 6.25, "原告 <到庭> & 在场"))
    t.add_final(seg("被告", 1860.0, 1862.0, "我有异议"), speaker="被告代理人")
    t.revise("s1", "现在开庭。", by="clerk-li", at_ms=START + 10_000)
    t.add_note(START + 5_000, "书记员", "原告迟到两分钟")
    t.add_recess(START + 1_860_000 + 60_000, START + 2_700_000, "合议")
    return t


def test_revisions_keep_machine_text_and_json_round_trips(hearing: Transcript) -> None:
    s1 = hearing.segment("s1")
    assert s1.machine_text == "现在开庭" and s1.text == "现在开庭。"
    assert s1.revisions[0].by == "clerk-li"
    back = Transcript.from_json(hearing.to_json())
    assert back == hearing and back.segment("s1").machine_text == "现在开庭"
    with pytest.raises(TranscriptError, match="no segment"):
        hearing.revise("s9", "x", by="a", at_ms=0)
    with pytest.raises(TranscriptError, match="bad transcript JSON"):
        Transcript.from_json(b'{"segments": [{"id": 1}]}')
    with pytest.raises(TranscriptError, match="ends"):
        hearing.add_recess(10, 5)


def test_srt(hearing: Transcript) -> None:
    assert to_srt(hearing) == (
        "1\n00:00:01,000 --> 00:00:03,500\n审判长: 现在开庭。\n\n"
        "2\n00:00:04,000 --> 00:00:06,250\n原告: 原告 <到庭> & 在场\n\n"
        "3\n00:31:00,000 --> 00:31:02,000\n被告代理人: 我有异议\n"
    )


def test_webvtt_has_voice_tags_and_escapes(hearing: Transcript) -> None:
    assert to_webvtt(hearing) == (
        "WEBVTT\n\n"
        "00:00:01.000 --> 00:00:03.500\n<v 审判长>现在开庭。\n\n"
        "00:00:04.000 --> 00:00:06.250\n<v 原告>原告 &lt;到庭&gt; &amp; 在场\n\n"
        "00:31:00.000 --> 00:31:02.000\n<v 被告代理人>我有异议\n"
    )


def test_text_in_local_time_with_notes_and_recess(hearing: Transcript) -> None:
    assert to_text(hearing, tz=TZ) == (
        "[10:00:01] 审判长: 现在开庭。\n"
        "[10:00:04] 原告: 原告 <到庭> & 在场\n"
        "〔备注 10:00:05 书记员〕原告迟到两分钟\n"
        "[10:31:00] 被告代理人: 我有异议\n"
        "——休庭 10:32–10:45（合议）——\n"
    )
    assert render(hearing, "txt", tz="UTC").startswith("[02:00:01] 审判长")


def test_court_layout_pages_lines_and_wrapping(hearing: Transcript) -> None:
    hearing.title = "（2026）民初 12 号"
    hearing.add_final(seg("审判长", 3000.0, 3010.0, "继续开庭" * 8))  # 64 columns: wraps
    text = to_court_transcript(hearing, tz=TZ, lines_per_page=5, width=40)
    assert (
        text
        == (
            "（2026）民初 12 号    第 1 页 / 共 3 页\n\n"
            "1  审判长  10:00:01–10:00:03\n"
            "2      现在开庭。\n"
            "3  原告  10:00:04–10:00:06\n"
            "4      原告 <到庭> & 在场\n"
            "5  〔备注 10:00:05 书记员〕原告迟到两分钟\n"
            "\f"
            "（2026）民初 12 号    第 2 页 / 共 3 页\n\n"
            "1  被告代理人  10:31:00–10:31:02\n"
            "2      我有异议\n"
            "3  ——休庭 10:32–10:45（合议）——\n"
            "4  审判长  10:50:00–10:50:10\n"
            "5      " + "继续开庭" * 4 + "继续\n"  # 36 columns = 18 CJK characters
            "\f"
            "（2026）民初 12 号    第 3 页 / 共 3 页\n\n"
            "1      开庭" + "继续开庭" * 3 + "\n"
        )
    )


def test_unknown_format_is_refused(hearing: Transcript) -> None:
    with pytest.raises(ValueError, match="choose one of srt, vtt, txt, json, court"):
        render(hearing, "doc")
