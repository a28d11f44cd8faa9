"""A few rendered scenes of coloured shapes, written in the synthetic world's detector format.

Stands in for `python -m training.synthetic` in these tests so that they do not depend on it:
``D/detector/instances_{train,val}.json`` in COCO instances style with per-annotation
``attributes`` ({"color", "size"}) and a top-level ``attribute_names``; images are PNGs whose
``file_name`` is relative to D.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 80, 230)}
SIZES = {"small": 0.18, "large": 0.4}  # side as a fraction of min(W, H)


def _overlaps(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return not (a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1])


def render_scene(rng: np.random.Generator, width: int, height: int, n_objects: int):
    """(image, objects) with objects = [(shape, color, size, (x1, y1, x2, y2))], non-overlapping."""
    base = rng.uniform(40, 100, size=3)
    pixels = base[None, None, :] + rng.normal(0, 6, size=(height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    objects: list[tuple[str, str, str, tuple[float, float, float, float]]] = []
    for _ in range(50):
        if len(objects) == n_objects:
            break
        size = list(SIZES)[int(rng.integers(len(SIZES)))]
        side = SIZES[size] * min(width, height)
        x1, y1 = rng.uniform(1, width - side - 1), rng.uniform(1, height - side - 1)
        box = (float(x1), float(y1), float(x1 + side), float(y1 + side))
        if any(_overlaps(box, o[3]) for o in objects):
            continue
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        color = list(COLORS)[int(rng.integers(len(COLORS)))]
        fill = COLORS[color]
        if shape == "circle":
            draw.ellipse(box, fill=fill)
        elif shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) / 2, box[1])], fill=fill)
        objects.append((shape, color, size, box))
    return image, objects


def write_world(
    root: Path, n_train: int = 10, n_val: int = 4, seed: int = 0, size_range: tuple[int, int] = (96, 144)
) -> Path:
    """Render scenes under root/images/{split}/ and write root/detector/instances_{split}.json."""
    rng = np.random.default_rng(seed)
    ann_id = 1
    for split, n in (("train", n_train), ("val", n_val)):
        images, annotations = [], []
        for i in range(n):
            w, h = (int(rng.integers(size_range[0], size_range[1] + 1)) for _ in range(2))
            image, objects = render_scene(rng, w, h, int(rng.integers(1, 4)))
            rel = f"images/{split}/{split}_{i:04d}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            image.save(root / rel)
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": rel, "width": w, "height": h})
            for shape, color, size, (x1, y1, x2, y2) in objects:
                annotations.append(
                    {
                        "id": ann_id,
                        "image_id": image_id,
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "category_id": SHAPES.index(shape) + 1,
                        "attributes": {"color": color, "size": size},
                    }
                )
                ann_id += 1
        data = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": i + 1, "name": s} for i, s in enumerate(SHAPES)],
            "attribute_names": {"color": list(COLORS), "size": list(SIZES)},
        }
        (root / "detector").mkdir(parents=True, exist_ok=True)
        (root / "detector" / f"instances_{split}.json").write_text(json.dumps(data))
    return root
