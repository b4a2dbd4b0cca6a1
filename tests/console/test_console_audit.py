"""hub.audit: the hash chain, tamper detection naming the seq, triggers, filters, `courthub audit`.

Tampering is done the way an intruder would: open ``audit.db`` with sqlite3 directly, drop the
append-only triggers, then edit, delete, insert or reorder rows.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from hub.audit import (
    DB_FILE,
    HEAD_FILE,
    ZERO_HASH,
    Action,
    AuditLog,
    canonical_detail,
    entry_hash,
    verify_file,
)

ROOT = Path(__file__).resolve().parents[2]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        self.now += 1  # one second between records
        return self.now


@pytest.fixture
async def audit(tmp_path: Path) -> AsyncIterator[AuditLog]:
    log = await AuditLog.open(tmp_path, clock=FakeClock())
    yield log
    await log.close()


async def fill(audit: AuditLog, n: int = 6) -> None:
    """``n`` entries: seq 1..n, actors alternating, one login_failed every third."""
    for i in range(1, n + 1):
        await audit.record(
            "alice" if i % 2 else "bob",
            Action.LOGIN_FAILED if i % 3 == 0 else Action.LOGIN,
            target=f"user{i}",
            detail={"i": i, "名": "审计"},
            source=f"10.0.0.{i}",
        )


@contextmanager
def tamper(path: Path) -> Iterator[sqlite3.Connection]:
    """A raw connection with the append-only triggers dropped, committed on exit."""
    db = sqlite3.connect(path / DB_FILE, isolation_level=None)
    db.execute("DROP TRIGGER IF EXISTS audit_no_update")
    db.execute("DROP TRIGGER IF EXISTS audit_no_delete")
    try:
        yield db
    finally:
        db.close()


def row_hash(db: sqlite3.Connection, seq: int) -> str:
    return str(db.execute("SELECT hash FROM audit WHERE seq = ?", (seq,)).fetchone()[0])


def forged(seq: int, prev_hash: str, *, actor: str = "mallory") -> tuple[object, ...]:
    """A row an intruder computed correctly (the algorithm is public)."""
    detail = canonical_detail({"forged": True})
    digest = entry_hash(
        seq,
        ts_ms=1,
        actor=actor,
        source="",
        action="login",
        target=actor,
        detail_json=detail,
        prev_hash=prev_hash,
    )
    return (seq, 1, actor, "", "login", actor, detail, prev_hash, digest)


def problems_for(report_problems: list[str], seq: int) -> list[str]:
    return [p for p in report_problems if p.startswith(f"seq {seq}:")]


# the chain ---------------------------------------------------------------------------------------


async def test_entries_chain_from_zero(audit: AuditLog) -> None:
    first = await audit.record("alice", "login", source="10.0.0.1", target="alice")
    second = await audit.record(
        "alice", Action.DEVICE_COMMAND, target="court-1/ptz-1", detail={"name": "preset", "ok": 1}
    )
    assert (first.seq, first.prev_hash) == (1, ZERO_HASH)
    assert (second.seq, second.prev_hash) == (2, first.hash)
    assert second.hash == entry_hash(
        2,
        ts_ms=second.ts_ms,
        actor="alice",
        source="",
        action="device_command",
        target="court-1/ptz-1",
        detail_json='{"name":"preset","ok":1}',
        prev_hash=first.hash,
    )
    report = await audit.verify()
    assert report.ok and report.checked == 2 and report.problems == []
    head = json.loads((audit.path.parent / HEAD_FILE).read_text())
    assert head == {"seq": 2, "hash": second.hash}


async def test_empty_log_verifies(audit: AuditLog) -> None:
    report = await audit.verify()
    assert report.ok and report.checked == 0


async def test_entries_filter_newest_first(audit: AuditLog) -> None:
    await fill(audit, 9)
    newest = await audit.entries(limit=3)
    assert [e.seq for e in newest] == [9, 8, 7]
    assert [e.seq for e in await audit.entries(limit=3, offset=3)] == [6, 5, 4]
    assert [e.seq for e in await audit.entries(actor="bob")] == [8, 6, 4, 2]
    assert [e.seq for e in await audit.entries(action="login_failed")] == [9, 6, 3]
    all_entries = await audit.entries()
    ts = {e.seq: e.ts_ms for e in all_entries}
    window = await audit.entries(since_ms=ts[3], until_ms=ts[6])
    assert [e.seq for e in window] == [5, 4, 3]
    assert all_entries[0].detail == {"i": 9, "名": "审计"}
    assert all_entries[0].to_json()["source"] == "10.0.0.9"


async def test_action_names_are_checked_and_long_fields_cut(audit: AuditLog) -> None:
    with pytest.raises(ValueError, match="action"):
        await audit.record("alice", "DROP TABLE")
    entry = await audit.record("a" * 500, "export", target="t" * 500)
    assert len(entry.actor) == 128 and len(entry.target) == 256
    odd = await audit.record("alice", "seal", detail={"when": object(), "n": 1})
    assert odd.detail["n"] == 1 and isinstance(odd.detail["when"], str)


async def test_the_table_refuses_update_and_delete(audit: AuditLog, tmp_path: Path) -> None:
    await fill(audit, 2)
    db = sqlite3.connect(tmp_path / DB_FILE)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE audit SET actor = 'x' WHERE seq = 1")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM audit WHERE seq = 2")
    db.close()
    assert (await audit.verify()).ok


async def test_two_writers_keep_one_chain(tmp_path: Path) -> None:
    """The hub and `courthub users` append to the same file."""
    one, two = await AuditLog.open(tmp_path), await AuditLog.open(tmp_path)
    try:
        await asyncio.gather(
            *(log.record("w", "login", detail={"i": i}) for i in range(20) for log in (one, two))
        )
        report = await one.verify()
        assert report.ok and report.checked == 40, report.problems
    finally:
        await one.close()
        await two.close()


# tampering ---------------------------------------------------------------------------------------


async def test_edited_row_is_named(audit: AuditLog, tmp_path: Path) -> None:
    await fill(audit)
    with tamper(tmp_path) as db:
        db.execute("""UPDATE audit SET detail = '{"i":3,"名":"无"}' WHERE seq = 3""")
    report = verify_file(tmp_path / DB_FILE)
    assert not report.ok
    assert problems_for(report.problems, 3) == [
        "seq 3: edited or forged (contents do not match its hash)"
    ]
    assert not any(p.startswith(("seq 2:", "seq 4:")) for p in report.problems)
    assert any("trigger" in p for p in report.problems)  # the dropped triggers are evidence too


@pytest.mark.parametrize("column", ["ts_ms", "actor", "source", "action", "target"])
async def test_any_edited_field_is_caught(audit: AuditLog, tmp_path: Path, column: str) -> None:
    await fill(audit)
    with tamper(tmp_path) as db:
        value = 5 if column == "ts_ms" else "'x'"
        db.execute(f"UPDATE audit SET {column} = {value} WHERE seq = 4")
    assert problems_for(verify_file(tmp_path / DB_FILE).problems, 4)


async def test_edit_with_recomputed_hash_is_named(audit: AuditLog, tmp_path: Path) -> None:
    await fill(audit)
    with tamper(tmp_path) as db:
        replacement = forged(3, row_hash(db, 2))
        db.execute("DELETE FROM audit WHERE seq = 3")
        db.execute("INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", replacement)
    report = verify_file(tmp_path / DB_FILE)
    assert problems_for(report.problems, 3), report.problems
    assert "inserted, replaced or edited" in problems_for(report.problems, 3)[0]


@pytest.mark.parametrize("seq", [1, 3])
async def test_deleted_row_is_named(audit: AuditLog, tmp_path: Path, seq: int) -> None:
    await fill(audit)
    with tamper(tmp_path) as db:
        db.execute("DELETE FROM audit WHERE seq = ?", (seq,))
    report = verify_file(tmp_path / DB_FILE)
    assert problems_for(report.problems, seq) == [
        f"seq {seq}: deleted (missing between seq {seq - 1} and seq {seq + 1})"
    ]
    assert report.checked == 5


async def test_deleted_rows_at_the_end_are_named(audit: AuditLog, tmp_path: Path) -> None:
    await fill(audit)
    with tamper(tmp_path) as db:
        db.execute("DELETE FROM audit WHERE seq >= 5")
    report = verify_file(tmp_path / DB_FILE)
    assert "seq 5..6: deleted from the end (the head record names seq 6)" in report.problems


async def test_inserted_row_is_named(audit: AuditLog, tmp_path: Path) -> None:
    """Rows 4..6 renumbered to 5..7 and a well-forged row put in at 4."""
    await fill(audit)
    with tamper(tmp_path) as db:
        for seq in (6, 5, 4):
            db.execute("UPDATE audit SET seq = seq + 1 WHERE seq = ?", (seq,))
        db.execute(
            "INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", forged(4, row_hash(db, 3))
        )
    report = verify_file(tmp_path / DB_FILE)
    assert problems_for(report.problems, 4) and "inserted" in problems_for(report.problems, 4)[0]
    for seq in (5, 6, 7):
        moved = (
            f"seq {seq}: moved or copied here (written as seq {seq - 1}): "
            "rows reordered or renumbered"
        )
        assert moved in report.problems, report.problems
    assert any(p.startswith("seq 7:") and "head" in p for p in report.problems)


async def test_appended_forgery_is_named(audit: AuditLog, tmp_path: Path) -> None:
    await fill(audit)
    with tamper(tmp_path) as db:
        db.execute(
            "INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", forged(7, row_hash(db, 6))
        )
        db.execute(
            "INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (8, 1, "x", "", "login", "x", "{}", "f" * 64, "e" * 64),
        )
    report = verify_file(tmp_path / DB_FILE)
    assert problems_for(report.problems, 8) == [
        "seq 8: edited or forged (contents do not match its hash)"
    ]
    assert any(p.startswith("seq 7..8: not in the head record") for p in report.problems)


async def test_reordered_rows_are_named(audit: AuditLog, tmp_path: Path) -> None:
    await fill(audit)
    with tamper(tmp_path) as db:
        db.execute("UPDATE audit SET seq = -2 WHERE seq = 2")
        db.execute("UPDATE audit SET seq = 2 WHERE seq = 4")
        db.execute("UPDATE audit SET seq = 4 WHERE seq = -2")
    report = verify_file(tmp_path / DB_FILE)
    assert problems_for(report.problems, 2) == [
        "seq 2: moved or copied here (written as seq 4): rows reordered or renumbered"
    ]
    assert problems_for(report.problems, 4) == [
        "seq 4: moved or copied here (written as seq 2): rows reordered or renumbered"
    ]
    for seq in (1, 3, 5, 6):
        assert not problems_for(report.problems, seq), report.problems


async def test_rebuilt_chain_is_caught_by_the_head(audit: AuditLog, tmp_path: Path) -> None:
    await fill(audit, 3)
    with tamper(tmp_path) as db:
        db.execute("DELETE FROM audit WHERE seq = 3")
        db.execute(
            "INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", forged(3, row_hash(db, 2))
        )
    report = verify_file(tmp_path / DB_FILE)
    assert "seq 3: differs from the head record (edited or replaced)" in report.problems


async def test_reopening_restores_the_triggers(tmp_path: Path) -> None:
    log = await AuditLog.open(tmp_path)
    await fill(log, 2)
    await log.close()
    with tamper(tmp_path):
        pass
    assert not verify_file(tmp_path / DB_FILE).ok
    log = await AuditLog.open(tmp_path)
    await log.close()
    assert verify_file(tmp_path / DB_FILE).ok


async def test_missing_head_is_a_note_not_a_problem(audit: AuditLog, tmp_path: Path) -> None:
    await fill(audit, 2)
    os.unlink(tmp_path / HEAD_FILE)
    report = verify_file(tmp_path / DB_FILE)
    assert report.ok and report.notes and "head" in report.notes[0]


# the command line --------------------------------------------------------------------------------


def courthub(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hub.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


async def test_cli_audit_verify_exit_codes(audit: AuditLog, tmp_path: Path) -> None:
    await fill(audit)
    ok = courthub("audit", "verify", "--data-dir", str(tmp_path))
    assert ok.returncode == 0, ok.stderr
    assert "ok: 6 entries" in ok.stdout
    listed = courthub("audit", "list", "--limit", "2", "--data-dir", str(tmp_path))
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 2
    assert listed.stdout.split()[0] == "6"
    with tamper(tmp_path) as db:
        db.execute("DELETE FROM audit WHERE seq = 2")
        db.execute("UPDATE audit SET actor = 'eve' WHERE seq = 5")
    bad = courthub("audit", "verify", "--data-dir", str(tmp_path))
    assert bad.returncode == 1
    assert "TAMPERED seq 2: deleted" in bad.stdout
    assert "TAMPERED seq 5: edited" in bad.stdout
    missing = courthub("audit", "verify", "--data-dir", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "no audit log" in missing.stderr
    assert not (tmp_path / "nowhere").exists()


async def test_cli_audit_verify_reads_the_hub_config(audit: AuditLog, tmp_path: Path) -> None:
    await fill(audit, 1)
    config = tmp_path / "hub.toml"
    config.write_text(f'[hub]\ndata_dir = "{tmp_path}"\n', encoding="utf-8")
    result = courthub("audit", "verify", "--hub-config", str(config))
    assert result.returncode == 0, result.stderr
