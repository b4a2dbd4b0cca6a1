"""Hub config (TOML → typed structs, errors naming file and field) and generated MQTT credentials."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from hub.config import HubConfig, HubConfigError, hub_config_from_dict, load_hub_config
from hub.credentials import Credentials, CredentialsError

EXAMPLE = """
[hub]
data_dir = "data/hub"
timezone = "Asia/Shanghai"
[broker]
mode = "own"
url = ""
port = 0
username = "hub"
password = ""
[[broker.accounts]]
username = "hall-1"
role = "agent"
read = ["kiosk/+/up"]
write = ["kiosk/+/down"]
[[broker.accounts]]
username = "kiosk-k1"
role = "device"
read = ["kiosk/k1/down"]
write = ["kiosk/k1/up"]
[api]
host = "127.0.0.1"
port = 8080
[health]
stale_heartbeats = 3
gap_fill_timeout_s = 10
[[health.overrides]]
agent = "hall-1"
device = "kiosk-1"
stale_after_s = 60
"""


def test_every_option_has_a_default() -> None:
    config = hub_config_from_dict({})
    assert config == HubConfig()
    assert config.broker.mode == "own" and config.broker.port == 0
    assert config.api.port == 8080 and config.api.host == "127.0.0.1"
    assert config.health.stale_heartbeats == 3 and config.health.gap_fill_timeout_s == 10
    assert config.data_dir == Path("data/hub")


def test_example_file_loads_and_anchors_relative_paths(tmp_path: Path) -> None:
    path = tmp_path / "hub.toml"
    path.write_text(EXAMPLE, encoding="utf-8")
    config = load_hub_config(path)
    assert config.data_dir == tmp_path / "data/hub"
    assert [(a.username, a.role) for a in config.broker.accounts] == [
        ("hall-1", "agent"),
        ("kiosk-k1", "device"),
    ]
    assert config.broker.accounts[0].read == ["kiosk/+/up"]
    assert config.health.override_map() == {("hall-1", "kiosk-1"): 60}


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ({"api": {"prot": 1}}, "api.prot", "unknown field"),
        ({"api": {"port": "http"}}, "api.port", "Expected `int`"),
        ({"api": {"port": 70000}}, "api.port", "<= 65535"),
        ({"broker": {"mode": "cloud"}}, "broker.mode", "Invalid enum value"),
        ({"broker": {"mode": "url"}}, "broker.url", "required"),
        ({"broker": {"mode": "url", "url": "http://x"}}, "broker.url", "mqtt://"),
        ({"hub": {"timezone": "Mars/Olympus"}}, "hub.timezone", "unknown time zone"),
        (
            {"broker": {"accounts": [{"username": "a-1"}, {"username": "a-1"}]}},
            "broker.accounts[1].username",
            "duplicate",
        ),
        (
            {"broker": {"accounts": [{"username": "Hall_1"}]}},
            "broker.accounts[0].username",
            "legal",
        ),
        (
            {"broker": {"accounts": [{"username": "x", "role": "boss"}]}},
            "broker.accounts[0].role",
            "Invalid",
        ),
        ({"health": {"stale_heartbeats": 0}}, "health.stale_heartbeats", "> 0"),
        (
            {"health": {"overrides": [{"agent": "a", "device": "d"}]}},
            "health.overrides[0].stale_after_s",
            "missing required field",
        ),
    ],
)
def test_errors_name_the_field(data: dict[str, object], field: str, words: str) -> None:
    with pytest.raises(HubConfigError) as info:
        hub_config_from_dict(data, source="court.toml")
    assert info.value.field == field
    assert words in info.value.message
    assert str(info.value).startswith(f"court.toml: {field}: ")


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "hub.toml"
    broken.write_text("[api\nport = 1\n", encoding="utf-8")
    with pytest.raises(HubConfigError, match=r"hub\.toml: -: not valid TOML"):
        load_hub_config(broken)
    with pytest.raises(HubConfigError, match="cannot read"):
        load_hub_config(tmp_path / "missing.toml")
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("[health]\ngap_fill_timeout_s = -1\n", encoding="utf-8")
    with pytest.raises(HubConfigError) as info:
        load_hub_config(wrong)
    assert info.value.source == str(wrong) and info.value.field == "health.gap_fill_timeout_s"


def test_credentials_are_generated_private_and_kept(tmp_path: Path) -> None:
    config = hub_config_from_dict(
        {
            "hub": {"data_dir": str(tmp_path)},
            "broker": {
                "accounts": [
                    {"username": "hall-1", "read": ["kiosk/+/up"], "write": ["kiosk/+/down"]},
                    {"username": "kiosk-k1", "role": "device", "write": ["kiosk/k1/up"]},
                ]
            },
        }
    )
    with pytest.raises(CredentialsError, match="start the hub"):
        Credentials.of_hub(config)
    mqtt = tmp_path / "mqtt"
    first = Credentials.load_or_create(mqtt, config.broker)
    path = mqtt / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first.usernames == ["hub", "hall-1", "kiosk-k1"]
    assert len({first.password_for(u) for u in first.usernames}) == 3
    assert first.hub_password not in repr(first)

    accounts = first.accounts()
    assert accounts.hub.username == "hub" and accounts.hub.password == first.hub_password
    assert [(a.username, a.read, a.write) for a in accounts.agents] == [
        ("hall-1", ("kiosk/+/up",), ("kiosk/+/down",))
    ]
    assert [a.username for a in accounts.devices] == ["kiosk-k1"]

    again = Credentials.load_or_create(mqtt, config.broker)
    assert {u: again.password_for(u) for u in again.usernames} == {
        u: first.password_for(u) for u in first.usernames
    }
    assert Credentials.of_hub(config).password_for("hall-1") == first.password_for("hall-1")

    # an account added to the config gets a password; a removed one is dropped
    grown = hub_config_from_dict(
        {"hub": {"data_dir": str(tmp_path)}, "broker": {"accounts": [{"username": "court-1"}]}}
    )
    third = Credentials.load_or_create(mqtt, grown.broker)
    assert third.usernames == ["hub", "court-1"]
    assert third.hub_password == first.hub_password
    assert set(json.loads(path.read_text())["passwords"]) == {"hub", "court-1"}
    with pytest.raises(KeyError):
        third.password_for("hall-1")


def test_unusable_credentials_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "credentials.json").write_text('{"passwords": ["x"]}')
    with pytest.raises(CredentialsError, match="expected"):
        Credentials.load_or_create(tmp_path, hub_config_from_dict({}).broker)
