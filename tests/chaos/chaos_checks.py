"""Invariant checks run after every fault of the chaos suite, and the report they make.

Each check looks at the court the way its users would and returns a :class:`Check`:

- ``devices``: every device and agent back online in the hub's API (a device may instead report
  its *own* fault, e.g. a jammed kiosk printer);
- ``tickets``: every ticket a kiosk received is in the hub's queue with the same number, no
  request got two numbers, no request was abandoned, nothing is still unanswered;
- ``telemetry``: every telemetry message the agents put on the broker (seen by the monitor, up
  to a cut-off) is stored exactly once in VictoriaMetrics and in the embedded SQLite store, and
  none is filed in the future (an agent clock ahead must not put points an hour ahead);
- ``recordings``: ``courthub verify`` passes, every hole between a camera's or seat
  track's segments is covered by a gap record, and no segment starts in the future or on top of
  the previous one of its track (an agent clock stepped back);
- ``transcript``: no final segment that was stored disappears, finals keep coming, and no
  speaking seat has a hole in its finals that no audio gap explains (only with Vosk);
- ``audit``: ``courthub audit verify`` passes;
- ``hub``: the hub process is alive and answering.

Checks that depend on the court catching up are *waited for* (:func:`wait_ok`) with a timeout;
nothing asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import os
import sqlite3
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos_court import CAMERA_FPS, REPO, ChaosCourt, SentTelemetry

from device_drivers.kiosk_messages import TicketRequest

#: a hole between segments shorter than this is frame spacing, not a gap
VIDEO_HOLE_TOLERANCE_MS = 1500
#: a point or segment stamped further ahead of the hub's clock is filed in the future
FUTURE_TOLERANCE_MS = 60_000
#: segments of one track overlapping by more than this were filed on top of each other. One
#: frame of a camera: a stream-copy segment's end is its last packet's time plus one frame, and
#: the simulated cameras stamp frames with their wall clock, which jitters under load (the first
#: full run saw 175-200 ms overlaps at 5 fps, about every 20th segment; a 150 s run of ffmpeg's
#: segment list on an idle machine had none)
OVERLAP_TOLERANCE_MS = int(1000 / CAMERA_FPS) + 10
#: how close a skewed agent's point must be filed to its stamp minus the clock offset (the
#: hub's estimate is off by a transit delay, up to ~0.5 s on a busy 2-core machine)
SKEW_MATCH_MS = 1500


@dataclass
class Check:
    """One invariant's verdict; ``details`` name what is wrong (or what was measured)."""

    name: str
    ok: bool
    summary: str
    details: list[str] = field(default_factory=list)
    #: a failure explained by a known bug (KNOWN_BUGS); it fails only in strict runs
    known: str = ""

    @property
    def passed(self) -> bool:
        return self.ok or bool(self.known)

    def lines(self) -> list[str]:
        mark = "ok  " if self.ok else ("KNOWN" if self.known else "FAIL")
        head = f"  [{mark}] {self.name}: {self.summary}"
        known = [f"         known bug: {self.known}"] if self.known and not self.ok else []
        return [head, *known, *(f"         {d}" for d in self.details)]


#: Failures the suite found in the hub and agents (see the report in tests/chaos/README.md):
#: (check, which faults or "*", detail substrings that all problems must contain one of, bug).
#: ``make test`` reports them as KNOWN; ``make chaos`` (COURTHUB_CHAOS_STRICT=1) fails on them.
KNOWN_BUGS: tuple[tuple[str, tuple[str, ...], tuple[str, ...], str], ...] = (
    # fixed since the suite found them: serial_link's spurious "end of file" on a VMIN=0 tty
    # (device_drivers/serial_link.py), the hub's own downtime missing from the gap records
    # (hub/downtime_gaps.py), and telemetry lost by a hub kill -9 between paho's automatic
    # PUBACK and the hand-over to the sinks (manual acks: hub/mqtt_process.py)
)


def mark_known(check: Check, fault: str, *, strict: bool) -> Check:
    """Tag ``check`` with the known bug explaining every one of its problems (unless strict)."""
    if check.ok or strict:
        return check
    for name, faults, needles, bug in KNOWN_BUGS:
        if name != check.name or ("*" not in faults and fault not in faults):
            continue
        if check.details and all(any(n in d for n in needles) for d in check.details):
            check.known = bug
    return check


@dataclass
class FaultReport:
    """What one fault did to the court."""

    fault: str
    checks: list[Check] = field(default_factory=list)
    note: str = ""

    @property
    def ok(self) -> bool:
        return all(c.passed for c in self.checks)

    def text(self) -> str:
        head = f"== {self.fault}: {'OK' if self.ok else 'FAILED'}" + (
            f" ({self.note})" if self.note else ""
        )
        return "\n".join([head, *(line for c in self.checks for line in c.lines())])


async def wait_ok(
    probe: Callable[[], Awaitable[Check]], timeout: float, *, stall_s: float = 12.0
) -> Check:
    """Run ``probe`` until it passes; give up after ``timeout`` seconds, or earlier when its
    verdict has not changed for ``stall_s`` (a loss that stays is not going to heal)."""
    deadline = time.monotonic() + timeout
    last: tuple[str, ...] = ()
    since = time.monotonic()
    while True:
        try:
            check = await probe()
        except Exception as exc:  # the hub restarting, a file being replaced…
            check = Check("probe", False, f"{type(exc).__name__}: {exc}")
        now = time.monotonic()
        verdict = (check.summary if check.name == "probe" else "", *check.details)
        if verdict != last:
            last, since = verdict, now
        if check.ok or now > deadline or now - since > stall_s:
            return check
        await asyncio.sleep(1.0)


@contextmanager
def read_only(db: Path) -> Iterator[sqlite3.Connection]:
    """A read-only SQLite connection to a live WAL database of the hub."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        yield conn
    finally:
        conn.close()


# devices ------------------------------------------------------------------------------------------
async def check_devices(court: ChaosCourt) -> Check:
    """Every agent and device online (or reporting its own fault)."""
    devices = (await court.api("GET", "/api/v1/devices"))["devices"]
    agents = (await court.api("GET", "/api/v1/agents"))["agents"]
    bad = [
        f"{d['agent']}/{d['id']} {d['state']} {d.get('state_reason', '')}".strip()
        for d in devices
        if d["state"] != "online" and not (d["state"] == "fault" and d.get("reported_reason"))
    ]
    bad += [f"agent {a['id']} offline" for a in agents if not a.get("online")]
    expected = {v.agent for v in court.scenario.venues}
    missing = sorted(expected - {a["id"] for a in agents})
    bad += [f"agent {a} unknown to the hub" for a in missing]
    summary = f"{len(devices) - len(bad)}/{len(devices)} devices up, {len(agents)} agents"
    return Check("devices", not bad, summary, bad[:20])


# tickets ------------------------------------------------------------------------------------------
def _hub_tickets(court: ChaosCourt) -> dict[str, str]:
    with read_only(court.hub_dir / "queue.db") as db:
        rows = db.execute("SELECT request_id, number FROM tickets WHERE request_id IS NOT NULL")
        return {str(rid): str(number) for rid, number in rows}


async def check_tickets(court: ChaosCourt) -> Check:
    """Kiosks' tickets vs the hub's queue.

    Only ticket requests count: the simulated kiosks also send case look-ups, which no hub
    service answers yet (they are abandoned by design of the simulator, not lost by a fault).
    """
    hub = await asyncio.to_thread(_hub_tickets, court)
    problems: list[str] = []
    got = 0
    stats: Counter[str] = Counter()
    for kiosk in court.court.kiosks.values():
        stats.update(kiosk.stats)
        for rid, answers in list(kiosk.tickets.items()):
            got += 1
            numbers = {t.number for t in answers}
            if len(numbers) > 1:
                problems.append(f"request {rid} got several numbers: {sorted(numbers)}")
            for number in numbers:
                if hub.get(rid) != number:
                    problems.append(f"kiosk ticket {number} ({rid}) not in the hub's queue")
        asked = {m.request_id for m in list(kiosk.sent) if isinstance(m, TicketRequest)}
        for rid in sorted(asked - set(kiosk.tickets)):
            pending = kiosk.pending.get(rid)
            if pending is None:
                problems.append(f"ticket request {rid} of {kiosk.kiosk_id} abandoned unanswered")
            elif pending.repeats >= 2:  # waited two answer timeouts: not just in flight
                problems.append(f"ticket request {rid} of {kiosk.kiosk_id} still unanswered")
    issued = Counter(hub.values())
    problems += [f"number {n} issued {c} times" for n, c in issued.items() if c > 1]
    summary = (
        f"{got} tickets at kiosks, {len(hub)} in the hub's queue, "
        f"{stats['repeats']} repeated requests, {stats['duplicate_answers']} duplicate answers"
    )
    return Check("tickets", not problems, summary, problems[:20])


# telemetry ----------------------------------------------------------------------------------------
Key = tuple[str, str, int]  # agent, device, ts


def _embedded_points(court: ChaosCourt, since_ms: int) -> set[Key]:
    with read_only(court.hub_dir / "telemetry.db") as db:
        rows = db.execute(
            "SELECT DISTINCT s.agent, s.device, r.ts_ms FROM raw r JOIN series s "
            "ON s.id = r.series_id WHERE s.measurement = 'device' AND r.ts_ms > ?",
            (since_ms,),
        )
        return {(a, d, int(ts)) for a, d, ts in rows}


def _vm_points(court: ChaosCourt, since_ms: int) -> tuple[set[Key], list[str]]:
    """Points in VM after ``since_ms`` (one key per point) and the duplicated samples."""
    samples = court.vm.export('{__name__=~"device_.+",__name__!~"device_health_.+"}')
    samples = [s for s in samples if s.ts_ms > since_ms]
    counts: Counter[tuple[str, str, str, int]] = Counter(
        (s.name, s.label("agent"), s.label("device"), s.ts_ms) for s in samples
    )
    dups = [f"{n} {a}/{d} ts={ts} ×{c}" for (n, a, d, ts), c in counts.items() if c > 1]
    return {(a, d, ts) for (_, a, d, ts) in counts}, dups


async def check_telemetry(court: ChaosCourt, since: int, cutoff_ms: int) -> Check:
    """Agents' telemetry (monitor) stamped in (``since``, ``cutoff_ms``] vs VictoriaMetrics and
    the SQLite store."""
    sent = [m for m in list(court.monitor.sent.values()) if since < m.ts <= cutoff_ms]
    expected = {(m.agent, m.device, m.ts) for m in sent}
    # refiled points of a skewed agent may lie before ``since`` or after the cut-off
    all_vm, dups = await asyncio.to_thread(_vm_points, court, since - 60_000)
    all_embedded = await asyncio.to_thread(_embedded_points, court, since - 60_000)
    vm = {k for k in all_vm if since < k[2] <= cutoff_ms}
    embedded = {k for k in all_embedded if since < k[2] <= cutoff_ms}
    offsets = tuple(court.clock_offsets_ms)
    # a skewed agent's points may be refiled outside the window: match against everything
    lost_vm, _ = refiled(expected, vm | _skewed_keys(court, all_vm), court.clocks, offsets)
    lost_emb, _ = refiled(
        expected, embedded | _skewed_keys(court, all_embedded), court.clocks, offsets
    )
    problems = [f"{len(lost_vm)} points not in VictoriaMetrics"] if lost_vm else []
    problems += [f"{len(lost_emb)} points not in the embedded store"] if lost_emb else []
    problems += [f"{len(dups)} duplicated samples in VictoriaMetrics"] if dups else []
    future = await asyncio.to_thread(_future_points, court)
    problems += [f"{n} points filed in the future in {sink}" for sink, n in future.items() if n]
    details = problems + [f"e.g. lost {a}/{d} ts={ts}" for a, d, ts in (lost_vm or lost_emb)[:5]]
    details += [f"e.g. duplicate {d}" for d in dups[:3]]
    replayed = sum(1 for m in sent if m.historical)
    summary = (
        f"{len(expected)} points sent ({replayed} replayed from outboxes); "
        f"lost: VM {len(lost_vm)}, embedded {len(lost_emb)}; duplicated in VM: {len(dups)}"
    )
    return Check("telemetry", not problems, summary, details)


def _future_points(court: ChaosCourt) -> dict[str, int]:
    """Points stamped more than FUTURE_TOLERANCE_MS ahead of now, per sink."""
    ahead = int(time.time() * 1000) + FUTURE_TOLERANCE_MS
    with read_only(court.hub_dir / "telemetry.db") as db:
        embedded = db.execute("SELECT COUNT(*) FROM raw WHERE ts_ms > ?", (ahead,)).fetchone()[0]
    samples = court.vm.export('{__name__=~"device_.+"}')
    return {"the embedded store": int(embedded), "VM": sum(1 for x in samples if x.ts_ms > ahead)}


def _skewed_keys(court: ChaosCourt, keys: set[Key]) -> set[Key]:
    """The points of ``keys`` sent by agents whose clock the suite steps."""
    return {k for k in keys if k[0] in court.clocks}


def refiled(
    expected: set[Key], stored: set[Key], skewed: Collection[str], offsets: tuple[int, ...]
) -> tuple[list[Key], Counter[int]]:
    """Pair every point sent (``expected``) with one point stored, each stored point used once.

    A point matches a stored point at its own stamp; a point of a ``skewed`` agent may instead
    match one filed on the hub's clock, within SKEW_MATCH_MS of its stamp minus one of
    ``offsets`` (the hub files it at stamp minus the measured offset, or at its arrival before
    a step is confirmed: off by the transit delay). The pairing is a maximum matching per
    (agent, device), not first come first served: after a clock step back by 5 s a point's
    refiled time can equal the stamp of the point sent 5 s later to the millisecond (the first
    full run after session 6 saw one), and claiming that stored point "as stamped" would leave
    the earlier point without a partner. Returns the points left without one (lost), and the
    matches per offset (0 = as stamped)."""
    stored_times: dict[tuple[str, str], list[int]] = {}
    for agent, device, ts in stored:
        stored_times.setdefault((agent, device), []).append(ts)
    sent: dict[tuple[str, str], list[int]] = {}
    for agent, device, ts in expected:
        sent.setdefault((agent, device), []).append(ts)
    lost: list[Key] = []
    found: Counter[int] = Counter()
    for (agent, device), stamps in sorted(sent.items()):
        times = sorted(stored_times.get((agent, device), []))
        offs = offsets if agent in skewed else ()
        pairs = _max_matching(sorted(stamps), times, offs)
        lost += [(agent, device, ts) for ts in stamps if ts not in pairs]
        for ts, t in pairs.items():
            found[0 if t == ts else min(offs, key=lambda off: abs(t - (ts - off)))] += 1
    return sorted(lost), found


def _max_matching(stamps: list[int], times: list[int], offsets: tuple[int, ...]) -> dict[int, int]:
    """Stamp -> stored time, as many pairs as possible (augmenting paths, breadth first)."""
    exact = set(times)

    def candidates(ts: int) -> list[int]:
        near = [ts] if ts in exact else []
        for off in offsets:
            lo = bisect.bisect_left(times, ts - off - SKEW_MATCH_MS)
            hi = bisect.bisect_right(times, ts - off + SKEW_MATCH_MS)
            near += sorted(times[lo:hi], key=lambda t: abs(t - (ts - off)))
        return near

    edges = {ts: candidates(ts) for ts in stamps}
    owner: dict[int, int] = {}  # stored time -> stamp
    pair: dict[int, int] = {}  # stamp -> stored time
    for ts in stamps:  # as stamped first: most points are, and it keeps the paths short
        if ts in exact:
            owner[ts] = pair[ts] = ts
    for root in stamps:
        if root in pair:
            continue
        came_from: dict[int, int] = {}  # stored time -> stamp that reached it
        queue, seen = [root], {root}
        free = None
        while queue and free is None:
            ts = queue.pop(0)
            for t in edges[ts]:
                if t in came_from:
                    continue
                came_from[t] = ts
                if t not in owner:
                    free = t
                    break
                if owner[t] not in seen:
                    seen.add(owner[t])
                    queue.append(owner[t])
        while free is not None:  # flip the path back to the root
            ts = came_from[free]
            previous = pair.get(ts)
            owner[free], pair[ts] = ts, free
            free = previous
    return pair


async def check_skewed_telemetry(
    court: ChaosCourt, sent: list[SentTelemetry], offsets_ms: tuple[int, ...], since_ms: int
) -> Check:
    """Every point of ``sent`` (agents whose clock was off by one of ``offsets_ms``) is in both
    sinks, once: at its own stamp, or refiled on the hub's clock (:func:`refiled`)."""
    embedded = await asyncio.to_thread(_embedded_points, court, since_ms - 60_000)
    vm, _ = await asyncio.to_thread(_vm_points, court, since_ms - 60_000)
    expected = {(m.agent, m.device, m.ts) for m in sent}
    problems: list[str] = []
    figures: list[str] = []
    for sink, stored in (("the embedded store", embedded), ("VM", vm)):
        lost, found = refiled(expected, stored, court.clocks, offsets_ms)
        figures.append(
            f"{sink}: {found.pop(0, 0)} as stamped, "
            + ", ".join(f"{n} refiled {off / 1000:+.0f} s" for off, n in sorted(found.items()))
        )
        if lost:
            problems.append(f"{len(lost)} points of skewed agents not in {sink}")
            problems += [f"e.g. lost {a}/{d} ts={ts}" for a, d, ts in lost[:3]]
    summary = f"{len(expected)} points from skewed agents; " + "; ".join(figures)
    return Check("skewed telemetry", not problems, summary, problems)


# recordings ---------------------------------------------------------------------------------------
def _courthub(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hub.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        check=False,
    )


def _uncovered_holes(
    court: ChaosCourt, since_ms: int, settled_ms: int
) -> tuple[list[str], dict[str, int]]:
    """Holes between consecutive segments of a camera/track that no gap record covers."""
    with read_only(court.hub_dir / "recordings.db") as db:
        segments = db.execute(
            "SELECT camera, start_ms, end_ms FROM segments ORDER BY camera, start_ms"
        ).fetchall()
        gaps = db.execute("SELECT camera, from_ms, COALESCE(to_ms, ?) FROM gaps", (2**62,))
        by_camera: dict[str, list[tuple[int, int]]] = {}
        for camera, lo, hi in gaps:
            by_camera.setdefault(camera, []).append((lo, hi))
    holes: list[str] = []
    counts: Counter[str] = Counter()
    last_end: dict[str, int] = {}
    for camera, start, end in segments:
        counts[camera] += 1
        prev = last_end.get(camera)
        last_end[camera] = max(end, prev or end)
        if (
            prev is None
            or start - prev <= VIDEO_HOLE_TOLERANCE_MS
            or start > settled_ms
            or start < since_ms
        ):
            continue
        covered = sorted(g for g in by_camera.get(camera, []) if g[1] >= prev and g[0] <= start)
        cursor = prev + VIDEO_HOLE_TOLERANCE_MS // 2
        for lo, hi in covered:
            if lo <= cursor:
                cursor = max(cursor, hi)
        if cursor < start - VIDEO_HOLE_TOLERANCE_MS // 2:
            holes.append(f"{camera}: {start - prev} ms between segments at {prev} without a gap")
    return holes, dict(counts)


async def check_recordings(
    court: ChaosCourt, since_ms: int, reported: frozenset[str] = frozenset()
) -> Check:
    """``courthub verify`` on every closed segment, and every hole recorded as a gap."""
    verify = await asyncio.to_thread(
        _courthub, "verify", str(court.storage), "--config", str(court.config_path)
    )
    lines = verify.stdout.strip().splitlines()
    problems = [] if verify.returncode == 0 else [f"courthub verify exit {verify.returncode}"]
    if verify.returncode != 0:
        problems += [ln for ln in lines if not ln.startswith("note:")][:10]
        problems += verify.stderr.strip().splitlines()[-3:]
    # segments still being written may end after "now - settle"
    settled = int(time.time() * 1000) - 15_000
    holes, counts = await asyncio.to_thread(_uncovered_holes, court, since_ms, settled)
    problems += [h for h in holes if h not in reported][:10]
    problems += (await asyncio.to_thread(_misfiled_segments, court))[:10]
    gaps = await asyncio.to_thread(_gap_count, court)
    summary = (
        f"{sum(counts.values())} segments on {len(counts)} cameras/tracks, {gaps} gap records; "
        f"verify: {lines[-1] if lines else verify.stderr.strip()[-200:]}"
    )
    return Check("recordings", not problems, summary, problems)


def _misfiled_segments(court: ChaosCourt) -> list[str]:
    """Segments starting in the future, or before the previous segment of their track ended."""
    ahead = int(time.time() * 1000) + FUTURE_TOLERANCE_MS
    with read_only(court.hub_dir / "recordings.db") as db:
        segments = db.execute(
            "SELECT camera, start_ms, end_ms FROM segments ORDER BY camera, start_ms, id"
        ).fetchall()
    problems = [f"{cam}: segment at {start} filed {start - ahead + FUTURE_TOLERANCE_MS} ms "
                "in the future" for cam, start, _ in segments if start > ahead]  # fmt: skip
    for (cam_a, _, end_a), (cam_b, start_b, _) in itertools.pairwise(segments):
        if cam_a == cam_b and start_b < end_a - OVERLAP_TOLERANCE_MS:
            problems.append(f"{cam_b}: segment at {start_b} overlaps the previous one by "
                            f"{end_a - start_b} ms")  # fmt: skip
    return problems


def _gap_count(court: ChaosCourt) -> int:
    with read_only(court.hub_dir / "recordings.db") as db:
        return int(db.execute("SELECT COUNT(*) FROM gaps").fetchone()[0])


# transcript ---------------------------------------------------------------------------------------
@dataclass
class TranscriptWatch:
    """Finals seen so far: none may disappear, and new ones must keep coming."""

    seen: dict[int, tuple[str, int]] = field(default_factory=dict)  # id → (seat, start_us)

    async def check(self, court: ChaosCourt, after_ms: int) -> Check:
        if not court.transcribe:
            return Check("transcript", True, "not checked (transcription off in this profile)")
        body = await court.api("GET", f"/api/v1/hearings/{court.hearing_id}/transcript")
        segments = body["segments"]
        now = {int(s["id"]): (str(s["seat"]), int(s["start_us"])) for s in segments}
        problems = [f"final {i} ({seat}) disappeared" for i, (seat, _) in self.seen.items()
                    if i not in now]  # fmt: skip
        fresh = [s for s in segments if int(s["start_us"]) // 1000 > after_ms]
        if not fresh:
            problems.append("no new final segment since the fault ended")
        spans = [(str(s["seat"]), int(s["start_us"]), int(s.get("end_us", s["start_us"])))
                 for s in segments]  # fmt: skip
        holes = await asyncio.to_thread(_transcript_holes, court, spans)
        problems += holes
        if not problems:
            self.seen = now
        summary = f"{len(now)} finals, {len(fresh)} since the fault"
        return Check("transcript", not problems, summary, problems[:10])


def _transcript_holes(court: ChaosCourt, finals: list[tuple[str, int, int]]) -> list[str]:
    """A speaking seat's finals come once per round of its looped speech; a round without one
    that no audio gap of that seat's track explains is a lost final. ``finals``: (seat,
    start_us, end_us). Measured from a final's *end*: the recogniser sometimes joins two rounds
    in one final (seen at a hearing's start), which loses nothing."""
    with read_only(court.hub_dir / "recordings.db") as db:
        gaps = db.execute("SELECT camera, from_ms, COALESCE(to_ms, ?) FROM gaps", (2**62,))
        gap_list = list(gaps)
    holes: list[str] = []
    for seat in ("judge", "plaintiff"):
        spans = sorted((start // 1000, end // 1000) for s, start, end in finals if s == seat)
        steps = [b[0] - a[0] for a, b in itertools.pairwise(spans)]
        if len(steps) < 3:
            continue
        period = statistics.median(steps)
        track = f"court-1-mic-1-{seat}"
        for (_, a), (b, _) in itertools.pairwise(spans):
            if b - a > period and not any(
                t == track and lo < b and hi > a for t, lo, hi in gap_list
            ):
                holes.append(f"{seat}: no final for {b - a} ms (round {period:.0f} ms), no gap")
    return holes


# audit, hub ---------------------------------------------------------------------------------------
async def check_audit(court: ChaosCourt) -> Check:
    """``courthub audit verify`` (the hash chain of the audit trail)."""
    result = await asyncio.to_thread(_courthub, "audit", "verify", "--data-dir", str(court.hub_dir))
    text = (result.stdout.strip() or result.stderr.strip()).splitlines()
    return Check("audit", result.returncode == 0, text[-1] if text else f"exit {result.returncode}")


async def check_hub(court: ChaosCourt) -> Check:
    """The hub process runs and reports its counters."""
    proc = court.hub_proc
    if proc is None or proc.poll() is not None:
        return Check("hub", False, f"hub process exited ({proc.returncode if proc else '-'})")
    stats: dict[str, Any] = await court.api("GET", "/api/v1/stats")
    summary = (
        f"pid {proc.pid}, starts {court.hub_starts}, bad messages {stats.get('bad_messages')} "
        f"{stats.get('bad_by_reason')}, seq lost {stats.get('lost')}, "
        f"replayed {stats.get('outbox_replayed')}"
    )
    return Check("hub", True, summary)


@dataclass
class Window:
    """The time since the previous report: each report judges what happened in its window."""

    since_ms: int = 0
    #: holes already reported by an earlier report (a hole may straddle two windows)
    holes: set[str] = field(default_factory=set)


async def check_all(
    court: ChaosCourt,
    fault: str,
    fault_end_ms: int,
    transcript: TranscriptWatch,
    window: Window,
    *,
    wait_s: float,
) -> FaultReport:
    """Every invariant after ``fault``; each waited for up to ``wait_s`` seconds."""
    report = FaultReport(fault)
    since = window.since_ms
    report.checks.append(await wait_ok(lambda: check_hub(court), wait_s))
    report.checks.append(await wait_ok(lambda: check_devices(court), wait_s))
    report.checks.append(await wait_ok(lambda: check_tickets(court), wait_s))
    cutoff = int(time.time() * 1000) - 2000
    # a loss that stays the same for 12 s is not "not going to heal" while the InfluxDB sink
    # waits out its back-off (up to max_backoff_s, 30 s) before replaying its spool
    report.checks.append(
        await wait_ok(lambda: check_telemetry(court, since, cutoff), wait_s, stall_s=45.0)
    )
    reported = frozenset(window.holes)
    recordings = await wait_ok(lambda: check_recordings(court, since, reported), wait_s)
    window.holes.update(d for d in recordings.details if "without a gap" in d)
    report.checks.append(recordings)
    # "no new final yet" is not a loss that stays: a fresh final needs a whole speaking round
    # after the fault, and after a hub restart the recogniser first works through the audio the
    # broker sends again, so this check waits its full time rather than the 12 s stall
    report.checks.append(
        await wait_ok(lambda: transcript.check(court, fault_end_ms), wait_s, stall_s=wait_s)
    )
    report.checks.append(await check_audit(court))
    strict = os.environ.get("COURTHUB_CHAOS_STRICT") == "1"
    report.checks = [mark_known(c, fault, strict=strict) for c in report.checks]
    window.since_ms = cutoff
    return report
