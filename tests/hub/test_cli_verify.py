"""``courthub verify`` / ``courthub export`` as an operator runs them (subprocesses)."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from hub.evidence import write_manifest
from hub.recording_index import RecordingIndex, SegmentRecord

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_795_000_000_000
OLD = 1_700_000_000.0  # mtime of settled files


def courthub(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hub.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )


@dataclass
class Hub:
    data: Path
    root: Path
    segments: list[SegmentRecord]

    def file(self, i: int) -> Path:
        return self.root / self.segments[i].path


def build(data: Path) -> Hub:
    """Two cameras, two segments each; session ``h1`` is the first two, ``h2`` the others."""

    async def main() -> list[SegmentRecord]:
        index = await RecordingIndex.open(data / "recordings.db", data / "recordings")
        try:
            records = []
            for i, cam in enumerate(["cam-1", "cam-2", "cam-1", "cam-2"]):
                start = T0 + (i // 2) * 10_000
                path = data / "recordings" / cam / "20261118" / f"{cam}_{start}.mkv"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(os.urandom(2048))
                os.utime(path, (OLD, OLD))
                records.append(
                    await index.add_segment(
                        camera=cam, venue="court-1", session_id="h1" if i < 2 else "h2",
                        path=path, start_ms=start, end_ms=start + 10_000, frames=250,
                    )
                )  # fmt: skip
            return records
        finally:
            await index.close()

    return Hub(data, data / "recordings", asyncio.run(main()))


@pytest.fixture
def hub(tmp_path: Path) -> Hub:
    return build(tmp_path / "data")


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[10] ^= 0x80
    path.write_bytes(bytes(data))


def test_verify_data_dir_camera_folder_and_segment(hub: Hub) -> None:
    run = courthub("verify", str(hub.data))
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1].startswith("OK: 4 segments verified")

    flip_byte(hub.file(1))
    bad = courthub("verify", str(hub.data))
    assert bad.returncode == 1
    lines = bad.stdout.splitlines()
    assert lines[0].startswith(f"ALTERED {hub.segments[1].path}: expected sha256 ")
    assert lines[-1].startswith("FAILED: 1 problem(s) (ALTERED 1)")

    as_json = json.loads(courthub("verify", str(hub.root), "--json").stdout)
    assert [(p["kind"], p["path"]) for p in as_json["problems"]] == [
        ("ALTERED", hub.segments[1].path)
    ]
    assert as_json["ok"] is False and as_json["segments_checked"] == 4

    assert courthub("verify", str(hub.root / "cam-1")).returncode == 0
    camera2 = courthub("verify", str(hub.root / "cam-2"))
    assert camera2.returncode == 1 and "2 segments" in camera2.stdout
    assert courthub("verify", str(hub.file(0))).returncode == 0
    one = courthub("verify", str(hub.file(1)))
    assert one.returncode == 1 and "1 segments" in one.stdout


def test_verify_names_missing_added_and_tampered_rows(hub: Hub) -> None:
    hub.file(2).unlink()
    stray = hub.root / "cam-2" / "20261118" / "planted.mkv"
    stray.write_bytes(b"x" * 100)
    os.utime(stray, (OLD, OLD))
    db = sqlite3.connect(hub.data / "recordings.db")
    db.execute("DROP TRIGGER segments_only_mark_deleted")
    db.execute("UPDATE segments SET frames = 1 WHERE id = ?", (hub.segments[3].id,))
    db.commit()
    db.close()
    run = courthub("verify", str(hub.data))
    assert run.returncode == 1
    out = run.stdout
    assert f"MISSING {hub.segments[2].path}: file is gone" in out
    assert "ADDED cam-2/20261118/planted.mkv" in out
    assert f"EDITED {hub.segments[3].path}: chain seq 2: row edited" in out
    assert "SCHEMA append-only trigger segments_only_mark_deleted was removed" in out


def test_verify_a_session_and_usage_errors(hub: Hub, tmp_path: Path) -> None:
    ok = courthub("verify", "h2", "--data-dir", str(hub.data))
    assert ok.returncode == 0 and "2 segments verified" in ok.stdout
    flip_byte(hub.file(0))
    assert courthub("verify", "h2", "--data-dir", str(hub.data)).returncode == 0
    assert courthub("verify", "h1", "--data-dir", str(hub.data)).returncode == 1

    toml = tmp_path / "hub.toml"
    toml.write_text('[hub]\ndata_dir = "data"\n', encoding="utf-8")
    assert courthub("verify", "h2", "--config", str(toml)).returncode == 0

    unknown = courthub("verify", "no-such-hearing", "--data-dir", str(hub.data))
    assert unknown.returncode == 2 and "no recordings of session" in unknown.stderr
    no_dir = courthub("verify", "h1")
    assert no_dir.returncode == 2 and "--data-dir" in no_dir.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert courthub("verify", str(elsewhere)).returncode == 2
    empty = courthub("verify", "h1", "--data-dir", str(tmp_path / "nothing"))
    assert empty.returncode == 2 and "no recordings index" in empty.stderr


def test_progress_line_on_request(hub: Hub) -> None:
    run = courthub("verify", str(hub.data), "--progress")
    assert run.returncode == 0
    assert "verifying 100%" in run.stderr
    assert "verifying" not in courthub("verify", str(hub.data)).stderr  # not a TTY


def test_export_a_sealed_session_and_verify_the_bundle(hub: Hub, tmp_path: Path) -> None:
    out = tmp_path / "h1.zip"
    unsealed = courthub("export", "h1", "--out", str(out), "--data-dir", str(hub.data))
    assert unsealed.returncode == 2 and "not sealed" in unsealed.stderr

    write_manifest(
        hub.data / "manifests" / "h1.json",
        session={"id": "h1"},
        segments=hub.segments[:2],
        root=hub.root,
    )
    run = courthub("export", "h1", "--out", str(out), "--data-dir", str(hub.data))
    assert run.returncode == 0, run.stderr
    assert f"exported {out}" in run.stdout
    with zipfile.ZipFile(out) as zf:
        assert sorted(n for n in zf.namelist() if n.startswith("media/")) == [
            f"media/{s.camera}/{Path(s.path).name}" for s in hub.segments[:2]
        ]
    db = sqlite3.connect(hub.data / "audit.db")
    assert db.execute("SELECT action, target FROM audit").fetchall() == [("export", "session:h1")]
    db.close()
    again = courthub("export", "h1", "--out", str(out), "--data-dir", str(hub.data))
    assert again.returncode == 2 and "already exists" in again.stderr

    assert courthub("verify", str(out)).returncode == 0
    folder = tmp_path / "unpacked"
    subprocess.run(["unzip", "-q", str(out), "-d", str(folder)], check=True, timeout=30)
    assert courthub("verify", str(folder)).returncode == 0
    victim = f"media/cam-2/{Path(hub.segments[1].path).name}"
    flip_byte(folder / victim)
    bad = courthub("verify", str(folder), "--json")
    assert bad.returncode == 1
    assert [(p["kind"], p["path"]) for p in json.loads(bad.stdout)["problems"]] == [
        ("ALTERED", victim)
    ]

    # media changed since sealing: the export is refused
    flip_byte(hub.file(0))
    refused = courthub(
        "export", "h1", "--out", str(tmp_path / "b.zip"), "--data-dir", str(hub.data)
    )
    assert refused.returncode == 1 and "changed since sealing" in refused.stderr
    assert not (tmp_path / "b.zip").exists()
