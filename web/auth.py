"""Users, roles and API tokens, kept in a small TOML file beside the data (``settings.users_path``).

Passwords and tokens are stored only as hashes. scrypt from the standard library is a memory-hard KDF
that needs no extra dependency; tokens are random 256-bit values, so a plain SHA-256 of them suffices.
With no users configured the app runs in single-user local mode as one admin named ``local``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Role = Literal["user", "admin"]
LOCAL_USER = "local"
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


class UserDirectory:
    """The users file, read at start and re-read when it changes (so CLI edits apply without a restart)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._users: dict[str, dict] = {}
        self._reload()

    def _reload(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            self._users, self._mtime = {}, None
            return
        if mtime != self._mtime:
            data = tomllib.loads(self.path.read_text())
            self._users, self._mtime = dict(data.get("users", {})), mtime

    def _current(self) -> dict[str, dict]:
        with self._lock:
            self._reload()
            return self._users

    @property
    def single_user(self) -> bool:
        return not self._current()

    def names(self) -> list[str]:
        return sorted(self._current())

    def check_password(self, name: str, password: str) -> bool:
        user = self._current().get(name)
        return bool(user) and verify_password(password, user.get("password_hash", ""))

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
        self._mtime = None

    def add_user(self, name: str, password: str, role: Role = "user") -> None:
        if not name or set(name) - _NAME_OK or name == LOCAL_USER:
            raise AuthError(f"invalid user name {name!r}: use letters, digits, '.', '_', '-', '@'")
        if role not in ("user", "admin"):
            raise AuthError(f"invalid role {role!r}: use 'user' or 'admin'")
        if len(password) < 8:
            raise AuthError("password must have at least 8 characters")
        with self._lock:
            self._reload()
            users = dict(self._users)
            old = users.get(name, {})
            users[name] = {"role": role, "password_hash": hash_password(password), "tokens": old.get("tokens", [])}
            self._write(users)

    def create_token(self, name: str) -> str:
        """A new API token for ``name``; only its hash is stored, so it is shown once."""
        token = "tl-" + secrets.token_urlsafe(32)
        with self._lock:
            self._reload()
            users = dict(self._users)
            if name not in users:
                raise AuthError(f"unknown user {name!r}")
            users[name] = {**users[name], "tokens": [*users[name].get("tokens", []), _token_hash(token)]}
            self._write(users)
        return token
