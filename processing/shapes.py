"""Procedural shape scenes: the drawing and the caption grammar behind the embedded corpora.

A scene is one or two objects of one colour and shape, small or large, at a position, on a background. Its
caption names every attribute in a fixed order, so the caption is a deterministic function of the scene:

    "a large red circle in the center on black"
    "two small blue stars on the left on white"
"""

import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 220, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
    "cyan": (40, 210, 220),
    "pink": (250, 150, 200),
    "brown": (130, 80, 40),
    "white": (240, 240, 240),
    "gray": (128, 128, 128),
}
SHAPES = ["circle", "square", "triangle", "star", "cross", "diamond", "hexagon", "ring"]
SIZES = ["small", "large"]
POSITIONS = ["left", "right", "top", "bottom", "center"]
BACKGROUNDS = {"black": (0, 0, 0), "white": (255, 255, 255), "navy": (20, 20, 70)}
COUNT_WORDS = {1: "a", 2: "two"}
# Colour x shape pairs never drawn in the training split (a Latin pattern: each colour and shape at most once).
HELD_OUT_COMBINATIONS = frozenset((c, SHAPES[(3 * i) % len(SHAPES)]) for i, c in enumerate(list(COLOURS)[:8]))


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    size: str
    position: str
    count: int
    background: str

    @property
    def caption(self) -> str:
        noun = self.shape + ("s" if self.count > 1 else "")
        where = "in the center" if self.position == "center" else f"on the {self.position}"
        return f"{COUNT_WORDS[self.count]} {self.size} {self.colour} {noun} {where} on {self.background}"

    @property
    def class_name(self) -> str:
        """Zero-shot class of the scene: its colour and shape."""
        return f"{self.colour} {self.shape}"


def class_names() -> list[str]:
    return [f"{c} {s}" for c in COLOURS for s in SHAPES]


def random_scene(rng: random.Random, held_out: bool | None = None) -> Scene:
    """A random scene; `held_out=True/False` restricts colour x shape to the held-out / training pairs."""
    while True:
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        if held_out is None or ((colour, shape) in HELD_OUT_COMBINATIONS) == held_out:
            break
    size = rng.choice(SIZES)
    position = "center" if size == "large" else rng.choice(POSITIONS)
    count = 1 if size == "large" else rng.choice([1, 2])
    background = rng.choice([b for b in BACKGROUNDS if b != colour])
    return Scene(colour, shape, size, position, count, background)


def _centres(scene: Scene, size: int, rng: random.Random) -> list[tuple[float, float]]:
    c, q = size / 2, size / 4
    anchor = {"left": (q, c), "right": (size - q, c), "top": (c, q), "bottom": (c, size - q), "center": (c, c)}
    x, y = anchor[scene.position]
    jitter = size / 16

    def jittered(px, py):
        return px + rng.uniform(-jitter, jitter), py + rng.uniform(-jitter, jitter)

    if scene.count == 1:
        return [jittered(x, y)]
    offset = size / 7
    if scene.position in ("left", "right"):
        return [jittered(x, y - offset), jittered(x, y + offset)]
    return [jittered(x - offset, y), jittered(x + offset, y)]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(2, round(r / 3)))
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx - r, cy), (cx, cy + r), (cx + r, cy)], fill=fill)
    elif shape == "cross":
        w = r / 3
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    elif shape == "hexagon":
        draw.polygon([(cx + r * math.cos(k * math.pi / 3), cy + r * math.sin(k * math.pi / 3)) for k in range(6)], fill=fill)
    elif shape == "star":
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else r / 2.5
            angle = math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy - radius * math.sin(angle)))
        draw.polygon(points, fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def draw_scene(scene: Scene, rng: random.Random, size: int = 32, shape_scale: float = 1.0,
               offset: tuple[float, float] = (0.0, 0.0)) -> Image.Image:
    """Render `scene` as an RGB image of `size` x `size`; `shape_scale`/`offset` animate it (videos)."""
    image = Image.new("RGB", (size, size), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    radius = (size * (0.34 if scene.size == "large" else 0.17)) * shape_scale
    if scene.count > 1:
        radius *= 0.8
    for cx, cy in _centres(scene, size, rng):
        _draw_shape(draw, scene.shape, cx + offset[0], cy + offset[1], radius, COLOURS[scene.colour])
    return image


def class_prompts(name: str) -> list[str]:
    """Prompt ensemble of a zero-shot class ("red circle"): its caption under every size, position, count and
    background, in the caption grammar the model was trained on."""
    colour, shape = name.split()
    prompts = []
    for size in SIZES:
        for position in POSITIONS if size == "small" else ["center"]:
            for count in (1, 2) if size == "small" else (1,):
                for background in BACKGROUNDS:
                    if background != colour:
                        prompts.append(Scene(colour, shape, size, position, count, background).caption)
    return prompts
