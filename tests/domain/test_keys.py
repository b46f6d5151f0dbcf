"""Storage keys: the safety rule and the layout every layer builds keys with."""

from __future__ import annotations

import pytest

from loramill.domain.keys import (
    MAX_KEY_LENGTH,
    checkpoints_prefix,
    image_key,
    model_key,
    owned_by,
    tsuki_image_key,
    upload_key,
    validate_key,
)
from loramill.errors import InvalidInput


@pytest.mark.parametrize(("key", "reason"), [
    ("", "empty"), ("/etc/passwd", "relative path"), ("../outside.txt", "'..' segment"),
    ("%2e%2e/secret", "'..' segment"), ("users/%252e%252e/x", "'..' segment"), ("users//x", "empty, '.'"),
    ("users\\x", "relative path"), ("users/x y.jpg", "characters outside"),
    ("users/" + "a" * 300, "longer than 255"), ("a/" * (MAX_KEY_LENGTH // 2 + 1), "the limit is 1024"),
])
def test_refuse_unsafe_key_naming_the_rule(key: str, reason: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_key(key)

    assert reason in caught.value.message and caught.value.code == "invalid_storage_key"


def test_accept_layout_keys_unchanged() -> None:
    keys = [upload_key("u-1", "t-1", 7, "ab12", "jpg"), model_key("u-1", "t-1"), image_key("u-1", "t-1", 0),
            checkpoints_prefix("t-1") + "step-000010/weights.safetensors", tsuki_image_key("r-1")]

    assert [validate_key(k) for k in keys] == keys == [
        "users/u-1/images/t-1/007-ab12.jpg", "users/u-1/models/t-1.safetensors",
        "users/u-1/generations/t-1/0.png", "checkpoints/t-1/step-000010/weights.safetensors", "generated/r-1.png"]


def test_ownership_is_by_whole_prefix_segment() -> None:
    assert owned_by(model_key("alice", "t"), "alice")
    assert not owned_by(model_key("alice", "t"), "ali")
    assert not owned_by(checkpoints_prefix("t") + "x", "alice")
