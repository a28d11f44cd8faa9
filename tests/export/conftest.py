"""Shared export artefacts: one tiny world + checkpoint + detector, and one fp32 export of them.

The export takes most of this folder's time, so it runs once per test run: under pytest-xdist
the workers share it through a file lock in a folder keyed by the run id (PYTEST_XDIST_TESTRUNUID).
Everything built here is read-only for the tests.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from filelock import FileLock

FEATURE_DIM = 32  # placeholder region features of the synthetic world (>= 20 needed by the world)


@dataclass(frozen=True)
class TinyInputs:
    world: Path
    checkpoint: Path
    detector: Path


@dataclass(frozen=True)
class TinyExport:
    inputs: TinyInputs
    repository: Path
    work: Path  # intermediate graphs (kept): exported/, basic/, cpu/, int8/
    report: dict


def _shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    base = tmp_path_factory.getbasetemp()
    root = base.parent / f"export-shared-{run}" if run else base / "export-shared"
    root.mkdir(parents=True, exist_ok=True)
    return root


def build_tiny_inputs(root: Path) -> TinyInputs:
    """Synthetic world (small), a random-weight tiny checkpoint sized to it, a random detector."""
    from regions.detector import build_detector
    from regions.presets import SYNTHETIC, AttributeGroup
    from regions.weights import save_detector
    from training.datasets import build_dataset
    from training.synthetic import generate_world
    from vilbert.checkpoint import save_checkpoint
    from vilbert.config import tiny
    from vilbert.heads import MultiTaskViLBERT

    world = root / "world"
    generate_world(world, size="small", seed=0, progress=False, placeholder_dim=FEATURE_DIM)
    vqa, gqa = build_dataset("vqa", world, "minval"), build_dataset("gqa", world, "minval")
    torch.manual_seed(0)
    cfg = tiny(v_feature_size=FEATURE_DIM)
    cfg.num_answers, cfg.num_answers_gqa = vqa.num_answers, gqa.num_answers
    cfg.prefilter_dim = 8  # with the retrieval pre-filter, so its graphs are exported and gated too
    answers = {
        "vqa": sorted(vqa.ans2label, key=vqa.ans2label.get),
        "gqa": sorted(gqa.ans2label, key=gqa.ans2label.get),
    }
    checkpoint = save_checkpoint(
        root / "checkpoint", MultiTaskViLBERT(cfg), answers, {"fit_config": {"data": {"root": str(world)}}}
    )
    preset = SYNTHETIC.for_dataset(("circle", "square"), (AttributeGroup("colour", 2, ("red", "blue")),))
    detector, _ = save_detector(build_detector(preset), root / "detector" / "synthetic.safetensors")
    return TinyInputs(world, checkpoint, detector)


@pytest.fixture(scope="session")
def tiny_inputs(tmp_path_factory: pytest.TempPathFactory) -> TinyInputs:
    root = _shared_dir(tmp_path_factory)
    with FileLock(str(root / "inputs.lock")):
        done = root / "inputs.done"
        if not done.exists():
            build_tiny_inputs(root / "inputs")
            done.touch()
    base = root / "inputs"
    return TinyInputs(base / "world", base / "checkpoint", base / "detector" / "synthetic.safetensors")


@pytest.fixture(scope="session")
def tiny_export(tiny_inputs: TinyInputs, tmp_path_factory: pytest.TempPathFactory) -> TinyExport:
    """`python -m export` (the CLI) of the tiny checkpoint + detector: fp32, python backend."""
    from export.__main__ import main as export_main

    root = _shared_dir(tmp_path_factory)
    repository = root / "fp32" / "model_repository"
    with FileLock(str(root / "fp32.lock")):
        done = root / "fp32.done"
        if not done.exists():
            args = ["--checkpoint", str(tiny_inputs.checkpoint), "--out", str(repository)]
            args += ["--detector", str(tiny_inputs.detector), "--data", str(tiny_inputs.world), "--keep-work"]
            assert export_main(args) == 0
            done.touch()
    report = json.loads(repository.with_name("model_repository.parity.json").read_text())
    return TinyExport(tiny_inputs, repository, repository.with_name(".model_repository.work"), report)


@pytest.fixture(scope="session")
def triton_server(tiny_export: TinyExport):
    """The real bundled tritonserver on `tiny_export`'s repository, one per session (per xdist worker).

    Shared by every test that only sends requests (tests that stop or kill Triton start their own).
    Skipped, with the reason, only where the tritonserver binary cannot be found.
    """
    from export.triton_server import BundledTriton, TritonError, TritonServer

    try:
        BundledTriton.locate()
    except TritonError as exc:
        pytest.skip(f"no tritonserver binary: {exc}")
    with TritonServer(tiny_export.repository, startup_timeout=300) as server:
        yield server
