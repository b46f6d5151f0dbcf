"""A quantised frozen base: int8 trains on CPU, the LoRA loads on the unquantised base, CUDA-only modes refuse early."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from loramill.engine.evaluation.loss import denoising_loss
from loramill.engine.families import get_family
from loramill.engine.training.quantize import linear_weight_bytes, quantize_linears
from loramill.engine.training.run import train
from loramill.errors import UnsupportedHardware
from tests.engine.conftest import train_config


def test_int8_quantizes_only_linears_and_keeps_outputs_close():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.GELU(), torch.nn.Linear(256, 64))
    conv = torch.nn.Conv2d(3, 3, 1)
    model.append(torch.nn.Unflatten(1, (1, 64)))
    x = torch.randn(8, 128)
    expected = model(x).detach()
    before = linear_weight_bytes(model)
    conv_weight = conv.weight.detach().clone()

    assert quantize_linears(model, "int8", torch.device("cpu")) == 2

    # int8 values plus one fp32 scale per output row: a little over a quarter of fp32.
    assert linear_weight_bytes(model) < before * 0.27
    assert torch.allclose(model(x), expected, atol=0.02, rtol=0.02)
    assert torch.equal(conv.weight, conv_weight)


def test_int8_linears_keep_no_dequantised_weight_for_backward_and_give_the_same_gradients():
    """Backward needs only grad @ W of a frozen W: the step must not hold a full-precision copy of the base."""
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(0)
    quantized = torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(3)]).requires_grad_(False)
    quantize_linears(quantized, "int8", torch.device("cpu"))
    # the same weights in plain fp32: what the quantised layers compute with
    plain = torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(3)]).requires_grad_(False)
    for q, p in zip(quantized, plain, strict=True):
        p.weight.copy_(q.weight.dequantize())
        p.bias.copy_(q.bias)
    grads, saved = [], []
    for model in (quantized, plain):
        torch.manual_seed(1)
        model = inject_adapter_in_model(LoraConfig(r=4, target_modules=["0", "1", "2"], init_lora_weights="gaussian"),
                                        model)
        for name, param in model.named_parameters():
            param.requires_grad_("lora_" in name)
        sizes: list[int] = []
        with torch.autograd.graph.saved_tensors_hooks(
                lambda t, sizes=sizes: (sizes.append(t.numel() * t.element_size()), t)[1], lambda t: t):
            out = model(torch.randn(4, 256, generator=torch.Generator().manual_seed(2)))
        out.square().sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
        saved.append(sum(sizes))
    weight_bytes = 256 * 256 * 4
    # quantised: nothing of the weights (through torchao's dispatch it kept a dequantised copy of each);
    # unquantised: references to the weights themselves (no copies)
    assert saved[0] < weight_bytes < saved[1]
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 6
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-5)


def _keys(path):
    with safe_open(str(path), "pt") as f:
        return sorted(f.keys())


def test_int8_base_trains_a_lora_that_helps_the_unquantised_base(tiny_models, sample_images, tmp_path):
    model = tiny_models["sd15"]
    quantized = train(train_config(model, sample_images, tmp_path / "q.safetensors", max_steps=40, lr=1e-2,
                                   quantize_base="int8"))
    plain = train(train_config(model, sample_images, tmp_path / "p.safetensors", max_steps=2,
                               work_dir=str(tmp_path / "p.run")))

    # Same layers, same names: the file does not know the base was quantised while it trained.
    assert _keys(quantized.lora_path) == _keys(plain.lora_path)
    before = denoising_loss(str(model), str(sample_images), trigger="sks", resolution=64)
    after = denoising_loss(str(model), str(sample_images), trigger="sks", resolution=64, lora=quantized.lora_path)
    assert after < before * 0.99, f"loss on the unquantised base {before:.4f} -> {after:.4f}"


def test_resident_pipeline_is_the_exact_base_after_an_int8_run(tiny_models, sample_images, tmp_path):
    family = get_family("sd15")
    pipe = family.load_pipeline(str(tiny_models["sd15"]))
    original = {k: v.clone() for k, v in pipe.unet.state_dict().items()}

    train(train_config(tiny_models["sd15"], sample_images, tmp_path / "q.safetensors", max_steps=2,
                       quantize_base="int8"), pipe=pipe)

    state = pipe.unet.state_dict()
    assert sorted(state) == sorted(original)
    assert all(type(v) is torch.Tensor and torch.equal(v, original[k]) for k, v in state.items())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("mode", ["fp8", "nf4"])
def test_cuda_only_modes_refuse_before_any_work(mode, tiny_models, sample_images, tmp_path):
    config = train_config(tiny_models["sd15"], sample_images, tmp_path / "q.safetensors", quantize_base=mode)
    with pytest.raises(UnsupportedHardware, match=f"--quantize-base {mode} needs a CUDA GPU.*int8") as err:
        train(config)
    assert err.value.field == "quantize_base"
    assert not config.run_dir.exists(), "nothing may be written before the refusal"
