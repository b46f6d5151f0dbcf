"""Captions: the captioner table (template, florence2, blip, none) and trigger-word enforcement.

Whatever a captioner returns, ``finish_caption`` makes sure the trigger word is in it: auto-captioners
drop it on a quarter of the images (ai-toolkit #211) and a LoRA trained on those learns nothing from
them. Model captioners import transformers lazily, load once per run and free the model afterwards so
the GPU is empty again for training.
"""

from __future__ import annotations

import gc
import json
import re
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loramill.errors import DependencyMissing, InvalidInput

if TYPE_CHECKING:
    from PIL import Image

    from loramill.engine.dataset.config import DatasetConfig

Captioner = Callable[["Image.Image"], str]

DEFAULT_FLORENCE2 = "florence-community/Florence-2-base"
DEFAULT_BLIP = "Salesforce/blip-image-captioning-base"
FLORENCE2_TASKS = ("<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>")


def template_caption(config: DatasetConfig) -> str:
    """The Tsuki caption structure: trigger word, what it is, background, style keywords.

    e.g. ``tsuki_advtr, a samoyed dog, white background, thick outlines, pastel color``.
    """
    parts = [config.trigger_word]
    if config.class_word:
        article = "an" if config.class_word[0].lower() in "aeiou" else "a"
        parts.append(f"{article} {config.class_word}" if config.subject != "style" else config.class_word)
    if config.subject == "object" and config.background == (255, 255, 255):
        parts.append("white background")
    parts.extend(config.style_keywords)
    return ", ".join(parts)


def has_trigger(caption: str, trigger: str) -> bool:
    """True when ``trigger`` appears in ``caption`` as a whole token (case-sensitive, as tokenizers see it)."""
    return re.search(rf"(?<![\w]){re.escape(trigger)}(?![\w])", caption) is not None


def finish_caption(raw: str, config: DatasetConfig) -> str:
    """Clean a caption to one line, add prefix and suffix, and put the trigger word first if missing."""
    text = re.sub(r"</?s>|<pad>|<unk>", " ", raw)
    # control characters and U+FFFD (half a UTF-8 character) break caption files and tokenizers alike
    text = "".join(" " if unicodedata.category(c) == "Cc" or c == "\ufffd" else c for c in text)
    text = " ".join(text.split()).strip(" ,")
    text = f"{config.caption_prefix}{text}{config.caption_suffix}"
    text = " ".join(text.split()).strip(" ,")
    if not has_trigger(text, config.trigger_word):
        text = f"{config.trigger_word}, {text}" if text else config.trigger_word
    return text


def _template(config: DatasetConfig) -> tuple[Captioner, Callable[[], None]]:
    caption = template_caption(config)
    return (lambda _image: caption), _nothing


def _none(config: DatasetConfig) -> tuple[Captioner, Callable[[], None]]:
    return (lambda _image: ""), _nothing


def _florence2(config: DatasetConfig) -> tuple[Captioner, Callable[[], None]]:
    source = config.florence2_model or DEFAULT_FLORENCE2
    _refuse_remote_code_checkpoint(source)
    transformers, torch = _import_transformers("florence2")
    device, dtype = _device_and_dtype(torch)
    try:
        processor = transformers.AutoProcessor.from_pretrained(source)
        model = transformers.Florence2ForConditionalGeneration.from_pretrained(source, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise _unavailable("florence2", source, "--florence2-model", exc) from exc
    held = [model.to(device).eval()]  # a list so release() can drop the only reference
    del model
    task, max_tokens = config.florence2_task, config.caption_max_tokens

    def caption(image: Image.Image) -> str:
        inputs = processor(text=task, images=image.convert("RGB"), return_tensors="pt").to(device)
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        with torch.inference_mode():
            ids = held[0].generate(**inputs, max_new_tokens=max_tokens, num_beams=3, do_sample=False)
        return str(processor.batch_decode(ids, skip_special_tokens=True)[0])

    return caption, lambda: _free(held, torch)


def _blip(config: DatasetConfig) -> tuple[Captioner, Callable[[], None]]:
    source = config.blip_model or DEFAULT_BLIP
    transformers, torch = _import_transformers("blip")
    device, dtype = _device_and_dtype(torch)
    try:
        processor = transformers.AutoProcessor.from_pretrained(source)
        model = transformers.BlipForConditionalGeneration.from_pretrained(source, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise _unavailable("blip", source, "--blip-model", exc) from exc
    held = [model.to(device).eval()]
    del model
    max_tokens = config.caption_max_tokens

    def caption(image: Image.Image) -> str:
        inputs = processor(images=image.convert("RGB"), return_tensors="pt").to(device)
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        with torch.inference_mode():
            ids = held[0].generate(**inputs, max_new_tokens=max_tokens, num_beams=3, do_sample=False)
        return str(processor.decode(ids[0], skip_special_tokens=True))

    return caption, lambda: _free(held, torch)


# captioner name -> factory returning (caption function, release function)
CAPTIONERS: dict[str, Callable[[DatasetConfig], tuple[Captioner, Callable[[], None]]]] = {
    "template": _template,
    "florence2": _florence2,
    "blip": _blip,
    "none": _none,
}


class LazyCaptioner:
    """Loads the configured captioner on first use (a set with all captions given never loads a model)."""

    def __init__(self, config: DatasetConfig) -> None:
        self.config = config
        self._caption: Captioner | None = None
        self._release: Callable[[], None] = _nothing

    def __call__(self, image: Image.Image) -> str:
        if self._caption is None:
            self._caption, self._release = CAPTIONERS[self.config.captioner](self.config)
        return finish_caption(self._caption(image), self.config)

    def __enter__(self) -> LazyCaptioner:
        return self

    def __exit__(self, *_: object) -> None:
        self._release()
        self._caption, self._release = None, _nothing


def _import_transformers(name: str) -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise DependencyMissing(f"the {name} captioner needs torch and transformers: pip install 'transformers>=4.56' "
                                f"torch, or use --captioner template") from exc
    return transformers, torch


def _device_and_dtype(torch: Any) -> tuple[str, Any]:
    if torch.cuda.is_available():
        return "cuda", torch.float16
    return "cpu", torch.float32


def _refuse_remote_code_checkpoint(source: str) -> None:
    """microsoft/Florence-2-* folders hold remote code transformers' own Florence-2 cannot load."""
    config_file = Path(source) / "config.json"
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text())
        except (OSError, ValueError):
            return
        if "auto_map" in config or config.get("vision_config", {}).get("model_type") == "davit":
            raise InvalidInput(
                f"{source} is an original microsoft/Florence-2 checkpoint (remote code), which transformers' "
                "built-in Florence-2 does not load; download the converted florence-community/Florence-2-base "
                "(or -large) and pass that folder with --florence2-model", code="captioner_unavailable",
                field="florence2_model")


def _unavailable(name: str, source: str, option: str, exc: Exception) -> InvalidInput:
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return InvalidInput(f"could not load the {name} captioner from {source!r} ({first_line}); give {option} a local "
                        "model folder in transformers format, or use --captioner template",
                        code="captioner_unavailable", field=option.lstrip("-").replace("-", "_"))


def _free(held: list[Any], torch: Any) -> None:
    held.clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _nothing() -> None:
    return None
