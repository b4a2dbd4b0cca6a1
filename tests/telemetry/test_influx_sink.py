"""The InfluxDB sink against a real VictoriaMetrics: every point arrives once, through outages,
sink restarts, a full and a torn spool; plus a tiny aiohttp server for what VictoriaMetrics
cannot be made to do (429 + Retry-After, token checks, 400 for one batch, slow answers)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from hub.influx_sink import InfluxSink
from hub.telemetry_config import InfluxSection
from hub.telemetry_points import Point

# points an hour old: well inside VictoriaMetrics' retention, unique per test by serial
BASE_MS = (int(time.time()) - 3600) * 1000


def make_points(n: int, *, start: int = 0, device: str = "d1") -> list[Point]:
    """``n`` device points 10 ms apart, serial ``start..start+n-1`` in their values."""
    return [
        Point.make(
            "device",
            {"agent": "court-1", "device": device, "venue": "room-1", "kind": "camera"},
            {"fps": float(i), "level": -i / 4},
            BASE_MS + 10 * i,
        )
        for i in range(start, start + n)
    ]


def section(url: str, **overrides: Any) -> InfluxSection:
    settings: dict[str, Any] = {
        "url": url,
        "org": "court",
        "bucket": "courthub",
        "batch_size": 200,
        "flush_interval_s": 0.05,
        "timeout_s": 5.0,
        "min_backoff_s": 0.05,
        "max_backoff_s": 0.3,
    }
    settings.update(overrides)
    return InfluxSection(**settings)


async def wait_until(condition: Callable[[], Any], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        await asyncio.sleep(0.02)


def fps_serials(samples: Iterable[Any]) -> Counter[int]:
    """How often each point serial arrived (from the ``device_fps`` samples)."""
    return Counter(int(s.value) for s in samples if s.name == "device_fps")


async def export_fps(vm: Any, count: int) -> Counter[int]:
    samples = await asyncio.to_thread(vm.wait_for_count, count, "device_fps")
    return fps_serials(samples)


# --- against VictoriaMetrics ------------------------------------------------------------------


@pytest.mark.parametrize("gzip", [True, False])
async def test_every_point_arrives_with_its_values_tags_and_ms_timestamp(
    tmp_path: Path, victoria_metrics: Any, gzip: bool
) -> None:
    sink = InfluxSink(section(victoria_metrics.url, gzip=gzip), data_dir=tmp_path)
    await sink.start()
    points = make_points(1000)
    for i in range(0, len(points), 70):
        sink.write(points[i : i + 70])
    await sink.flush()
    await wait_until(lambda: sink.stats()["written"] == 1000, what="written")

    samples = await asyncio.to_thread(victoria_metrics.wait_for_count, 2000, '{agent="court-1"}')
    got = sorted((s.name, s.ts_ms, s.value, s.labels) for s in samples)
    labels = (("agent", "court-1"), ("device", "d1"), ("kind", "camera"), ("venue", "room-1"))
    expected = sorted(
        [(f"device_{f}", p.ts_ms, p.fields[f], labels) for p in points for f in ("fps", "level")]
    )
    assert got == expected
    stats = sink.stats()
    assert stats["dropped"] == stats["errors"] == stats["spooled_points"] == 0
    await sink.stop()


async def test_tags_with_spaces_commas_equals_and_percents_arrive_as_written(
    tmp_path: Path, victoria_metrics: Any
) -> None:
    sink = InfluxSink(section(victoria_metrics.url), data_dir=tmp_path)
    await sink.start()
    tags = {"agent": "court 1,a", "device": "cam=2", "venue": "room 5%", "kind": "camera"}
    points = [Point.make("device", tags, {"fps": float(i)}, BASE_MS + i) for i in range(300)]
    sink.write(points[:150])
    sink.write(points[150:])  # the second write reuses the series' escaped line head
    await sink.flush()
    await wait_until(lambda: sink.stats()["written"] == 300, what="written")

    samples = await asyncio.to_thread(victoria_metrics.wait_for_count, 300, "device_fps")
    assert {s.labels for s in samples} == {tuple(sorted(tags.items()))}
    assert sorted((s.ts_ms, s.value) for s in samples) == [
        (p.ts_ms, p.fields["fps"]) for p in points
    ]
    await sink.stop()


async def test_server_stopped_mid_stream_loses_and_duplicates_nothing(
    tmp_path: Path, victoria_metrics: Any, caplog: pytest.LogCaptureFixture
) -> None:
    sink = InfluxSink(section(victoria_metrics.url, batch_size=100), data_dir=tmp_path)
    await sink.start()
    total = 0

    async def write_for(condition: Callable[[], bool]) -> None:
        nonlocal total
        while not condition():
            sink.write(make_points(20, start=total))
            total += 20
            await asyncio.sleep(0.01)

    await write_for(lambda: sink.stats()["written"] >= 400)
    stopping = asyncio.create_task(asyncio.to_thread(victoria_metrics.stop))
    await write_for(lambda: stopping.done() and sink.stats()["spooled_points"] >= 300)
    await stopping
    restarting = asyncio.create_task(asyncio.to_thread(victoria_metrics.start))
    await write_for(restarting.done)
    await restarting
    await write_for(lambda: total >= 2000 + sink.stats()["written"] // 2)
    await sink.flush()
    await wait_until(
        lambda: sink.stats()["written"] == total and sink.stats()["spooled_points"] == 0,
        what="spool replayed",
    )

    arrived = await export_fps(victoria_metrics, total)
    assert sorted(arrived) == list(range(total)), "points lost"
    assert max(arrived.values()) == 1, "points written twice"
    stats = sink.stats()
    assert stats["errors"] > 0 and stats["retries"] > 0 and stats["dropped"] == 0
    assert stats["degraded"] == 0  # back to direct writes
    assert "spooling until it succeeds" in caplog.text
    assert "caught up" in caplog.text
    await sink.stop()


async def test_spool_survives_a_sink_restart_and_is_replayed_once(
    tmp_path: Path, victoria_metrics: Any
) -> None:
    await asyncio.to_thread(victoria_metrics.stop)
    first = InfluxSink(section(victoria_metrics.url), data_dir=tmp_path)
    await first.start()
    first.write(make_points(1500))
    await first.stop()
    assert first.stats()["spooled_points"] == 1500
    assert first.stats()["written"] == 0
    assert list((tmp_path / "influx-spool").glob("*.seg"))

    await asyncio.to_thread(victoria_metrics.start)
    second = InfluxSink(section(victoria_metrics.url), data_dir=tmp_path)
    await second.start()
    assert second.stats()["spooled_points"] == 1500
    await wait_until(lambda: second.stats()["spooled_points"] == 0, what="replay")
    second.write(make_points(500, start=1500))
    await second.stop()
    assert second.stats()["written"] == 2000

    arrived = await export_fps(victoria_metrics, 2000)
    assert sorted(arrived) == list(range(2000))
    assert max(arrived.values()) == 1
    assert not list((tmp_path / "influx-spool").glob("*.seg"))  # drained spool: no files


async def test_full_spool_drops_new_points_and_counts_them(
    tmp_path: Path, victoria_metrics: Any, caplog: pytest.LogCaptureFixture
) -> None:
    await asyncio.to_thread(victoria_metrics.stop)
    limit_mb = 0.02
    sink = InfluxSink(
        section(victoria_metrics.url, spool_max_mb=limit_mb, batch_size=100), data_dir=tmp_path
    )
    await sink.start()
    total = 6000
    for i in range(0, total, 100):
        sink.write(make_points(100, start=i))
        await asyncio.sleep(0)
    await sink.flush()
    stats = sink.stats()
    assert stats["dropped"] > 0
    assert stats["spooled_points"] + stats["dropped"] == total
    assert stats["spool_disk_bytes"] <= limit_mb * 1024 * 1024
    assert "dropped points" in caplog.text
    kept = int(stats["spooled_points"])

    await asyncio.to_thread(victoria_metrics.start)
    await wait_until(lambda: sink.stats()["written"] == kept, what="replay")
    arrived = await export_fps(victoria_metrics, kept)
    assert sum(arrived.values()) == kept and max(arrived.values()) == 1
    assert 0 in arrived  # the oldest points were kept, newer ones dropped
    await sink.stop()


async def test_torn_spool_tail_is_skipped_counted_and_the_rest_replayed(
    tmp_path: Path, victoria_metrics: Any, caplog: pytest.LogCaptureFixture
) -> None:
    await asyncio.to_thread(victoria_metrics.stop)
    first = InfluxSink(section(victoria_metrics.url, batch_size=100), data_dir=tmp_path)
    await first.start()
    for i in range(0, 1000, 100):
        first.write(make_points(100, start=i))
        await first.flush()  # one spool record per 100 points
    await first.stop()
    segment = sorted((tmp_path / "influx-spool").glob("*.seg"))[-1]
    segment.write_bytes(segment.read_bytes()[:-10])  # the last record torn by a power cut

    await asyncio.to_thread(victoria_metrics.start)
    second = InfluxSink(section(victoria_metrics.url, batch_size=100), data_dir=tmp_path)
    await second.start()
    assert second.stats()["torn_records"] == 1
    assert "torn tail" in caplog.text
    await wait_until(lambda: second.stats()["written"] == 900, what="replay")
    arrived = await export_fps(victoria_metrics, 900)
    assert sorted(arrived) == list(range(900))
    await second.stop()


async def test_refused_auth_is_logged_counted_and_spooled_without_leaking_the_token(
    tmp_path: Path, victoria_metrics: Any, caplog: pytest.LogCaptureFixture
) -> None:
    await asyncio.to_thread(victoria_metrics.stop)
    await asyncio.to_thread(
        victoria_metrics.start, "-httpAuth.username=court", "-httpAuth.password=secret"
    )
    token_file = tmp_path / "influx.token"
    token_file.write_text("wrong-token-123\n")
    sink = InfluxSink(
        section(victoria_metrics.url, token_file=str(token_file)), data_dir=tmp_path / "hub"
    )
    await sink.start()
    sink.write(make_points(300))
    await sink.flush()
    await wait_until(lambda: sink.stats()["auth_errors"] >= 2, what="auth errors")
    stats = sink.stats()
    assert stats["spooled_points"] == 300 and stats["written"] == 0 and stats["dropped"] == 0
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert any("401" in r.getMessage() and str(token_file) in r.getMessage() for r in errors)
    assert "wrong-token-123" not in caplog.text

    # the server's auth set right: everything spooled meanwhile arrives, once
    await asyncio.to_thread(victoria_metrics.stop)
    await asyncio.to_thread(victoria_metrics.start)
    await wait_until(lambda: sink.stats()["written"] == 300, what="delivery after fix")
    arrived = await export_fps(victoria_metrics, 300)
    assert sorted(arrived) == list(range(300))
    await sink.stop()


# --- a tiny programmable server -------------------------------------------------------------


@dataclass
class Request:
    at: float
    headers: dict[str, str]
    lines: list[str]


Responder = Callable[[Request, int], Awaitable[web.Response]]


@dataclass
class FakeInflux:
    """Records every ``/api/v2/write``; ``respond(request, index)`` decides the answer."""

    respond: Responder
    requests: list[Request] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)  # lines of 2xx'd requests, in order
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()  # aiohttp has undone the client's gzip
        req = Request(time.monotonic(), dict(request.headers), body.decode().splitlines())
        self.requests.append(req)
        response = await self.respond(req, len(self.requests) - 1)
        if 200 <= response.status < 300:
            self.accepted.extend(req.lines)
        return response

    def serials(self) -> list[int]:
        """Point serials (from ``fps=``) of the accepted lines, in arrival order."""
        return [int(float(line.split("fps=")[1].split(",")[0])) for line in self.accepted]


@pytest.fixture
async def fake_influx() -> Any:
    runners: list[web.AppRunner] = []

    async def make(respond: Responder) -> FakeInflux:
        fake = FakeInflux(respond)
        app = web.Application()
        app.router.add_post("/api/v2/write", fake.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        fake.url = f"http://127.0.0.1:{port}"
        return fake

    yield make
    for runner in runners:
        await runner.cleanup()


async def ok(_req: Request, _i: int) -> web.Response:
    return web.Response(status=204)


@pytest.mark.parametrize("gzip", [True, False])
async def test_the_body_is_gzipped_only_when_asked_and_is_plain_line_protocol(
    tmp_path: Path, fake_influx: Any, gzip: bool
) -> None:
    fake = await fake_influx(ok)
    sink = InfluxSink(section(fake.url, gzip=gzip), data_dir=tmp_path)
    await sink.start()
    points = make_points(3)
    sink.write(points)
    await wait_until(lambda: sink.stats()["written"] == 3, what="written")
    await sink.stop()
    (request,) = fake.requests
    assert request.headers.get("Content-Encoding") == ("gzip" if gzip else None)
    assert request.headers["Content-Type"].startswith("text/plain")
    assert request.lines == [p.to_line() for p in points]
    assert request.lines[0] == (
        f"device,agent=court-1,device=d1,kind=camera,venue=room-1 fps=0.0,level=0.0 {BASE_MS}"
    )


async def test_retry_after_is_honoured_and_no_auth_header_without_token(
    tmp_path: Path, fake_influx: Any
) -> None:
    async def respond(_req: Request, i: int) -> web.Response:
        if i == 0:
            return web.Response(status=429, headers={"Retry-After": "1"}, text="slow down")
        return web.Response(status=204)

    fake = await fake_influx(respond)
    sink = InfluxSink(section(fake.url, min_backoff_s=0.01, max_backoff_s=0.05), data_dir=tmp_path)
    await sink.start()
    sink.write(make_points(50))
    await wait_until(lambda: sink.stats()["written"] == 50, what="written")
    first, second = fake.requests[0], fake.requests[1]
    # the backoff alone would have retried after <= 0.05 s
    assert second.at - first.at >= 0.95
    assert fake.serials() == list(range(50))
    assert sink.stats()["retries"] == 1
    assert all("Authorization" not in r.headers for r in fake.requests)
    await sink.stop()


async def test_token_is_sent_and_a_fixed_token_file_is_picked_up(
    tmp_path: Path, fake_influx: Any
) -> None:
    async def respond(req: Request, _i: int) -> web.Response:
        if req.headers.get("Authorization") != "Token right-token":
            return web.json_response({"code": "unauthorized", "message": "bad token"}, status=401)
        return web.Response(status=204)

    fake = await fake_influx(respond)
    token_file = tmp_path / "token"
    token_file.write_text("wrong-token\n")
    sink = InfluxSink(section(fake.url, token_file=str(token_file)), data_dir=tmp_path)
    await sink.start()
    sink.write(make_points(100))
    await wait_until(lambda: sink.stats()["auth_errors"] >= 1, what="auth error")
    token_file.write_text("right-token\n")
    sink.write(make_points(100, start=100))
    await wait_until(lambda: sink.stats()["written"] == 200, what="written after fix")
    assert fake.serials() == list(range(200))
    await sink.stop()


async def test_a_rejected_batch_is_counted_saved_aside_and_does_not_block_the_rest(
    tmp_path: Path, fake_influx: Any, caplog: pytest.LogCaptureFixture
) -> None:
    outage = {"on": True}

    async def respond(req: Request, _i: int) -> web.Response:
        if outage["on"]:
            return web.Response(status=503)
        if any("device=poison" in line for line in req.lines):
            return web.json_response({"code": "invalid", "message": "bad line 1"}, status=400)
        return web.Response(status=204)

    fake = await fake_influx(respond)
    sink = InfluxSink(section(fake.url, batch_size=100), data_dir=tmp_path)
    await sink.start()
    # during an outage three batches are spooled; the replay sends them in one request,
    # gets 400, and retries them one by one
    sink.write(make_points(100, start=0))
    await sink.flush()
    sink.write(make_points(100, start=100, device="poison"))
    await sink.flush()
    sink.write(make_points(100, start=200))
    await sink.flush()
    assert sink.stats()["spooled_points"] == 300
    outage["on"] = False
    await wait_until(lambda: sink.stats()["spooled_points"] == 0, what="replay")
    sink.write(make_points(100, start=300, device="poison"))  # sent straight from memory
    sink.write(make_points(100, start=400))
    await sink.flush()
    await wait_until(lambda: sink.stats()["written"] == 300, what="good batches written")

    assert fake.serials() == [*range(100), *range(200, 300), *range(400, 500)]
    stats = sink.stats()
    assert stats["rejected"] == 200
    assert "rejected a batch" in caplog.text and "bad line 1" in caplog.text
    saved = sorted((tmp_path / "influx-spool" / "rejected").glob("*.lp"))
    assert len(saved) == 2 and all("device=poison" in p.read_text() for p in saved)
    await sink.stop()


async def test_slow_server_overflow_spills_to_the_spool_in_order_without_duplicates(
    tmp_path: Path, fake_influx: Any
) -> None:
    async def respond(_req: Request, _i: int) -> web.Response:
        await asyncio.sleep(0.1)
        return web.Response(status=204)

    fake = await fake_influx(respond)
    sink = InfluxSink(section(fake.url, batch_size=100), data_dir=tmp_path, max_queue_points=300)
    await sink.start()
    for i in range(0, 1500, 50):
        sink.write(make_points(50, start=i))
        await asyncio.sleep(0.005)
    await wait_until(lambda: sink.stats()["spooled_points"] > 0, what="overflow spilled")
    await wait_until(lambda: sink.stats()["written"] == 1500, timeout=40, what="all written")
    # every point once, in the order written: the batch in flight when the queue spilled was
    # copied to the spool first and that copy consumed when the server took the original
    assert fake.serials() == list(range(1500))
    assert sink.stats()["dropped"] == 0
    await sink.stop()


async def test_write_never_raises_and_counts_what_it_cannot_keep(
    tmp_path: Path, fake_influx: Any
) -> None:
    fake = await fake_influx(ok)
    sink = InfluxSink(section(fake.url), data_dir=tmp_path)
    await sink.start()
    nan = Point.make("device", {"device": "d1"}, {"fps": float("nan")}, BASE_MS)
    sink.write([nan, *make_points(10)])
    await sink.flush()
    await wait_until(lambda: sink.stats()["written"] == 10, what="written")
    assert sink.stats()["invalid"] == 1
    await sink.stop()
    sink.write(make_points(5))  # after stop: counted, not raised
    assert sink.stats()["dropped"] == 5
    assert fake.serials() == list(range(10))


async def test_stop_with_the_server_hanging_spools_the_batch_in_flight(
    tmp_path: Path, fake_influx: Any
) -> None:
    release = asyncio.Event()

    async def respond(_req: Request, _i: int) -> web.Response:
        await release.wait()
        return web.Response(status=503)

    fake = await fake_influx(respond)
    sink = InfluxSink(section(fake.url, timeout_s=1.0), data_dir=tmp_path)
    await sink.start()
    sink.write(make_points(100))
    await wait_until(lambda: len(fake.requests) == 1, what="request in flight")
    await sink.stop()
    release.set()
    assert sink.stats()["spooled_points"] == 100
    assert sink.stats()["dropped"] == 0
