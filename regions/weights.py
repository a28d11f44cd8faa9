"""Detector weights: our safetensors file with its preset JSON beside it, or a maskrcnn-benchmark
checkpoint (the 12-in-1 extractor's release format) through `regions.maskrcnn_import`.

Both files are written atomically (`vilbert.io`), the preset first; loading is strict
(`vilbert.io.load_state_dict_strict`: every missing, unexpected or mis-shaped key named).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch

from regions.detector import RegionDetector, build_detector
from regions.maskrcnn_import import load_maskrcnn_benchmark_detector
from regions.presets import DetectorPreset, get_preset, load_preset_json
from vilbert.io import atomic_write_bytes, load_state_dict_strict


def preset_path_for(weights: str | Path) -> Path:
    """The preset JSON that travels with a safetensors weights file (same stem)."""
    return Path(weights).with_suffix(".json")


def save_detector(detector: RegionDetector, path: str | Path) -> tuple[Path, Path]:
    """Weights as safetensors plus the preset JSON beside them, each written atomically."""
    from safetensors.torch import save

    path = Path(path)
    state = {k: v.detach().contiguous().cpu() for k, v in detector.state_dict().items()}
    preset_json = preset_path_for(path)
    # The preset first: a weights file is only ever visible with the preset that explains it.
    atomic_write_bytes(preset_json, detector.preset.to_json().encode())
    atomic_write_bytes(
        path, save(state, metadata={"preset": detector.preset.name, "format": "twelve-in-one/regions"})
    )
    return path, preset_json


def load_detector(weights: str | Path, preset: DetectorPreset | str | None = None) -> RegionDetector:
    """A detector with weights: our safetensors (+ preset JSON), or a maskrcnn-benchmark checkpoint."""
    weights = Path(weights)
    if not weights.exists():
        raise FileNotFoundError(f"detector weights not found: {weights}")
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        sidecar = preset_path_for(weights)
        if sidecar.exists():
            resolved = load_preset_json(sidecar)
            if isinstance(preset, str) and preset not in (resolved.name, str(sidecar)):
                raise ValueError(f"{weights} holds a {resolved.name!r} detector, not {preset!r}")
            if isinstance(preset, DetectorPreset) and preset != resolved:
                raise ValueError(f"{weights} was saved with a different {resolved.name!r} preset ({sidecar})")
        elif preset is not None:
            resolved = preset if isinstance(preset, DetectorPreset) else get_preset(preset)
        else:
            raise FileNotFoundError(f"{sidecar} (the preset of {weights}) is missing; pass the preset")
        detector = build_detector(resolved)
        load_state_dict_strict(
            detector, load_file(str(weights)), what=f"{weights} does not match the detector"
        )
        return detector.eval()
    resolved = get_preset(preset or "vg-x152-fpn") if not isinstance(preset, DetectorPreset) else preset
    detector, _report = load_maskrcnn_benchmark_detector(weights, resolved)
    return detector.eval()


def read_class_names(path: str | Path) -> tuple[str, ...]:
    """Class names from a text file (one per line) or JSON (list, or {"categories": [{"name"}]})."""
    text = Path(path).read_text()
    if str(path).endswith(".json"):
        data = json.loads(text)
        if isinstance(data, dict) and "categories" in data:
            data = [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])]
        return tuple(str(x) for x in data)
    return tuple(line.strip().split(",")[0] for line in text.splitlines() if line.strip())


def detector_key(detector: RegionDetector) -> str:
    """16 hex digits naming a detector: sha256 over its preset and every weight (names, shapes, bytes).
    Two detectors share a key only when they compute the same features (the region cache's folder)."""
    preset = json.dumps(dataclasses.asdict(detector.preset), sort_keys=True, default=str)
    digest = hashlib.sha256(preset.encode())
    for name, tensor in detector.state_dict().items():
        t = tensor.detach().contiguous().cpu()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]
