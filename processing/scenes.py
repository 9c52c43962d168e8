"""Shape scenes and clips: the vocabulary, the drawing and the caption grammar of the generated corpora.

Images. A scene is one or two groups of identical objects on a plain background. A group has a colour, a shape, a
size (small / large), a position (left / right / top / bottom / center) and a count (1-4 when small, 1-2 when
large). Two-group scenes put their groups on opposite sides (left + right or top + bottom) and never share a colour
or a shape. The caption is a deterministic function of the scene, every attribute a word of it::

    "a large red circle in the center, black background"
    "three small blue stars at the top, white background"
    "a small green cross on the left and two small pink rings on the right, gray background"

Clips. One object of a colour and a shape on a background goes through one or two events (moves left / right /
up / down, grows, shrinks, appears, disappears), each taking an equal share of the frames::

    "a red circle moves left, black background"
    "a blue square appears then grows, white background"

Held-out combinations (never drawn in training splits, one per colour and per shape):
    colour x shape (images): red square, green cross, blue ring, yellow triangle, purple diamond, orange circle,
    cyan star, pink hexagon.
    shape x event (clips): circle moves up, square shrinks, triangle moves left, star moves down, cross appears,
    diamond moves right, hexagon grows, ring disappears.
"""

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {
    "red": (230, 30, 30),
    "green": (30, 190, 50),
    "blue": (40, 70, 240),
    "yellow": (240, 220, 30),
    "purple": (150, 50, 210),
    "orange": (250, 140, 20),
    "cyan": (30, 220, 230),
    "pink": (250, 140, 200),
}
SHAPES = ["circle", "square", "triangle", "star", "cross", "diamond", "hexagon", "ring"]
PLURALS = {s: s + ("es" if s.endswith("ss") else "s") for s in SHAPES}
SIZES = ["small", "large"]
POSITIONS = ["left", "right", "top", "bottom", "center"]
POSITION_PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
                    "center": "in the center"}
MAX_COUNT = {"small": 2, "large": 2}
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
BACKGROUNDS = {"black": (0, 0, 0), "white": (255, 255, 255), "gray": (128, 128, 128)}
EVENTS = ["moves left", "moves right", "moves up", "moves down", "grows", "shrinks", "appears", "disappears"]

HELD_OUT_PAIRS = frozenset((c, SHAPES[(3 * i + 1) % len(SHAPES)]) for i, c in enumerate(COLOURS))
HELD_OUT_EVENTS = frozenset((s, EVENTS[(3 * i + 2) % len(EVENTS)]) for i, s in enumerate(SHAPES))

_RADIUS = {"small": 0.13, "large": 0.25}  # of the image side
_OPPOSITE = [("left", "right"), ("top", "bottom")]


@dataclass(frozen=True)
class Group:
    """`count` identical objects of one colour, shape and size at one position."""

    colour: str
    shape: str
    size: str
    position: str
    count: int = 1

    @property
    def phrase(self) -> str:
        noun = self.shape if self.count == 1 else PLURALS[self.shape]
        number = "a" if self.count == 1 else NUMBER_WORDS[self.count]
        return f"{number} {self.size} {self.colour} {noun} {POSITION_PHRASES[self.position]}"


@dataclass(frozen=True)
class Scene:
    """One or two groups on a background."""

    groups: tuple[Group, ...]
    background: str

    @property
    def caption(self) -> str:
        return " and ".join(g.phrase for g in self.groups) + f", {self.background} background"

    @property
    def class_name(self) -> str | None:
        """Zero-shot class ("a red circle") of a one-group scene, None for two groups."""
        return class_name(self.groups[0].colour, self.groups[0].shape) if len(self.groups) == 1 else None


def class_name(colour: str, shape: str) -> str:
    """ "a red circle", "an orange star"."""
    return f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {shape}"


def class_names() -> list[str]:
    """All colour x shape classes, label `i` = `class_names()[i]`."""
    return [class_name(c, s) for c in COLOURS for s in SHAPES]


def class_prompts(colour: str, shape: str) -> list[str]:
    """Captions of every one-group scene of a class (all sizes, positions, counts, backgrounds): a prompt
    ensemble for zero-shot classification in the caption grammar."""
    return [Scene((Group(colour, shape, size, position, count),), background).caption
            for size in SIZES for position in POSITIONS for count in range(1, MAX_COUNT[size] + 1)
            for background in BACKGROUNDS]


def _pair(rng: random.Random, held_out: bool, exclude_colours=(), exclude_shapes=()) -> tuple[str, str]:
    pool = sorted(HELD_OUT_PAIRS) if held_out else [(c, s) for c in COLOURS for s in SHAPES
                                                    if (c, s) not in HELD_OUT_PAIRS]
    pool = [(c, s) for c, s in pool if c not in exclude_colours and s not in exclude_shapes]
    return rng.choice(pool)


def _group(rng: random.Random, colour: str, shape: str, position: str, max_count: int = 4) -> Group:
    size = rng.choice(SIZES)
    return Group(colour, shape, size, position, rng.randint(1, min(max_count, MAX_COUNT[size])))


def random_scene(rng: random.Random, held_out: bool = False, two_groups: float = 0.25) -> Scene:
    """A random scene. Training scenes (`held_out=False`) use only non-held-out colour x shape pairs; held-out
    scenes have a held-out pair in their first group. `two_groups` is the probability of a second group."""
    colour, shape = _pair(rng, held_out)
    background = rng.choice(list(BACKGROUNDS))
    if rng.random() >= two_groups:
        return Scene((_group(rng, colour, shape, rng.choice(POSITIONS)),), background)
    first, second = rng.choice(_OPPOSITE)
    if rng.random() < 0.5:
        first, second = second, first
    other = _pair(rng, False, exclude_colours=(colour,), exclude_shapes=(shape,))
    groups = [_group(rng, colour, shape, first, 2), _group(rng, *other, second, 2)]
    groups.sort(key=lambda g: POSITIONS.index(g.position))  # caption order: left before right, top before bottom
    return Scene(tuple(groups), background)


def _anchor(position: str, side: float) -> tuple[float, float]:
    c, q = side / 2, side / 4
    return {"left": (q, c), "right": (side - q, c), "top": (c, q), "bottom": (c, side - q), "center": (c, c)}[position]


def _layout(count: int, position: str, spacing: float) -> list[tuple[float, float]]:
    """Offsets of `count` objects: a line along the region's long axis, 2 x 2 for four."""
    if count == 4:
        h = spacing / 2
        return [(-h, -h), (h, -h), (-h, h), (h, h)]
    steps = [(k - (count - 1) / 2) * spacing for k in range(count)]
    vertical = position in ("left", "right")
    return [(0.0, s) if vertical else (s, 0.0) for s in steps]


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    """Draw one `shape` of radius `r` centred at (cx, cy)."""
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(1, round(r / 3)))
    elif shape == "square":
        s = r * 0.85
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx - r * 0.75, cy), (cx, cy + r), (cx + r * 0.75, cy)], fill=fill)
    elif shape == "cross":
        w = max(0.6, r / 3)
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    elif shape == "hexagon":
        draw.polygon([(cx + r * math.cos(k * math.pi / 3), cy + r * math.sin(k * math.pi / 3)) for k in range(6)],
                     fill=fill)
    elif shape == "star":
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * 0.42
            angle = math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy - radius * math.sin(angle)))
        draw.polygon(points, fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def draw_scene(scene: Scene, rng: random.Random, image_size: int = 32) -> Image.Image:
    """Render `scene` as an RGB `image_size` x `image_size` image (positions jittered by up to 1/64 of the side)."""
    image = Image.new("RGB", (image_size, image_size), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    for group in scene.groups:
        r = _RADIUS[group.size] * image_size
        ax, ay = _anchor(group.position, image_size)
        jitter = image_size / 64
        for dx, dy in _layout(group.count, group.position, 2 * r + 2 * jitter + image_size / 32):
            x = min(max(ax + dx + rng.uniform(-jitter, jitter), r), image_size - 1 - r)
            y = min(max(ay + dy + rng.uniform(-jitter, jitter), r), image_size - 1 - r)
            draw_shape(draw, group.shape, x, y, r, COLOURS[group.colour])
    return image


# --------------------------------------------------------------------------------------------------------- clips
@dataclass(frozen=True)
class Clip:
    """One object going through `events` in order."""

    colour: str
    shape: str
    background: str
    events: tuple[str, ...]

    @property
    def caption(self) -> str:
        return f"{class_name(self.colour, self.shape)} {' then '.join(self.events)}, {self.background} background"


def random_clip(rng: random.Random, held_out: bool = False, two_events: float = 0.5, num_events: int | None = None,
                shape: str | None = None, colour: str | None = None, background: str | None = None) -> Clip:
    """A random clip. Training clips (`held_out=False`) never pair their shape with a held-out event; held-out clips
    have a held-out shape x event pair among their events."""
    shape = shape or rng.choice(SHAPES)
    colour = colour or rng.choice(list(COLOURS))
    background = background or rng.choice(list(BACKGROUNDS))
    n = num_events or (2 if rng.random() < two_events else 1)
    while True:
        events = [rng.choice([e for e in EVENTS if e != "disappears"]) if n > 1 else rng.choice(EVENTS)]
        if n > 1:
            events.append(rng.choice([e for e in EVENTS if e not in ("appears", events[0])]))
        hits = [(shape, e) in HELD_OUT_EVENTS for e in events]
        if any(hits) == held_out:
            return Clip(colour, shape, background, tuple(events))


def render_clip(clip: Clip, num_frames: int = 8, image_size: int = 32) -> np.ndarray:
    """Frames (F, H, W, 3) uint8 of `clip`; each event takes an equal share of the frames."""
    side = image_size
    step, grow = 0.42 * side, 1.8
    moves = {"moves left": (-step, 0), "moves right": (step, 0), "moves up": (0, -step), "moves down": (0, step)}
    # One state (x, y, radius, visible) per frame, from a start at the origin; recentred afterwards.
    phases = np.array_split(np.arange(num_frames), len(clip.events))
    x = y = 0.0
    r = 0.14 * side if clip.events[0] != "shrinks" else 0.14 * side * grow
    visible = clip.events[0] != "appears"
    states = []
    for event, frames in zip(clip.events, phases):
        k = len(frames)
        x0, y0, r0 = x, y, r
        for j in range(k):
            t = (j + 1) / k
            if event in moves:
                x, y = x0 + moves[event][0] * t, y0 + moves[event][1] * t
            elif event == "grows":
                r = r0 * grow ** t
            elif event == "shrinks":
                r = r0 / grow ** t
            elif event == "appears":
                visible = j >= k // 2
            elif event == "disappears":
                visible = j < k // 2
            states.append((x, y, r, visible))
    xs, ys = [s[0] for s in states], [s[1] for s in states]
    shift_x, shift_y = side / 2 - (min(xs) + max(xs)) / 2, side / 2 - (min(ys) + max(ys)) / 2
    out = np.empty((num_frames, side, side, 3), dtype=np.uint8)
    for f, (x, y, r, visible) in enumerate(states):
        image = Image.new("RGB", (side, side), BACKGROUNDS[clip.background])
        if visible:
            draw_shape(ImageDraw.Draw(image), clip.shape, x + shift_x, y + shift_y, r, COLOURS[clip.colour])
        out[f] = np.asarray(image)
    return out
