"""``courthub users``: the console's accounts from the command line.

    courthub users add NAME --role R [--role R2] [--display-name N] [--language L]
                             [--password-stdin] [--temporary]  (--hub-config hub.toml | --data-dir D)
    courthub users passwd NAME [--password-stdin] [--temporary]   (…)
    courthub users disable NAME                                    (…)
    courthub users enable NAME                                     (…)
    courthub users list                                            (…)

Passwords are read with ``getpass`` (asked twice) or, with ``--password-stdin``, from the first
line of standard input (for scripts); never from the command line, where ``ps`` would show them.
``--temporary`` makes the user change the password at the next sign-in. Every change is written
to the audit trail with actor ``cli:<os user>``. It is safe to run beside a running hub: the
account database is shared and the hub sees a change at its next request (disabling a user ends
their sessions at once).

The rules live in :mod:`hub.accounts`; this module parses, calls and prints.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported for real inside the handlers: keeps `courthub --help` instant
    from hub.accounts import AccountStore
    from hub.audit import AuditLog

UsersAction = Callable[["AccountStore", "AuditLog", str], Awaitable[str]]


def register(sub: Any) -> None:
    """Add ``users`` and its subcommands to ``courthub``'s subparsers."""
    p = sub.add_parser("users", help="console accounts: add, passwd, disable, enable, list")
    groups = p.add_subparsers(dest="users", required=True)

    a = groups.add_parser("add", help="create an account")
    a.add_argument("name", help="username, [a-z0-9._-]{1,64}")
    a.add_argument(
        "--role",
        dest="roles",
        action="append",
        required=True,
        help="admin, technician, judge, clerk, commander or counter (repeatable)",
    )
    a.add_argument("--display-name", default="", help="name shown in the console")
    a.add_argument("--language", default="zh-CN", help="zh-CN or en")
    _password_args(a)
    _data_dir_args(a)
    a.set_defaults(func=_cmd_add)

    pw = groups.add_parser("passwd", help="set an account's password (ends its sessions)")
    pw.add_argument("name")
    _password_args(pw)
    _data_dir_args(pw)
    pw.set_defaults(func=_cmd_passwd)

    d = groups.add_parser("disable", help="disable an account (ends its sessions)")
    d.add_argument("name")
    _data_dir_args(d)
    d.set_defaults(func=_cmd_disable, disabled=True)

    e = groups.add_parser("enable", help="enable a disabled account")
    e.add_argument("name")
    _data_dir_args(e)
    e.set_defaults(func=_cmd_disable, disabled=False)

    ls = groups.add_parser("list", help="every account (no secrets)")
    _data_dir_args(ls)
    ls.set_defaults(func=_cmd_list)


def _data_dir_args(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--hub-config", help="the hub's hub.toml (its data_dir is used)")
    where.add_argument("--data-dir", help="the hub's data folder")


def _password_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin's first line"
    )
    parser.add_argument(
        "--temporary", action="store_true", help="must be changed at the next sign-in"
    )


def data_dir_of(args: argparse.Namespace) -> Path:
    """The data folder named by ``--data-dir`` or by the ``--hub-config`` file."""
    if args.data_dir:
        return Path(args.data_dir)
    from hub.config import load_hub_config

    return load_hub_config(Path(args.hub_config)).data_dir


def cli_actor() -> str:
    """``cli:<os user>``: who ran the command, for the audit trail."""
    import getpass
    import os

    try:
        name = getpass.getuser()
    except (OSError, KeyError):  # no passwd entry (containers)
        name = f"uid{os.getuid()}"
    return f"cli:{name}"


def _fail(message: str) -> int:
    print(f"courthub users: {message}", file=sys.stderr)
    return 2


def _read_password(args: argparse.Namespace) -> str | None:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    import getpass

    first = getpass.getpass("New password: ")
    if getpass.getpass("Repeat it: ") != first:
        return None
    return first


def _cmd_add(args: argparse.Namespace) -> int:
    password = _read_password(args)
    if password is None:
        return _fail("the passwords differ")

    async def run(accounts: AccountStore, audit: AuditLog, actor: str) -> str:
        user = await accounts.create_user(
            args.name,
            password,
            args.roles,
            display_name=args.display_name,
            language=args.language,
            must_change_password=args.temporary,
        )
        await audit.record(
            actor,
            "user_created",
            target=user.username,
            detail={"roles": sorted(user.roles), "must_change_password": args.temporary},
            source="local",
        )
        return f"created {user.username} ({', '.join(sorted(user.roles))})"

    return _run(args, run)


def _cmd_passwd(args: argparse.Namespace) -> int:
    password = _read_password(args)
    if password is None:
        return _fail("the passwords differ")

    async def run(accounts: AccountStore, audit: AuditLog, actor: str) -> str:
        await accounts.set_password(args.name, password, must_change=args.temporary)
        await audit.record(
            actor,
            "password_changed",
            target=args.name,
            detail={"by": "cli", "must_change_password": args.temporary},
            source="local",
        )
        return f"password of {args.name} set; its sessions ended"

    return _run(args, run)


def _cmd_disable(args: argparse.Namespace) -> int:
    async def run(accounts: AccountStore, audit: AuditLog, actor: str) -> str:
        await accounts.set_disabled(args.name, args.disabled)
        await audit.record(
            actor,
            "user_disabled" if args.disabled else "user_enabled",
            target=args.name,
            detail={"disabled": args.disabled},
            source="local",
        )
        return f"{args.name} {'disabled; its sessions ended' if args.disabled else 'enabled'}"

    return _run(args, run)


def _cmd_list(args: argparse.Namespace) -> int:
    async def run(accounts: AccountStore, audit: AuditLog, actor: str) -> str:
        users = await accounts.list_users()
        lines = [f"{'username':<20} {'roles':<32} {'lang':<6} {'state':<16} last sign-in (UTC)"]
        for u in users:
            state = "disabled" if u.disabled else "must-change-pw" if u.must_change_password else ""
            lines.append(
                f"{u.username:<20} {','.join(sorted(u.roles)):<32} {u.language:<6} "
                f"{state or 'active':<16} {_utc(u.last_login_ms)}"
            )
        return "\n".join(lines)

    return _run(args, run)


def _run(args: argparse.Namespace, action: UsersAction) -> int:
    """Open the account store and the audit trail, run ``action``, print its line."""
    from hub.accounts import AccountError, AccountStore
    from hub.audit import AuditLog

    data_dir = data_dir_of(args)
    actor = cli_actor()

    async def main() -> str:
        accounts = await AccountStore.open(data_dir)
        try:
            audit = await AuditLog.open(data_dir)
            try:
                return await action(accounts, audit, actor)
            finally:
                await audit.close()
        finally:
            await accounts.close()

    try:
        print(asyncio.run(main()))
    except AccountError as exc:
        return _fail(str(exc))
    return 0


def _utc(ms: int | None) -> str:
    if not ms:
        return "-"
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
