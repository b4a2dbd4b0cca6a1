"""``mqtts://``: agents and the hub reach a TLS-only Mosquitto and verify its certificate."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.broker import BrokerAccounts, MosquittoBroker, TlsFiles
from protocol.mqtt_link import BrokerUrl, MqttLink, Subscription


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca_and_server(tmp: Path, name: str) -> TlsFiles:
    """A throw-away CA and a server certificate for 127.0.0.1 signed by it."""
    ca_key, ca = tmp / f"{name}-ca.key", tmp / f"{name}-ca.pem"
    key, csr, cert = tmp / f"{name}.key", tmp / f"{name}.csr", tmp / f"{name}.pem"
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", f"/CN={name} test CA", "-keyout", str(ca_key), "-out", str(ca))  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", str(key), "-out", str(csr))  # fmt: skip
    ext = tmp / f"{name}.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
            "-CAcreateserial", "-days", "2", "-out", str(cert), "-extfile", str(ext))  # fmt: skip
    return TlsFiles(ca_file=ca, cert_file=cert, key_file=key)


@pytest.fixture
def tls_broker(tmp_path: Path, accounts: BrokerAccounts) -> Iterator[MosquittoBroker]:
    broker = MosquittoBroker(
        tmp_path / "broker", accounts, tls=make_ca_and_server(tmp_path, "court")
    )
    broker.start()
    yield broker
    broker.stop()


async def test_mqtts_url_connects_and_carries_messages(tls_broker: MosquittoBroker) -> None:
    url = BrokerUrl.parse(f"mqtts://127.0.0.1:{tls_broker.port}?ca={tls_broker.url.ca_file}")
    got: list[str] = []
    hub = MqttLink(
        url,
        client_id="hub",
        username="hub",
        password="pw-hub",
        subscriptions=[Subscription("courthub/#")],
        on_message=lambda topic, payload, retain: got.append(topic),
    )
    agent = MqttLink(url, client_id="agent-a", username="agent-a", password="pw-agent-a")
    await hub.start()
    await agent.start()
    try:
        assert await hub.wait_connected(10) and await agent.wait_connected(10)
        await agent.publish_acked("courthub/v1/agent-a/dev/event", b"{}")
        async with asyncio.timeout(5):
            while "courthub/v1/agent-a/dev/event" not in got:
                await asyncio.sleep(0.02)
    finally:
        await agent.stop()
        await hub.stop()


async def test_a_broker_signed_by_another_ca_is_refused(
    tls_broker: MosquittoBroker, tmp_path: Path
) -> None:
    other = make_ca_and_server(tmp_path, "impostor")
    url = BrokerUrl.parse(f"mqtts://127.0.0.1:{tls_broker.port}?ca={other.ca_file}")
    link = MqttLink(url, client_id="agent-a", username="agent-a", password="pw-agent-a")
    await link.start()
    try:
        assert not await link.wait_connected(2)
    finally:
        await link.stop()


async def test_plain_mqtt_is_not_accepted_on_the_tls_listener(tls_broker: MosquittoBroker) -> None:
    link = MqttLink(
        BrokerUrl("127.0.0.1", tls_broker.port),
        client_id="agent-a",
        username="agent-a",
        password="pw-agent-a",
    )
    await link.start()
    try:
        assert not await link.wait_connected(2)
    finally:
        await link.stop()
