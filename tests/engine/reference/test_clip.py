"""The shipped CLIP model of the reference world: a real CLIP folder whose similarities mean something here."""

from __future__ import annotations

from loramill.engine.reference import domain
from loramill.engine.reference.clip import image_embeddings, load_clip, text_embeddings
from loramill.engine.reference.models import write_reference_model


def test_reference_clip_matches_images_to_their_captions(tmp_path):
    model, processor = load_clip(write_reference_model("clip", tmp_path / "clip"))
    specs = domain.specs_for("all", 96, seed=123)
    captions = sorted({domain.caption(c, s, b, t) for c in domain.COLOURS for s in domain.SHAPES
                       for b in domain.BACKGROUNDS for t in domain.TEXTURES})
    images = image_embeddings(model, processor, [domain.render(s) for s in specs])
    texts = text_embeddings(model, processor, captions)
    predicted = [captions[i] for i in (images @ texts.T).argmax(dim=1).tolist()]
    accuracy = sum(p == s.caption for p, s in zip(predicted, specs, strict=True)) / len(specs)
    assert accuracy >= 0.8
    # Image-image similarity (what fidelity measures): a concept is nearer itself than other concepts.
    same = image_embeddings(model, processor, [domain.render(domain.Shape("purple", "star", x=24, y=30))])
    other = image_embeddings(model, processor, [domain.render(domain.Shape("purple", "star", x=40, y=36)),
                                                domain.render(domain.Shape("red", "circle", x=40, y=36))])
    similarity = (same @ other.T).squeeze(0)
    assert similarity[0] > similarity[1] + 0.1
