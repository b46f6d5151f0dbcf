"""Face identity fidelity: the share of images that are the references' person, on real photographs."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from loramill.engine.evaluation.evaluate import face_centre, face_rate
from loramill.engine.evaluation.faces import face_models_available
from loramill.errors import InvalidInput

PHOTOS = Path(__file__).parents[1] / "dataset" / "photos"  # see its README.md: source and licence

pytestmark = pytest.mark.skipif(not face_models_available(), reason="needs the faces extra: "
                                "pip install 'loramill[faces]'")


def testface_rate_counts_renders_of_the_references_person() -> None:
    references = [Image.open(PHOTOS / name) for name in ("obama.jpg", "obama3.jpg")]
    centre = face_centre(references)
    renders = [Image.open(PHOTOS / "obama2.jpg"), Image.open(PHOTOS / "biden.jpg"),
               Image.new("RGB", (128, 128), (90, 90, 90))]  # same person, other person, no face at all
    assert face_rate(renders, centre) == pytest.approx(1 / 3)


def test_face_references_without_a_face_are_refused() -> None:
    with pytest.raises(InvalidInput, match="no face found in any reference image"):
        face_centre([Image.new("RGB", (128, 128), (90, 90, 90))])
