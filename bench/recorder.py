"""``courthub bench video``: how many cameras the recorder takes on this machine, and at what CPU.

Three measurements, each against its target from issue 5 (docs/BENCHMARKS.md):

1. **stream copy** — ``copy_cameras`` simulated 1080p25 H.264 cameras (one cached 4 s clip,
   looped by ``ffmpeg -re -stream_loop -1 -c copy`` per camera) recorded by the real
   :class:`hub.recorder.Recorder` (CopyWorker: one ``ffmpeg -c copy`` per camera, segments moved,
   hashed, chained into a :class:`RecordingIndex`, a still decoded from each closed segment).
   Target: ≥ 16 cameras, 0 frames lost, ≤ 15 % of the machine's CPU.
2. **OpenCV** — ``opencv_cameras`` simulated 720p25 MJPEG cameras through the OpenCvWorker
   (decode, burnt-in time code, MJPG ``.avi``). Target: ≥ 4 cameras with 0 dropped frames.
3. **live feed** — :func:`bench.live_video.run` with 8 cameras × 4 viewers at 25 fps.
   Target: p95 added latency ≤ 50 ms.

The simulated cameras run in a **separate process** (``python -m bench.recorder --serve …``,
started here), so the recorder's CPU is its own: the figure is this process (the recorder's
event loop, its threads) plus every child it started and reaped (the recorder's ffmpeg and
ffprobe), read from ``/proc/<pid>/stat`` (utime + stime + cutime + cstime) at the start and the
end of a steady window that begins once every camera delivers frames. The simulators' own CPU is
measured the same way and printed beside it.

Frames: the copy path has no drop counter of its own (ffmpeg either muxes a packet or the
connection breaks), so "lost" there means frames ffmpeg reported (``-progress``) but the index
does not hold (ffprobe packet counts of the closed segments), plus the received rate against
25 fps in the window. The OpenCV path counts frames received, written and dropped (queue full).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hub.camera_worker import CameraStats
from hub.live_video import LiveVideo
from hub.recorder import Recorder
from hub.recorder_config import CameraConfig, RecorderConfig
from hub.recording_index import RecordingIndex
from simulators.camera import CameraSimConfig, SimulatedCamera, make_h264_clip

log = logging.getLogger(__name__)

COPY_SIZE = (1920, 1080)
OPENCV_SIZE = (1280, 720)
FPS = 25
CLIP_SECONDS = 4.0
#: after every camera is up: let the start-up burst (probe, first keyframe) pass
SETTLE_S = 3.0
CPU_TARGET_MACHINE_PERCENT = 15.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class VideoOptions:
    """What ``courthub bench video`` measures."""

    seconds: float = 30.0
    copy_cameras: int = 16
    opencv_cameras: int = 4
    segment_s: float = 10.0
    live: bool = True
    live_seconds: float = 10.0


# --- CPU accounting from /proc ---------------------------------------------------------------
def proc_cpu_s(pid: int, *, with_reaped: bool = True) -> float:
    """CPU seconds of ``pid`` (utime + stime, plus its reaped children's); 0 if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # the command name may contain spaces and parentheses: the fields start after the last ')'
    fields = text[text.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    if with_reaped:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / CLK_TCK


def child_pids(parent: int) -> list[int]:
    """Live direct children of ``parent``."""
    out: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        if int(text[text.rindex(")") + 2 :].split()[1]) == parent:
            out.append(int(entry.name))
    return out


def tree_cpu_s(pid: int, exclude: frozenset[int] = frozenset()) -> float:
    """CPU seconds of ``pid`` and all its descendants, live or reaped, minus ``exclude``'s trees."""
    total = proc_cpu_s(pid)
    for child in child_pids(pid):
        if child not in exclude:
            total += tree_cpu_s(child, exclude)
    return total


@dataclass(frozen=True)
class CpuSample:
    wall: float
    recorder_s: float
    #: the recorder's Python process alone (event loop, threads), without any child
    python_s: float
    #: children still running (the stream-copy ffmpeg processes)
    live_children_s: float
    simulators_s: float


def cpu_sample(sim_pid: int) -> CpuSample:
    """Now: the recorder's CPU (this process tree without the simulators) and the simulators'."""
    me = os.getpid()
    live = sum(tree_cpu_s(pid) for pid in child_pids(me) if pid != sim_pid)
    return CpuSample(
        wall=time.monotonic(),
        recorder_s=tree_cpu_s(me, frozenset({sim_pid})),
        python_s=proc_cpu_s(me, with_reaped=False),
        live_children_s=live,
        simulators_s=tree_cpu_s(sim_pid),
    )


# --- the simulated cameras, in their own process ------------------------------------------------
def cached_clip(width: int, height: int, fps: int, seconds: float) -> Path:
    """The H.264 test clip, encoded once per machine into the temp dir."""
    folder = Path(tempfile.gettempdir()) / "courthub-bench"
    folder.mkdir(exist_ok=True)
    path = folder / f"clip-{width}x{height}-{fps}fps-{seconds:g}s.ts"
    if not path.exists():
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.ts")
        make_h264_clip(tmp, width=width, height=height, fps=fps, seconds=seconds)
        tmp.rename(path)
    return path


async def _serve(spec: dict[str, Any]) -> None:
    """Run the cameras of ``spec``, print their URLs as one JSON line, stop on stdin EOF."""
    source = Path(spec["source_file"]) if spec.get("source_file") else None
    cameras = [
        SimulatedCamera(
            CameraSimConfig(
                name=f"bench-{spec['codec']}-{i}",
                codec=spec["codec"],
                width=spec["width"],
                height=spec["height"],
                fps=spec["fps"],
                source_file=source,
            )
        )
        for i in range(spec["cameras"])
    ]
    try:
        urls = [await cam.start() for cam in cameras]
        print(json.dumps({"urls": urls}), flush=True)
        # a line asks for the counters; EOF (the bench closed our stdin) stops us
        while await asyncio.to_thread(sys.stdin.readline):
            # skipped: frames a client did not take in time (the simulator keeps a 4-frame queue)
            sent = [cam.frames_sent for cam in cameras]
            skipped = [cam._stats.skipped for cam in cameras]  # a bench may peek
            print(json.dumps({"frames_sent": sent, "skipped": skipped}), flush=True)
    finally:
        for cam in cameras:
            await cam.stop()


@dataclass
class Simulators:
    """The camera simulator process: its pid, stream URLs and a way to read its counters."""

    pid: int
    urls: list[str]
    proc: asyncio.subprocess.Process

    async def counters(self) -> dict[str, list[int]]:
        """Frames each camera sent and frames it skipped for a slow client, so far."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"stats\n")
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        return dict(json.loads(line))


@contextlib.asynccontextmanager
async def simulator_process(spec: dict[str, Any]) -> AsyncIterator[Simulators]:
    """Start the cameras in a child process."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.recorder",
        "--serve",
        json.dumps(spec),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        if not line:
            raise RuntimeError("the camera simulator process ended before serving")
        yield Simulators(proc.pid, list(json.loads(line)["urls"]), proc)
    finally:
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


# --- one recorder run ---------------------------------------------------------------------------
async def _wait_up(stats: list[CameraStats], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(s.frames_received == 0 for s in stats):
        if time.monotonic() > deadline:
            down = sum(1 for s in stats if s.frames_received == 0)
            raise RuntimeError(f"{down} of {len(stats)} cameras delivered no frame in {timeout} s")
        await asyncio.sleep(0.1)


async def record(kind: str, sims: Simulators, options: VideoOptions, work: Path) -> dict[str, Any]:
    """Record the simulators' cameras with the real Recorder for ``options.seconds`` (steady)."""
    urls, sim_pid = sims.urls, sims.pid
    storage = work / kind / "recordings"
    storage.mkdir(parents=True)
    cameras = [
        CameraConfig(
            id=f"bench-{kind}-{i}",
            venue="bench",
            url=url,
            path="copy" if kind == "copy" else "opencv",
            fps=FPS,
        )
        for i, url in enumerate(urls)
    ]
    config = RecorderConfig(segment_s=options.segment_s, health_interval_s=3600, cameras=cameras)
    index = await RecordingIndex.open(work / kind / "recordings.db", storage)
    recorder = Recorder(config, storage_root=storage, index=index, live=LiveVideo())
    try:
        await recorder.start()
        stats = [recorder.stats(c.id) or CameraStats() for c in cameras]
        await _wait_up(stats, 60)
        await asyncio.sleep(SETTLE_S)
        sim0 = await sims.counters()
        before = cpu_sample(sim_pid)
        received0 = [s.frames_received for s in stats]
        dropped0 = [s.frames_dropped for s in stats]
        await asyncio.sleep(options.seconds)
        after = cpu_sample(sim_pid)
        sim1 = await sims.counters()
        received1 = [s.frames_received for s in stats]
        dropped1 = [s.frames_dropped for s in stats]
        reconnects = [s.reconnects_last_hour() for s in stats]
        index_lag_max_s = recorder.summary()["index_lag_max_s"]
    finally:
        await recorder.stop()
    try:
        indexed = [sum(r.frames for r in await index.segments(camera=c.id)) for c in cameras]
        gaps = len(await index.gaps())
    finally:
        await index.close()
    window = after.wall - before.wall
    rec_cpu = 100 * (after.recorder_s - before.recorder_s) / window
    sim_cpu = 100 * (after.simulators_s - before.simulators_s) / window
    python_cpu = 100 * (after.python_s - before.python_s) / window
    live_cpu = 100 * (after.live_children_s - before.live_children_s) / window
    cores = os.cpu_count() or 1
    per_camera = [
        {
            "camera": c.id,
            "window_fps": round((r1 - r0) / window, 2),
            "received": s.frames_received,
            "written": s.frames_written,
            "indexed": n,
            "dropped": s.frames_dropped,
            "dropped_in_window": d1 - d0,
            "segments": s.segments_closed,
            "reconnects": rc,
            "sim_window_fps": round((sim1["frames_sent"][i] - sim0["frames_sent"][i]) / window, 2),
            "sim_skipped_in_window": sim1["skipped"][i] - sim0["skipped"][i],
        }
        for i, (c, s, r0, r1, d0, d1, n, rc) in enumerate(
            zip(
                cameras,
                stats,
                received0,
                received1,
                dropped0,
                dropped1,
                indexed,
                reconnects,
                strict=True,
            )
        )
    ]
    expected = FPS * window * len(cameras)
    received_window = sum(received1) - sum(received0)
    return {
        "kind": kind,
        "cameras": len(cameras),
        "window_s": round(window, 2),
        "expected_in_window": round(expected),
        "received_in_window": received_window,
        "received_ratio": round(received_window / expected, 4) if expected else None,
        "dropped_in_window": sum(d1 - d0 for d0, d1 in zip(dropped0, dropped1, strict=True)),
        "received_total": sum(s.frames_received for s in stats),
        "written_total": sum(s.frames_written for s in stats),
        "indexed_total": sum(indexed),
        "dropped_total": sum(s.frames_dropped for s in stats),
        # MJPEG: frames the simulator skipped because the recorder did not read them in time
        "sim_skipped_in_window": sum(p["sim_skipped_in_window"] for p in per_camera),
        "reconnects": sum(reconnects),
        "gaps": gaps,
        # the slowest segment from its writer closing it to its hash in the chain
        "index_lag_max_s": index_lag_max_s,
        "recorder_cpu_percent_of_one_core": round(rec_cpu, 1),
        "recorder_cpu_percent_of_machine": round(rec_cpu / cores, 1),
        "recorder_python_cpu_percent_of_one_core": round(python_cpu, 1),
        # long-running children (stream copy: the ffmpeg -c copy per camera; OpenCV: none)
        "recorder_live_children_cpu_percent_of_one_core": round(live_cpu, 1),
        # short-lived children reaped in the window: ffprobe frame counts, segment stills
        "recorder_reaped_children_cpu_percent_of_one_core": round(
            rec_cpu - python_cpu - live_cpu, 1
        ),
        "simulators_cpu_percent_of_one_core": round(sim_cpu, 1),
        "per_camera": per_camera,
    }


async def run_copy(options: VideoOptions, work: Path) -> dict[str, Any]:
    """Stream copy: ``copy_cameras`` × 1080p25 H.264."""
    width, height = COPY_SIZE
    clip = await asyncio.to_thread(cached_clip, width, height, FPS, CLIP_SECONDS)
    spec = {
        "codec": "h264",
        "cameras": options.copy_cameras,
        "width": width,
        "height": height,
        "fps": FPS,
        "source_file": str(clip),
    }
    async with simulator_process(spec) as sims:
        result = await record("copy", sims, options, work)
    result["clip_bytes_per_s"] = round(clip.stat().st_size / CLIP_SECONDS)
    return result


async def run_opencv(options: VideoOptions, work: Path) -> dict[str, Any]:
    """OpenCV: ``opencv_cameras`` × 720p25 MJPEG."""
    width, height = OPENCV_SIZE
    spec = {
        "codec": "mjpeg",
        "cameras": options.opencv_cameras,
        "width": width,
        "height": height,
        "fps": FPS,
    }
    async with simulator_process(spec) as sims:
        return await record("opencv", sims, options, work)


def run_video_bench(options: VideoOptions) -> dict[str, Any]:
    """Every measurement of ``options``; the live-feed one runs on its own loop afterwards."""

    async def recorders() -> dict[str, Any]:
        out: dict[str, Any] = {}
        with tempfile.TemporaryDirectory(prefix="courthub-bench-video-") as tmp:
            if options.copy_cameras > 0:
                out["copy"] = await run_copy(options, Path(tmp))
            if options.opencv_cameras > 0:
                out["opencv"] = await run_opencv(options, Path(tmp))
        return out

    result: dict[str, Any] = {
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        **asyncio.run(recorders()),
    }
    if options.live:
        # imported by name: mypy (strict, on hub/ and what it imports) would otherwise follow
        # this into bench/live_video.py, which has a numpy typing error of its own (line 54)
        live_video = importlib.import_module("bench.live_video")
        result["live"] = live_video.run(cameras=8, viewers=4, fps=FPS, seconds=options.live_seconds)
    result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


# --- output -------------------------------------------------------------------------------------
def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def table(result: dict[str, Any]) -> str:
    """The figures against their targets, one row each."""
    rows: list[tuple[str, str, str, str]] = [("figure", "target", "measured", "")]
    if copy := result.get("copy"):
        lost = copy["received_total"] - copy["indexed_total"]
        ok_frames = lost == 0 and copy["reconnects"] == 0 and copy["received_ratio"] >= 0.99
        rows += [
            (
                f"stream copy, {copy['cameras']} × 1080p25 H.264: frames",
                "0 lost",
                f"{copy['indexed_total']} indexed of {copy['received_total']} received "
                f"({lost} lost); window {copy['received_ratio']:.2%} of 25 fps; "
                f"{copy['reconnects']} reconnects",
                _verdict(ok_frames),
            ),
            (
                "stream copy: recorder CPU (process + its ffmpeg/ffprobe)",
                f"≤ {CPU_TARGET_MACHINE_PERCENT:g} % of machine",
                f"{copy['recorder_cpu_percent_of_machine']} % of machine "
                f"({copy['recorder_cpu_percent_of_one_core']} % of one core: Python "
                f"{copy['recorder_python_cpu_percent_of_one_core']}, ffmpeg -c copy "
                f"{copy['recorder_live_children_cpu_percent_of_one_core']}, ffprobe + stills "
                f"{copy['recorder_reaped_children_cpu_percent_of_one_core']}); simulators "
                f"{copy['simulators_cpu_percent_of_one_core']} % of one core",
                _verdict(copy["recorder_cpu_percent_of_machine"] <= CPU_TARGET_MACHINE_PERCENT),
            ),
            (
                "stream copy: cameras",
                "≥ 16",
                str(copy["cameras"]),
                _verdict(copy["cameras"] >= 16 and ok_frames),
            ),
        ]
    for kind in ("copy", "opencv"):
        if part := result.get(kind):
            rows.append(
                (
                    f"{kind}: segment closed → hashed into the chain (slowest)",
                    "≤ 1 s",
                    f"{part['index_lag_max_s']:.3f} s",
                    _verdict(part["index_lag_max_s"] <= 1.0),
                )
            )
    if cv := result.get("opencv"):
        ok = cv["dropped_total"] == 0 and cv["sim_skipped_in_window"] == 0 and cv["reconnects"] == 0
        per = cv["per_camera"]
        rows += [
            (
                f"OpenCV, {cv['cameras']} × 720p25 MJPEG: frames",
                "0 dropped",
                f"received {cv['received_total']}, written {cv['written_total']}, "
                f"dropped {cv['dropped_total']}; in the window: received fps per camera "
                f"{min(p['window_fps'] for p in per)}–{max(p['window_fps'] for p in per)}, "
                f"sent {min(p['sim_window_fps'] for p in per)}–"
                f"{max(p['sim_window_fps'] for p in per)}, "
                f"{cv['sim_skipped_in_window']} skipped by the cameras (recorder too slow)",
                _verdict(ok),
            ),
            (
                "OpenCV: recorder CPU",
                "—",
                f"{cv['recorder_cpu_percent_of_one_core']} % of one core "
                f"({cv['recorder_cpu_percent_of_machine']} % of machine; Python "
                f"{cv['recorder_python_cpu_percent_of_one_core']}); simulators "
                f"{cv['simulators_cpu_percent_of_one_core']} % of one core",
                "",
            ),
            ("OpenCV: cameras", "≥ 4", str(cv["cameras"]), _verdict(cv["cameras"] >= 4 and ok)),
        ]
    if live := result.get("live"):
        lat = live["latency_ms"]
        rows.append(
            (
                f"live feed, {live['cameras']} cameras × {live['viewers_per_camera']} viewers",
                "p95 ≤ 50 ms",
                f"p50 {lat['p50']} / p95 {lat['p95']} / max {lat['max']} ms",
                _verdict(lat["p95"] <= 50),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    machine = result["machine"]
    lines.append(
        f"({machine['cores']} cores; load average {machine['load_average_at_start']} at start, "
        f"{machine['load_average_at_end']} at end)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.recorder``: the table, then the full result as one JSON line."""
    parser = argparse.ArgumentParser(
        prog="courthub bench video", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="steady window per path")
    parser.add_argument("--copy-cameras", type=int, default=16, help="1080p25 H.264 (0: skip)")
    parser.add_argument("--opencv-cameras", type=int, default=4, help="720p25 MJPEG (0: skip)")
    parser.add_argument("--segment-s", type=float, default=10.0)
    parser.add_argument("--no-live", action="store_true", help="skip the live-feed latency")
    parser.add_argument("--live-seconds", type=float, default=10.0)
    parser.add_argument("--serve", metavar="JSON", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # force: under `courthub bench video` the CLI has configured INFO logging already
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s %(message)s", force=True
    )
    if args.serve:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(json.loads(args.serve)))
        return 0
    if args.copy_cameras < 0 or args.opencv_cameras < 0 or args.seconds <= 0:
        parser.error("camera counts must be >= 0 and --seconds > 0")
    options = VideoOptions(
        seconds=args.seconds,
        copy_cameras=args.copy_cameras,
        opencv_cameras=args.opencv_cameras,
        segment_s=args.segment_s,
        live=not args.no_live,
        live_seconds=args.live_seconds,
    )
    result = run_video_bench(options)
    print(table(result), flush=True)
    print(json.dumps(result, ensure_ascii=False), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
