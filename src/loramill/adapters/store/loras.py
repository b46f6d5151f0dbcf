"""The registry of trained LoRAs: owner, family, trigger word, storage key, metrics; soft delete, sharing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy import exc

from loramill.adapters.store.database import Database
from loramill.adapters.store.models import Lora, utcnow
from loramill.adapters.store.records import to_record
from loramill.domain.ports import LoraRepository
from loramill.domain.records import LoraRecord
from loramill.errors import Conflict, NotFound

loras = cast(sa.Table, Lora.__table__)


class LorasMixin(LoraRepository):
    """LoRA registry methods of ``JobStore``."""

    db: Database

    def create_lora(self, *, user_id: str, family: str, storage_key: str, task_id: str | None = None,
                    lora_id: str | None = None, base_model: str | None = None, trigger_word: str | None = None,
                    metrics: Mapping[str, Any] | None = None, name: str | None = None,
                    public: bool = False) -> LoraRecord:
        """Register a LoRA; its id defaults to the training job's ``task_id``.

        Safe to repeat (a worker may run a job twice after a crash): registering the same id for the
        same user and task again updates its key and metrics. The same id for anything else is a ``Conflict``.
        """
        lora_id = lora_id or task_id
        if not lora_id:
            raise ValueError("create_lora needs lora_id or task_id")
        fields = {"family": family, "storage_key": storage_key, "base_model": base_model,
                  "trigger_word": trigger_word, "metrics": dict(metrics) if metrics is not None else None,
                  "name": name}
        try:
            with self.db.write() as conn:
                conn.execute(loras.insert().values(id=lora_id, user_id=user_id, task_id=task_id, public=public,
                                                   created_at=utcnow(), **fields))
        except exc.IntegrityError:
            with self.db.write() as conn:
                updated = conn.execute(loras.update().where(loras.c.id == lora_id, loras.c.user_id == user_id,
                                                            loras.c.task_id == task_id).values(**fields)).rowcount
            if not updated:
                raise Conflict(f"LoRA id {lora_id!r} is already taken; choose another", field="id") from None
        return cast(LoraRecord, self.get_lora(lora_id))

    def get_lora(self, lora_id: str, *, include_deleted: bool = False) -> LoraRecord | None:
        """The LoRA, or ``None`` (also when soft-deleted, unless ``include_deleted``)."""
        query = loras.select().where(loras.c.id == lora_id)
        if not include_deleted:
            query = query.where(loras.c.deleted_at.is_(None))
        with self.db.read() as conn:
            row = conn.execute(query).first()
        return to_record(LoraRecord, row) if row else None

    def resolve_lora(self, lora_id: str, user_id: str) -> LoraRecord:
        """The LoRA ``user_id`` may use (their own or a public one); ``NotFound`` otherwise."""
        record = self.get_lora(lora_id)
        if record is None or not (record.public or record.user_id == user_id):
            raise NotFound(f"LoRA {lora_id!r} does not exist or is not shared with you; list yours with "
                           "GET /loras", field="loras")
        return record

    def list_loras(self, user_id: str | None, *, include_public: bool = True,
                   family: str | None = None) -> list[LoraRecord]:
        """The user's LoRAs and (``include_public``) everyone's public ones, newest first; not deleted."""
        owner = loras.c.user_id == user_id if user_id is not None else sa.true()
        query = (loras.select().where(loras.c.deleted_at.is_(None),
                                      sa.or_(owner, loras.c.public.is_(True)) if include_public else owner)
                 .order_by(loras.c.created_at.desc(), loras.c.id))
        if family is not None:
            query = query.where(loras.c.family == family)
        with self.db.read() as conn:
            return [to_record(LoraRecord, r) for r in conn.execute(query)]

    def delete_lora(self, lora_id: str, *, user_id: str | None = None) -> bool:
        """Soft-delete (the weights stay in storage); ``user_id`` restricts it to the owner. ``True`` if deleted."""
        return self._update_lora(lora_id, user_id, deleted_at=utcnow())

    def set_lora_public(self, lora_id: str, public: bool, *, user_id: str | None = None) -> bool:
        """Share the LoRA with everyone (or stop sharing); ``user_id`` restricts it to the owner."""
        return self._update_lora(lora_id, user_id, public=public)

    def _update_lora(self, lora_id: str, user_id: str | None, **values: Any) -> bool:
        query = loras.update().where(loras.c.id == lora_id, loras.c.deleted_at.is_(None))
        if user_id is not None:
            query = query.where(loras.c.user_id == user_id)
        with self.db.write() as conn:
            return bool(conn.execute(query.values(**values)).rowcount)
