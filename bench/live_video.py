"""``python -m bench.live_video``: latency the live-video fan-out and HTTP add, per viewer.

The server is the real console app with the video wall's routes (``dashboards.pages_video``)
and a :class:`hub.live_video.LiveVideo`; a capture thread publishes a pre-encoded 640×360 JPEG
(about 30 kB) into every camera's channel at ``fps`` through ``publish_threadsafe``, as the
recorder does. ``viewers`` aiohttp clients per camera read ``/video/<camera>/live.mjpg`` and
parse the multipart stream. Each frame's latency is from the moment the capture thread handed it
over to the moment a client has read the whole part (looked up by the part's ``X-Frame-Ts``).

The clients run on the same event loop (and GIL) as the server, so the figures include the
clients' own parsing: an upper bound of what the hub adds on this machine.

Result of :func:`run` (also printed as a table by :func:`main`): ``latency_ms`` p50/p95/max over
all delivered frames, ``published`` per camera, per viewer ``delivered`` and ``skipped``
(frames a slow viewer did not get because a newer one replaced them), and the server's CPU use.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import resource
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np
from aiohttp import web

from dashboards import pages_video
from dashboards.app import create_console_app
from dashboards.auth import BearerTokenAuthenticator, Principal, Role
from dashboards.sessions import AUDIT_KEY
from hub.audit import AuditLog
from hub.config import hub_config_from_dict
from hub.live_video import CameraView, FrameChannel, LiveVideo
from hub.service import HubService

TOKEN = "bench-video-token"  # a throw-away server on loopback, never a real court's


def sample_jpeg(n: int) -> bytes:
    """A 640×360 picture with some detail (about 30 kB as JPEG)."""
    rng = np.random.default_rng(n)
    image = (rng.integers(0, 60, (360, 640, 3), dtype=np.uint8) + 80).astype(np.uint8)
    image = cv2.GaussianBlur(image, (0, 0), 3)
    cv2.putText(image, f"bench #{n}", (20, 60), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (255, 255, 255), 2)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
    if not ok:
        raise RuntimeError("cv2.imencode failed")
    return data.tobytes()


@dataclass
class ViewerStats:
    camera: str
    delivered: int = 0
    last_seq: int = 0
    skipped: int = 0
    latencies_ms: list[float] = field(default_factory=list)


async def _read_stream(
    session: aiohttp.ClientSession,
    url: str,
    stats: ViewerStats,
    published: dict[int, float],
    stop: asyncio.Event,
) -> None:
    async with session.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        r.raise_for_status()
        content = r.content
        while not stop.is_set():
            line = await content.readline()
            if not line:
                return
            if line.strip() != b"--frame":
                continue
            headers: dict[str, str] = {}
            while (line := await content.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("ascii").partition(":")
                headers[name.strip().lower()] = value.strip()
            await content.readexactly(int(headers["content-length"]))
            received = time.perf_counter()
            seq = int(headers["x-frame-seq"])
            sent = published.get(int(headers["x-frame-ts"]))
            if sent is not None:
                stats.latencies_ms.append((received - sent) * 1000)
            if stats.last_seq:
                stats.skipped += max(0, seq - stats.last_seq - 1)
            stats.last_seq = seq
            stats.delivered += 1


def _capture(
    channels: dict[str, FrameChannel],
    published: dict[str, dict[int, float]],
    frames: list[bytes],
    fps: int,
    stop: threading.Event,
) -> None:
    """The recorder's side: one thread handing frames to the loop at ``fps``."""
    period = 1 / fps
    next_at = time.perf_counter()
    ts = int(time.time() * 1000) * 1000  # unique stamps: the lookup key of each frame
    n = 0
    while not stop.is_set():
        n += 1
        for camera, channel in channels.items():
            ts += 1
            published[camera][ts] = time.perf_counter()
            channel.publish_threadsafe(frames[n % len(frames)], ts)
        next_at += period
        delay = next_at - time.perf_counter()
        if delay > 0:
            stop.wait(delay)


async def _run(cameras: int, viewers: int, fps: int, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-video-") as tmp:
        audit = await AuditLog.open(Path(tmp))
        live = LiveVideo()
        channels = {
            f"cam-{i}": live.add_camera(
                CameraView(f"cam-{i}", f"Camera {i}", "Bench", "tech_courtroom", "online")
            )
            for i in range(cameras)
        }

        def setup(app: web.Application) -> None:
            app[AUDIT_KEY] = audit
            pages_video.install_live_video(app, live)

        config = hub_config_from_dict({"hub": {"data_dir": str(Path(tmp) / "hub")}})
        app = create_console_app(
            HubService(config, "mqtt://127.0.0.1:1", "hub", "x"),
            [BearerTokenAuthenticator(TOKEN, Principal("bench", frozenset({Role.COMMANDER})))],
            extra_routes=pages_video.ROUTES,
            setup=setup,
        )
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        published: dict[str, dict[int, float]] = {camera: {} for camera in channels}
        stats = [ViewerStats(camera) for camera in channels for _ in range(viewers)]
        stop = asyncio.Event()
        capture_stop = threading.Event()
        frames = [sample_jpeg(n) for n in range(8)]
        connector = aiohttp.TCPConnector(limit=0)
        cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        try:
            async with aiohttp.ClientSession(connector=connector) as session:
                readers = [
                    asyncio.create_task(
                        _read_stream(
                            session,
                            f"http://{host}:{port}/video/{s.camera}/live.mjpg",
                            s,
                            published[s.camera],
                            stop,
                        )
                    )
                    for s in stats
                ]
                await _all_attached(channels, len(stats))
                thread = threading.Thread(
                    target=_capture,
                    args=(channels, published, frames, fps, capture_stop),
                    name="bench-capture",
                )
                started = time.perf_counter()
                thread.start()
                await asyncio.sleep(seconds)
                capture_stop.set()
                await asyncio.to_thread(thread.join)
                elapsed = time.perf_counter() - started
                await asyncio.sleep(0.2)  # the last frames arrive
                stop.set()
                for task in readers:
                    task.cancel()
                await asyncio.gather(*readers, return_exceptions=True)
        finally:
            cpu_after = resource.getrusage(resource.RUSAGE_SELF)
            await runner.cleanup()
            await audit.close()
    latencies = sorted(x for s in stats for x in s.latencies_ms)
    cpu_s = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return {
        "cameras": cameras,
        "viewers_per_camera": viewers,
        "fps": fps,
        "seconds": round(elapsed, 2),
        "frame_bytes": statistics.mean(len(f) for f in frames),
        "published_per_camera": {c: ch.published for c, ch in channels.items()},
        "coalesced": sum(ch.coalesced for ch in channels.values()),
        "latency_ms": {
            "p50": round(_quantile(latencies, 0.50), 2),
            "p95": round(_quantile(latencies, 0.95), 2),
            "max": round(latencies[-1], 2) if latencies else None,
            "samples": len(latencies),
        },
        "per_viewer": [
            {"camera": s.camera, "delivered": s.delivered, "skipped": s.skipped} for s in stats
        ],
        "cpu_percent_of_one_core": round(100 * cpu_s / elapsed, 1),
    }


async def _all_attached(channels: dict[str, FrameChannel], expected: int) -> None:
    """Wait until every reader's stream is open (polled: the channels have no event for it)."""
    deadline = time.monotonic() + 30
    while sum(ch.viewers for ch in channels.values()) < expected:
        if time.monotonic() > deadline:
            raise RuntimeError("the viewers did not all connect within 30 s")
        await asyncio.sleep(0.01)


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]


def run(cameras: int = 8, viewers: int = 4, fps: int = 25, seconds: float = 10) -> dict[str, Any]:
    """Measure the fan-out: ``cameras`` × ``viewers`` MJPEG streams at ``fps`` for ``seconds``."""
    return asyncio.run(_run(cameras, viewers, fps, seconds))


def table(result: dict[str, Any]) -> str:
    """The result as a small text table."""
    lat = result["latency_ms"]
    delivered = [v["delivered"] for v in result["per_viewer"]]
    skipped = [v["skipped"] for v in result["per_viewer"]]
    published = list(result["published_per_camera"].values())
    rows = [
        ("streams", f"{result['cameras']} cameras × {result['viewers_per_camera']} viewers"),
        ("frame rate / size", f"{result['fps']} fps, {result['frame_bytes'] / 1000:.1f} kB"),
        ("published per camera", f"{min(published)}–{max(published)}"),
        ("latency p50 / p95 / max", f"{lat['p50']} / {lat['p95']} / {lat['max']} ms"),
        ("delivered per viewer", f"min {min(delivered)}, max {max(delivered)}"),
        ("skipped per viewer", f"min {min(skipped)}, max {max(skipped)}"),
        ("thread hand-overs coalesced", str(result["coalesced"])),
        ("CPU (server + clients)", f"{result['cpu_percent_of_one_core']} % of one core"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.live_video", description=__doc__)
    parser.add_argument("--cameras", type=int, default=8)
    parser.add_argument("--viewers", type=int, default=4)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--json", action="store_true", help="print the full result as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    result = run(args.cameras, args.viewers, args.fps, args.seconds)
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
