"""Face mode's identity check on real photographs: one person kept, another rejected as other_person.

The photos (tests/engine/dataset/photos/README.md: five of one person, one of another) come from the
face_recognition package's test images. The embedding model is the optional ``loramill[faces]`` extra.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loramill.engine.dataset.config import DatasetConfig
from loramill.engine.dataset.identity import identity_spread
from loramill.engine.dataset.prepare import prepare_dataset
from loramill.engine.evaluation.faces import (
    SAME_PERSON_DISTANCE,
    face_distance,
    face_embedding,
    face_models_available,
)

PHOTOS = Path(__file__).parent / "photos"
SAME = ["obama.jpg", "obama2.jpg", "obama3.jpg", "obama_partial_face.jpg", "obama_partial_face2.jpg"]
OTHER = "biden.jpg"

needs_faces = pytest.mark.skipif(not face_models_available(), reason="needs the faces extra: pip install 'loramill[faces]'")


@needs_faces
def test_face_embeddings_separate_same_person_from_other_person() -> None:
    embeddings = {name: face_embedding(Image.open(PHOTOS / name)) for name in [*SAME, OTHER]}
    assert all(e is not None for e in embeddings.values())
    same = [face_distance(embeddings[a], embeddings[b]) for a, b in combinations(SAME, 2)]  # type: ignore[arg-type]
    other = [face_distance(embeddings[a], embeddings[OTHER]) for a in SAME]  # type: ignore[arg-type]
    # measured: same person 0.24–0.43, other person 0.81–0.87; dlib's threshold 0.6 sits between with margin
    assert max(same) < SAME_PERSON_DISTANCE - 0.1
    assert min(other) > SAME_PERSON_DISTANCE + 0.1


@needs_faces
def test_prepare_face_mode_rejects_other_person(tmp_path: Path, config: DatasetConfig) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in [*SAME, OTHER]:
        shutil.copy(PHOTOS / name, folder / name)
    report = prepare_dataset([str(folder)], tmp_path / "out", replace(config, subject="face", upscale=True))
    rejected = {Path(r.source).name: r for r in report.rejected}
    assert rejected[OTHER].reason == "other_person"
    assert "majority person" in rejected[OTHER].message
    kept = sorted(Path(k.source).name for k in report.kept)
    # the partial-face crops are left out earlier (no_face: the Haar detector needs the whole face)
    assert kept == ["obama.jpg", "obama2.jpg", "obama3.jpg"]
    assert not any(OTHER.split(".")[0] in p.name for p in (tmp_path / "out" / "images").iterdir())
    assert report.identity is not None and len(report.identity.majority) == len(kept)
    assert "identity: " in report.summary() and "1 photo(s) of 1 other person(s)" in report.summary()


def test_identity_spread_groups_by_person() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=128), rng.normal(size=128)
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)  # ~1.4 apart: two people
    embeddings = {f"a{i}": a + rng.normal(scale=0.02, size=128) for i in range(4)}
    embeddings.update({"b0": b, "b1": b + 0.01, "none": None})
    spread = identity_spread(embeddings)  # type: ignore[arg-type]
    assert sorted(spread.majority) == ["a0", "a1", "a2", "a3"]
    assert sorted(spread.others) == ["b0", "b1"] and spread.no_face == ["none"]
    assert spread.distances["b0"] > 1.0 > 0.3 > spread.distances["a0"]
