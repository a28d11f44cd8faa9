"""The web page's example images, rendered at build time: ``python -m training.synthetic.examples --out DIR``.

A few deterministic scenes drawn by the synthetic world's own renderer (the kind of image the demo
model learnt from), written as ``DIR/<name>.png`` plus ``DIR/examples.json`` listing each example's
name, file and objects (shape, colour, size, box).  `make serve` writes them to ``artifacts/examples``
and the gateway serves those files (``--examples-dir``); the gateway never imports this package.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from training.synthetic.scene import SceneSampler, render
from vilbert.cli import ArgumentParser, UserError, run

EXAMPLE_SEEDS = (3, 11, 29, 47)
INDEX = "examples.json"  # what the gateway reads (server/examples.py)


def example_scenes(seeds: Sequence[int] = EXAMPLE_SEEDS) -> list[tuple[str, object]]:
    """(name, scene) per seed: 3 to 5 objects each."""
    return [
        (f"example-{i}", SceneSampler(np.random.default_rng(seed)).sample(f"example-{i}", 3, 5))
        for i, seed in enumerate(seeds)
    ]


def write_examples(out: str | Path, seeds: Sequence[int] = EXAMPLE_SEEDS) -> Path:
    """Render the examples into `out`; the index is written last, so its presence means complete."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, scene in example_scenes(seeds):
        render(scene).save(out / f"{name}.png", format="PNG")
        objects = [
            {"shape": o.shape, "colour": o.colour, "size": o.size, "box": [round(v, 1) for v in o.box]}
            for o in scene.objects
        ]
        rows.append({"name": name, "file": f"{name}.png", "objects": objects})
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".examples-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump({"examples": rows}, f, indent=2)
    os.replace(tmp, out / INDEX)
    return out / INDEX


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m training.synthetic.examples", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="directory for the PNGs and examples.json")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out} is a file; give a directory")
    index = write_examples(args.out)
    print(f"wrote {len(EXAMPLE_SEEDS)} example images and {index}")
    return 0


if __name__ == "__main__":
    run(main)
