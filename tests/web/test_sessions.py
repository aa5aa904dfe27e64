"""SessionOwners: the first user of a UI session hash owns it; a bounded memory of hashes."""

from __future__ import annotations

from web.sessions import SessionOwners


def test_the_first_user_of_a_hash_owns_it():
    owners = SessionOwners()
    assert owners.claim("h1", "bob") and owners.claim("h1", "bob")
    assert not owners.claim("h1", "alice")
    assert owners.owner("h1") == "bob" and owners.owner("h2") is None


def test_the_least_recently_used_hash_is_forgotten_first():
    owners = SessionOwners(limit=2)
    owners.claim("old", "bob")
    owners.claim("kept", "bob")
    owners.claim("kept", "bob")
    owners.claim("new", "alice")
    assert owners.owner("old") is None and owners.owner("kept") == "bob" and owners.owner("new") == "alice"
