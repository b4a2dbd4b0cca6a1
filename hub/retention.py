"""Retention and disk headroom of the recordings: what may be deleted, and only that.

Two rules, checked every ``retention_sweep_s``:

1. **age** — a segment older than its venue kind's ``retention_days`` is deleted;
2. **headroom** — when the disk's free space falls below ``headroom_mb`` (or the recordings
   exceed ``quota_mb``), the oldest segments are deleted first until there is room again, and an
   alert says so: a court should buy disk before this rule eats into its retention period.

Neither rule ever deletes a segment of a hearing under legal hold (the index re-checks the hold
in the deleting transaction). Each deletion keeps its index row and chain entry, marked
deleted with the reason, and is written to the audit trail: evidence is never silently removed.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hub.alerts import AlertBoard, Severity
from hub.audit import Action, AuditLog
from hub.recorder_config import RecorderConfig
from hub.recording_index import HeldError, RecordingIndex, SegmentRecord

log = logging.getLogger(__name__)

MB = 1024 * 1024
DAY_MS = 86_400_000
HEADROOM_ALERT = "disk-headroom"
#: segments deleted per index query while restoring headroom
BATCH = 50


def free_bytes(path: Path) -> int:
    """Free bytes on the file system holding ``path``."""
    return shutil.disk_usage(path).free


@dataclass
class SweepResult:
    """What one sweep did."""

    deleted_for_age: int = 0
    deleted_for_room: int = 0
    bytes_freed: int = 0
    short_bytes: int = 0  # still missing after deleting everything deletable


class RetentionSweeper:
    """Applies the age and headroom rules to the recording index."""

    def __init__(
        self,
        config: RecorderConfig,
        index: RecordingIndex,
        *,
        alerts: AlertBoard | None = None,
        audit: AuditLog | None = None,
        venue_kinds: Mapping[str, str] | None = None,
        disk_free: Callable[[Path], int] = free_bytes,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``venue_kinds`` maps venue id → venue kind (default: from the configured cameras)."""
        self.config = config
        self.index = index
        self.alerts = alerts
        self.audit = audit
        # venues of the cameras and of the microphones (an audio-only room has retention too)
        known = {m.venue: m.venue_kind for m in config.microphones}
        known.update({c.venue: c.venue_kind for c in config.cameras})
        self.venue_kinds = dict(venue_kinds or known)
        self.disk_free = disk_free
        self.clock = clock
        self.sweeps = 0
        self.failures = 0

    async def run(self) -> None:
        """Sweep every ``retention_sweep_s`` until cancelled; a failed sweep is logged, not fatal."""
        while True:
            try:
                await self.sweep()
            except Exception:
                self.failures += 1
                log.exception("retention sweep failed")
            await asyncio.sleep(self.config.retention_sweep_s)

    async def sweep(self) -> SweepResult:
        """Apply both rules once."""
        result = SweepResult()
        await self._by_age(result)
        await self._by_room(result)
        self.sweeps += 1
        return result

    async def _by_age(self, result: SweepResult) -> None:
        now_ms = int(self.clock() * 1000)
        by_kind: dict[str, list[str]] = {}
        for venue, kind in self.venue_kinds.items():
            by_kind.setdefault(kind, []).append(venue)
        for kind, venues in sorted(by_kind.items()):
            days = self.config.retention_for(kind)
            if days <= 0:
                continue
            cutoff = now_ms - int(days * DAY_MS)
            while True:
                batch = await self.index.deletable(older_than_ms=cutoff, venues=venues, limit=BATCH)
                if not batch:
                    break
                reason = f"retention: older than {days:g} days ({kind})"
                count, freed = await self._delete(batch, reason)
                result.deleted_for_age += count
                result.bytes_freed += freed
                # a batch that deleted nothing would come back unchanged: retried next sweep
                if len(batch) < BATCH or count == 0:
                    break

    async def _by_room(self, result: SweepResult) -> None:
        missing = await self._missing_bytes()
        if missing <= 0:
            if self.alerts is not None and self.alerts.is_active(HEADROOM_ALERT):
                await self.alerts.clear(HEADROOM_ALERT)
            return
        deleted = 0
        while missing > 0:
            batch = await self.index.deletable(limit=BATCH)
            if not batch:
                break
            chosen: list[SegmentRecord] = []
            for segment in batch:  # oldest first, only as many as needed
                if missing <= 0:
                    break
                chosen.append(segment)
                missing -= segment.bytes
            reason = "headroom: disk below the configured free space"
            count, freed = await self._delete(chosen, reason)
            deleted += count
            result.bytes_freed += freed
            missing = await self._missing_bytes()
            if count == 0:
                break  # the oldest cannot be deleted now (logged): retried next sweep
        result.deleted_for_room += deleted
        result.short_bytes = max(0, missing)
        await self._alert_room(deleted, result)

    async def _missing_bytes(self) -> int:
        """How many bytes must go to meet the headroom and the quota (≤ 0: none)."""
        root = self.index.storage_root
        free = await asyncio.to_thread(self.disk_free, root)
        missing = int(self.config.headroom_mb * MB) - free
        if self.config.quota_mb > 0:
            used = await self.index.stored_bytes()
            missing = max(missing, used - int(self.config.quota_mb * MB))
        return missing

    async def _alert_room(self, deleted: int, result: SweepResult) -> None:
        if self.alerts is None:
            return
        if result.short_bytes > 0:
            short_mb = -(-result.short_bytes // MB)  # rounded up: never "0 MB short"
            message = (
                f"磁盘空间不足：仅剩受保全或不可删除的录像，仍缺 {short_mb} MB / "
                f"disk below headroom; only held material left, {short_mb} MB short"
            )
            await self.alerts.raise_alert(
                HEADROOM_ALERT, message, source="recorder", severity=Severity.CRITICAL
            )
        elif deleted:
            message = (
                f"磁盘空间低于预留：已删除最旧的 {deleted} 段录像 / "
                f"disk below headroom: deleted the {deleted} oldest unheld segments"
            )
            await self.alerts.raise_alert(HEADROOM_ALERT, message, source="recorder")

    async def _delete(self, segments: Sequence[SegmentRecord], reason: str) -> tuple[int, int]:
        """Delete what may be deleted of ``segments``: (segments deleted, bytes freed)."""
        freed = 0
        deleted: list[str] = []
        now_ms = int(self.clock() * 1000)
        for segment in segments:
            try:
                await self.index.delete_segment(segment.id, reason=reason, at_ms=now_ms)
            except HeldError:
                continue  # put under hold since the query: kept, as it must be
            except (OSError, KeyError) as exc:
                log.error("retention delete failed segment=%s error=%s", segment.path, exc)
                continue
            freed += segment.bytes
            deleted.append(segment.path)
        if deleted:
            log.info(
                "retention deleted segments=%d bytes=%d reason=%s", len(deleted), freed, reason
            )
            if self.audit is not None:
                await self.audit.record(
                    "recorder",
                    Action.RETENTION_DELETE.value,
                    target=f"{len(deleted)} segments",
                    detail={"reason": reason, "bytes": freed, "paths": deleted[:100]},
                )
        return len(deleted), freed
