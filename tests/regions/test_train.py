"""A very short training run of the synthetic preset on rendered scenes: the loss falls, files appear."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from regions.decode import decode_file
from regions.extractor import RegionExtractor
from regions.train import WEIGHTS_NAME, TrainConfig, read_instances, train
from regions.weights import load_detector
from tests.regions.scenes import COLORS, SHAPES, SIZES


def test_read_instances(mini_world: Path) -> None:
    ds = read_instances(mini_world / "detector" / "instances_train.json", mini_world)
    assert ds.class_names == SHAPES
    assert [g.name for g in ds.attribute_groups] == ["color", "size"]
    assert ds.attribute_groups[0].value_names == tuple(COLORS)
    assert ds.attribute_groups[1].value_names == tuple(SIZES)
    assert len(ds.examples) == 10
    ex = next(e for e in ds.examples if len(e.boxes))
    assert ex.path.exists() and ex.boxes.shape[1] == 4 and (ex.boxes[:, 2] > ex.boxes[:, 0]).all()
    assert ex.labels.min() >= 1 and ex.labels.max() <= len(SHAPES)
    assert ex.attributes.shape == (len(ex.boxes), 2) and ex.attributes.min() >= 0


def test_short_training_reduces_the_loss_and_saves(mini_world: Path, tmp_path: Path) -> None:
    config = TrainConfig(
        data=mini_world, out=tmp_path / "det", epochs=8, batch_size=5, lr=2e-3, warmup_iters=2
    )
    result = train(config, progress=False)
    assert result.iterations == 16
    assert result.final_loss < 0.8 * result.initial_loss
    out = tmp_path / "det"
    for name in (WEIGHTS_NAME, "synthetic-detector.json", "metrics.json", "val_boxes.png"):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val"]["images"] == 4 and 0.0 <= metrics["val"]["recall_at_iou50"] <= 1.0
    assert set(metrics["val"]["attribute_accuracy"]) == {"color", "size"}
    # The saved preset carries the vocabularies; the weights reload into an identical detector.
    preset = json.loads((out / "synthetic-detector.json").read_text())
    assert preset["class_names"] == list(SHAPES) and preset["num_classes"] == len(SHAPES) + 1
    detector = load_detector(out / WEIGHTS_NAME)
    image = decode_file(str(mini_world / "images" / "val" / "val_0000.png"))
    regions = RegionExtractor(detector)(image)
    assert regions.features.shape[1] == 256 and regions.num_boxes <= 36
    assert regions.labels()[0] in SHAPES and set(regions.attributes) == {"color", "size"}
    assert np.isfinite(regions.features).all()


def test_fixed_iterations_give_the_same_detector_and_ignore_the_epoch_count(
    mini_world: Path, tmp_path: Path
) -> None:
    """`iterations` decides the run's length whatever the epochs or the machine's load: two runs give
    bit-identical weights (the bootstrap's detector no longer depends on a wall-clock budget)."""
    from safetensors.torch import load_file

    runs = []
    for name in ("a", "b"):
        config = TrainConfig(
            data=mini_world, out=tmp_path / name, epochs=1, batch_size=5, warmup_iters=2, iterations=5
        )
        result = train(config, progress=False)
        assert result.iterations == 5  # 1 epoch is 2 iterations here: iterations wins
        runs.append(load_file(tmp_path / name / WEIGHTS_NAME))
    assert runs[0].keys() == runs[1].keys()
    for key, value in runs[0].items():
        assert np.array_equal(value.numpy(), runs[1][key].numpy()), key


def test_a_missed_quality_gate_writes_metrics_but_no_weights(mini_world: Path, tmp_path: Path) -> None:
    from regions.train import QualityGate, main

    impossible = QualityGate(min_recall=1.01, min_class_accuracy=0.0, min_attribute_accuracy=0.0)
    config = TrainConfig(
        data=mini_world, out=tmp_path / "det", batch_size=5, warmup_iters=2, iterations=2, gate=impossible
    )
    result = train(config, progress=False)
    assert result.gate_failures and result.gate_failures[0].startswith("recall@IoU0.5")
    assert not (tmp_path / "det" / WEIGHTS_NAME).exists()
    metrics = json.loads((tmp_path / "det" / "metrics.json").read_text())
    assert metrics["gate_failures"] == result.gate_failures
    # A reachable gate passes and writes the weights; the CLI's exit status says which happened.
    assert QualityGate(0.0, 0.0, 0.0).failures(result.val) == []
    argv = ["--data", str(mini_world), "--out", str(tmp_path / "cli"), "--iterations", "2", "--quiet"]
    assert main([*argv, "--batch-size", "5", "--min-recall", "1.01"]) == 3
    assert not (tmp_path / "cli" / WEIGHTS_NAME).exists()
    assert main([*argv, "--batch-size", "5", "--no-gate"]) == 0
    assert (tmp_path / "cli" / WEIGHTS_NAME).exists()
