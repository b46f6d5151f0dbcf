"""Text-to-image generation with a resident base model and any number of LoRAs."""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from loramill import __version__
from loramill.engine.families import detect_family, get_family
from loramill.engine.generation.deepcache import deep_cache
from loramill.engine.generation.loras import AdapterCache, LoraRef, distinct_weights
from loramill.engine.generation.mixed import per_image_loras
from loramill.engine.generation.png import parameters_text, save_png
from loramill.engine.generation.request import GenerateRequest
from loramill.engine.generation.serving import ServingSettings, make_sampler
from loramill.engine.generation.serving import apply as apply_serving
from loramill.engine.generation.tags import extract_lora_tags, resolve_tag
from loramill.engine.progress import Progress, ProgressCallback, StopRequested, no_progress
from loramill.errors import InvalidInput, OutOfMemory


@dataclass(frozen=True)
class Plan:
    """A request resolved against one model: what the pipeline is called with (see ``Generator.plan``)."""

    prompt: str
    negative_prompt: str
    loras: tuple[LoraRef, ...]
    steps: int
    guidance: float
    width: int
    height: int
    seed: int
    num_images: int
    sampler: str = "default"
    deep_cache: int = 1
    shared_prompt_only: bool = False  # the family cannot batch different prompts (Würstchen)

    @property
    def settings_key(self) -> tuple[object, ...]:
        """What every image of one denoising run shares: steps, guidance, size, sampler and cache (prompts and
        seeds may differ; with or without a negative prompt, FLUX runs differently)."""
        key = (self.steps, self.guidance, self.width, self.height, bool(self.negative_prompt), self.sampler,
               self.deep_cache)
        return (*key, self.prompt, self.negative_prompt) if self.shared_prompt_only else key

    @property
    def batch_key(self) -> tuple[object, ...]:
        """Plans with equal keys can always share a run: the same settings, LoRAs and weights."""
        return (self.loras, *self.settings_key)


@dataclass
class GeneratedImage:
    image: Image.Image
    seed: int
    parameters: str


def native_size(pipe: Any, fallback: int) -> int:
    """The side a model was made for, as diffusers' own pipelines default to it: the UNet's sample size in
    pixels (512 for SD 1.5, 1024 for SDXL, 64 for the reference world); transformer models (FLUX) have none,
    so their VAE's. A request that names no size gets this one: asking a 64-px model for 512 px gives
    tiled garbage 64× slower, and asking a 1024-px model for 512 px gives a worse image."""
    scale = getattr(pipe, "vae_scale_factor", None)
    unet_size = getattr(getattr(getattr(pipe, "unet", None), "config", None), "sample_size", None)
    if isinstance(unet_size, int) and isinstance(scale, int):
        return unet_size * scale
    vae_size = getattr(getattr(getattr(pipe, "vae", None), "config", None), "sample_size", None)
    return vae_size if isinstance(vae_size, int) and vae_size >= 64 else fallback


class Generator:
    """A base model kept loaded, generating with whatever LoRAs each request asks for."""

    def __init__(self, model: str, *, family: str | None = None, pipe: Any = None, max_resident_loras: int = 4,
                 serving: ServingSettings | None = None):
        self.model = model
        self.family_name = detect_family(model, family)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if pipe is None:
            pipe = self._load(model)
        self.pipe = pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        # Precision, memory layout and compiled graphs are chosen once, when the model becomes resident.
        serving = serving or ServingSettings()
        self.dtype = apply_serving(self.pipe, serving, self.device, self.family_name)
        self.openvino = serving.openvino
        self.default_size = native_size(self.pipe, get_family(self.family_name).DEFAULT_SIZE
                                        if self.family_name else 512)
        trainable = self.family_name is not None and get_family(self.family_name).TRAINABLE
        self.adapters = (AdapterCache(self.pipe, self.family_name, max_resident=max_resident_loras)
                         if trainable and self.family_name else None)

    @property
    def trains_in_place(self) -> bool:
        """Whether training may use this pipeline as it is: fp32 torch modules. bf16 weights are already
        rounded (and the LoRA and its optimiser are fp32); an OpenVINO UNet has no gradients."""
        return self.dtype == torch.float32 and not self.openvino

    def _load(self, model: str) -> Any:
        if self.family_name is None:
            # Any other diffusers text-to-image model (Würstchen, Stable Cascade, …), without LoRAs.
            from diffusers import AutoPipelineForText2Image

            from loramill.engine.families.base import load_pipeline_of

            return load_pipeline_of(AutoPipelineForText2Image, model, dtype=torch.float32)
        return get_family(self.family_name).load_pipeline(model)

    def plan(self, request: GenerateRequest) -> Plan:
        """Resolve ``request``: prompt tags become LoRAs, settings default to the family's, sizes rounded."""
        # 1. Prompt tags become LoRAs; the tags leave the text that is encoded.
        prompt, tags = extract_lora_tags(request.prompt)
        loras = list(request.loras) + [LoraRef(path=resolve_tag(n, request.lora_dir), weight=w) for n, w in tags]
        if not prompt:
            raise InvalidInput("prompt: holds only <lora:…> tags; add a description of the image", field="prompt")
        if loras and self.adapters is None:
            raise InvalidInput(f"loras: model {self.model} is not SD 1.5, SDXL or FLUX.1 (loramill's LoRAs are "
                               "trained for those); generate with it without LoRAs", field="loras")
        if self.family_name:
            request.check_family(self.family_name)  # sampler and DeepCache need a UNet
        if self.openvino and (loras or request.deep_cache > 1):
            field = "loras" if loras else "deep_cache"
            raise InvalidInput(f"{field}: this generator runs its UNet through OpenVINO, whose graph holds the base "
                               "weights; generate without LoRAs and DeepCache here, or on a generator without "
                               "OpenVINO (LORAMILL_GENERATION_OPENVINO off)", field=field)
        # 2. Settings, defaulting to the family's usual ones; sizes rounded to what the model accepts.
        family = get_family(self.family_name) if self.family_name else None
        multiple = family.RESOLUTION_MULTIPLE if family else 8
        default = self.default_size
        return Plan(prompt=prompt, negative_prompt=request.negative_prompt, loras=tuple(loras),
                    steps=request.steps or (family.DEFAULT_STEPS if family else 30),
                    guidance=request.guidance if request.guidance is not None else (
                        family.DEFAULT_GUIDANCE if family else 5.0),
                    width=(request.width or default) // multiple * multiple,
                    height=(request.height or default) // multiple * multiple,
                    seed=request.seed, num_images=request.num_images, sampler=request.sampler,
                    deep_cache=request.deep_cache,
                    shared_prompt_only=bool(family and getattr(family, "EXTRA_STEPS", 0)))

    @property
    def denoiser(self) -> Any:
        """The UNet (SD 1.5, SDXL), transformer (FLUX) or prior (Würstchen) of the pipeline."""
        for name in ("unet", "transformer", "prior_prior"):
            module = getattr(self.pipe, name, None)
            if module is not None:
                return module
        raise AttributeError(f"{type(self.pipe).__name__} has no denoiser loramill knows")

    def batch_key(self, plan: Plan) -> tuple[object, ...]:
        """Plans with equal keys may share a denoising run (``can_batch`` has the last word).

        A plan with at most one LoRA that changes only the denoiser can run beside plans with other such
        LoRAs: each image gets its own LoRA inside the batch (``mixed.per_image_loras``). Any
        other plan shares a run only with plans of the very same LoRAs and weights.
        """
        if self.adapters is not None and len(plan.loras) <= 1 and all(
                self.adapters.denoiser_only(spec.path) for spec in plan.loras):
            return ("one denoiser LoRA per image", *plan.settings_key)
        return plan.batch_key

    def can_batch(self, plans: list[Plan]) -> bool:
        """Whether ``plans`` can render in one run: one ``batch_key``, and ``fit_together``."""
        return len({self.batch_key(p) for p in plans}) == 1 and self.fit_together(plans)

    def fit_together(self, plans: list[Plan]) -> bool:
        """For plans of one ``batch_key``: whether their LoRAs fit one run — one set for all, or for mixed
        LoRAs no more distinct files than the adapter cache keeps resident, each asked with one weight."""
        if len({p.loras for p in plans}) == 1:
            return True
        assert self.adapters is not None  # mixed keys exist only with an adapter cache
        weights = distinct_weights(spec for p in plans for spec in p.loras)
        return weights is not None and len(weights) <= self.adapters.max_resident

    def generate(self, request: GenerateRequest, progress: ProgressCallback = no_progress) -> list[GeneratedImage]:
        """Render ``request``: resolve tags, activate its LoRAs, run the pipeline with a per-image seed."""
        return self.generate_batch([self.plan(request)], progress)[0]

    def generate_batch(self, plans: list[Plan], progress: ProgressCallback = no_progress
                       ) -> list[list[GeneratedImage]]:
        """Render plans that ``can_batch`` allows together in a single denoising run; the images per plan.

        Each image keeps its own seed (``seed + i`` of its plan) through its own torch generator, so an
        image is the one its plan alone would give, up to float rounding of the batched kernels.
        """
        if not plans:
            return []
        first = plans[0]
        if not self.can_batch(plans):
            raise ValueError("generate_batch: these plans cannot share a run; group them with batch_key / can_batch")

        # 1. Exactly this batch's LoRAs active, with their weights: one set for all, or one LoRA per image.
        per_image: list[str] | None = None
        if self.adapters is not None:
            if len({p.loras for p in plans}) == 1:
                self.adapters.activate(list(first.loras))
            else:
                names = self.adapters.activate_mixed([p.loras[0] if p.loras else None for p in plans])
                per_image = [name for p, name in zip(plans, names, strict=True) for _ in range(p.num_images)]

        # 2. One prompt, negative prompt and seeded generator per image, plans one after another.
        prompts = [p.prompt for p in plans for _ in range(p.num_images)]
        negatives = [p.negative_prompt for p in plans for _ in range(p.num_images)]
        generators = [torch.Generator().manual_seed(p.seed + i) for p in plans for i in range(p.num_images)]
        single = len(plans) == 1
        prompt: str | list[str] = first.prompt if single else prompts
        # No negative prompt at all stays "none" (FLUX switches true CFG on for any negative prompt).
        negative: str | list[str] = first.negative_prompt if single or not any(negatives) else negatives
        per_prompt = first.num_images if single else 1
        family = get_family(self.family_name) if self.family_name else None
        if family is not None:
            kwargs = family.generation_kwargs(prompt=prompt, negative_prompt=negative, steps=first.steps,
                                              guidance=first.guidance, width=first.width, height=first.height,
                                              num_images=per_prompt, generator=generators, pipe=self.pipe)
        else:
            kwargs = dict(prompt=prompt, negative_prompt=negative or None, num_inference_steps=first.steps,
                          guidance_scale=first.guidance, width=first.width, height=first.height,
                          num_images_per_prompt=per_prompt, generator=generators)

        # 3. Denoise, reporting each step; a callback may stop the run (cancel).
        # Würstchen runs a prior and then a decoder, each with its own callback; their steps add up.
        extra = getattr(family, "EXTRA_STEPS", 0) if family is not None else 0
        stages = getattr(family, "STEP_CALLBACKS", ("callback_on_step_end",)) if family is not None else (
            "callback_on_step_end",)
        done = [0]

        def on_step(pipe: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            if extra:
                done[0] += 1
                progress(Progress("generate", min(done[0], first.steps + extra), first.steps + extra))
                return {}
            # Some schedulers run more timesteps than asked (PNDM adds one): progress is counted in the
            # steps the user asked for, the real timesteps scaled onto them, so the last one reads n/n.
            timesteps = max(int(getattr(pipe, "num_timesteps", first.steps) or first.steps), i + 1)
            step = max(1, min(first.steps, round((i + 1) * first.steps / timesteps)))
            progress(Progress("generate", step, first.steps))
            return {}

        started = time.monotonic()
        own_scheduler = getattr(self.pipe, "scheduler", None)
        try:
            mixed = per_image_loras(self.denoiser, per_image) if per_image else nullcontext()
            if first.sampler != "default":
                self.pipe.scheduler = make_sampler(self.pipe, first.sampler)  # for this run only
            cached = deep_cache(self.denoiser, first.deep_cache) if first.deep_cache > 1 else nullcontext()
            with torch.inference_mode(), mixed, cached:
                images = self.pipe(**kwargs, **{name: on_step for name in stages}).images
        except StopRequested:
            raise
        except (ValueError, RuntimeError) as exc:
            # torch.cuda.OutOfMemoryError is a RuntimeError; other backends say so only in the message.
            if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower():
                count = sum(p.num_images for p in plans)
                raise OutOfMemory(f"generation ran out of device memory rendering {count} image(s) at "
                                  f"{first.width}x{first.height}; ask for fewer images or a smaller size "
                                  f"({str(exc).splitlines()[0][:200]})") from exc
            raise InvalidInput(f"generation failed for these settings: {exc}", code="generation_failed") from exc
        finally:
            if own_scheduler is not None:
                self.pipe.scheduler = own_scheduler
        elapsed = time.monotonic() - started

        # 4. Each image with the A1111 parameters that reproduce it alone (its plan's seed + i).
        results: list[list[GeneratedImage]] = []
        it = iter(images)
        for p in plans:
            lora_note = ", ".join(f"{s.path.stem}:{s.weight:g}" for s in p.loras)
            mine = []
            for i in range(p.num_images):
                settings = {"Steps": p.steps, "CFG scale": p.guidance, "Seed": p.seed + i,
                            "Size": f"{p.width}x{p.height}", "Model": Path(self.model).name,
                            "Model family": self.family_name or "other", "Lora": lora_note,
                            "Time taken": f"{elapsed:.2f}s", "Version": f"loramill {__version__}"}
                if p.sampler != "default":
                    settings["Sampler"] = p.sampler
                if p.deep_cache > 1:
                    settings["DeepCache interval"] = p.deep_cache
                mine.append(GeneratedImage(next(it), p.seed + i,
                                           parameters_text(p.prompt, p.negative_prompt, settings)))
            results.append(mine)
        return results


def save_images(images: list[GeneratedImage], out_dir: Path, stem: str = "image") -> list[Path]:
    """Write PNGs with their parameters chunk; names never overwrite earlier images in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    n = len(list(out_dir.glob(f"{stem}-*.png")))
    for img in images:
        path = out_dir / f"{stem}-{n:04d}-seed{img.seed}.png"
        while path.exists():
            n += 1
            path = out_dir / f"{stem}-{n:04d}-seed{img.seed}.png"
        paths.append(save_png(img.image, path, img.parameters))
        n += 1
    return paths
