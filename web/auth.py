"""Users, roles and API tokens, kept in a small TOML file beside the data (``settings.users_path``).

Passwords and tokens are stored only as hashes. scrypt from the standard library is a memory-hard KDF
that needs no extra dependency; tokens are random 256-bit values, so a plain SHA-256 of them suffices.
With no users configured the app runs in single-user local mode as one admin named ``local``.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
import tomllib
from collections import deque
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

Role = Literal["user", "admin"]
LOCAL_USER = "local"
MARKER_NAME = "users.required"  # beside the users file: once users existed, never fall back to single-user
_NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@")


class AuthError(Exception):
    """A user-management request that cannot be done (bad name, unknown user, bad role)."""


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    salt = salt or os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1)
    return f"scrypt${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, salt_hex, digest_hex = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    expected = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt_hex), n=2**14, r=8, p=1)
    return hmac.compare_digest(expected.hex(), digest_hex)


@functools.cache
def _dummy_hash() -> str:
    return hash_password(secrets.token_hex(16))


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _dump_toml(users: dict[str, dict]) -> str:
    # The file has one fixed shape, so writing it by hand avoids a TOML-writer dependency.
    lines = ["# Tuneloop users: managed by `python app.py users ...`; holds hashes only.", ""]
    for name, u in sorted(users.items()):
        lines.append(f'[users."{name}"]')
        lines.append(f'role = "{u["role"]}"')
        lines.append(f'password_hash = "{u.get("password_hash", "")}"')
        tokens = ", ".join(f'"{t}"' for t in u.get("tokens", []))
        lines.append(f"tokens = [{tokens}]")
        lines.append("")
    return "\n".join(lines)


class UsersUnavailable(Exception):
    """Users have existed here, but the users file is missing, unreadable or empty: refuse, never open up."""


class LoginThrottle:
    """Failed logins per user name and per client address in a sliding window; over the limit, refused.

    Bounded memory: at most ``max_keys`` names and addresses are tracked (the oldest are dropped), so a
    flood of made-up names cannot grow it without end.
    """

    def __init__(self, per_user: int = 5, per_address: int = 20, window_s: float = 300.0, max_keys: int = 10_000,
                 clock=time.monotonic):
        self.per_user, self.per_address, self.window_s = per_user, per_address, window_s
        self.max_keys, self.clock = max_keys, clock
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        q = self._failures.get(key)
        if q is None:
            return deque()
        while q and q[0] <= now - self.window_s:
            q.popleft()
        if not q:
            del self._failures[key]
        return q

    def blocked(self, name: str, address: str | None) -> str | None:
        """Why a login is refused now without checking the password (None: it may be checked)."""
        now = self.clock()
        with self._lock:
            if len(self._recent(("user", name), now)) >= self.per_user:
                return "user"
            if address and len(self._recent(("address", address), now)) >= self.per_address:
                return "address"
        return None

    def record_failure(self, name: str, address: str | None) -> None:
        now = self.clock()
        with self._lock:
            for key in (("user", name), ("address", address or "")):
                self._failures.setdefault(key, deque()).append(now)
            while len(self._failures) > self.max_keys:
                self._failures.pop(next(iter(self._failures)))


# The address of the client whose request is being handled, set by web.guard for the login check
# (Gradio hands the auth function only a name and a password).
client_address: ContextVar[str | None] = ContextVar("tuneloop_client_address", default=None)


class UserDirectory:
    """The users file, read at start and re-read when it changes (so CLI edits apply without a restart).

    The mode is decided by the data dir, not by whether the file happens to be readable: the first time
    users exist a marker file is left beside it (``marker``), and from then on a missing, unreadable or
    empty users file raises ``UsersUnavailable`` (the web edge answers 503) instead of falling back to
    single-user mode, where everyone is admin.
    """

    def __init__(self, path: Path, marker: Path | None = None, throttle: LoginThrottle | None = None):
        self.path = Path(path)
        self.marker = Path(marker) if marker is not None else self.path.parent / MARKER_NAME
        self.throttle = throttle or LoginThrottle()
        self._lock = threading.Lock()
        self._key: tuple | None = None
        self._users: dict[str, dict] = {}
        self._error: str | None = None
        self._unreadable = False
        self._logged: str | None = None

    def _fail(self, why: str, unreadable: bool = False) -> None:
        self._unreadable = unreadable
        self._error = (f"users file {self.path} {why}, and users are configured for this data dir: refusing "
                       "requests until it is restored (`python app.py users add ...`)")
        if self._logged != self._error:  # one log line per distinct failure, not one per request
            log.error("%s", self._error)
            self._logged = self._error
        raise UsersUnavailable(self._error)

    def _reload(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._key, self._users = None, {}
            if self.marker.exists():
                self._fail("is missing")
            self._error = None
            return
        except OSError as exc:
            self._fail(f"cannot be read ({exc.strerror})", unreadable=True)
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        if key == self._key:
            if self._error:
                raise UsersUnavailable(self._error)
            return
        self._key = key
        try:
            data = tomllib.loads(self.path.read_text())
            users = {str(n): dict(u) for n, u in data.get("users", {}).items()}
            if any(u.get("role") not in ("user", "admin") for u in users.values()):
                raise ValueError("a user without a valid role")
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, ValueError, TypeError, AttributeError) as exc:
            self._users = {}
            self._fail(f"cannot be read ({type(exc).__name__})", unreadable=True)
        if not users and self.marker.exists():
            self._users = {}
            self._fail("lists no users")
        if users:
            self._mark()
        self._users, self._error, self._logged = users, None, None

    def _mark(self) -> None:
        """Leave the durable "users have existed" marker (best effort: failing to write it is logged)."""
        if self.marker.exists():
            return
        try:
            self.marker.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write("Users have been configured for this data dir, so Tuneloop refuses requests when the "
                        "users file is missing instead of running as an open single-user app.\n")
        except OSError as exc:
            log.warning("could not write %s: %s", self.marker, exc)

    def _current(self) -> dict[str, dict]:
        with self._lock:
            self._reload()
            return self._users

    @property
    def single_user(self) -> bool:
        """True only while no users exist and none ever did; raises ``UsersUnavailable`` (fail closed)."""
        return not self._current()

    def names(self) -> list[str]:
        return sorted(self._current())

    def check_password(self, name: str, password: str) -> bool:
        """The login check: throttled per name and per client address, and as slow for unknown names."""
        address = client_address.get()
        blocked = self.throttle.blocked(name, address)
        if blocked is not None:
            log.warning("login refused for user %r from %s: too many failed attempts (per %s)", name, address,
                        blocked)
            return False
        user = self._current().get(name)
        # An unknown name still costs one scrypt, so timing does not tell which names exist.
        ok = verify_password(password, user.get("password_hash", "") if user else _dummy_hash()) and user is not None
        if not ok:
            self.throttle.record_failure(name, address)
            log.info("login failed for user %r from %s", name, address)
        return ok

    def principal(self, name: str) -> Principal | None:
        if self.single_user and name == LOCAL_USER:
            return Principal(LOCAL_USER, "admin")
        user = self._current().get(name)
        return Principal(name, user["role"]) if user else None

    def by_token(self, token: str) -> Principal | None:
        digest = _token_hash(token)
        for name, user in self._current().items():
            if any(hmac.compare_digest(digest, t) for t in user.get("tokens", [])):
                return Principal(name, user["role"])
        return None

    # --- management (CLI) ---------------------------------------------------------------------
    def _write(self, users: dict[str, dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(_dump_toml(users))
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)
        self._key = None
        if users:
            self._mark()

    def _editable(self) -> dict[str, dict]:
        """The users to edit; a missing or empty file (even after users existed) starts afresh, a corrupt one not."""
        try:
            self._reload()
        except UsersUnavailable as exc:
            if self._unreadable:
                raise AuthError(f"{exc}; fix or move the file first") from None
            return {}
        return dict(self._users)

    def add_user(self, name: str, password: str, role: Role | None = None) -> Role:
        """Add ``name`` or set their password; returns the role saved.

        Without ``role`` an existing user keeps theirs and a new one is a "user": resetting an admin's
        password (``users add NAME``, as the login page advises) must not demote them.
        """
        if not name or set(name) - _NAME_OK or name == LOCAL_USER:
            raise AuthError(f"invalid user name {name!r}: use letters, digits, '.', '_', '-', '@'")
        if role is not None and role not in ("user", "admin"):
            raise AuthError(f"invalid role {role!r}: use 'user' or 'admin'")
        if len(password) < 8:
            raise AuthError("password must have at least 8 characters")
        with self._lock:
            users = self._editable()
            old = users.get(name, {})
            role = role or old.get("role", "user")
            users[name] = {"role": role, "password_hash": hash_password(password), "tokens": old.get("tokens", [])}
            self._write(users)
        return role

    def create_token(self, name: str) -> str:
        """A new API token for ``name``; only its hash is stored, so it is shown once."""
        token = "tl-" + secrets.token_urlsafe(32)
        with self._lock:
            users = self._editable()
            if name not in users:
                raise AuthError(f"unknown user {name!r}")
            users[name] = {**users[name], "tokens": [*users[name].get("tokens", []), _token_hash(token)]}
            self._write(users)
        return token


def users_directory(settings) -> UserDirectory:
    """The users of this data dir, with the marker in the data dir and the login limits from settings."""
    return UserDirectory(settings.users_path, marker=settings.data_dir / MARKER_NAME,
                         throttle=LoginThrottle(settings.login_max_failures, settings.login_max_failures_per_address,
                                                settings.login_window_s))
