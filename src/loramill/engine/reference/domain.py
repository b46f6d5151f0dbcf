"""The reference world's domain: coloured shapes on plain backgrounds, with captions, rendered here.

A ``Shape`` names everything in one image (colour, shape, background, texture, centre and size); a
caption names its colour, texture, shape and background ("a red circle on a white background"). The
same seed always draws the same specs and renders the same pixels, so the models trained on it and
every score measured on it are reproducible.

Concepts are split so a LoRA can learn something the base never saw: ``BASE_COLOURS`` × ``BASE_SHAPES``
(solid) is what the base denoisers are trained on; ``NEW_COLOURS``, ``NEW_SHAPES`` and the ``striped``
texture are held out of them (the VAE and the CLIP model see everything, see ``specs_for``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64  # pixels per side of every image in the domain
# Saturated colours with distinct hues, so a pixel's hue names its colour even after a VAE blurs it.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (235, 210, 40),
    "orange": (240, 130, 20), "purple": (150, 50, 200),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"white": (255, 255, 255), "black": (0, 0, 0)}
SHAPES = ("circle", "square", "triangle", "star")
TEXTURES = ("solid", "striped")
BASE_COLOURS = ("red", "green", "blue", "yellow", "orange")
BASE_SHAPES = ("circle", "square", "triangle")
NEW_COLOURS = ("purple",)
NEW_SHAPES = ("star",)
STRIPE_SHADE = 0.5  # stripes alternate the colour with this fraction of it (same hue, darker)
STRIPE_PERIOD = 6  # pixels between stripe starts, diagonal
SUPERSAMPLE = 4  # shapes are drawn 4x larger and downsampled: anti-aliased edges like a photo's


@dataclass(frozen=True)
class Shape:
    """One image of the domain: what is drawn, where (centre in pixels) and how big (radius in pixels)."""

    colour: str
    shape: str
    background: str = "white"
    texture: str = "solid"
    x: float = SIZE / 2
    y: float = SIZE / 2
    radius: float = 14.0

    def __post_init__(self) -> None:
        for name, value, allowed in (("colour", self.colour, COLOURS), ("shape", self.shape, SHAPES),
                                     ("background", self.background, BACKGROUNDS), ("texture", self.texture, TEXTURES)):
            if value not in allowed:
                raise ValueError(f"{name} {value!r} is not in the domain; choose one of: {', '.join(allowed)}")

    @property
    def caption(self) -> str:
        return caption(self.colour, self.shape, self.background, self.texture)


def caption(colour: str, shape: str, background: str = "white", texture: str = "solid") -> str:
    """The domain's caption: ``a red circle on a white background``, ``an orange striped star on …``."""
    texture_word = "" if texture == "solid" else f"{texture} "
    article = "an" if colour[0] in "aeiou" else "a"
    return f"{article} {colour} {texture_word}{shape} on a {background} background"


def base_captions() -> list[str]:
    """Every base colour × shape on every background: the prompts a LoRA must leave alone (teacher
    preservation keeps them; the demo and the quality benches pass them as ``preserve_prompts``)."""
    return [caption(c, s, b) for c in BASE_COLOURS for s in BASE_SHAPES for b in BACKGROUNDS]


def outline(shape: str, x: float, y: float, radius: float) -> list[tuple[float, float]] | tuple[float, ...]:
    """The polygon (or, for a circle, the bounding box) of ``shape`` centred at (x, y) with ``radius``."""
    if shape == "circle":
        return (x - radius, y - radius, x + radius, y + radius)
    if shape == "square":
        half = radius * 0.85  # about the circle's area, so sizes read alike
        return [(x - half, y - half), (x + half, y - half), (x + half, y + half), (x - half, y + half)]
    if shape == "triangle":  # equilateral, pointing up, centred on its centroid
        return [(x + radius * math.cos(math.radians(a)), y - radius * math.sin(math.radians(a)))
                for a in (90, 210, 330)]
    if shape == "star":  # five points, inner radius 0.45 of the outer
        return [(x + r * math.cos(math.radians(90 + 36 * k)), y - r * math.sin(math.radians(90 + 36 * k)))
                for k, r in ((k, radius if k % 2 == 0 else radius * 0.45) for k in range(10))]
    raise ValueError(f"unknown shape {shape!r}; choose one of: {', '.join(SHAPES)}")


def shape_mask(shape: str, x: float, y: float, radius: float, size: int = SIZE, supersample: int = 1) -> np.ndarray:
    """A boolean mask of ``shape`` on a ``size`` canvas (drawn ``supersample`` times larger, then averaged)."""
    big = size * supersample
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    geometry = outline(shape, x * supersample, y * supersample, radius * supersample)
    if shape == "circle":
        draw.ellipse(geometry, fill=255)
    else:
        draw.polygon(geometry, fill=255)
    array = np.asarray(canvas, dtype=np.float32) / 255.0
    if supersample > 1:
        array = array.reshape(size, supersample, size, supersample).mean(axis=(1, 3))
    return array


def render(spec: Shape) -> Image.Image:
    """The RGB image of ``spec``: the shape's colour (or its stripes) over a plain background."""
    coverage = shape_mask(spec.shape, spec.x, spec.y, spec.radius, supersample=SUPERSAMPLE)[..., None]
    colour = np.array(COLOURS[spec.colour], dtype=np.float32)
    fill = np.broadcast_to(colour, (SIZE, SIZE, 3)).copy()
    if spec.texture == "striped":
        yy, xx = np.mgrid[0:SIZE, 0:SIZE]
        dark = ((xx + yy) % STRIPE_PERIOD) >= STRIPE_PERIOD // 2
        fill[dark] = colour * STRIPE_SHADE
    background = np.array(BACKGROUNDS[spec.background], dtype=np.float32)
    pixels = coverage * fill + (1.0 - coverage) * background
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), "RGB")


def random_shape(rng: np.random.Generator, colours: tuple[str, ...] = BASE_COLOURS,
                 shapes: tuple[str, ...] = BASE_SHAPES, backgrounds: tuple[str, ...] = tuple(BACKGROUNDS),
                 textures: tuple[str, ...] = ("solid",)) -> Shape:
    """A spec drawn from ``rng``: the named concepts, a radius of 10–18 px, anywhere it fits with a margin."""
    radius = float(rng.uniform(10.0, 18.0))
    margin = radius + 3.0
    return Shape(colour=str(rng.choice(colours)), shape=str(rng.choice(shapes)),
                 background=str(rng.choice(backgrounds)), texture=str(rng.choice(textures)),
                 x=float(rng.uniform(margin, SIZE - margin)), y=float(rng.uniform(margin, SIZE - margin)),
                 radius=radius)


# Who sees which concepts: the VAE and CLIP see all of them (a VAE trained without stars reconstructs
# them badly), the base denoisers only the base ones, so a LoRA can teach the held-out ones.
CONCEPTS: dict[str, dict[str, tuple[str, ...]]] = {
    "all": dict(colours=tuple(COLOURS), shapes=SHAPES, textures=TEXTURES),
    "base": dict(colours=BASE_COLOURS, shapes=BASE_SHAPES, textures=("solid",)),
}


def specs_for(concepts: str, count: int, seed: int) -> list[Shape]:
    """``count`` specs of the ``concepts`` split (``"all"`` or ``"base"``), the same for the same seed."""
    if concepts not in CONCEPTS:
        raise ValueError(f"unknown concept split {concepts!r}; choose one of: {', '.join(CONCEPTS)}")
    rng = np.random.default_rng(seed)
    return [random_shape(rng, **CONCEPTS[concepts]) for _ in range(count)]


def render_batch(specs: list[Shape]) -> np.ndarray:
    """Images of ``specs`` as one uint8 array (N, SIZE, SIZE, 3)."""
    return np.stack([np.asarray(render(spec)) for spec in specs])


def centred(spec: Shape) -> Shape:
    """``spec`` moved to the centre at a mid radius: the canonical view of a concept."""
    return replace(spec, x=SIZE / 2, y=SIZE / 2, radius=14.0)
