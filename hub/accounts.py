"""Accounts of the web console: users, roles, passwords, sessions, API tokens and login lock-out.

The business rules live here so the console, the JSON API and the ``courthub users`` command all
apply the same ones:

- Usernames are ``[a-z0-9._-]{1,64}``; roles come from :data:`ROLES`; every user has at least one.
- Passwords are at least :data:`MIN_PASSWORD_LENGTH` characters and are stored only as argon2id
  hashes (memory-hard, so a stolen ``accounts.db`` is expensive to crack). Hashing runs on worker
  threads, at most :data:`MAX_CONCURRENT_HASHES` at a time (each takes 64 MiB by default).
- Login counts failures per username *and* per source address (the latter with a higher limit,
  since several people may share an address); after too many within a window the key is locked
  for ``lockout_s``. Attempts are counted *before* the password is checked, so parallel guesses
  cannot slip past the limit. Unknown usernames cost one hash like known ones (no timing oracle)
  and are counted the same way (no enumeration through the lock-out either).
- Sessions have an absolute lifetime and a sliding idle timeout. The database keeps only the
  SHA-256 of a session id or API token, so a copy of the file grants no access.
- Sessions of a user end when the password changes or the account is disabled. The last enabled
  admin can neither be disabled nor lose the admin role (nobody could administer the hub then).

All SQLite work runs on one dedicated thread (like :mod:`hub.store`); nothing blocks the loop.
Several processes may use the file at once (the hub and ``courthub users``): it is WAL, every
multi-statement change is one transaction, and nothing is cached in memory, so a change made by
the command line applies to the running hub at its next request.

Passwords, tokens and session ids are never logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from hub.db_thread import DbThread

log = logging.getLogger(__name__)

DB_FILE: Final = "accounts.db"
SCHEMA_VERSION: Final = 1

#: The roles of the console (``dashboards.auth.Role`` mirrors them; hub code must not import it).
ROLES: Final = ("admin", "technician", "judge", "clerk", "commander", "counter")
#: UI languages with a message catalog.
LANGUAGES: Final = ("zh-CN", "en")
DEFAULT_LANGUAGE: Final = "zh-CN"

MIN_PASSWORD_LENGTH: Final = 10
#: Bounds the work one login request can cause.
MAX_PASSWORD_LENGTH: Final = 1024
MAX_DISPLAY_NAME: Final = 128
MAX_TOKEN_LABEL: Final = 64
#: Argon2 with the default parameters holds 64 MiB while it runs: bound the parallel ones.
MAX_CONCURRENT_HASHES: Final = 2
#: ``last_seen_ms`` of a session is written at most this often (every request would otherwise
#: write the database); the idle timeout is therefore exact to within this interval.
SESSION_TOUCH_MS: Final = 10_000
TOKEN_TOUCH_MS: Final = 60_000
#: Prefix of per-user API tokens: tells them apart from the hub's admin token and lets secret
#: scanners recognise a leaked one.
API_TOKEN_PREFIX: Final = "cht_"

_USERNAME_RE: Final = re.compile(r"[a-z0-9._-]{1,64}")
_OPAQUE_RE: Final = re.compile(r"[A-Za-z0-9_-]{20,128}")
_TOKEN_ID_RE: Final = re.compile(r"[0-9a-f]{16}")

T = TypeVar("T")

LoginReason = Literal["ok", "bad_credentials", "locked", "disabled"]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS users (
    username TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    roles TEXT NOT NULL,
    language TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0,
    must_change_password INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL,
    last_login_ms INTEGER,
    password_changed_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    id_hash TEXT PRIMARY KEY,
    username TEXT NOT NULL REFERENCES users (username) ON DELETE CASCADE,
    csrf_token TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_by_user ON sessions (username);
CREATE TABLE IF NOT EXISTS api_tokens (
    id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    username TEXT NOT NULL REFERENCES users (username) ON DELETE CASCADE,
    label TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    last_used_ms INTEGER
);
CREATE INDEX IF NOT EXISTS api_tokens_by_user ON api_tokens (username);
CREATE TABLE IF NOT EXISTS login_failures (
    key TEXT PRIMARY KEY,
    failures INTEGER NOT NULL,
    window_start_ms INTEGER NOT NULL,
    locked_until_ms INTEGER NOT NULL
);
"""


class AccountError(ValueError):
    """A request the account rules refuse; the message can be shown to the user as is."""


class UnknownUserError(AccountError):
    """No user has that name."""


class UserExistsError(AccountError):
    """A user with that name exists already."""


@dataclass(frozen=True, slots=True)
class User:
    """A console account (never carries the password hash)."""

    username: str
    display_name: str
    roles: frozenset[str]
    language: str
    disabled: bool
    must_change_password: bool
    created_ms: int
    last_login_ms: int | None


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in browser. ``id`` goes in the cookie; ``csrf_token`` in pages and headers."""

    id: str = field(repr=False)
    username: str
    csrf_token: str = field(repr=False)
    created_ms: int
    expires_ms: int
    last_seen_ms: int


@dataclass(frozen=True, slots=True)
class LoginResult:
    """The outcome of :meth:`AccountStore.login`."""

    ok: bool
    user: User | None
    reason: LoginReason
    #: seconds until a locked login may be tried again (0 unless ``reason == "locked"``)
    retry_after_s: float = 0.0


@dataclass(frozen=True, slots=True)
class ApiToken:
    """A per-user API token as listed (the token itself is shown only once, at creation)."""

    id: str
    username: str
    label: str
    created_ms: int
    last_used_ms: int | None


@dataclass(frozen=True, slots=True)
class _Limits:
    session_ttl_ms: int
    idle_timeout_ms: int
    max_failures: int
    max_source_failures: int
    lockout_ms: int
    failure_window_ms: int


# validation (pure, cheap: runs on the loop before any thread hop) -------------------------------


def validate_username(username: str) -> str:
    """``username`` when it is well formed, else :class:`AccountError`."""
    if not isinstance(username, str) or not _USERNAME_RE.fullmatch(username):
        raise AccountError("username must be 1-64 characters of a-z, 0-9, '.', '_' or '-'")
    return username


def validate_password(password: str, *, username: str = "") -> str:
    """``password`` when it meets the policy, else :class:`AccountError`."""
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"password must be at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise AccountError(f"password must be at most {MAX_PASSWORD_LENGTH} characters")
    if username and password.lower() == username.lower():
        raise AccountError("password must not be the username")
    if len(set(password)) < 3:
        raise AccountError("password must not repeat one or two characters")
    return password


def validate_roles(roles: Iterable[str]) -> frozenset[str]:
    """``roles`` as a set when every one is known and there is at least one."""
    if isinstance(roles, str):
        raise AccountError("roles must be a list")
    result = frozenset(str(r) for r in roles)
    unknown = sorted(result - set(ROLES))
    if unknown:
        raise AccountError(f"unknown role {unknown[0]!r}; roles are {', '.join(ROLES)}")
    if not result:
        raise AccountError("a user needs at least one role")
    return result


def validate_language(language: str) -> str:
    """``language`` when the console has its catalog."""
    if language not in LANGUAGES:
        raise AccountError(f"language must be one of {', '.join(LANGUAGES)}")
    return language


def validate_display_name(display_name: str) -> str:
    """A display name without control characters, trimmed."""
    if not isinstance(display_name, str):
        raise AccountError("display name must be text")
    name = display_name.strip()
    if len(name) > MAX_DISPLAY_NAME:
        raise AccountError(f"display name must be at most {MAX_DISPLAY_NAME} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise AccountError("display name must not contain control characters")
    return name


def api_token_id(token: str) -> str:
    """The public id of an API token (a prefix of its SHA-256), safe to list and log."""
    return _sha256(token)[:16]


def _loggable(name: str) -> str:
    """A username fit for the log: anything else may be a password typed into the wrong field."""
    return name if _USERNAME_RE.fullmatch(name) else "(not a username)"


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# the store --------------------------------------------------------------------------------------


class AccountStore:
    """Users, sessions, API tokens and login lock-out in ``data_dir/accounts.db``."""

    def __init__(
        self,
        path: Path,
        limits: _Limits,
        clock: Callable[[], float],
        hasher: PasswordHasher,
    ) -> None:
        """Use :meth:`open`."""
        self.path = path
        self._limits = limits
        self._clock = clock
        self._hasher = hasher
        self._thread = DbThread("accounts-db")
        self._db: sqlite3.Connection | None = None
        self._hash_slots = asyncio.Semaphore(MAX_CONCURRENT_HASHES)
        # hashed once at open: verified against when the username is unknown, so that an
        # unknown user costs the same time as a wrong password
        self._dummy_hash = ""

    @classmethod
    async def open(
        cls,
        data_dir: Path,
        *,
        session_ttl_s: float = 8 * 3600,
        idle_timeout_s: float = 30 * 60,
        max_failures: int = 5,
        lockout_s: float = 300,
        failure_window_s: float = 15 * 60,
        max_source_failures: int | None = None,
        clock: Callable[[], float] = time.time,
        hasher: PasswordHasher | None = None,
    ) -> AccountStore:
        """Open (and create) ``data_dir/accounts.db``.

        ``max_failures`` failed logins of one username within ``failure_window_s`` lock that
        username for ``lockout_s``; ``max_source_failures`` (default 4 × ``max_failures``) do the
        same for one source address. ``clock`` returns seconds (tests pass a fake one);
        ``hasher`` defaults to argon2id with argon2-cffi's RFC 9106 parameters.
        """
        if max_failures < 1 or lockout_s <= 0 or session_ttl_s <= 0 or idle_timeout_s <= 0:
            raise ValueError("limits must be positive")
        limits = _Limits(
            session_ttl_ms=int(session_ttl_s * 1000),
            idle_timeout_ms=int(idle_timeout_s * 1000),
            max_failures=max_failures,
            max_source_failures=max_source_failures or 4 * max_failures,
            lockout_ms=int(lockout_s * 1000),
            failure_window_ms=int(failure_window_s * 1000),
        )
        store = cls(data_dir / DB_FILE, limits, clock, hasher or PasswordHasher())
        store._thread.start()
        try:
            await store._run(store._open_blocking)
            store._dummy_hash = await store._hash(secrets.token_urlsafe(16))
        except BaseException:
            await store.close()
            raise
        log.info("account store open path=%s", store.path)
        return store

    async def close(self) -> None:
        """Close the database and stop its thread (idempotent)."""
        if not self._thread.running:
            return
        try:
            await self._run(self._close_blocking)
        finally:
            self._thread.stop()

    # users --------------------------------------------------------------------------------------

    async def ensure_first_admin(self, username: str = "admin") -> str | None:
        """Create ``username`` as admin with a one-time password when no user exists at all.

        Returns that password (the caller shows it once; it must be changed at first login),
        or ``None`` when there are users already.
        """
        validate_username(username)
        if await self._run(self._count_users_blocking) > 0:
            return None
        password = secrets.token_urlsafe(12)
        password_hash = await self._hash(password)
        created = await self._run(
            self._insert_first_admin_blocking, username, password_hash, self._now_ms()
        )
        if not created:
            return None
        log.warning("first admin created username=%s must_change_password=true", username)
        return password

    async def create_user(
        self,
        username: str,
        password: str,
        roles: Iterable[str],
        *,
        display_name: str = "",
        language: str = DEFAULT_LANGUAGE,
        must_change_password: bool = False,
    ) -> User:
        """Create a user; :class:`AccountError` when a rule refuses it."""
        validate_username(username)
        validate_password(password, username=username)
        role_set = validate_roles(roles)
        validate_language(language)
        name = validate_display_name(display_name)
        password_hash = await self._hash(password)
        user = User(
            username=username,
            display_name=name,
            roles=role_set,
            language=language,
            disabled=False,
            must_change_password=must_change_password,
            created_ms=self._now_ms(),
            last_login_ms=None,
        )
        await self._run(self._insert_user_blocking, user, password_hash)
        log.info("user created username=%s roles=%s", username, ",".join(sorted(role_set)))
        return user

    async def get(self, username: str) -> User | None:
        """The user called ``username``, or ``None``."""
        if not isinstance(username, str) or not _USERNAME_RE.fullmatch(username):
            return None
        return await self._run(self._get_blocking, username)

    async def list_users(self) -> list[User]:
        """Every user, by name."""
        return await self._run(self._list_blocking)

    async def set_password(
        self, username: str, new_password: str, *, must_change: bool = False
    ) -> None:
        """Set a new password and end every session of the user."""
        validate_password(new_password, username=username)
        password_hash = await self._hash(new_password)
        await self._run(
            self._set_password_blocking, username, password_hash, must_change, self._now_ms()
        )
        log.info("password set username=%s must_change=%s", username, must_change)

    async def change_password(
        self, username: str, old_password: str, new_password: str, *, source: str
    ) -> LoginResult:
        """A user's own password change: checks ``old_password`` like a login (same lock-out).

        Returns the check's result; the password changed only when ``result.ok``. Raises
        :class:`AccountError` when the new password is refused.
        """
        validate_password(new_password, username=username)
        if new_password == old_password:
            raise AccountError("the new password must differ from the old one")
        result = await self._check_credentials(username, old_password, source=source, login=False)
        if result.ok:
            await self.set_password(username, new_password, must_change=False)
        return result

    async def set_roles(self, username: str, roles: Iterable[str]) -> User:
        """Replace the roles of a user; returns the updated user."""
        role_set = validate_roles(roles)
        user = await self._run(self._set_roles_blocking, username, role_set)
        log.info("roles set username=%s roles=%s", username, ",".join(sorted(role_set)))
        return user

    async def set_disabled(self, username: str, disabled: bool) -> User:
        """Disable (ending every session) or enable a user; returns the updated user."""
        user = await self._run(self._set_disabled_blocking, username, disabled)
        log.info("user %s username=%s", "disabled" if disabled else "enabled", username)
        return user

    async def set_language(self, username: str, language: str) -> User:
        """Set a user's UI language; returns the updated user."""
        validate_language(language)
        return await self._run(self._set_column_blocking, username, "language", language)

    async def set_display_name(self, username: str, display_name: str) -> User:
        """Set a user's display name; returns the updated user."""
        name = validate_display_name(display_name)
        return await self._run(self._set_column_blocking, username, "display_name", name)

    # login --------------------------------------------------------------------------------------

    async def login(self, username: str, password: str, *, source: str) -> LoginResult:
        """Check a username and password from ``source`` (the client's address)."""
        return await self._check_credentials(username, password, source=source, login=True)

    async def _check_credentials(
        self, username: str, password: str, *, source: str, login: bool
    ) -> LoginResult:
        name = username.strip().lower()[:64] if isinstance(username, str) else ""
        keys = self._failure_keys(name, source)
        now = self._now_ms()
        retry_after_ms = await self._run(self._reserve_attempt_blocking, keys, now)
        if retry_after_ms > 0:
            log.info("login refused: locked username=%s source=%s", _loggable(name), source)
            return LoginResult(False, None, "locked", retry_after_ms / 1000)
        record = None
        if _USERNAME_RE.fullmatch(name):
            record = await self._run(self._hash_of_blocking, name)
        password_ok = False
        if isinstance(password, str) and len(password) <= MAX_PASSWORD_LENGTH:
            password_ok = await self._verify(record[0] if record else self._dummy_hash, password)
        if record is None or not password_ok:
            # the attempt stays counted; a lock it triggered is reported on the next attempt,
            # so this answer looks the same whether or not the username exists
            log.info("login failed username=%s source=%s", _loggable(name), source)
            return LoginResult(False, None, "bad_credentials")
        password_hash, user = record
        await self._run(self._release_attempt_blocking, keys)
        if user.disabled:
            log.info("login refused: disabled username=%s source=%s", name, source)
            return LoginResult(False, None, "disabled")
        if login:
            user = await self._run(self._record_login_blocking, name, self._now_ms())
            log.info("login username=%s source=%s", name, source)
        if self._hasher.check_needs_rehash(password_hash):
            # parameters were raised since this hash was made: upgrade it while we know the password
            new_hash = await self._hash(password)
            await self._run(self._replace_hash_blocking, name, password_hash, new_hash)
        return LoginResult(True, user, "ok")

    def _failure_keys(self, name: str, source: str) -> list[tuple[str, int]]:
        keys = [("user:" + name, self._limits.max_failures)]
        if source:
            keys.append(("ip:" + source[:64], self._limits.max_source_failures))
        return keys

    # sessions -----------------------------------------------------------------------------------

    async def create_session(self, username: str) -> Session:
        """A new session for an existing, enabled user (call after a successful login)."""
        now = self._now_ms()
        session = Session(
            id=secrets.token_urlsafe(32),
            username=username,
            csrf_token=secrets.token_urlsafe(32),
            created_ms=now,
            expires_ms=now + self._limits.session_ttl_ms,
            last_seen_ms=now,
        )
        await self._run(self._insert_session_blocking, session)
        return session

    async def session(self, session_id: str) -> Session | None:
        """The live session with that id (its idle timer restarted), or ``None``.

        An expired session is deleted and reads as ``None``.
        """
        found = await self.session_user(session_id)
        return found[0] if found else None

    async def session_user(self, session_id: str) -> tuple[Session, User] | None:
        """The live session with that id and its (enabled) user, in one database round trip."""
        if not isinstance(session_id, str) or not _OPAQUE_RE.fullmatch(session_id):
            return None
        return await self._run(self._session_blocking, session_id, self._now_ms())

    async def delete_session(self, session_id: str) -> None:
        """End a session (logout); unknown ids are ignored."""
        if isinstance(session_id, str) and _OPAQUE_RE.fullmatch(session_id):
            await self._run(self._delete_session_blocking, _sha256(session_id))

    async def delete_sessions(self, username: str) -> int:
        """End every session of a user; returns how many there were."""
        return await self._run(self._delete_sessions_blocking, username)

    # API tokens ---------------------------------------------------------------------------------

    async def create_api_token(self, username: str, label: str) -> str:
        """A new API token for ``username``; returned once, stored only as its SHA-256."""
        label = label.strip() if isinstance(label, str) else ""
        if not label or len(label) > MAX_TOKEN_LABEL or not label.isprintable():
            raise AccountError(f"label must be 1-{MAX_TOKEN_LABEL} printable characters")
        token = API_TOKEN_PREFIX + secrets.token_urlsafe(32)
        await self._run(self._insert_token_blocking, username, label, token, self._now_ms())
        log.info("api token created username=%s token_id=%s", username, api_token_id(token))
        return token

    async def list_api_tokens(self, username: str) -> list[ApiToken]:
        """The API tokens of a user (ids and labels, never the tokens)."""
        return await self._run(self._list_tokens_blocking, username)

    async def revoke_api_token(self, username: str, token_id: str) -> bool:
        """Delete one of a user's tokens by its id; ``False`` when there is no such token."""
        if not isinstance(token_id, str) or not _TOKEN_ID_RE.fullmatch(token_id):
            return False
        revoked = await self._run(self._revoke_token_blocking, username, token_id)
        if revoked:
            log.info("api token revoked username=%s token_id=%s", username, token_id)
        return revoked

    async def user_for_api_token(self, token: str) -> User | None:
        """The enabled user owning ``token``, or ``None``."""
        if not isinstance(token, str) or not token.startswith(API_TOKEN_PREFIX):
            return None
        if not _OPAQUE_RE.fullmatch(token[len(API_TOKEN_PREFIX) :]):
            return None
        return await self._run(self._token_user_blocking, _sha256(token), self._now_ms())

    # plumbing -----------------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._thread.run(fn, *args)

    async def _hash(self, password: str) -> str:
        async with self._hash_slots:
            return await asyncio.to_thread(self._hasher.hash, password)

    async def _verify(self, password_hash: str, password: str) -> bool:
        def verify() -> bool:
            try:
                return self._hasher.verify(password_hash, password)
            except (VerificationError, InvalidHashError):
                return False

        async with self._hash_slots:
            return await asyncio.to_thread(verify)

    # blocking side (database thread only) -------------------------------------------------------

    def _open_blocking(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # create the file private before SQLite does: it holds password hashes, and SQLite gives
        # its -wal and -shm files the mode of the database file
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=5000")
            db.execute("PRAGMA foreign_keys=ON")
            db.executescript(_SCHEMA)
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path}: schema version {version}, expected {SCHEMA_VERSION}"
                )
        except BaseException:
            db.close()
            raise
        self._db = db

    def _close_blocking(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("account store is not open")
        return self._db

    def _count_users_blocking(self) -> int:
        count: int = self._conn().execute("SELECT COUNT(*) FROM users").fetchone()[0]
        return count

    def _insert_first_admin_blocking(self, username: str, password_hash: str, now: int) -> bool:
        db = self._conn()
        with _transaction(db):
            if db.execute("SELECT COUNT(*) FROM users").fetchone()[0] > 0:
                return False  # another process created a user meanwhile
            user = User(
                username=username,
                display_name="系统管理员",
                roles=frozenset({"admin"}),
                language=DEFAULT_LANGUAGE,
                disabled=False,
                must_change_password=True,
                created_ms=now,
                last_login_ms=None,
            )
            _insert_user(db, user, password_hash, must_change=True, now=now)
        return True

    def _insert_user_blocking(self, user: User, password_hash: str) -> None:
        try:
            _insert_user(
                self._conn(),
                user,
                password_hash,
                must_change=user.must_change_password,
                now=user.created_ms,
            )
        except sqlite3.IntegrityError:
            raise UserExistsError(f"user {user.username} exists already") from None

    def _get_blocking(self, username: str) -> User | None:
        row = (
            self._conn()
            .execute(f"SELECT {_USER_COLUMNS} FROM users WHERE username = ?", (username,))
            .fetchone()
        )
        return _user_from_row(row) if row else None

    def _require_blocking(self, username: str) -> User:
        user = self._get_blocking(username)
        if user is None:
            raise UnknownUserError(f"no user called {username[:64]}")
        return user

    def _list_blocking(self) -> list[User]:
        rows = self._conn().execute(f"SELECT {_USER_COLUMNS} FROM users ORDER BY username")
        return [_user_from_row(r) for r in rows]

    def _hash_of_blocking(self, username: str) -> tuple[str, User] | None:
        row = (
            self._conn()
            .execute(
                f"SELECT password_hash, {_USER_COLUMNS} FROM users WHERE username = ?", (username,)
            )
            .fetchone()
        )
        return (row[0], _user_from_row(row[1:])) if row else None

    def _set_password_blocking(
        self, username: str, password_hash: str, must_change: bool, now: int
    ) -> None:
        db = self._conn()
        with _transaction(db):
            self._require_blocking(username)
            db.execute(
                "UPDATE users SET password_hash = ?, must_change_password = ?,"
                " password_changed_ms = ? WHERE username = ?",
                (password_hash, int(must_change), now, username),
            )
            db.execute("DELETE FROM sessions WHERE username = ?", (username,))

    def _replace_hash_blocking(self, username: str, old_hash: str, new_hash: str) -> None:
        # only if unchanged meanwhile: never overwrite a password set since the login began
        self._conn().execute(
            "UPDATE users SET password_hash = ? WHERE username = ? AND password_hash = ?",
            (new_hash, username, old_hash),
        )

    def _set_roles_blocking(self, username: str, roles: frozenset[str]) -> User:
        db = self._conn()
        with _transaction(db):
            user = self._require_blocking(username)
            if "admin" in user.roles and "admin" not in roles and not user.disabled:
                self._refuse_last_admin_blocking(username, "lose the admin role")
            db.execute(
                "UPDATE users SET roles = ? WHERE username = ?", (_roles_text(roles), username)
            )
            return self._require_blocking(username)

    def _set_disabled_blocking(self, username: str, disabled: bool) -> User:
        db = self._conn()
        with _transaction(db):
            user = self._require_blocking(username)
            if disabled and "admin" in user.roles and not user.disabled:
                self._refuse_last_admin_blocking(username, "be disabled")
            db.execute(
                "UPDATE users SET disabled = ? WHERE username = ?", (int(disabled), username)
            )
            if disabled:
                db.execute("DELETE FROM sessions WHERE username = ?", (username,))
            return self._require_blocking(username)

    def _refuse_last_admin_blocking(self, username: str, what: str) -> None:
        others = 0
        for (roles,) in self._conn().execute(
            "SELECT roles FROM users WHERE disabled = 0 AND username != ?", (username,)
        ):
            others += "admin" in json.loads(roles)
        if others == 0:
            raise AccountError(f"{username} is the last enabled admin and cannot {what}")

    def _set_column_blocking(self, username: str, column: str, value: str) -> User:
        if column not in ("language", "display_name"):
            raise ValueError(column)  # column names are never user input; guard anyway
        db = self._conn()
        with _transaction(db):
            self._require_blocking(username)
            db.execute(f"UPDATE users SET {column} = ? WHERE username = ?", (value, username))
            return self._require_blocking(username)

    def _record_login_blocking(self, username: str, now: int) -> User:
        db = self._conn()
        db.execute("UPDATE users SET last_login_ms = ? WHERE username = ?", (now, username))
        return self._require_blocking(username)

    # lock-out

    def _reserve_attempt_blocking(self, keys: list[tuple[str, int]], now: int) -> int:
        """Count one attempt against every key unless one is locked (then: ms until unlocked).

        Counting before the password check means N parallel guesses cost N attempts.
        """
        db = self._conn()
        limits = self._limits
        with _transaction(db):
            db.execute(
                "DELETE FROM login_failures WHERE locked_until_ms <= ? AND window_start_ms <= ?",
                (now, now - limits.failure_window_ms),
            )
            rows = {}
            for key, _ in keys:
                row = db.execute(
                    "SELECT failures, window_start_ms, locked_until_ms FROM login_failures"
                    " WHERE key = ?",
                    (key,),
                ).fetchone()
                if row and row[2] > now:
                    return int(row[2] - now)
                if row and (row[2] > 0 or now - row[1] >= limits.failure_window_ms):
                    row = None  # lock served or window over: start afresh
                rows[key] = row
            for key, limit in keys:
                row = rows[key]
                failures = (row[0] if row else 0) + 1
                window_start = row[1] if row else now
                locked_until = now + limits.lockout_ms if failures >= limit else 0
                db.execute(
                    "INSERT OR REPLACE INTO login_failures VALUES (?, ?, ?, ?)",
                    (key, failures, window_start, locked_until),
                )
                if locked_until:
                    log.warning(
                        "login locked key=%s failures=%d lockout_s=%g",
                        key.split(":", 1)[0],
                        failures,
                        limits.lockout_ms / 1000,
                    )
        return 0

    def _release_attempt_blocking(self, keys: list[tuple[str, int]]) -> None:
        """Undo the reservation of a successful attempt.

        The username's count is cleared; the source's is only decremented, so that signing in
        to one's own account does not reset the count of guesses against other accounts.
        """
        db = self._conn()
        with _transaction(db):
            for key, limit in keys:
                if key.startswith("user:"):
                    db.execute("DELETE FROM login_failures WHERE key = ?", (key,))
                    continue
                db.execute(
                    "UPDATE login_failures SET failures = MAX(failures - 1, 0),"
                    " locked_until_ms = CASE WHEN failures - 1 < ? THEN 0 ELSE locked_until_ms END"
                    " WHERE key = ?",
                    (limit, key),
                )

    # sessions

    def _insert_session_blocking(self, session: Session) -> None:
        db = self._conn()
        with _transaction(db):
            user = self._require_blocking(session.username)
            if user.disabled:
                raise AccountError(f"user {session.username} is disabled")
            limits = self._limits
            db.execute(
                "DELETE FROM sessions WHERE expires_ms <= ? OR last_seen_ms <= ?",
                (session.created_ms, session.created_ms - limits.idle_timeout_ms),
            )
            db.execute(
                "INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?)",
                (
                    _sha256(session.id),
                    session.username,
                    session.csrf_token,
                    session.created_ms,
                    session.expires_ms,
                    session.last_seen_ms,
                ),
            )

    def _session_blocking(self, session_id: str, now: int) -> tuple[Session, User] | None:
        db = self._conn()
        id_hash = _sha256(session_id)
        row = db.execute(
            "SELECT s.username, s.csrf_token, s.created_ms, s.expires_ms, s.last_seen_ms,"
            f" {_qualified_user_columns('u')} FROM sessions s JOIN users u USING (username)"
            " WHERE s.id_hash = ?",
            (id_hash,),
        ).fetchone()
        if row is None:
            return None
        username, csrf, created, expires, last_seen = row[:5]
        user = _user_from_row(row[5:])
        if now >= expires or now - last_seen >= self._limits.idle_timeout_ms or user.disabled:
            db.execute("DELETE FROM sessions WHERE id_hash = ?", (id_hash,))
            return None
        if now - last_seen >= SESSION_TOUCH_MS:
            db.execute("UPDATE sessions SET last_seen_ms = ? WHERE id_hash = ?", (now, id_hash))
            last_seen = now
        return Session(session_id, username, csrf, created, expires, last_seen), user

    def _delete_session_blocking(self, id_hash: str) -> None:
        self._conn().execute("DELETE FROM sessions WHERE id_hash = ?", (id_hash,))

    def _delete_sessions_blocking(self, username: str) -> int:
        cursor = self._conn().execute("DELETE FROM sessions WHERE username = ?", (username,))
        return cursor.rowcount

    # API tokens

    def _insert_token_blocking(self, username: str, label: str, token: str, now: int) -> None:
        db = self._conn()
        with _transaction(db):
            self._require_blocking(username)
            db.execute(
                "INSERT INTO api_tokens VALUES (?, ?, ?, ?, ?, NULL)",
                (api_token_id(token), _sha256(token), username, label, now),
            )

    def _list_tokens_blocking(self, username: str) -> list[ApiToken]:
        rows = self._conn().execute(
            "SELECT id, username, label, created_ms, last_used_ms FROM api_tokens"
            " WHERE username = ? ORDER BY created_ms, id",
            (username,),
        )
        return [ApiToken(*r) for r in rows]

    def _revoke_token_blocking(self, username: str, token_id: str) -> bool:
        cursor = self._conn().execute(
            "DELETE FROM api_tokens WHERE id = ? AND username = ?", (token_id, username)
        )
        return cursor.rowcount > 0

    def _token_user_blocking(self, token_hash: str, now: int) -> User | None:
        db = self._conn()
        row = db.execute(
            f"SELECT t.id, t.last_used_ms, {_qualified_user_columns('u')}"
            " FROM api_tokens t JOIN users u USING (username) WHERE t.token_hash = ?",
            (token_hash,),
        ).fetchone()
        if row is None:
            return None
        user = _user_from_row(row[2:])
        if user.disabled:
            return None
        if row[1] is None or now - row[1] >= TOKEN_TOUCH_MS:
            db.execute("UPDATE api_tokens SET last_used_ms = ? WHERE id = ?", (now, row[0]))
        return user


# rows -------------------------------------------------------------------------------------------

_USER_FIELDS: Final = (
    "username",
    "display_name",
    "roles",
    "language",
    "disabled",
    "must_change_password",
    "created_ms",
    "last_login_ms",
)
_USER_COLUMNS: Final = ", ".join(_USER_FIELDS)


def _qualified_user_columns(alias: str) -> str:
    return ", ".join(f"{alias}.{c}" for c in _USER_FIELDS)


def _roles_text(roles: Iterable[str]) -> str:
    return json.dumps(sorted(roles))


def _user_from_row(row: tuple[Any, ...] | sqlite3.Row) -> User:
    return User(
        username=row[0],
        display_name=row[1],
        roles=frozenset(json.loads(row[2])),
        language=row[3],
        disabled=bool(row[4]),
        must_change_password=bool(row[5]),
        created_ms=row[6],
        last_login_ms=row[7],
    )


def _insert_user(
    db: sqlite3.Connection, user: User, password_hash: str, *, must_change: bool, now: int
) -> None:
    db.execute(
        "INSERT INTO users (username, display_name, roles, language, password_hash, disabled,"
        " must_change_password, created_ms, last_login_ms, password_changed_ms)"
        " VALUES (?, ?, ?, ?, ?, 0, ?, ?, NULL, ?)",
        (
            user.username,
            user.display_name,
            _roles_text(user.roles),
            user.language,
            password_hash,
            int(must_change),
            now,
            now,
        ),
    )


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on error) on an autocommit connection.

    IMMEDIATE takes the write lock up front, so a read-then-write cannot interleave with another
    process's write (the hub and ``courthub users`` share the file).
    """
    if db.in_transaction:  # nested use within one blocking call
        yield
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
