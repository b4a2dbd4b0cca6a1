"""Per-seat microphone capture: one multi-channel input (one channel per seat) as audio frames.

A courtroom's seat microphones arrive at the edge PC as one multi-channel input (the audio
DSP's USB or Dante interface). This driver reads it with PyAudio in a thread of its own (never
on the event loop), cuts it into frames of ``frame_ms``, stamps each frame and hands it, encoded
with :func:`protocol.audio.encode_frame`, to :meth:`DeviceSink.audio`; the agent publishes it
on ``{agent}/{device}/audio`` at QoS 0.

Frame numbering and time:

* ``seq`` counts frames of this driver instance from 0 and keeps counting across stream
  restarts; an agent restart starts again at 0 (consumers treat a lower seq as a new stream).
* The capture time of a frame's first sample is ``anchor + samples counted / sample_rate`` in
  UTC microseconds; the anchor is taken when the stream's first frame arrives (that time minus
  one frame) and again after every stream restart. Read times jitter by milliseconds; the
  sample count does not, so consecutive frames are exactly one frame duration apart.
* A source that delivers faster than real time (the ALSA ``file`` plugin, a WAV source) is
  paced to the wall clock on that absolute schedule, so timestamps never run into the future
  and a finished input cannot make the thread spin. A real input that drifts ahead of the
  system clock (its read blocked, yet its samples are ahead) or falls far behind (lost samples,
  a suspended machine, a stepped clock) is re-anchored to now; ``reanchors`` counts that.

Telemetry every ``level_interval_s``: per seat ``level_dbfs_{seat}`` (RMS), ``peak_dbfs_{seat}``
and ``clipped_{seat}`` (samples at full scale in the interval), plus ``frames_total`` and
``reanchors``. dBFS is relative to a full-scale square wave (a full-scale sine is -3.01 dBFS);
silence is reported as -120 dBFS.

Sources (option ``source``): ``"pyaudio"`` (default) or ``"wav:/a.wav,/b.wav,..."``, one mono
16-bit WAV per seat in channel order, replayed (looped unless ``loop = false``) in real time —
for commissioning a courtroom without people in it, and for the simulated court, whose agent
processes run this very driver without a sound card.

Faults: no such device or no input → ``offline`` with the reason; a stream that cannot be
opened or fails while reading → ``fault``; either retries with backoff (1 s doubling to
``max_backoff_s``). The driver never raises for device trouble.

Behaviour of the ALSA ``file`` plugin (used by the tests): it delivers its ``infile`` as fast as
it is read, and after the end of the file it keeps returning stale buffer contents without any
error, so the end cannot be detected through PyAudio; pacing keeps that harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
import wave
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Final, Protocol

import msgspec
import numpy as np
import numpy.typing as npt

from device_drivers.base import (
    DeviceDescription,
    DeviceDriver,
    DeviceSink,
    DriverConfigError,
    UnknownCommand,
)
from protocol.audio import AudioFrame, encode_frame
from protocol.messages import DeviceStatus

log = logging.getLogger(__name__)

CAPABILITIES: Final = ("levels",)
#: Level reported for digital silence (log10(0) has no value).
SILENCE_DBFS: Final = -120.0
FULL_SCALE: Final = 32768.0
#: Samples whose magnitude reaches this are counted as clipped.
CLIP_LEVEL: Final = 32767
#: Behind the wall clock by more than this: samples were lost; take a new anchor.
MAX_LAG_US: Final = 2_000_000
#: Ahead of the wall clock by more than this: the clock stepped back; take a new anchor.
MAX_LEAD_US: Final = 2_000_000
#: A read that waited at least this share of a frame came from a real-time device.
BLOCKED_SHARE: Final = 0.25
#: How long ``run`` waits for the capture thread after cancellation.
THREAD_JOIN_S: Final = 2.0


class MicrophoneOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[[devices]]`` options of a ``microphone`` device."""

    #: PortAudio device index; default: the default input (or ``device_name``)
    device_index: Annotated[int, msgspec.Meta(ge=0)] | None = None
    #: input device chosen by name (exact, else case-insensitive substring)
    device_name: str | None = None
    channels: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    #: seat names in channel order (default ``ch1``..``chN``)
    seats: list[Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9_]{1,32}$")]] = []
    sample_rate: Annotated[int, msgspec.Meta(ge=8000, le=48000)] = 16000
    frame_ms: Annotated[int, msgspec.Meta(ge=20, le=100)] = 40
    level_interval_s: Annotated[float, msgspec.Meta(ge=0.1, le=3600)] = 1.0
    #: ``"pyaudio"`` or ``"wav:/path/seat1.wav,/path/seat2.wav"``
    source: str = "pyaudio"
    #: WAV source: start again at the end (else the device goes offline)
    loop: bool = True
    max_backoff_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    model: str = ""


class CaptureError(Exception):
    """The input cannot deliver; ``status`` is offline (absent) or fault (broken)."""

    def __init__(self, status: DeviceStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class CaptureEnded(Exception):
    """A finite source (a WAV source without ``loop``) has delivered everything."""


class CaptureSource(Protocol):
    """A blocking PCM input; every call happens on the capture thread."""

    def open(self) -> None:
        """Open the input; raises :class:`CaptureError`."""

    def read(self, frames: int) -> bytes:
        """Exactly ``frames`` interleaved s16le frames; raises CaptureError / CaptureEnded."""

    def close(self) -> None:
        """Release the input; never raises."""


class PyAudioSource:
    """The sound card (or ALSA PCM) through PyAudio/PortAudio, 16-bit interleaved."""

    def __init__(self, options: MicrophoneOptions, frames_per_buffer: int) -> None:
        self._options = options
        self._frames_per_buffer = frames_per_buffer
        self._pa: Any = None
        self._stream: Any = None
        self.device_label = ""

    def open(self) -> None:
        """Initialise PortAudio (which re-enumerates devices) and open the input stream."""
        try:
            import pyaudio  # type: ignore[import-untyped]  # no stubs published
        except ImportError as exc:  # pragma: no cover - a broken install
            raise CaptureError(DeviceStatus.FAULT, f"PyAudio is not installed: {exc}") from None
        self._pa = pyaudio.PyAudio()
        index = self._find_device()
        opts = self._options
        try:
            self._stream = self._pa.open(
                format=pyaudio.paInt16,
                channels=opts.channels,
                rate=opts.sample_rate,
                input=True,
                input_device_index=index,
                frames_per_buffer=self._frames_per_buffer,
            )
        except (OSError, ValueError) as exc:
            self.close()
            raise CaptureError(
                DeviceStatus.FAULT,
                f"cannot open {self.device_label} with {opts.channels} channels at "
                f"{opts.sample_rate} Hz: {exc}",
            ) from None

    def _find_device(self) -> int:
        opts = self._options
        pa = self._pa
        inputs = {}
        for i in range(pa.get_device_count()):
            info = pa.get_device_info_by_index(i)
            if int(info.get("maxInputChannels", 0)) > 0:
                inputs[i] = str(info.get("name", ""))
        if not inputs:
            self.close()
            raise CaptureError(DeviceStatus.OFFLINE, "no audio input device")
        index: int | None
        if opts.device_index is not None:
            index = opts.device_index
            if index not in inputs:
                self.close()
                raise CaptureError(
                    DeviceStatus.OFFLINE, f"no input device {index} (have: {_names(inputs)})"
                )
        elif opts.device_name is not None:
            index = _match_name(opts.device_name, inputs)
            if index is None:
                self.close()
                raise CaptureError(
                    DeviceStatus.OFFLINE,
                    f"no input device named {opts.device_name!r} (have: {_names(inputs)})",
                )
        else:
            try:
                index = int(pa.get_default_input_device_info()["index"])
            except (OSError, KeyError):
                self.close()
                raise CaptureError(DeviceStatus.OFFLINE, "no default input device") from None
        assert index is not None
        self.device_label = f"input {index} {inputs.get(index, '?')!r}"
        return index

    def read(self, frames: int) -> bytes:
        """Blocks until ``frames`` are there; an overflow loses samples (see re-anchoring)."""
        try:
            data: bytes = self._stream.read(frames, exception_on_overflow=False)
        except OSError as exc:
            raise CaptureError(DeviceStatus.FAULT, f"stream error: {exc}") from None
        return data

    def close(self) -> None:
        """Close the stream and terminate PortAudio."""
        stream, self._stream = self._stream, None
        pa, self._pa = self._pa, None
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.stop_stream()
            with contextlib.suppress(Exception):
                stream.close()
        if pa is not None:
            with contextlib.suppress(Exception):
                pa.terminate()


def _names(inputs: Mapping[int, str]) -> str:
    return ", ".join(f"{i}:{name}" for i, name in inputs.items())[:300]


def _match_name(wanted: str, inputs: Mapping[int, str]) -> int | None:
    for index, name in inputs.items():
        if name == wanted:
            return index
    for index, name in inputs.items():
        if wanted.lower() in name.lower():
            return index
    return None


class WavSource:
    """One mono 16-bit WAV per channel, interleaved; as fast as it is read (the driver paces)."""

    def __init__(self, paths: Sequence[str], sample_rate: int, *, loop: bool = True) -> None:
        self._paths = list(paths)
        self._rate = sample_rate
        self._loop = loop
        self._pcm: npt.NDArray[np.int16] = np.zeros((0, len(paths)), dtype=np.int16)
        self._pos = 0

    def open(self) -> None:
        """Read the files; they must be mono, 16-bit, at the stream's sample rate."""
        tracks = [self._load(path) for path in self._paths]
        length = max(len(t) for t in tracks)
        if length == 0:
            raise CaptureError(DeviceStatus.FAULT, "WAV files hold no samples")
        pcm = np.zeros((length, len(tracks)), dtype=np.int16)
        for channel, track in enumerate(tracks):
            pcm[: len(track), channel] = track  # shorter seats are silent at the end
        self._pcm = pcm
        self._pos = 0

    def _load(self, path: str) -> npt.NDArray[np.int16]:
        try:
            with wave.open(path, "rb") as wav:
                channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
                data = wav.readframes(wav.getnframes())
        except FileNotFoundError:
            raise CaptureError(DeviceStatus.OFFLINE, f"no WAV file {path}") from None
        except (OSError, EOFError, wave.Error) as exc:
            raise CaptureError(DeviceStatus.FAULT, f"bad WAV file {path}: {exc}") from None
        if channels != 1 or width != 2 or rate != self._rate:
            raise CaptureError(
                DeviceStatus.FAULT,
                f"{path}: {channels} ch, {8 * width} bit, {rate} Hz; need mono 16 bit "
                f"{self._rate} Hz",
            )
        return np.frombuffer(data, dtype="<i2").astype(np.int16)

    def read(self, frames: int) -> bytes:
        """The next ``frames``; wraps around when looping, else :class:`CaptureEnded`."""
        total = len(self._pcm)
        if not self._loop and self._pos >= total:
            raise CaptureEnded()
        index = (self._pos + np.arange(frames)) % total if self._loop else None
        if index is None:
            chunk = self._pcm[self._pos : self._pos + frames]
            if len(chunk) < frames:  # the last frame is padded with silence
                pad = np.zeros((frames - len(chunk), self._pcm.shape[1]), dtype=np.int16)
                chunk = np.concatenate([chunk, pad])
        else:
            chunk = self._pcm[index]
        self._pos += frames
        if self._loop:
            self._pos %= total
        return chunk.astype("<i2").tobytes()

    def close(self) -> None:
        """Nothing to release."""


def parse_source(source: str) -> list[str] | None:
    """None for ``pyaudio``; the WAV paths of ``wav:a.wav,b.wav``; ValueError otherwise."""
    if source == "pyaudio":
        return None
    if source.startswith("wav:"):
        paths = [p.strip() for p in source[4:].split(",") if p.strip()]
        if paths:
            return paths
    raise ValueError(f"source must be 'pyaudio' or 'wav:FILE,FILE,...', got {source!r}")


@dataclass
class FrameClock:
    """Capture timestamps from a sample count (see the module docstring); one per stream."""

    sample_rate: int
    anchor_us: int | None = None
    samples: int = 0  #: samples per channel counted since the anchor
    reanchors: int = 0

    def stamp(self, frames: int, now_us: int, blocked: bool) -> tuple[int, float]:
        """``(capture ts of the first sample, seconds to wait before handing it on)``.

        Called right after a read of ``frames`` returned at ``now_us``; ``blocked`` says the
        read waited for the device (a real-time input).
        """
        if self.anchor_us is None:
            self._anchor(now_us, frames)
        start = self._at(self.samples)
        end = self._at(self.samples + frames)
        lead = end - now_us
        if lead < -MAX_LAG_US or lead > MAX_LEAD_US or (blocked and lead > self._frame_us(frames)):
            self.reanchors += 1
            log.info("capture clock re-anchored lead_us=%d blocked=%s", lead, blocked)
            self._anchor(now_us, frames)
            start, end, lead = self._at(0), self._at(frames), 0
        self.samples += frames
        return start, max(0.0, lead / 1e6) if not blocked else 0.0

    def _anchor(self, now_us: int, frames: int) -> None:
        # the first sample of the frame that just arrived was captured one frame ago
        self.anchor_us = now_us - self._frame_us(frames)
        self.samples = 0

    def _frame_us(self, frames: int) -> int:
        return frames * 1_000_000 // self.sample_rate

    def _at(self, samples: int) -> int:
        assert self.anchor_us is not None
        return self.anchor_us + samples * 1_000_000 // self.sample_rate


class LevelMeter:
    """Per-channel RMS, peak and clipped-sample count over an interval."""

    def __init__(self, seats: Sequence[str]) -> None:
        self._seats = list(seats)
        self._reset()

    def _reset(self) -> None:
        n = len(self._seats)
        self._sum_sq = np.zeros(n, dtype=np.float64)
        self._peak = np.zeros(n, dtype=np.int64)
        self._clipped = np.zeros(n, dtype=np.int64)
        self._count = 0

    def add(self, pcm: bytes) -> None:
        """Account one interleaved s16le frame."""
        samples = np.frombuffer(pcm, dtype="<i2").reshape(-1, len(self._seats)).astype(np.int64)
        magnitude = np.abs(samples)
        self._sum_sq += np.sum(samples * samples, axis=0, dtype=np.float64)
        self._peak = np.maximum(self._peak, magnitude.max(axis=0))
        self._clipped += (magnitude >= CLIP_LEVEL).sum(axis=0)
        self._count += len(samples)

    def metrics(self) -> dict[str, float]:
        """The interval's figures per seat; starts a new interval."""
        out: dict[str, float] = {}
        count = max(self._count, 1)
        for i, seat in enumerate(self._seats):
            rms = math.sqrt(self._sum_sq[i] / count)
            out[f"level_dbfs_{seat}"] = _dbfs(rms)
            out[f"peak_dbfs_{seat}"] = _dbfs(float(self._peak[i]))
            out[f"clipped_{seat}"] = float(self._clipped[i])
        self._reset()
        return out


def _dbfs(value: float) -> float:
    if value <= 0:
        return SILENCE_DBFS
    return round(max(SILENCE_DBFS, 20 * math.log10(value / FULL_SCALE)), 2)


class MicrophoneDriver(DeviceDriver[MicrophoneOptions]):
    """A multi-channel seat microphone input (see the module docstring)."""

    name: ClassVar[str] = "microphone"
    Options: ClassVar[type[msgspec.Struct]] = MicrophoneOptions

    def __init__(self, device_id: str, options: Mapping[str, Any]) -> None:
        super().__init__(device_id, options)
        opts = self.options
        seats = list(opts.seats) or [f"ch{i + 1}" for i in range(opts.channels)]
        if len(seats) != opts.channels:
            raise DriverConfigError(
                f"device {device_id!r} (microphone): {len(seats)} seats for "
                f"{opts.channels} channels"
            )
        if len(set(seats)) != len(seats):
            raise DriverConfigError(f"device {device_id!r} (microphone): seat names repeat")
        try:
            self._wavs = parse_source(opts.source)
        except ValueError as exc:
            raise DriverConfigError(f"device {device_id!r} (microphone): {exc}") from None
        if self._wavs is not None and len(self._wavs) != opts.channels:
            raise DriverConfigError(
                f"device {device_id!r} (microphone): {len(self._wavs)} WAV files for "
                f"{opts.channels} channels"
            )
        self.seats = seats
        self.frame_samples = opts.sample_rate * opts.frame_ms // 1000
        self._description = DeviceDescription(
            kind="microphone",
            model=opts.model or ("wav-file" if self._wavs else "pyaudio"),
            capabilities=CAPABILITIES,
            heartbeat_s=opts.level_interval_s,
            extra={
                "seats": seats,
                "channels": opts.channels,
                "sample_rate": opts.sample_rate,
                "frame_ms": opts.frame_ms,
            },
        )
        self._seq = 0
        self._frames_total = 0
        self._reanchors = 0
        self._last_levels: dict[str, float] = {}
        self._state: tuple[DeviceStatus, str] | None = None
        self.failures = 0  #: consecutive failed stream sessions

    @property
    def description(self) -> DeviceDescription:
        """Kind ``microphone``; ``extra`` lists the seats in channel order."""
        return self._description

    def make_source(self) -> CaptureSource:
        """The input named by the ``source`` option (a new one per stream session)."""
        if self._wavs is not None:
            return WavSource(self._wavs, self.options.sample_rate, loop=self.options.loop)
        return PyAudioSource(self.options, self.frame_samples)

    # --- running -------------------------------------------------------------------------
    async def run(self, sink: DeviceSink) -> None:
        """Capture until cancelled; a failed stream is reopened with backoff."""
        loop = asyncio.get_running_loop()
        while True:
            stop = threading.Event()
            done: asyncio.Future[CaptureError | CaptureEnded | None] = loop.create_future()
            thread = threading.Thread(
                target=self._capture_thread,
                args=(sink, stop, loop, done),
                name=f"mic-{self.device_id}",
                daemon=True,
            )
            thread.start()
            try:
                outcome = await asyncio.shield(done)
            except asyncio.CancelledError:
                stop.set()
                await asyncio.to_thread(thread.join, THREAD_JOIN_S)
                raise
            if isinstance(outcome, CaptureEnded):
                self._report_state(sink, DeviceStatus.OFFLINE, "WAV source ended")
                await asyncio.Event().wait()  # nothing more will come; wait to be cancelled
                continue
            error = outcome or CaptureError(DeviceStatus.FAULT, "capture stopped")
            self.failures += 1
            self._report_state(sink, error.status, error.reason)
            delay = min(2.0 ** (self.failures - 1), self.options.max_backoff_s)
            log.warning(
                "microphone capture failed device=%s reason=%r retry_in_s=%.1f",
                self.device_id,
                error.reason,
                delay,
            )
            await asyncio.sleep(delay)

    def _capture_thread(
        self,
        sink: DeviceSink,
        stop: threading.Event,
        loop: asyncio.AbstractEventLoop,
        done: asyncio.Future[CaptureError | CaptureEnded | None],
    ) -> None:
        outcome: CaptureError | CaptureEnded | None = None
        try:
            self._capture(sink, stop)
        except (CaptureError, CaptureEnded) as exc:
            outcome = exc
        except Exception as exc:  # a PortAudio surprise must not kill the driver silently
            log.exception("microphone capture crashed device=%s", self.device_id)
            outcome = CaptureError(DeviceStatus.FAULT, f"capture crashed: {exc!r}"[:300])

        def settle() -> None:
            if not done.done():
                done.set_result(outcome)

        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
            loop.call_soon_threadsafe(settle)

    def _capture(self, sink: DeviceSink, stop: threading.Event) -> None:
        """One stream session: open, then read/stamp/encode/hand on until stopped or broken."""
        source = self.make_source()
        source.open()
        try:
            self._stream(source, sink, stop)
        finally:
            source.close()

    def _stream(self, source: CaptureSource, sink: DeviceSink, stop: threading.Event) -> None:
        opts = self.options
        clock = FrameClock(opts.sample_rate)
        meter = LevelMeter(self.seats)
        n = self.frame_samples
        frame_s = n / opts.sample_rate
        expected = n * opts.channels * 2
        next_levels = time.monotonic() + opts.level_interval_s
        first = True
        while not stop.is_set():
            started = time.monotonic()
            pcm = source.read(n)
            blocked = time.monotonic() - started >= BLOCKED_SHARE * frame_s
            if len(pcm) != expected:
                raise CaptureError(
                    DeviceStatus.FAULT, f"short read: {len(pcm)} bytes instead of {expected}"
                )
            ts_us, wait_s = clock.stamp(n, time.time_ns() // 1000, blocked)
            if wait_s and stop.wait(wait_s):
                return
            if first:
                first = False
                self.failures = 0
                self._report_state(sink, DeviceStatus.ONLINE)
            frame = AudioFrame(
                seq=self._seq,
                capture_ts_us=ts_us,
                sample_rate=opts.sample_rate,
                channels=opts.channels,
                pcm=pcm,
            )
            sink.audio(encode_frame(frame))
            self._seq += 1
            self._frames_total += 1
            self._reanchors = clock.reanchors
            meter.add(pcm)
            if time.monotonic() >= next_levels:
                next_levels += opts.level_interval_s
                self._emit_levels(sink, meter)

    def _emit_levels(self, sink: DeviceSink, meter: LevelMeter) -> None:
        metrics = meter.metrics()
        metrics["frames_total"] = float(self._frames_total)
        metrics["reanchors"] = float(self._reanchors)
        self._last_levels = metrics
        sink.telemetry(metrics)

    def _report_state(self, sink: DeviceSink, state: DeviceStatus, reason: str = "") -> None:
        if self._state == (state, reason):
            return
        self._state = (state, reason)
        log.info("microphone state device=%s state=%s reason=%r", self.device_id, state, reason)
        sink.set_state(state, reason)

    # --- commands ------------------------------------------------------------------------
    async def execute(self, name: str, args: Mapping[str, Any]) -> Any:
        """``levels``: the last level telemetry and the frame counters."""
        if name == "levels":
            return {"levels": dict(self._last_levels), "seq": self._seq, "seats": self.seats}
        raise UnknownCommand(f"microphone has no command {name!r} (has: levels)")
