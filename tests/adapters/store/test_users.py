"""Users and API keys: keys stored hashed, shown once, verified, revoked."""

from __future__ import annotations

import threading

from loramill.adapters.store import JobStore


def test_create_user_and_get_it(store: JobStore) -> None:
    user = store.create_user("Ada", is_admin=True)

    assert store.get_user(user.id) == user and user.is_admin and user.telegram_id is None
    assert store.get_user("nobody") is None


def test_get_or_create_telegram_user_once(store: JobStore) -> None:
    first = store.get_or_create_telegram_user(123456789012, "ada_tg")

    again = store.get_or_create_telegram_user(123456789012, "renamed")

    assert again == first and first.telegram_id == 123456789012 and first.name == "ada_tg"


def test_get_or_create_telegram_user_racing_creates_one(store: JobStore) -> None:
    barrier, found = threading.Barrier(4), []

    def contact() -> None:
        barrier.wait()
        found.append(store.get_or_create_telegram_user(42, "racer").id)

    threads = [threading.Thread(target=contact) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(found) == 4 and len(set(found)) == 1


def test_verify_api_key_returns_owner(store: JobStore) -> None:
    user = store.create_user("Ada")
    record, plaintext = store.create_api_key(user.id)

    assert plaintext.startswith("lm_" + record.prefix + "_")
    assert store.verify_api_key(plaintext) == user
    assert [k.id for k in store.list_api_keys(user.id)] == [record.id]


def test_api_key_plaintext_is_not_stored(store: JobStore) -> None:
    user = store.create_user("Ada")
    _, plaintext = store.create_api_key(user.id)

    with store.db.read() as conn:
        stored = conn.exec_driver_sql("SELECT * FROM api_keys").all()

    assert plaintext not in repr(stored) and plaintext.split("_", 2)[2] not in repr(stored)


def test_verify_wrong_or_malformed_api_key_returns_none(store: JobStore) -> None:
    user = store.create_user("Ada")
    record, plaintext = store.create_api_key(user.id)

    for attempt in [plaintext[:-1] + ("A" if plaintext[-1] != "A" else "B"), "", "lm_", "lm_zzzz_x",
                    "Bearer " + plaintext, "lm_" + record.prefix, "\ud800", "x" * 10_000]:
        assert store.verify_api_key(attempt) is None


def test_revoked_api_key_stops_working(store: JobStore) -> None:
    user = store.create_user("Ada")
    record, plaintext = store.create_api_key(user.id)

    assert not store.revoke_api_key(record.id, user_id="someone-else")
    assert store.revoke_api_key(record.id)

    assert store.verify_api_key(plaintext) is None and not store.revoke_api_key(record.id)
    assert store.list_api_keys(user.id)[0].revoked_at is not None
