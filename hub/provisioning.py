"""MQTT security made usable: per-agent accounts, the broker's password file and ACL, and TLS.

``courthub provision agent NAME`` (see :mod:`hub.cli_provision`) calls :func:`provision_agent`:
it records the account in ``data_dir/mqtt/accounts.json``, generates its password (kept in
``data_dir/mqtt/credentials.json`` by :class:`hub.credentials.Credentials`), writes the agent's
venue config to ``data_dir/provisioned/{name}.toml``, regenerates Mosquitto's password file and
ACL next to the hub's broker and, when that Mosquitto runs, makes it reload them (SIGHUP to the
pid in its ``mosquitto.pid``). :func:`revoke_agent` undoes it.

:func:`provision_tls` keeps a local certificate authority and the broker's server certificate in
``data_dir/tls/``, for courts that want ``mqtts://`` (``[broker] tls = true``).

The hub's **effective accounts** are ``[[broker.accounts]]`` of hub.toml plus the provisioned
ones; hub.toml wins when both name the same user. Everything here is blocking file I/O: call it
from a thread when an event loop runs. Passwords are never logged.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import re
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import urlencode

import msgspec
import tomli_w

from hub.broker import (
    PID_FILE,
    Account,
    BrokerAccounts,
    TlsFiles,
    render_acl,
    render_password_file,
)
from hub.config import AccountConfig, HubConfig
from hub.credentials import MQTT_DIR, Credentials, CredentialsError
from protocol.errors import BadMessage
from protocol.messages import VenueKind
from protocol.mqtt_link import BrokerUrl
from protocol.topics import RESERVED_AGENT_IDS, check_id, valid_id

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey

log = logging.getLogger(__name__)

#: ``data_dir/mqtt/accounts.json``: the accounts added by ``courthub provision``.
ACCOUNTS_FILE: Final = "accounts.json"
#: ``data_dir/provisioned/{name}.toml``: the venue config written for each provisioned agent.
PROVISIONED_DIR: Final = "provisioned"
#: ``data_dir/tls/``: the local CA, the broker's certificate and optional client certificates.
TLS_DIR: Final = "tls"
#: The names :meth:`hub.broker.MosquittoBroker.write_config` gives the password file and ACL.
PASSWD_FILE: Final = "passwd"
ACL_FILE: Final = "acl"
#: Same as ``hub.app.RUNTIME_FILE`` (read here without importing the web stack).
RUNTIME_FILE: Final = "runtime.json"
#: The hostnames a server certificate is issued for when nobody names others.
DEFAULT_TLS_HOSTS: Final = ("127.0.0.1", "localhost")
#: Agents keep a copy of the CA, so it lives long; replacing it means redistributing it.
CA_DAYS: Final = 3650
#: A server or client certificate closer than this to its end is issued again.
RENEW_BEFORE: Final = timedelta(days=30)
#: What an owned broker on one machine listens on when hub.toml leaves the port at 0.
DEFAULT_MQTT_PORT: Final = 1883
_FORMAT_VERSION: Final = 1
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)


class ProvisioningError(CredentialsError):
    """Provisioning cannot be done as asked (bad id, conflicting account, unusable file).

    A :class:`~hub.credentials.CredentialsError`, so that every ``courthub`` command that meets
    a broken ``accounts.json`` reports it in one line instead of a traceback.
    """


class ProvisionedAccount(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One account in ``accounts.json``: like ``[[broker.accounts]]``, plus when and for whom."""

    username: str
    role: Literal["agent", "device"] = "agent"
    read: list[str] = []
    write: list[str] = []
    created_ms: int = 0
    #: for a kiosk's device account, the hall agent it was provisioned with (revoked with it)
    owner: str = ""

    def as_config(self) -> AccountConfig:
        """The same account in hub.toml's shape."""
        return AccountConfig(
            username=self.username, role=self.role, read=list(self.read), write=list(self.write)
        )


class _AccountsFile(msgspec.Struct, frozen=True, kw_only=True):
    version: int = _FORMAT_VERSION
    accounts: list[ProvisionedAccount] = []


@dataclass(frozen=True)
class ProvisionResult:
    """What :func:`provision_agent` did. The passwords are for the operator, once."""

    username: str
    password: str = field(repr=False)
    snippet_path: Path
    #: True when a running Mosquitto was told to reload its password file and ACL
    reloaded: bool
    #: the broker URL written into the snippet (no credentials in it)
    broker_url: str = ""
    #: kiosk device accounts (``kiosk-{id}``) and their passwords, for the kiosks themselves
    device_passwords: dict[str, str] = field(default_factory=dict, repr=False)
    #: things the operator should know (e.g. the port was guessed)
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class RevokeResult:
    """What :func:`revoke_agent` removed."""

    removed: tuple[str, ...]
    reloaded: bool


@dataclass(frozen=True)
class TlsResult:
    """The TLS files under ``data_dir/tls/`` and what :func:`provision_tls` had to create."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    hostnames: tuple[str, ...] = ()
    ca_created: bool = False
    server_issued: bool = False

    @property
    def files(self) -> TlsFiles:
        """The files for :class:`hub.broker.MosquittoBroker`'s TLS listener."""
        return TlsFiles(ca_file=self.ca_file, cert_file=self.cert_file, key_file=self.key_file)


# accounts ---------------------------------------------------------------------------------------
def mqtt_dir(config: HubConfig) -> Path:
    """The own broker's folder: its config, password file, ACL, credentials and accounts."""
    return config.data_dir / MQTT_DIR


def load_provisioned(config: HubConfig) -> list[ProvisionedAccount]:
    """The accounts in ``data_dir/mqtt/accounts.json`` (``[]`` before the first provisioning)."""
    return _read_accounts(mqtt_dir(config) / ACCOUNTS_FILE)


def effective_accounts(config: HubConfig) -> list[AccountConfig]:
    """The broker accounts of the hub: hub.toml's ``[[broker.accounts]]``, then provisioned ones.

    When both name the same user (or a provisioned user has the hub's own name), hub.toml wins
    and the provisioned entry is ignored: the file a court's IT team edits by hand is the
    authority, and ``courthub provision`` refuses to create such conflicts in the first place.
    """
    configured = list(config.broker.accounts)
    taken = {config.broker.username, *(a.username for a in configured)}
    extra: list[AccountConfig] = []
    for account in load_provisioned(config):
        if account.username in taken:
            log.warning("provisioned account shadowed by hub.toml user=%s", account.username)
            continue
        taken.add(account.username)
        extra.append(account.as_config())
    return configured + extra


def credentials_for(config: HubConfig) -> Credentials:
    """The passwords of every effective account, created where missing and kept across runs.

    Use this instead of ``Credentials.load_or_create(mqtt_dir, config.broker)``: that call only
    knows hub.toml's accounts and would drop the provisioned agents' passwords.
    """
    with _locked(mqtt_dir(config)):  # a `courthub provision` may run while the hub starts
        return _credentials(config)


def broker_accounts_for(config: HubConfig) -> BrokerAccounts:
    """The accounts and rights the hub's own broker must enforce (see :func:`credentials_for`)."""
    return credentials_for(config).accounts()


def _credentials(config: HubConfig) -> Credentials:
    """:func:`credentials_for` for callers that already hold the lock."""
    broker = msgspec.structs.replace(config.broker, accounts=effective_accounts(config))
    return Credentials.load_or_create(mqtt_dir(config), broker)


def provision_agent(
    config: HubConfig,
    name: str,
    *,
    venue_kind: str,
    venue_name: str = "",
    kiosks: Sequence[str] = (),
    broker_url: str | None = None,
    venue_id: str | None = None,
) -> ProvisionResult:
    """Create (or refresh) agent ``name``'s MQTT account and write its venue config.

    A ``litigation_hall`` agent with ``kiosks`` may read ``kiosk/{k}/up`` and write
    ``kiosk/{k}/down``, and every kiosk gets a device account ``kiosk-{k}`` that may only write
    its own ``up`` and read its own ``down``. Provisioning again is idempotent: passwords are
    kept, the kiosk list is replaced. The snippet's broker URL is ``broker_url``, else where the
    running hub's broker listens, else what hub.toml says (``mqtts://…?ca=`` when TLS is on).
    """
    _check_new_agent(config, name)
    kind = _venue_kind(venue_kind)
    kiosk_ids = _check_kiosks(config, kind, kiosks)
    venue = venue_id or name
    _check_id(venue, "venue id")
    url, notes = _agent_broker_url(config, broker_url)
    directory = mqtt_dir(config)
    with _locked(directory):
        path = directory / ACCOUNTS_FILE
        stored = _read_accounts(path)
        _check_conflicts(stored, name, kiosk_ids)
        _write_accounts(path, _with_agent(stored, name, kiosk_ids))
        credentials = _credentials(config)
        password = credentials.password_for(name)
        devices = {_kiosk_user(k): credentials.password_for(_kiosk_user(k)) for k in kiosk_ids}
        snippet = _write_snippet(
            config,
            name,
            venue={"id": venue, "kind": kind.value, **({"name": venue_name} if venue_name else {})},
            url=url,
            password=password,
            kiosks=kiosk_ids,
        )
        reloaded = _regenerate(config, credentials.accounts())
    log.info(
        "agent provisioned user=%s kiosks=%s snippet=%s reloaded=%s",
        name,
        list(kiosk_ids),
        snippet,
        reloaded,
    )
    return ProvisionResult(name, password, snippet, reloaded, url, devices, tuple(notes))


def revoke_agent(config: HubConfig, name: str) -> RevokeResult:
    """Remove provisioned agent ``name``, its kiosks' accounts and its snippet; reload the broker.

    A running Mosquitto refuses the removed users from then on, and on reload (2.0) also closes
    the sessions they still have open (tested).
    """
    _check_id(name, "agent id")
    if any(a.username == name for a in config.broker.accounts):
        raise ProvisioningError(
            f"{name!r} is defined in hub.toml [[broker.accounts]]: remove it there"
        )
    directory = mqtt_dir(config)
    with _locked(directory):
        path = directory / ACCOUNTS_FILE
        stored = _read_accounts(path)
        gone = [a for a in stored if a.username == name and a.role == "agent"]
        if not gone:
            raise ProvisioningError(f"no provisioned agent {name!r}")
        gone += [a for a in stored if a.owner == name]
        _write_accounts(path, [a for a in stored if a not in gone])
        credentials = _credentials(config)  # drops the removed users' passwords
        with contextlib.suppress(FileNotFoundError):
            _snippet_path(config, name).unlink()
        reloaded = _regenerate(config, credentials.accounts())
    removed = tuple(a.username for a in gone)
    log.info("agent revoked users=%s reloaded=%s", list(removed), reloaded)
    return RevokeResult(removed, reloaded)


def regenerate_broker_files(config: HubConfig) -> bool:
    """Rewrite the password file and ACL from the effective accounts; reload a running broker.

    Returns True when a running Mosquitto was signalled. In mode ``"url"`` the files are an
    export for the court's own Mosquitto and nothing is signalled.
    """
    with _locked(mqtt_dir(config)):
        return _regenerate(config, _credentials(config).accounts())


#: Gap between the two SIGHUPs of a reload (a Mosquitto reload takes milliseconds).
RELOAD_RESIGNAL_S = 0.3


def reload_running_broker(directory: Path) -> bool:
    """SIGHUP the Mosquitto whose pid file is in ``directory``; False when none is running."""
    pid = _running_broker_pid(directory)
    if pid is None:
        return False
    try:
        os.kill(pid, signal.SIGHUP)
        # Mosquitto sets a flag on SIGHUP and clears it when its reload ENDS: a SIGHUP that
        # lands during a reload begun before our files were written is lost, and a revoked
        # agent could still log in (seen once on a loaded machine). A second signal after any
        # such reload has finished makes sure one reload starts after our writes.
        time.sleep(RELOAD_RESIGNAL_S)
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return False
    except PermissionError:
        log.warning("cannot signal mosquitto pid=%s (another user): restart the hub", pid)
        return False
    log.info("mosquitto reload requested pid=%s", pid)
    return True


def client_url(url: BrokerUrl) -> str:
    """``url`` as text for a client's config: scheme, host, port and TLS files, no credentials."""
    host = f"[{url.host}]" if ":" in url.host else url.host
    text = f"{'mqtts' if url.tls else 'mqtt'}://{host}:{url.port}"
    files = {"ca": url.ca_file, "cert": url.cert_file, "key": url.key_file}
    query = {k: v for k, v in files.items() if v}
    return f"{text}?{urlencode(query, safe='/')}" if query else text


def _regenerate(config: HubConfig, accounts: BrokerAccounts) -> bool:
    directory = mqtt_dir(config)
    _private_dir(directory)
    accounts = _with_external_hub_password(config, accounts)
    _write_private(directory / PASSWD_FILE, render_password_file(accounts))
    _write_private(directory / ACL_FILE, render_acl(accounts))
    if config.broker.mode != "own":
        return False
    return reload_running_broker(directory)


def _with_external_hub_password(config: HubConfig, accounts: BrokerAccounts) -> BrokerAccounts:
    """Mode "url": the exported password file must carry the password the hub logs in with."""
    if config.broker.mode != "url":
        return accounts
    secret = config.broker.password
    if config.broker.password_file:
        try:
            secret = Path(config.broker.password_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ProvisioningError(
                f"broker.password_file {config.broker.password_file}: {exc.strerror or exc}"
            ) from None
    if not secret:
        return accounts
    hub = Account(accounts.hub.username, secret, accounts.hub.read, accounts.hub.write)
    return BrokerAccounts(hub=hub, agents=accounts.agents, devices=accounts.devices)


def _running_broker_pid(directory: Path) -> int | None:
    """The pid in Mosquitto's pid file if that process is still this broker."""
    try:
        pid = int((directory / PID_FILE).read_text(encoding="ascii").strip())
    except (FileNotFoundError, ValueError):
        return None
    cmdline = Path(f"/proc/{pid}/cmdline")
    if Path("/proc/self").exists():
        # a pid file left by a killed broker may name a pid the system has since reused
        try:
            args = cmdline.read_bytes()
        except OSError:
            return None
        conf = str(directory / "mosquitto.conf").encode()
        return pid if b"mosquitto" in args and conf in args else None
    try:
        os.kill(pid, 0)
    except OSError:
        return None
    return pid


# checks -----------------------------------------------------------------------------------------
def _check_id(value: str, what: str) -> None:
    try:
        check_id(value, what)
    except BadMessage as exc:
        raise ProvisioningError(exc.detail) from None


def _check_new_agent(config: HubConfig, name: str) -> None:
    _check_id(name, "agent id")
    if name in RESERVED_AGENT_IDS or name == config.broker.username:
        raise ProvisioningError(f"agent id {name!r} is reserved for the hub")
    if any(a.username == name for a in config.broker.accounts):
        raise ProvisioningError(
            f"{name!r} is defined in hub.toml [[broker.accounts]]: its password is in "
            f"{mqtt_dir(config) / 'credentials.json'}; edit or remove it there"
        )


def _venue_kind(value: str) -> VenueKind:
    try:
        return VenueKind(value)
    except ValueError:
        kinds = ", ".join(k.value for k in VenueKind)
        raise ProvisioningError(f"venue kind {value!r} is not one of {kinds}") from None


def _check_kiosks(config: HubConfig, kind: VenueKind, kiosks: Sequence[str]) -> tuple[str, ...]:
    ids = tuple(dict.fromkeys(kiosks))  # repeated ids are harmless: keep the first
    if ids and kind is not VenueKind.LITIGATION_HALL:
        raise ProvisioningError(f"kiosks belong to a litigation_hall agent, not {kind.value}")
    configured = {a.username for a in config.broker.accounts}
    for kiosk in ids:
        _check_id(kiosk, "kiosk id")
        user = _kiosk_user(kiosk)
        if not valid_id(user):
            raise ProvisioningError(f"kiosk id {kiosk!r} is too long for account {user!r}")
        if user in configured:
            raise ProvisioningError(f"{user!r} is defined in hub.toml [[broker.accounts]]")
    return ids


def _check_conflicts(stored: list[ProvisionedAccount], name: str, kiosks: tuple[str, ...]) -> None:
    by_user = {a.username: a for a in stored}
    mine = by_user.get(name)
    if mine is not None and mine.role != "agent":
        raise ProvisioningError(f"{name!r} is already the device account of agent {mine.owner!r}")
    for kiosk in kiosks:
        other = by_user.get(_kiosk_user(kiosk))
        if other is not None and other.owner != name:
            whose = f"agent {other.owner!r}" if other.owner else "an agent account"
            raise ProvisioningError(f"kiosk {kiosk!r} already belongs to {whose}")


def _kiosk_user(kiosk: str) -> str:
    return f"kiosk-{kiosk}"


def _with_agent(
    stored: list[ProvisionedAccount], name: str, kiosks: tuple[str, ...]
) -> list[ProvisionedAccount]:
    """``stored`` with agent ``name`` and exactly ``kiosks`` (created times kept)."""
    now = int(time.time() * 1000)
    created = {a.username: a.created_ms for a in stored}
    agent = ProvisionedAccount(
        username=name,
        role="agent",
        read=[f"kiosk/{k}/up" for k in kiosks],
        write=[f"kiosk/{k}/down" for k in kiosks],
        created_ms=created.get(name, now),
    )
    devices = [
        ProvisionedAccount(
            username=_kiosk_user(k),
            role="device",
            read=[f"kiosk/{k}/down"],
            write=[f"kiosk/{k}/up"],
            created_ms=created.get(_kiosk_user(k), now),
            owner=name,
        )
        for k in kiosks
    ]
    kept = [a for a in stored if name not in (a.username, a.owner)]
    return [*kept, agent, *devices]


# the agent's config snippet ---------------------------------------------------------------------
def _snippet_path(config: HubConfig, name: str) -> Path:
    return config.data_dir / PROVISIONED_DIR / f"{name}.toml"


def _agent_broker_url(config: HubConfig, override: str | None) -> tuple[str, list[str]]:
    """The URL an agent should use, and notes for the operator."""
    notes: list[str] = []
    if override:
        try:
            url = BrokerUrl.parse(override)
        except ValueError as exc:
            raise ProvisioningError(f"broker url: {exc}") from None
        if url.username or url.password:
            raise ProvisioningError("broker url: leave credentials out of it")
        return client_url(url), notes
    running = _running_hub_url(config) if config.broker.mode == "own" else None
    if config.broker.mode == "url":
        # the court's broker: hub.toml's URL (with its ?ca=), minus the hub's credentials
        url = BrokerUrl.parse(config.broker.url)
        url = BrokerUrl(url.host, url.port, url.tls, ca_file=url.ca_file)
    elif running is not None:
        url = running
    else:
        port = config.broker.port
        if port == 0:
            port = DEFAULT_MQTT_PORT
            notes.append(
                f"hub.toml leaves [broker] port at 0 (a new port each start): the snippet "
                f"says {port}; set port = {port} in hub.toml or edit the snippet"
            )
        url = BrokerUrl("127.0.0.1", port, tls=config.broker.tls)
    if url.tls and not url.ca_file and config.broker.mode == "own":
        # the hub's runtime.json drops the query; the own broker's CA is ours
        ca = provision_tls(config).ca_file if config.broker.tls else _tls_dir(config) / "ca.pem"
        url = BrokerUrl(url.host, url.port, tls=True, ca_file=str(ca))
    if url.tls and url.ca_file:
        notes.append(f"agents on other machines need a copy of the CA file {url.ca_file}")
    return client_url(url), notes


def _running_hub_url(config: HubConfig) -> BrokerUrl | None:
    """The broker URL a running hub wrote to ``runtime.json`` (ignored when its pid is gone)."""
    try:
        info = json.loads((config.data_dir / RUNTIME_FILE).read_text(encoding="utf-8"))
        pid = int(info["pid"])
        url = BrokerUrl.parse(str(info["broker_url"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # left behind by a hub that was killed
    except PermissionError:
        pass  # alive, another user's
    return url


def _write_snippet(
    config: HubConfig,
    name: str,
    *,
    venue: dict[str, str],
    url: str,
    password: str,
    kiosks: tuple[str, ...],
) -> Path:
    """Write ``data_dir/provisioned/{name}.toml`` (0600), checked by the agent's own loader."""
    from edge_agents.config import AgentConfigError, agent_config_from_dict

    data: dict[str, Any] = {
        "agent": {"id": name},
        "venue": venue,
        "broker": {"url": url, "username": name, "password": password},
        "devices": [
            {
                "id": _kiosk_user(k),
                "driver": "kiosk_mqtt",
                "options": {
                    "broker_url": url,
                    "kiosk_id": k,
                    "username": name,
                    "password": password,
                },
            }
            for k in kiosks
        ],
    }
    try:
        agent_config_from_dict(data, source=f"snippet for {name}")
    except AgentConfigError as exc:  # a bug here, but say so instead of writing a bad file
        raise ProvisioningError(str(exc)) from None
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    header = (
        f"# courthub venue config of agent {name!r}\n"
        f"# written by `courthub provision agent` at {stamp}\n"
        f"# Run it with: courthub agent --config {name}.toml\n"
        "# It holds the agent's MQTT password: keep it owner-only (mode 0600) and copy it to the\n"
        "# agent's machine over a trusted channel (with broker.url's CA file when it names one).\n"
        "# [agent] data_dir defaults to ~/.local/state/courthub/agents/ID; add devices below.\n\n"
    )
    path = _snippet_path(config, name)
    _private_dir(path.parent)
    _write_private(path, header + tomli_w.dumps(data))
    return path


# TLS --------------------------------------------------------------------------------------------
def _tls_dir(config: HubConfig) -> Path:
    return config.data_dir.resolve() / TLS_DIR


def owned_broker_tls(config: HubConfig) -> TlsFiles | None:
    """The own broker's TLS files when ``[broker] tls = true`` (created on first use), else None."""
    if config.broker.mode != "own" or not config.broker.tls:
        return None
    return provision_tls(config).files


def provision_tls(
    config: HubConfig, *, hostnames: Sequence[str] | None = None, days: int = 825
) -> TlsResult:
    """Keep a local CA and a server certificate for ``hostnames`` under ``data_dir/tls/``.

    Idempotent: an existing CA is always kept (agents hold copies of it); the server certificate
    is issued again only when it is missing, not signed by the CA, within 30 days of its end, or
    for other hostnames. ``hostnames=None`` keeps the current certificate's names (or uses
    127.0.0.1 and localhost). Keys are ECDSA P-256, written mode 0600.
    """
    if days < 1:
        raise ProvisioningError("days must be at least 1")
    asked = _normalise_hosts(hostnames) if hostnames is not None else None  # before any file
    directory = _tls_dir(config)
    _private_dir(directory)
    with _locked(directory):
        ca_cert, ca_key, ca_created = _load_or_create_ca(directory)
        cert_file, key_file = directory / "server.pem", directory / "server.key"
        current = _load_cert(cert_file) if key_file.exists() else None
        kept = _cert_hosts(current) if current is not None else ()
        wanted = asked or kept or DEFAULT_TLS_HOSTS
        reason = _reissue_reason(current, ca_cert, wanted)
        if reason is not None:
            cert, key = _issue(ca_cert, ca_key, wanted[0], days, hosts=wanted, server=True)
            _write_key_and_cert(key_file, cert_file, key, cert)
            log.info("tls server certificate issued hosts=%s reason=%s", list(wanted), reason)
    return TlsResult(
        ca_file=directory / "ca.pem",
        cert_file=cert_file,
        key_file=key_file,
        hostnames=wanted,
        ca_created=ca_created,
        server_issued=reason is not None,
    )


def issue_client_cert(config: HubConfig, name: str, *, days: int = 825) -> TlsFiles:
    """A client certificate (CN = ``name``) signed by the local CA, for mutual TLS.

    Written to ``data_dir/tls/clients/{name}.pem`` and ``.key`` (0600) and kept while valid. Give
    it to the agent as ``?cert=…&key=…`` in its broker URL. The hub's own Mosquitto does not
    require client certificates; a court that wants them sets ``require_certificate true`` (and
    ``use_identity_as_username true``) on its broker.
    """
    _check_id(name, "client name")
    directory = _tls_dir(config)
    _private_dir(directory)
    clients = directory / "clients"
    _private_dir(clients)
    with _locked(directory):
        ca_cert, ca_key, _ = _load_or_create_ca(directory)
        cert_file, key_file = clients / f"{name}.pem", clients / f"{name}.key"
        current = _load_cert(cert_file) if key_file.exists() else None
        if current is None or _reissue_reason(current, ca_cert, None) is not None:
            cert, key = _issue(ca_cert, ca_key, name, days, hosts=(), server=False)
            _write_key_and_cert(key_file, cert_file, key, cert)
            log.info("tls client certificate issued name=%s", name)
    return TlsFiles(ca_file=directory / "ca.pem", cert_file=cert_file, key_file=key_file)


def _normalise_hosts(hostnames: Sequence[str]) -> tuple[str, ...]:
    hosts: list[str] = []
    for raw in hostnames:
        host = raw.strip().lower()
        try:
            host = str(ipaddress.ip_address(host))
        except ValueError:
            if not _HOSTNAME.match(host):
                raise ProvisioningError(
                    f"{raw!r} is neither an IP address nor a hostname"
                ) from None
        if host not in hosts:
            hosts.append(host)
    if not hosts:
        raise ProvisioningError("name at least one hostname or IP address for the certificate")
    return tuple(hosts)


def _load_or_create_ca(
    directory: Path,
) -> tuple[x509.Certificate, EllipticCurvePrivateKey, bool]:
    from cryptography.hazmat.primitives.asymmetric import ec

    cert_file, key_file = directory / "ca.pem", directory / "ca.key"
    if cert_file.exists() or key_file.exists():
        if not (cert_file.exists() and key_file.exists()):
            raise ProvisioningError(
                f"{directory}: ca.pem and ca.key must both exist (move both away for a new CA)"
            )
        cert = _load_cert(cert_file)
        key = _load_key(key_file)
        if cert is None or cert.public_key() != key.public_key():
            raise ProvisioningError(f"{directory}: ca.key does not belong to ca.pem")
        if cert.not_valid_after_utc < datetime.now(UTC) + RENEW_BEFORE:
            log.warning("tls local CA ends soon not_after=%s", cert.not_valid_after_utc)
        return cert, key, False
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _self_signed_ca(key)
    _write_key_and_cert(key_file, cert_file, key, cert)
    log.info("tls local CA created path=%s", cert_file)
    return cert, key, True


def _self_signed_ca(key: EllipticCurvePrivateKey) -> x509.Certificate:
    import socket

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "courthub"),
            x509.NameAttribute(
                NameOID.COMMON_NAME, f"courthub local CA ({socket.gethostname()})"[:64]
            ),
        ]
    )
    now = datetime.now(UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))  # tolerate a little clock skew
        .not_valid_after(now + timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )


def _issue(
    ca_cert: x509.Certificate,
    ca_key: EllipticCurvePrivateKey,
    common_name: str,
    days: int,
    *,
    hosts: tuple[str, ...],
    server: bool,
) -> tuple[x509.Certificate, EllipticCurvePrivateKey]:
    """A new key and a leaf certificate for it, signed by the CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(min(now + timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if hosts:
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _reissue_reason(
    cert: x509.Certificate | None, ca_cert: x509.Certificate, hosts: tuple[str, ...] | None
) -> str | None:
    """Why ``cert`` must be issued again, or None when it is still good."""
    from cryptography.exceptions import InvalidSignature

    if cert is None:
        return "missing"
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (InvalidSignature, ValueError, TypeError):
        return "not signed by the local CA"
    if cert.not_valid_after_utc < datetime.now(UTC) + RENEW_BEFORE:
        return "expiring"
    if hosts is not None and set(_cert_hosts(cert)) != set(hosts):
        return "hostnames changed"
    return None


def _cert_hosts(cert: x509.Certificate) -> tuple[str, ...]:
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return tuple(ips + san.get_values_for_type(x509.DNSName))


def _load_cert(path: Path) -> x509.Certificate | None:
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise ProvisioningError(f"{path}: not a PEM certificate: {exc}") from None


def _load_key(path: Path) -> EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ProvisioningError(f"{path}: cannot read the private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ProvisioningError(f"{path}: expected the EC key courthub generates")
    return key


def _write_key_and_cert(
    key_file: Path, cert_file: Path, key: EllipticCurvePrivateKey, cert: x509.Certificate
) -> None:
    from cryptography.hazmat.primitives import serialization

    # unencrypted: Mosquitto must read it unattended; mode 0600 is its protection
    pem_key = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_private(key_file, pem_key.decode("ascii"))
    _write_private(cert_file, cert.public_bytes(serialization.Encoding.PEM).decode("ascii"))


# files ------------------------------------------------------------------------------------------
def _read_accounts(path: Path) -> list[ProvisionedAccount]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ProvisioningError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        stored = msgspec.json.decode(raw, type=_AccountsFile)
    except msgspec.DecodeError as exc:
        raise ProvisioningError(f"{path}: not a courthub accounts file: {exc}") from None
    if stored.version != _FORMAT_VERSION:
        raise ProvisioningError(f"{path}: unknown format version {stored.version}")
    return list(stored.accounts)


def _write_accounts(path: Path, accounts: list[ProvisionedAccount]) -> None:
    _private_dir(path.parent)
    data = msgspec.json.format(msgspec.json.encode(_AccountsFile(accounts=accounts)), indent=2)
    _write_private(path, data.decode("utf-8") + "\n")


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialise provisioning commands run at the same time (read-modify-write of the files).

    Not re-entrant: ``flock`` locks belong to one open file, so a nested call would wait forever.
    """
    _private_dir(directory)
    with (directory / ".provision.lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def _write_private(path: Path, text: str) -> None:
    """Write an owner-only file and swap it in, so a crash never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o600)  # O_CREAT's mode does not apply when the tmp file already existed
    tmp.replace(path)
