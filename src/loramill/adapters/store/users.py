"""Users and API keys. Keys are stored as SHA-256 hashes and checked in constant time.

A plain SHA-256 (not scrypt) is enough here: keys are 256 random bits, so there is nothing to brute
force, and verifying one on every request must stay cheap.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from typing import cast

import sqlalchemy as sa
from sqlalchemy import exc

from loramill.adapters.store.database import Database
from loramill.adapters.store.models import ApiKey, User, utcnow
from loramill.adapters.store.records import to_record
from loramill.domain.ports import UserRepository
from loramill.domain.records import ApiKeyRecord, UserRecord
from loramill.errors import InvalidInput, NotFound

users = cast(sa.Table, User.__table__)
api_keys = cast(sa.Table, ApiKey.__table__)
KEY_PREFIX = "lm_"
_DUMMY_HASH = hashlib.sha256(b"no such key").hexdigest()
# Every API request runs this lookup: built once (building and hashing it cost more than running it).
KEYS_BY_PREFIX = (sa.select(api_keys.c.key_hash, users).join(users, users.c.id == api_keys.c.user_id)
                  .where(api_keys.c.prefix == sa.bindparam("prefix"), api_keys.c.revoked_at.is_(None)))


def hash_key(plaintext: str) -> str:
    """The stored form of an API key."""
    return hashlib.sha256(plaintext.encode("utf-8", "surrogatepass")).hexdigest()


class UsersMixin(UserRepository):
    """User and API key methods of ``JobStore``."""

    db: Database

    def create_user(self, name: str, *, is_admin: bool = False, telegram_id: int | None = None,
                    user_id: str | None = None) -> UserRecord:
        """A new user (id: a random UUID unless given)."""
        if not name.strip() or len(name) > 256:
            raise InvalidInput("user name must be 1-256 characters", field="name")
        user_id = user_id or uuid.uuid4().hex
        with self.db.write() as conn:
            conn.execute(users.insert().values(id=user_id, name=name, telegram_id=telegram_id, is_admin=is_admin,
                                               created_at=utcnow()))
        return cast(UserRecord, self.get_user(user_id))

    def get_user(self, user_id: str) -> UserRecord | None:
        """The user, or ``None``."""
        with self.db.read() as conn:
            row = conn.execute(users.select().where(users.c.id == user_id)).first()
        return to_record(UserRecord, row) if row else None

    def get_or_create_telegram_user(self, telegram_id: int, name: str) -> UserRecord:
        """The user behind a Telegram account, created on first contact (safe when two messages race)."""
        for _ in range(2):
            with self.db.read() as conn:
                row = conn.execute(users.select().where(users.c.telegram_id == telegram_id)).first()
            if row:
                return to_record(UserRecord, row)
            try:
                return self.create_user(name[:256] or str(telegram_id), telegram_id=telegram_id)
            except exc.IntegrityError:
                continue  # created by a concurrent message a moment ago
        raise NotFound(f"Telegram user {telegram_id} could not be created")

    def create_api_key(self, user_id: str) -> tuple[ApiKeyRecord, str]:
        """A new key for the user: ``(record, plaintext)``. The plaintext is never stored or shown again."""
        prefix = secrets.token_hex(4)
        plaintext = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
        key_id = uuid.uuid4().hex
        try:
            with self.db.write() as conn:
                conn.execute(api_keys.insert().values(id=key_id, user_id=user_id, prefix=prefix,
                                                      key_hash=hash_key(plaintext), created_at=utcnow()))
        except exc.IntegrityError:
            raise NotFound(f"no user {user_id!r}", field="userId") from None
        with self.db.read() as conn:
            row = conn.execute(api_keys.select().where(api_keys.c.id == key_id)).one()
        return to_record(ApiKeyRecord, row), plaintext

    def verify_api_key(self, plaintext: str) -> UserRecord | None:
        """The user owning this (unrevoked) key, or ``None``. Compares hashes in constant time."""
        prefix = plaintext[len(KEY_PREFIX):].split("_", 1)[0] if plaintext.startswith(KEY_PREFIX) else ""
        given = hash_key(plaintext)
        with self.db.read() as conn:
            rows = conn.execute(KEYS_BY_PREFIX, {"prefix": prefix[:16]}).all() if prefix else []
        if not rows:
            hmac.compare_digest(given, _DUMMY_HASH)  # an unknown key takes as long as a wrong one
        found = None
        for row in rows:
            if hmac.compare_digest(given, row.key_hash):
                found = to_record(UserRecord, row)
        return found

    def revoke_api_key(self, key_id: str, *, user_id: str | None = None) -> bool:
        """Revoke a key (``user_id`` restricts it to the owner); ``True`` if it was active."""
        query = api_keys.update().where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
        if user_id is not None:
            query = query.where(api_keys.c.user_id == user_id)
        with self.db.write() as conn:
            return bool(conn.execute(query.values(revoked_at=utcnow())).rowcount)

    def list_api_keys(self, user_id: str) -> list[ApiKeyRecord]:
        """The user's keys (metadata only), oldest first."""
        with self.db.read() as conn:
            rows = conn.execute(api_keys.select().where(api_keys.c.user_id == user_id)
                                .order_by(api_keys.c.created_at))
            return [to_record(ApiKeyRecord, r) for r in rows]
