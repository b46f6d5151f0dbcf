"""Generation: A1111 tags, PNG parameters, composed LoRAs, and refusals that name the problem."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from loramill.engine.generation.generate import GenerateRequest, Generator, save_images
from loramill.engine.generation.loras import LoraRef
from loramill.engine.generation.tags import extract_lora_tags
from loramill.engine.training.run import train
from loramill.errors import InvalidInput, OutOfMemory
from tests.engine.conftest import train_config


def test_extract_lora_tags_removes_tags_and_reads_weights():
    text, tags = extract_lora_tags("<lora:style:0.6> a portrait of sks, <lora:sks> smiling")
    assert text == "a portrait of sks, smiling"
    assert tags == [("style", 0.6), ("sks", 1.0)]
    with pytest.raises(InvalidInput, match="not a number"):
        extract_lora_tags("<lora:x:heavy> cat")


@pytest.fixture(scope="module")
def trained(tiny_models, tmp_path_factory):
    from tests.services.models import draw_subject

    root = tmp_path_factory.mktemp("gen")
    photos = root / "photos"
    photos.mkdir()
    for i in range(3):
        draw_subject(i).save(photos / f"{i}.png")
    out = {}
    for family in ("sd15", "sdxl"):
        out[family] = train(train_config(tiny_models[family], photos, root / f"{family}.safetensors",
                                         work_dir=str(root / family))).lora_path
    style = train(train_config(tiny_models["sd15"], photos, root / "style.safetensors", seed=99, trigger="zkz",
                               work_dir=str(root / "style"))).lora_path
    return out | {"style": style, "dir": root}


def test_generate_composes_two_loras_and_tags_match_flags(tiny_models, trained):
    gen = Generator(str(tiny_models["sd15"]))
    req = dict(width=64, height=64, steps=3, seed=5)
    subject = gen.generate(GenerateRequest("a photo of sks", loras=[LoraRef(trained["sd15"], 0.8)], **req))
    both = gen.generate(GenerateRequest("a photo of sks", loras=[LoraRef(trained["sd15"], 0.8),
                                                                 LoraRef(trained["style"], 0.5)], **req))
    tagged = gen.generate(GenerateRequest("<lora:sd15:0.8> a photo of sks <lora:style:0.5>",
                                          lora_dir=trained["dir"], **req))
    a, b, c = (np.asarray(x[0].image, dtype=np.float32) for x in (subject, both, tagged))
    assert np.abs(a - b).mean() > 0.1, "adding the style LoRA must change the image"
    assert np.abs(b - c).max() <= 1.0, "tags and --lora flags must give the same image"


def test_saved_png_carries_parameters(tiny_models, tmp_path):
    gen = Generator(str(tiny_models["sd15"]))
    images = gen.generate(GenerateRequest("a cat", negative_prompt="blurry", width=64, height=64, steps=2, seed=9,
                                          num_images=2))
    paths = save_images(images, tmp_path)
    assert len(paths) == 2
    text = Image.open(paths[1]).text["parameters"]
    assert text.startswith("a cat\nNegative prompt: blurry\nSteps: 2")
    assert "Seed: 10" in text and "Size: 64x64" in text


def test_generate_refuses_lora_of_other_family(tiny_models, trained):
    gen = Generator(str(tiny_models["sd15"]))
    with pytest.raises(InvalidInput) as err:
        gen.generate(GenerateRequest("x", loras=[LoraRef(trained["sdxl"])], width=64, height=64, steps=2))
    assert err.value.code == "lora_incompatible" and "sdxl" in err.value.message


def test_generate_refuses_lora_without_metadata_that_fits_nothing(tiny_models, trained, tmp_path):
    from safetensors.torch import load_file, save_file

    stripped = tmp_path / "nometa.safetensors"
    save_file(load_file(str(trained["sdxl"])), str(stripped))  # no metadata: only the keys can tell
    gen = Generator(str(tiny_models["flux"]))
    with pytest.raises(InvalidInput) as err:
        gen.generate(GenerateRequest("x", loras=[LoraRef(stripped)], width=64, height=64, steps=2))
    assert err.value.code == "lora_incompatible"


def test_generate_refuses_pickle_lora(tiny_models, tmp_path):
    import pickle

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(["boom"]))
    gen = Generator(str(tiny_models["sd15"]))
    with pytest.raises(InvalidInput) as err:
        gen.generate(GenerateRequest("x", loras=[LoraRef(evil)], width=64, height=64, steps=2))
    assert err.value.code == "not_safetensors"


def test_generate_unknown_tag_lists_available(tiny_models, trained):
    gen = Generator(str(tiny_models["sd15"]))
    with pytest.raises(InvalidInput, match="available: .*style"):
        gen.generate(GenerateRequest("<lora:nothere> x", lora_dir=trained["dir"], width=64, height=64, steps=2))


def test_generate_progress_never_exceeds_total(tiny_models):
    reports = []
    gen = Generator(str(tiny_models["sd15"]))  # PNDM: runs one timestep more than asked for
    gen.generate(GenerateRequest("a cat", width=64, height=64, steps=2), progress=reports.append)
    assert reports and all(r.step <= r.total for r in reports)
    assert reports[-1].step == reports[-1].total == 2  # in the steps asked for, though PNDM ran 3


def test_adapter_cache_clear_leaves_bare_base_and_reloads_same_lora(tiny_models, trained):
    gen = Generator(str(tiny_models["sd15"]))
    req = dict(width=64, height=64, steps=3, seed=5)
    before = np.asarray(gen.generate(GenerateRequest("sks", loras=[LoraRef(trained["sd15"])], **req))[0].image)
    assert gen.adapters is not None
    gen.adapters.clear()
    assert not any(gen.pipe.get_list_adapters().values()), "training needs the bare base model"
    again = np.asarray(gen.generate(GenerateRequest("sks", loras=[LoraRef(trained["sd15"])], **req))[0].image)
    assert np.array_equal(before, again)


@pytest.mark.parametrize("family", ["sd15", "sdxl", "flux"])
def test_generate_batch_gives_each_plan_the_images_it_gets_alone(tiny_models, family):
    """Batching is only an optimisation: each image equals its plan's lone run (float rounding aside)."""
    gen = Generator(str(tiny_models[family]))
    settings = dict(width=64, height=64, steps=3)
    requests = [GenerateRequest(prompt="a red kite", seed=1, **settings),
                GenerateRequest(prompt="a blue boat at dusk", seed=7, num_images=2, **settings),
                GenerateRequest(prompt="a red kite", seed=2, **settings)]
    plans = [gen.plan(r) for r in requests]
    batched = gen.generate_batch(plans)
    assert [len(images) for images in batched] == [1, 2, 1]
    for request, images in zip(requests, batched, strict=True):
        alone = gen.generate(request)
        assert [i.seed for i in images] == [i.seed for i in alone]
        for b, a in zip(images, alone, strict=True):
            diff = np.abs(np.asarray(b.image, dtype=np.int16) - np.asarray(a.image, dtype=np.int16))
            assert diff.max() <= 2, f"{family}: batched image differs from its lone run by {diff.max()}/255"
            assert b.parameters.split("Time taken")[0] == a.parameters.split("Time taken")[0]
    # Different seeds in one batch still give different images (each image has its own generator).
    assert np.asarray(batched[0][0].image).tolist() != np.asarray(batched[2][0].image).tolist()


def test_generate_batch_refuses_plans_that_cannot_share_a_run(tiny_models):
    gen = Generator(str(tiny_models["sd15"]))
    a = gen.plan(GenerateRequest(prompt="a kite", steps=2, width=64, height=64))
    b = gen.plan(GenerateRequest(prompt="a kite", steps=3, width=64, height=64))
    assert a.batch_key != b.batch_key
    with pytest.raises(ValueError, match="batch_key"):
        gen.generate_batch([a, b])


def test_mixed_lora_batch_gives_each_image_its_own_lora(tiny_models, trained):
    """Plans with different (denoiser-only) LoRAs share a run; each image is its lone render with its LoRA."""
    gen = Generator(str(tiny_models["sd15"]), max_resident_loras=2)
    settings = dict(width=64, height=64, steps=3)
    a, b = LoraRef(trained["sd15"], 0.8), LoraRef(trained["style"], 1.0)
    requests = [GenerateRequest(prompt="sks portrait", loras=[a], seed=1, **settings),
                GenerateRequest(prompt="zkz a house", loras=[b], seed=2, num_images=2, **settings),
                GenerateRequest(prompt="a plain kite", seed=3, **settings),
                GenerateRequest(prompt="sks smiling", loras=[a], seed=4, **settings)]
    plans = [gen.plan(r) for r in requests]
    assert len({gen.batch_key(p) for p in plans}) == 1 and gen.can_batch(plans)
    batched = gen.generate_batch(plans)
    for request, images in zip(requests, batched, strict=True):
        for got, alone in zip(images, gen.generate(request), strict=True):
            diff = np.abs(np.asarray(got.image, dtype=np.int16) - np.asarray(alone.image, dtype=np.int16))
            assert diff.max() <= 2, f"{request.prompt}: mixed batch differs from the lone run by {diff.max()}/255"
    # The LoRAs do change the images: without them the same seed gives another picture.
    bare = gen.generate(GenerateRequest(prompt="sks portrait", seed=1, **settings))[0]
    assert np.abs(np.asarray(bare.image, dtype=np.int16) - np.asarray(batched[0][0].image, dtype=np.int16)).max() > 2


def test_mixed_lora_batch_refuses_two_weights_of_one_file_and_more_files_than_resident(tiny_models, trained):
    gen = Generator(str(tiny_models["sd15"]), max_resident_loras=1)
    settings = dict(prompt="a kite", width=64, height=64, steps=2)
    a, b = trained["sd15"], trained["style"]
    one_file_two_weights = [gen.plan(GenerateRequest(loras=[LoraRef(a, w)], **settings)) for w in (0.5, 1.0)]
    two_files = [gen.plan(GenerateRequest(loras=[LoraRef(p)], **settings)) for p in (a, b)]
    assert not gen.can_batch(one_file_two_weights)
    assert not gen.can_batch(two_files)  # only one adapter may be resident
    assert gen.can_batch(two_files[:1] + [gen.plan(GenerateRequest(**settings))])  # a LoRA beside none
    with pytest.raises(ValueError, match="cannot share a run"):
        gen.generate_batch(two_files)


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RuntimeError("MPS backend out of memory (MPS allocated: 8 GB)")])
def test_generate_reports_out_of_memory_as_its_own_error(tiny_models, monkeypatch, error):
    gen = Generator(str(tiny_models["sd15"]))

    def run_out(*args, **kwargs):
        raise error

    monkeypatch.setattr(type(gen.pipe), "__call__", run_out)
    with pytest.raises(OutOfMemory) as caught:
        gen.generate(GenerateRequest("a cat", width=64, height=64, steps=2, num_images=3))

    assert caught.value.code == "out_of_memory" and not isinstance(caught.value, InvalidInput)
    assert "3 image(s) at 64x64" in caught.value.message and "fewer images or a smaller size" in caught.value.message


@pytest.mark.parametrize("family", ["sd15", "flux"])
def test_request_without_size_gets_the_models_own_side(tiny_models, family):
    # diffusers' pipelines default to the model's sample size; the family's 512/1024 would tile a 64-px model.
    gen = Generator(str(tiny_models[family]))
    assert gen.default_size == 64
    plan = gen.plan(GenerateRequest("a cat", steps=2))
    assert (plan.width, plan.height) == (64, 64)
    asked = gen.plan(GenerateRequest("a cat", width=128, height=96, steps=2))
    assert (asked.width, asked.height) == (128, 96)
