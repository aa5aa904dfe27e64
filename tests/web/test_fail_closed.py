"""The users file fails closed, logins are throttled and timed alike, log lines stay single, files stay private."""

from __future__ import annotations

import logging
import os
import stat
import time

import pytest

from web.auth import MARKER_NAME, LoginThrottle, UserDirectory, UsersUnavailable, client_address
from web.logs import OneLineFormatter
from web.private import make_private


def test_no_users_ever_is_single_user(tmp_path):
    users = UserDirectory(tmp_path / "users.toml")
    assert users.single_user
    (tmp_path / "users.toml").write_text("")  # an empty file in a fresh data dir: still single-user
    assert users.single_user and not (tmp_path / MARKER_NAME).exists()


@pytest.mark.parametrize("damage", ["removed", "emptied", "no users", "garbled", "bad role"])
def test_once_users_existed_a_damaged_file_never_opens_up(tmp_path, damage, caplog):
    path = tmp_path / "users.toml"
    users = UserDirectory(path)
    users.add_user("ann", "ann-password", "admin")
    assert (tmp_path / MARKER_NAME).exists() and not users.single_user
    {"removed": lambda: path.unlink(), "emptied": lambda: path.write_text(""),
     "no users": lambda: path.write_text("[users]\n"), "garbled": lambda: path.write_text("[users.ann\n"),
     "bad role": lambda: path.write_text('[users.ann]\nrole = "root"\n')}[damage]()
    fresh = UserDirectory(path)  # as a restarted app sees it, too
    for directory in (users, fresh):
        with pytest.raises(UsersUnavailable, match="users file"):
            assert directory.single_user is None  # raises first
        with pytest.raises(UsersUnavailable):
            directory.check_password("ann", "ann-password")
        with pytest.raises(UsersUnavailable):
            directory.by_token("tl-anything")
    errors = [r for r in caplog.records if r.levelname == "ERROR" and "users file" in r.getMessage()]
    assert len(errors) == 2  # one line per directory and failure, not one per request


def test_users_add_restores_a_lost_file_but_not_a_corrupt_one(tmp_path):
    path = tmp_path / "users.toml"
    users = UserDirectory(path)
    users.add_user("ann", "ann-password", "admin")
    path.unlink()
    users.add_user("ann", "ann-password-2", "admin")
    assert users.check_password("ann", "ann-password-2")
    path.write_text("[users.ann\n")
    from web.auth import AuthError

    with pytest.raises(AuthError, match="fix or move"):
        users.add_user("bob", "bob-password", "user")


def test_an_unparseable_file_fails_closed_even_without_the_marker(tmp_path):
    (tmp_path / "users.toml").write_text("[users.ann\nrole=")
    with pytest.raises(UsersUnavailable):
        assert UserDirectory(tmp_path / "users.toml").single_user is None  # raises first


def test_login_throttle_per_name_and_per_address():
    now = [0.0]
    t = LoginThrottle(per_user=3, per_address=5, window_s=60, clock=lambda: now[0])
    for _ in range(3):
        assert t.blocked("ann", "10.0.0.1") is None
        t.record_failure("ann", "10.0.0.1")
    assert t.blocked("ann", "10.0.0.2") == "user"  # a new address does not help the guesser
    assert t.blocked("bob", "10.0.0.1") is None
    t.record_failure("bob", "10.0.0.1")
    t.record_failure("cid", "10.0.0.1")
    assert t.blocked("dan", "10.0.0.1") == "address"  # five names from one address
    assert t.blocked("dan", "10.0.0.3") is None
    now[0] = 61
    assert t.blocked("ann", "10.0.0.1") is None  # the window slid past


def test_throttle_memory_is_bounded():
    t = LoginThrottle(max_keys=100)
    for i in range(10_000):
        t.record_failure(f"name-{i}", f"10.0.{i // 256}.{i % 256}")
    assert len(t._failures) <= 100


def test_a_locked_out_name_is_refused_even_with_its_password(tmp_path):
    users = UserDirectory(tmp_path / "users.toml", throttle=LoginThrottle(per_user=2, per_address=100))
    users.add_user("ann", "ann-password", "user")
    token = client_address.set("192.0.2.7")
    try:
        assert not users.check_password("ann", "wrong-1") and not users.check_password("ann", "wrong-2")
        assert not users.check_password("ann", "ann-password")
    finally:
        client_address.reset(token)


def test_unknown_names_take_as_long_as_known_ones(tmp_path):
    """Login timing must not tell which names exist: an unknown name still costs one scrypt (~50 ms);
    a fast path would answer in microseconds, so a 3x margin separates the two without being flaky."""
    users = UserDirectory(tmp_path / "users.toml", throttle=LoginThrottle(per_user=1000, per_address=1000))
    users.add_user("ann", "ann-password", "user")
    users.check_password("nobody", "x")  # the dummy hash is made once

    def median(name):
        times = []
        for _ in range(5):
            start = time.perf_counter()
            assert not users.check_password(name, "wrong-password")
            times.append(time.perf_counter() - start)
        return sorted(times)[2]

    known, unknown = median("ann"), median("nobody-by-that-name")
    assert unknown > known / 3, (known, unknown)


def test_a_newline_in_a_logged_id_cannot_forge_a_line():
    formatter = OneLineFormatter("%(levelname)s %(name)s: %(message)s")
    record = logging.LogRecord("web.chat", logging.INFO, __file__, 1, "turn stored conversation=%s user=%s",
                               ("c1\n2026-01-01 INFO web.auth: login ok user=admin", "ann\r\x1b[2J\u2028"), None)
    line = formatter.format(record)
    assert "\n" not in line and "\r" not in line and "\x1b" not in line and "\u2028" not in line
    assert "c1\\n2026-01-01" in line


def test_make_private_takes_group_and_other_access_away(tmp_path):
    old = os.umask(0o022)
    try:
        data = tmp_path / "data"
        (data / "adapters" / "v1").mkdir(parents=True)
        (data / "adapters" / "v1" / "weights.safetensors").write_bytes(b"x")
        (data / "tuneloop.duckdb.wal").write_bytes(b"x")
        (data / "link").symlink_to("/etc/passwd")
        passwd_mode = os.stat("/etc/passwd").st_mode
        make_private(data)
        assert os.umask(0o022) == 0o077
        (data / "new-file").write_bytes(b"made after")  # the umask was 022 again here; see the line above
        for p in [data, *data.rglob("*")]:
            if p.is_symlink() or p.name == "new-file":
                continue
            assert stat.S_IMODE(p.stat().st_mode) & 0o077 == 0, p
        assert os.stat("/etc/passwd").st_mode == passwd_mode
    finally:
        os.umask(old)
