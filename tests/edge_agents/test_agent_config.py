"""Loading and validating an agent's venue config."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agents.config import (
    AgentConfigError,
    agent_config_from_dict,
    default_data_dir,
    load_agent_config,
)
from protocol.messages import VenueKind

GOOD = """
[agent]
id = "hall-1"
data_dir = "state/hall-1"

[venue]
id = "hall"
kind = "litigation_hall"
name = "诉讼服务大厅"

[broker]
url = "mqtt://127.0.0.1:18830"
password_file = "secret.txt"

[outbox]
max_messages = 500

[[devices]]
id = "kiosk-1"
driver = "kiosk_mqtt"
options = { topic_prefix = "kiosk/k1", timeout_s = 3 }
"""


def write(tmp_path: Path, text: str, name: str = "venue.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_loads_a_full_config_and_resolves_paths(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("s3cret\n")
    config = load_agent_config(write(tmp_path, GOOD))
    assert config.agent.id == "hall-1"
    assert config.data_path == tmp_path / "state" / "hall-1"
    assert config.venue.kind is VenueKind.LITIGATION_HALL
    assert config.venue.name == "诉讼服务大厅"
    assert config.broker_url.port == 18830
    assert config.mqtt_username == "hall-1"  # defaults to the agent id
    assert config.mqtt_password == "s3cret"  # file content, stripped
    assert config.outbox.max_messages == 500
    assert config.devices[0].options == {"topic_prefix": "kiosk/k1", "timeout_s": 3}
    assert config.agent.heartbeat_s == 5.0


def test_the_password_never_shows(tmp_path: Path) -> None:
    config = agent_config_from_dict(
        {
            "agent": {"id": "a"},
            "venue": {"id": "v", "kind": "command_center"},
            "broker": {"url": "mqtt://u:urlpw@h:1", "password": "topsecret"},
        }
    )
    assert "topsecret" not in repr(config)
    assert "urlpw" not in repr(config) and "urlpw" not in str(config.broker_url)
    assert config.mqtt_password == "topsecret"
    assert config.mqtt_username == "u"


def test_minimal_dict_gets_working_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    config = agent_config_from_dict(
        {"agent": {"id": "court-1"}, "venue": {"id": "c1", "kind": "tech_courtroom"}}
    )
    assert config.data_path == default_data_dir("court-1") == tmp_path / "courthub/agents/court-1"
    assert str(config.broker_url) == "mqtt://127.0.0.1:1883"
    assert config.outbox.max_messages == 100_000
    assert config.devices == []


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (('id = "hall-1"', 'id = "Hall_1"'), "agent.id", "regex"),
        (('id = "hall-1"', 'id = "hub"'), "agent", "reserved"),
        (('kind = "litigation_hall"', 'kind = "ballroom"'), "venue.kind", "ballroom"),
        (("max_messages = 500", "max_messages = 0"), "outbox.max_messages", ">= 1"),
        (("max_messages = 500", "max_mesages = 5"), "outbox", "max_mesages"),
        (('url = "mqtt://127.0.0.1:18830"', 'url = "http://x"'), "broker", "mqtt://"),
        (('id = "kiosk-1"', 'id = "agent"'), "devices[0]", "reserved"),
        (('driver = "kiosk_mqtt"', 'driver = ""'), "devices[0].driver", "length"),
        (
            ('password_file = "secret.txt"', 'password_file = "secret.txt"\npassword = "x"'),
            "broker",
            "not both",
        ),
        (
            ('password_file = "secret.txt"', 'password_file = "nope.txt"'),
            "broker.password_file",
            "nope.txt",
        ),
    ],
)
def test_errors_name_the_file_and_the_field(
    tmp_path: Path, change: tuple[str, str], field: str, words: str
) -> None:
    (tmp_path / "secret.txt").write_text("pw")
    path = write(tmp_path, GOOD.replace(*change, 1))
    with pytest.raises(AgentConfigError) as info:
        load_agent_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {field}: "), message
    assert words in message
    assert info.value.field == field


def test_duplicate_device_ids_are_refused(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("pw")
    text = GOOD + '\n[[devices]]\nid = "kiosk-1"\ndriver = "http_sensor"\n'
    with pytest.raises(AgentConfigError, match=r"kiosk-1.*twice"):
        load_agent_config(write(tmp_path, text))


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(AgentConfigError, match=r"missing\.toml: cannot read"):
        load_agent_config(tmp_path / "missing.toml")
    with pytest.raises(AgentConfigError, match=r"bad\.toml: invalid TOML"):
        load_agent_config(write(tmp_path, "[agent\nid=", "bad.toml"))


def test_empty_password_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("  \n")
    with pytest.raises(AgentConfigError, match=r"broker\.password_file: .* is empty"):
        load_agent_config(write(tmp_path, GOOD))


def test_from_dict_names_its_source() -> None:
    with pytest.raises(AgentConfigError, match=r"^simulator hall: venue: .*`kind`"):
        agent_config_from_dict(
            {"agent": {"id": "a"}, "venue": {"id": "v"}}, source="simulator hall"
        )
