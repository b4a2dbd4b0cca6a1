"""A bounded, durable, ordered on-disk spool of records (the InfluxDB sink's store-and-forward).

Layout of the spool directory::

    000000000001.seg   append-only segment files, replayed in id order
    000000000002.seg
    cursor             "<segment> <offset>": where the next unsent record starts

Every record is framed as ``magic(4) length(u32) count(u32) crc32(u32)`` followed by ``length``
payload bytes; the CRC covers length, count and payload. ``count`` is the caller's own number
(the sink stores how many points a batch holds), so the spool can report its content without
decoding payloads.

Consumption is explicit: :meth:`Spool.peek` reads records from the cursor without consuming them,
:meth:`Spool.advance` moves the cursor past them once the caller has delivered them (the sink does
so only after a 2xx), so a record is never lost between reading and sending. Fully consumed
segments are deleted.

Durability: records are written with one ``write(2)`` each, so a ``kill -9`` of the process loses
nothing the call returned for (the page cache survives the process). ``fsync`` runs at most every
``fsync_interval_s`` during appends and on :meth:`Spool.sync` / :meth:`Spool.close`, so a power
cut loses at most that long (like Redis' ``appendfsync everysec``). The cursor is replaced
atomically but not fsynced: after a power cut it may lag, which replays a record twice, never
loses one.

Torn or corrupt records (power cut mid-write, a bad disk block) are found when the spool is
opened: a torn tail is cut off, a bad record in the middle is skipped up to the next valid
record, both counted (:attr:`Spool.torn_records`) and logged; nothing raises.

Bounded: :meth:`Spool.append` refuses a record (returns ``None``) when the segment files would
grow past ``max_bytes``; the caller counts what it could not keep.

Thread safety: every public method takes an internal lock; the methods block on disk I/O, so
asyncio callers run them in a thread.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

#: first bytes of every record (version 1 of the framing)
MAGIC: Final = b"CHS1"
_HEADER: Final = struct.Struct("<4sIII")
#: bytes of framing per record
HEADER_SIZE: Final = _HEADER.size
#: the largest payload one record may hold
MAX_RECORD_BYTES: Final = 256 * 1024 * 1024
_SEGMENT_SUFFIX: Final = ".seg"
_CURSOR_NAME: Final = "cursor"


@dataclass(frozen=True, order=True, slots=True)
class SpoolPosition:
    """A place in the spool: a segment id and a byte offset in it."""

    segment: int
    offset: int


@dataclass(frozen=True, slots=True)
class SpoolChunk:
    """Records read by :meth:`Spool.peek`, oldest first; pass it to :meth:`Spool.advance`."""

    payloads: tuple[bytes, ...]
    #: sum of the records' ``count``
    count: int
    #: where the record after the last one starts
    end: SpoolPosition


@dataclass(slots=True)
class _Segment:
    size: int
    count: int


@dataclass(frozen=True, slots=True)
class _Scan:
    """The valid records of one segment's bytes."""

    records: list[tuple[int, int]]  # (offset, end) of each valid record
    count: int
    bad: list[tuple[int, int]]  # (start, end) of each skipped stretch


class Spool:
    """An append-only segmented spool in ``directory``; call :meth:`open` before use."""

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int,
        segment_bytes: int = 4 * 1024 * 1024,
        fsync_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``max_bytes`` bounds the segment files' total size; ``segment_bytes`` is where a
        new segment starts (smaller segments free disk sooner during a replay)."""
        if max_bytes < 1 or segment_bytes < 1:
            raise ValueError("max_bytes and segment_bytes must be >= 1")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.fsync_interval_s = fsync_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._segments: dict[int, _Segment] = {}  # id -> size, count (whole file)
        self._cursor = SpoolPosition(1, 0)
        self._consumed_count = 0  # records' count before the cursor in the head segment
        self._active_id = 0  # segment appended to (0 = none yet)
        self._active_fd: int | None = None
        self._dirty = False
        self._dir_dirty = False
        self._last_sync = float("-inf")
        self._open = False
        self._pending_count = 0
        self._pending_bytes = 0
        self._disk_bytes = 0
        #: records (or runs of bytes) found torn/corrupt and skipped since open
        self.torn_records = 0
        #: bytes skipped with them
        self.torn_bytes = 0

    # state ---------------------------------------------------------------------------------
    # Plain ints kept up to date under the lock, so other threads may read them any time.
    @property
    def pending_count(self) -> int:
        """Sum of ``count`` over the records not consumed yet."""
        return self._pending_count

    @property
    def pending_bytes(self) -> int:
        """Bytes (framing included) of the records not consumed yet."""
        return self._pending_bytes

    @property
    def disk_bytes(self) -> int:
        """Total size of the segment files (what ``max_bytes`` bounds)."""
        return self._disk_bytes

    def _recount(self) -> None:
        head = self._segments.get(self._cursor.segment)
        self._disk_bytes = sum(s.size for s in self._segments.values())
        self._pending_count = sum(s.count for s in self._segments.values()) - (
            self._consumed_count if head is not None else 0
        )
        self._pending_bytes = self._disk_bytes - (self._cursor.offset if head is not None else 0)

    @property
    def is_empty(self) -> bool:
        """True when every record has been consumed."""
        return self.pending_bytes <= 0

    # open / close ----------------------------------------------------------------------------
    def open(self) -> None:
        """Create the directory, read the cursor, check every segment (cutting a torn tail,
        skipping corrupt records) and count what is pending."""
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            for tmp in self.directory.glob("*.tmp"):
                tmp.unlink(missing_ok=True)
            ids = sorted(
                int(p.stem) for p in self.directory.glob(f"*{_SEGMENT_SUFFIX}") if p.stem.isdigit()
            )
            cursor = self._read_cursor()
            # segments wholly before the cursor were consumed (a crash before their unlink)
            for seg_id in [i for i in ids if i < cursor.segment]:
                self._seg_path(seg_id).unlink(missing_ok=True)
            ids = [i for i in ids if i >= cursor.segment]
            if not ids or ids[0] != cursor.segment:
                cursor = SpoolPosition(ids[0] if ids else cursor.segment, 0)
            self._cursor = cursor
            self._consumed_count = 0
            for seg_id in ids:
                self._load_segment(seg_id)
            self._active_id = ids[-1] if ids else 0
            self._open = True
            self._drop_consumed_segments()
            self._write_cursor()
            if self._segments:
                log.info(
                    "spool opened dir=%s segments=%d pending_count=%d pending_bytes=%d",
                    self.directory,
                    len(self._segments),
                    self.pending_count,
                    self.pending_bytes,
                )

    def close(self) -> None:
        """Fsync and close the active segment (idempotent)."""
        with self._lock:
            if not self._open:
                return
            self._sync_locked()
            if self._active_fd is not None:
                os.close(self._active_fd)
                self._active_fd = None
            self._open = False

    # writing ---------------------------------------------------------------------------------
    def append(self, payload: bytes, count: int) -> SpoolPosition | None:
        """Store one record; returns where the record after it will start, or ``None`` when
        the spool is full (nothing stored)."""
        if len(payload) > MAX_RECORD_BYTES:
            raise ValueError(f"record of {len(payload)} bytes exceeds {MAX_RECORD_BYTES}")
        frame = _frame(payload, count)
        with self._lock:
            self._check_open()
            if self.disk_bytes + len(frame) > self.max_bytes:
                return None
            active = self._segments.get(self._active_id)
            if active is None or (
                active.size > 0 and active.size + len(frame) > self.segment_bytes
            ):
                self._roll_segment()
                active = self._segments[self._active_id]
            fd = self._active_fd_locked()
            _write_all(fd, frame)
            active.size += len(frame)
            active.count += count
            self._recount()
            self._dirty = True
            if self._clock() - self._last_sync >= self.fsync_interval_s:
                self._sync_locked()
            return SpoolPosition(self._active_id, active.size)

    def sync(self) -> None:
        """Fsync what was appended since the last sync (cheap when nothing was)."""
        with self._lock:
            if self._open:
                self._sync_locked()

    # reading ---------------------------------------------------------------------------------
    def peek(self, max_count: int, max_bytes: int = 16 * 1024 * 1024) -> SpoolChunk | None:
        """The oldest unconsumed records, at least one, more while their ``count`` sum stays
        within ``max_count`` and their payloads within ``max_bytes``; ``None`` when empty.
        Records are read from one segment per call."""
        with self._lock:
            self._check_open()
            while True:
                seg = self._segments.get(self._cursor.segment)
                if seg is None:
                    return None
                if self._cursor.offset < seg.size:
                    chunk = self._read_chunk(seg, max_count, max_bytes)
                    if chunk is not None:
                        return chunk
                    continue  # the rest of the segment was unreadable and skipped
                if self._cursor.segment == self._active_id:
                    return None
                self._next_segment()

    def advance(self, end: SpoolPosition) -> None:
        """Mark everything before ``end`` (a :attr:`SpoolChunk.end` or a position returned by
        :meth:`append`) consumed; consumed segments are deleted."""
        with self._lock:
            self._check_open()
            if end <= self._cursor:
                return
            while self._cursor.segment < end.segment and self._cursor.segment in self._segments:
                self._next_segment()
            seg = self._segments.get(end.segment)
            if seg is None or end.segment != self._cursor.segment:
                self._write_cursor()
                return
            self._consumed_count += self._count_between(self._cursor.offset, end.offset)
            self._cursor = SpoolPosition(end.segment, min(end.offset, seg.size))
            self._drop_consumed_segments()
            self._write_cursor()

    # internals -------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if not self._open:
            raise RuntimeError(f"spool {self.directory} is not open")

    def _seg_path(self, seg_id: int) -> Path:
        return self.directory / f"{seg_id:012d}{_SEGMENT_SUFFIX}"

    def _read_cursor(self) -> SpoolPosition:
        path = self.directory / _CURSOR_NAME
        try:
            seg, off = path.read_text().split()
            return SpoolPosition(int(seg), int(off))
        except FileNotFoundError:
            return SpoolPosition(1, 0)
        except (ValueError, OSError) as exc:
            log.warning(
                "spool cursor unreadable, replaying from the start path=%s error=%s", path, exc
            )
            return SpoolPosition(0, 0)

    def _write_cursor(self) -> None:
        path = self.directory / _CURSOR_NAME
        tmp = path.with_suffix(".tmp")
        tmp.write_text(f"{self._cursor.segment} {self._cursor.offset}\n")
        os.replace(tmp, path)
        self._recount()

    def _load_segment(self, seg_id: int) -> None:
        path = self._seg_path(seg_id)
        data = path.read_bytes()
        start = min(self._cursor.offset, len(data)) if seg_id == self._cursor.segment else 0
        scan = _scan(data, start)
        if scan.bad:
            self.torn_records += len(scan.bad)
            self.torn_bytes += sum(b - a for a, b in scan.bad)
            if len(scan.bad) == 1 and scan.bad[0][1] == len(data):
                cut = scan.bad[0][0]
                log.warning(
                    "spool segment has a torn tail, cut path=%s at=%d skipped_bytes=%d",
                    path,
                    cut,
                    len(data) - cut,
                )
                with open(path, "r+b") as f:
                    f.truncate(cut)
                    os.fsync(f.fileno())
                data = data[:cut]
            else:
                log.warning(
                    "spool segment has corrupt records, rewritten without them path=%s "
                    "bad_regions=%d skipped_bytes=%d",
                    path,
                    len(scan.bad),
                    sum(b - a for a, b in scan.bad),
                )
                data = b"".join(data[a:b] for a, b in scan.records)
                tmp = path.with_suffix(".tmp")
                with open(tmp, "wb") as f:
                    f.write(data)
                    os.fsync(f.fileno())
                os.replace(tmp, path)
                if seg_id == self._cursor.segment:
                    self._cursor = SpoolPosition(seg_id, 0)
                start = 0
        # the head segment's records before the cursor count as consumed
        consumed = _scan(data[:start], 0).count if start else 0
        self._segments[seg_id] = _Segment(size=len(data), count=consumed + scan.count)
        if seg_id == self._cursor.segment:
            self._consumed_count = consumed

    def _roll_segment(self) -> None:
        if self._active_fd is not None:
            self._sync_locked()
            os.close(self._active_fd)
            self._active_fd = None
        self._active_id = max(self._active_id, self._cursor.segment - 1) + 1
        self._segments[self._active_id] = _Segment(size=0, count=0)
        self._dir_dirty = True

    def _active_fd_locked(self) -> int:
        if self._active_fd is None:
            self._active_fd = os.open(
                self._seg_path(self._active_id), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640
            )
        return self._active_fd

    def _sync_locked(self) -> None:
        if self._dirty and self._active_fd is not None:
            os.fsync(self._active_fd)
        if self._dir_dirty:
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        self._dirty = self._dir_dirty = False
        self._last_sync = self._clock()

    def _read_chunk(self, seg: _Segment, max_count: int, max_bytes: int) -> SpoolChunk | None:
        """Records from the cursor in its segment; ``None`` after skipping an unreadable rest
        (corrupted since :meth:`open`)."""
        seg_id, offset = self._cursor.segment, self._cursor.offset
        payloads: list[bytes] = []
        count = 0
        size = 0
        with open(self._seg_path(seg_id), "rb") as f:
            while offset < seg.size:
                f.seek(offset)
                header = f.read(HEADER_SIZE)
                parsed = _parse_header(header)
                payload = f.read(parsed[0]) if parsed else b""
                if parsed is None or not _crc_ok(header, payload, parsed):
                    if payloads:
                        break  # hand out what was good; the next peek meets the bad bytes
                    self._skip_rest(seg, offset)
                    return None
                length, rec_count = parsed
                if payloads and (count + rec_count > max_count or size + length > max_bytes):
                    break
                payloads.append(payload)
                count += rec_count
                size += length
                offset += HEADER_SIZE + length
        return SpoolChunk(tuple(payloads), count, SpoolPosition(seg_id, offset))

    def _skip_rest(self, seg: _Segment, offset: int) -> None:
        skipped = seg.size - offset
        self.torn_records += 1
        self.torn_bytes += skipped
        log.error(
            "spool record unreadable, skipping the rest of the segment path=%s offset=%d "
            "skipped_bytes=%d",
            self._seg_path(self._cursor.segment),
            offset,
            skipped,
        )
        # the rest's count is unknown now: the whole segment counts as consumed
        self._consumed_count = seg.count
        self._cursor = SpoolPosition(self._cursor.segment, seg.size)
        self._drop_consumed_segments()
        self._write_cursor()

    def _count_between(self, start: int, end: int) -> int:
        """Sum of the record counts between two offsets of the cursor's segment."""
        total = 0
        with open(self._seg_path(self._cursor.segment), "rb") as f:
            offset = start
            while offset < end:
                f.seek(offset)
                parsed = _parse_header(f.read(HEADER_SIZE))
                if parsed is None:
                    break
                total += parsed[1]
                offset += HEADER_SIZE + parsed[0]
        return total

    def _next_segment(self) -> None:
        """Move the cursor to the start of the next segment, deleting the consumed one."""
        old = self._cursor.segment
        seg = self._segments.pop(old, None)
        if seg is not None:
            self._consumed_count = 0
        if old == self._active_id and self._active_fd is not None:
            os.close(self._active_fd)
            self._active_fd = None
        self._seg_path(old).unlink(missing_ok=True)
        later = [i for i in self._segments if i > old]
        self._cursor = SpoolPosition(min(later) if later else old + 1, 0)
        if not later:
            self._active_id = max(self._active_id, old)
        self._recount()

    def _drop_consumed_segments(self) -> None:
        """Delete the head segment when the cursor reached its end (the active one too, so a
        drained spool holds no files)."""
        while True:
            seg = self._segments.get(self._cursor.segment)
            if seg is None or self._cursor.offset < seg.size:
                return
            self._next_segment()


def _frame(payload: bytes, count: int) -> bytes:
    head = struct.pack("<II", len(payload), count)
    crc = zlib.crc32(payload, zlib.crc32(head))
    return _HEADER.pack(MAGIC, len(payload), count, crc) + payload


def _parse_header(header: bytes) -> tuple[int, int] | None:
    """``(length, count)`` of a well-formed header, else ``None``."""
    if len(header) < HEADER_SIZE:
        return None
    magic, length, count, _crc = _HEADER.unpack(header)
    if magic != MAGIC or length > MAX_RECORD_BYTES:
        return None
    return length, count


def _crc_ok(header: bytes, payload: bytes, parsed: tuple[int, int]) -> bool:
    length, _count = parsed
    if len(payload) != length:
        return False
    crc: int = _HEADER.unpack(header)[3]
    return zlib.crc32(payload, zlib.crc32(header[4:12])) == crc


def _record_at(data: bytes, offset: int) -> int | None:
    """The end offset of a valid record starting at ``offset``, else ``None``."""
    header = data[offset : offset + HEADER_SIZE]
    parsed = _parse_header(header)
    if parsed is None:
        return None
    end = offset + HEADER_SIZE + parsed[0]
    if end > len(data) or not _crc_ok(header, data[offset + HEADER_SIZE : end], parsed):
        return None
    return end


def _scan(data: bytes, start: int) -> _Scan:
    """Walk the records of ``data`` from ``start``; a bad stretch is skipped up to the next
    offset where a valid record starts (found by its magic)."""
    records: list[tuple[int, int]] = []
    bad: list[tuple[int, int]] = []
    count = 0
    offset = start
    while offset < len(data):
        end = _record_at(data, offset)
        if end is not None:
            records.append((offset, end))
            count += struct.unpack_from("<I", data, offset + 8)[0]
            offset = end
            continue
        probe = data.find(MAGIC, offset + 1)
        while probe != -1 and _record_at(data, probe) is None:
            probe = data.find(MAGIC, probe + 1)
        resume = len(data) if probe == -1 else probe
        bad.append((offset, resume))
        offset = resume
    return _Scan(records, count, bad)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
