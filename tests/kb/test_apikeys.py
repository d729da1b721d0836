"""Scoped API keys on both catalogs (SQLite, PostgreSQL): made, checked, listed, revoked, and
never stored."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from kb import apikeys
from kb.apikeys import ADMIN, EVERY_COLLECTION
from kb.context import Context
from kb.settings import Settings
from tests.conftest_services import create_database, drop_database

pytest_plugins = ["tests.conftest_services"]

API_KEY = "the-api-key-0123456789"
ADMIN_KEY = "the-admin-key-0123456789"


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    if request.param == "sqlite":
        yield Settings(_env_file=None, data_dir=tmp_path / "data")  # type: ignore[call-arg]
        return
    admin_url: str = request.getfixturevalue("postgres_admin_url")
    url = create_database(admin_url)
    try:
        yield Settings(_env_file=None, data_dir=tmp_path / "data", database_url=url)  # type: ignore[call-arg]
    finally:
        drop_database(admin_url, url)


@pytest.fixture
def ctx(settings: Settings) -> Iterator[Context]:
    c = Context(settings)
    try:
        yield c
    finally:
        c.close()


def scope_of(ctx: Context, key: str) -> apikeys.Scope | None:
    return apikeys.authenticate(ctx, key, api_key=API_KEY, admin_key=ADMIN_KEY)


def stored_text(ctx: Context) -> str:
    """Every value of every row of the key tables, as one string."""
    with ctx.engine.connect() as conn:
        rows = [
            *conn.execute(text("SELECT * FROM api_keys")),
            *conn.execute(text("SELECT * FROM api_key_collections")),
        ]
    return "\n".join(str(value) for row in rows for value in row)


def test_a_made_key_sees_its_collections_and_is_stored_only_as_a_hash(ctx: Context) -> None:
    made = apikeys.create(ctx, "hr team", ["hr", "handbook", "hr"])
    assert made.key.startswith(apikeys.PREFIX) and len(made.key) > 70
    assert made.info.name == "hr team" and made.info.collections == ["handbook", "hr"]

    scope = scope_of(ctx, made.key)
    assert scope is not None and not scope.admin and scope.key_id == made.info.id
    assert scope.collections == {"hr", "handbook"}
    assert scope.allows("hr") and not scope.allows("sales") and not scope.allows("default")

    secret = made.key.split("_", 2)[2]  # kbk_<id>_<secret>: the secret may hold "_" itself
    stored = stored_text(ctx)
    assert made.info.id in stored and "handbook" in stored  # the rows are there...
    assert secret not in stored and made.key not in stored  # ...the secret is not
    listed = apikeys.list_keys(ctx)
    assert listed == [made.info] and secret not in repr(listed)


def test_only_the_exact_key_opens(ctx: Context) -> None:
    made = apikeys.create(ctx, "k", ["hr"])
    other = apikeys.create(ctx, "other", ["sales"])
    secret = made.key.split("_", 2)[2]  # kbk_<id>_<secret>: the secret may hold "_" itself
    wrong_secret = made.key[: -len(secret)] + ("A" if secret[0] != "A" else "B") + secret[1:]
    swapped = other.key[: -len(other.key.split("_", 2)[2])] + secret  # other id, this secret
    for bad in [wrong_secret, swapped, made.key + "x", made.key[:-1], "", "kbk_", "nope", "é"]:
        assert scope_of(ctx, bad) is None, bad
    assert scope_of(ctx, other.key) is not None


def test_the_settings_keys_see_every_collection(ctx: Context) -> None:
    assert scope_of(ctx, API_KEY) == EVERY_COLLECTION
    assert EVERY_COLLECTION.allows("anything") and not EVERY_COLLECTION.admin
    assert scope_of(ctx, ADMIN_KEY) == ADMIN
    assert ADMIN.allows("anything") and ADMIN.admin


def test_a_revoked_key_is_refused_at_once_in_every_process(settings: Settings) -> None:
    # Two contexts on one catalog: two API processes. Nothing is cached, so the other process
    # refuses the key with its very next request.
    first, second = Context(settings), Context(settings)
    try:
        made = apikeys.create(first, "leaving", ["hr"])
        assert scope_of(second, made.key) is not None
        assert apikeys.revoke(first, made.info.id)
        assert scope_of(second, made.key) is None
        assert scope_of(first, made.key) is None
        assert not apikeys.revoke(first, made.info.id)
        assert apikeys.list_keys(second) == []
        assert stored_text(second) == ""  # its collections went with it
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize(
    ("name", "collections", "error"),
    [
        ("k", [], "at least one collection"),
        ("k", ["hr", "a\nb"], "control characters"),
        ("k", ["x" * 101], "1 to 100 characters"),
        ("k", [""], "1 to 100 characters"),
        ("", ["hr"], "key name"),
        ("a\x00b", ["hr"], "key name"),
        ("k", [f"c{i}" for i in range(apikeys.MAX_COLLECTIONS + 1)], "at most"),
    ],
)
def test_bad_keys_are_refused_with_nothing_stored(
    ctx: Context, name: str, collections: list[str], error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        apikeys.create(ctx, name, collections)
    assert apikeys.list_keys(ctx) == []
