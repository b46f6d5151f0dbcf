"""A worker's multi-process run: rank 0's progress and checkpoints replayed here; a cancel stops every process."""

from __future__ import annotations

import os

import pytest

from loramill.engine.progress import Progress, StopRequested
from loramill.engine.training.launch import train_in_processes
from tests.engine.conftest import train_config
from tests.engine.training.test_distributed import _processes_naming

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _one_thread_and_this_tree(monkeypatch):
    import sys

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(sys.path))


def test_progress_and_checkpoints_come_back_and_a_cancel_stops_every_process(tiny_models, sample_images, tmp_path):
    seen: list[int] = []
    uploaded = []

    def progress(p: Progress) -> None:
        if p.stage == "train":
            seen.append(p.step)
            if p.step == 3:
                raise StopRequested()  # the job was canceled

    config = train_config(tiny_models["sd15"], sample_images, tmp_path / "c.safetensors", max_steps=1000,
                          batch_size=2, checkpoint_every=2)
    with pytest.raises(StopRequested):
        train_in_processes(config, 2, progress=progress, on_checkpoint=uploaded.append)

    assert seen[:3] == [1, 2, 3]
    # The step-2 checkpoint, then the one every process stopped at (each once); the LoRA was never written.
    names = [p.name for p in uploaded]
    assert names[0] == "step-000002" and int(names[-1][5:]) >= 3 and len(set(names)) == len(names)
    assert not (tmp_path / "c.safetensors").exists()
    assert _processes_naming(str(config.run_dir)) == []

    done = train_in_processes(train_config(tiny_models["sd15"], sample_images, tmp_path / "d.safetensors",
                                           max_steps=3, batch_size=2), 2)
    assert done.lora_path.exists() and done.metrics["steps"] == 3
