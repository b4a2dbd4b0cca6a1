"""A ChannelStream whose feeding task is cancelled mid-decode (the hub stopping) must not let
``close()`` flush the recognizer while the decode still runs in its thread: a Vosk recognizer
used by two threads at once aborts the whole process (seen in ``courthub demo``)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from transcription.engine import Final, Recognizer
from transcription.stream import ChannelStream


class OneThreadRecognizer:
    """Slow ``accept``; records any call made while another one is still running."""

    def __init__(self, started: threading.Event, release: threading.Event) -> None:
        self.started, self.release = started, release
        self.busy = threading.Lock()
        self.overlaps: list[str] = []
        self.calls: list[str] = []

    def _enter(self, name: str) -> None:
        if not self.busy.acquire(blocking=False):
            self.overlaps.append(name)
            self.busy.acquire()
        self.calls.append(name)

    def warm_up(self) -> None:
        pass  # nothing to warm; not recorded in calls

    def accept(self, pcm: bytes) -> bool:
        self._enter("accept")
        try:
            self.started.set()
            assert self.release.wait(10)
            return False
        finally:
            self.busy.release()

    def partial(self) -> str:
        return ""

    def final(self) -> Final | None:
        return None

    def flush(self) -> Final | None:
        self._enter("flush")
        self.busy.release()
        return Final(text="끝", words=(), confidence=1.0)


class OneRecognizerEngine:
    def __init__(self, rec: OneThreadRecognizer) -> None:
        self.rec = rec

    @property
    def sample_rate(self) -> int:
        return 16_000

    def new_recognizer(self, *, phrases: Sequence[str] | None = None) -> Recognizer:
        return self.rec


async def test_close_after_a_cancelled_feed_waits_for_the_decode_to_end() -> None:
    started, release = threading.Event(), threading.Event()
    rec = OneThreadRecognizer(started, release)
    with ThreadPoolExecutor(2) as pool:
        stream = ChannelStream(OneRecognizerEngine(rec), "judge", executor=pool)
        feeding = asyncio.create_task(stream.feed(bytes(1280), 1_760_000_000_000_000))
        assert await asyncio.to_thread(started.wait, 10)
        feeding.cancel()
        closing = asyncio.create_task(stream.close())
        await asyncio.sleep(0.05)  # give a wrong close the chance to flush now
        assert not closing.done() and rec.calls == ["accept"]
        release.set()
        finals = await asyncio.wait_for(closing, 10)
        assert feeding.cancelled()
    assert rec.overlaps == []
    assert rec.calls == ["accept", "flush"]
    assert [f.text for f in finals] == ["끝"]
