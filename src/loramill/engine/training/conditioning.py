"""Which text a step conditions on: caption dropout, and the trigger-free prompts preservation uses.

Both are pure functions of their inputs and (seed, micro-batch index), so a resumed run drops exactly
the captions the uninterrupted run dropped.
"""

from __future__ import annotations

import random
import re


def drop_captions(captions: list[str], rate: float, seed: int, micro: int) -> list[str]:
    """Each caption replaced by the empty prompt with probability ``rate`` (the unconditional branch
    classifier-free guidance reads at generation; a LoRA trained only on captions weakens it)."""
    if rate <= 0:
        return captions
    rng = random.Random(seed * 7_919 + micro * 104_729 + 17)
    return ["" if rng.random() < rate else caption for caption in captions]


def without_trigger(caption: str, triggers: list[str], class_word: str | None) -> str:
    """``caption`` with every trigger replaced by the class word (or removed): the same picture described
    without the new concept, which preservation asks the LoRA to render as the teacher does."""
    text = caption
    for trigger in triggers:
        text = re.sub(rf"(?<!\w){re.escape(trigger)}(?!\w)", class_word or "", text)
    return re.sub(r"\s+", " ", re.sub(r"\s+([,.;])", r"\1", text)).strip(" ,")


def preservation_prompts(captions: list[str], triggers: list[str], class_word: str | None, keep: list[str],
                         micro: int) -> list[str]:
    """One trigger-free prompt per sample, deterministic for (micro-batch, position): the caption without
    the trigger; when the user lists prompts to keep (e.g. the previous concept's prompts, when continuing),
    every other sample takes the next of those instead, so both the base's behaviour and theirs are kept."""
    out = []
    for i, caption in enumerate(captions):
        n = micro * len(captions) + i
        out.append(keep[(n // 2) % len(keep)] if keep and n % 2 else without_trigger(caption, triggers, class_word))
    return out
