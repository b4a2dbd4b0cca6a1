"""``courthub provision …`` as an operator runs it (a subprocess of ``python -m hub.cli``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agents.config import load_agent_config

ROOT = Path(__file__).resolve().parents[2]


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


@pytest.fixture
def hub_toml(tmp_path: Path) -> Path:
    path = tmp_path / "hub.toml"
    path.write_text('[hub]\ndata_dir = "data"\n[broker]\nport = 1883\n', encoding="utf-8")
    return path


def value_of(stdout: str, label: str) -> str:
    line = next(line for line in stdout.splitlines() if line.strip().startswith(label))
    return line.split(label, 1)[1].split()[0]


def test_provision_agent_prints_the_snippet_and_password_once(
    hub_toml: Path, tmp_path: Path
) -> None:
    run = courthub(
        "provision", "agent", "hall-7", "--hub-config", str(hub_toml),
        "--kind", "litigation_hall", "--name", "诉讼服务大厅", "--kiosk", "k1",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    snippet = Path(value_of(run.stdout, "config:"))
    assert snippet == tmp_path / "data" / "provisioned" / "hall-7.toml"
    password = value_of(run.stdout, "password:")
    config = load_agent_config(snippet)
    assert config.mqtt_password == password and config.venue.name == "诉讼服务大厅"
    assert "kiosk account kiosk-k1: password" in run.stdout
    assert "shown only now" in run.stdout
    assert password not in run.stderr, "passwords are printed once, never logged"

    listed = courthub("provision", "list", "--hub-config", str(hub_toml))
    assert listed.returncode == 0
    assert listed.stdout.splitlines() == ["hall-7\tagent", "kiosk-k1\tdevice (kiosk of hall-7)"]

    revoked = courthub("provision", "revoke", "hall-7", "--hub-config", str(hub_toml))
    assert revoked.returncode == 0, revoked.stderr
    assert "revoked: hall-7, kiosk-k1" in revoked.stdout
    assert not snippet.exists()


@pytest.mark.parametrize(
    ("command", "options", "message"),
    [
        (("agent", "Hall_7"), ("--kind", "litigation_hall"), "agent id 'Hall_7' is not"),
        (("agent", "hub"), ("--kind", "litigation_hall"), "reserved for the hub"),
        (("agent", "court-1"), ("--kind", "tech_courtroom", "--kiosk", "k1"), "litigation_hall"),
        (("revoke", "nobody"), (), "no provisioned agent 'nobody'"),
        (("tls",), ("--host", "bad host"), "neither an IP address nor a hostname"),
    ],
)
def test_bad_requests_exit_2_with_one_line(
    hub_toml: Path, command: tuple[str, ...], options: tuple[str, ...], message: str
) -> None:
    run = courthub("provision", *command, "--hub-config", str(hub_toml), *options)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("courthub provision: ") and message in lines[0]


def test_a_bad_hub_config_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "hub.toml"
    bad.write_text("[broker]\nport = -1\n", encoding="utf-8")
    run = courthub(
        "provision", "agent", "a-1", "--hub-config", str(bad), "--kind", "command_center"
    )
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0 and "broker.port" in run.stderr
    missing = courthub("provision", "tls", "--hub-config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_provision_tls_prints_the_ca_agents_need(hub_toml: Path, tmp_path: Path) -> None:
    run = courthub("provision", "tls", "--hub-config", str(hub_toml), "--host", "127.0.0.1")
    assert run.returncode == 0, run.stderr
    ca = tmp_path / "data" / "tls" / "ca.pem"
    assert f"CA certificate (give a copy to every agent): {ca}" in run.stdout
    assert "a new local CA was created" in run.stdout
    assert "set tls = true" in run.stdout
    again = courthub("provision", "tls", "--hub-config", str(hub_toml))
    assert again.returncode == 0 and "new" not in again.stdout
