"""``[recorder]`` and ``[[recorder.cameras]]`` of hub.toml: what the video recorder records, how.

```toml
[recorder]
storage_dir = ""               # default: data_dir/recordings (relative: against the config file)
segment_s = 10                 # one file per camera every segment_s seconds
stall_timeout_s = 10           # no frame this long: the camera is down (a gap is recorded)
reconnect_interval_s = 5       # retry a down camera this often
headroom_mb = 1024             # keep this much disk free: delete the oldest unheld segments first
quota_mb = 0                   # cap the recordings' total size (0 = only the disk's size)
retention_sweep_s = 30         # how often retention and headroom are checked
live_fps = 10                  # live feeds of stream-copy cameras: decoded at this rate…
live_width = 960               # …and this width, only while somebody watches
[recorder.retention_days]      # per venue kind; 0 = keep forever
tech_courtroom = 365
interrogation_room = 365
litigation_hall = 90
command_center = 30

[[recorder.cameras]]
id = "court-1-cam-1"
venue = "court-1"
venue_kind = "tech_courtroom"
name = "审判席 Bench"
url = "rtsp://10.0.3.21/stream1"   # rtsp://, http(s)://…(.ts) → stream copy; …mjpg / usb:N → OpenCV
path = "auto"                  # "copy" | "opencv" | "auto" (from the URL)
fps = 25                       # expected frame rate (health: received vs expected)
container = "ts"               # stream copy segments: "ts" | "mkv" | "mp4" (fragmented)
encode = "mjpg"                # OpenCV path: "mjpg" (.avi, crash-safe) | "x264" (ffmpeg libx264)
live_roles = []                # who may watch live; empty = the venue kind's default
ptz = "court-1/ptz-1"          # its VISCA head (agent/device): voice follow turns it per seat

[[recorder.microphones]]       # audio arrives over MQTT; one lossless WAV track per seat
agent = "court-1"
device = "mic-1"
venue = "court-1"
venue_kind = "tech_courtroom"
seats = ["judge", "clerk", "plaintiff", "defendant"]  # channel 1, 2, 3… → seat (track ids
                               # <agent>-<device>-<seat> must be [a-z0-9-]{1,64})
```
`audio_segment_s` (0 = `segment_s`) cuts the audio tracks; `audio_jitter_ms` is how long the hub
waits for a late audio frame before it records the missing ones as a gap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec

from protocol.topics import valid_id

PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
VenueKindName = Literal["litigation_hall", "tech_courtroom", "interrogation_room", "command_center"]

#: Who may watch a venue kind's cameras live unless a camera says otherwise. Interrogation rooms
#: are narrower: a detainee's interrogation is not for every screen in the command center.
DEFAULT_LIVE_ROLES: dict[str, tuple[str, ...]] = {
    "litigation_hall": ("commander", "technician", "judge"),
    # the clerk keeps the record beside the judge and watches the room's cameras with them
    "tech_courtroom": ("commander", "technician", "judge", "clerk"),
    "interrogation_room": ("judge",),
    "command_center": ("commander", "technician", "judge"),
}

#: Days kept per venue kind (0 = forever).
DEFAULT_RETENTION_DAYS: dict[str, float] = {
    "tech_courtroom": 365,
    "interrogation_room": 365,
    "litigation_hall": 90,
    "command_center": 30,
}


class CameraConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One camera the hub records."""

    id: str
    venue: str
    venue_kind: VenueKindName = "tech_courtroom"
    name: str = ""
    url: str
    path: Literal["auto", "copy", "opencv"] = "auto"
    fps: PositiveFloat = 25.0
    container: Literal["ts", "mkv", "mp4"] = "ts"
    encode: Literal["mjpg", "x264"] = "mjpg"
    live_roles: list[str] = []
    record: bool = True
    #: the PTZ head that points this camera, as "agent/device" (voice follow turns it to the
    #: seat whose microphone is loudest); at most one per venue
    ptz: str = ""

    @property
    def display_name(self) -> str:
        """The name shown on the wall (the id when no name is given)."""
        return self.name or self.id

    @property
    def capture_path(self) -> Literal["copy", "opencv"]:
        """Stream copy for H.264/H.265 network sources, OpenCV for MJPEG and USB cameras."""
        if self.path != "auto":
            return self.path
        return "opencv" if is_opencv_source(self.url) else "copy"

    def allowed_live_roles(self) -> frozenset[str]:
        """Roles that may watch this camera live."""
        return frozenset(self.live_roles or DEFAULT_LIVE_ROLES[self.venue_kind])


class MicrophoneConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A multi-channel microphone device of an agent whose audio frames the hub records."""

    agent: str
    device: str
    venue: str
    venue_kind: VenueKindName = "tech_courtroom"
    #: seat of channel 1, 2, 3…; one recorded track per seat
    seats: list[str]

    def track(self, seat: str) -> str:
        """The recorded track (index "camera") of a seat: ``<agent>-<device>-<seat>``."""
        return f"{self.agent}-{self.device}-{seat}"


def is_opencv_source(url: str) -> bool:
    """MJPEG over HTTP and local (USB) devices go through OpenCV; the rest is stream-copied."""
    lower = url.lower()
    if lower.startswith(("usb:", "/dev/video")):
        return True
    if lower.startswith(("http://", "https://")):
        path = lower.split("?", 1)[0]
        return path.endswith((".mjpg", ".mjpeg", ".cgi")) or "mjpeg" in path or "mjpg" in path
    return False


class RecorderConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[recorder]``: segments, outage detection, disk and retention rules, the cameras."""

    storage_dir: str = ""
    segment_s: Annotated[float, msgspec.Meta(ge=1, le=3600)] = 10.0
    stall_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=20)] = 10.0
    reconnect_interval_s: Annotated[float, msgspec.Meta(gt=0, le=10)] = 5.0
    headroom_mb: Annotated[float, msgspec.Meta(ge=0)] = 1024.0
    quota_mb: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    retention_sweep_s: PositiveFloat = 30.0
    retention_days: dict[str, Annotated[float, msgspec.Meta(ge=0)]] = msgspec.field(
        default_factory=lambda: dict(DEFAULT_RETENTION_DAYS)
    )
    live_fps: PositiveFloat = 10.0
    live_width: Annotated[int, msgspec.Meta(ge=64, le=3840)] = 960
    #: seconds between camera health reports (telemetry)
    health_interval_s: PositiveFloat = 5.0
    cameras: list[CameraConfig] = []
    #: audio segments' length in seconds of capture time (0 = ``segment_s``)
    audio_segment_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 0.0
    #: a missing audio frame is waited for this long before it is recorded as lost
    audio_jitter_ms: Annotated[float, msgspec.Meta(gt=0, le=5000)] = 200.0
    microphones: list[MicrophoneConfig] = []

    def ptz_by_venue(self) -> dict[str, tuple[str, str]]:
        """Venue → (agent, PTZ device) for voice follow (the first camera with a PTZ head)."""
        out: dict[str, tuple[str, str]] = {}
        for camera in self.cameras:
            if camera.ptz and camera.venue not in out:
                agent, _, device = camera.ptz.partition("/")
                out[camera.venue] = (agent, device)
        return out

    def storage_path(self, data_dir: Path) -> Path:
        """Where segments are written."""
        return Path(self.storage_dir) if self.storage_dir else data_dir / "recordings"

    def retention_for(self, venue_kind: str) -> float:
        """Days to keep a venue kind's segments (0 = forever)."""
        return self.retention_days.get(venue_kind, DEFAULT_RETENTION_DAYS.get(venue_kind, 0.0))


def check_recorder(recorder: RecorderConfig) -> list[tuple[str, str]]:
    """Problems types cannot express, as ``(field, message)`` pairs (empty when fine)."""
    problems: list[tuple[str, str]] = []
    seen: set[str] = set()
    known_roles = {"admin", "technician", "judge", "clerk", "commander", "counter"}
    for kind in recorder.retention_days:
        if kind not in DEFAULT_RETENTION_DAYS:
            problems.append((f"recorder.retention_days.{kind}", "unknown venue kind"))
    for i, camera in enumerate(recorder.cameras):
        where = f"recorder.cameras[{i}]"
        if not valid_id(camera.id):
            problems.append((f"{where}.id", f"{camera.id!r} is not [a-z0-9-]{{1,64}}"))
        elif camera.id in seen:
            problems.append((f"{where}.id", f"duplicate camera {camera.id!r}"))
        seen.add(camera.id)
        if not valid_id(camera.venue):
            problems.append((f"{where}.venue", f"{camera.venue!r} is not [a-z0-9-]{{1,64}}"))
        if not camera.url:
            problems.append((f"{where}.url", "must not be empty"))
        agent, _, device = camera.ptz.partition("/")
        if camera.ptz and not (valid_id(agent) and valid_id(device)):
            problems.append((f"{where}.ptz", f"{camera.ptz!r} is not agent/device"))
        for role in camera.live_roles:
            if role not in known_roles:
                problems.append((f"{where}.live_roles", f"unknown role {role!r}"))
    problems.extend(_check_microphones(recorder, seen))
    return problems


def _check_microphones(recorder: RecorderConfig, camera_ids: set[str]) -> list[tuple[str, str]]:
    """Ids, seat names and the track ids they make (unique, not a camera's id)."""
    problems: list[tuple[str, str]] = []
    devices: set[tuple[str, str]] = set()
    tracks: set[str] = set()
    for i, mic in enumerate(recorder.microphones):
        where = f"recorder.microphones[{i}]"
        for name in ("agent", "device", "venue"):
            value = getattr(mic, name)
            if not valid_id(value):
                problems.append((f"{where}.{name}", f"{value!r} is not [a-z0-9-]{{1,64}}"))
        if (mic.agent, mic.device) in devices:
            problems.append((where, f"duplicate microphone {mic.agent}/{mic.device}"))
        devices.add((mic.agent, mic.device))
        if not mic.seats:
            problems.append((f"{where}.seats", "must name the seat of channel 1 at least"))
        for seat in mic.seats:
            track = mic.track(seat)
            if not seat or not valid_id(seat) or not valid_id(track):
                problems.append(
                    (f"{where}.seats", f"track {track!r} of seat {seat!r} is not [a-z0-9-]{{1,64}}")
                )
            elif track in tracks or track in camera_ids:
                problems.append((f"{where}.seats", f"duplicate track {track!r}"))
            tracks.add(track)
    return problems
