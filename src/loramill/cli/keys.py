"""``loramill keys``: API keys for the HTTP API. The key is printed once, on stdout; the store keeps a hash."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from loramill.errors import Conflict, InvalidInput, NotFound

if TYPE_CHECKING:
    from loramill.adapters.store import JobStore


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="create, list and revoke API keys", description=__doc__)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="a new key for a user (created if new)")
    create.add_argument("--user", required=True, help="user id (letters, digits, . _ - @)")
    create.add_argument("--name", help="display name of a new user (default: the id)")
    create.add_argument("--admin", action="store_true", help="the user sees everyone's jobs and may share LoRAs")
    create.set_defaults(func=run_create)
    listing = actions.add_parser("list", help="a user's keys (ids and prefixes, never the keys)")
    listing.add_argument("--user", required=True)
    listing.set_defaults(func=run_list)
    revoke = actions.add_parser("revoke", help="revoke a key by its id (from `keys list`)")
    revoke.add_argument("key_id")
    revoke.set_defaults(func=run_revoke)


def _store() -> JobStore:
    import logging

    from loramill.adapters.store import JobStore

    logging.getLogger("alembic").setLevel(logging.WARNING)  # its migration chatter is not for this command

    return JobStore.from_settings()


def run_create(args: argparse.Namespace) -> int:
    from pydantic import TypeAdapter, ValidationError

    from loramill.jobs.contracts import Identifier

    # 1. The user: ids become part of storage keys, so they follow the job contract's id rule
    try:
        TypeAdapter(Identifier).validate_python(args.user)
    except ValidationError:
        raise InvalidInput(f"--user {args.user!r}: use 1-128 letters, digits and . _ - @ + = starting with a "
                           "letter or digit (it becomes part of storage keys)", field="user") from None
    store = _store()
    try:
        user = store.get_user(args.user)
        if user is None:
            user = store.create_user(args.name or args.user, user_id=args.user, is_admin=args.admin)
            print(f"created user {user.id}{' (admin)' if user.is_admin else ''}", file=sys.stderr)
        elif args.admin and not user.is_admin:
            raise Conflict(f"user {user.id!r} exists and is not an admin; admin rights are given when a user "
                           "is created — use a new user id for the admin", field="admin")
        # 2. The key, shown once
        record, plaintext = store.create_api_key(user.id)
        print(f"key {record.id} for {user.id}; keep it now, it is not shown again:", file=sys.stderr)
        print(plaintext)
    finally:
        store.close()
    return 0


def run_list(args: argparse.Namespace) -> int:
    store = _store()
    try:
        if store.get_user(args.user) is None:
            raise NotFound(f"no user {args.user!r}", field="user")
        for key in store.list_api_keys(args.user):
            state = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "active"
            print(f"{key.id}  lm_{key.prefix}_…  created {key.created_at:%Y-%m-%d %H:%M}  {state}")
    finally:
        store.close()
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    store = _store()
    try:
        if not store.revoke_api_key(args.key_id):
            raise NotFound(f"no active key {args.key_id!r}; see `loramill keys list --user U`", field="key_id")
        print(f"revoked {args.key_id}", file=sys.stderr)
    finally:
        store.close()
    return 0
