"""maskrcnn-benchmark import: the released checkpoint's keys, exact round trip, strictness naming
keys, and the full X-152's structure.

The release tests build their checkpoint from the released file's own key list
(`testkit/detectron_model_keys.txt`), not from the importer's key map.
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch

from regions.detector import build_detector, count_parameters
from regions.extractor import RegionExtractor
from regions.maskrcnn_import import (
    CheckpointMismatchError,
    checkpoint_key_map,
    count_checkpoint_parameters,
    expected_checkpoint_shapes,
    export_maskrcnn_benchmark_state_dict,
    load_maskrcnn_benchmark_detector,
)
from regions.presets import VG_X152_FPN
from regions.weights import load_detector
from testkit.release_files import (
    FORK_ATTRIBUTE_HEAD,
    RELEASED_PARAMETERS,
    RELEASED_PARAMETERS_WITH_ATTRIBUTES,
    fake_detectron_checkpoint,
    is_buffer,
    released_detectron_shapes,
)
from tests.regions.conftest import tiny_bottleneck_preset


def filled_with(t: torch.Tensor) -> set[float]:
    """The values at a tensor's first and last positions (an "index" fake fills each with its key's
    position in the key list; reading two elements avoids materialising a broadcast tensor)."""
    t = t.detach()
    return {float(t[(0,) * t.ndim]), float(t[(-1,) * t.ndim])}


def test_released_key_list_is_the_documented_release() -> None:
    shapes = released_detectron_shapes()
    assert len(shapes) == 810
    assert sum(math.prod(s) for k, s in shapes.items() if not is_buffer(k)) == RELEASED_PARAMETERS
    with_attrs = {**shapes, **FORK_ATTRIBUTE_HEAD}
    assert sum(math.prod(s) for k, s in with_attrs.items() if not is_buffer(k)) == (
        RELEASED_PARAMETERS_WITH_ATTRIBUTES
    )


def test_key_map_is_the_released_checkpoints() -> None:
    """Every name and shape of our map for vg-x152-fpn equals the released file's, in both variants."""
    released = released_detectron_shapes()
    assert expected_checkpoint_shapes(VG_X152_FPN.without_attributes()) == released
    assert expected_checkpoint_shapes(VG_X152_FPN) == {**released, **FORK_ATTRIBUTE_HEAD}
    assert count_checkpoint_parameters(VG_X152_FPN.without_attributes()) == RELEASED_PARAMETERS


@pytest.mark.parametrize("ddp", [False, True], ids=["plain", "module-prefix"])
def test_released_checkpoint_imports_every_key(tmp_path, ddp: bool) -> None:
    """The release as saved (model + optimizer + scheduler + iteration, ATTR off): all 810 tensors
    land, each in the tensor our map names for it, and the detector is built without attributes."""
    path = tmp_path / "detectron_model.pth"
    source = fake_detectron_checkpoint(path, ddp=ddp)
    detector, report = load_maskrcnn_benchmark_detector(path, VG_X152_FPN)
    assert sorted(m.source for m in report.loaded) == sorted(released_detectron_shapes())
    assert report.other_entries == ["iteration", "optimizer", "scheduler"]
    assert detector.attribute_head is None and detector.preset.attributes is None
    assert any("no attribute head" in n for n in report.notes)
    own = detector.state_dict()
    assert len(own) == 810
    position = {name: float(i) for i, name in enumerate(source)}
    for m in report.loaded:
        if "cell_anchors" in m.source:
            assert torch.equal(own[m.target], source[m.source]), m.source
        else:
            assert filled_with(own[m.target]) == {position[m.source]}, m.source
    assert count_parameters(detector) == RELEASED_PARAMETERS
    assert detector.backbone.body.bn1.eps == 0.0  # maskrcnn-benchmark's FrozenBatchNorm2d: no epsilon


def test_released_checkpoint_with_the_forks_attribute_head(tmp_path) -> None:
    path = tmp_path / "model_final.pth"
    source = fake_detectron_checkpoint(path, attribute_head=True)
    detector, report = load_maskrcnn_benchmark_detector(path, VG_X152_FPN)
    assert len(report.loaded) == 815 and not report.notes
    assert detector.attribute_head is not None
    position = {name: float(i) for i, name in enumerate(source)}
    head = detector.attribute_head
    assert tuple(head.cls_embed.weight.shape) == (1601, 256)
    assert filled_with(head.cls_embed.weight) == {position["roi_heads.box.predictor.cls_embed.weight"]}
    assert filled_with(head.attr_linear2.bias) == {position["roi_heads.box.predictor.attr_linear2.bias"]}
    assert count_parameters(detector) == RELEASED_PARAMETERS_WITH_ATTRIBUTES


def test_load_detector_reads_the_release_with_the_default_preset(tmp_path) -> None:
    path = tmp_path / "detectron_model.pth"
    fake_detectron_checkpoint(path)
    detector = load_detector(path)
    assert detector.preset.name == VG_X152_FPN.name and not detector.training


def test_key_map_matches_the_model_exactly() -> None:
    for preset in (tiny_bottleneck_preset(True), tiny_bottleneck_preset(False)):
        detector = build_detector(preset)
        own = {k: tuple(v.shape) for k, v in detector.state_dict().items()}
        mapped = {m.target: m.shape for m in checkpoint_key_map(preset)}
        assert own == mapped
        assert count_parameters(detector) == count_checkpoint_parameters(preset)


def test_round_trip_is_exact(tmp_path) -> None:
    """A small X-FPN that runs: random tensors in, the same tensors out, bit for bit.

    No released file has this preset's shapes, so its names and shapes are the map's own; that the
    map generates the release's names is `test_key_map_is_the_released_checkpoints`."""
    preset = tiny_bottleneck_preset()
    path = tmp_path / "model_final.pth"
    source = fake_detectron_checkpoint(
        path, expected_checkpoint_shapes(preset), values="random", rpn=preset.rpn
    )
    detector, report = load_maskrcnn_benchmark_detector(path, preset)
    assert report.other_entries == ["iteration", "optimizer", "scheduler"] and not report.notes
    assert len(report.loaded) == len(source)
    own = detector.state_dict()
    for m in report.loaded:  # every tensor arrived, bit for bit
        assert torch.equal(own[m.target], source[m.source]), m.source
    back = export_maskrcnn_benchmark_state_dict(detector)
    assert back.keys() == source.keys() and all(torch.equal(back[k], source[k]) for k in source)
    # The imported detector runs, with the checkpoint's own cell anchors.
    assert torch.equal(
        detector.rpn.anchor_generator.cell_anchors[0], source["rpn.anchor_generator.cell_anchors.0"]
    )
    rng = np.random.default_rng(0)
    regions = RegionExtractor(detector)(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8))
    assert regions.features.shape[1] == 32 and 0 < regions.num_boxes <= 12
    assert set(regions.attributes) == {"attribute"}


def _without(name: str):
    return lambda shapes: shapes.pop(name)


@pytest.mark.parametrize(
    "attribute_head,mutate,words",
    [
        (
            False,
            _without("backbone.body.layer3.1.conv2.weight"),
            "missing keys: backbone.body.layer3.1.conv2.weight",
        ),
        (
            False,
            lambda shapes: shapes.__setitem__("backbone.body.layer5.0.conv1.weight", (1,)),
            "unexpected keys: backbone.body.layer5.0.conv1.weight",
        ),
        (
            False,
            lambda shapes: shapes.__setitem__("roi_heads.box.predictor.cls_score.weight", (1600, 2048)),
            "mis-shaped keys: roi_heads.box.predictor.cls_score.weight has shape [1600, 2048], "
            "expected [1601, 2048]",
        ),
        (
            False,
            lambda shapes: shapes.__setitem__(
                "backbone.fpn.fpn_inner9.weight", shapes.pop("backbone.fpn.fpn_inner4.weight")
            ),
            "missing keys: backbone.fpn.fpn_inner4.weight; unexpected keys: backbone.fpn.fpn_inner9.weight",
        ),
        (
            True,
            _without("roi_heads.box.predictor.attr_linear2.bias"),
            "part of the attribute head: missing keys: roi_heads.box.predictor.attr_linear2.bias",
        ),
    ],
    ids=["missing", "unexpected", "misshaped", "renamed", "partial-attributes"],
)
def test_strictness_names_the_key(tmp_path, attribute_head: bool, mutate, words: str) -> None:
    shapes = released_detectron_shapes()
    if attribute_head:
        shapes.update(FORK_ATTRIBUTE_HEAD)
    mutate(shapes)
    path = tmp_path / "bad.pth"
    fake_detectron_checkpoint(path, shapes)
    with pytest.raises(CheckpointMismatchError) as info:
        load_maskrcnn_benchmark_detector(path, VG_X152_FPN)
    assert words in str(info.value)


def test_strictness_names_every_key(tmp_path) -> None:
    """One error for all the problems of a file, not just the first."""
    shapes = released_detectron_shapes()
    gone = [k for k in shapes if k.startswith("backbone.body.layer4.2.")]
    for k in gone:
        del shapes[k]
    shapes["rpn.head.conv.weight"] = (256, 512, 3, 3)
    path = tmp_path / "bad.pth"
    fake_detectron_checkpoint(path, shapes)
    with pytest.raises(CheckpointMismatchError) as info:
        load_maskrcnn_benchmark_detector(path, VG_X152_FPN)
    message = str(info.value)
    assert len(gone) == 15 and all(k in message for k in gone)
    assert "rpn.head.conv.weight has shape [256, 512, 3, 3], expected [512, 512, 3, 3]" in message


def test_ddp_prefix_all_or_nothing(tmp_path) -> None:
    path = tmp_path / "ddp.pth"
    fake_detectron_checkpoint(path, ddp=True)
    saved = torch.load(path, weights_only=True)
    model = saved["model"]
    model["backbone.body.stem.conv1.weight"] = model.pop("module.backbone.body.stem.conv1.weight")
    torch.save(saved, tmp_path / "mixed.pth")
    with pytest.raises(CheckpointMismatchError, match="only some keys"):
        load_maskrcnn_benchmark_detector(tmp_path / "mixed.pth", VG_X152_FPN)


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickles_that_run_code_are_refused(tmp_path) -> None:
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": {"x": _Payload()}}, f, protocol=2)
    with pytest.raises(pickle.UnpicklingError):
        load_maskrcnn_benchmark_detector(path, VG_X152_FPN)


def test_vg_x152_fpn_structure_on_the_meta_device() -> None:
    """The full 12-in-1 extractor: built without memory, counted, and its names/shapes as released."""
    with torch.device("meta"):
        detector = build_detector(VG_X152_FPN)
    params = count_parameters(detector)
    assert params == count_checkpoint_parameters(VG_X152_FPN) == 207_579_300
    shapes = expected_checkpoint_shapes(VG_X152_FPN)
    own = {k: tuple(v.shape) for k, v in detector.state_dict().items()}
    assert own == {m.target: m.shape for m in checkpoint_key_map(VG_X152_FPN)}
    # Facts from the released checkpoint's load log (vilbert-multi-task demo.ipynb) and config.
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
