"""MQTT passwords for the hub's own broker: generated once, kept across restarts.

``data_dir/mqtt/credentials.json`` (mode 0600, replaced atomically) holds one random password per
account: the hub's and every ``[[broker.accounts]]`` entry. A password survives restarts so that
agents configured with it keep working; an account added to the config gets a new one, an account
removed from it is dropped. Passwords are never logged.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Final

from hub.broker import Account, BrokerAccounts, new_password
from hub.config import BrokerSection, HubConfig

log = logging.getLogger(__name__)

CREDENTIALS_FILE: Final = "credentials.json"
#: Folder of the own broker (config, password file, ACL, persistence) and of the credentials.
MQTT_DIR: Final = "mqtt"
_FORMAT_VERSION: Final = 1


class CredentialsError(RuntimeError):
    """The credentials file exists but cannot be used."""


class Credentials:
    """The passwords of the hub's broker accounts (mode "own")."""

    def __init__(self, path: Path, broker: BrokerSection, passwords: dict[str, str]) -> None:
        self.path = path
        self._broker = broker
        self._passwords = dict(passwords)

    def __repr__(self) -> str:
        return f"Credentials(path={str(self.path)!r}, users={sorted(self._passwords)})"

    @classmethod
    def load_or_create(cls, mqtt_dir: Path, broker: BrokerSection) -> Credentials:
        """Load ``mqtt_dir/credentials.json``, add missing accounts, and save it if it changed.

        Blocking file I/O: call it from a thread when a loop is running.
        """
        path = mqtt_dir / CREDENTIALS_FILE
        stored = _read(path)
        wanted = [broker.username, *(a.username for a in broker.accounts)]
        passwords = {user: stored.get(user) or new_password() for user in wanted}
        if passwords != stored:
            mqtt_dir.mkdir(parents=True, exist_ok=True)
            _write_atomic(path, passwords)
            added = sorted(set(passwords) - set(stored))
            log.info("mqtt credentials saved path=%s new_accounts=%s", path, added)
        return cls(path, broker, passwords)

    @classmethod
    def of_hub(cls, config: HubConfig) -> Credentials:
        """Read (never create) the credentials of the hub configured by ``config``.

        For tools started next to a running hub (the simulator): raises
        :class:`CredentialsError` when the hub has not generated them yet.
        """
        path = config.data_dir / MQTT_DIR / CREDENTIALS_FILE
        passwords = _read(path)
        wanted = [config.broker.username, *(a.username for a in config.broker.accounts)]
        missing = [user for user in wanted if user not in passwords]
        if missing:
            raise CredentialsError(
                f"{path}: no password for {', '.join(missing)} (start the hub with this config first)"
            )
        return cls(path, config.broker, {user: passwords[user] for user in wanted})

    @property
    def hub_username(self) -> str:
        """The hub's own MQTT user."""
        return self._broker.username

    @property
    def hub_password(self) -> str:
        """The hub's own MQTT password."""
        return self._passwords[self._broker.username]

    @property
    def usernames(self) -> list[str]:
        """Every account, hub first."""
        return list(self._passwords)

    def password_for(self, username: str) -> str:
        """The password of ``username``; ``KeyError`` for an account that is not configured."""
        try:
            return self._passwords[username]
        except KeyError:
            raise KeyError(f"no MQTT account {username!r} in the hub config") from None

    def accounts(self) -> BrokerAccounts:
        """The accounts and their topic rights, for :func:`hub.broker.owned_broker`."""
        hub = Account(self.hub_username, self.hub_password)
        agents: list[Account] = []
        devices: list[Account] = []
        for cfg in self._broker.accounts:
            account = Account(
                cfg.username,
                self._passwords[cfg.username],
                read=tuple(cfg.read),
                write=tuple(cfg.write),
            )
            (agents if cfg.role == "agent" else devices).append(account)
        return BrokerAccounts(hub=hub, agents=tuple(agents), devices=tuple(devices))


def _read(path: Path) -> dict[str, str]:
    """The stored passwords, or ``{}`` when there is no file yet."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise CredentialsError(f"{path}: cannot read credentials: {exc}") from None
    passwords = raw.get("passwords") if isinstance(raw, dict) else None
    if not isinstance(passwords, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in passwords.items()
    ):
        raise CredentialsError(f"{path}: expected {{'passwords': {{user: password}}}}")
    return dict(passwords)


def _write_atomic(path: Path, passwords: dict[str, str]) -> None:
    """Write the file owner-only and swap it in, so a crash never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump({"version": _FORMAT_VERSION, "passwords": passwords}, fh, indent=2)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o600)  # O_CREAT's mode does not apply when the tmp file already existed
    tmp.replace(path)
