"""Bad input at the door: each rejection counted under its reason per device; the hub carries on."""

from __future__ import annotations

import struct
import time

from hub_harness import AgentFactory, HubFactory, wait_until

from hub.broker import MosquittoBroker
from hub.registry import AudioReceived
from protocol.audio import AudioFrame, encode_frame
from protocol.errors import BadReason
from protocol.messages import MAX_JSON_PAYLOAD
from protocol.mqtt_link import MqttLink

BASE = "courthub/v1/agent-a"


async def test_each_kind_of_bad_message_is_counted_and_ingest_survives(
    broker: MosquittoBroker, make_hub: HubFactory, make_agent: AgentFactory
) -> None:
    hub = await make_hub()
    agent = await make_agent("agent-a")
    await agent.birth(seq=0)
    await wait_until(lambda: hub.registry.agent("agent-a") is not None)

    oversized = b'{"ts":1,"seq":1,"metrics":{"x":1},"pad":"' + b"x" * MAX_JSON_PAYLOAD + b'"}'
    bad_audio = struct.pack("<4sBBHIQQI", b"WAVE", 1, 1, 1, 16000, 0, 0, 1) + b"\x00\x00"
    cases = [
        (f"{BASE}/kiosk-1/telemetry", b'{"ts": 1, "seq": ', BadReason.MALFORMED_JSON),
        (
            f"{BASE}/kiosk-1/telemetry",
            b'{"ts": 1, "seq": 1, "metrics": "hot"}',
            BadReason.SCHEMA,
        ),
        (f"{BASE}/kiosk-1/event", b'{"ts": 1, "seq": -3, "type": "x"}', BadReason.SCHEMA),
        (f"{BASE}/kiosk-1/bogus", b"{}", BadReason.UNKNOWN_TOPIC),
        (f"{BASE}/kiosk-1/telemetry", oversized, BadReason.OVERSIZED),
        (f"{BASE}/kiosk-1/audio", bad_audio, BadReason.BAD_MAGIC),
        # something publishing what only the hub may publish (ACL allows the agent's own tree)
        (
            f"{BASE}/kiosk-1/cmd",
            b'{"id":"x","name":"reboot","deadline_ms":1}',
            BadReason.WRONG_DIRECTION,
        ),
        (f"{BASE}/printer-1/telemetry", b"\xff\xfe", BadReason.MALFORMED_JSON),
        (f"{BASE}/Kiosk_1/telemetry", b"{}", BadReason.BAD_ID),
    ]
    for topic, payload, _ in cases:
        await agent.publish(topic, payload)
    # a future contract version, from a client allowed to write there (agents are not)
    other = MqttLink(broker.url, client_id="other-hub-tool", username="hub", password="pw-hub")
    await other.start()
    assert await other.wait_connected(5)
    await other.publish_acked("courthub/v2/agent-a/birth", b"{}", qos=1)
    await other.stop()
    cases.append(("courthub/v2/agent-a/birth", b"{}", BadReason.UNSUPPORTED_VERSION))
    # and a good message after all of that
    await agent.telemetry("kiosk-1", {"paper_pct": 70.0}, seq=0)

    kiosk = hub.registry.device("agent-a", "kiosk-1")
    assert kiosk is not None
    await wait_until(lambda: kiosk.metrics.get("paper_pct") == 70.0, what="good message")
    await wait_until(lambda: hub.stats()["bad_messages"] == len(cases), what="all counted")

    bad = hub.bad
    assert bad.count("agent-a", "kiosk-1", BadReason.MALFORMED_JSON) == 1
    assert bad.count("agent-a", "kiosk-1", BadReason.SCHEMA) == 2
    assert bad.count("agent-a", "kiosk-1", BadReason.UNKNOWN_TOPIC) == 1
    assert bad.count("agent-a", "kiosk-1", BadReason.OVERSIZED) == 1
    assert bad.count("agent-a", "kiosk-1", BadReason.BAD_MAGIC) == 1
    assert bad.count("agent-a", "kiosk-1", BadReason.WRONG_DIRECTION) == 1
    assert bad.count("agent-a", "printer-1", BadReason.MALFORMED_JSON) == 1
    assert bad.count(reason=BadReason.UNSUPPORTED_VERSION) == 1
    assert bad.count(reason=BadReason.BAD_ID) == 1
    stats = hub.stats()
    assert stats["bad_by_reason"]["schema"] == 2
    assert stats["lost"] == 0 and stats["duplicates"] == 0
    # the registry row carries the device's own count (persisted, shown by the API)
    await wait_until(lambda: kiosk.bad_messages == 7, what="per-device count on the loop")
    printer = hub.registry.device("agent-a", "printer-1")
    assert printer is not None and printer.bad_messages == 1


async def test_audio_frames_reach_listeners_and_keep_the_device_alive(
    make_hub: HubFactory, make_agent: AgentFactory
) -> None:
    hub = await make_hub()
    frames: list[AudioReceived] = []
    hub.add_listener(lambda c: frames.append(c) if isinstance(c, AudioReceived) else None)
    agent = await make_agent("agent-a")
    await agent.birth()
    await wait_until(lambda: hub.registry.agent("agent-a") is not None)
    kiosk = hub.registry.device("agent-a", "kiosk-1")
    assert kiosk is not None
    before = kiosk.last_seen_ms

    # stamped now: a frame stamped far behind the agent's birth reads as a clock stepped back
    # (hub/clock_skew.py) and is filed at its arrival time
    now_us = int(time.time() * 1_000_000)
    frame = AudioFrame(
        seq=7, capture_ts_us=now_us, sample_rate=16000, channels=2, pcm=b"\x01\x00" * 640
    )
    await agent.publish(f"{BASE}/kiosk-1/audio", encode_frame(frame))
    await wait_until(lambda: len(frames) == 1, what="audio frame")
    assert frames[0].frame == frame
    assert kiosk.last_seen_ms >= before


async def test_empty_retained_payload_clears_without_counting_as_bad(
    make_hub: HubFactory, make_agent: AgentFactory
) -> None:
    hub = await make_hub()
    agent = await make_agent("agent-a")
    await agent.birth()
    await wait_until(lambda: hub.registry.agent("agent-a") is not None)
    # an agent deleting its retained death on reconnect publishes an empty retained payload
    await agent.publish(f"{BASE}/death", b"", retain=True)
    await agent.telemetry("kiosk-1", {"n": 1.0})
    await wait_until(lambda: hub.ingest.counters.retained_cleared == 1)
    assert hub.stats()["bad_messages"] == 0
