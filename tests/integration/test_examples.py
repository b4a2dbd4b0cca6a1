"""The example configs in examples/ load (so the README's commands work as written)."""

from __future__ import annotations

from pathlib import Path

from device_drivers.catalog import create
from edge_agents.config import load_agent_config
from hub.config import load_hub_config
from simulators.scenario import load_scenario

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_example_hub_config_loads() -> None:
    config = load_hub_config(EXAMPLES / "hub.toml")
    assert config.broker.mode == "own"
    assert {a.username for a in config.broker.accounts} >= {"hall-1", "court-1"}
    # the example court's cameras are the ones the example hub records
    scenario = load_scenario(EXAMPLES / "court.toml")
    ports = {c.id: c.port for v in scenario.venues for c in v.cameras}
    for camera in config.recorder.cameras:
        assert f":{ports[camera.id]}/" in camera.url


def test_example_venue_config_loads(tmp_path: Path) -> None:
    text = (EXAMPLES / "venue-hall.toml").read_text(encoding="utf-8")
    (tmp_path / "venue.toml").write_text(text, encoding="utf-8")
    (tmp_path / "hall-1.password").write_text("secret\n", encoding="utf-8")
    config = load_agent_config(tmp_path / "venue.toml")
    assert config.agent.id == "hall-1"
    assert [d.driver for d in config.devices] == ["kiosk_mqtt", "http_sensor"]
    assert config.mqtt_password == "secret"
    for device in config.devices:  # every driver accepts its example options
        assert create(device.driver, device.id, device.options).device_id == device.id


def test_example_court_has_one_venue_of_each_kind() -> None:
    scenario = load_scenario(EXAMPLES / "court.toml")
    assert {v.kind.value for v in scenario.venues} == {
        "litigation_hall",
        "tech_courtroom",
        "interrogation_room",
        "command_center",
    }
    assert len(scenario.faults) == 5
