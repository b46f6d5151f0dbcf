"""Two CPU processes (gloo) train the same LoRA as one process with the same global batch, and stop together."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from loramill.engine.training.distributed import Ranks, check_shares, process_count
from loramill.engine.training.run import train
from loramill.errors import InvalidInput
from tests.engine.conftest import train_config

pytestmark = pytest.mark.slow


def _cli(model, images, out, *extra):
    return [sys.executable, "-m", "loramill", "train", "--model", str(model), "--images", str(images),
            "--trigger", "sks", "--out", str(out), "--resolution", "64", "--rank", "4", "--alpha", "4",
            "--lr", "5e-3", "--seed", "7", "--batch-size", "2", "--quiet", *extra]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}


def _assert_same_lora(a, b):
    left, right = load_file(str(a)), load_file(str(b))
    assert sorted(left) == sorted(right)
    for key in left:
        assert torch.allclose(left[key], right[key], atol=1e-5, rtol=1e-4), key


def test_two_processes_train_the_single_process_lora_and_resume_on_one(tiny_models, sample_images, tmp_path):
    model = tiny_models["sd15"]
    single = train(train_config(model, sample_images, tmp_path / "one.safetensors", max_steps=4, batch_size=2))

    two = tmp_path / "two.safetensors"
    done = subprocess.run(_cli(model, sample_images, two, "--max-steps", "4", "--checkpoint-every", "2",
                               "--processes", "2"), env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_same_lora(single.lora_path, two)
    # One process wrote: one metrics line per step, one LoRA, one checkpoint (at step 2).
    lines = (tmp_path / "two.run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4
    assert [p.name for p in sorted((tmp_path / "two.run" / "checkpoints").iterdir())] == ["step-000002"]

    # The checkpoint written by two processes resumes on one, and ends where the straight run ended.
    resumed = train(train_config(model, sample_images, tmp_path / "resumed.safetensors", max_steps=4, batch_size=2,
                                 work_dir=str(tmp_path / "two.run"), resume="latest"))
    _assert_same_lora(single.lora_path, resumed.lora_path)


def test_sigterm_stops_every_process_with_a_checkpoint(tiny_models, sample_images, tmp_path):
    out = tmp_path / "long.safetensors"
    proc = subprocess.Popen(_cli(tiny_models["sd15"], sample_images, out, "--max-steps", "100000",
                                 "--processes", "2"), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    metrics = tmp_path / "long.run" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, err[-3000:]
    assert "stopped; a checkpoint is in" in err
    checkpoints = list((tmp_path / "long.run" / "checkpoints").iterdir())
    assert len(checkpoints) == 1 and not out.exists()
    # Nothing of the run is left running: no process names this run's output on its command line.
    assert _processes_naming(str(out)) == []


def _processes_naming(text):
    found = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    found.append(int(pid))
        except (OSError, ValueError):
            continue
    return found


def test_batch_must_split_evenly_and_process_counts_are_checked(tmp_path):
    def config(**values):
        return train_config(tmp_path, tmp_path, tmp_path / "x.safetensors", **values)

    check_shares(config(batch_size=4), Ranks(rank=1, world=2))
    with pytest.raises(InvalidInput, match="batch_size: 3 does not split over 2 processes"):
        check_shares(config(batch_size=3), Ranks(world=2))
    with pytest.raises(InvalidInput, match="prior_weight: is not supported with several training processes"):
        check_shares(config(batch_size=2, prior_weight=0.5, class_word="dog"), Ranks(world=2))
    check_shares(config(batch_size=2, preserve_weight=0.5), Ranks(world=2))  # shared like the main loss
    assert Ranks(rank=1, world=2).share(4) == slice(2, 4)
    assert process_count("3") == 3 and process_count("auto") == max(1, torch.cuda.device_count())
    with pytest.raises(InvalidInput, match="--processes"):
        process_count("zero")
