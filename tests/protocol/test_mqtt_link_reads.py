"""The link's paho client: buffered socket reads and the PUBLISH fast path, on a fake socket."""

from __future__ import annotations

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from protocol.mqtt_link import _BUFFERED_READS, _BufferedClient


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _publish(
    topic: str, payload: bytes, *, qos: int = 0, retain: bool = False, mid: int = 0, props=b""
) -> bytes:
    t = topic.encode()
    body = len(t).to_bytes(2, "big") + t
    if qos:
        body += mid.to_bytes(2, "big")
    body += _varint(len(props)) + props + payload
    header = 0x30 | (qos << 1) | (1 if retain else 0)
    return bytes([header]) + _varint(len(body)) + body


class _FakeSock:
    """Hands out the stream at most ``chunk`` bytes per recv; records what is sent."""

    def __init__(self, data: bytes, chunk: int) -> None:
        self.data = data
        self.chunk = chunk
        self.recv_calls = 0
        self.sent = b""

    def recv(self, n: int) -> bytes:
        if not self.data:
            raise BlockingIOError
        self.recv_calls += 1
        out, self.data = self.data[: min(n, self.chunk)], self.data[min(n, self.chunk) :]
        return out

    def close(self) -> None:
        pass

    def send(self, data: bytes) -> int:
        self.sent += bytes(data)
        return len(data)


def _client(data: bytes, chunk: int) -> tuple[_BufferedClient, _FakeSock, list[tuple]]:
    client = _BufferedClient(CallbackAPIVersion.VERSION2, client_id="t", protocol=paho.MQTTv5)
    sock = _FakeSock(data, chunk)
    client._sock = sock  # type: ignore[assignment]
    got: list[tuple] = []

    def on_message(c: object, u: object, msg: paho.MQTTMessage) -> None:
        got.append((msg.topic, bytes(msg.payload), msg.retain, msg.qos, msg.mid, msg.properties))

    client.on_message = on_message
    return client, sock, got


@pytest.mark.parametrize("chunk", [1, 7, 100, 1 << 20])
def test_buffered_reads_deliver_every_message_intact(chunk: int) -> None:
    assert _BUFFERED_READS
    big = bytes(range(256)) * 300  # larger than one read chunk
    packets = [
        _publish("courthub/v1/a1/d1/telemetry", b'{"x":1}'),
        _publish("courthub/v1/a1/birth", b"{}", retain=True),
        _publish("courthub/v1/a1/d2/audio", big),
        _publish("courthub/v1/a1/d1/event", b"props", props=b"\x01\x01"),  # paho's own path
        _publish("courthub/v1/a1/d1/telemetry", b""),
    ]
    client, sock, got = _client(b"".join(packets), chunk)
    while sock.data or client._buffered():
        assert client.loop_read() == paho.MQTTErrorCode.MQTT_ERR_SUCCESS
    assert [(t, p, r) for t, p, r, *_ in got] == [
        ("courthub/v1/a1/d1/telemetry", b'{"x":1}', False),
        ("courthub/v1/a1/birth", b"{}", True),
        ("courthub/v1/a1/d2/audio", big, False),
        ("courthub/v1/a1/d1/event", b"props", False),
        ("courthub/v1/a1/d1/telemetry", b"", False),
    ]
    assert got[3][5].PayloadFormatIndicator == 1  # properties still decoded when present
    if chunk >= 1 << 20:
        assert sock.recv_calls <= 2  # 64 KiB reads, not three or more per packet


def test_qos1_fast_path_acknowledges() -> None:
    client, sock, got = _client(_publish("courthub/v1/a1/d1/telemetry", b"{}", qos=1, mid=513), 64)
    client.loop_read()
    assert got == [("courthub/v1/a1/d1/telemetry", b"{}", False, 1, 513, got[0][5])]
    client.loop_write()
    assert sock.sent.startswith(b"\x40\x02\x02\x01")  # PUBACK mid 513


def test_new_socket_discards_old_buffer() -> None:
    client, _, got = _client(_publish("courthub/v1/a1/d1/telemetry", b"1"), 1 << 20)
    client.loop_read()
    # bytes left over from a connection that died mid-buffer (e.g. after a protocol error)
    client._rbuf, client._rbuf_pos = b"\x30\x05junk", 0
    client._sock = _FakeSock(_publish("courthub/v1/a1/d1/telemetry", b"2"), 1 << 20)  # type: ignore[assignment]
    client.loop_read()
    assert [p for _, p, *_ in got] == [b"1", b"2"]


def test_topic_callbacks_still_work_beside_the_fast_delivery() -> None:
    """The fast path skips paho's per-topic matcher only while no topic callback exists: one
    added with ``message_callback_add`` gets its topic's messages (and on_message the rest)."""
    packets = _publish("courthub/v1/a1/d1/telemetry", b"1") + _publish("other/topic", b"2")
    client, sock, got = _client(packets, 64)
    assert client._on_message_filtered._root._children == {}  # the attribute the guard reads
    special: list[bytes] = []
    client.message_callback_add("other/#", lambda c, u, m: special.append(bytes(m.payload)))
    while sock.data or client._buffered():
        client.loop_read()
    assert [p for _t, p, *_ in got] == [b"1"] and special == [b"2"]
