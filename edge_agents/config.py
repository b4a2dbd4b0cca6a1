"""An edge agent's venue config: one TOML file per agent, validated into typed msgspec Structs.

Example (every section but ``[agent]`` and ``[venue]`` may be left out)::

    [agent]
    id = "hall-1"                 # [a-z0-9-]{1,64}, not "hub"
    data_dir = "/var/lib/courthub/agents/hall-1"   # outbox + state db; relative = next to the file
    heartbeat_s = 5.0             # the agent's own telemetry interval
    [venue]
    id = "hall"
    kind = "litigation_hall"      # litigation_hall | tech_courtroom | interrogation_room | command_center
    name = "诉讼服务大厅"
    [broker]
    url = "mqtt://127.0.0.1:1883" # or mqtts://host:8883?ca=FILE&cert=FILE&key=FILE
    username = "hall-1"           # default: the agent id
    password = "..."              # or password_file = "path" (its content, stripped)
    [outbox]
    max_messages = 100000         # bounded: when full the OLDEST message is dropped and counted
    [[devices]]
    id = "kiosk-1"
    driver = "kiosk_mqtt"         # a name of device_drivers.catalog
    options = { }                 # validated by the driver itself

Errors raise :class:`AgentConfigError` naming the file and the field. The password never appears
in a repr or a log line (:class:`BrokerSection` hides it, :class:`BrokerUrl`'s ``str`` too).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final

import msgspec

from protocol.messages import VenueKind
from protocol.mqtt_link import BrokerUrl
from protocol.topics import RESERVED_AGENT_IDS

#: The device id under which the agent reports on itself (CONTRACT-NOTES.md).
AGENT_DEVICE_ID: Final = "agent"

IdStr = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9-]{1,64}$")]

_AT_PATH = re.compile(r"^(?P<msg>.*) - at `\$(?P<path>[^`]*)`$", re.DOTALL)


class AgentConfigError(ValueError):
    """The agent config is wrong; the message names the file (or source) and the field."""

    def __init__(self, source: str, field: str, detail: str) -> None:
        where = f"{source}: {field}" if field else source
        super().__init__(f"{where}: {detail}")
        self.source = source
        self.field = field
        self.detail = detail


class AgentSection(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[agent]``: who the agent is and where it keeps its outbox."""

    id: IdStr
    #: empty = ``$XDG_STATE_HOME/courthub/agents/{id}`` (resolved by the loader)
    data_dir: str = ""
    heartbeat_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0

    def __post_init__(self) -> None:
        if self.id in RESERVED_AGENT_IDS:
            raise ValueError(f"id {self.id!r} is reserved")


class VenueSection(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[venue]``: where the agent stands (metadata of its birth)."""

    id: IdStr
    kind: VenueKind
    name: str = ""


class BrokerSection(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[broker]``: how to reach MQTT. After loading, ``password`` holds the resolved secret."""

    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password: str | None = None
    password_file: str | None = None

    def __post_init__(self) -> None:
        try:
            BrokerUrl.parse(self.url)
        except ValueError as exc:
            raise ValueError(f"url: {exc}") from None
        if self.password is not None and self.password_file is not None:
            raise ValueError("set password or password_file, not both")

    def __repr__(self) -> str:
        # Never show the secret: configs end up in logs and tracebacks.
        return (
            f"BrokerSection(url={self.broker_url!s}, username={self.username!r}, "
            f"password={'***' if self.password else None}, password_file={self.password_file!r})"
        )

    @property
    def broker_url(self) -> BrokerUrl:
        """The parsed URL (its ``str`` hides any password)."""
        return BrokerUrl.parse(self.url)


class OutboxSection(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[outbox]``: the durable store-and-forward buffer."""

    max_messages: Annotated[int, msgspec.Meta(ge=1)] = 100_000


class DeviceSection(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One ``[[devices]]`` entry; ``options`` are validated by the driver."""

    id: IdStr
    driver: Annotated[str, msgspec.Meta(min_length=1)]
    options: dict[str, Any] = {}

    def __post_init__(self) -> None:
        if self.id == AGENT_DEVICE_ID:
            raise ValueError(f"id {AGENT_DEVICE_ID!r} is reserved for the agent itself")


class AgentConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The whole venue config of one agent."""

    agent: AgentSection
    venue: VenueSection
    broker: BrokerSection = BrokerSection()
    outbox: OutboxSection = OutboxSection()
    devices: list[DeviceSection] = []

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for device in self.devices:
            if device.id in seen:
                raise ValueError(f"device id {device.id!r} appears twice in [[devices]]")
            seen.add(device.id)

    @property
    def data_path(self) -> Path:
        """The agent's data directory (outbox database)."""
        return Path(self.agent.data_dir)

    @property
    def broker_url(self) -> BrokerUrl:
        """The broker URL (its ``str`` hides any password)."""
        return self.broker.broker_url

    @property
    def mqtt_username(self) -> str:
        """The MQTT user: ``broker.username``, else the URL's user, else the agent id."""
        return self.broker.username or self.broker_url.username or self.agent.id

    @property
    def mqtt_password(self) -> str | None:
        """The MQTT password (resolved from ``password_file`` by the loader), else the URL's."""
        return self.broker.password or self.broker_url.password


def default_data_dir(agent_id: str) -> Path:
    """Where an agent keeps its data when the config does not say: the user's state dir."""
    state_home = os.environ.get("XDG_STATE_HOME") or "~/.local/state"
    return Path(state_home).expanduser() / "courthub" / "agents" / agent_id


def load_agent_config(path: str | os.PathLike[str]) -> AgentConfig:
    """Load and validate an agent config from a TOML file.

    Relative ``data_dir`` and ``password_file`` are resolved against the file's directory.
    Raises :class:`AgentConfigError` naming the file and the offending field.
    """
    file = Path(path)
    source = str(file)
    try:
        with file.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise AgentConfigError(source, "", f"cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise AgentConfigError(source, "", f"invalid TOML: {exc}") from None
    return agent_config_from_dict(data, source=source, base_dir=file.resolve().parent)


def agent_config_from_dict(
    data: Mapping[str, Any],
    *,
    source: str = "<agent config>",
    base_dir: str | os.PathLike[str] | None = None,
) -> AgentConfig:
    """Validate an in-memory config (same shape as the TOML file), e.g. for the simulator.

    ``base_dir`` (default: the current directory) anchors relative paths; ``source`` names the
    config in error messages.
    """
    try:
        config = msgspec.convert(dict(data), AgentConfig)
    except msgspec.ValidationError as exc:
        field, detail = _split_validation_error(str(exc))
        raise AgentConfigError(source, field, detail) from None
    return _resolve(config, source, Path(base_dir) if base_dir is not None else Path.cwd())


def _split_validation_error(text: str) -> tuple[str, str]:
    """``"Expected int - at `$.outbox.max_messages`"`` -> ``("outbox.max_messages", "Expected int")``."""
    match = _AT_PATH.match(text)
    if match is None:
        return "", text
    return match["path"].lstrip("."), match["msg"]


def _resolve(config: AgentConfig, source: str, base_dir: Path) -> AgentConfig:
    """Make paths absolute and read the password file, so the agent never touches the config again."""
    data_dir = (
        base_dir / Path(config.agent.data_dir).expanduser()
        if config.agent.data_dir
        else default_data_dir(config.agent.id)
    )
    agent = msgspec.structs.replace(config.agent, data_dir=str(data_dir))
    broker = config.broker
    if broker.password_file is not None:
        secret_path = base_dir / Path(broker.password_file).expanduser()
        try:
            secret = secret_path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise AgentConfigError(
                source, "broker.password_file", f"cannot read {secret_path}: {exc.strerror or exc}"
            ) from None
        if not secret:
            raise AgentConfigError(source, "broker.password_file", f"{secret_path} is empty")
        # The secret is resolved once here; the agent never reads the file again.
        broker = msgspec.structs.replace(broker, password=secret, password_file=None)
    return msgspec.structs.replace(config, agent=agent, broker=broker)
