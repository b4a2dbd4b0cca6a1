"""Backups of a hub's data folder while the hub runs, and their verified, atomic restore.

A backup holds what cannot be rebuilt from elsewhere: every SQLite database of the data dir
(accounts, audit trail, registry, queue, the evidence index ``recordings.db``, hearings,
transcripts, alerts, telemetry — found by their file header, so a new store is never forgotten),
the head records that pin the ends of the hash chains (``audit.head``, ``recordings.head``), the
small configuration and credential files (the API token, ``broker-password``, ``mqtt/``
accounts, passwords, password file and ACL, ``tls/`` CA and certificates, ``provisioned/`` venue configs) and the sealed
hearings' manifests and transcripts. **Media is not copied**: segments and seat WAVs are large,
already hashed into per-camera chains in ``recordings.db``, and belong to the storage layer's
own backup (rsync, snapshots); ``courthub verify`` checks a restored index against them.

Databases are copied with SQLite's online backup API from a read transaction, never as files: a
live WAL database's file alone is not a consistent copy. Where a database has a head record,
its read snapshot is pinned while holding the head's lock shared — the lock writers hold
exclusively from reading the last row until the head is rewritten — so the copied chain and the
copied head agree even while the hub appends.

Layout: ``DEST/courthub-backup-YYYYmmddTHHMMSSZ/`` (written as ``.partial`` and renamed when
complete, or one ``.tar.gz`` of that folder) holding the files at their data-dir paths,
``MANIFEST.json`` (format, courthub version, time, per file: bytes, mode, SHA-256) and
``SHA256SUMS`` (``sha256sum -c`` works without courthub).

:func:`restore_backup` refuses while a hub uses the target data dir, copies every file to a
staging folder inside it while hashing what it copies, refuses the whole restore when any hash
or size differs from the manifest, and only then renames the staged files into place (removing a
replaced database's stale ``-wal``/``-shm`` first, which SQLite would otherwise replay onto it).

Everything here is blocking I/O for the command line (no event loop).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
import socket
import sqlite3
import stat
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any, Final
from urllib.parse import quote

log = logging.getLogger(__name__)

FORMAT: Final = "courthub-backup/1"
MANIFEST_NAME: Final = "MANIFEST.json"
SUMS_NAME: Final = "SHA256SUMS"
NAME_PREFIX: Final = "courthub-backup-"
#: the head record of a hash-chained database ``X.db`` is ``X.head`` beside it
HEAD_SUFFIX: Final = ".head"
#: same names as ``hub.app.RUNTIME_FILE`` and ``hub.store.LOCK_FILE`` (not imported: the web
#: stack is not needed to back up files)
RUNTIME_FILE: Final = "runtime.json"
LOCK_FILE: Final = "hub.lock"
#: small files and folders of the data dir worth keeping (relative paths; missing ones skipped)
CONFIG_FILES: Final = (
    "api-token",
    # the hub's password on a court's own broker, where docs/DEPLOYMENT.md puts it
    "broker-password",
    "mqtt/credentials.json",
    "mqtt/accounts.json",
    "mqtt/passwd",
    "mqtt/acl",
)
CONFIG_DIRS: Final = ("tls", "provisioned", "manifests", "transcripts")
#: what is deliberately left out, written into every manifest so nobody has to guess
NOT_INCLUDED: Final = (
    "recordings/ and any [recorder] storage_dir: media (video segments, seat WAVs) — back it "
    "up with the storage layer (rsync, snapshots); courthub verify checks it against the "
    "restored recordings.db",
    "playback-cache/, influx-spool/: caches and a send buffer, rebuilt or refilled",
    "mqtt/persistence/, mqtt/mosquitto.conf, runtime.json, hub.lock: rewritten at every start",
)
_SQLITE_MAGIC: Final = b"SQLite format 3\x00"
_SKIP_SUFFIXES: Final = ("-wal", "-shm", "-journal", ".tmp", ".part")
_CHUNK: Final = 1 << 20


class BackupError(RuntimeError):
    """A backup could not be made, read or restored; the message says why and what to do."""


class BackupCorrupt(BackupError):
    """A backup's files do not match its manifest (damaged or tampered with)."""


class HubRunning(BackupError):
    """A hub is using the data dir that a restore would overwrite."""


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file of a backup, as its manifest lists it."""

    path: str
    kind: str  # "sqlite", "head" or "file"
    bytes: int
    sha256: str
    mode: int

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "path": self.path,
            "kind": self.kind,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "mode": f"{self.mode:04o}",
        }


@dataclass(frozen=True, slots=True)
class Manifest:
    """What ``MANIFEST.json`` says about a backup."""

    created_ms: int
    courthub_version: str
    data_dir: str
    host: str
    files: tuple[FileEntry, ...]
    not_included: tuple[str, ...] = NOT_INCLUDED

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "format": FORMAT,
            "created_ms": self.created_ms,
            "created_utc": _utc(self.created_ms),
            "courthub_version": self.courthub_version,
            "data_dir": self.data_dir,
            "host": self.host,
            "files": [f.to_json() for f in self.files],
            "not_included": list(self.not_included),
        }


@dataclass(frozen=True, slots=True)
class BackupResult:
    """Where :func:`create_backup` wrote the backup, and what it holds."""

    path: Path
    manifest: Manifest
    #: SHA-256 of ``MANIFEST.json``: keep it elsewhere to prove later that the backup is unaltered
    manifest_sha256: str


@dataclass(frozen=True, slots=True)
class RestoreResult:
    """What :func:`restore_backup` put into the data dir."""

    data_dir: Path
    manifest: Manifest
    restored: tuple[str, ...]
    notes: tuple[str, ...] = field(default=())


# --- backup -------------------------------------------------------------------------------


def create_backup(
    data_dir: Path,
    dest: Path,
    *,
    tar: bool = False,
    clock: Callable[[], float] = time.time,
    progress: Callable[[str], None] | None = None,
) -> BackupResult:
    """Back up ``data_dir`` into a new dated folder (or ``.tar.gz`` with ``tar``) under ``dest``.

    Safe while a hub runs on ``data_dir``. Raises :class:`BackupError` when ``data_dir`` holds
    no hub data or a database cannot be copied.
    """
    if not data_dir.is_dir():
        raise BackupError(f"no data dir at {data_dir}")
    databases = _databases(data_dir)
    if not databases:
        raise BackupError(f"{data_dir} holds no courthub database: is it the hub's data_dir?")
    created_ms = int(clock() * 1000)
    name = NAME_PREFIX + datetime.fromtimestamp(created_ms / 1000, UTC).strftime("%Y%m%dT%H%M%SZ")
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / (name + ".tar.gz" if tar else name)
    if final.exists():
        raise BackupError(f"{final} already exists")
    work = dest / f".{name}.{secrets.token_hex(4)}.partial"
    work.mkdir(mode=0o700)
    try:
        entries: list[FileEntry] = []
        for db_path in databases:
            if progress is not None:
                progress(f"database {db_path.name}")
            entries += _backup_database(data_dir, db_path, work)
        for rel in _config_files(data_dir):
            entries.append(_copy_file(data_dir / rel, work / rel, rel.as_posix(), "file"))
        manifest = Manifest(
            created_ms=created_ms,
            courthub_version=courthub_version(),
            data_dir=str(data_dir.resolve()),
            host=socket.gethostname(),
            files=tuple(entries),
        )
        manifest_sha = _write_manifest(work, manifest)
        if tar:
            _write_tar(work, final, name)
            shutil.rmtree(work)
        else:
            work.rename(final)
        _fsync_dir(dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log.info("backup written path=%s files=%d", final, len(entries))
    return BackupResult(final, manifest, manifest_sha)


def _databases(data_dir: Path) -> list[Path]:
    """Every SQLite database at the top of ``data_dir`` (by header, not by name)."""
    found = []
    for path in sorted(data_dir.iterdir()):
        if path.name.endswith(_SKIP_SUFFIXES) or not path.is_file() or path.is_symlink():
            continue
        try:
            with path.open("rb") as fh:
                magic = fh.read(len(_SQLITE_MAGIC))
        except OSError:
            continue
        if magic == _SQLITE_MAGIC:
            found.append(path)
    return found


def _backup_database(data_dir: Path, db_path: Path, work: Path) -> list[FileEntry]:
    """Copy one database (and its head record) consistently; the copy is integrity-checked."""
    rel = db_path.relative_to(data_dir).as_posix()
    target = work / rel
    head_path = db_path.with_suffix(HEAD_SUFFIX)
    src = sqlite3.connect(
        f"file:{quote(str(db_path.resolve()))}?mode=ro", uri=True, isolation_level=None
    )
    head: bytes | None = None
    try:
        src.execute("PRAGMA busy_timeout=10000")
        if head_path.is_file():
            head = _pin_snapshot_with_head(src, head_path)
        dst = sqlite3.connect(target)
        try:
            # pages=-1: one step, from the read transaction opened above (or its own)
            src.backup(dst, pages=-1)
        finally:
            dst.close()
        if src.in_transaction:
            src.execute("COMMIT")
    except sqlite3.Error as exc:
        raise BackupError(f"{db_path}: cannot back up: {exc}") from exc
    finally:
        src.close()
    _check_integrity(target)
    mode = stat.S_IMODE(db_path.stat().st_mode)
    os.chmod(target, mode)
    entries = [_entry_of(target, rel, "sqlite", mode)]
    if head is not None:
        head_target = target.with_suffix(HEAD_SUFFIX)
        _write_bytes(head_target, head, stat.S_IMODE(head_path.stat().st_mode))
        head_rel = head_path.relative_to(data_dir).as_posix()
        entries.append(
            _entry_of(head_target, head_rel, "head", stat.S_IMODE(head_path.stat().st_mode))
        )
    return entries


def _pin_snapshot_with_head(src: sqlite3.Connection, head_path: Path) -> bytes:
    """Open ``src``'s read transaction under the head's shared lock; return the head's bytes.

    Writers (``hub.audit``, ``hub.recording_index``) hold the head exclusively from reading the
    last row until the head is rewritten, so the snapshot and the head read here agree.
    """
    fd = os.open(head_path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        try:
            src.execute("BEGIN")
            src.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # pins the snapshot
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _check_integrity(path: Path) -> None:
    db = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True)
    try:
        rows = db.execute("PRAGMA quick_check").fetchall()
    finally:
        db.close()
    if rows != [("ok",)]:
        raise BackupError(f"the copy of {path.name} fails SQLite's quick_check: {rows[:3]}")


def _config_files(data_dir: Path) -> list[PurePosixPath]:
    """The small non-database files to keep, relative to ``data_dir`` (regular files only)."""
    found = [PurePosixPath(rel) for rel in CONFIG_FILES if _regular(data_dir / rel)]
    for folder in CONFIG_DIRS:
        root = data_dir / folder
        if not root.is_dir() or root.is_symlink():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if not name.endswith(_SKIP_SUFFIXES) and _regular(path):
                    found.append(PurePosixPath(path.relative_to(data_dir).as_posix()))
    return found


def _regular(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def _copy_file(src: Path, dst: Path, rel: str, kind: str) -> FileEntry:
    """Copy ``src`` to ``dst`` (same mode), hashing what was written."""
    dst.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    mode = stat.S_IMODE(src.stat().st_mode)
    digest, size = _copy_hashing(src.open("rb"), dst, mode)
    return FileEntry(rel, kind, size, digest, mode)


def _entry_of(path: Path, rel: str, kind: str, mode: int) -> FileEntry:
    digest, size = sha256_file(path)
    return FileEntry(rel, kind, size, digest, mode)


def _write_bytes(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(path, mode)


def _write_manifest(work: Path, manifest: Manifest) -> str:
    text = json.dumps(manifest.to_json(), ensure_ascii=False, indent=2) + "\n"
    data = text.encode("utf-8")
    _write_bytes(work / MANIFEST_NAME, data, 0o600)
    sums = "".join(f"{f.sha256}  {f.path}\n" for f in manifest.files)
    _write_bytes(work / SUMS_NAME, sums.encode("utf-8"), 0o600)
    return hashlib.sha256(data).hexdigest()


def _write_tar(work: Path, final: Path, name: str) -> None:
    tmp = final.with_name(f".{final.name}.{secrets.token_hex(4)}.partial")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            tar.add(work, arcname=name)
            # fsync after the gzip trailer: closing the tarfile first writes it into raw
            tar.close()
            raw.flush()
            os.fsync(raw.fileno())
        tmp.rename(final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --- reading and verifying a backup ------------------------------------------------------


class _Source:
    """A backup folder or ``.tar.gz``: its manifest and a reader per listed file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tar: tarfile.TarFile | None = None
        self._root = ""
        if path.is_dir():
            if not (path / MANIFEST_NAME).is_file():
                raise BackupError(f"{path} is not a courthub backup (no {MANIFEST_NAME})")
            raw = (path / MANIFEST_NAME).read_bytes()
        elif path.is_file():
            try:
                # kept open for the reads that follow; closed by close()
                self._tar = tarfile.open(path, mode="r:*")  # noqa: SIM115
                raw = self._read_tar_manifest(self._tar)
            except (tarfile.TarError, OSError, EOFError) as exc:
                self.close()
                raise BackupError(f"{path} is not a readable backup archive: {exc}") from None
        else:
            raise BackupError(f"no backup at {path}")
        self.manifest_sha256 = hashlib.sha256(raw).hexdigest()
        self.manifest = parse_manifest(raw, source=str(path))

    def _read_tar_manifest(self, tar: tarfile.TarFile) -> bytes:
        for member in tar:
            parts = PurePosixPath(member.name).parts
            if len(parts) == 2 and parts[1] == MANIFEST_NAME and member.isfile():
                self._root = parts[0]
                fh = tar.extractfile(member)
                if fh is not None:
                    return fh.read()
        raise BackupError(f"{self.path} is not a courthub backup (no {MANIFEST_NAME} inside)")

    def open(self, rel: str) -> IO[bytes]:
        """The bytes of the listed file ``rel``; :class:`BackupCorrupt` when it is missing."""
        if self._tar is None:
            path = self.path / rel
            if not _regular(path):
                raise BackupCorrupt(f"{rel}: listed in the manifest but missing from the backup")
            return path.open("rb")
        try:
            member = self._tar.getmember(f"{self._root}/{rel}")
        except KeyError:
            raise BackupCorrupt(
                f"{rel}: listed in the manifest but missing from the backup"
            ) from None
        fh = self._tar.extractfile(member) if member.isfile() else None
        if fh is None:
            raise BackupCorrupt(f"{rel}: not a regular file in the backup archive")
        return fh

    def close(self) -> None:
        """Close the archive, if any."""
        if self._tar is not None:
            self._tar.close()
            self._tar = None


def parse_manifest(raw: bytes, *, source: str = "MANIFEST.json") -> Manifest:
    """Validate a ``MANIFEST.json``; :class:`BackupError` names what is wrong."""
    try:
        data = json.loads(raw.decode("utf-8"))
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            got = data.get("format") if isinstance(data, dict) else None
            raise BackupError(f"{source}: not a {FORMAT} manifest (format {got!r})")
        files = tuple(_file_entry(item) for item in data["files"])
        manifest = Manifest(
            created_ms=int(data["created_ms"]),
            courthub_version=str(data["courthub_version"]),
            data_dir=str(data["data_dir"]),
            host=str(data.get("host", "")),
            files=files,
            not_included=tuple(str(x) for x in data.get("not_included", ())),
        )
    except BackupError:
        raise
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise BackupError(f"{source}: unreadable manifest: {exc!r}") from None
    paths = [f.path for f in files]
    if len(set(paths)) != len(paths):
        raise BackupError(f"{source}: a file is listed twice")
    return manifest


def _file_entry(item: Any) -> FileEntry:
    if not isinstance(item, dict):
        raise TypeError("file entry is not an object")
    rel = str(item["path"])
    pure = PurePosixPath(rel)
    # the manifest chooses where restored files go: never outside the data dir
    if pure.is_absolute() or not pure.parts or any(p in ("..", ".", "") for p in pure.parts):
        raise ValueError(f"unsafe path {rel!r}")
    if rel in (RUNTIME_FILE, LOCK_FILE, MANIFEST_NAME, SUMS_NAME):
        raise ValueError(f"path {rel!r} is not restorable")
    kind = str(item["kind"])
    if kind not in ("sqlite", "head", "file"):
        raise ValueError(f"unknown kind {kind!r}")
    sha = str(item["sha256"])
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ValueError(f"bad sha256 for {rel!r}")
    mode = int(str(item["mode"]), 8) & 0o777
    return FileEntry(rel, kind, int(item["bytes"]), sha, mode)


def verify_backup(src: Path) -> Manifest:
    """Re-hash every file of the backup at ``src``; :class:`BackupCorrupt` on any mismatch."""
    source = _Source(src)
    try:
        problems = []
        for entry in source.manifest.files:
            try:
                with source.open(entry.path) as fh:
                    digest, size = _hash_stream(fh)
            except BackupCorrupt as exc:
                problems.append(str(exc))
                continue
            problem = _mismatch(entry, digest, size)
            if problem:
                problems.append(problem)
        if problems:
            raise BackupCorrupt(_corrupt_message(src, problems))
        return source.manifest
    finally:
        source.close()


def _mismatch(entry: FileEntry, digest: str, size: int) -> str:
    if digest == entry.sha256 and size == entry.bytes:
        return ""
    return (
        f"{entry.path}: SHA-256 {digest[:16]}… ({size} bytes) differs from the manifest's "
        f"{entry.sha256[:16]}… ({entry.bytes} bytes)"
    )


def _corrupt_message(src: Path, problems: list[str]) -> str:
    listed = "; ".join(problems[:10]) + (
        f"; … {len(problems) - 10} more" if len(problems) > 10 else ""
    )
    return (
        f"backup {src} does not match its manifest (damaged or altered), nothing restored: {listed}"
    )


# --- restore ------------------------------------------------------------------------------


def running_hub_pid(data_dir: Path) -> int | None:
    """The pid of a hub that uses ``data_dir`` according to ``runtime.json``, if it is alive."""
    try:
        info = json.loads((data_dir / RUNTIME_FILE).read_text(encoding="utf-8"))
        pid = int(info["pid"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid  # alive, another user's
    return pid


def restore_backup(
    src: Path,
    data_dir: Path,
    *,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> RestoreResult:
    """Restore the backup at ``src`` into ``data_dir``; the hub must be stopped.

    Refuses (:class:`HubRunning`) while ``runtime.json`` names a live process or the hub's lock
    is held; refuses (:class:`BackupError`) to replace existing files unless ``force``; refuses
    (:class:`BackupCorrupt`) the whole restore when any file differs from the manifest — checked
    on the very bytes that are then moved into place. Files not in the backup are left alone.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    with _hub_lock(data_dir):
        pid = running_hub_pid(data_dir)
        if pid is not None:
            raise HubRunning(
                f"a hub (pid {pid}, {data_dir / RUNTIME_FILE}) is running on {data_dir}: stop it "
                "first (systemctl stop courthub-hub); if no hub runs, that pid belongs to another "
                f"process — remove {data_dir / RUNTIME_FILE}"
            )
        source = _Source(src)
        try:
            manifest = source.manifest
            existing = [f.path for f in manifest.files if (data_dir / f.path).exists()]
            if existing and not force:
                raise BackupError(
                    f"{data_dir} already holds {len(existing)} of the backup's files "
                    f"({', '.join(existing[:5])}{', …' if len(existing) > 5 else ''}); "
                    "pass --force to replace them"
                )
            stage = data_dir / f".restore-{secrets.token_hex(6)}"
            stage.mkdir(mode=0o700)
            try:
                _stage_all(source, manifest, stage, progress)
                restored = _move_into_place(manifest, stage, data_dir)
            finally:
                shutil.rmtree(stage, ignore_errors=True)
        finally:
            source.close()
    notes = (
        [f"media is not in the backup: {manifest.not_included[0]}"] if manifest.not_included else []
    )
    log.info("backup restored src=%s data_dir=%s files=%d", src, data_dir, len(restored))
    return RestoreResult(data_dir, manifest, tuple(restored), tuple(notes))


@contextlib.contextmanager
def _hub_lock(data_dir: Path) -> Iterator[None]:
    """Hold the hub's own data-dir lock, so no hub starts while files are being replaced."""
    path = data_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HubRunning(
                f"a hub is running on {data_dir} ({path} is locked): stop it first"
            ) from None
        yield
    finally:
        os.close(fd)


def _stage_all(
    source: _Source, manifest: Manifest, stage: Path, progress: Callable[[str], None] | None
) -> None:
    """Copy every listed file into ``stage``, hashing the copy; all must match or none is used."""
    problems = []
    for entry in manifest.files:
        if progress is not None:
            progress(f"checking {entry.path}")
        try:
            digest, size = _copy_hashing(source.open(entry.path), stage / entry.path, entry.mode)
        except BackupCorrupt as exc:
            problems.append(str(exc))
            continue
        problem = _mismatch(entry, digest, size)
        if problem:
            problems.append(problem)
    if problems:
        raise BackupCorrupt(_corrupt_message(source.path, problems))


def _move_into_place(manifest: Manifest, stage: Path, data_dir: Path) -> list[str]:
    """Rename the staged files over their targets (each rename atomic); databases first lose
    the old ``-wal``/``-shm``, which SQLite would otherwise apply to the restored file."""
    owner = _owner_for(data_dir)
    restored = []
    for entry in manifest.files:
        target = data_dir / entry.path
        staged = stage / entry.path
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if owner is not None:
            os.chown(staged, *owner)
        if entry.kind == "sqlite":
            for suffix in ("-wal", "-shm", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{target}{suffix}")
        os.replace(staged, target)
        restored.append(entry.path)
    for folder in {data_dir, *(data_dir / f.path for f in manifest.files)}:
        _fsync_dir(folder if folder == data_dir else folder.parent)
    return restored


def _owner_for(data_dir: Path) -> tuple[int, int] | None:
    """The data dir's owner when we run as root (restored files must stay the hub's), else None."""
    if os.geteuid() != 0:
        return None
    st = data_dir.stat()
    return st.st_uid, st.st_gid


# --- small shared pieces ------------------------------------------------------------------


def sha256_file(path: Path) -> tuple[str, int]:
    """(hex SHA-256, size) of a file, read in chunks."""
    with path.open("rb") as fh:
        return _hash_stream(fh)


def _hash_stream(fh: IO[bytes]) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    while chunk := fh.read(_CHUNK):
        h.update(chunk)
        size += len(chunk)
    return h.hexdigest(), size


def _copy_hashing(src: IO[bytes], dst: Path, mode: int) -> tuple[str, int]:
    """Copy ``src`` (closed afterwards) into a new ``dst`` with ``mode``, fsynced; (sha, size)."""
    dst.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    h = hashlib.sha256()
    size = 0
    with src:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode & 0o777 or 0o600)
        with os.fdopen(fd, "wb") as out:
            while chunk := src.read(_CHUNK):
                h.update(chunk)
                size += len(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
    os.chmod(dst, mode & 0o777 or 0o600)
    return h.hexdigest(), size


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def courthub_version() -> str:
    """The installed courthub distribution's version (``unknown`` when run from a bare tree)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("courthub")
    except PackageNotFoundError:
        return "unknown"


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
