"""Telemetry test fixtures: a real VictoriaMetrics server (Debian's ``victoria-metrics``).

``victoria_metrics`` yields a :class:`VictoriaMetrics`: a private server on a free loopback
port with its data in ``tmp_path``, stopped after the test. Its methods block (HTTP and process
waits); from an async test call them through ``asyncio.to_thread``::

    async def test_x(victoria_metrics: VictoriaMetrics) -> None:
        sink = InfluxSink(InfluxSection(url=victoria_metrics.url), data_dir=tmp_path)
        ...
        samples = await asyncio.to_thread(victoria_metrics.wait_for_count, 100, "device_fps")

VictoriaMetrics maps an InfluxDB point ``m,tag=v f1=1,f2=2 ts`` to the series ``m_f1`` and
``m_f2`` with label ``tag="v"`` (bucket and org are not stored). It makes ingested samples
visible to export only after a short delay; :meth:`VictoriaMetrics.export` calls
``/internal/force_flush`` first and the ``wait_for*`` methods poll, because even then a new
series may take a moment to be found by name. Without ``-dedup.minScrapeInterval`` it keeps
duplicate samples (same series, time and value) and exports each, so tests can count them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

VM_BINARY = "/usr/bin/victoria-metrics"
#: what victoria-metrics may size its caches and buffers for, as a deployment next to the hub
#: would start it (docs/DEPLOYMENT.md). Without it, it assumes it owns the machine (60 % of RAM)
#: and sizes its buffer of raw rows as RAM/427 (1.79: 60 % / 256, at most 24 MB): 24 MB on the
#: 24 GB development machine, which the chaos court's ~70 samples/s never fill. The untouched
#: buffer counts as live Go heap, so the heap grows to 63 MB (50 MB in use) and RSS fills it
#: slowly for the whole hour (soak: 34 → 50 MB from minute 12 to 60). With 128 MiB the buffer
#: is 0.5 MB, the heap stays at 11 MB and RSS levels off within minutes (~26-27 MB;
#: measurements in tests/chaos/README.md).
VM_MEMORY_ALLOWED = "128MiB"


@dataclass(frozen=True, slots=True)
class VMSample:
    """One exported sample: metric name (``<measurement>_<field>``), labels, time, value."""

    name: str
    labels: tuple[tuple[str, str], ...]  # sorted, without __name__
    ts_ms: int
    value: float

    def label(self, key: str) -> str:
        """The value of label ``key`` ('' when absent)."""
        return dict(self.labels).get(key, "")


class VictoriaMetrics:
    """A victoria-metrics process; :meth:`start` and :meth:`stop` may be called repeatedly and
    keep the same port and data directory (a restart keeps the data)."""

    def __init__(self, data_dir: Path, port: int, log_path: Path) -> None:
        self.data_dir = data_dir
        self.port = port
        self.log_path = log_path
        #: base URL, e.g. ``http://127.0.0.1:PORT`` (what ``[telemetry.influxdb] url`` takes)
        self.url = f"http://127.0.0.1:{port}"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        """True while the process runs."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, *extra_args: str, timeout: float = 30.0) -> None:
        """Start the server (extra command-line flags allowed) and wait for ``/health``."""
        if self.running:
            return
        with open(self.log_path, "ab") as log_file:
            self._proc = subprocess.Popen(
                [
                    VM_BINARY,
                    f"-storageDataPath={self.data_dir}",
                    f"-httpListenAddr=127.0.0.1:{self.port}",
                    "-retentionPeriod=100y",
                    f"-memory.allowedBytes={VM_MEMORY_ALLOWED}",
                    *extra_args,
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"victoria-metrics exited: see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"victoria-metrics not healthy after {timeout} s: see {self.log_path}")

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server: SIGTERM by default (it first persists every sample it
        acknowledged); ``kill=True`` sends SIGKILL, after which victoria-metrics 1.79 has lost
        the samples of its last ~second, acknowledged or not (measured), so loss counts after
        a kill measure the server, not the client."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def export(self, match: str = '{__name__!=""}') -> list[VMSample]:
        """Every stored sample of the series matching ``match`` (a PromQL series selector)."""
        self._post("/internal/force_flush", None)
        body = self._post("/api/v1/export", {"match[]": match}).decode()
        samples: list[VMSample] = []
        for line in body.splitlines():
            if not line.strip():
                continue
            series = json.loads(line)
            metric = dict(series["metric"])
            name = metric.pop("__name__")
            labels = tuple(sorted(metric.items()))
            samples.extend(
                VMSample(name, labels, int(ts), float(v))
                for v, ts in zip(series["values"], series["timestamps"], strict=True)
            )
        return samples

    def wait_for(
        self,
        predicate: Callable[[list[VMSample]], bool],
        match: str = '{__name__!=""}',
        timeout: float = 20.0,
    ) -> list[VMSample]:
        """Poll :meth:`export` until ``predicate(samples)`` holds; the samples.

        Raises ``AssertionError`` (with what was there) after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        samples: list[VMSample] = []
        while time.monotonic() < deadline:
            samples = self.export(match)
            if predicate(samples):
                return samples
            time.sleep(0.1)
        raise AssertionError(f"condition not met in {timeout} s; {len(samples)} samples")

    def wait_for_count(
        self, count: int, match: str = '{__name__!=""}', timeout: float = 20.0
    ) -> list[VMSample]:
        """Poll until at least ``count`` samples match, then wait one more poll so late
        (duplicate) samples show too; the samples."""
        self.wait_for(lambda s: len(s) >= count, match, timeout)
        time.sleep(0.2)
        return self.export(match)

    def _post(self, path: str, form: Mapping[str, str] | None) -> bytes:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        req = urllib.request.Request(
            f"{self.url}{path}", data=data, method="POST" if data else "GET"
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            body: bytes = resp.read()
            return body


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def victoria_metrics(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    """A running private VictoriaMetrics (real binary), stopped after the test."""
    if shutil.which(VM_BINARY) is None and not os.path.exists(VM_BINARY):
        pytest.fail("victoria-metrics is not installed: run `make test`, which installs it")
    vm = VictoriaMetrics(tmp_path / "vm-data", free_port(), tmp_path / "vm.log")
    vm.start()
    try:
        yield vm
    finally:
        vm.stop()
