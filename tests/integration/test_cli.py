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


def test_fault_switches_parse_and_bad_ones_are_explained() -> None:
    from simulators.scenario import FaultAction, ScenarioError, parse_fault

    fault = parse_fault("kill_agent:interro-1@10+3")
    assert (fault.action, fault.target, fault.at_s, fault.duration_s) == (
        FaultAction.KILL_AGENT,
        "interro-1",
        10.0,
        3.0,
    )
    assert parse_fault("restart_broker@5").target == ""
    for bad in ("kill_agent:interro-1", "explode:hall-1@3", "garbage:hall-1@soon"):
        try:
            parse_fault(bad)
        except ScenarioError as exc:
            assert bad in str(exc)
        else:
            raise AssertionError(f"{bad!r} was accepted")


def test_demo_refuses_a_fault_on_an_unknown_agent() -> None:
    proc = courthub("demo", "--duration", "1", "--port", "0", "--fault", "kill_agent:nobody@1")
    assert proc.returncode == 2
    assert "nobody" in proc.stderr


def test_bench_options_reach_the_benchmark_and_unknown_options_are_refused() -> None:
    """`courthub bench calls --x` hands --x to the benchmark's own parser (argparse's REMAINDER
    dropped options starting with "--"); elsewhere an unknown option is an error."""
    proc = courthub("bench", "calls", "--no-such-option")
    assert proc.returncode == 2
    assert "unrecognized arguments: --no-such-option" in proc.stderr
    # the benchmark's own parser answered (it knows --counters), not courthub's
    assert "--counters" in proc.stderr
    proc = courthub("schema", "--no-such-option")
    assert proc.returncode == 2 and "unrecognized arguments" in proc.stderr
