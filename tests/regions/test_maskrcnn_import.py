"""maskrcnn-benchmark import: exact round trip, strictness naming keys, and the full X-152's structure."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch

from regions.detector import (
    RegionExtractor,
    build_detector,
    count_parameters,
    detectron_cell_anchors,
    load_detector,
)
from regions.maskrcnn_import import (
    CheckpointMismatchError,
    checkpoint_key_map,
    count_checkpoint_parameters,
    expected_checkpoint_shapes,
    export_maskrcnn_benchmark_state_dict,
    load_maskrcnn_benchmark_detector,
)
from regions.presets import VG_X152_FPN
from tests.regions.conftest import tiny_bottleneck_preset


def random_checkpoint(preset, seed: int = 0) -> dict[str, torch.Tensor]:
    """maskrcnn-benchmark names and shapes, random values at init-like scales.

    Cell anchors are the real Detectron ones (a checkpoint stores what its generator computed); BN
    variances are positive; other tensors are small so the random network still proposes boxes.
    """
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in expected_checkpoint_shapes(preset).items():
        if "cell_anchors" in name:
            level = int(name.rsplit(".", 1)[1])
            stride, size = preset.rpn.anchor_strides[level], preset.rpn.anchor_sizes[level]
            out[name] = detectron_cell_anchors(stride, size, preset.rpn.aspect_ratios)
        elif name.endswith(("running_var", "bn1.weight", "bn2.weight", "bn3.weight", "downsample.1.weight")):
            out[name] = torch.rand(shape, generator=g) + 0.5
        else:
            out[name] = torch.randn(shape, generator=g) * 0.02
    return out


def save(path, state, **extra) -> str:
    torch.save({"model": state, "iteration": 90000, **extra}, path)
    return str(path)


def test_key_map_matches_the_model_exactly() -> None:
    for preset in (tiny_bottleneck_preset(True), tiny_bottleneck_preset(False)):
        detector = build_detector(preset)
        own = {k: tuple(v.shape) for k, v in detector.state_dict().items()}
        mapped = {m.target: m.shape for m in checkpoint_key_map(preset)}
        assert own == mapped
        assert count_parameters(detector) == count_checkpoint_parameters(preset)


def test_round_trip_is_exact(tmp_path) -> None:
    preset = tiny_bottleneck_preset()
    source = random_checkpoint(preset)
    detector, report = load_maskrcnn_benchmark_detector(save(tmp_path / "model_final.pth", source), preset)
    assert report.other_entries == ["iteration"] and not report.notes
    assert len(report.loaded) == len(source)
    own = detector.state_dict()
    for m in report.loaded:  # every tensor arrived, bit for bit
        assert torch.equal(own[m.target], source[m.source]), m.source
    back = export_maskrcnn_benchmark_state_dict(detector)
    assert back.keys() == source.keys() and all(torch.equal(back[k], source[k]) for k in source)
    # maskrcnn-benchmark's FrozenBatchNorm2d has no epsilon.
    assert detector.backbone.body.bn1.eps == 0.0
    # The imported detector runs, with the checkpoint's own cell anchors.
    assert torch.equal(
        detector.rpn.anchor_generator.cell_anchors[0], source["rpn.anchor_generator.cell_anchors.0"]
    )
    rng = np.random.default_rng(0)
    regions = RegionExtractor(detector)(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8))
    assert regions.features.shape[1] == 32 and 0 < regions.num_boxes <= 12
    assert set(regions.attributes) == {"attribute"}


def test_load_detector_dispatches_pth_to_the_importer(tmp_path) -> None:
    preset = tiny_bottleneck_preset()
    path = save(tmp_path / "detectron_model.pth", random_checkpoint(preset))
    assert load_detector(path, preset).preset.name == "tiny-x-fpn"


@pytest.mark.parametrize(
    "mutate,words",
    [
        (
            lambda sd: sd.pop("backbone.body.layer3.1.conv2.weight"),
            "missing keys: backbone.body.layer3.1.conv2.weight",
        ),
        (
            lambda sd: sd.__setitem__("backbone.body.layer5.0.conv1.weight", torch.zeros(1)),
            "unexpected keys: backbone.body.layer5.0.conv1.weight",
        ),
        (
            lambda sd: sd.__setitem__("roi_heads.box.predictor.cls_score.weight", torch.zeros(6, 32)),
            "roi_heads.box.predictor.cls_score.weight has shape (6, 32), expected (5, 32)",
        ),
        (
            lambda sd: sd.__setitem__(
                "backbone.fpn.fpn_inner9.weight", sd.pop("backbone.fpn.fpn_inner4.weight")
            ),
            "missing keys: backbone.fpn.fpn_inner4.weight",
        ),
        (
            lambda sd: sd.pop("roi_heads.box.predictor.attr_linear2.bias"),
            "part of the attribute head: missing keys: roi_heads.box.predictor.attr_linear2.bias",
        ),
    ],
    ids=["missing", "unexpected", "misshaped", "renamed", "partial-attributes"],
)
def test_strictness_names_the_key(tmp_path, mutate, words: str) -> None:
    preset = tiny_bottleneck_preset()
    source = random_checkpoint(preset)
    mutate(source)
    with pytest.raises(CheckpointMismatchError) as info:
        load_maskrcnn_benchmark_detector(save(tmp_path / "bad.pth", source), preset)
    assert words in str(info.value)


def test_checkpoint_without_attribute_head_builds_without_one(tmp_path) -> None:
    source = random_checkpoint(tiny_bottleneck_preset(with_attributes=False))
    detector, report = load_maskrcnn_benchmark_detector(
        save(tmp_path / "m.pth", source), tiny_bottleneck_preset()
    )
    assert detector.attribute_head is None and detector.preset.attributes is None
    assert any("no attribute head" in n for n in report.notes)


def test_ddp_prefix_all_or_nothing(tmp_path) -> None:
    preset = tiny_bottleneck_preset()
    source = random_checkpoint(preset)
    prefixed = {f"module.{k}": v for k, v in source.items()}
    detector, _ = load_maskrcnn_benchmark_detector(save(tmp_path / "ddp.pth", prefixed), preset)
    assert torch.equal(
        detector.state_dict()["backbone.body.conv1.weight"], source["backbone.body.stem.conv1.weight"]
    )
    prefixed["backbone.body.stem.conv1.weight"] = prefixed.pop("module.backbone.body.stem.conv1.weight")
    with pytest.raises(CheckpointMismatchError, match="only some keys"):
        load_maskrcnn_benchmark_detector(save(tmp_path / "mixed.pth", prefixed), preset)


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickles_that_run_code_are_refused(tmp_path) -> None:
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": {"x": _Payload()}}, f, protocol=2)
    with pytest.raises(pickle.UnpicklingError):
        load_maskrcnn_benchmark_detector(path, tiny_bottleneck_preset())


def test_vg_x152_fpn_structure_on_the_meta_device() -> None:
    """The full 12-in-1 extractor: built without memory, counted, and its names/shapes as released."""
    with torch.device("meta"):
        detector = build_detector(VG_X152_FPN)
    params = count_parameters(detector)
    assert params == count_checkpoint_parameters(VG_X152_FPN) == 207_579_300
    shapes = expected_checkpoint_shapes(VG_X152_FPN)
    own = {k: tuple(v.shape) for k, v in detector.state_dict().items()}
    assert own == {m.target: m.shape for m in checkpoint_key_map(VG_X152_FPN)}
    # Facts from the released checkpoint's load log and config (architecture.md §4.1).
    assert shapes["backbone.body.layer3.35.conv2.weight"] == (1024, 32, 3, 3)  # 32 groups in res4
    assert "backbone.body.layer3.36.conv1.weight" not in shapes  # 36 blocks: [3, 8, 36, 3]
    assert shapes["backbone.body.layer2.7.bn3.running_var"] == (512,)
    assert shapes["backbone.fpn.fpn_inner4.weight"] == (512, 2048, 1, 1)  # FPN_512
    assert shapes["rpn.head.cls_logits.weight"] == (3, 512, 1, 1)  # 3 anchors per location
    assert shapes["roi_heads.box.feature_extractor.fc6.weight"] == (2048, 512 * 7 * 7)  # MLP_2048
    assert shapes["roi_heads.box.predictor.cls_score.weight"] == (1601, 2048)
    assert shapes["roi_heads.box.predictor.bbox_pred.weight"] == (1601 * 4, 2048)
    without_attrs = count_checkpoint_parameters(VG_X152_FPN.without_attributes())
    attr_params = 1601 * 256 + (2048 + 256) * 512 + 512 + 400 * 512 + 400
    assert params - without_attrs == attr_params
    assert math.isclose(params / 1e6, 207.6, abs_tol=0.1)
