"""The IP cameras of a simulated court, and the ``[[recorder.cameras]]`` the hub records them by.

Cameras start before the hub (the demo writes their URLs into the hub's config) and take the
scenario's camera faults: ``stall_camera`` (connections stay open, nothing comes) and
``cut_camera`` (every connection dropped, new ones refused for the fault's duration).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from simulators.camera import CameraSimConfig, SimulatedCamera
from simulators.rtsp_camera import SimulatedRtspCamera
from simulators.scenario import CourtScenario, FaultAction

log = logging.getLogger(__name__)


class CourtCameras:
    """Every camera of every venue of a scenario."""

    def __init__(self, scenario: CourtScenario) -> None:
        self.scenario = scenario
        self.cameras: dict[str, SimulatedCamera | SimulatedRtspCamera] = {}
        self._venue: dict[str, tuple[str, str, str, float]] = {}

    async def start(self) -> None:
        """Start every camera (their URLs are known afterwards)."""
        for venue in self.scenario.venues:
            for spec in venue.cameras:
                camera: SimulatedCamera | SimulatedRtspCamera
                if spec.transport == "rtsp":
                    assert spec.codec != "mjpeg"  # the scenario refuses it
                    camera = SimulatedRtspCamera(
                        spec.id, spec.width, spec.height, spec.fps, spec.codec, port=spec.port
                    )
                else:
                    camera = SimulatedCamera(
                        CameraSimConfig(
                            name=spec.id,
                            codec=spec.codec,
                            width=spec.width,
                            height=spec.height,
                            fps=spec.fps,
                            port=spec.port,
                        )
                    )
                await camera.start()
                self.cameras[spec.id] = camera
                self._venue[spec.id] = (venue.venue_id, venue.kind.value, spec.name, spec.fps)

    async def stop(self) -> None:
        """Stop every camera."""
        await asyncio.gather(*(c.stop() for c in self.cameras.values()), return_exceptions=True)

    def recorder_cameras(self) -> list[dict[str, Any]]:
        """``[[recorder.cameras]]`` entries for the hub's config."""
        out = []
        for camera_id, camera in self.cameras.items():
            venue, kind, name, fps = self._venue[camera_id]
            out.append(
                {
                    "id": camera_id,
                    "venue": venue,
                    "venue_kind": kind,
                    "name": name,
                    "url": camera.url,
                    "fps": fps,
                }
            )
        return out

    async def inject(self, action: FaultAction, camera_id: str, duration_s: float) -> None:
        """Stall or cut ``camera_id`` for ``duration_s`` (0: until the end of the run)."""
        camera = self.cameras[camera_id]
        if action is FaultAction.STALL_CAMERA:
            camera.stall()
        elif isinstance(camera, SimulatedRtspCamera):
            await camera.cut()
        else:
            camera.refuse(True)
            await camera.disconnect()
        if duration_s > 0:
            await asyncio.sleep(duration_s)
            if isinstance(camera, SimulatedRtspCamera):
                await camera.restore()
            else:
                camera.refuse(False)
            camera.resume()
            log.info("fault over: camera %s back", camera_id)
