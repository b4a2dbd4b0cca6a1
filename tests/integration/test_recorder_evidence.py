"""Evidence of real recordings: one flipped byte in a recorded segment is named by
verify_recordings and by ``courthub verify`` (exit 1); a hearing recorded by the running hub,
closed, sealed and exported over the HTTP API verifies with the bundle's own ``sh verify.sh``,
which fails, naming the file, once a byte of the extracted media is changed."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from recorder_harness import (
    MJPEG_CAM,
    VENUE,
    HubRunner,
    camera_entry,
    hub_config,
    start_camera,
    video_of,
    wait_for,
)

from hub.evidence import ALTERED, verify_recordings
from hub.recording_index import DB_FILE

pytestmark = pytest.mark.slow


def flip_byte(path: Path, offset: int | None = None) -> None:
    """Invert one byte in the middle of ``path`` (same size, same mtime order)."""
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if offset is None else offset
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def verify_sh(folder: Path) -> subprocess.CompletedProcess[str]:
    """Run the bundle's own check the way a recipient would."""
    return subprocess.run(
        ["sh", "verify.sh"], cwd=folder, capture_output=True, text=True, timeout=60, check=False
    )


async def api(
    session: aiohttp.ClientSession, method: str, url: str, token: str, body: Any = None
) -> Any:
    headers = {"Authorization": f"Bearer {token}"}
    async with session.request(method, url, json=body, headers=headers) as response:
        if response.content_type == "application/json":
            payload = await response.json()
        else:
            payload = await response.read()
        assert response.status in (200, 201), (url, response.status, payload)
        return payload


async def test_altered_segment_named_and_exported_hearing_verifies_with_verify_sh(
    tmp_path: Path,
) -> None:
    camera = await start_camera(MJPEG_CAM, "mjpeg")
    hub = HubRunner(hub_config(tmp_path / "hub", [camera_entry(MJPEG_CAM, camera.url)]))
    try:
        runtime = await hub.start()
        video = video_of(runtime)
        base, token = f"{runtime.api_url}/api/v1/hearings", runtime.api_token
        async with aiohttp.ClientSession() as http:
            hearing = await api(
                http,
                "POST",
                base,
                token,
                {"title": "张三诉李四", "case_no": "(2026)京0101民初1号", "venues": [VENUE]},
            )
            hid = hearing["id"]

            async def hearing_segments() -> list[Any] | None:
                rows = await video.index.segments(session_id=hid)
                return rows if len(rows) >= 2 else None

            in_hearing = await wait_for(hearing_segments, timeout=30, what="2 hearing segments")
            await api(http, "POST", f"{base}/{hid}/close", token)
            sealed = await api(http, "POST", f"{base}/{hid}/seal", token)
            assert sealed["sealed_ms"] and sealed["manifest_sha256"]
            bundle = await api(http, "GET", f"{base}/{hid}/export", token)
        zip_path = tmp_path / f"{hid}.zip"
        zip_path.write_bytes(bundle)

        # one byte of one closed segment in the data dir changes while the hub records on
        victim = in_hearing[0]
        storage = video.index.storage_root
        flip_byte(storage / victim.path)
        report = await asyncio.to_thread(verify_recordings, runtime.data_dir / DB_FILE, storage)
        assert [(p.kind, p.path) for p in report.problems] == [(ALTERED, victim.path)], [
            p.line() for p in report.problems
        ]
        cli = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "hub.cli", "verify", str(runtime.data_dir)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert cli.returncode == 1, (cli.stdout, cli.stderr)
        altered_lines = [line for line in cli.stdout.splitlines() if line.startswith(ALTERED)]
        assert len(altered_lines) == 1 and victim.path in altered_lines[0], cli.stdout
    finally:
        await hub.stop()
        await camera.stop()

    # the bundle (exported before the flip) verifies anywhere with sh and coreutils
    extracted = tmp_path / "bundle"
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(extracted)
    media = sorted(p for p in extracted.rglob("*.avi"))
    assert len(media) >= len(in_hearing) >= 2, media
    ok = await asyncio.to_thread(verify_sh, extracted)
    assert ok.returncode == 0, (ok.stdout, ok.stderr)
    flip_byte(media[-1])
    bad = await asyncio.to_thread(verify_sh, extracted)
    assert bad.returncode != 0, bad.stdout
    assert media[-1].name in bad.stdout + bad.stderr, (bad.stdout, bad.stderr)
