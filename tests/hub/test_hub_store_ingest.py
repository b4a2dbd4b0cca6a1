"""The SQLite store and write-behind flusher, and the ingest's thread → loop batching."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import pytest

from hub.bad_messages import BadMessageCounter, blame
from hub.ingest import Inbound, Ingest, Item, Rejected
from hub.registry import AgentRecord, DeviceRecord, HealthState, Registry
from hub.seq_tracker import SeqTracker
from hub.store import HubStore, StoreFlusher, StoreLocked
from protocol.errors import BadMessage, BadReason
from protocol.messages import DeviceInfo, DeviceStatus, Telemetry, encode, now_ms
from protocol.mqtt_link import BrokerUrl


async def test_store_round_trip_and_removal(tmp_path: Path) -> None:
    store = HubStore(tmp_path)
    await store.open()
    registry = Registry()
    seq = SeqTracker()
    flusher = StoreFlusher(store, registry, seq)
    agent = registry.ensure_agent("a")
    agent.venue_id, agent.bdseq, agent.online, agent.last_death_bdseq = "hall", 3, True, 2
    registry.mark_agent(agent)
    registry.replace_devices(
        "a",
        [
            DeviceInfo(id="d1", kind="kiosk", capabilities=["reboot"], heartbeat_s=2),
            DeviceInfo(id="d2", kind="printer"),
        ],
        now_ms=5,
    )
    d1 = registry.device("a", "d1")
    assert d1 is not None
    d1.metrics = {"paper": 12.5}
    d1.reported_state = DeviceStatus.FAULT
    registry.set_health(d1, HealthState.FAULT, "jam", now_ms())
    seq.on_birth("a", 0)
    seq.observe("a", 0)
    await flusher.flush()
    registry.replace_devices("a", [DeviceInfo(id="d1", kind="kiosk")], now_ms=8)  # d2 removed
    await flusher.flush()
    assert flusher.flushes == 2
    await flusher.flush()  # nothing dirty: no write
    assert flusher.flushes == 2
    await store.close()

    reopened = HubStore(tmp_path)
    await reopened.open()
    stored = await reopened.load()
    assert stored.agents == [
        AgentRecord("a", "hall", bdseq=3, online=True, last_death_bdseq=2),
    ]
    [device] = stored.devices
    assert isinstance(device, DeviceRecord)
    assert (device.id, device.kind, device.metrics) == ("d1", "kiosk", {"paper": 12.5})
    assert device.capabilities == ()  # the second birth listed none
    assert device.state is HealthState.FAULT and device.reported_state is DeviceStatus.FAULT
    assert stored.seq_states["a"]["received"] == [[0, 0]]
    log = await reopened.state_log("a", "d1")
    assert [(e.state, e.reason) for e in log] == [(HealthState.FAULT, "jam")]
    await reopened.close()


async def test_one_hub_per_data_dir(tmp_path: Path) -> None:
    first = HubStore(tmp_path)
    await first.open()
    second = HubStore(tmp_path)
    with pytest.raises(StoreLocked, match="another hub"):
        await second.open()
    await first.close()
    await second.open()  # free again once the first hub closed its store
    await second.close()


async def test_failed_flush_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = HubStore(tmp_path)
    await store.open()
    registry = Registry()
    flusher = StoreFlusher(store, registry, SeqTracker())
    registry.ensure_agent("a")
    real_write = store.write
    calls = 0

    async def flaky(batch: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("disk full")
        await real_write(batch)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "write", flaky)
    await flusher.flush()
    assert flusher.failures == 1
    registry.ensure_agent("b")
    await flusher.flush()
    stored = await store.load()
    assert [a.id for a in stored.agents] == ["a", "b"]
    await store.close()


def _telemetry_payload(seq: int) -> bytes:
    return encode(Telemetry(ts=1, seq=seq, metrics={"n": float(seq)}))


async def test_ingest_hands_messages_to_the_loop_in_batches() -> None:
    loop_thread = threading.get_ident()
    handled: list[Item] = []
    threads: set[int] = set()

    def handler(item: Item) -> None:
        threads.add(threading.get_ident())
        handled.append(item)

    ingest = Ingest(
        BrokerUrl("127.0.0.1", 1),
        username=None,
        password=None,
        handler=handler,
        bad=BadMessageCounter(),
        batch_size=100,
    )
    ingest._loop = asyncio.get_running_loop()  # as start() would, without a broker

    count = 2000

    def network_thread() -> None:
        for n in range(count):
            ingest._on_message(f"courthub/v1/a/d{n % 3}/telemetry", _telemetry_payload(n), False)
        ingest._on_message("courthub/v1/a/d0/telemetry", b"{", False)

    producer = threading.Thread(target=network_thread)
    producer.start()
    await asyncio.to_thread(producer.join)
    for _ in range(500):
        if len(handled) == count + 1:
            break
        await asyncio.sleep(0.01)
    assert len(handled) == count + 1
    assert threads == {loop_thread}  # decoded in the thread, handled on the loop
    seqs = [i.msg.seq for i in handled if isinstance(i, Inbound) and isinstance(i.msg, Telemetry)]
    assert seqs == list(range(count))  # order kept
    assert handled[-1] == Rejected("a", "d0", BadReason.MALFORMED_JSON)
    # far fewer loop wake-ups than messages: one per batch, at most ``batch_size`` per tick
    assert ingest.counters.batches < count / 10
    assert ingest.counters.messages_in == count + 1 and ingest.counters.accepted == count


def test_bad_messages_are_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    counter = BadMessageCounter(log_interval_s=10, clock=lambda: now[0])
    error = BadMessage(BadReason.SCHEMA, "metrics must be an object")
    with caplog.at_level(logging.WARNING, logger="hub.bad_messages"):
        for _ in range(100):
            counter.record("courthub/v1/a/d1/telemetry", error)
        counter.record("courthub/v1/a/d2/telemetry", error)  # another key logs at once
        now[0] = 10.5
        counter.record("courthub/v1/a/d1/telemetry", error)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert "device=d1" in lines[0] and "suppressed=0" in lines[0]
    assert "device=d2" in lines[1]
    assert "suppressed=99" in lines[2]
    assert counter.count("a", "d1", BadReason.SCHEMA) == 101
    assert counter.total == 102 and counter.by_reason() == {"schema": 102}


def test_blame_names_what_it_can() -> None:
    assert blame("courthub/v1/a/d1/telemetry") == ("a", "d1")
    assert blame("courthub/v1/a/birth") == ("a", "?")
    assert blame("courthub/v1/A!/x/y") == ("?", "x")
    assert blame("elsewhere/x") == ("?", "?")
