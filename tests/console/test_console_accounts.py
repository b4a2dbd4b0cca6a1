"""hub.accounts: users, argon2 hashes, login lock-out, sessions, API tokens (fake clock, no HTTP)."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from hub.accounts import (
    DB_FILE,
    ROLES,
    AccountError,
    AccountStore,
    UnknownUserError,
    UserExistsError,
    api_token_id,
)

PASSWORD = "correct horse 9"


class FakeClock:
    """Seconds since the epoch that only move when a test says so."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def cheap_hasher() -> PasswordHasher:
    """argon2id with tiny parameters: same code path, milliseconds instead of 0.2 s a hash."""
    return PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


def database_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.glob(DB_FILE + "*")))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def accounts(tmp_path: Path, clock: FakeClock) -> AsyncIterator[AccountStore]:
    store = await AccountStore.open(tmp_path, clock=clock, hasher=cheap_hasher())
    yield store
    await store.close()


def test_roles_match_the_console_roles() -> None:
    from dashboards.auth import Role

    assert set(ROLES) == {r.value for r in Role} - {"anonymous"}


# users -------------------------------------------------------------------------------------------


async def test_first_admin_gets_a_one_time_password_once(accounts: AccountStore) -> None:
    password = await accounts.ensure_first_admin()
    assert password is not None and len(password) >= 10
    admin = await accounts.get("admin")
    assert admin is not None
    assert admin.roles == {"admin"} and admin.must_change_password
    assert admin.display_name == "系统管理员"
    assert await accounts.ensure_first_admin() is None  # users exist: nothing created
    result = await accounts.login("admin", password, source="10.0.0.1")
    assert result.ok and result.user is not None and result.user.must_change_password
    await accounts.set_password("admin", "a new secret 42")
    admin = await accounts.get("admin")
    assert admin is not None and not admin.must_change_password


async def test_no_first_admin_when_users_exist(accounts: AccountStore) -> None:
    await accounts.create_user("judge1", PASSWORD, ["judge"])
    assert await accounts.ensure_first_admin() is None
    assert await accounts.get("admin") is None


async def test_passwords_are_stored_as_argon2id_hashes_only(tmp_path: Path) -> None:
    store = await AccountStore.open(tmp_path)  # the production parameters
    try:
        await store.create_user("clerk1", PASSWORD, ["clerk"])
        assert (await store.login("clerk1", PASSWORD, source="")).ok
    finally:
        await store.close()
    assert PASSWORD.encode() not in database_bytes(tmp_path)
    db = sqlite3.connect(tmp_path / DB_FILE)
    (stored,) = db.execute("SELECT password_hash FROM users").fetchone()
    db.close()
    assert stored.startswith("$argon2id$")
    assert "m=65536" in stored  # memory-hard: 64 MiB
    assert stat.S_IMODE((tmp_path / DB_FILE).stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("username", "password", "roles", "message"),
    [
        ("Alice", PASSWORD, ["judge"], "username"),
        ("a" * 65, PASSWORD, ["judge"], "username"),
        ("al ice", PASSWORD, ["judge"], "username"),
        ("alice", "short", ["judge"], "at least 10"),
        ("alice", "aaaaaaaaaaaa", ["judge"], "repeat"),
        ("alice", "alice", ["judge"], "at least 10"),
        ("alice12345", "ALICE12345", ["judge"], "username"),
        ("alice", PASSWORD, ["judge", "superuser"], "unknown role"),
        ("alice", PASSWORD, [], "at least one role"),
    ],
)
async def test_account_rules(
    accounts: AccountStore, username: str, password: str, roles: list[str], message: str
) -> None:
    with pytest.raises(AccountError, match=message):
        await accounts.create_user(username, password, roles)


async def test_user_fields_language_and_duplicates(accounts: AccountStore) -> None:
    user = await accounts.create_user(
        "tech.1", PASSWORD, ["technician"], display_name=" 王工 ", language="en"
    )
    assert user.display_name == "王工" and user.language == "en" and user.last_login_ms is None
    with pytest.raises(UserExistsError):
        await accounts.create_user("tech.1", PASSWORD, ["judge"])
    with pytest.raises(AccountError, match="language"):
        await accounts.set_language("tech.1", "fr")
    assert (await accounts.set_language("tech.1", "zh-CN")).language == "zh-CN"
    with pytest.raises(UnknownUserError):
        await accounts.set_roles("nobody", ["judge"])
    assert [u.username for u in await accounts.list_users()] == ["tech.1"]


async def test_the_last_admin_cannot_be_disabled_or_demoted(accounts: AccountStore) -> None:
    await accounts.create_user("root1", PASSWORD, ["admin"])
    with pytest.raises(AccountError, match="last enabled admin"):
        await accounts.set_disabled("root1", True)
    with pytest.raises(AccountError, match="last enabled admin"):
        await accounts.set_roles("root1", ["technician"])
    await accounts.create_user("root2", PASSWORD, ["admin", "judge"])
    assert (await accounts.set_roles("root1", ["technician"])).roles == {"technician"}
    with pytest.raises(AccountError, match="last enabled admin"):
        await accounts.set_disabled("root2", True)


# login -------------------------------------------------------------------------------------------


async def test_login_ok_wrong_unknown_disabled(accounts: AccountStore, clock: FakeClock) -> None:
    await accounts.create_user("judge1", PASSWORD, ["judge"])
    ok = await accounts.login("judge1", PASSWORD, source="10.0.0.1")
    assert ok.ok and ok.reason == "ok" and ok.user is not None
    assert ok.user.last_login_ms == int(clock.now * 1000)
    assert (await accounts.login(" JUDGE1 ", PASSWORD, source="10.0.0.1")).ok  # normalised
    wrong = await accounts.login("judge1", "not the password", source="10.0.0.1")
    unknown = await accounts.login("nobody", PASSWORD, source="10.0.0.1")
    assert (wrong.ok, wrong.reason, wrong.user) == (False, "bad_credentials", None)
    assert (unknown.ok, unknown.reason, unknown.user) == (False, "bad_credentials", None)
    await accounts.set_disabled("judge1", True)
    disabled = await accounts.login("judge1", PASSWORD, source="10.0.0.1")
    assert (disabled.ok, disabled.reason) == (False, "disabled")
    # a disabled account with a wrong password says nothing about being disabled
    assert (await accounts.login("judge1", "nope nope nope", source="x")).reason == (
        "bad_credentials"
    )


async def test_lockout_after_five_failures_and_unlock_after_lockout(
    accounts: AccountStore, clock: FakeClock
) -> None:
    await accounts.create_user("clerk1", PASSWORD, ["clerk"])
    for _ in range(5):
        result = await accounts.login("clerk1", "wrong password", source="10.0.0.2")
        assert result.reason == "bad_credentials"
    locked = await accounts.login("clerk1", PASSWORD, source="10.0.0.3")  # even the right one
    assert locked.reason == "locked" and not locked.ok
    assert locked.retry_after_s == pytest.approx(300)
    clock.advance(299)
    assert (await accounts.login("clerk1", PASSWORD, source="10.0.0.3")).retry_after_s == (
        pytest.approx(1)
    )
    clock.advance(1)
    assert (await accounts.login("clerk1", PASSWORD, source="10.0.0.3")).ok
    # the count starts afresh after the lock
    for _ in range(4):
        await accounts.login("clerk1", "wrong password", source="10.0.0.2")
    assert (await accounts.login("clerk1", PASSWORD, source="10.0.0.2")).ok


async def test_unknown_usernames_lock_out_like_known_ones(accounts: AccountStore) -> None:
    for _ in range(5):
        await accounts.login("ghost", "whatever whatever", source="10.0.0.9")
    assert (await accounts.login("ghost", "whatever whatever", source="10.0.1.9")).reason == (
        "locked"
    )


async def test_failures_outside_the_window_do_not_add_up(
    accounts: AccountStore, clock: FakeClock
) -> None:
    await accounts.create_user("clerk1", PASSWORD, ["clerk"])
    for _ in range(4):
        await accounts.login("clerk1", "wrong password", source="s")
    clock.advance(15 * 60)
    assert (await accounts.login("clerk1", "wrong password", source="s")).reason == (
        "bad_credentials"
    )
    assert (await accounts.login("clerk1", PASSWORD, source="s")).ok


async def test_a_success_resets_the_user_count_not_the_source_count(tmp_path: Path) -> None:
    clock = FakeClock()
    store = await AccountStore.open(
        tmp_path, clock=clock, hasher=cheap_hasher(), max_failures=3, max_source_failures=4
    )
    try:
        await store.create_user("me", PASSWORD, ["judge"])
        await store.create_user("victim", PASSWORD, ["judge"])
        await store.login("victim", "guess number 1", source="10.9.9.9")
        await store.login("victim", "guess number 2", source="10.9.9.9")
        assert (await store.login("me", PASSWORD, source="10.9.9.9")).ok
        await store.login("other", "guess number 3", source="10.9.9.9")
        await store.login("other2", "guess number 4", source="10.9.9.9")
        # four failures from one address: the address is locked, for every username
        assert (await store.login("me", PASSWORD, source="10.9.9.9")).reason == "locked"
        assert (await store.login("me", PASSWORD, source="10.1.1.1")).ok
    finally:
        await store.close()


async def test_parallel_guesses_cannot_slip_past_the_limit(accounts: AccountStore) -> None:
    await accounts.create_user("clerk1", PASSWORD, ["clerk"])
    results = await asyncio.gather(
        *(accounts.login("clerk1", f"guess {i:04d} x", source=f"10.0.0.{i}") for i in range(20))
    )
    checked = [r for r in results if r.reason == "bad_credentials"]
    assert len(checked) == 5  # the rest were refused as locked without a password check
    assert all(r.reason in ("bad_credentials", "locked") for r in results)


async def test_a_users_own_password_change_checks_the_old_one(accounts: AccountStore) -> None:
    await accounts.create_user("clerk1", PASSWORD, ["clerk"])
    session = await accounts.create_session("clerk1")
    with pytest.raises(AccountError, match="differ"):
        await accounts.change_password("clerk1", PASSWORD, PASSWORD, source="s")
    with pytest.raises(AccountError, match="at least 10"):
        await accounts.change_password("clerk1", PASSWORD, "short", source="s")
    bad = await accounts.change_password("clerk1", "not it at all", "new secret 123", source="s")
    assert bad.reason == "bad_credentials"
    assert await accounts.session(session.id) is not None
    good = await accounts.change_password("clerk1", PASSWORD, "new secret 123", source="s")
    assert good.ok
    assert await accounts.session(session.id) is None  # sessions end with the change
    assert (await accounts.login("clerk1", "new secret 123", source="s")).ok
    assert not (await accounts.login("clerk1", PASSWORD, source="s")).ok


async def test_old_hash_parameters_are_upgraded_at_login(tmp_path: Path) -> None:
    weak = PasswordHasher(time_cost=1, memory_cost=512, parallelism=1)
    store = await AccountStore.open(tmp_path, hasher=weak)
    await store.create_user("clerk1", PASSWORD, ["clerk"])
    await store.close()
    store = await AccountStore.open(tmp_path, hasher=cheap_hasher())
    try:
        assert (await store.login("clerk1", PASSWORD, source="")).ok
    finally:
        await store.close()
    db = sqlite3.connect(tmp_path / DB_FILE)
    (stored,) = db.execute("SELECT password_hash FROM users").fetchone()
    db.close()
    assert "m=1024" in stored


# sessions ----------------------------------------------------------------------------------------


async def test_session_idle_timeout_slides(accounts: AccountStore, clock: FakeClock) -> None:
    await accounts.create_user("judge1", PASSWORD, ["judge"])
    session = await accounts.create_session("judge1")
    assert len(session.id) >= 43 and session.id != session.csrf_token
    assert session.id not in repr(session) and session.csrf_token not in repr(session)
    for _ in range(3):  # activity every 20 min keeps it alive past the 30 min idle limit
        clock.advance(20 * 60)
        seen = await accounts.session(session.id)
        assert seen is not None and seen.last_seen_ms == int(clock.now * 1000)
    clock.advance(30 * 60)
    assert await accounts.session(session.id) is None
    assert await accounts.session(session.id) is None  # and it was deleted


async def test_session_absolute_lifetime(accounts: AccountStore, clock: FakeClock) -> None:
    await accounts.create_user("judge1", PASSWORD, ["judge"])
    session = await accounts.create_session("judge1")
    assert session.expires_ms - session.created_ms == 8 * 3600 * 1000
    for _ in range(8 * 4 - 1):  # busy all day: still ends after 8 hours
        clock.advance(15 * 60)
        assert await accounts.session(session.id) is not None
    clock.advance(15 * 60)
    assert await accounts.session(session.id) is None


async def test_sessions_end_on_password_change_and_disable(accounts: AccountStore) -> None:
    await accounts.create_user("judge1", PASSWORD, ["judge"])
    await accounts.create_user("root1", PASSWORD, ["admin"])
    one, two = await accounts.create_session("judge1"), await accounts.create_session("judge1")
    other = await accounts.create_session("root1")
    await accounts.set_password("judge1", "another secret 1")
    assert await accounts.session(one.id) is None and await accounts.session(two.id) is None
    assert await accounts.session(other.id) is not None
    three = await accounts.create_session("judge1")
    await accounts.set_disabled("judge1", True)
    assert await accounts.session(three.id) is None
    with pytest.raises(AccountError, match="disabled"):
        await accounts.create_session("judge1")
    await accounts.delete_session(other.id)
    assert await accounts.session(other.id) is None


async def test_session_ids_are_stored_hashed(accounts: AccountStore, tmp_path: Path) -> None:
    await accounts.create_user("judge1", PASSWORD, ["judge"])
    session = await accounts.create_session("judge1")
    token = await accounts.create_api_token("judge1", "script")
    await accounts.close()
    raw = database_bytes(tmp_path)  # the db and its WAL
    assert session.id.encode() not in raw
    assert token.encode() not in raw


async def test_junk_session_ids_are_refused_cheaply(accounts: AccountStore) -> None:
    for junk in ("", "x", "a" * 500, "../../etc/passwd", "' OR 1=1 --"):
        assert await accounts.session(junk) is None


# API tokens --------------------------------------------------------------------------------------


async def test_api_tokens_create_use_revoke(accounts: AccountStore, clock: FakeClock) -> None:
    await accounts.create_user("tech1", PASSWORD, ["technician"])
    token = await accounts.create_api_token("tech1", "monitoring")
    assert token.startswith("cht_")
    user = await accounts.user_for_api_token(token)
    assert user is not None and user.username == "tech1"
    assert await accounts.user_for_api_token(token + "x") is None
    assert await accounts.user_for_api_token("cht_" + "A" * 43) is None
    [listed] = await accounts.list_api_tokens("tech1")
    assert listed.id == api_token_id(token) and listed.label == "monitoring"
    assert listed.last_used_ms == int(clock.now * 1000)
    assert not await accounts.revoke_api_token("someone-else", listed.id)
    assert await accounts.revoke_api_token("tech1", listed.id)
    assert await accounts.user_for_api_token(token) is None
    with pytest.raises(AccountError, match="label"):
        await accounts.create_api_token("tech1", "")


async def test_api_tokens_of_disabled_users_stop_working(accounts: AccountStore) -> None:
    await accounts.create_user("tech1", PASSWORD, ["technician"])
    token = await accounts.create_api_token("tech1", "monitoring")
    await accounts.set_disabled("tech1", True)
    assert await accounts.user_for_api_token(token) is None
    await accounts.set_disabled("tech1", False)
    assert await accounts.user_for_api_token(token) is not None


async def test_changes_by_another_process_apply_at_once(
    accounts: AccountStore, tmp_path: Path
) -> None:
    """The hub and `courthub users` share the file; nothing is cached."""
    await accounts.create_user("judge1", PASSWORD, ["judge"])
    session = await accounts.create_session("judge1")
    other = await AccountStore.open(tmp_path, hasher=cheap_hasher())
    try:
        await other.set_roles("judge1", ["clerk"])
        found = await accounts.session_user(session.id)
        assert found is not None and found[1].roles == {"clerk"}
        await other.set_disabled("judge1", True)
        assert await accounts.session(session.id) is None
    finally:
        await other.close()


async def test_a_password_typed_as_username_stays_out_of_the_log(
    accounts: AccountStore, caplog: pytest.LogCaptureFixture
) -> None:
    await accounts.login("My Secret P@ss", "x", source="10.0.0.1")
    assert "Secret" not in caplog.text and "(not a username)" in caplog.text
