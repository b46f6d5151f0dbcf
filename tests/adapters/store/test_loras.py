"""The LoRA registry: ownership, sharing, soft delete, idempotent registration."""

from __future__ import annotations

import pytest

from loramill.adapters.store import JobStore
from loramill.errors import Conflict, NotFound


def _register(store: JobStore, task_id: str, user_id: str = "u-1", **kw: object):
    return store.create_lora(user_id=user_id, task_id=task_id, family="sd15",  # type: ignore[arg-type]
                             storage_key=f"users/{user_id}/models/{task_id}.safetensors", **kw)


def test_register_lora_under_task_id(store: JobStore) -> None:
    lora = _register(store, "t-1", trigger_word="tsuki_advtr", metrics={"finalLoss": 0.0023}, name="Tsuki")

    assert lora.id == "t-1" and lora.user_id == "u-1" and lora.family == "sd15" and not lora.public
    assert store.get_lora("t-1") == lora and lora.metrics == {"finalLoss": 0.0023}


def test_register_same_lora_again_updates_it(store: JobStore) -> None:
    _register(store, "t-1", metrics={"finalLoss": 0.5})

    again = _register(store, "t-1", metrics={"finalLoss": 0.1})

    assert again.metrics == {"finalLoss": 0.1} and len(store.list_loras("u-1")) == 1


def test_register_taken_lora_id_raises_conflict(store: JobStore) -> None:
    _register(store, "t-1")

    with pytest.raises(Conflict):
        _register(store, "t-1", user_id="u-2")


def test_list_loras_includes_public_ones_of_others(store: JobStore) -> None:
    _register(store, "mine")
    _register(store, "theirs-private", user_id="u-2")
    _register(store, "theirs-public", user_id="u-2", public=True)

    assert {lora.id for lora in store.list_loras("u-1")} == {"mine", "theirs-public"}
    assert {lora.id for lora in store.list_loras("u-1", include_public=False)} == {"mine"}
    assert len(store.list_loras(None, include_public=False)) == 3
    assert store.list_loras("u-1", family="sdxl") == []


def test_soft_delete_lora_only_by_owner(store: JobStore) -> None:
    _register(store, "t-1")

    assert not store.delete_lora("t-1", user_id="u-2")
    assert store.delete_lora("t-1", user_id="u-1")

    assert store.get_lora("t-1") is None and store.list_loras("u-1") == []
    deleted = store.get_lora("t-1", include_deleted=True)
    assert deleted is not None and deleted.deleted_at is not None
    assert not store.delete_lora("t-1")


def test_share_lora_publicly_then_resolve_for_another_user(store: JobStore) -> None:
    _register(store, "t-1")
    with pytest.raises(NotFound, match="not shared with you"):
        store.resolve_lora("t-1", "u-2")

    assert store.set_lora_public("t-1", True, user_id="u-1")

    assert store.resolve_lora("t-1", "u-2").id == "t-1"
    assert not store.set_lora_public("t-1", False, user_id="u-2")
