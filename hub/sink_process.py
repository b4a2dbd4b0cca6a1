"""A telemetry sink in its own process, so the hub's interpreter lock stays with ingest (issue 7).

Why: profiled with py-spy during ``courthub bench telemetry``, the hub is GIL-bound — its event
loop, paho's network thread and the embedded store's SQLite writer thread take turns on one
interpreter lock, so the hub stored ~9,000 points/s while the same store, alone in a process,
writes 24,000-37,000. :class:`SinkProcess` runs the real sink
(:class:`~hub.embedded_tsdb.EmbeddedStore` or :class:`~hub.influx_sink.InfluxSink`) in a child
Python process (``python -m hub.sink_process``) and is a
:class:`~hub.telemetry_points.TelemetrySink` like any other to the pipeline, /metrics and the
alert rules. The hub's share of a point drops to appending it to a list and one msgpack encode
per batch (~0.3 µs a point).

Pipe protocol. Hub → child (the child's stdin), frames ``<u32 length><u8 kind><payload>``:

- ``C`` the sink's config (JSON: kind, section, data_dir) — always the first frame;
- ``P`` points (msgpack array of :class:`~hub.telemetry_points.Point`);
- ``F`` a flush request (u32 id): the child flushes its sink and answers;
- end of file: the child stops its sink (which writes or spools everything it holds) and exits.

Child → hub (its stdout), one JSON object per line: ``{"ready": true}``, ``{"stats": {…}}``
twice a second, ``{"flushed": id, "stats": {…}}``, ``{"stopped": true, "stats": {…}}``. The
child's log lines go to its stderr, which is the hub's.

What survives what:

- **hub ``kill -9``**: the child reads what the pipe still holds, sees end of file, stops its
  sink cleanly and exits — points that reached the pipe are stored, not lost with the hub. It
  ignores SIGTERM and SIGINT (systemd signals the whole service; the hub then closes the pipe).
- **child dies** (a bug, the OOM killer): restarted with back-off; points sent to it that it had
  not reported stored are counted in ``lost_at_most`` (an upper bound: the last report may be up
  to half a second old) and logged. Points written meanwhile wait in the hub, bounded by
  ``max_queue`` (beyond it: ``dropped``, counted).
- **two children of one sink** (a restarted hub while the old child still drains): never write at
  once — each holds an exclusive ``flock`` on ``<data_dir>/<sink>.writer.lock`` for its life, and
  the new one waits for it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import itertools
import json
import logging
import os
import signal
import struct
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal

import msgspec

from hub.pipe_frames import frame, read_frame, stdin_reader
from hub.telemetry_config import EmbeddedSection, InfluxSection
from hub.telemetry_points import Point, TelemetrySink

log = logging.getLogger(__name__)

SinkKind = Literal["embedded", "influxdb"]

_FLUSH_ID: Final = struct.Struct("<I")
#: points per frame at most. A batch leaves in the loop iteration after its first point: the
#: hub's ingest drains messages in ticks of ~2 ms, so a frame carries a tick's worth (cheap), and
#: the points the broker considers delivered but a ``kill -9`` could still take with the hub are
#: only those of the last tick (the chaos suite lost 3 points to a 20 ms batching delay)
BATCH_MAX_POINTS: Final = 5000
#: how often the child reports its sink's counters
STATS_INTERVAL_S: Final = 0.5
#: how long the hub waits for a child to say it is ready (a previous child may still be draining
#: a full queue into SQLite: 200,000 points at ~25,000/s is 8 s)
READY_TIMEOUT_S: Final = 120.0
FLUSH_TIMEOUT_S: Final = 120.0
#: a clean stop flushes everything; InfluxDB down means spooling, which is local and bounded
STOP_TIMEOUT_S: Final = 120.0
RESTART_BACKOFF_S: Final = (0.5, 30.0)
#: points waiting in the hub for a child at most, when the sink's config names no bound
DEFAULT_MAX_QUEUE: Final = 200_000


class SinkProcessError(RuntimeError):
    """The child could not be started or did not become ready."""


# --- the hub's side ------------------------------------------------------------------------------
class _Child:
    """One running child: its process, the frames written to it, what it last reported."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        assert proc.stdin is not None and proc.stdout is not None
        self.stdin = proc.stdin
        self.stdout = proc.stdout
        # drain() returns only when the hub holds nothing back: "in the pipe" then means all
        # of it (the default low-water mark left up to 16 kB in the hub's own buffer)
        self.stdin.transport.set_write_buffer_limits(high=2**16, low=0)
        self.ready = asyncio.get_running_loop().create_future()
        self.sent = 0
        self.stats: dict[str, float] = {}
        self.reader: asyncio.Task[None] | None = None
        self.started = time.monotonic()

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None and not self.stdin.is_closing()

    def send(self, kind: bytes, payload: bytes) -> None:
        self.stdin.write(frame(kind, payload))


class SinkProcess:
    """A :class:`~hub.telemetry_points.TelemetrySink` whose work happens in a child process.

    ``kind`` and ``section`` say which sink the child runs (``embedded`` with an
    :class:`EmbeddedSection`, ``influxdb`` with an :class:`InfluxSection`), ``data_dir`` is the
    hub's. Use it like the sink itself: :meth:`start`, :meth:`write`, :meth:`flush`,
    :meth:`stop`, :meth:`stats`.
    """

    def __init__(
        self,
        kind: SinkKind,
        section: EmbeddedSection | InfluxSection,
        data_dir: Path,
        *,
        python: str = sys.executable,
        max_queue: int | None = None,
    ) -> None:
        """Nothing runs until :meth:`start`."""
        self.name: str = kind
        self._section = section
        self._data_dir = data_dir
        self._python = python
        bound = max_queue or getattr(section, "max_queue", None)
        self._max_queue: int = bound if isinstance(bound, int) else DEFAULT_MAX_QUEUE
        self._encoder = msgspec.msgpack.Encoder()
        self._pending: list[Point] = []
        self._wake = asyncio.Event()
        self._child: _Child | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._flush_ids = itertools.count(1)
        self._flushes: dict[int, asyncio.Future[None]] = {}
        self._stopping = False
        self._overflowing = False
        # counters of this side (the child's sink keeps its own)
        self._dropped = 0
        self._lost_at_most = 0
        self._restarts = 0
        self._last_stats: dict[str, float] = {}

    # TelemetrySink ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the child and wait until its sink is open (its database created)."""
        if self._supervisor is not None:
            return
        child = await self._spawn()
        try:
            await asyncio.wait_for(asyncio.shield(child.ready), READY_TIMEOUT_S)
        except (TimeoutError, SinkProcessError) as exc:
            await self._kill(child)
            raise SinkProcessError(
                f"telemetry sink {self.name}: its process did not start ({exc or 'timed out'}); "
                "see the log lines above"
            ) from exc
        self._child = child
        self._supervisor = asyncio.create_task(self._supervise(), name=f"sink-{self.name}")
        self._sender = asyncio.create_task(self._send_loop(), name=f"sink-{self.name}-send")

    def write(self, points: Sequence[Point]) -> None:
        """Queue ``points`` for the child; beyond ``max_queue`` waiting ones they are dropped."""
        room = self._max_queue - len(self._pending)
        if room >= len(points):
            self._pending.extend(points)
            self._overflowing = False
        else:
            if room > 0:
                self._pending.extend(points[:room])
            self._dropped += len(points) - max(room, 0)
            if not self._overflowing:
                self._overflowing = True
                log.warning(
                    "telemetry sink %s: its process falls behind, points dropped "
                    "max_queue=%d dropped_total=%d",
                    self.name,
                    self._max_queue,
                    self._dropped,
                )
        self._wake.set()

    async def handed_over(self) -> None:
        """Returns once everything written so far is in the child's pipe: from there a hub
        ``kill -9`` cannot lose it (the child reads it to the end and stores it). The hub
        acknowledges telemetry to the broker only after this. While the child is down (being
        restarted) it returns at once: holding the acks would stop all ingest."""
        child = self._child
        if child is None or not child.alive:
            return
        self._send_pending(child)
        with contextlib.suppress(ConnectionError):
            await child.stdin.drain()

    async def flush(self) -> None:
        """Everything written so far is in the child's sink and flushed there (stored, or
        spooled by an InfluxDB sink whose server is away)."""
        child = self._child
        if child is None or not child.alive:
            return
        self._send_pending(child)
        flush_id = next(self._flush_ids)
        done = asyncio.get_running_loop().create_future()
        self._flushes[flush_id] = done
        try:
            child.send(b"F", _FLUSH_ID.pack(flush_id))
            await child.stdin.drain()
            await asyncio.wait_for(done, FLUSH_TIMEOUT_S)
        except (ConnectionError, TimeoutError) as exc:
            log.warning("telemetry sink %s: flush not confirmed error=%r", self.name, exc)
        finally:
            self._flushes.pop(flush_id, None)

    async def stop(self) -> None:
        """Send what is waiting, close the pipe and wait for the child to store it and exit."""
        self._stopping = True
        for task in (self._sender, self._supervisor):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._sender = self._supervisor = None
        child, self._child = self._child, None
        if child is None:
            if self._pending:
                log.error(
                    "telemetry sink %s: stopping without a process, points lost=%d",
                    self.name,
                    len(self._pending),
                )
                self._dropped += len(self._pending)
                self._pending.clear()
            return
        if child.alive:
            self._send_pending(child)
            with contextlib.suppress(ConnectionError):
                await child.stdin.drain()
            child.stdin.close()
        try:
            await asyncio.wait_for(child.proc.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            log.error("telemetry sink %s: its process did not stop, killing it", self.name)
            await self._kill(child)
        if child.reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await child.reader
        self._last_stats = child.stats
        if child.proc.returncode != 0:
            log.error(
                "telemetry sink %s: its process ended with code %s",
                self.name,
                child.proc.returncode,
            )

    def stats(self) -> Mapping[str, float]:
        """The child's sink counters, with the points waiting here added to ``queued`` and this
        side's own: ``dropped`` (queue full), ``lost_at_most`` (child died), ``restarts``."""
        child = self._child
        stats = dict(child.stats if child is not None else self._last_stats)
        stats["queued"] = stats.get("queued", 0.0) + len(self._pending)
        stats["dropped"] = stats.get("dropped", 0.0) + self._dropped
        stats["lost_at_most"] = float(self._lost_at_most)
        stats["restarts"] = float(self._restarts)
        stats["process_up"] = float(child is not None and child.alive)
        return stats

    # sending --------------------------------------------------------------------------------------
    async def _send_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            child = self._child
            if child is None or not child.alive:
                continue  # the supervisor restarts it; points wait (bounded) meanwhile
            self._send_pending(child)
            try:
                await child.stdin.drain()
            except ConnectionError:
                continue  # the child died: the supervisor counts and restarts

    def _send_pending(self, child: _Child) -> None:
        """Everything pending goes out now, in one frame per ``BATCH_MAX_POINTS``."""
        pending, self._pending = self._pending, []
        for i in range(0, len(pending), BATCH_MAX_POINTS):
            batch = pending[i : i + BATCH_MAX_POINTS]
            child.send(b"P", self._encoder.encode(batch))
            child.sent += len(batch)

    # the child's life -----------------------------------------------------------------------------
    async def _spawn(self) -> _Child:
        proc = await asyncio.create_subprocess_exec(
            self._python,
            "-m",
            "hub.sink_process",
            "--sink",
            self.name,
            "--log-level",
            logging.getLevelName(logging.getLogger().getEffectiveLevel()),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            # the child must outlive a hub kill -9 long enough to store what the pipe holds: no
            # PR_SET_PDEATHSIG; it ends at the pipe's end of file instead
            start_new_session=True,
        )
        child = _Child(proc)
        config = {
            "kind": self.name,
            "section": msgspec.to_builtins(self._section),
            "data_dir": str(self._data_dir),
        }
        child.send(b"C", json.dumps(config).encode())
        child.reader = asyncio.create_task(self._read(child), name=f"sink-{self.name}-read")
        log.info("telemetry sink %s: process started pid=%d", self.name, proc.pid)
        return child

    async def _read(self, child: _Child) -> None:
        """The child's reports, until its stdout closes (it exited)."""
        while line := await child.stdout.readline():
            try:
                report = json.loads(line)
            except ValueError:
                log.warning("telemetry sink %s: unreadable report %r", self.name, line[:200])
                continue
            if isinstance(report.get("stats"), dict):
                child.stats = {k: float(v) for k, v in report["stats"].items()}
            if report.get("ready") and not child.ready.done():
                child.ready.set_result(None)
            flushed = self._flushes.get(int(report.get("flushed", 0)))
            if flushed is not None and not flushed.done():
                flushed.set_result(None)
        if not child.ready.done():
            child.ready.set_exception(SinkProcessError("the process exited before it was ready"))

    async def _supervise(self) -> None:
        """Wait for the child to die; count what it took with it and start another."""
        backoff = RESTART_BACKOFF_S[0]
        while True:
            child = self._child
            assert child is not None
            code = await child.proc.wait()
            if child.reader is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await child.reader
            self._on_death(child, code)
            self._child = None
            if time.monotonic() - child.started > 60:  # it had worked a while: start afresh
                backoff = RESTART_BACKOFF_S[0]
            while self._child is None:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RESTART_BACKOFF_S[1])
                try:
                    fresh = await self._spawn()
                    await asyncio.wait_for(asyncio.shield(fresh.ready), READY_TIMEOUT_S)
                except (OSError, TimeoutError, SinkProcessError) as exc:
                    log.error("telemetry sink %s: restart failed error=%r", self.name, exc)
                    continue
                self._child = fresh
                self._restarts += 1
                self._wake.set()

    def _on_death(self, child: _Child, code: int) -> None:
        received = child.stats.get("received", 0.0)
        queued = child.stats.get("child_queued", 0.0)
        lost = max(0, int(child.sent - received + queued))
        self._lost_at_most += lost
        self._last_stats = child.stats
        for done in self._flushes.values():
            if not done.done():
                done.set_exception(ConnectionResetError("telemetry sink process died"))
        log.error(
            "telemetry sink %s: its process died code=%s points lost at most=%d; restarting",
            self.name,
            code,
            lost,
        )

    async def _kill(self, child: _Child) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.proc.kill()
        await child.proc.wait()
        if child.reader is not None:
            child.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await child.reader


# --- the child's side ----------------------------------------------------------------------------
def _build_sink(kind: str, section: Mapping[str, Any], data_dir: Path) -> TelemetrySink:
    if kind == "embedded":
        from hub.embedded_tsdb import EmbeddedStore

        return EmbeddedStore(msgspec.convert(section, EmbeddedSection), data_dir)
    if kind == "influxdb":
        from hub.influx_sink import InfluxSink

        return InfluxSink(msgspec.convert(section, InfluxSection), data_dir=data_dir)
    raise ValueError(f"unknown sink kind {kind!r}")


def _lock_writer(path: Path) -> int:
    """Hold ``path`` exclusively for the life of the process (waits for a previous child)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.info("waiting for the previous writer of %s to finish", path.name)
        fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


class _ChildSide:
    """The child's loop: frames from stdin into the sink, reports to stdout."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._decoder = msgspec.msgpack.Decoder(list[Point])
        self._received = 0
        self._sink: TelemetrySink | None = None

    def _report(self, **fields: Any) -> None:
        if self._sink is not None:
            stats = dict(self._sink.stats())
            stats["child_queued"] = stats.get("queued", 0.0)
            stats["received"] = self._received
            fields.setdefault("stats", stats)
        try:
            sys.stdout.buffer.write(json.dumps(fields).encode() + b"\n")
            sys.stdout.buffer.flush()
        except OSError:  # the hub is gone: keep storing what the pipe held
            pass

    async def _frame(self) -> tuple[bytes, bytes] | None:
        return await read_frame(self._reader)

    async def run(self) -> int:
        first = await self._frame()
        if first is None or first[0] != b"C":
            log.error("no configuration frame: not started by the hub?")
            return 2
        config = json.loads(first[1])
        data_dir = Path(config["data_dir"])
        lock = await asyncio.to_thread(_lock_writer, data_dir / f"{config['kind']}.writer.lock")
        try:
            self._sink = _build_sink(config["kind"], config["section"], data_dir)
            await self._sink.start()
            self._report(ready=True)
            reporter = asyncio.create_task(self._report_loop())
            try:
                await self._serve(self._sink)
            finally:
                reporter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reporter
                await self._sink.stop()
            self._report(stopped=True)
        finally:
            os.close(lock)
        return 0

    async def _serve(self, sink: TelemetrySink) -> None:
        while (frame := await self._frame()) is not None:
            kind, payload = frame
            if kind == b"P":
                try:
                    points = self._decoder.decode(payload)
                except msgspec.DecodeError as exc:  # a bug on the hub's side: say so, go on
                    log.error("undecodable points frame bytes=%d error=%s", len(payload), exc)
                    continue
                self._received += len(points)
                sink.write(points)
            elif kind == b"F":
                await sink.flush()
                (flush_id,) = _FLUSH_ID.unpack(payload)
                self._report(flushed=flush_id)
            else:
                log.error("unknown frame kind=%r bytes=%d", kind, len(payload))

    async def _report_loop(self) -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL_S)
            self._report()


async def _child_main() -> int:
    return await _ChildSide(await stdin_reader()).run()


def main(argv: list[str] | None = None) -> int:
    """``python -m hub.sink_process``: the child's entry point (started by :class:`SinkProcess`)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sink", default="?", help="its name, for ps and the log lines")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level,
        format=f"%(asctime)s %(levelname)s [sink {args.sink} %(process)d] %(name)s: %(message)s",
    )
    # the hub ends this process by closing the pipe, after sending everything; a signal meant
    # for the whole service (systemd, Ctrl-C in a terminal) must not cut that short
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return asyncio.run(_child_main())


if __name__ == "__main__":
    sys.exit(main())
