"""Which Telegram chat waits for which job, and whether its result has been sent (``DeliveryRepository``).

The row is written when the bot submits the job and marked when the result has reached the chat, so a
restarted bot resumes exactly where it stopped: results finished while it was down are sent, results
already sent are not sent again. Only jobs submitted through the bot have a row; the loop that sends
results reads this small table instead of scanning every job.
"""

from __future__ import annotations

from datetime import datetime
from typing import cast

import sqlalchemy as sa

from loramill.adapters.store.database import Database
from loramill.adapters.store.models import TelegramDelivery, utcnow
from loramill.domain.ports import DeliveryRepository
from loramill.domain.records import PendingDelivery

deliveries = cast(sa.Table, TelegramDelivery.__table__)


class DeliveriesMixin(DeliveryRepository):
    """Delivery methods of ``JobStore``."""

    db: Database

    def expect_delivery(self, task_id: str, chat_id: int) -> None:
        """Remember that ``chat_id`` waits for ``task_id`` (repeating it changes nothing)."""
        with self.db.write() as conn:
            exists = conn.execute(sa.select(deliveries.c.task_id).where(deliveries.c.task_id == task_id)).first()
            if exists is None:
                conn.execute(deliveries.insert().values(task_id=task_id, chat_id=chat_id, created_at=utcnow()))

    def pending_deliveries(self, limit: int = 100) -> list[PendingDelivery]:
        """Results not sent yet, oldest first."""
        query = (sa.select(deliveries.c.task_id, deliveries.c.chat_id).where(deliveries.c.delivered_at.is_(None))
                 .order_by(deliveries.c.created_at).limit(limit))
        with self.db.read() as conn:
            return [PendingDelivery(row.task_id, int(row.chat_id)) for row in conn.execute(query)]

    def mark_delivered(self, task_id: str) -> bool:
        """Record that the result reached the chat; ``False`` if it already had."""
        with self.db.write() as conn:
            return bool(conn.execute(deliveries.update().where(deliveries.c.task_id == task_id,
                                                               deliveries.c.delivered_at.is_(None))
                                     .values(delivered_at=utcnow())).rowcount)

    def delivered_at(self, task_id: str) -> datetime | None:
        """When the result of ``task_id`` was sent (``None``: not yet, or not a bot job)."""
        with self.db.read() as conn:
            return conn.execute(sa.select(deliveries.c.delivered_at)
                                .where(deliveries.c.task_id == task_id)).scalar()
