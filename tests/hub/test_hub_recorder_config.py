"""``[recorder]`` of hub.toml: defaults, capture path from the URL, live roles, clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hub.config import HubConfigError, hub_config_from_dict
from hub.recorder_config import DEFAULT_RETENTION_DAYS, CameraConfig, RecorderConfig


def recorder(**table: Any) -> RecorderConfig:
    return hub_config_from_dict({"recorder": table}).recorder


def camera(**fields: Any) -> dict[str, Any]:
    return {"id": "court-1-cam-1", "venue": "court-1", "url": "rtsp://10.0.3.21/s1", **fields}


def test_defaults() -> None:
    config = hub_config_from_dict({}).recorder
    assert config == RecorderConfig()
    assert (config.segment_s, config.stall_timeout_s, config.reconnect_interval_s) == (10, 10, 5)
    assert (config.headroom_mb, config.quota_mb, config.retention_sweep_s) == (1024, 0, 30)
    assert config.cameras == [] and config.retention_days == DEFAULT_RETENTION_DAYS
    assert config.storage_path(Path("/data/hub")) == Path("/data/hub/recordings")
    assert config.retention_for("litigation_hall") == 90
    assert config.retention_for("command_center") == 30
    only = recorder(retention_days={"litigation_hall": 7})
    assert only.retention_for("litigation_hall") == 7
    assert only.retention_for("tech_courtroom") == 365  # unnamed kinds keep their default
    cam = recorder(cameras=[camera()]).cameras[0]
    assert (cam.venue_kind, cam.path, cam.fps, cam.container, cam.encode) == (
        "tech_courtroom",
        "auto",
        25,
        "ts",
        "mjpg",
    )
    assert cam.record and cam.display_name == "court-1-cam-1"


def test_a_relative_storage_dir_is_anchored_at_the_config_file(tmp_path: Path) -> None:
    config = hub_config_from_dict({"recorder": {"storage_dir": "video"}}, base_dir=tmp_path)
    assert config.recorder.storage_path(Path("/elsewhere")) == tmp_path / "video"


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("rtsp://10.0.3.21/stream1", "copy"),
        ("http://10.0.3.22:8080/stream.ts", "copy"),
        ("https://cam/live/stream.ts?token=x", "copy"),
        ("http://10.0.3.23:8080/stream.mjpg", "opencv"),
        ("http://cam/video.cgi", "opencv"),
        ("HTTP://CAM/MJPEG/1", "opencv"),
        ("usb:0", "opencv"),
        ("/dev/video0", "opencv"),
    ],
)
def test_auto_picks_the_capture_path_from_the_url(url: str, path: str) -> None:
    assert recorder(cameras=[camera(url=url)]).cameras[0].capture_path == path


def test_an_explicit_path_wins_over_the_url() -> None:
    cam = recorder(cameras=[camera(url="usb:0", path="copy")]).cameras[0]
    assert cam.capture_path == "copy"


def test_live_roles_default_by_venue_kind() -> None:
    cams = recorder(
        cameras=[
            camera(id="room-cam", venue="room-1", venue_kind="interrogation_room"),
            camera(id="hall-cam", venue="hall-1", venue_kind="litigation_hall"),
            camera(id="own-cam", venue="hall-1", live_roles=["admin", "technician"]),
        ]
    ).cameras
    assert cams[0].allowed_live_roles() == {"judge"}
    assert cams[1].allowed_live_roles() == {"commander", "technician", "judge"}
    assert cams[2].allowed_live_roles() == {"admin", "technician"}


def test_ptz_heads_by_venue() -> None:
    config = recorder(
        cameras=[
            camera(id="c1", ptz="court-1/ptz-1"),
            camera(id="c2", ptz="court-1/ptz-2"),  # the first head of a venue is the one
            camera(id="c3", venue="court-2"),
        ]
    )
    assert config.ptz_by_venue() == {"court-1": ("court-1", "ptz-1")}


@pytest.mark.parametrize(
    ("table", "field", "words"),
    [
        ({"cameras": [camera(), camera()]}, "recorder.cameras[1].id", "duplicate"),
        ({"cameras": [camera(id="Cam 1")]}, "recorder.cameras[0].id", "Cam 1"),
        ({"cameras": [camera(venue="Court_1")]}, "recorder.cameras[0].venue", "Court_1"),
        ({"cameras": [camera(url="")]}, "recorder.cameras[0].url", "empty"),
        ({"cameras": [camera(ptz="ptz-1")]}, "recorder.cameras[0].ptz", "agent/device"),
        ({"cameras": [camera(ptz="a/B C")]}, "recorder.cameras[0].ptz", "agent/device"),
        (
            {"cameras": [camera(live_roles=["judge", "janitor"])]},
            "recorder.cameras[0].live_roles",
            "janitor",
        ),
        ({"retention_days": {"courtroom": 10}}, "recorder.retention_days.courtroom", "venue kind"),
        ({"retention_days": {"tech_courtroom": -1}}, "recorder.retention_days", ">= 0"),
        ({"cameras": [camera(venue_kind="kitchen")]}, "recorder.cameras[0].venue_kind", ""),
        ({"cameras": [camera(path="ffmpeg")]}, "recorder.cameras[0].path", ""),
        ({"cameras": [camera(fps=0)]}, "recorder.cameras[0].fps", "> 0"),
        ({"cameras": [camera(colour="red")]}, "recorder.cameras[0].colour", "unknown"),
        ({"segment_s": 0.5}, "recorder.segment_s", ">= 1"),
        ({"stall_timeout_s": 60}, "recorder.stall_timeout_s", "<= 20"),
    ],
)
def test_bad_recorder_tables_name_the_field(table: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(HubConfigError) as info:
        hub_config_from_dict({"recorder": table}, source="hub.toml")
    assert info.value.field.startswith(field), info.value
    assert words in info.value.message
    assert str(info.value).startswith("hub.toml: recorder")


def test_a_camera_struct_is_frozen() -> None:
    cam = CameraConfig(id="c", venue="v", url="usb:0")
    with pytest.raises(AttributeError):
        cam.url = "usb:1"  # type: ignore[misc]
