"""``courthub provision``: MQTT accounts for agents and TLS for the hub's broker.

    courthub provision agent NAME --hub-config hub.toml --kind litigation_hall [--kiosk K ...]
    courthub provision revoke NAME --hub-config hub.toml
    courthub provision list --hub-config hub.toml
    courthub provision tls --hub-config hub.toml [--host H ...]

The logic lives in :mod:`hub.provisioning`; this module parses, calls and prints. A generated
password is printed exactly once, here, and never logged.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

#: the venue kinds (kept literal so ``courthub --help`` does not import the protocol package)
VENUE_KINDS = ("litigation_hall", "tech_courtroom", "interrogation_room", "command_center")


def register(sub: Any) -> None:
    """Add ``provision`` and its subcommands to ``courthub``'s subparsers."""
    p = sub.add_parser("provision", help="MQTT accounts for agents, TLS for the hub's broker")
    groups = p.add_subparsers(dest="provision", required=True)

    a = groups.add_parser("agent", help="create an agent's MQTT account and venue config")
    a.add_argument("name", help="agent id, [a-z0-9-]{1,64}")
    _hub_config(a)
    a.add_argument("--kind", required=True, choices=VENUE_KINDS, help="venue kind")
    a.add_argument("--name", dest="venue_name", default="", help="venue name, e.g. 诉讼服务大厅")
    a.add_argument("--venue-id", default=None, help="venue id (default: the agent id)")
    a.add_argument(
        "--kiosk", action="append", default=[], help="kiosk id of a hall agent (repeatable)"
    )
    a.add_argument("--broker-url", default=None, help="URL agents use (default: the hub's)")
    a.set_defaults(func=_cmd_agent)

    r = groups.add_parser("revoke", help="remove a provisioned agent and its kiosks")
    r.add_argument("name", help="agent id")
    _hub_config(r)
    r.set_defaults(func=_cmd_revoke)

    ls = groups.add_parser("list", help="the provisioned accounts (no passwords)")
    _hub_config(ls)
    ls.set_defaults(func=_cmd_list)

    t = groups.add_parser("tls", help="a local CA and the broker's server certificate")
    _hub_config(t)
    t.add_argument(
        "--host",
        action="append",
        default=None,
        help="hostname or IP in the server certificate (repeatable; default: keep, "
        "else 127.0.0.1 and localhost)",
    )
    t.add_argument("--days", type=int, default=825, help="server certificate lifetime")
    t.set_defaults(func=_cmd_tls)


def _hub_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hub-config", required=True, help="the hub's hub.toml")


def _fail(message: str) -> int:
    print(f"courthub provision: {message}", file=sys.stderr)
    return 2


def _cmd_agent(args: argparse.Namespace) -> int:
    from hub.config import HubConfigError, load_hub_config
    from hub.provisioning import ProvisioningError, provision_agent

    try:
        config = load_hub_config(Path(args.hub_config))
        result = provision_agent(
            config,
            args.name,
            venue_kind=args.kind,
            venue_name=args.venue_name,
            kiosks=args.kiosk,
            broker_url=args.broker_url,
            venue_id=args.venue_id,
        )
    except (HubConfigError, ProvisioningError) as exc:
        return _fail(str(exc))
    print(f"agent {result.username} provisioned")
    print(f"  config:   {result.snippet_path}  (run: courthub agent --config <that file>)")
    print(f"  broker:   {result.broker_url}")
    print(f"  password: {result.password}")
    for user, password in result.device_passwords.items():
        print(f"  kiosk account {user}: password {password}")
    print(
        "Store these passwords safely: they are shown only now (the agent's is also in its "
        "config file, mode 0600)."
    )
    print(
        "broker reloaded" if result.reloaded else "broker not running: it uses them at next start"
    )
    for note in result.notes:
        print(f"note: {note}")
    return 0


def _cmd_revoke(args: argparse.Namespace) -> int:
    from hub.config import HubConfigError, load_hub_config
    from hub.provisioning import ProvisioningError, revoke_agent

    try:
        result = revoke_agent(load_hub_config(Path(args.hub_config)), args.name)
    except (HubConfigError, ProvisioningError) as exc:
        return _fail(str(exc))
    print(f"revoked: {', '.join(result.removed)}")
    print(
        "broker reloaded" if result.reloaded else "broker not running: it uses them at next start"
    )
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from hub.config import HubConfigError, load_hub_config
    from hub.provisioning import ProvisioningError, load_provisioned

    try:
        accounts = load_provisioned(load_hub_config(Path(args.hub_config)))
    except (HubConfigError, ProvisioningError) as exc:
        return _fail(str(exc))
    for account in accounts:
        owner = f" (kiosk of {account.owner})" if account.owner else ""
        print(f"{account.username}\t{account.role}{owner}")
    return 0


def _cmd_tls(args: argparse.Namespace) -> int:
    from hub.config import HubConfigError, load_hub_config
    from hub.provisioning import ProvisioningError, provision_tls

    try:
        config = load_hub_config(Path(args.hub_config))
        result = provision_tls(config, hostnames=args.host, days=args.days)
    except (HubConfigError, ProvisioningError) as exc:
        return _fail(str(exc))
    print(f"CA certificate (give a copy to every agent): {result.ca_file}")
    print(f"server certificate for {', '.join(result.hostnames)}: {result.cert_file}")
    if result.ca_created:
        print("a new local CA was created")
    if result.server_issued:
        print("a new server certificate was issued: restart the hub if it is running")
    if not config.broker.tls:
        print("note: set tls = true in [broker] of hub.toml for the hub's broker to use it")
    return 0
