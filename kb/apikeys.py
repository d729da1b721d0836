"""Who may see what: the API keys and the collections each one may use.

Three kinds of key open the API. KB_ADMIN_KEY: every route, every collection. KB_API_KEY: every
user route, every collection. And keys an administrator makes here, each limited to the
collections named when it was made (a Scope); a request with one sees nothing else.

A made key reads `kbk_<id as 32 hex digits>_<secret>`, the secret 256 random bits
(secrets.token_urlsafe). It is shown once, when it is made; the catalog keeps only the sha256
of the whole key. A fast hash is enough: a key stretching function (a KDF) slows the guessing
of passwords people chose, and there is nothing to guess in 256 random bits, while a hash per
request stays cheap. The id in the key finds its row; the hashes are then compared in constant
time (hmac.compare_digest). Nothing is cached, so a revoked key is refused by the next request,
in every process.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from kb.catalog import repo
from kb.catalog.models import ApiKey, new_id
from kb.context import Context

PREFIX = "kbk_"  # tells a made key from KB_API_KEY at a glance, and in leaked-secret scanners
SECRET_BYTES = 32  # 256 bits: nothing to guess
NAME_MAX = 100  # api_keys.name
MAX_COLLECTIONS = 100  # per key: a bound on one request's rows, far above any real use
_MADE_KEY = re.compile(rf"{PREFIX}([0-9a-f]{{32}})_[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class Scope:
    """What a request's key may see."""

    collections: frozenset[str] | None = None  # None: every collection
    admin: bool = False  # the admin routes too
    key_id: str | None = None  # the made key's id; None for KB_API_KEY and KB_ADMIN_KEY

    def allows(self, collection: str) -> bool:
        return self.collections is None or collection in self.collections


EVERY_COLLECTION = Scope()  # KB_API_KEY
ADMIN = Scope(admin=True)  # KB_ADMIN_KEY


@dataclass(frozen=True)
class KeyInfo:
    """A made key as it is listed: never its secret."""

    id: str
    name: str
    collections: list[str]
    created_at: datetime


@dataclass(frozen=True)
class NewKey:
    info: KeyInfo
    key: str  # the key itself: shown once, stored nowhere


def check_name(name: str) -> str:
    """`name` if it can name a key (as a collection name: 1-100 characters, no control
    characters); ValueError saying why not otherwise."""
    if not name or len(name) > NAME_MAX:
        raise ValueError(f"key name must be 1 to {NAME_MAX} characters")
    if not re.fullmatch(repo.COLLECTION_NAME_PATTERN, name):
        raise ValueError("key name must not contain control characters")
    return name


def create(ctx: Context, name: str, collections: Iterable[str]) -> NewKey:
    """Make a key that may use `collections` (names; they need not exist yet). ValueError for a
    bad name, no collection, or too many."""
    check_name(name)
    names = sorted({repo.check_collection_name(c) for c in collections})
    if not names:
        raise ValueError("a key needs at least one collection")
    if len(names) > MAX_COLLECTIONS:
        raise ValueError(f"a key may name at most {MAX_COLLECTIONS} collections")
    key_id = new_id()
    key = f"{PREFIX}{uuid.UUID(key_id).hex}_{secrets.token_urlsafe(SECRET_BYTES)}"
    with ctx.session() as s:
        row = repo.add_api_key(s, key_id=key_id, name=name, key_hash=_hash(key), collections=names)
        return NewKey(info=_info(row), key=key)


def list_keys(ctx: Context) -> list[KeyInfo]:
    with ctx.session() as s:
        return [_info(k) for k in repo.list_api_keys(s)]


def revoke(ctx: Context, key_id: str) -> bool:
    """Delete a made key: the next request with it is refused. False if there is no such key."""
    with ctx.session() as s:
        return repo.delete_api_key(s, key_id)


def authenticate(ctx: Context, presented: str, *, api_key: str, admin_key: str) -> Scope | None:
    """The scope of the key a request presented; None if it is no key.

    KB_API_KEY and KB_ADMIN_KEY are compared without the catalog (so they work while it is
    down); a made key is looked up by the id it carries.
    """
    given = presented.encode()
    is_admin = hmac.compare_digest(given, admin_key.encode())
    is_user = hmac.compare_digest(given, api_key.encode())
    if is_admin:
        return ADMIN
    if is_user:
        return EVERY_COLLECTION
    made = _MADE_KEY.fullmatch(presented)
    if made is None:
        return None
    with ctx.session() as s:
        row = repo.get_api_key(s, str(uuid.UUID(made.group(1))))
        # The id is no secret: only the hash comparison has to take the same time throughout.
        if row is None or not hmac.compare_digest(_hash(presented), row.key_hash):
            return None
        return Scope(collections=frozenset(c.collection for c in row.collections), key_id=row.id)


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _info(row: ApiKey) -> KeyInfo:
    return KeyInfo(
        id=row.id,
        name=row.name,
        collections=[c.collection for c in row.collections],
        created_at=row.created_at,
    )
