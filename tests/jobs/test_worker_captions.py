"""Captions stored beside image keys (``photo1.jpg`` + ``photo1.txt``) reach the trainer through the queue."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from loramill.domain.keys import caption_key
from loramill.engine.training import run
from tests.jobs.test_worker import Rig, resident, rig  # noqa: F401  (the fixtures, one model load)
from tests.jobs.worker_helpers import new_task_id, selfix_job, upload_images


@pytest.fixture
def trained_captions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The captions of the dataset each training ran on, read as the run starts (the scratch folder is gone
    once the job ends)."""
    seen: list[str] = []
    real_train = run.train

    def spying(config: Any, **kwargs: Any) -> Any:
        seen.extend(sorted(p.read_text(encoding="utf-8").strip() for p in Path(config.images).rglob("*.txt")))
        return real_train(config, **kwargs)

    monkeypatch.setattr(run, "train", spying)
    return seen


def test_stored_captions_reach_the_run_with_the_trigger_word(rig: Rig, trained_captions: list[str]) -> None:  # noqa: F811
    images = upload_images(rig.storage, "user-c", count=3)
    rig.storage.put_bytes(caption_key(images[0]), b"a sks circle on a white background", "text/plain")
    rig.storage.put_bytes(caption_key(images[1]), b"a red square, studio light", "text/plain")
    fetches = []
    real_get = rig.storage.get_file
    rig.storage.get_file = lambda key, path: fetches.append(key) or real_get(key, path)  # type: ignore[method-assign]

    task = rig.submit(selfix_job(new_task_id(), "user-c", images, triggerWord="sks"))

    assert rig.run_one() == "completed"
    assert rig.events.wait_for(task, "completed")
    # the uploaded text as written; the trigger word put first where it was missing; the third image,
    # with no caption stored, captioned by the template captioner (trigger word only)
    assert len(trained_captions) == 3
    assert "a sks circle on a white background" in trained_captions
    assert "sks, a red square, studio light" in trained_captions
    assert sum(caption.startswith("sks") and "square" not in caption for caption in trained_captions) == 1
    # one look per image beside it; a missing caption is no error
    assert [key for key in fetches if key.endswith(".txt")] == [caption_key(key) for key in images]
