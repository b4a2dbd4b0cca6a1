"""``courthub backup`` and ``courthub restore``: the hub's databases and small files, not media.

    courthub backup DEST (--hub-config hub.toml | --data-dir D) [--tar]
    courthub restore SRC (--hub-config hub.toml | --data-dir D) [--force]
    courthub restore SRC --check

``backup`` runs beside a running hub (SQLite's online backup API, chain heads read under their
locks) and writes ``DEST/courthub-backup-<UTC time>/`` (or ``.tar.gz``) with ``MANIFEST.json``
and ``SHA256SUMS``; it prints the path and the manifest's SHA-256 (keep that elsewhere).
``restore`` needs the hub stopped, checks every file against the manifest before touching the
data dir, and replaces files atomically; ``--check`` only verifies a backup. Media files are not
in a backup (see :mod:`hub.backup` and docs/DEPLOYMENT.md).

Exit codes: 0 done; 1 the backup does not match its manifest (nothing restored); 2 refused or
impossible (hub running, files in the way without ``--force``, not a backup, no data dir).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from hub.cli_users import cli_actor, data_dir_of

#: audit action names of these commands (free-form strings in hub.audit)
AUDIT_BACKUP = "backup_created"
AUDIT_RESTORE = "backup_restored"


def register(sub: Any) -> None:
    """Add ``backup`` and ``restore`` to ``courthub``'s subparsers."""
    p = sub.add_parser("backup", help="back up the hub's databases and keys (not media)")
    p.add_argument("dest", help="folder that receives courthub-backup-<UTC time>[.tar.gz]")
    p.add_argument("--tar", action="store_true", help="write one .tar.gz instead of a folder")
    _data_dir_args(p, required=True)
    p.set_defaults(func=_cmd_backup)

    r = sub.add_parser("restore", help="restore a backup into a stopped hub's data dir")
    r.add_argument("src", help="a courthub-backup-… folder or .tar.gz")
    r.add_argument("--force", action="store_true", help="replace files that already exist")
    r.add_argument("--check", action="store_true", help="only verify the backup's hashes")
    _data_dir_args(r, required=False)
    r.set_defaults(func=_cmd_restore)


def _data_dir_args(parser: argparse.ArgumentParser, *, required: bool) -> None:
    where = parser.add_mutually_exclusive_group(required=required)
    where.add_argument("--hub-config", help="the hub's hub.toml (its data_dir is used)")
    where.add_argument("--data-dir", help="the hub's data folder")


def _cmd_backup(args: argparse.Namespace) -> int:
    from hub.backup import BackupError, create_backup

    data_dir = data_dir_of(args)
    try:
        result = create_backup(data_dir, Path(args.dest), tar=args.tar, progress=_progress)
    except BackupError as exc:
        print(f"courthub backup: {exc}", file=sys.stderr)
        return 2
    total = sum(f.bytes for f in result.manifest.files)
    print(f"backup: {result.path}")
    print(f"files: {len(result.manifest.files)}, {total} bytes (media not included)")
    print(f"manifest sha256: {result.manifest_sha256}")
    _audit(data_dir, AUDIT_BACKUP, str(result.path), {"manifest_sha256": result.manifest_sha256})
    return 0


def _cmd_restore(args: argparse.Namespace) -> int:
    from hub.backup import BackupCorrupt, BackupError, restore_backup, verify_backup

    src = Path(args.src)
    try:
        if args.check:
            manifest = verify_backup(src)
            print(f"ok: {len(manifest.files)} files match the manifest ({src})")
            return 0
        if not (args.hub_config or args.data_dir):
            print("courthub restore: --hub-config or --data-dir is required", file=sys.stderr)
            return 2
        data_dir = data_dir_of(args)
        result = restore_backup(src, data_dir, force=args.force, progress=_progress)
    except BackupCorrupt as exc:
        print(f"courthub restore: {exc}", file=sys.stderr)
        return 1
    except BackupError as exc:
        print(f"courthub restore: {exc}", file=sys.stderr)
        return 2
    print(f"restored {len(result.restored)} files into {data_dir}")
    print(
        f"backup made {_utc(result.manifest.created_ms)} by courthub {result.manifest.courthub_version}"
    )
    for note in result.notes:
        print(f"note: {note}")
    print("next: restore media if needed, then `courthub verify` and `courthub audit verify`")
    _audit(data_dir, AUDIT_RESTORE, str(src), {"created_ms": result.manifest.created_ms})
    return 0


def _audit(data_dir: Path, action: str, target: str, detail: dict[str, Any]) -> None:
    """Record the backup or restore in the audit trail, when the data dir has one."""
    import asyncio

    from hub.audit import DB_FILE, AuditLog

    if not (data_dir / DB_FILE).is_file():
        return

    async def record() -> None:
        audit = await AuditLog.open(data_dir)
        try:
            await audit.record(cli_actor(), action, target=target, detail=detail, source="local")
        finally:
            await audit.close()

    try:
        asyncio.run(record())
    except OSError as exc:  # e.g. a read-only data dir: the backup itself is still good
        print(f"courthub: note: not recorded in the audit trail: {exc}", file=sys.stderr)


def _progress(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def _utc(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
