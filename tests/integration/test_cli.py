"""The courthub command: user mistakes get one clear line and exit code 2, not a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def courthub(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hub.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_bad_hub_config_is_one_line_naming_the_field(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text('[broker]\nmode = "carrier-pigeon"\n', encoding="utf-8")
    proc = courthub("hub", "--config", str(config))
    assert proc.returncode == 2
    assert "broker.mode" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_court_file_is_reported(tmp_path: Path) -> None:
    proc = courthub(
        "simulate", "--config", str(tmp_path / "nope.toml"), "--hub-config", str(tmp_path / "h")
    )
    assert proc.returncode == 2
    assert "nope.toml" in proc.stderr


def test_schema_prints_every_topic() -> None:
    proc = courthub("schema")
    assert proc.returncode == 0
    schemas = json.loads(proc.stdout)
    assert {"birth", "death", "telemetry", "event", "cmd", "cmd_result"} <= set(schemas["topics"])
