"""``courthub provision``: accounts, snippets, password file and ACL, reloaded into Mosquitto."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import stat
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec
import pytest

from device_drivers.kiosk_mqtt import KioskMqttOptions
from edge_agents.config import load_agent_config
from hub.broker import MosquittoBroker, free_port
from hub.config import HubConfig, hub_config_from_dict
from hub.credentials import Credentials
from hub.provisioning import (
    ACCOUNTS_FILE,
    RUNTIME_FILE,
    ProvisioningError,
    broker_accounts_for,
    credentials_for,
    effective_accounts,
    load_provisioned,
    mqtt_dir,
    provision_agent,
    regenerate_broker_files,
    reload_running_broker,
    revoke_agent,
)
from protocol.mqtt_link import BrokerUrl, MqttLink, PublishRefused


def hash_matches(stored: str, password: str) -> bool:
    """Check a Mosquitto ``$7$`` (PBKDF2-SHA512) hash."""
    _, kind, rounds, salt, digest = stored.split("$")
    assert kind == "7"
    derived = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt), int(rounds))
    return base64.b64encode(derived).decode() == digest


def make_config(tmp_path: Path, **broker: object) -> HubConfig:
    return hub_config_from_dict(
        {"hub": {"data_dir": str(tmp_path / "hub")}, "broker": {"port": free_port(), **broker}}
    )


@pytest.fixture
def config(tmp_path: Path) -> HubConfig:
    return make_config(tmp_path)


@pytest.fixture
def hub_broker(config: HubConfig) -> Iterator[MosquittoBroker]:
    """The hub's own Mosquitto, started before anything is provisioned (as by ``courthub hub``)."""
    broker = MosquittoBroker(mqtt_dir(config), broker_accounts_for(config), port=config.broker.port)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
async def links() -> AsyncIterator[list[MqttLink]]:
    """Every MQTT link a test opens, stopped at the end."""
    opened: list[MqttLink] = []
    yield opened
    for link in opened:
        await link.stop()


async def connect(
    opened: list[MqttLink],
    url: BrokerUrl,
    user: str,
    password: str | None,
    timeout: float,
    *,
    client_id: str = "",
) -> MqttLink | None:
    """A connected link for ``user`` (the link retries by itself), or None after ``timeout``."""
    link = MqttLink(
        url,
        client_id=client_id or f"t-{user}-{len(opened)}",
        username=user,
        password=password,
    )
    opened.append(link)
    await link.start()
    if await link.wait_connected(timeout):
        return link
    await link.stop()
    return None


async def wait_refused(url: BrokerUrl, user: str, password: str, timeout: float = 10) -> None:
    """Poll fresh connections until the broker refuses ``user`` (it reloads asynchronously)."""
    deadline = time.monotonic() + timeout
    attempt = 0
    while time.monotonic() < deadline:
        scratch: list[MqttLink] = []
        attempt += 1
        # a client id of its own: reusing a live link's id would make the two take the session
        # from each other, and the still-running link's reconnects would look like acceptance
        probe_id = f"probe-{user}-{attempt}"
        link = await connect(scratch, url, user, password, 1.0, client_id=probe_id)
        for opened in scratch:
            await opened.stop()
        if link is None:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{user} could still connect {timeout} s after the reload")


async def test_provisioned_agent_connects_after_reload_and_stays_in_its_topics(
    config: HubConfig, hub_broker: MosquittoBroker, links: list[MqttLink]
) -> None:
    result = provision_agent(config, "hall-9", venue_kind="litigation_hall", venue_name="大厅")
    assert result.reloaded, "the running Mosquitto should have been told to reload"
    other = provision_agent(config, "court-9", venue_kind="tech_courtroom")

    snippet = load_agent_config(result.snippet_path)
    assert snippet.agent.id == "hall-9" and snippet.venue.kind == "litigation_hall"
    assert snippet.venue.name == "大厅"
    assert snippet.mqtt_username == "hall-9" and snippet.mqtt_password == result.password
    assert snippet.broker_url == hub_broker.url
    assert stat.S_IMODE(result.snippet_path.stat().st_mode) == 0o600

    agent = await connect(links, snippet.broker_url, "hall-9", snippet.mqtt_password, 10)
    assert agent is not None, "the provisioned agent could not log in after the reload"
    await agent.publish_acked("courthub/v1/hall-9/agent/telemetry", b"{}")
    with pytest.raises(PublishRefused) as refused:
        await agent.publish_acked("courthub/v1/court-9/agent/telemetry", b"{}")
    assert "authori" in refused.value.reason.lower()  # MQTT 5 reason 135 Not authorized
    with pytest.raises(PublishRefused):
        await agent.publish_acked("courthub/v1/hub/state", b"{}")

    again = provision_agent(config, "hall-9", venue_kind="litigation_hall")
    assert again.password == result.password, "re-provisioning must keep the password"
    assert load_agent_config(again.snippet_path).mqtt_password == result.password

    revoked = revoke_agent(config, "hall-9")
    assert revoked.removed == ("hall-9",) and revoked.reloaded
    assert not again.snippet_path.exists(), "the revoked agent's snippet (and password) is gone"
    await wait_refused(hub_broker.url, "hall-9", result.password)
    # Mosquitto also closed the session the agent had open (and it cannot come back)
    async with asyncio.timeout(10):
        while agent.connected:
            await asyncio.sleep(0.02)
    # the other agent is untouched
    court = await connect(links, hub_broker.url, "court-9", other.password, 10)
    assert court is not None
    await court.publish_acked("courthub/v1/court-9/agent/telemetry", b"{}")


async def test_hall_agent_kiosks_get_device_accounts_limited_to_their_own_topics(
    config: HubConfig, hub_broker: MosquittoBroker, links: list[MqttLink]
) -> None:
    result = provision_agent(config, "hall-2", venue_kind="litigation_hall", kiosks=["k1", "k2"])
    assert set(result.device_passwords) == {"kiosk-k1", "kiosk-k2"}

    acl = (mqtt_dir(config) / "acl").read_text()
    assert "user kiosk-k1\ntopic read kiosk/k1/down\ntopic write kiosk/k1/up" in acl
    assert "topic read kiosk/k1/up" in acl and "topic write kiosk/k2/down" in acl
    stored = {a.username: a for a in load_provisioned(config)}
    assert stored["kiosk-k1"].owner == "hall-2" and stored["kiosk-k1"].role == "device"
    passwd = (mqtt_dir(config) / "passwd").read_text()
    assert {line.split(":")[0] for line in passwd.splitlines()} == {
        "hub",
        "hall-2",
        "kiosk-k1",
        "kiosk-k2",
    }

    snippet = load_agent_config(result.snippet_path)
    kiosks = {d.id: d for d in snippet.devices}
    assert set(kiosks) == {"kiosk-k1", "kiosk-k2"}
    assert kiosks["kiosk-k1"].driver == "kiosk_mqtt"
    options = msgspec.convert(kiosks["kiosk-k1"].options, KioskMqttOptions)  # the driver's check
    assert options.kiosk_id == "k1" and options.username == "hall-2"
    assert options.password == result.password

    kiosk = await connect(
        links, hub_broker.url, "kiosk-k1", result.device_passwords["kiosk-k1"], 10
    )
    assert kiosk is not None
    await kiosk.publish_acked("kiosk/k1/up", b"{}")
    for foreign in ("kiosk/k2/up", "kiosk/k1/down", "courthub/v1/hall-2/birth"):
        with pytest.raises(PublishRefused):
            await kiosk.publish_acked(foreign, b"{}")
    hall = await connect(links, hub_broker.url, "hall-2", result.password, 10)
    assert hall is not None
    await hall.publish_acked("kiosk/k2/down", b"{}")
    with pytest.raises(PublishRefused):
        await hall.publish_acked("kiosk/k2/up", b"{}")

    # provisioning again with fewer kiosks drops the others; passwords of the rest are kept
    fewer = provision_agent(config, "hall-2", venue_kind="litigation_hall", kiosks=["k1"])
    assert fewer.device_passwords == {"kiosk-k1": result.device_passwords["kiosk-k1"]}
    await wait_refused(hub_broker.url, "kiosk-k2", result.device_passwords["kiosk-k2"])

    assert revoke_agent(config, "hall-2").removed == ("hall-2", "kiosk-k1")
    assert load_provisioned(config) == []
    await wait_refused(hub_broker.url, "kiosk-k1", result.device_passwords["kiosk-k1"])


def test_without_a_running_broker_files_are_written_and_nothing_is_signalled(
    config: HubConfig,
) -> None:
    result = provision_agent(config, "interro-1", venue_kind="interrogation_room")
    assert not result.reloaded
    directory = mqtt_dir(config)
    for name in (ACCOUNTS_FILE, "credentials.json", "passwd", "acl"):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600, name
    assert "user interro-1\ntopic write courthub/v1/interro-1/#" in (directory / "acl").read_text()
    stored = json.loads((directory / ACCOUNTS_FILE).read_text())
    assert stored["version"] == 1
    assert stored["accounts"][0]["username"] == "interro-1"
    assert stored["accounts"][0]["created_ms"] > 0
    # the hub's own start picks it up: same password as the snippet
    assert credentials_for(config).password_for("interro-1") == result.password


def test_a_stale_pid_file_is_never_signalled(config: HubConfig) -> None:
    directory = mqtt_dir(config)
    directory.mkdir(parents=True)
    # our own pid: a process that is alive but is not this broker (SIGHUP would kill pytest)
    (directory / "mosquitto.pid").write_text(f"{os.getpid()}\n")
    assert not reload_running_broker(directory)
    (directory / "mosquitto.pid").write_text("not a pid\n")
    assert not reload_running_broker(directory)
    assert not regenerate_broker_files(config)


def test_effective_accounts_are_the_config_plus_provisioned_and_the_config_wins(
    tmp_path: Path,
) -> None:
    config = make_config(
        tmp_path, accounts=[{"username": "hall-1", "read": ["kiosk/a/up"], "write": []}]
    )
    provision_agent(config, "court-1", venue_kind="tech_courtroom")
    # a later hub.toml that also defines court-1 (with other grants) takes precedence
    grown = make_config(
        tmp_path,
        accounts=[
            {"username": "hall-1", "read": ["kiosk/a/up"]},
            {"username": "court-1", "read": ["x/y"]},
        ],
    )
    names = [(a.username, a.read) for a in effective_accounts(grown)]
    assert names == [("hall-1", ["kiosk/a/up"]), ("court-1", ["x/y"])]
    assert [a.username for a in effective_accounts(config)] == ["hall-1", "court-1"]
    accounts = broker_accounts_for(config)
    assert [a.username for a in accounts.agents] == ["hall-1", "court-1"]
    # Credentials.of_hub (the simulator's reader) still finds hub.toml's accounts
    assert Credentials.of_hub(config).password_for("hall-1")


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("Hall_1", {}, "is not [a-z0-9-]"),
        ("", {}, "is not [a-z0-9-]"),
        ("hub", {}, "reserved"),
        ("hall-1", {}, "defined in hub.toml"),
        ("court-2", {"venue_kind": "ballroom"}, "venue kind 'ballroom'"),
        ("court-2", {"venue_kind": "tech_courtroom", "kiosks": ["k1"]}, "litigation_hall"),
        ("hall-3", {"kiosks": ["K 1"]}, "kiosk id"),
        ("hall-3", {"kiosks": ["k" * 60]}, "too long"),
        ("hall-3", {"broker_url": "http://x"}, "broker url"),
        ("hall-3", {"broker_url": "mqtt://u:p@host:1883"}, "credentials"),
    ],
)
def test_bad_requests_are_refused_with_a_clear_error(
    tmp_path: Path, name: str, kwargs: dict[str, object], message: str
) -> None:
    config = make_config(tmp_path, accounts=[{"username": "hall-1"}])
    args: dict[str, object] = {"venue_kind": "litigation_hall", **kwargs}
    with pytest.raises(ProvisioningError, match=message.replace("[", r"\[")):
        provision_agent(config, name, **args)  # type: ignore[arg-type]
    assert not (mqtt_dir(config) / ACCOUNTS_FILE).exists()


def test_kiosks_cannot_be_taken_from_another_hall_and_revoke_needs_a_provisioned_agent(
    config: HubConfig,
) -> None:
    provision_agent(config, "hall-1", venue_kind="litigation_hall", kiosks=["k1"])
    with pytest.raises(ProvisioningError, match="kiosk 'k1' already belongs to agent 'hall-1'"):
        provision_agent(config, "hall-2", venue_kind="litigation_hall", kiosks=["k1"])
    with pytest.raises(ProvisioningError, match="device account"):
        provision_agent(config, "kiosk-k1", venue_kind="command_center")
    with pytest.raises(ProvisioningError, match="no provisioned agent 'nobody'"):
        revoke_agent(config, "nobody")
    with pytest.raises(ProvisioningError, match="no provisioned agent 'kiosk-k1'"):
        revoke_agent(config, "kiosk-k1")


def test_broken_accounts_file_is_reported_not_overwritten(config: HubConfig) -> None:
    path = mqtt_dir(config) / ACCOUNTS_FILE
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(ProvisioningError, match=r"accounts.json: not a courthub accounts file"):
        provision_agent(config, "hall-1", venue_kind="litigation_hall")
    assert path.read_text() == "{not json"


def test_snippet_url_comes_from_a_running_hub_then_from_the_config(
    tmp_path: Path, config: HubConfig
) -> None:
    # a running hub's runtime.json wins (its broker port may have been chosen at random)
    config.data_dir.mkdir(parents=True)
    runtime = config.data_dir / RUNTIME_FILE
    runtime.write_text(json.dumps({"broker_url": "mqtt://127.0.0.1:4242", "pid": os.getpid()}))
    assert provision_agent(config, "a-1", venue_kind="command_center").broker_url == (
        "mqtt://127.0.0.1:4242"
    )
    # a runtime.json left behind by a killed hub is ignored
    runtime.write_text(json.dumps({"broker_url": "mqtt://127.0.0.1:4242", "pid": 2**22 + 7}))
    assert provision_agent(config, "a-1", venue_kind="command_center").broker_url == (
        f"mqtt://127.0.0.1:{config.broker.port}"
    )
    # port 0 in hub.toml: the snippet says 1883 and the operator is told
    random_port = hub_config_from_dict({"hub": {"data_dir": str(tmp_path / "other")}})
    result = provision_agent(random_port, "a-1", venue_kind="command_center")
    assert result.broker_url == "mqtt://127.0.0.1:1883" and "port" in result.notes[0]
    # the court's own broker (mode "url"): its URL and CA, never the hub's credentials
    external = hub_config_from_dict(
        {
            "hub": {"data_dir": str(tmp_path / "ext")},
            "broker": {
                "mode": "url",
                "url": "mqtts://hub:secret@broker.court.local:8883?ca=/etc/courthub/ca.pem",
                "password": "hub-secret",
            },
        }
    )
    ext = provision_agent(external, "a-1", venue_kind="command_center")
    assert ext.broker_url == "mqtts://broker.court.local:8883?ca=/etc/courthub/ca.pem"
    assert not ext.reloaded
    # the exported password file carries the hub's configured password, not a generated one
    hub_line = (mqtt_dir(external) / "passwd").read_text().splitlines()[0]
    assert hub_line.startswith("hub:") and hash_matches(hub_line[4:], "hub-secret")
    # an explicit URL beats both
    given = provision_agent(
        config, "a-1", venue_kind="command_center", broker_url="mqtt://10.0.0.5:1883"
    )
    assert given.broker_url == "mqtt://10.0.0.5:1883"


def test_repr_never_shows_passwords(config: HubConfig) -> None:
    result = provision_agent(config, "hall-1", venue_kind="litigation_hall", kiosks=["k1"])
    text = repr(result)
    assert result.password not in text
    assert result.device_passwords["kiosk-k1"] not in text


def test_concurrent_provisioning_loses_no_account(config: HubConfig) -> None:
    names = [f"agent-{i}" for i in range(8)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(
            pool.map(lambda n: provision_agent(config, n, venue_kind="command_center"), names)
        )
    assert sorted(a.username for a in load_provisioned(config)) == names
    credentials = credentials_for(config)
    assert all(credentials.password_for(r.username) == r.password for r in results)
