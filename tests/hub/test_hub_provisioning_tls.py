"""``courthub provision tls``: a local CA, the broker's certificate, and a real mqtts Mosquitto."""

from __future__ import annotations

import ipaddress
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from edge_agents.config import load_agent_config
from hub.broker import MosquittoBroker, free_port, owned_broker
from hub.config import HubConfig, hub_config_from_dict
from hub.provisioning import (
    ProvisioningError,
    broker_accounts_for,
    issue_client_cert,
    mqtt_dir,
    owned_broker_tls,
    provision_agent,
    provision_tls,
)
from protocol.mqtt_link import BrokerUrl, MqttLink


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def san(cert: x509.Certificate) -> set[str]:
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(v) for v in names.get_values_for_type(x509.IPAddress)} | set(
        names.get_values_for_type(x509.DNSName)
    )


@pytest.fixture
def config(tmp_path: Path) -> HubConfig:
    return hub_config_from_dict(
        {"hub": {"data_dir": str(tmp_path / "hub")}, "broker": {"port": free_port(), "tls": True}}
    )


def test_local_ca_signs_a_server_certificate_with_private_keys(config: HubConfig) -> None:
    result = provision_tls(config)
    assert result.ca_created and result.server_issued
    for key in (result.key_file, result.ca_file.with_name("ca.key")):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert stat.S_IMODE(result.ca_file.parent.stat().st_mode) == 0o700

    ca, server = load(result.ca_file), load(result.cert_file)
    server.verify_directly_issued_by(ca)  # raises when the CA did not sign it
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert san(server) == {"127.0.0.1", "localhost"}
    usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usage
    assert result.hostnames == ("127.0.0.1", "localhost")


def test_rerunning_keeps_the_ca_and_reissues_only_for_new_hostnames(config: HubConfig) -> None:
    first = provision_tls(config)
    ca_pem, cert_pem = first.ca_file.read_bytes(), first.cert_file.read_bytes()

    again = provision_tls(config)
    assert not again.ca_created and not again.server_issued
    assert again.ca_file.read_bytes() == ca_pem and again.cert_file.read_bytes() == cert_pem

    moved = provision_tls(config, hostnames=["court-hub.local", "10.1.2.3", "10.1.2.3"])
    assert moved.server_issued and not moved.ca_created
    assert moved.ca_file.read_bytes() == ca_pem, "the CA agents hold must survive"
    assert san(load(moved.cert_file)) == {"court-hub.local", "10.1.2.3"}
    load(moved.cert_file).verify_directly_issued_by(load(moved.ca_file))
    # no hostnames given: the last ones are kept (the hub's start must not undo them)
    kept = provision_tls(config)
    assert not kept.server_issued and kept.hostnames == ("10.1.2.3", "court-hub.local")
    assert owned_broker_tls(config) == kept.files


def test_bad_hostnames_and_a_half_missing_ca_are_refused(config: HubConfig) -> None:
    with pytest.raises(ProvisioningError, match="neither an IP address nor a hostname"):
        provision_tls(config, hostnames=["bad host"])
    assert not (config.data_dir / "tls").exists(), "nothing is created for a refused request"
    with pytest.raises(ProvisioningError, match="at least one"):
        provision_tls(config, hostnames=[])
    result = provision_tls(config)
    result.ca_file.with_name("ca.key").unlink()
    with pytest.raises(ProvisioningError, match=r"ca.pem and ca.key must both exist"):
        provision_tls(config)


def test_tls_is_only_for_the_own_broker_when_asked(tmp_path: Path) -> None:
    plain = hub_config_from_dict({"hub": {"data_dir": str(tmp_path / "a")}})
    assert owned_broker_tls(plain) is None
    assert not (tmp_path / "a" / "tls").exists()


def test_client_certificates_for_mutual_tls_chain_to_the_local_ca(config: HubConfig) -> None:
    files = issue_client_cert(config, "hall-1")
    cert = load(files.cert_file)
    cert.verify_directly_issued_by(load(files.ca_file))
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usage
    assert stat.S_IMODE(files.key_file.stat().st_mode) == 0o600
    assert (
        issue_client_cert(config, "hall-1").cert_file.read_bytes() == files.cert_file.read_bytes()
    )
    with pytest.raises(ProvisioningError):
        issue_client_cert(config, "../etc")


@pytest.fixture
def tls_hub_broker(config: HubConfig) -> Iterator[MosquittoBroker]:
    """The hub's own Mosquitto as ``[broker] tls = true`` starts it."""
    tls = owned_broker_tls(config)
    assert tls is not None
    broker = owned_broker(
        mqtt_dir(config), broker_accounts_for(config), port=config.broker.port, tls=tls
    )
    assert isinstance(broker, MosquittoBroker)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


async def test_provisioned_agent_reaches_the_tls_broker_with_its_mqtts_url(
    config: HubConfig, tls_hub_broker: MosquittoBroker
) -> None:
    result = provision_agent(config, "court-1", venue_kind="tech_courtroom")
    ca_file = config.data_dir.resolve() / "tls" / "ca.pem"
    assert result.broker_url == f"mqtts://127.0.0.1:{tls_hub_broker.port}?ca={ca_file}"
    snippet = load_agent_config(result.snippet_path)
    assert snippet.broker_url.tls and snippet.broker_url.ca_file == str(ca_file)

    link = MqttLink(
        snippet.broker_url,
        client_id="court-1",
        username=snippet.mqtt_username,
        password=snippet.mqtt_password,
    )
    await link.start()
    try:
        assert await link.wait_connected(10), "mqtts with the local CA was refused"
        await link.publish_acked("courthub/v1/court-1/agent/telemetry", b"{}")
    finally:
        await link.stop()

    plain = MqttLink(
        BrokerUrl("127.0.0.1", tls_hub_broker.port),
        client_id="court-1-plain",
        username="court-1",
        password=result.password,
    )
    await plain.start()
    try:
        assert not await plain.wait_connected(2), "plain MQTT must not pass a TLS listener"
    finally:
        await plain.stop()


def test_ipv6_hostnames_are_ip_addresses(config: HubConfig) -> None:
    result = provision_tls(config, hostnames=["::1", "LocalHost"])
    names = load(result.cert_file).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert ipaddress.ip_address("::1") in names.value.get_values_for_type(x509.IPAddress)
    assert result.hostnames == ("::1", "localhost")
