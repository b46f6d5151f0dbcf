"""Face mode's identity check: the photos of a face LoRA must all show one person.

A face dataset gathered from a phone or a web search often holds a friend, a partner or a look-alike;
a LoRA trained on it learns an average of them. Each kept face crop is embedded with dlib's face
recognition network (``engine/evaluation/faces.py``); the people are found by grouping embeddings
within dlib's same-person distance, and every photo outside the largest group is rejected as
``other_person``. Without the optional ``loramill[faces]`` extra the check is skipped with a warning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from loramill.engine.dataset.report import Rejection
from loramill.engine.evaluation.faces import SAME_PERSON_DISTANCE

if TYPE_CHECKING:
    from loramill.engine.dataset.report import DatasetReport


@dataclass
class IdentitySpread:
    """Who the photos show: one group per person, the majority first; distances to the majority's centre."""

    groups: list[list[str]]  # file names per person, largest group first
    distances: dict[str, float]  # every embedded file -> distance to the majority's mean embedding
    no_face: list[str] = field(default_factory=list)  # crops the embedding model found no face in
    threshold: float = SAME_PERSON_DISTANCE

    @property
    def majority(self) -> list[str]:
        return self.groups[0] if self.groups else []

    @property
    def others(self) -> list[str]:
        return [name for group in self.groups[1:] for name in group]

    def line(self) -> str:
        """One line for the dataset summary."""
        if not self.groups:
            return "identity: no face could be embedded"
        same = [self.distances[n] for n in self.majority]
        text = (f"identity: {len(self.majority)} of {len(self.distances)} photos are one person (distance to "
                f"their mean {min(same):.2f}–{max(same):.2f}; same person below {self.threshold})")
        if self.others:
            far = [self.distances[n] for n in self.others]
            text += (f"; {len(self.others)} photo(s) of {len(self.groups) - 1} other person(s), "
                     f"{min(far):.2f}–{max(far):.2f} away (rejected as other_person)")
        if self.no_face:
            text += f"; {len(self.no_face)} not checked (no face for the embedding model)"
        return text

    def to_dict(self) -> dict[str, object]:
        return {"groups": self.groups, "distances": {k: round(v, 4) for k, v in self.distances.items()},
                "no_face": self.no_face, "threshold": self.threshold}


def identity_spread(embeddings: dict[str, np.ndarray | None], threshold: float = SAME_PERSON_DISTANCE
                    ) -> IdentitySpread:
    """Group ``embeddings`` (file -> 128-d vector, ``None`` = no face) by person, the largest group first.

    Greedy and order-free: the photo with the most same-person neighbours seeds a group of those
    neighbours; the group's mean then decides membership (a mean is steadier than any one photo);
    the rest are grouped the same way. Ties go to the tighter group.
    """
    names = [n for n, e in embeddings.items() if e is not None]
    no_face = [n for n, e in embeddings.items() if e is None]
    if not names:
        return IdentitySpread([], {}, no_face, threshold)
    vectors = np.stack([embeddings[n] for n in names]).astype(np.float64)  # type: ignore[misc]
    pairwise = np.linalg.norm(vectors[:, None] - vectors[None], axis=-1)
    remaining = list(range(len(names)))
    groups: list[list[int]] = []
    while remaining:
        sub = pairwise[np.ix_(remaining, remaining)]
        close = sub < threshold
        seed = max(range(len(remaining)), key=lambda i: (close[i].sum(), -sub[i][close[i]].mean()))
        centre = vectors[[remaining[j] for j in np.nonzero(close[seed])[0]]].mean(axis=0)
        members = [i for i in remaining if np.linalg.norm(vectors[i] - centre) < threshold] or [remaining[seed]]
        groups.append(members)
        remaining = [i for i in remaining if i not in members]
    groups.sort(key=len, reverse=True)
    centre = vectors[groups[0]].mean(axis=0)
    distances = {names[i]: float(np.linalg.norm(vectors[i] - centre)) for i in range(len(names))}
    return IdentitySpread([[names[i] for i in g] for g in groups], distances, no_face, threshold)


MIN_FACES = 3  # with fewer photos there is no majority to trust


def reject_other_people(report: DatasetReport, folder: Path) -> None:
    """Move every kept photo (in ``folder``) whose face is not the majority person to ``other_person``."""
    from loramill.engine.evaluation.faces import INSTALL_HINT, face_embedding, face_models_available

    if not face_models_available():
        report.warnings.append(f"identity not checked (photos of other people are kept): {INSTALL_HINT}")
        return
    embeddings = {}
    for kept in report.kept:
        with Image.open(folder / Path(kept.file).name) as image:
            embeddings[kept.file] = face_embedding(image)
    spread = identity_spread(embeddings)
    report.identity = spread
    if len(spread.distances) < MIN_FACES:
        report.warnings.append(f"identity not checked: only {len(spread.distances)} face(s) could be embedded, "
                               f"fewer than {MIN_FACES}")
        return
    if len(spread.majority) * 2 <= len(spread.distances):
        report.warnings.append(f"no clear majority person: the largest group is {len(spread.majority)} of "
                               f"{len(spread.distances)} photos; check the set shows one person")
    others = set(spread.others)
    for kept in [k for k in report.kept if k.file in others]:
        staged = folder / Path(kept.file).name
        staged.unlink(missing_ok=True)
        staged.with_suffix(".txt").unlink(missing_ok=True)
        report.kept.remove(kept)
        report.rejected.append(Rejection(kept.source, "other_person", (
            f"the face is {spread.distances[kept.file]:.2f} from the mean of the {len(spread.majority)} photos of "
            f"the majority person (the same person is below {spread.threshold}); remove it or use photos of "
            "one person only")))
