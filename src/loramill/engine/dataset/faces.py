"""Face detection with OpenCV's bundled Haar cascades, and the face-centred crop box.

Haar cascades need no model download and run in milliseconds on a CPU, which is what a dataset step
on a GPU worker should cost. They ship with opencv-python-headless 4.x only (5.x dropped them); the
frontal cascade runs first and the profile cascade (both directions) only when it finds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from loramill.errors import DependencyMissing

DETECT_MAX_SIDE = 1024  # detection runs on a copy this size: faster, and the cascade's windows fit it


@dataclass(frozen=True)
class FaceBox:
    """A detected face in image pixels."""

    left: int
    top: int
    width: int
    height: int

    @property
    def area(self) -> int:
        return self.width * self.height

    @property
    def centre(self) -> tuple[float, float]:
        return self.left + self.width / 2, self.top + self.height / 2


def detect_faces(image: Image.Image) -> list[FaceBox]:
    """Faces in ``image``, largest first; empty when there is none."""
    cv2 = load_cv2()
    scale = min(1.0, DETECT_MAX_SIDE / max(image.size))
    small = image if scale == 1.0 else image.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.BILINEAR)
    grey = cv2.equalizeHist(np.asarray(small.convert("L")))
    # a face smaller than a tenth of the picture is background people, not the subject
    min_size = max(24, min(grey.shape) // 10)
    boxes = _run(_cascade("haarcascade_frontalface_default.xml"), grey, min_size)
    if not boxes:
        profile = _cascade("haarcascade_profileface.xml")
        boxes = _run(profile, grey, min_size)
        mirrored = _run(profile, np.ascontiguousarray(grey[:, ::-1]), min_size)
        boxes += [(grey.shape[1] - x - w, y, w, h) for x, y, w, h in mirrored]
    faces = [FaceBox(round(x / scale), round(y / scale), round(w / scale), round(h / scale)) for x, y, w, h in boxes]
    return sorted(faces, key=lambda f: f.area, reverse=True)


def face_crop_box(image_size: tuple[int, int], face: FaceBox, margin: float) -> tuple[int, int, int, int]:
    """A square (left, top, right, bottom) around ``face`` with ``margin`` × its size on every side.

    The centre moves up by a tenth of the face: Haar boxes run from brows to mouth, and a crop that
    keeps the hair and cuts the neck trains a better likeness than one that does the opposite.
    The square shrinks to fit the image and slides to stay inside it.
    """
    width, height = image_size
    side = round(max(face.width, face.height) * (1 + 2 * margin))
    side = max(1, min(side, width, height))
    cx, cy = face.centre
    cy -= face.height * 0.1
    left = int(round(min(max(cx - side / 2, 0), width - side)))
    top = int(round(min(max(cy - side / 2, 0), height - side)))
    return left, top, left + side, top + side


def _run(cascade: Any, grey: np.ndarray, min_size: int) -> list[tuple[int, int, int, int]]:
    # 8 neighbours: the usual 3–5 also "find" faces in coin reliefs and textures
    found = cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=8, minSize=(min_size, min_size))
    return [tuple(int(v) for v in box) for box in found]  # type: ignore[misc]


@lru_cache(maxsize=4)
def _cascade(name: str) -> Any:
    cv2 = load_cv2()
    path = Path(cv2.data.haarcascades) / name
    classifier = cv2.CascadeClassifier(str(path))
    if classifier.empty():
        raise DependencyMissing(f"OpenCV's Haar cascade {path} is missing or unreadable; reinstall "
                                "'opencv-python-headless>=4.8,<5'")
    return classifier


def load_cv2() -> Any:
    try:
        import cv2
    except ImportError as exc:
        raise DependencyMissing("face mode needs OpenCV: pip install 'opencv-python-headless>=4.8,<5'") from exc
    if not hasattr(cv2, "CascadeClassifier") or not hasattr(cv2, "data"):
        raise DependencyMissing(f"OpenCV {cv2.__version__} has no Haar cascades (5.x dropped them); "
                                "pip install 'opencv-python-headless>=4.8,<5'")
    return cv2
