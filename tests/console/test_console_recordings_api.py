"""The recordings API over real HTTP: hearings by role, 409s, seal and export, index, alerts."""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from test_console_app_harness import CSRF, STAFF_ROLES, auth, console, make_service

from dashboards import recordings_api
from dashboards.auth import Role
from dashboards.recordings_api import RECORDINGS_KEY, RecordingsContext
from dashboards.sessions import csrf_middleware
from hub.alerts import AlertBoard
from hub.audit import AuditLog
from hub.hearings import HearingService
from hub.recording_index import DB_FILE, RecordingIndex

T0 = 1_795_000_000_000  # 2026-11-18, UTC ms


@dataclass
class Rig:
    client: TestClient[web.Request, web.Application]
    index: RecordingIndex
    hearings: HearingService
    alerts: AlertBoard
    audit: AuditLog

    async def call(
        self, method: str, path: str, role: Role | None, json: object | None = None
    ) -> tuple[int, object]:
        headers = auth(role, **{"X-CSRF-Token": CSRF}) if role else {}
        r = await self.client.request(method, path, json=json, headers=headers)
        body = await r.json() if r.content_type == "application/json" else await r.read()
        return r.status, body

    async def add_segment(self, camera: str, start_ms: int, session: str | None) -> None:
        path = self.index.storage_root / camera / f"{camera}_{start_ms}.ts"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(4096))
        await self.index.add_segment(
            camera=camera,
            venue="court-1",
            session_id=session,
            path=path,
            start_ms=start_ms,
            end_ms=start_ms + 10_000,
            frames=250,
        )


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    data_dir = tmp_path / "hub"
    index = await RecordingIndex.open(data_dir / DB_FILE, data_dir / "recordings")
    audit = await AuditLog.open(data_dir)
    hearings = await HearingService.open(data_dir, index, audit)
    alerts = await AlertBoard.open(data_dir)

    def setup(app: web.Application) -> None:
        app[RECORDINGS_KEY] = RecordingsContext(index, hearings, None, alerts, data_dir / DB_FILE)

    try:
        async with console(
            make_service(tmp_path / "svc"),
            extra_routes=recordings_api.ROUTES,
            extra_middlewares=[csrf_middleware],
            setup=setup,
        ) as client:
            yield Rig(client, index, hearings, alerts, audit)
    finally:
        await alerts.close()
        await hearings.close()
        await audit.close()
        await index.close()


def concrete(path: str) -> str:
    return path.replace("{id}", "h00000000-0001")


async def test_every_route_opens_exactly_to_its_roles(rig: Rig) -> None:
    wrong = []
    for route in recordings_api.ROUTES:
        for role in (*STAFF_ROLES, None):
            status, _ = await rig.call(route.method, concrete(route.path), role, json={})
            allowed = role is not None and role in route.roles
            refused = 401 if role is None else 403
            if allowed == (status in (401, 403)) or (not allowed and status != refused):
                wrong.append(f"{route.method} {route.path} {role}: {status}")
    assert wrong == []
    roles = {(r.method, r.path): r.roles for r in recordings_api.ROUTES}
    assert roles[("POST", "/api/v1/hearings/{id}/hold")] == {Role.JUDGE, Role.ADMIN}
    assert roles[("POST", "/api/v1/hearings")] == {Role.JUDGE, Role.CLERK, Role.ADMIN}


async def test_a_hearing_from_opening_to_its_exported_bundle(
    rig: Rig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    temp = tmp_path / "temp"  # where the API builds export bundles (tempfile.mkdtemp)
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))

    def temp_contents() -> list[Path]:
        return list(temp.iterdir())

    body = {"title": "张三诉李四", "case_no": "(2026)民初1号", "venues": ["court-1"]}
    assert (await rig.call("POST", "/api/v1/hearings", Role.COUNTER, body))[0] == 403
    assert (await rig.call("POST", "/api/v1/hearings", None, body))[0] == 401
    status, hearing = await rig.call("POST", "/api/v1/hearings", Role.JUDGE, body)
    assert status == 201 and isinstance(hearing, dict)
    hid = hearing["id"]
    assert hearing["venues"] == ["court-1"] and hearing["opened_by"] == "user-judge"
    assert rig.hearings.active_session("court-1") == hid

    status, refused = await rig.call("POST", "/api/v1/hearings", Role.CLERK, body)
    assert status == 409 and isinstance(refused, dict) and hid in refused["error"]
    status, bad = await rig.call("POST", "/api/v1/hearings", Role.CLERK, {"venues": "court-1"})
    assert status == 400 and isinstance(bad, dict) and "venues" in bad["error"]

    await rig.add_segment("cam-1", T0, hid)
    await rig.add_segment("cam-1", T0 + 10_000, hid)
    await rig.add_segment("cam-2", T0 + 20_000, None)

    status, early = await rig.call("POST", f"/api/v1/hearings/{hid}/seal", Role.CLERK)
    assert status == 409 and isinstance(early, dict) and "open" in early["error"]
    status, early = await rig.call("GET", f"/api/v1/hearings/{hid}/export", Role.CLERK)
    assert status == 409 and isinstance(early, dict) and "not sealed" in early["error"]
    assert temp_contents() == []  # a refused export leaves no temporary folder

    assert (await rig.call("POST", f"/api/v1/hearings/{hid}/hold", Role.CLERK, {}))[0] == 403
    status, held = await rig.call("POST", f"/api/v1/hearings/{hid}/hold", Role.JUDGE, {})
    assert status == 200 and isinstance(held, dict) and held["held"] is True
    assert hid in await rig.index.held_sessions()
    bad_hold = {"held": "yes"}
    assert (await rig.call("POST", f"/api/v1/hearings/{hid}/hold", Role.ADMIN, bad_hold))[0] == 400

    status, closed = await rig.call("POST", f"/api/v1/hearings/{hid}/close", Role.CLERK)
    assert status == 200 and isinstance(closed, dict) and closed["closed_ms"] is not None
    assert rig.hearings.active_session("court-1") is None
    status, sealed = await rig.call("POST", f"/api/v1/hearings/{hid}/seal", Role.CLERK)
    assert status == 200 and isinstance(sealed, dict) and len(sealed["manifest_sha256"]) == 64
    assert (await rig.call("POST", f"/api/v1/hearings/{hid}/seal", Role.CLERK))[0] == 409

    r = await rig.client.get(f"/api/v1/hearings/{hid}/export", headers=auth(Role.JUDGE))
    assert r.status == 200
    assert f'filename="{hid}.zip"' in r.headers["Content-Disposition"]
    with zipfile.ZipFile(io.BytesIO(await r.read())) as zf:
        assert zf.testzip() is None
        names = zf.namelist()
    assert {"manifest.json", "SHA256SUMS", "verify.sh"} <= set(names)
    assert sorted(n for n in names if n.startswith("media/")) == [
        f"media/cam-1/cam-1_{T0}.ts",
        f"media/cam-1/cam-1_{T0 + 10_000}.ts",
    ]

    served = temp_contents()  # the bundle just sent stays a while (removed by a timer)
    assert len(served) == 1
    # a media file changed after sealing: the export is refused naming it, nothing left behind
    (rig.index.storage_root / "cam-1" / f"cam-1_{T0}.ts").write_bytes(b"edited")
    status, changed = await rig.call("GET", f"/api/v1/hearings/{hid}/export", Role.ADMIN)
    assert status == 409 and isinstance(changed, dict)
    assert f"cam-1_{T0}.ts" in changed["error"] and "changed since sealing" in changed["error"]
    assert temp_contents() == served

    status, listing = await rig.call("GET", "/api/v1/hearings", Role.TECHNICIAN)
    assert status == 200 and isinstance(listing, dict)
    assert [h["id"] for h in listing["hearings"]] == [hid]
    assert (await rig.call("POST", "/api/v1/hearings/nope/close", Role.JUDGE))[0] == 409
    audited = [e.action for e in reversed(await rig.audit.entries())]
    assert audited == ["hearing_opened", "legal_hold", "hearing_closed", "seal", "export"]


async def test_segments_gaps_and_verify(rig: Rig) -> None:
    await rig.add_segment("cam-1", T0, None)
    await rig.add_segment("cam-2", T0 + 10_000, "h20261118-0001")
    gap = await rig.index.open_gap(camera="cam-2", venue="court-1", from_ms=T0 + 20_000, reason="x")

    status, body = await rig.call("GET", "/api/v1/recordings/segments", Role.CLERK)
    assert status == 200 and isinstance(body, dict) and len(body["segments"]) == 2
    status, body = await rig.call(
        "GET", "/api/v1/recordings/segments?session=h20261118-0001", Role.CLERK
    )
    assert isinstance(body, dict) and [s["camera"] for s in body["segments"]] == ["cam-2"]
    status, body = await rig.call("GET", "/api/v1/recordings/segments?from=x", Role.CLERK)
    assert status == 400
    status, body = await rig.call("GET", "/api/v1/recordings/gaps", Role.TECHNICIAN)
    assert status == 200 and isinstance(body, dict)
    assert body["gaps"] == [
        {
            "id": gap.id,
            "camera": "cam-2",
            "venue": "court-1",
            "from_ms": T0 + 20_000,
            "to_ms": None,
            "reason": "x",
        }
    ]
    status, body = await rig.call("GET", "/api/v1/recordings/status", Role.COMMANDER)
    assert status == 200 and body == {"cameras": []}  # no recorder in this rig

    status, report = await rig.call("POST", "/api/v1/recordings/verify", Role.TECHNICIAN)
    assert status == 200 and isinstance(report, dict)
    assert report["ok"] is True and report["segments_checked"] == 2
    (rig.index.storage_root / "cam-1" / f"cam-1_{T0}.ts").write_bytes(b"tampered")
    status, report = await rig.call("POST", "/api/v1/recordings/verify?camera=cam-1", Role.JUDGE)
    assert status == 200 and isinstance(report, dict) and report["ok"] is False
    assert report["problems"] and report["problems"][0]["camera"] == "cam-1"
    # the alert board's API: tests/console/test_alerts_api.py


async def test_a_scheduled_hearing_starts_breaks_and_resumes_over_http(rig: Rig) -> None:
    """The clerk schedules, the judge starts, breaks for mediation and resumes; the record
    lists each transition with its user and reason."""
    body = {"title": "T", "case_no": "C", "venues": ["court-1"], "schedule": True}
    status, hearing = await rig.call("POST", "/api/v1/hearings", Role.CLERK, body)
    assert status == 201 and isinstance(hearing, dict) and hearing["state"] == "scheduled"
    hid = hearing["id"]
    assert rig.hearings.active_session("court-1") is None
    status, started = await rig.call("POST", f"/api/v1/hearings/{hid}/start", Role.JUDGE, {})
    assert status == 200 and isinstance(started, dict) and started["state"] == "open"
    status, err = await rig.call(
        "POST", f"/api/v1/hearings/{hid}/recess", Role.JUDGE, {"reason": "lunch"}
    )
    assert status == 409 and isinstance(err, dict) and "mediation" in err["error"]
    status, broke = await rig.call(
        "POST", f"/api/v1/hearings/{hid}/recess", Role.JUDGE, {"reason": "mediation"}
    )
    assert status == 200 and isinstance(broke, dict) and broke["state"] == "recess"
    assert rig.hearings.active_session("court-1") is None
    status, _ = await rig.call("POST", f"/api/v1/hearings/{hid}/resume", Role.JUDGE, {})
    assert status == 200 and rig.hearings.active_session("court-1") == hid
    status, record = await rig.call("GET", f"/api/v1/hearings/{hid}/events", Role.TECHNICIAN)
    assert status == 200 and isinstance(record, dict)
    assert [(e["state"], e["by"], e["reason"]) for e in record["events"]] == [
        ("scheduled", "user-clerk", ""),
        ("open", "user-judge", ""),
        ("recess", "user-judge", "mediation"),
        ("open", "user-judge", "resumed"),
    ]
    status, _ = await rig.call("GET", "/api/v1/hearings/h00000000-0009/events", Role.JUDGE)
    assert status == 404
