"""Where `make serve` (`python -m bootstrap`) writes what it builds, and so where `python -m server`
looks by default.  Standard library only: the gateway imports it without loading any build code."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository checkout `make serve` runs in


@dataclass(frozen=True)
class Paths:
    """The demo model's build outputs (each a step of the pipeline) and the gateway's cache."""

    world: Path = ROOT / "data" / "synthetic"
    detector: Path = ROOT / "artifacts" / "detector" / "synthetic-detector.safetensors"
    checkpoint: Path = ROOT / "runs" / "demo" / "model"
    repository: Path = ROOT / "model_repository"
    cache: Path = ROOT / "artifacts" / "region-cache"
    galleries: Path = ROOT / "artifacts" / "galleries"  # the gateway's gallery store (--data-dir)
    examples: Path = ROOT / "artifacts" / "examples"  # the web page's example images (examples.json)


def show(path: Path) -> str:
    """`path` relative to the checkout when it is inside it (for messages)."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
