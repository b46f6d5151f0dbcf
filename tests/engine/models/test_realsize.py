"""The real-size random models have the real ones' parameter counts (built on the meta device: no memory)."""

from __future__ import annotations

import pytest
import torch

from loramill.engine.models.realsize import build_real_size

# Millions of parameters per component: Würstchen v2's as diffusers' conversion script builds warp-ai/wuerstchen
# and warp-ai/wuerstchen-prior. (SD 1.5, SDXL and FLUX.1 are built on the meta device by the GPU check's dry run.)
PUBLISHED = {
    "wuerstchen": {"prior_prior": 993.6, "decoder": 1055.4, "vqgan": 18.4, "prior_text_encoder": 693.0,
                   "text_encoder": 353.0},
}


def millions(module: torch.nn.Module) -> float:
    return round(sum(p.numel() for p in module.parameters()) / 1e6, 1)


@pytest.mark.parametrize("family", sorted(PUBLISHED))
def test_real_size_pipeline_has_the_published_parameter_counts(family: str) -> None:
    pipe = build_real_size(family, device="meta")
    assert {name: millions(getattr(pipe, name)) for name in PUBLISHED[family]} == PUBLISHED[family]
