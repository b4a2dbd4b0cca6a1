"""The InfluxDB telemetry sink (issue 7): batches to ``/api/v2/write``, a durable spool while the
server is away, nothing lost, nothing written twice after a replay.

``influxdb-client`` does the HTTP (auth header, timeouts, errors) through its generated write
service, called on the sink's own sender thread, never on the event loop. The client's own gaps
are covered here: its batching mode keeps an unbounded in-memory queue, gives up after its retries
and its ``flush()`` does not wait, so the sink batches itself, sends each batch with client
retries off, and keeps every batch it could not send in a :class:`~hub.telemetry_spool.Spool` on
disk. The sink also gzips the body itself (``Content-Encoding: gzip``, as the client would): the
client's ``enable_gzip`` compresses at level 9, a fifth of the sink process's CPU (py-spy, bench
telemetry) for a body a quarter smaller; :data:`_GZIP_LEVEL` is 1.

How a point travels::

    write() ─► pending ─(batch_size or flush_interval_s)─► queue ─► sender ─► server
                                                            │          ▲
                                  failure or overflow ──────┴─► spool ─┘ (replayed in order)

* Healthy: the sender posts queued batches straight from memory.
* Degraded (a send failed, the queue overflowed, or :meth:`InfluxSink.flush` timed out): the
  spooler thread moves the batch in flight (a copy) and then every queued batch to the spool, in
  order; from then on new batches go to the spool too, and the sender replays the spool oldest
  first (several records per request, up to ``batch_size`` points). When the spool is empty the
  sink is healthy again. So the series always reaches the server in the order it was written.
* A spool record is consumed only after a 2xx. When the server took the in-flight batch whose copy
  was already spooled, that copy (the spool's first record) is consumed without sending. Every
  successful write therefore happens once; a crash between a 2xx and the cursor update is the one
  window where a batch is written twice (at-least-once overall).
* Retries back off exponentially from ``min_backoff_s`` to ``max_backoff_s`` (with jitter); a
  ``Retry-After`` header (seconds or an HTTP date, on 429/503 or any answer) wins.
* 401/403 (bad token) and 404 (unknown org/bucket) are set-up errors, not bad data: logged as
  errors, counted (``auth_errors``), retried like an outage and the token file re-read before each
  retry, so fixing the token delivers everything spooled meanwhile.
* Other 4xx (400, 413, 422, ...) mean the batch itself is bad: it is counted (``rejected``),
  logged with the server's message, saved aside in ``<spool>/rejected/`` (newest
  :data:`REJECTED_KEEP` files) for a technician and skipped, so it never blocks later batches.
  A rejected multi-record replay is retried record by record first.
* Bounds: the in-memory queue spills to the spool past ``max_queue_points``; the spool refuses
  records past ``spool_max_mb`` and those points are ``dropped`` (counted, logged); points beyond
  ``4 x max_queue_points`` waiting in memory (the disk is stuck) are dropped too.

The token is read from ``token_file`` and never logged; an empty ``token_file`` sends no
``Authorization`` header (VictoriaMetrics).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import gzip
import logging
import random
import threading
import time
import urllib.parse
import zlib
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Final, cast

import urllib3
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException
from influxdb_client.service.write_service import WriteService

from hub.telemetry_config import InfluxSection
from hub.telemetry_points import Point, to_lines
from hub.telemetry_spool import Spool, SpoolChunk, SpoolPosition

log = logging.getLogger(__name__)

#: rejected batches kept in ``<spool>/rejected/`` for inspection (older ones are deleted)
REJECTED_KEEP: Final = 16
#: the longest ``Retry-After`` honoured (a server asking for more gets retried after this)
MAX_RETRY_AFTER_S: Final = 3600.0
#: seconds between two repeated warnings of the same kind
LOG_EVERY_S: Final = 60.0
#: spool segment size (smaller when the spool is small, so replayed space frees early)
_SEGMENT_BYTES: Final = 4 * 1024 * 1024
_ZLIB_LEVEL: Final = 1  # spool payloads: fast, still ~10x on line protocol
#: request bodies (``gzip = true``): level 1 takes a fifth of level 9's CPU (0.3 vs 1.4 µs a
#: bench point) for ~35 % more bytes (3.8 vs 2.8 a point, ~40x smaller than the text)
_GZIP_LEVEL: Final = 1
#: what influxdb-client's own write API sends for line protocol
_CONTENT_TYPE: Final = "text/plain; charset=utf-8"
# the generated enum declares its members as plain str
_MS: Final = cast(WritePrecision, WritePrecision.MS)


class _Outcome(Enum):
    OK = "ok"
    RETRY = "retry"  # outage, 429, 5xx, timeouts
    SETUP = "setup"  # 401/403/404: token or bucket wrong; retried, loudly
    REJECT = "reject"  # the batch itself is bad


@dataclass(frozen=True, slots=True)
class _Result:
    outcome: _Outcome
    status: int = 0
    retry_after: float | None = None
    message: str = ""


@dataclass(slots=True)
class _Batch:
    seq: int
    points: list[Point]
    payload: bytes | None = None  # line protocol, encoded on a worker thread
    count: int = 0  # lines in payload

    def encode(self) -> bytes:
        if self.payload is None:
            text = to_lines(self.points)
            self.count = text.count("\n") + 1 if text else 0
            self.payload = text.encode()
        return self.payload


class _CopyState(Enum):
    PENDING = "pending"  # the spooler is writing the in-flight batch's copy
    FULL = "full"  # the spool refused it


@dataclass(slots=True)
class _Counters:
    written: int = 0
    batches_written: int = 0
    dropped: int = 0
    rejected: int = 0
    invalid: int = 0
    retries: int = 0
    errors: int = 0
    auth_errors: int = 0
    last_error_at: float | None = None
    last_write_at: float | None = None


class InfluxSink:
    """A :class:`~hub.telemetry_points.TelemetrySink` writing to an InfluxDB-compatible server.

    ``data_dir`` holds the spool (``<data_dir>/influx-spool`` unless ``section.spool_dir`` is
    set; a relative ``spool_dir`` is taken relative to ``data_dir``). Call :meth:`write` from
    the event loop's thread.
    """

    name = "influxdb"

    def __init__(
        self,
        section: InfluxSection,
        *,
        data_dir: Path,
        clock: Callable[[], float] = time.monotonic,
        max_queue_points: int | None = None,
    ) -> None:
        """``max_queue_points`` (default ``max(4 x batch_size, 50_000)``) bounds the points
        waiting in memory before they spill to the spool."""
        if urllib.parse.urlsplit(section.url).scheme not in ("http", "https"):
            raise ValueError(
                f"[telemetry.influxdb] url must be http(s)://host:port, got {section.url!r}"
            )
        self.section = section
        self._clock = clock
        self._max_queue = max_queue_points or max(4 * section.batch_size, 50_000)
        spool_dir = Path(section.spool_dir) if section.spool_dir else Path("influx-spool")
        self.spool_dir = spool_dir if spool_dir.is_absolute() else Path(data_dir) / spool_dir
        max_bytes = max(1, int(section.spool_max_mb * 1024 * 1024))
        self._spool = Spool(
            self.spool_dir,
            max_bytes=max_bytes,
            segment_bytes=max(4096, min(_SEGMENT_BYTES, max_bytes // 8)),
            clock=clock,
        )
        self._safe_url = _without_userinfo(section.url)

        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        # guarded by _lock -------------------------------------------------------------------
        self._pending: list[Point] = []
        self._pending_since: float | None = None
        self._queue: deque[_Batch] = deque()
        self._queued_points = 0
        self._next_seq = 0
        self._degraded = False
        self._force_spill = False
        self._inflight: _Batch | None = None
        self._inflight_copy: SpoolPosition | _CopyState | None = None
        self._spooler_busy = False
        self._stop_spooler = False
        self._failing = False  # the last write attempt failed
        self._c = _Counters()
        # -------------------------------------------------------------------------------------
        self._stop_sender = threading.Event()
        self._sender: threading.Thread | None = None
        self._spooler: threading.Thread | None = None
        self._timer: asyncio.Task[None] | None = None
        self._pending_event = asyncio.Event()
        self._started = False
        self._closing = False
        self._closed = False
        # sender-thread state ---------------------------------------------------------------
        self._client: InfluxDBClient | None = None
        self._writes: WriteService | None = None
        self._token: str | None = None
        self._token_error: str | None = None
        self._attempt = 0
        self._split_next = False
        self._outage_since: float | None = None
        self._last_fail_log = float("-inf")
        self._last_drop_log = float("-inf")

    # TelemetrySink --------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the spool (replaying what an earlier run left there), read the token, start
        the sender and spooler threads and the batch timer."""
        if self._started:
            return
        try:
            await asyncio.to_thread(self._spool.open)
        except OSError as exc:
            raise RuntimeError(f"influx spool dir {self.spool_dir} is unusable: {exc}") from exc
        with self._cond:
            self._degraded = not self._spool.is_empty
        if self._degraded:
            log.info(
                "influx sink replays its spool url=%s spooled_points=%d spool_bytes=%d",
                self._safe_url,
                self._spool.pending_count,
                self._spool.pending_bytes,
            )
        self._started = True
        self._sender = threading.Thread(target=self._send_loop, name="influx-sender", daemon=True)
        self._spooler = threading.Thread(
            target=self._spool_loop, name="influx-spooler", daemon=True
        )
        self._sender.start()
        self._spooler.start()
        self._timer = asyncio.create_task(self._batch_timer(), name="influx-batch-timer")

    def write(self, points: Sequence[Point]) -> None:
        """Queue points (never blocks, never raises); a batch is sealed at ``batch_size``."""
        if not points:
            return
        try:
            with self._cond:
                if self._closing:
                    self._drop_locked(len(points), "sink stopped")
                    return
                if self._queued_points + len(self._pending) > 4 * self._max_queue:
                    self._drop_locked(len(points), "memory queue full (spool not keeping up)")
                    return
                if not self._pending:
                    self._pending_since = self._clock()
                self._pending.extend(points)
                if len(self._pending) >= self.section.batch_size:
                    self._seal_locked(full_only=True)
            self._pending_event.set()
        except Exception:  # never raise into the caller (the hub's ingest)
            log.exception("influx sink write failed points=%d", len(points))

    async def flush(self) -> None:
        """Seal what is pending and wait until every queued batch is written or spooled (a
        batch still in flight after ``timeout_s`` is spooled), then fsync the spool."""
        with self._cond:
            self._seal_locked(full_only=False)
        if not self._started or self._closed:
            return
        wait = self.section.timeout_s + 1.0
        if not await asyncio.to_thread(self._wait_memory_drained, wait):
            with self._cond:
                self._force_spill = True
                self._cond.notify_all()
            try:
                await asyncio.to_thread(self._wait_memory_drained, 30.0)
            finally:
                with self._cond:
                    self._force_spill = False
        await asyncio.to_thread(self._spool.sync)

    async def stop(self) -> None:
        """Flush and close; what could not be sent stays in the spool for the next start."""
        if not self._started or self._closed:
            self._closing = True
            return
        with self._cond:
            self._closing = True  # later writes are counted as dropped
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
        await self.flush()
        # the server answers: give the spool's replay up to one request timeout to finish
        await asyncio.to_thread(self._wait_spool_drained, self.section.timeout_s)
        self._stop_sender.set()
        with self._cond:
            self._cond.notify_all()
        if self._sender is not None:
            await asyncio.to_thread(self._sender.join, self.section.timeout_s + 5.0)
            if self._sender.is_alive():
                log.warning("influx sender still busy at stop url=%s", self._safe_url)
        with self._cond:
            self._stop_spooler = True
            self._cond.notify_all()
        if self._spooler is not None:
            await asyncio.to_thread(self._spooler.join, 30.0)
        self._closed = True
        await asyncio.to_thread(self._spool.close)
        if self._client is not None:
            self._client.close()  # type: ignore[no-untyped-call]
        log.info(
            "influx sink stopped written=%d spooled_points=%d dropped=%d",
            self._c.written,
            self._spool.pending_count,
            self._c.dropped,
        )

    def stats(self) -> Mapping[str, float]:
        """Counters (points unless named otherwise). ``queued``: points in memory;
        ``spooled_points``/``spool_bytes``: waiting in the spool; ``degraded``: 1 while
        batches go through the spool; ``last_*_age_s``: -1 when it never happened."""
        now = self._clock()
        c = self._c
        with self._cond:
            queued = (
                len(self._pending)
                + self._queued_points
                + (len(self._inflight.points) if self._inflight is not None else 0)
            )
            degraded = self._degraded
        return {
            "written": c.written,
            "batches_written": c.batches_written,
            "queued": queued,
            "spooled_points": self._spool.pending_count,
            "spool_bytes": self._spool.pending_bytes,
            "spool_disk_bytes": self._spool.disk_bytes,
            "dropped": c.dropped,
            "rejected": c.rejected,
            "invalid": c.invalid,
            "retries": c.retries,
            "errors": c.errors,
            "auth_errors": c.auth_errors,
            "torn_records": self._spool.torn_records,
            "degraded": 1.0 if degraded else 0.0,
            "last_error_age_s": -1.0 if c.last_error_at is None else now - c.last_error_at,
            "last_write_age_s": -1.0 if c.last_write_at is None else now - c.last_write_at,
        }

    # batching (event loop) --------------------------------------------------------------------
    def _seal_locked(self, *, full_only: bool) -> None:
        size = self.section.batch_size
        while self._pending and (len(self._pending) >= size or not full_only):
            points, self._pending = self._pending[:size], self._pending[size:]
            self._queue.append(_Batch(self._next_seq, points))
            self._next_seq += 1
            self._queued_points += len(points)
        self._pending_since = self._clock() if self._pending else None
        self._cond.notify_all()

    async def _batch_timer(self) -> None:
        """Seal the pending points ``flush_interval_s`` after the oldest arrived."""
        interval = self.section.flush_interval_s
        while True:
            await self._pending_event.wait()
            self._pending_event.clear()
            while True:
                with self._cond:
                    since = self._pending_since
                    if since is not None and since + interval <= self._clock():
                        self._seal_locked(full_only=False)
                        since = self._pending_since
                if since is None:
                    break
                await asyncio.sleep(max(0.001, since + interval - self._clock()))

    def _wait_memory_drained(self, timeout: float) -> bool:
        """True once nothing waits in memory (sent, or durable in the spool)."""

        def drained() -> bool:
            inflight_safe = self._inflight is None or isinstance(self._inflight_copy, SpoolPosition)
            return not self._queue and not self._spooler_busy and inflight_safe

        with self._cond:
            return self._cond.wait_for(drained, timeout)

    def _wait_spool_drained(self, timeout: float) -> bool:
        """True once the spool is empty; False at once while writes fail, or after timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._spool.is_empty or self._failing, timeout)

    def _drop_locked(self, n: int, why: str) -> None:
        if n <= 0:
            return
        self._c.dropped += n
        now = self._clock()
        if now - self._last_drop_log >= LOG_EVERY_S:
            self._last_drop_log = now
            log.warning(
                "influx sink dropped points n=%d reason=%s dropped_total=%d",
                n,
                why,
                self._c.dropped,
            )

    # spooler thread -----------------------------------------------------------------------------
    def _spool_loop(self) -> None:
        """Move batches to the spool while degraded (the in-flight one first), and fsync it
        about every second."""
        while True:
            with self._cond:
                item = self._spill_candidate_locked()
                if item is None:
                    if self._stop_spooler:
                        return
                    self._cond.wait(1.0)
                    item = self._spill_candidate_locked()
                is_copy = item is not None and item is self._inflight
                if item is not None:
                    self._spooler_busy = True
                    if is_copy:
                        self._inflight_copy = _CopyState.PENDING
            if item is None:
                self._sync_spool()
                continue
            end = self._append_to_spool(item, is_copy=is_copy)
            with self._cond:
                self._spooler_busy = False
                if is_copy:
                    self._inflight_copy = end if end is not None else _CopyState.FULL
                elif end is None:
                    self._drop_locked(item.count, "spool full")
                self._cond.notify_all()

    def _spill_candidate_locked(self) -> _Batch | None:
        overflow = self._force_spill or self._queued_points > self._max_queue
        if overflow and (self._queue or self._inflight is not None):
            self._degraded = True
        if not self._degraded:
            return None
        if self._inflight is not None and self._inflight_copy is None:
            return self._inflight
        if self._queue:
            batch = self._queue.popleft()
            self._queued_points -= len(batch.points)
            return batch
        return None

    def _append_to_spool(self, batch: _Batch, *, is_copy: bool) -> SpoolPosition | None:
        try:
            payload = batch.encode()
            if not is_copy:  # the sender counts its own batch's invalid points
                self._count_invalid(batch)
            if batch.count == 0:
                return None
            return self._spool.append(zlib.compress(payload, _ZLIB_LEVEL), batch.count)
        except Exception as exc:  # disk full, I/O error: the points are lost, counted
            log.error("influx spool append failed dir=%s error=%s", self.spool_dir, exc)
            with self._cond:
                self._note_error_locked()
            return None

    def _sync_spool(self) -> None:
        try:
            self._spool.sync()
        except Exception as exc:
            log.error("influx spool fsync failed dir=%s error=%s", self.spool_dir, exc)

    def _count_invalid(self, batch: _Batch) -> None:
        invalid = len(batch.points) - batch.count
        if invalid:
            with self._cond:
                self._c.invalid += invalid

    # sender thread ----------------------------------------------------------------------------
    def _send_loop(self) -> None:
        while not self._stop_sender.is_set():
            try:
                job = self._next_job()
                if job is None:
                    continue
                if isinstance(job, _Batch):
                    self._send_memory(job)
                else:
                    self._send_spooled(job)
            except Exception:  # a bug must not stop delivery for good
                log.exception("influx sender failed; retrying")
                with self._cond:
                    self._note_error_locked()
                self._stop_sender.wait(self.section.max_backoff_s)

    def _next_job(self) -> _Batch | SpoolChunk | None:
        """The oldest batch to send: the spool's head while degraded, else the queue's head;
        ``None`` after a wait (the caller checks for stop)."""
        with self._cond:
            if not self._degraded and self._spool.is_empty:
                if self._queue and not self._spooler_busy:
                    batch = self._queue.popleft()
                    self._queued_points -= len(batch.points)
                    self._inflight, self._inflight_copy = batch, None
                    return batch
                self._cond.wait(1.0)
                return None
        chunk = self._spool.peek(1 if self._split_next else self.section.batch_size)
        if chunk is not None:
            return chunk
        with self._cond:
            if self._spool.is_empty and not self._spooler_busy:
                if self._degraded:
                    self._degraded = False
                    self._cond.notify_all()
                    if self._outage_since is not None:
                        log.info(
                            "influx sink caught up, writing directly again url=%s after_s=%.1f",
                            self._safe_url,
                            self._clock() - self._outage_since,
                        )
                        self._outage_since = None
                return None
            self._cond.wait(1.0)
        return None

    def _send_memory(self, batch: _Batch) -> None:
        payload = batch.encode()
        self._count_invalid(batch)
        result = self._post(payload) if batch.count else _Result(_Outcome.OK)
        with self._cond:
            if result.outcome in (_Outcome.RETRY, _Outcome.SETUP):
                self._degraded = True  # the spooler copies the in-flight batch first
                self._cond.notify_all()
                self._cond.wait_for(
                    lambda: (
                        self._inflight_copy not in (None, _CopyState.PENDING) or self._stop_spooler
                    )
                )
            else:
                self._cond.wait_for(lambda: self._inflight_copy is not _CopyState.PENDING)
            copy = self._inflight_copy
            self._inflight, self._inflight_copy = None, None
            self._cond.notify_all()  # flush() waits for this
        if result.outcome is _Outcome.OK:
            self._on_written(batch.count)
            if isinstance(copy, SpoolPosition):
                self._spool.advance(copy)  # the server has it: its spooled copy is done
        elif result.outcome is _Outcome.REJECT:
            self._on_rejected(payload, batch.count, result)
            if isinstance(copy, SpoolPosition):
                self._spool.advance(copy)
        else:
            if copy is _CopyState.FULL or copy is None:
                with self._cond:
                    self._drop_locked(batch.count, "spool full")
            self._on_failure(result)

    def _send_spooled(self, chunk: SpoolChunk) -> None:
        try:
            payload = b"\n".join(zlib.decompress(p) for p in chunk.payloads)
        except zlib.error as exc:  # CRC was fine, so this is a bug or a foreign file
            log.error("influx spool record undecodable, skipped error=%s", exc)
            self._spool.advance(chunk.end)
            return
        result = self._post(payload)
        if result.outcome is _Outcome.OK:
            self._spool.advance(chunk.end)
            self._split_next = False
            self._on_written(chunk.count)
        elif result.outcome is _Outcome.REJECT:
            if len(chunk.payloads) > 1:
                self._split_next = True  # find the bad record, keep the good ones
                return
            self._spool.advance(chunk.end)
            self._split_next = False
            self._on_rejected(payload, chunk.count, result)
        else:
            self._on_failure(result)

    def _post(self, payload: bytes) -> _Result:
        """One write request; never raises."""
        if self._writes is None and not self._reload_token():
            return _Result(_Outcome.SETUP, message="no client (token_file unreadable?)")
        assert self._writes is not None
        try:
            # the request influxdb-client's WriteApi.write(bucket, org, record=bytes) makes,
            # with our own gzip level (the client's enable_gzip would recompress at level 9)
            body, headers = payload, {}
            if self.section.gzip:
                body, headers = gzip.compress(payload, _GZIP_LEVEL), {"content_encoding": "gzip"}
            self._writes.post_write(  # type: ignore[no-untyped-call]
                org=self.section.org,
                bucket=self.section.bucket,
                body=body,
                precision=_MS,
                content_type=_CONTENT_TYPE,
                **headers,
            )
            return _Result(_Outcome.OK)
        except ApiException as exc:
            return _classify(exc)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            return _Result(_Outcome.RETRY, message=f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # the client's own bug or an odd answer: retried, logged
            log.exception("influx write raised unexpectedly url=%s", self._safe_url)
            return _Result(_Outcome.RETRY, message=f"{type(exc).__name__}: {exc}")

    def _reload_token(self) -> bool:
        """(Re)build the client when the token file's content changed; False when unreadable."""
        token = ""
        if self.section.token_file:
            try:
                token = Path(self.section.token_file).read_text().strip()
            except OSError as exc:
                if self._token_error != exc.strerror:  # once per distinct error, not per retry
                    self._token_error = exc.strerror
                    log.error(
                        "influx token_file unreadable path=%s error=%s",
                        self.section.token_file,
                        exc.strerror,
                    )
                return False
        self._token_error = None
        if token == self._token and self._writes is not None:
            return True
        try:
            if self._client is not None:
                self._client.close()  # type: ignore[no-untyped-call]
            self._client = InfluxDBClient(
                url=self.section.url,
                token=token,
                org=self.section.org,
                timeout=int(self.section.timeout_s * 1000),
                enable_gzip=False,  # _post gzips (a cheaper level), see the module doc
                retries=False,  # the sink retries itself, with the spool behind
            )
            self._writes = WriteService(self._client.api_client)  # type: ignore[no-untyped-call]
            self._token = token
        except Exception:
            log.exception("influx client could not be built url=%s", self._safe_url)
            self._client = None
            self._writes = None
            return False
        return True

    def _on_written(self, count: int) -> None:
        self._attempt = 0
        with self._cond:
            self._c.written += count
            self._c.batches_written += 1
            self._c.last_write_at = self._clock()
            self._failing = False
            self._cond.notify_all()

    def _on_rejected(self, payload: bytes, count: int, result: _Result) -> None:
        self._attempt = 0
        with self._cond:
            self._c.rejected += count
            self._note_error_locked()
        saved = self._save_rejected(payload)
        log.warning(
            "influx server rejected a batch, skipped status=%d points=%d message=%s saved=%s",
            result.status,
            count,
            result.message[:300],
            saved,
        )

    def _save_rejected(self, payload: bytes) -> Path | None:
        folder = self.spool_dir / "rejected"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{int(time.time() * 1000)}-{self._c.rejected}.lp"
            path.write_bytes(payload)
            for old in sorted(folder.glob("*.lp"))[:-REJECTED_KEEP]:
                old.unlink(missing_ok=True)
            return path
        except OSError as exc:
            log.error("influx rejected batch not saved dir=%s error=%s", folder, exc)
            return None

    def _on_failure(self, result: _Result) -> None:
        """Count, log (rate-limited), and back off before the next attempt."""
        now = self._clock()
        with self._cond:
            self._note_error_locked()
            self._c.retries += 1
            self._failing = True
            self._cond.notify_all()
            if result.outcome is _Outcome.SETUP:
                self._c.auth_errors += 1
        first = self._outage_since is None
        if first:
            self._outage_since = now
        if first or now - self._last_fail_log >= LOG_EVERY_S:
            self._last_fail_log = now
            level = logging.ERROR if result.outcome is _Outcome.SETUP else logging.WARNING
            hint = " (check token_file / org / bucket)" if result.outcome is _Outcome.SETUP else ""
            log.log(
                level,
                "influx write failed, spooling until it succeeds%s url=%s status=%d error=%s "
                "token_file=%s spooled_points=%d",
                hint,
                self._safe_url,
                result.status,
                result.message[:300],
                self.section.token_file or "-",
                self._spool.pending_count,
            )
        self._attempt += 1
        base = min(
            self.section.max_backoff_s,
            self.section.min_backoff_s * 2 ** min(self._attempt - 1, 30),
        )
        delay = base * random.uniform(0.5, 1.0)
        if result.retry_after is not None:
            delay = min(result.retry_after, MAX_RETRY_AFTER_S)
        self._stop_sender.wait(delay)
        if result.outcome is _Outcome.SETUP:
            self._reload_token()

    def _note_error_locked(self) -> None:
        self._c.errors += 1
        self._c.last_error_at = self._clock()


def _classify(exc: ApiException) -> _Result:
    status = int(exc.status or 0)
    retry_after = _retry_after(exc.headers)
    message = str(getattr(exc, "message", "") or exc.reason or "")
    if status in (401, 403, 404):
        return _Result(_Outcome.SETUP, status, retry_after, message)
    if status in (0, 408, 429) or status >= 500:
        return _Result(_Outcome.RETRY, status, retry_after, message)
    if 400 <= status < 500:
        return _Result(_Outcome.REJECT, status, retry_after, message)
    return _Result(_Outcome.RETRY, status, retry_after, message)


def _retry_after(headers: Mapping[str, str] | None) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), else ``None``."""
    if not headers:
        return None
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _without_userinfo(url: str) -> str:
    """The URL without ``user:password@`` (for logs)."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=host))
