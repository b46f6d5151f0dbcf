"""Face identity embeddings: dlib's 128-d face recognition network (the one face_recognition uses).

Why this model: it installs from the package index with no compiler (``dlib-bin`` wheels; the weights
in ``face-recognition-models`` are CC0), runs on a CPU in well under a second per photo, and its
authors publish one threshold for "same person": Euclidean distance below 0.6 (99.38% on LFW). The
install is ~130 MB, so it is an optional extra: ``pip install 'loramill[faces]'``.

Faces are found with dlib's HOG detector; when it finds none (a tight crop, a profile) the box comes
from OpenCV's Haar cascades, which the dataset step already uses.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from loramill.errors import DependencyMissing

SAME_PERSON_DISTANCE = 0.6  # dlib's published threshold for its 128-d embeddings
INSTALL_HINT = "pip install 'loramill[faces]' (dlib-bin and face-recognition-models, CC0 weights, ~130 MB)"
DETECT_MAX_SIDE = 800  # HOG detection on a copy this size: a 4000 px photo takes seconds otherwise


@dataclass(frozen=True)
class FaceModels:
    """The loaded dlib models: a frontal face detector, 5-point landmarks and the embedding network."""

    detector: Any
    landmarks: Any
    network: Any
    dlib: Any


def face_models_available() -> bool:
    """Whether the optional face extra is installed (checked without importing it)."""
    return all(importlib.util.find_spec(name) is not None for name in ("dlib", "face_recognition_models"))


@lru_cache(maxsize=1)
def load_face_models() -> FaceModels:
    """Load dlib's models once per process; a clear install hint when the extra is missing."""
    try:
        import dlib
    except ImportError as exc:
        raise DependencyMissing(f"face identity needs dlib: {INSTALL_HINT}") from exc
    # The package's own __init__ imports pkg_resources (gone from recent setuptools); read its files directly.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise DependencyMissing(f"face identity needs the face-recognition-models weights: {INSTALL_HINT}")
    models = Path(list(spec.submodule_search_locations)[0]) / "models"
    return FaceModels(
        detector=dlib.get_frontal_face_detector(),
        landmarks=dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat")),
        network=dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat")),
        dlib=dlib,
    )


def face_embedding(image: Image.Image) -> np.ndarray | None:
    """The 128-d identity embedding of the largest face in ``image``; ``None`` when no face is found."""
    models = load_face_models()
    rgb = image.convert("RGB")
    scale = min(1.0, DETECT_MAX_SIDE / max(rgb.size))
    small = rgb if scale == 1.0 else rgb.resize((round(rgb.width * scale), round(rgb.height * scale)),
                                                Image.Resampling.BILINEAR)
    box = _largest_face(models, np.asarray(small))
    if box is None:
        return None
    left, top, right, bottom = (round(v / scale) for v in box)
    pixels = np.asarray(rgb)
    shape = models.landmarks(pixels, models.dlib.rectangle(left, top, right, bottom))
    return np.asarray(models.network.compute_face_descriptor(pixels, shape), dtype=np.float32)


def face_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance of two embeddings: below ``SAME_PERSON_DISTANCE`` is the same person."""
    return float(np.linalg.norm(a - b))


def _largest_face(models: FaceModels, pixels: np.ndarray) -> tuple[int, int, int, int] | None:
    # upsample once: faces down to ~40 px are found, as face_recognition does by default
    found = list(models.detector(pixels, 1))
    if found:
        best = max(found, key=lambda r: r.width() * r.height())
        return best.left(), best.top(), best.right(), best.bottom()
    from loramill.engine.dataset.faces import detect_faces

    faces = detect_faces(Image.fromarray(pixels))
    if not faces:
        return None
    face = faces[0]
    return face.left, face.top, face.left + face.width, face.top + face.height
