"""Scenes of the synthetic world: coloured shapes on a cluttered background, and their rendering.

A scene is symbolic first (objects with shape, colour, size and a pixel box), so every dataset's
language is generated from the same ground truth the pixels show; rendering with Pillow comes
last.  Objects may overlap (later ones occlude earlier ones, up to a limit), and the background
carries noise, a gradient, stray lines and specks so that a detector has something to reject.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (45, 85, 225),
    "yellow": (240, 210, 45),
    "purple": (145, 60, 185),
    "orange": (245, 140, 30),
    "white": (240, 240, 240),
}
SIZES = ("small", "medium", "large")
# Object side as a fraction of min(W, H), per size class; the gaps keep the classes separable.
SIZE_RANGES = {"small": (0.11, 0.15), "medium": (0.20, 0.25), "large": (0.31, 0.38)}
MAX_OVERLAP = 0.3  # at most this share of a smaller box may be covered by another object's box


@dataclass
class SceneObject:
    object_id: int  # globally unique (COCO-like annotation id / GuessWhat object id / V7W box id)
    shape: str
    colour: str
    size: str
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels

    @property
    def xywh(self) -> list[float]:
        x1, y1, x2, y2 = self.box
        return [x1, y1, x2 - x1, y2 - y1]

    @property
    def centre(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.box
        return (x1 + x2) / 2, (y1 + y2) / 2

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return (x2 - x1) * (y2 - y1)

    def phrase(self, *attrs: str) -> str:
        """e.g. phrase("size", "colour", "shape") -> "large red circle"."""
        return " ".join(getattr(self, a) for a in attrs)


@dataclass
class Scene:
    key: str  # unique name of the rendering (also the image file stem)
    width: int
    height: int
    objects: list[SceneObject]
    seed: int
    file: str = ""  # path of the rendered image relative to the world root
    ids: dict[str, str] = field(default_factory=dict)  # id per pool: coco, vg, flickr, gqa, nlvr2

    def count(self, shape: str | None = None, colour: str | None = None, size: str | None = None) -> int:
        return sum(
            1
            for o in self.objects
            if (shape is None or o.shape == shape)
            and (colour is None or o.colour == colour)
            and (size is None or o.size == size)
        )

    def to_json(self) -> dict:
        return {
            "key": self.key,
            "file": self.file,
            "width": self.width,
            "height": self.height,
            "ids": self.ids,
            "objects": [
                {
                    "id": o.object_id,
                    "shape": o.shape,
                    "colour": o.colour,
                    "size": o.size,
                    "box": [round(v, 2) for v in o.box],
                }
                for o in self.objects
            ],
        }


def _overlap_fraction(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / smaller if smaller > 0 else 0.0


class SceneSampler:
    """Draws symbolic scenes; `palette` limits the shapes/colours of one scene so repeats occur
    (RefCOCO-style expressions then need attributes or location words to single an object out)."""

    def __init__(self, rng: np.random.Generator, next_object_id: int = 1) -> None:
        self.rng = rng
        self.next_object_id = next_object_id

    def palette(self) -> tuple[list[str], list[str]]:
        shapes = self.rng.choice(SHAPES, size=int(self.rng.integers(2, 4)), replace=False).tolist()
        colours = self.rng.choice(list(COLOURS), size=int(self.rng.integers(2, 5)), replace=False).tolist()
        return shapes, colours

    def sample(
        self,
        key: str,
        min_objects: int = 2,
        max_objects: int = 6,
        palette: tuple[list[str], list[str]] | None = None,
    ) -> Scene:
        rng = self.rng
        W, H = int(rng.integers(200, 321)), int(rng.integers(160, 257))
        n = int(rng.integers(min_objects, max_objects + 1))
        shapes, colours = palette if palette is not None else self.palette()
        objects: list[SceneObject] = []
        tries = 0
        while len(objects) < n and tries < 200:
            tries += 1
            size = SIZES[int(rng.integers(3))]
            lo, hi = SIZE_RANGES[size]
            side = rng.uniform(lo, hi) * min(W, H)
            x1, y1 = rng.uniform(2, W - side - 2), rng.uniform(2, H - side - 2)
            box = (float(x1), float(y1), float(x1 + side), float(y1 + side))
            if any(_overlap_fraction(box, o.box) > MAX_OVERLAP for o in objects):
                continue
            # Mostly from the scene's palette; sometimes any shape/colour, so every combination occurs.
            shape = (
                shapes[int(rng.integers(len(shapes)))] if rng.random() < 0.8 else SHAPES[int(rng.integers(6))]
            )
            colour = (
                colours[int(rng.integers(len(colours)))]
                if rng.random() < 0.8
                else list(COLOURS)[int(rng.integers(len(COLOURS)))]
            )
            objects.append(SceneObject(self.next_object_id, shape, colour, size, box))
            self.next_object_id += 1
        return Scene(key, W, H, objects, seed=int(rng.integers(2**31)))


def _shape_polygon(shape: str, box: tuple[float, float, float, float]) -> list[tuple[float, float]]:
    x1, y1, x2, y2 = box
    cx, cy, r = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2
    match shape:
        case "triangle":
            return [(x1, y2), (x2, y2), (cx, y1)]
        case "diamond":
            return [(cx, y1), (x2, cy), (cx, y2), (x1, cy)]
        case "star":
            pts = []
            for k in range(10):
                rad = r if k % 2 == 0 else r * 0.45
                ang = -math.pi / 2 + k * math.pi / 5
                pts.append((cx + rad * math.cos(ang), cy + r * 0.1 + rad * math.sin(ang)))
            return pts
        case "cross":
            t = r * 0.36
            return [
                (cx - t, y1),
                (cx + t, y1),
                (cx + t, cy - t),
                (x2, cy - t),
                (x2, cy + t),
                (cx + t, cy + t),
                (cx + t, y2),
                (cx - t, y2),
                (cx - t, cy + t),
                (x1, cy + t),
                (x1, cy - t),
                (cx - t, cy - t),
            ]
    raise ValueError(f"not a polygon shape: {shape}")


def render(scene: Scene) -> Image.Image:
    """Pixels of a scene: noisy gradient background, clutter, then the objects in order."""
    rng = np.random.default_rng(scene.seed)
    W, H = scene.width, scene.height
    base = rng.uniform(35, 110, size=3)
    tilt = rng.uniform(-25, 25, size=3)
    ramp = np.linspace(0, 1, W)[None, :, None] * tilt[None, None, :]
    pixels = base[None, None, :] + ramp + rng.normal(0, 7, size=(H, W, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    # Clutter: stray lines and specks in muted colours, small enough not to look like objects.
    for _ in range(int(rng.integers(3, 9))):
        c = tuple(int(v) for v in rng.uniform(60, 170, size=3))
        x, y = rng.uniform(0, W), rng.uniform(0, H)
        draw.line([(x, y), (x + rng.uniform(-40, 40), y + rng.uniform(-40, 40))], fill=c, width=1)
    for _ in range(int(rng.integers(5, 15))):
        c = tuple(int(v) for v in rng.uniform(60, 170, size=3))
        x, y, s = rng.uniform(0, W), rng.uniform(0, H), rng.uniform(1, 3)
        draw.ellipse([x, y, x + s, y + s], fill=c)
    for obj in scene.objects:
        jitter = rng.integers(-12, 13, size=3)
        fill = tuple(int(np.clip(v + j, 0, 255)) for v, j in zip(COLOURS[obj.colour], jitter, strict=True))
        outline = tuple(max(0, v - 60) for v in fill)
        if obj.shape == "circle":
            draw.ellipse(obj.box, fill=fill, outline=outline)
        elif obj.shape == "square":
            draw.rectangle(obj.box, fill=fill, outline=outline)
        else:
            draw.polygon(_shape_polygon(obj.shape, obj.box), fill=fill, outline=outline)
    return image


def save(scene: Scene, root: Path) -> None:
    path = root / scene.file
    path.parent.mkdir(parents=True, exist_ok=True)
    image = render(scene)
    if path.suffix == ".png":
        image.save(path, optimize=False, compress_level=1)
    else:
        image.save(path, quality=90)
