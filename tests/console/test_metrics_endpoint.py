"""``GET /metrics`` over real HTTP: who may scrape, what the text says, and that it follows the hub.

The hub service runs on a real Mosquitto (the shared ``broker`` fixture); an edge agent is an MQTT
client publishing the real contract (birth, telemetry, death, malformed payloads). Callers use
real per-user API tokens from the account store, as a Prometheus server would. The recorder and
the transcriber are the real classes, not started (no camera, no speech model): their figures are
the idle ones a hub shows before its first frame.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from argon2 import PasswordHasher
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from dashboards import metrics_endpoint
from dashboards.api import POLICY_KEY
from dashboards.app import create_console_app
from dashboards.auth import Role
from dashboards.metrics_endpoint import SCRAPERS, install_metrics
from dashboards.sessions import ACCOUNTS_KEY, ApiTokenAuthenticator, SessionAuthenticator
from hub.accounts import ROLES, AccountStore, api_token_id
from hub.broker import MosquittoBroker
from hub.config import hub_config_from_dict
from hub.live_transcriber import LiveTranscriber
from hub.live_video import LiveVideo
from hub.recorder import Recorder
from hub.recorder_config import CameraConfig, RecorderConfig
from hub.recording_index import RecordingIndex
from hub.service import HubService
from hub.transcript_store import TranscriptStore
from protocol.messages import (
    Birth,
    Death,
    DeviceInfo,
    Telemetry,
    Venue,
    VenueKind,
    encode,
    now_ms,
)
from protocol.mqtt_link import MqttLink
from protocol.topics import TopicKind, build

PASSWORD = "correct horse 9"
AGENT = "agent-a"


class Sink:
    """A telemetry sink as the metrics endpoint sees one: a name and ``stats()``."""

    def __init__(self, name: str, stats: Mapping[str, float] | None = None) -> None:
        self.name = name
        self.figures = dict(stats or {})
        self.broken = False

    def stats(self) -> Mapping[str, float]:
        if self.broken:
            raise RuntimeError("sink stats exploded")
        return self.figures


class NoPcm:
    def set_pcm_hook(self, hook: Callable[[str, str, int, bytes], None] | None) -> None:
        pass


class NoHearing:
    def active_session(self, venue: str) -> str | None:
        return None


@dataclass
class Rig:
    client: TestClient[web.Request, web.Application]
    service: HubService
    accounts: AccountStore
    tokens: dict[str, str]
    sink: Sink
    agent: MqttLink


@pytest.fixture
async def rig(broker: MosquittoBroker, tmp_path: Path) -> AsyncIterator[Rig]:
    config = hub_config_from_dict(
        {"hub": {"data_dir": str(tmp_path / "hub")}, "health": {"sweep_interval_s": 0.05}}
    )
    service = HubService(config, broker.url, "hub", "pw-hub", flush_interval_s=0.1)
    await service.start()
    assert await service.wait_connected(5)
    accounts = await AccountStore.open(
        tmp_path, hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    )
    tokens = {}
    for role in ROLES:
        await accounts.create_user(f"user-{role}", PASSWORD, [role])
        tokens[role] = await accounts.create_api_token(f"user-{role}", "prometheus")
    storage = tmp_path / "recordings"
    storage.mkdir()
    index = await RecordingIndex.open(tmp_path / "recordings.db", storage)
    camera = CameraConfig(id="cam-1", venue="court-3", url="http://127.0.0.1:1/mjpeg", fps=25)
    recorder = Recorder(
        RecorderConfig(cameras=[camera]), storage_root=storage, index=index, live=LiveVideo()
    )
    transcripts = await TranscriptStore.open(tmp_path)
    transcriber = LiveTranscriber(
        model_dir="",  # transcription off: the endpoint must say the model is not loaded
        threads=1,
        phrases=[],
        audio=NoPcm(),
        sessions=NoHearing(),
        store=transcripts,
        venues={},
    )
    await transcriber.start()
    sink = Sink("influxdb", {"queued": 3, "spooled": 1200, "written": 98_000, "dropped": 0})

    def setup(app: web.Application) -> None:
        app[ACCOUNTS_KEY] = accounts
        install_metrics(app, service, sinks=[sink], recorder=recorder, transcriber=transcriber)

    app = create_console_app(
        service,
        [SessionAuthenticator(accounts), ApiTokenAuthenticator(accounts)],
        extra_routes=metrics_endpoint.ROUTES,
        setup=setup,
    )
    agent = MqttLink(
        broker.url, client_id="metrics-test-agent", username=AGENT, password=f"pw-{AGENT}"
    )
    await agent.start()
    assert await agent.wait_connected(5)
    try:
        async with TestClient(TestServer(app)) as client:
            yield Rig(client, service, accounts, tokens, sink, agent)
    finally:
        await agent.stop()
        await transcriber.stop()
        await transcripts.close()
        await index.close()
        await accounts.close()
        await service.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def scrape(rig: Rig) -> list[Sample]:
    r = await rig.client.get("/metrics", headers=bearer(rig.tokens["technician"]))
    assert r.status == 200, await r.text()
    assert r.headers["Content-Type"].startswith("text/plain")
    return [s for family in text_string_to_metric_families(await r.text()) for s in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float | None:
    """The one sample named ``name`` whose labels include ``labels`` (None when absent)."""
    found = [s.value for s in samples if s.name == name and labels.items() <= s.labels.items()]
    assert len(found) <= 1, f"{name}{labels} matches {len(found)} samples"
    return found[0] if found else None


async def scrape_until(
    rig: Rig, condition: Callable[[list[Sample]], bool], what: str, timeout: float = 5.0
) -> list[Sample]:
    """Scrape every 20 ms until ``condition`` holds (fails after ``timeout`` s)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        samples = await scrape(rig)
        if condition(samples):
            return samples
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def publish(rig: Rig, kind: TopicKind, payload: bytes, *, device: str | None = None) -> None:
    topic = build(kind, AGENT, device) if device else build(kind, AGENT)
    await rig.agent.publish_acked(topic, payload, qos=1, retain=kind is TopicKind.BIRTH)


async def birth(rig: Rig, bdseq: int = 1) -> None:
    msg = Birth(
        ts=now_ms(),
        bdseq=bdseq,
        seq=0,
        venue=Venue(id="hall", kind=VenueKind.LITIGATION_HALL, name="Hall"),
        devices=[DeviceInfo(id="kiosk-1", kind="kiosk", model="K100")],
        agent_version="test",
    )
    await publish(rig, TopicKind.BIRTH, encode(msg))


# who may scrape ----------------------------------------------------------------------------------


def test_the_route_is_declared_for_admin_and_technician_only(rig: Rig) -> None:
    app = rig.client.app
    assert app is not None
    policy = app[POLICY_KEY]
    assert policy.undeclared(app) == []
    rule = policy.rule_for("GET", "/metrics")
    assert rule is not None and rule.roles == SCRAPERS == {Role.ADMIN, Role.TECHNICIAN}


async def test_only_a_technicians_or_admins_token_may_scrape(rig: Rig) -> None:
    # a litigant has no account at all: the kiosk user is the anonymous caller
    r = await rig.client.get("/metrics")
    assert r.status == 401 and "Bearer" in r.headers["WWW-Authenticate"]
    r = await rig.client.get("/metrics", headers=bearer("cht_not-a-real-token"))
    assert r.status == 401
    for role in ROLES:
        r = await rig.client.get("/metrics", headers=bearer(rig.tokens[role]))
        body = await r.text()
        if role in ("technician", "admin"):
            assert r.status == 200, (role, body)
            assert "courthub_messages_in_total" in body
        else:
            assert r.status == 403, (role, body)  # a clerk, judge, commander, counter
            assert "courthub_" not in body
    # a revoked token scrapes no more
    technician = rig.tokens["technician"]
    assert await rig.accounts.revoke_api_token("user-technician", api_token_id(technician))
    r = await rig.client.get("/metrics", headers=bearer(technician))
    assert r.status == 401


# what it says ------------------------------------------------------------------------------------


async def test_the_text_parses_and_carries_every_source(rig: Rig) -> None:
    samples = await scrape(rig)
    assert value(samples, "courthub_hub_connected") == 1.0
    assert value(samples, "courthub_messages_in_total") is not None
    assert value(samples, "courthub_ingest_pending") == 0.0
    assert value(samples, "courthub_store_flush_failures_total") == 0.0
    assert value(samples, "courthub_devices", state="online") == 0.0
    # the loop's lateness and the MQTT connection's process
    assert value(samples, "courthub_loop_lag_seconds", quantile="0.99") is not None
    assert value(samples, "courthub_loop_stalls_total") is not None
    assert value(samples, "courthub_mqtt_process_up") == 1.0
    assert value(samples, "courthub_mqtt_process_restarts_total") == 0.0
    # the telemetry sink's own figures, labelled with its name
    assert value(samples, "courthub_telemetry_sink_spooled", sink="influxdb") == 1200.0
    assert value(samples, "courthub_telemetry_sink_queued", sink="influxdb") == 3.0
    # the recorder's camera before its first frame
    assert value(samples, "courthub_camera_fps_expected", camera="cam-1", venue="court-3") == 25.0
    assert value(samples, "courthub_camera_frames_dropped_total", camera="cam-1") == 0.0
    assert value(samples, "courthub_camera_segment_age_seconds", camera="cam-1") is None
    # transcription is off: no model, no channels
    assert value(samples, "courthub_transcriber_model_loaded") == 0.0
    assert value(samples, "courthub_transcriber_channels") == 0.0
    assert value(samples, "courthub_websocket_clients") == 0.0
    sources = {s.labels["source"]: s.value for s in samples if s.name.endswith("source_up")}
    assert sources == {
        "hub": 1.0,
        "registry": 1.0,
        "sinks": 1.0,
        "recorder": 1.0,
        "transcriber": 1.0,
        "live": 1.0,
    }


async def test_a_broken_source_is_marked_down_and_the_rest_still_scrapes(rig: Rig) -> None:
    rig.sink.broken = True
    samples = await scrape(rig)
    assert value(samples, "courthub_scrape_source_up", source="sinks") == 0.0
    assert value(samples, "courthub_telemetry_sink_spooled", sink="influxdb") is None
    assert value(samples, "courthub_scrape_source_up", source="recorder") == 1.0
    assert value(samples, "courthub_messages_in_total") is not None


# following the hub -------------------------------------------------------------------------------


async def test_device_up_follows_the_registry_when_the_agent_dies(rig: Rig) -> None:
    kiosk = {"agent": AGENT, "device": "kiosk-1", "venue": "hall", "kind": "kiosk"}
    await birth(rig, bdseq=1)
    telemetry = Telemetry(ts=now_ms(), seq=1, metrics={"paper_pct": 42.0})
    await publish(rig, TopicKind.TELEMETRY, encode(telemetry), device="kiosk-1")
    samples = await scrape_until(
        rig,
        lambda s: value(s, "courthub_device_metric", metric="paper_pct", **kiosk) == 42.0,
        "the kiosk's paper level",
    )
    assert value(samples, "courthub_device_up", **kiosk) == 1.0
    assert value(samples, "courthub_device_state", state="online", **kiosk) == 1.0
    assert value(samples, "courthub_device_state_code", **kiosk) == 1.0
    assert (value(samples, "courthub_device_heartbeat_age_seconds", **kiosk) or -1) >= 0.0
    seen = value(samples, "courthub_device_last_seen_seconds", **kiosk)
    assert seen is not None and abs(seen - now_ms() / 1000) < 3600  # a Unix time, not ms

    await publish(rig, TopicKind.DEATH, encode(Death(bdseq=1, ts=now_ms())))
    samples = await scrape_until(
        rig, lambda s: value(s, "courthub_device_up", **kiosk) == 0.0, "the kiosk to go down"
    )
    assert value(samples, "courthub_device_state", state="offline", **kiosk) == 1.0
    assert value(samples, "courthub_device_state", state="online", **kiosk) == 0.0
    assert value(samples, "courthub_device_state_code", **kiosk) == 0.0
    assert value(samples, "courthub_devices", state="offline") == 1.0


async def test_bad_messages_are_counted_per_reason(rig: Rig) -> None:
    await birth(rig)
    kiosk = {"agent": AGENT, "device": "kiosk-1"}
    await scrape_until(rig, lambda s: value(s, "courthub_device_up", **kiosk) == 1.0, "birth")
    await publish(rig, TopicKind.TELEMETRY, b'{"ts": 1, "seq": ', device="kiosk-1")
    await publish(
        rig, TopicKind.TELEMETRY, b'{"ts": 1, "seq": 1, "metrics": "hot"}', device="kiosk-1"
    )
    await publish(rig, TopicKind.TELEMETRY, b"\xff\xfe", device="kiosk-1")
    # the reason is counted at the door (paho's thread), the device's count on the loop after
    samples = await scrape_until(
        rig,
        lambda s: value(s, "courthub_device_bad_messages_total", **kiosk) == 3.0,
        "the kiosk's bad messages to be counted",
    )
    assert value(samples, "courthub_bad_messages_total", reason="schema") == 1.0
    assert value(samples, "courthub_bad_messages_total", reason="malformed_json") == 2.0
    assert value(samples, "courthub_bad_messages_total", reason="oversized") is None
    assert value(samples, "courthub_device_up", **kiosk) == 1.0  # bad input is not a fault


async def test_an_agent_clock_an_hour_ahead_shows_its_offset(rig: Rig) -> None:
    await birth(rig)
    kiosk = {"agent": AGENT, "device": "kiosk-1"}
    await scrape_until(rig, lambda s: value(s, "courthub_device_up", **kiosk) == 1.0, "birth")
    hour_ms = 3_600_000
    for seq in range(1, 5):
        msg = Telemetry(ts=now_ms() + hour_ms, seq=seq, metrics={"paper_pct": float(seq)})
        await publish(rig, TopicKind.TELEMETRY, encode(msg), device="kiosk-1")
    samples = await scrape_until(
        rig,
        lambda s: value(s, "courthub_device_metric", metric="paper_pct", **kiosk) == 4.0,
        "the kiosk's last value",
    )
    offset = value(samples, "courthub_agent_clock_offset_seconds", agent=AGENT)
    assert offset is not None and abs(offset - 3600) < 5
    assert value(samples, "courthub_agent_clock_steps_total", agent=AGENT) == 1.0
    assert (value(samples, "courthub_agent_clock_corrected_total", agent=AGENT) or 0) >= 4
    # the last values are filed on the hub's clock, not an hour ahead
    device = rig.service.registry.device(AGENT, "kiosk-1")
    assert device is not None and abs(device.metrics_ts - now_ms()) < 5_000
