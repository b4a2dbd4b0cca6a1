"""``courthub verify`` and ``courthub export``: check recorded evidence, export a sealed hearing.

    courthub verify TARGET [--config hub.toml | --data-dir DIR] [--json] [--progress]
    courthub export SESSION --out FILE.zip (--config hub.toml | --data-dir DIR)

``TARGET`` is an export bundle (zip or extracted folder), the hub's data folder or its
recordings folder, one camera's folder, or one segment file; anything else is taken as a hearing
session id, looked up in the recordings index of ``--config`` / ``--data-dir``. Each altered,
missing or added file and each tampered chain entry is printed on its own line. Exit status: 0
when everything verifies, 1 when something was altered, removed or added, 2 for usage errors
(no such session, no index…). Only reads, so it runs beside a running hub or on a copy.

``export`` packs ``data_dir/manifests/<SESSION>.json`` (written when the hearing was sealed),
its segments and transcripts into a zip that verifies anywhere with ``sh verify.sh``; the
export is recorded in the audit trail.
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from hub.cli_users import cli_actor


class UsageError(Exception):
    """Bad target or set-up: printed in one line, exit status 2."""


def register(sub: Any) -> None:
    """Add ``verify`` and ``export`` to ``courthub``'s subparsers."""
    v = sub.add_parser(
        "verify",
        help="check recordings or an export bundle (exit 1 when altered, removed or added)",
        description="Check recorded video evidence or an export bundle: exit 0 intact, 1 when "
        "a file or chain entry was altered, removed or added (each named), 2 for usage errors.",
    )
    v.add_argument(
        "target",
        metavar="PATH|SESSION",
        help="a bundle (.zip or folder), data dir, recordings/camera folder, segment file, "
        "or a hearing session id",
    )
    _data_dir_args(v, required=False)
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.add_argument(
        "--progress", action="store_true", help="show progress on stderr even when not a TTY"
    )
    v.add_argument(
        "--settle",
        type=float,
        default=30.0,
        metavar="S",
        help="unindexed files younger than S seconds are being written, not added (default 30)",
    )
    v.set_defaults(func=_cmd_verify)

    e = sub.add_parser("export", help="write a sealed hearing's evidence bundle (zip)")
    e.add_argument("session", help="the hearing session id")
    e.add_argument("--out", required=True, help="the zip to write (must not exist)")
    _data_dir_args(e, required=True)
    e.add_argument(
        "--progress", action="store_true", help="show progress on stderr even when not a TTY"
    )
    e.set_defaults(func=_cmd_export)


def _data_dir_args(parser: argparse.ArgumentParser, *, required: bool) -> None:
    where = parser.add_mutually_exclusive_group(required=required)
    where.add_argument(
        "--config", "--hub-config", dest="hub_config", help="the hub's hub.toml (its data_dir)"
    )
    where.add_argument("--data-dir", help="the hub's data folder")


# verify -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Store:
    data_dir: Path
    db: Path
    root: Path


@dataclass(frozen=True, slots=True)
class _Target:
    """What to verify: a bundle, or (part of) the recordings of a store."""

    bundle: Path | None = None
    store: _Store | None = None
    camera: str | None = None
    session_id: str | None = None
    segment_path: str | None = None

    def describe(self) -> str:
        if self.bundle is not None:
            return f"bundle {self.bundle}"
        assert self.store is not None
        if self.segment_path:
            return f"segment {self.segment_path} in {self.store.root}"
        if self.camera:
            return f"camera {self.camera} in {self.store.root}"
        if self.session_id:
            return f"session {self.session_id} in {self.store.root}"
        return f"recordings in {self.store.root}"


def _cmd_verify(args: argparse.Namespace) -> int:
    from hub.evidence import EvidenceError, verify_bundle, verify_recordings

    try:
        target = _resolve(args)
        meter = _Meter(sys.stderr, args.progress)
        if target.bundle is not None:
            report = verify_bundle(target.bundle, progress=meter)
        else:
            assert target.store is not None
            report = verify_recordings(
                target.store.db,
                target.store.root,
                camera=target.camera,
                session_id=target.session_id,
                segment_path=target.segment_path,
                progress=meter,
                settle_s=args.settle,
            )
        meter.finish()
    except (UsageError, EvidenceError, FileNotFoundError) as exc:
        print(f"courthub verify: {exc}", file=sys.stderr)
        return 2
    deleted = any(i.kind == "DELETED" for i in report.infos)
    if target.session_id and not report.segments_checked and not deleted and report.ok:
        print(f"courthub verify: no recordings of session {target.session_id}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"target": target.describe(), **report.to_json()}, ensure_ascii=False))
    else:
        for problem in report.problems:
            print(problem.line())
        for info in report.infos:
            print(f"note: {info.line()}" if info.kind == "NOTE" else info.line())
        print(f"{report.summary()} — {target.describe()}")
    return 0 if report.ok else 1


def _resolve(args: argparse.Namespace) -> _Target:
    from hub.evidence import SUMS_FILE

    given = _store_from_args(args)
    path = Path(args.target)
    if not path.exists():
        if given is None:
            raise UsageError(
                f"{path}: no such file; to verify a session give --config or --data-dir"
            )
        if "/" in args.target:
            raise UsageError(f"{path}: no such file or folder")
        return _Target(store=_checked(given), session_id=args.target)
    if path.is_file() and zipfile.is_zipfile(path):
        return _Target(bundle=path)
    if path.is_dir() and (path / SUMS_FILE).is_file():
        return _Target(bundle=path)
    store = _checked(given or _store_around(path))
    full = path.resolve()
    root = store.root.resolve()
    if full in (store.data_dir.resolve(), root):
        return _Target(store=store)
    try:
        rel = full.relative_to(root)
    except ValueError:
        raise UsageError(f"{path} is not inside the recordings folder {store.root}") from None
    if full.is_file():
        return _Target(store=store, segment_path=rel.as_posix())
    return _Target(store=store, camera=rel.parts[0])


def _store_from_args(args: argparse.Namespace) -> _Store | None:
    from hub.recording_index import DB_FILE, STORAGE_DIR

    if not args.data_dir and not args.hub_config:
        return None
    if args.data_dir:
        data_dir = Path(args.data_dir)
        return _Store(data_dir, data_dir / DB_FILE, data_dir / STORAGE_DIR)
    from hub.config import load_hub_config

    config = load_hub_config(Path(args.hub_config))
    data_dir = config.data_dir
    recorder = getattr(config, "recorder", None)  # [recorder] storage_dir may move the files
    root = recorder.storage_path(data_dir) if recorder is not None else data_dir / STORAGE_DIR
    return _Store(data_dir, data_dir / DB_FILE, Path(root))


def _store_around(path: Path) -> _Store:
    """The data dir holding ``path``: the nearest folder (itself or above) with recordings.db."""
    from hub.recording_index import DB_FILE, STORAGE_DIR

    start = path.resolve()
    for folder in (start, *start.parents):
        if (folder / DB_FILE).is_file():
            return _Store(folder, folder / DB_FILE, folder / STORAGE_DIR)
    raise UsageError(
        f"{path} is not a bundle and not inside a hub data folder (no {DB_FILE} above it); "
        "give --config or --data-dir"
    )


def _checked(store: _Store) -> _Store:
    if not store.db.is_file():
        raise UsageError(f"no recordings index at {store.db}")
    return store


class _Meter:
    """A percentage line on stderr, rewritten in place; silent unless a TTY or forced."""

    def __init__(self, stream: TextIO, force: bool) -> None:
        self._stream = stream
        self._on = force or stream.isatty()
        self._shown = -1

    def __call__(self, done: int, total: int) -> None:
        if not self._on or total <= 0:
            return
        percent = min(100, done * 100 // total)
        if percent != self._shown:
            self._shown = percent
            mb = 1 << 20
            self._stream.write(
                f"\rverifying {percent:3d}% ({done / mb:.1f} of {total / mb:.1f} MB)"
            )
            if percent == 100:
                self._stream.write("\n")
            self._stream.flush()

    def finish(self) -> None:
        """End the line (a run that stopped short of 100 %: missing files)."""
        if self._on and 0 <= self._shown < 100:
            self._stream.write("\n")
            self._stream.flush()


# export -----------------------------------------------------------------------------------------


def _cmd_export(args: argparse.Namespace) -> int:
    import asyncio
    import hashlib

    from hub.evidence import EvidenceError, export_bundle
    from hub.recording_index import hash_file

    session = args.session
    if not session or "/" in session or session.startswith("."):
        print(f"courthub export: bad session id {session!r}", file=sys.stderr)
        return 2
    store = _store_from_args(args)
    assert store is not None  # the group is required
    manifest = store.data_dir / "manifests" / f"{session}.json"
    if not manifest.is_file():
        print(
            f"courthub export: session {session} is not sealed (no manifest at {manifest})",
            file=sys.stderr,
        )
        return 2
    transcripts = store.data_dir / "transcripts"
    out = Path(args.out)
    meter = _Meter(sys.stderr, args.progress)
    try:
        export_bundle(
            out,
            manifest_path=manifest,
            root=store.root,
            transcripts_root=transcripts if transcripts.is_dir() else None,
            progress=meter,
        )
    except FileExistsError as exc:
        print(f"courthub export: {exc}", file=sys.stderr)
        return 2
    except EvidenceError as exc:
        meter.finish()
        print(f"courthub export: refused: {exc}", file=sys.stderr)
        return 1
    meter.finish()
    zip_sha256, size = hash_file(out)
    manifest_sha256 = hashlib.sha256(manifest.read_bytes()).hexdigest()
    asyncio.run(_audit_export(store.data_dir, session, out, zip_sha256, manifest_sha256))
    print(f"exported {out} ({size} bytes)")
    print(f"bundle sha256:   {zip_sha256}")
    print(f"manifest sha256: {manifest_sha256}")
    return 0


async def _audit_export(
    data_dir: Path, session: str, out: Path, zip_sha256: str, manifest_sha256: str
) -> None:
    from hub.audit import Action, AuditLog

    audit = await AuditLog.open(data_dir)
    try:
        await audit.record(
            cli_actor(),
            Action.EXPORT,
            target=f"session:{session}",
            detail={"out": str(out), "sha256": zip_sha256, "manifest_sha256": manifest_sha256},
            source="cli",
        )
    finally:
        await audit.close()
