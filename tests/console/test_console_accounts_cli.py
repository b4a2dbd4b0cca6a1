"""`courthub users add|passwd|disable|enable|list` as a real subprocess, password on stdin."""

from __future__ import annotations

import getpass
import subprocess
import sys
from pathlib import Path

from hub.accounts import AccountStore
from hub.audit import DB_FILE as AUDIT_DB
from hub.audit import AuditLog, verify_file

ROOT = Path(__file__).resolve().parents[2]


def users(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hub.cli", "users", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


async def test_add_passwd_disable_enable_list(tmp_path: Path) -> None:
    where = ("--data-dir", str(tmp_path))
    added = users(
        "add",
        "clerk1",
        "--role",
        "clerk",
        "--role",
        "judge",
        "--display-name",
        "张书记员",
        "--language",
        "en",
        "--password-stdin",
        *where,
        stdin="first secret 1\n",
    )
    assert added.returncode == 0, added.stderr
    assert "created clerk1 (clerk, judge)" in added.stdout
    assert "first secret 1" not in added.stdout + added.stderr  # never echoed or logged

    accounts = await AccountStore.open(tmp_path)
    try:
        user = await accounts.get("clerk1")
        assert user is not None and user.roles == {"clerk", "judge"}
        assert (user.display_name, user.language) == ("张书记员", "en")
        assert (await accounts.login("clerk1", "first secret 1", source="")).ok
        session = await accounts.create_session("clerk1")

        changed = users(
            "passwd", "clerk1", "--password-stdin", "--temporary", *where, stdin="second secret 2"
        )
        assert changed.returncode == 0, changed.stderr
        assert await accounts.session(session.id) is None  # the running hub's sessions end
        result = await accounts.login("clerk1", "second secret 2", source="")
        assert result.ok and result.user is not None and result.user.must_change_password
        assert not (await accounts.login("clerk1", "first secret 1", source="")).ok

        session = await accounts.create_session("clerk1")
        disabled = users("disable", "clerk1", *where)
        assert disabled.returncode == 0, disabled.stderr
        assert await accounts.session(session.id) is None
        assert (await accounts.login("clerk1", "second secret 2", source="")).reason == "disabled"
        listed = users("list", *where)
        assert listed.returncode == 0
        [row] = [line for line in listed.stdout.splitlines() if line.startswith("clerk1")]
        assert "clerk,judge" in row and "disabled" in row
        assert "argon2" not in listed.stdout

        assert users("enable", "clerk1", *where).returncode == 0
        assert (await accounts.login("clerk1", "second secret 2", source="")).ok
    finally:
        await accounts.close()

    audit = await AuditLog.open(tmp_path)
    try:
        entries = list(reversed(await audit.entries()))
    finally:
        await audit.close()
    actor = f"cli:{getpass.getuser()}"
    assert [(e.actor, e.action, e.target) for e in entries] == [
        (actor, "user_created", "clerk1"),
        (actor, "password_changed", "clerk1"),
        (actor, "user_disabled", "clerk1"),
        (actor, "user_enabled", "clerk1"),
    ]
    assert verify_file(tmp_path / AUDIT_DB).ok


async def test_refusals_exit_2_with_one_line(tmp_path: Path) -> None:
    where = ("--data-dir", str(tmp_path))
    weak = users("add", "bob", "--role", "judge", "--password-stdin", *where, stdin="short\n")
    assert weak.returncode == 2
    assert "courthub users: password must be at least 10 characters" in weak.stderr
    bad_role = users(
        "add", "bob", "--role", "boss", "--password-stdin", *where, stdin="ok secret 12"
    )
    assert bad_role.returncode == 2 and "unknown role 'boss'" in bad_role.stderr
    unknown = users("disable", "nobody", *where)
    assert unknown.returncode == 2 and "no user called nobody" in unknown.stderr
    ok = users("add", "root1", "--role", "admin", "--password-stdin", *where, stdin="root secret 1")
    assert ok.returncode == 0
    last_admin = users("disable", "root1", *where)
    assert last_admin.returncode == 2 and "last enabled admin" in last_admin.stderr


def test_users_reads_the_data_dir_from_hub_config(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text('[hub]\ndata_dir = "hubdata"\n', encoding="utf-8")
    result = users(
        "add", "tech1", "--role", "technician", "--password-stdin", "--hub-config", str(config),
        stdin="tech secret 12",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "hubdata" / "accounts.db").is_file()
    assert "tech1" in users("list", "--hub-config", str(config)).stdout
