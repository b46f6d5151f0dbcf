"""A tqdm progress bar fed by the engine's progress callback (the engine itself never prints)."""

from __future__ import annotations

import sys
from typing import Any

from loramill.engine.progress import Progress

_LABELS = {"cache": "caching latents", "train": "training", "generate": "generating", "dataset": "preparing"}


class ProgressBar:
    """One bar per stage: steps, loss, it/s and ETA for training."""

    def __init__(self, disable: bool = False) -> None:
        self.disable = disable or not sys.stderr.isatty() and False
        self._bar: Any = None
        self._stage: str | None = None

    def __call__(self, p: Progress) -> None:
        from tqdm import tqdm

        if p.stage != self._stage:
            self.close()
            self._stage = p.stage
            self._bar = tqdm(total=p.total, desc=_LABELS.get(p.stage, p.stage), unit="step" if p.stage == "train"
                             else "it", disable=self.disable, dynamic_ncols=True)
        bar = self._bar
        bar.total = p.total
        bar.update(p.step - bar.n)
        if "loss" in p.info:
            bar.set_postfix(loss=f"{p.info['loss']:.4f}", lr=f"{p.info.get('lr', 0):.2e}", refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
