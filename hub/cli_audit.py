"""``courthub audit``: check and read the hub's audit trail.

    courthub audit verify (--hub-config hub.toml | --data-dir D)
    courthub audit list [--limit N] [--actor A] [--action X] (--hub-config hub.toml | --data-dir D)

``verify`` recomputes the hash chain of ``data_dir/audit.db`` and compares its end with the head
record ``audit.head``; it prints each problem (they name the ``seq`` of the row concerned) and
exits 0 when the trail is intact, 1 when it was tampered with, 2 when there is no audit log. It
only reads, so it can run beside a running hub or on a backup copy.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from hub.cli_users import data_dir_of


def register(sub: Any) -> None:
    """Add ``audit`` and its subcommands to ``courthub``'s subparsers."""
    p = sub.add_parser("audit", help="check and read the audit trail")
    groups = p.add_subparsers(dest="audit", required=True)

    v = groups.add_parser("verify", help="check the hash chain (exit 1 when tampered with)")
    _data_dir_args(v)
    v.set_defaults(func=_cmd_verify)

    ls = groups.add_parser("list", help="the newest entries")
    ls.add_argument("--limit", type=int, default=50, help="how many (default 50, at most 1000)")
    ls.add_argument("--actor", default=None, help="only this actor")
    ls.add_argument("--action", default=None, help="only this action (login, device_command, …)")
    _data_dir_args(ls)
    ls.set_defaults(func=_cmd_list)


def _data_dir_args(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--hub-config", help="the hub's hub.toml (its data_dir is used)")
    where.add_argument("--data-dir", help="the hub's data folder")


def _db_path(args: argparse.Namespace) -> Path | None:
    from hub.audit import DB_FILE

    path = data_dir_of(args) / DB_FILE
    if not path.is_file():
        print(f"courthub audit: no audit log at {path}", file=sys.stderr)
        return None
    return path


def _cmd_verify(args: argparse.Namespace) -> int:
    from hub.audit import verify_file

    path = _db_path(args)
    if path is None:
        return 2
    report = verify_file(path)
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    if report.ok:
        print(f"ok: {report.checked} entries, chain intact ({path})")
        return 0
    for problem in report.problems:
        print(f"TAMPERED {problem}")
    print(
        f"audit log {path} failed verification: {len(report.problems)} problem(s) "
        f"in {report.checked} entries",
        file=sys.stderr,
    )
    return 1


def _cmd_list(args: argparse.Namespace) -> int:
    import asyncio

    from hub.audit import AuditLog

    path = _db_path(args)
    if path is None:
        return 2

    async def main() -> list[Any]:
        audit = await AuditLog.open(path.parent)
        try:
            return await audit.entries(actor=args.actor, action=args.action, limit=args.limit)
        finally:
            await audit.close()

    for e in asyncio.run(main()):
        detail = json.dumps(e.detail, ensure_ascii=False, sort_keys=True)
        print(
            f"{e.seq:>7} {_utc(e.ts_ms)} {e.actor:<20} {e.source:<15} {e.action:<18} "
            f"{e.target:<24} {detail}"
        )
    return 0


def _utc(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
