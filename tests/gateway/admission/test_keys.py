"""``KeyRing`` and ``AuthConfig``: parsing, digest lookup, the admin key, no leaked secrets."""

from __future__ import annotations

import hashlib

import pytest
from pydantic import ValidationError

from config.auth import AuthConfig, KeyConfig
from gateway.admission.keys import Identity, KeyRing, presented_key
from gateway.admission.store import Limits

SECRET = "sk-test-secret-0123456789"
OTHER = "sk-other-secret-9876543210"
ADMIN = "sk-admin-secret-5555"


def _config() -> AuthConfig:
    return AuthConfig.model_validate(
        {
            "keys": [
                {"name": "alice", "key": SECRET, "models": ["fake"], "rpm": 60, "tpm": 1000},
                {"name": "bob", "key_sha256": hashlib.sha256(OTHER.encode()).hexdigest().upper()},
            ],
            "admin_key": ADMIN,
        }
    )


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Authorization": f"Bearer {SECRET}"}, SECRET),
        ({"authorization": f"bearer   {SECRET}  "}, SECRET),
        ({"X-Api-Key": SECRET}, SECRET),
        ({"Authorization": "Basic abc", "x-api-key": SECRET}, SECRET),
        ({"Authorization": "Bearer "}, None),
        ({"x-api-key": "  "}, None),
        ({}, None),
    ],
)
def test_presented_key(headers: dict[str, str], expected: str | None) -> None:
    assert presented_key(headers) == expected


def test_keys_are_found_by_digest() -> None:
    ring = KeyRing(_config())
    alice = ring.authenticate({"Authorization": f"Bearer {SECRET}"})
    assert alice == Identity("alice", frozenset({"fake"}), Limits(rpm=60, tpm=1000))
    assert alice.allows("fake")
    assert not alice.allows("gpt-4o")
    bob = ring.authenticate({"x-api-key": OTHER})
    assert bob is not None
    assert bob.name == "bob"
    assert bob.allows("anything")
    assert ring.enabled
    assert len(ring) == 2


@pytest.mark.parametrize("wrong", [SECRET + "x", SECRET[:-1], ADMIN, "", "Bearer"])
def test_wrong_keys_are_refused(wrong: str) -> None:
    ring = KeyRing(_config())
    assert ring.identify(wrong) is None
    assert ring.authenticate({"Authorization": f"Bearer {wrong}"}) is None


def test_admin_key() -> None:
    ring = KeyRing(_config())
    assert ring.is_admin({"Authorization": f"Bearer {ADMIN}"})
    assert not ring.is_admin({"Authorization": f"Bearer {SECRET}"})
    assert not ring.is_admin({})
    no_admin = KeyRing(AuthConfig())
    assert not no_admin.is_admin({"Authorization": f"Bearer {ADMIN}"})
    assert not no_admin.enabled


def test_no_object_shows_a_key() -> None:
    config = _config()
    ring = KeyRing(config)
    identity = ring.identify(SECRET)
    for thing in (config, *config.keys, config.admin_key, ring, identity, vars(ring)):
        for text in (repr(thing), str(thing)):
            assert SECRET not in text
            assert ADMIN not in text
    assert "alice" in repr(ring)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (
            [{"name": "a", "key": "s3cret-k1"}, {"name": "a", "key": "s3cret-k2"}],
            "duplicate key name 'a'",
        ),
        (
            [
                {"name": "a", "key": "s3cret-k1"},
                {"name": "b", "key_sha256": hashlib.sha256(b"s3cret-k1").hexdigest()},
            ],
            "keys 'a' and 'b' have the same secret",
        ),
        ([{"name": "a", "key": "s3cret-k1", "key_sha256": "0" * 64}], "exactly one"),
        ([{"name": "a"}], "exactly one"),
        ([{"name": "a", "key_sha256": "xyz"}], "64 hex characters"),
        ([{"name": "a", "key": "s3cret-k1", "rpm": 0}], "greater than or equal to 1"),
        ([{"name": "a", "key": "s3cret-k1", "budget": 5}], "Extra inputs are not permitted"),
        ([{"name": "a b", "key": "s3cret-k1"}], "String should match pattern"),
    ],
)
def test_invalid_auth_config(entries: list[dict[str, object]], message: str) -> None:
    with pytest.raises(ValidationError, match=message) as caught:
        AuthConfig.model_validate({"keys": entries})
    assert "s3cret-k1" not in str(caught.value).replace("'k1'", "") or "key" not in message


def test_admin_key_must_differ_from_client_keys() -> None:
    with pytest.raises(ValidationError, match="admin_key must differ"):
        AuthConfig.model_validate(
            {"keys": [{"name": "a", "key": "s3cret-k1"}], "admin_key": "s3cret-k1"}
        )


def test_digest_is_the_same_either_way() -> None:
    clear = KeyConfig(name="a", key=SECRET)  # type: ignore[arg-type]
    hashed = KeyConfig(name="a", key_sha256=hashlib.sha256(SECRET.encode()).hexdigest())
    assert clear.digest() == hashed.digest()
