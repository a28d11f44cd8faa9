"""A synthetic 12-task world written in the official formats of the twelve datasets.

`python -m training.synthetic --out D [--size small|demo|large] [--seed S]` renders scenes of
coloured shapes with Pillow, writes all twelve datasets under `D/datasets/` in the reference
layout, detector annotations under `D/detector/`, computes the clean split and prints a summary
table (also `D/summary.md`, `D/summary.json`).  Region features come from `regions.extract` or,
until then, from `python -m training.synthetic.placeholder_features --data D`.
"""

from __future__ import annotations

from training.synthetic.world import WORLD_SIZES, FeatureItem, FeatureJob, WorldSize, WorldWriter

__all__ = ["WORLD_SIZES", "FeatureItem", "FeatureJob", "WorldSize", "WorldWriter", "generate_world"]


def generate_world(
    out, size: str = "small", seed: int = 0, progress: bool = True, placeholder_dim: int | None = None
):
    """Write the world; returns (summary rows, clean-split shrink rows).  See `__main__` for the CLI."""
    from training.synthetic.__main__ import build

    return build(out, size=size, seed=seed, progress=progress, placeholder_dim=placeholder_dim)
