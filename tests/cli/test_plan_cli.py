"""``loramill plan``: the estimate, and the exit status a script can act on."""

from __future__ import annotations

import json

from loramill.cli import main


def test_plan_suggests_the_flags_that_fit_and_exits_3_when_the_run_does_not(capsys):
    assert main(["plan", "--family", "sd15", "--mixed-precision", "fp16", "--gpu-memory", "48", "--json"]) == 0
    fits = json.loads(capsys.readouterr().out)
    assert 2 < fits["peakGiB"] < 48 and fits["suggestions"] == []

    small = round(fits["peakGiB"] * 0.8, 2)
    assert main(["plan", "--family", "sd15", "--mixed-precision", "fp16", "--gpu-memory", str(small)]) == 3
    text = capsys.readouterr().out
    assert f"the GPU has {small:.1f} GiB" in text and "--gradient-checkpointing → ~" in text and "(fits)" in text


def test_plan_on_a_model_folder_uses_its_own_configs(tiny_models, capsys):
    assert main(["plan", "--family", "sd15", "--model", str(tiny_models["sd15"]), "--resolution", "64",
                 "--json"]) == 0
    tiny = json.loads(capsys.readouterr().out)
    assert tiny["parts"]["denoiser weights"] < 0.01 and tiny["availableGiB"] is None
