"""The bot's deliveries in the store: which chat waits for which result, sent exactly once."""

from __future__ import annotations

from loramill.adapters.store import JobStore
from loramill.domain.records import PendingDelivery


def test_expect_delivery_twice_keeps_first_chat(store: JobStore) -> None:
    store.expect_delivery("t-1", 10)
    store.expect_delivery("t-1", 99)

    assert store.pending_deliveries() == [PendingDelivery("t-1", 10)]


def test_pending_deliveries_oldest_first_up_to_limit(store: JobStore) -> None:
    for n in range(3):
        store.expect_delivery(f"t-{n}", 2**40 + n)  # Telegram chat ids exceed 32 bits

    assert store.pending_deliveries() == [PendingDelivery(f"t-{n}", 2**40 + n) for n in range(3)]
    assert store.pending_deliveries(limit=2) == [PendingDelivery("t-0", 2**40), PendingDelivery("t-1", 2**40 + 1)]


def test_mark_delivered_once(store: JobStore) -> None:
    store.expect_delivery("t-1", 10)
    store.expect_delivery("t-2", 20)

    first, second = store.mark_delivered("t-1"), store.mark_delivered("t-1")

    assert first and not second
    assert store.pending_deliveries() == [PendingDelivery("t-2", 20)]
    assert store.delivered_at("t-1") is not None and store.delivered_at("t-2") is None


def test_mark_delivered_unknown_job_is_false(store: JobStore) -> None:
    assert not store.mark_delivered("nobody-asked") and store.delivered_at("nobody-asked") is None
