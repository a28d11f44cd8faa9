"""Built-in example images for the web page: synthetic scenes like the ones the demo model learnt from."""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

EXAMPLE_SEEDS = (3, 11, 29, 47)


@dataclass(frozen=True)
class Example:
    name: str
    png: bytes
    objects: list[dict]  # shape, colour, size, box (for hints and tests)


@lru_cache(maxsize=1)
def examples() -> tuple[Example, ...]:
    """A few deterministic scenes rendered by the synthetic world's own renderer."""
    from training.synthetic.scene import SceneSampler, render

    out = []
    for i, seed in enumerate(EXAMPLE_SEEDS):
        scene = SceneSampler(np.random.default_rng(seed)).sample(f"example-{i}", min_objects=3, max_objects=5)
        buf = io.BytesIO()
        render(scene).save(buf, format="PNG")
        objects = [
            {"shape": o.shape, "colour": o.colour, "size": o.size, "box": [round(v, 1) for v in o.box]}
            for o in scene.objects
        ]
        out.append(Example(f"example-{i}", buf.getvalue(), objects))
    return tuple(out)
