"""The InfluxQL chart reader (``hub/influx_reader.py``) against a real InfluxDB.

The server is Debian's ``influxdb`` 1.6.7 (``/usr/bin/influxd``), started per test with a
private config (data, meta and WAL under ``tmp_path``, HTTP and RPC on free loopback ports, no
usage reporting) and stopped after it. Points go in through the v1 ``/write`` as the line
protocol :func:`hub.telemetry_points.to_lines` makes of real :class:`~hub.telemetry_points.Point`
objects (the sink's own encoding; 1.6 has no ``/api/v2/write``). The expected chart values are
computed here from those same points: bucket starts, min and max exactly, mean to float rounding.

Also: a hostile agent or metric name reads nothing and changes nothing; a stopped server is a
:class:`~hub.telemetry_points.TelemetryReadError` (counted); the technician's API answers the
InfluxDB-backed series and 503 with the reason when the server is down; ``charts = "influxdb"``
without a URL is refused at config load.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest

from hub.config import HubConfigError, hub_config_from_dict
from hub.influx_reader import InfluxQLReader, quote_ident, quote_string
from hub.telemetry_config import InfluxSection
from hub.telemetry_points import Point, SeriesPoint, TelemetryReadError, to_lines
from protocol.messages import DeviceInfo, VenueKind, now_ms

# the console tests' harness (a console app for a hub service, every role's token)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "console"))
from test_console_app_harness import auth, birth, console, make_service

from dashboards import pages_telemetry, telemetry_api
from dashboards.auth import Role
from dashboards.pages_telemetry import install_telemetry_pages

INFLUXD = "/usr/bin/influxd"
DB = "courthub"


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class InfluxD:
    """A private influxd process; :meth:`start` / :meth:`stop` may repeat (same port, data)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = root / "influxdb.conf"
        self.log_path = root / "influxd.log"
        root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            f"""reporting-disabled = true
bind-address = "127.0.0.1:{free_port()}"
[meta]
  dir = "{root / "meta"}"
[data]
  dir = "{root / "data"}"
  wal-dir = "{root / "wal"}"
  query-log-enabled = false
[monitor]
  store-enabled = false
[http]
  bind-address = "127.0.0.1:{self.port}"
  log-enabled = false
[continuous_queries]
  enabled = false
"""
        )
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        """Start influxd and wait until ``/ping`` answers 204."""
        with open(self.log_path, "ab") as log_file:
            self._proc = subprocess.Popen(
                [INFLUXD, "-config", str(self.config)], stdout=log_file, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"influxd exited: see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.url}/ping", timeout=1) as resp:
                    if resp.status == 204:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"influxd not answering /ping after {timeout} s: see {self.log_path}")

    def stop(self) -> None:
        """SIGTERM and wait (SIGKILL if it hangs)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def query(self, q: str, db: str = "") -> dict[str, object]:
        """One InfluxQL statement by POST (what data-changing statements need)."""
        form = {"q": q, **({"db": db} if db else {})}
        data = urllib.parse.urlencode(form).encode()
        with urllib.request.urlopen(f"{self.url}/query", data=data, timeout=10) as resp:
            body: dict[str, object] = json.loads(resp.read())
            return body

    def write(self, points: Sequence[Point], db: str = DB) -> None:
        """The points through v1 ``/write`` (ms precision), as the sink encodes them."""
        req = urllib.request.Request(
            f"{self.url}/write?db={db}&precision=ms", data=to_lines(points).encode(), method="POST"
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 204


@pytest.fixture
def influxd(tmp_path: Path) -> Iterator[InfluxD]:
    """A running private InfluxDB 1.x with an empty database ``courthub``."""
    if not Path(INFLUXD).exists():
        pytest.fail("influxdb is not installed: run scripts/install-system-deps.sh")
    server = InfluxD(tmp_path / "influxdb")
    server.start()
    try:
        server.query(f"CREATE DATABASE {quote_ident(DB)}")
        yield server
    finally:
        server.stop()


@pytest.fixture
async def reader(influxd: InfluxD) -> AsyncIterator[InfluxQLReader]:
    r = InfluxQLReader(InfluxSection(url=influxd.url, bucket=DB))
    try:
        yield r
    finally:
        await r.close()


def device_point(agent: str, device: str, ts: int, venue: str = "hall", **fields: float) -> Point:
    tags = {"agent": agent, "device": device, "venue": venue, "kind": "env_sensor"}
    return Point.make("device", tags, fields, ts)


def expected_buckets(
    samples: Sequence[tuple[int, float]], start: int, end: int, max_points: int
) -> list[tuple[int, float, float, float]]:
    """(bucket start, mean, min, max) of the samples in [start, end], buckets as the embedded
    store cuts them: ceil((end - start + 1) / max_points) ms from ``start``."""
    step = -(-(end - start + 1) // max_points)
    buckets: dict[int, list[float]] = {}
    for ts, v in samples:
        if start <= ts <= end:
            buckets.setdefault((ts - start) // step, []).append(v)
    return [
        (start + b * step, sum(vs) / len(vs), min(vs), max(vs)) for b, vs in sorted(buckets.items())
    ]


def as_tuples(points: Sequence[SeriesPoint]) -> list[tuple[int, float, float, float]]:
    return [(p.ts_ms, p.value, p.min, p.max) for p in points]


def assert_same(got: Sequence[SeriesPoint], want: list[tuple[int, float, float, float]]) -> None:
    assert [(p.ts_ms, p.min, p.max) for p in got] == [(t, lo, hi) for t, _, lo, hi in want]
    assert [p.value for p in got] == pytest.approx([avg for _, avg, _, _ in want], rel=1e-12)


# the reader --------------------------------------------------------------------------------------


async def test_metric_names_and_bucketed_series_equal_the_written_points(
    influxd: InfluxD, reader: InfluxQLReader
) -> None:
    t0 = now_ms() - 3_600_000
    t0 -= t0 % 1000
    # env-1: 600 s of 1 Hz temperature (a saw 20..25 with a fraction) and humidity; the last
    # 100 s under another venue tag (the device moved: still one device, one series)
    temps = [(t0 + i * 1000, 20.0 + (i % 6) + i / 1000) for i in range(600)]
    points = [
        device_point(
            "hall-1",
            "env-1",
            ts,
            venue="hall" if i < 500 else "hall-b",
            temperature_c=v,
            humidity_pct=40.0 + i % 3,
        )
        for i, (ts, v) in enumerate(temps)
    ]
    points.append(device_point("hall-1", "ups-1", t0 + 5000, load_pct=31.0))
    points.append(device_point("hall-2", "env-1", t0 + 5000, temperature_c=99.0, co2_ppm=400))
    influxd.write(points)

    assert await reader.metric_names("hall-1", "env-1") == ["humidity_pct", "temperature_c"]
    assert await reader.metric_names("hall-1", "ups-1") == ["load_pct"]
    assert await reader.metric_names("hall-1", "nothing") == []

    # 600 samples into 50 points: 12 s buckets from the window start, over both venue tags
    start, end = t0, t0 + 599_999
    got = await reader.series(
        "hall-1", "env-1", "temperature_c", start_ms=start, end_ms=end, max_points=50
    )
    assert len(got) == 50
    assert_same(got, expected_buckets(temps, start, end, 50))
    # a window not aligned on anything: buckets still start at its start
    start, end = t0 + 1234, t0 + 456_789
    got = await reader.series(
        "hall-1", "env-1", "temperature_c", start_ms=start, end_ms=end, max_points=37
    )
    assert got[0].ts_ms == start and len(got) <= 37
    assert_same(got, expected_buckets(temps, start, end, 37))

    # no more samples than max_points: the samples themselves
    got = await reader.series("hall-1", "env-1", "temperature_c", start_ms=t0, end_ms=t0 + 9999)
    assert as_tuples(got) == [(ts, v, v, v) for ts, v in temps[:10]]
    # the other agent's env-1 is another device
    got = await reader.series("hall-2", "env-1", "temperature_c", start_ms=t0, end_ms=t0 + 9999)
    assert as_tuples(got) == [(t0 + 5000, 99.0, 99.0, 99.0)]


async def test_window_edges_are_inclusive_and_empty_reads_are_empty(
    influxd: InfluxD, reader: InfluxQLReader
) -> None:
    t0 = now_ms() - 60_000
    samples = [(t0 + i * 100, float(i)) for i in range(10)]
    influxd.write([device_point("a", "d", ts, v=v) for ts, v in samples])

    got = await reader.series("a", "d", "v", start_ms=t0 + 200, end_ms=t0 + 500)
    assert [p.value for p in got] == [2.0, 3.0, 4.0, 5.0]  # both ends in
    got = await reader.series("a", "d", "v", start_ms=t0 + 201, end_ms=t0 + 499)
    assert [p.value for p in got] == [3.0, 4.0]  # both ends out
    # bucketed at the edges: 2 buckets of 150 ms from t0+200 → {2,3} and {4,5} (t0+500 is in)
    got = await reader.series("a", "d", "v", start_ms=t0 + 200, end_ms=t0 + 499 + 1, max_points=2)
    assert as_tuples(got) == [(t0 + 200, 2.5, 2.0, 3.0), (t0 + 351, 4.5, 4.0, 5.0)]

    assert await reader.series("a", "d", "v", start_ms=t0 + 1, end_ms=t0 + 99) == []
    assert await reader.series("a", "d", "v", start_ms=t0 + 500, end_ms=t0 + 100) == []
    assert await reader.series("a", "d", "nope", start_ms=t0, end_ms=t0 + 1000) == []
    assert await reader.series("a", "other", "v", start_ms=t0, end_ms=t0 + 1000) == []
    with pytest.raises(ValueError, match="max_points"):
        await reader.series("a", "d", "v", start_ms=t0, end_ms=t0 + 1000, max_points=0)


async def test_hostile_names_are_only_names(influxd: InfluxD, reader: InfluxQLReader) -> None:
    t0 = now_ms() - 60_000
    # (no backslash in stored names: InfluxDB 1.6 keeps the sink's ``\\`` escape as two)
    weird_agent, weird_device, weird_metric = "it's hall", 'cam"1', "we'ird\"f"
    influxd.write(
        [
            device_point("hall-1", "env-1", t0, temperature_c=21.0),
            device_point(weird_agent, weird_device, t0, **{weird_metric: 7.0}),
        ]
    )
    window = {"start_ms": t0 - 1000, "end_ms": t0 + 1000}
    # names with quotes are found as written
    assert await reader.metric_names(weird_agent, weird_device) == [weird_metric]
    got = await reader.series(weird_agent, weird_device, weird_metric, **window)
    assert [p.value for p in got] == [7.0]

    # an agent that tries to widen the WHERE clause matches no agent
    for agent in ("x' OR agent =~ /.*/ OR agent = 'x", "x\\' OR agent =~ /.*/ --"):
        assert await reader.metric_names(agent, "env-1") == []
        assert await reader.series(agent, "env-1", "temperature_c", **window) == []
    # a metric that tries a second statement is one (unknown) field name
    drop = f'temperature_c" FROM device; DROP DATABASE {quote_ident(DB)}; SELECT "x'
    assert await reader.series("hall-1", "env-1", drop, **window) == []
    assert await reader.series("hall-1", "env-1", drop, max_points=1, **window) == []
    got = await reader.series("hall-1", "env-1", "temperature_c", **window)
    assert [p.value for p in got] == [21.0]  # the database is still there
    assert quote_string("a'b\\") == "'a\\'b\\\\'" and quote_ident('a"b') == '"a\\"b"'


async def test_a_stopped_server_is_a_typed_error_and_counted(
    influxd: InfluxD, reader: InfluxQLReader
) -> None:
    assert await reader.metric_names("a", "d") == []
    influxd.stop()
    for read in (
        reader.metric_names("a", "d"),
        reader.series("a", "d", "v", start_ms=0, end_ms=1000),
    ):
        with pytest.raises(
            TelemetryReadError, match=f"InfluxDB at {influxd.url}/query is unreachable"
        ):
            await read
    assert reader.stats()["failed_reads"] == 2
    influxd.start()  # back: reads work again
    assert await reader.metric_names("a", "d") == []


async def test_an_unknown_database_says_so(influxd: InfluxD) -> None:
    r = InfluxQLReader(InfluxSection(url=influxd.url, database="nowhere"))
    try:
        with pytest.raises(TelemetryReadError, match="database not found: nowhere"):
            await r.metric_names("a", "d")
    finally:
        await r.close()


# the technician's API over the reader -----------------------------------------------------------


async def test_the_api_serves_influxdb_series_and_503_when_it_is_down(
    tmp_path: Path, influxd: InfluxD, reader: InfluxQLReader
) -> None:
    service = make_service(tmp_path / "hub")
    await service.store.open()
    birth(
        service,
        "hall-1",
        venue_id="hall",
        kind=VenueKind.LITIGATION_HALL,
        devices=[DeviceInfo(id="env-1", kind="env_sensor"), DeviceInfo(id="ups-1", kind="ups")],
    )
    now = now_ms()
    temps = [(now - 10_000 - i * 1000, 20.0 + i % 4) for i in range(600)]
    influxd.write([device_point("hall-1", "env-1", ts, temperature_c=v) for ts, v in temps])
    influxd.write([device_point("hall-1", "ups-1", now - 5000, load_pct=31.0)])
    headers = auth(Role.TECHNICIAN)
    base = "/api/v1/telemetry/hall-1/env-1"
    try:
        async with console(
            service,
            extra_routes=(*telemetry_api.ROUTES, *pages_telemetry.ROUTES),
            setup=lambda app: install_telemetry_pages(app, reader),
        ) as client:
            r = await client.get(f"{base}/metrics", headers=headers)
            assert (await r.json())["metrics"] == ["temperature_c"]
            r = await client.get(f"{base}/series?metric=temperature_c&range=15m", headers=headers)
            body = await r.json()
            assert r.status == 200, body
            want = expected_buckets(
                temps, body["start_ms"], body["end_ms"], telemetry_api.MAX_POINTS
            )
            got = [(p["ts"], p["avg"], p["min"], p["max"]) for p in body["points"]]
            assert [(t, lo, hi) for t, _, lo, hi in got] == [(t, lo, hi) for t, _, lo, hi in want]
            assert [a for _, a, _, _ in got] == pytest.approx([a for _, a, _, _ in want])
            assert 300 <= len(got) <= telemetry_api.MAX_POINTS
            r = await client.get(
                "/api/v1/telemetry/venue/hall/series?metric=load_pct", headers=headers
            )
            series = (await r.json())["series"]
            assert [(s["device"], [p["avg"] for p in s["points"]]) for s in series] == [
                ("ups-1", [31.0])
            ]

            influxd.stop()
            for path in (
                f"{base}/series?metric=temperature_c",
                f"{base}/metrics",
                "/api/v1/telemetry/venue/hall/metrics",
                "/api/v1/telemetry/venue/hall/series?metric=load_pct",
            ):
                r = await client.get(path, headers=headers)
                assert r.status == 503, path
                error = (await r.json())["error"]
                assert "telemetry store unavailable" in error and "unreachable" in error, error
            # the page still opens (state timeline and alerts come from the hub)
            page = await client.get("/technician/telemetry/hall-1/env-1", headers=headers)
            assert page.status == 200
            # the state timeline does not need InfluxDB
            r = await client.get(f"{base}/states", headers=headers)
            assert r.status == 200
    finally:
        await service.store.close()


# config -----------------------------------------------------------------------------------------


def test_charts_from_influxdb_need_its_url(tmp_path: Path) -> None:
    hub = {"data_dir": str(tmp_path)}
    with pytest.raises(HubConfigError, match=r"telemetry\.charts: .*\[telemetry\.influxdb\] url"):
        hub_config_from_dict({"hub": hub, "telemetry": {"charts": "influxdb"}})
    with pytest.raises(HubConfigError, match=r"telemetry\.charts"):
        hub_config_from_dict({"hub": hub, "telemetry": {"charts": "grafana"}})
    config = hub_config_from_dict(
        {
            "hub": hub,
            "telemetry": {"charts": "influxdb", "influxdb": {"url": "http://127.0.0.1:8086"}},
        }
    )
    influx = config.telemetry.influxdb
    assert influx.effective_query_url == "http://127.0.0.1:8086"
    assert influx.effective_database == "courthub"  # the bucket
    assert hub_config_from_dict({"hub": hub}).telemetry.charts == "embedded"
