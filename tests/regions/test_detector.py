"""Detector outputs, the reference box-selection rule, GT-box mode and the model-input helper."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import nms

from regions.detector import build_detector
from regions.extractor import RegionExtractor
from regions.inputs import region_inputs
from regions.presets import VG_X152_FPN, SelectionSpec
from regions.roi_heads import select_regions
from regions.rpn import detectron_cell_anchors
from regions.transform import preprocess
from regions.weights import load_detector, save_detector
from tests.regions.conftest import tiny_synthetic_preset


def random_images(sizes: list[tuple[int, int]], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def reference_selection(boxes: torch.Tensor, scores: torch.Tensor, spec: SelectionSpec, legacy: bool):
    """The reference loop, literally: one NMS per foreground class over all proposals."""
    dets = boxes.clone()
    if legacy:
        dets[:, 2:] += 1
    max_conf = torch.zeros(scores.shape[0])
    start = 0 if spec.include_background else 1
    for cls_ind in range(start, scores.shape[1]):
        cls_scores = scores[:, cls_ind]
        keep = nms(dets, cls_scores, spec.nms_thresh)
        better = (cls_scores[keep] > max_conf[keep]) & (cls_scores[keep] > spec.conf_thresh)
        max_conf[keep] = torch.where(better, cls_scores[keep], max_conf[keep])
    order = torch.sort(max_conf, descending=True, stable=True).indices[: spec.max_boxes]
    return order, max_conf[order]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("legacy", [False, True])
def test_select_regions_matches_the_reference_loop(seed: int, legacy: bool) -> None:
    g = torch.Generator().manual_seed(seed)
    n, c = 300, 41
    xy = torch.rand(n, 2, generator=g) * 200
    wh = torch.rand(n, 2, generator=g) * 80 + 4
    boxes = torch.cat([xy, xy + wh], dim=1)
    # Peaky logits so that some classes matter and others do not, as with a trained detector.
    scores = torch.softmax(torch.randn(n, c, generator=g) * 3, dim=1)
    spec = SelectionSpec(max_boxes=50, nms_thresh=0.5, conf_thresh=0.0 if seed % 2 else 0.02)
    keep, conf, n_conf = select_regions(boxes, scores, spec, legacy)
    ref_keep, ref_conf = reference_selection(boxes, scores, spec, legacy)
    torch.testing.assert_close(conf, ref_conf)
    assert keep.tolist() == ref_keep.tolist()
    assert n_conf == int((ref_conf != 0).sum())


def test_top_n_kept_unconditionally_even_at_zero_confidence() -> None:
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]])
    # Box 1 is a duplicate of box 0 with lower scores in every class: suppressed everywhere.
    scores = torch.tensor([[0.1, 0.5, 0.4], [0.2, 0.45, 0.35], [0.6, 0.3, 0.1]])
    keep, conf, n_conf = select_regions(boxes, scores, SelectionSpec(max_boxes=3))
    assert keep.tolist() == [0, 2, 1]
    assert conf.tolist() == pytest.approx([0.5, 0.3, 0.0])
    assert n_conf == 2
    keep2, _, _ = select_regions(boxes, scores, SelectionSpec(max_boxes=2))
    assert keep2.tolist() == [0, 2]


def test_resize_rule_is_the_reference_one() -> None:
    pre = VG_X152_FPN.preprocessing
    assert pre.scale_for(480, 640) == pytest.approx(800 / 480)
    assert pre.scale_for(400, 1200) == pytest.approx(1333 / 1200)  # longer side capped
    assert pre.scale_for(800, 1333) == pytest.approx(1.0)


def test_preprocess_bgr_means_and_padding() -> None:
    img = np.zeros((30, 50, 3), dtype=np.uint8)
    img[..., 0] = 200  # red
    pre = VG_X152_FPN.preprocessing
    batch, scales = preprocess([img], pre)
    assert scales == [pytest.approx(800 / 30)] or scales[0] == pytest.approx(1333 / 50)
    h, w = batch.image_sizes[0]
    assert batch.tensors.shape[2] % 32 == 0 and batch.tensors.shape[3] % 32 == 0
    # BGR order: channel 2 is red; Caffe means subtracted, no std.
    assert batch.tensors[0, 2, h // 2, w // 2].item() == pytest.approx(200 - 122.7717, abs=1e-3)
    assert batch.tensors[0, 0, h // 2, w // 2].item() == pytest.approx(-102.9801, abs=1e-3)
    assert batch.tensors[0, :, h:, :].abs().sum() == 0  # zero padding


def test_detectron_anchors_match_the_published_values() -> None:
    # Faster R-CNN's stride-16 anchors for sizes 128/256/512 and ratios 0.5/1/2, one size per call as
    # with FPN.  The table in the original generate_anchors comment is MATLAB's, 1-based: +1 on every
    # coordinate of these 0-based values.
    a = torch.cat([detectron_cell_anchors(16, s, (0.5, 1.0, 2.0)) for s in (128, 256, 512)])
    matlab = {
        (-83, -39, 100, 56),
        (-55, -55, 72, 72),
        (-35, -79, 52, 96),
        (-175, -87, 192, 104),
        (-119, -119, 136, 136),
        (-79, -167, 96, 184),
        (-359, -183, 376, 200),
        (-247, -247, 264, 264),
        (-167, -343, 184, 360),
    }
    assert {tuple(round(v) + 1 for v in row) for row in a.tolist()} == matlab
    assert a.tolist()[0] == [-84.0, -40.0, 99.0, 55.0]


@pytest.fixture(scope="module")
def extractor() -> RegionExtractor:
    torch.manual_seed(0)
    return RegionExtractor(build_detector(tiny_synthetic_preset()), batch_size=2)


def test_extraction_shapes_and_ranges(extractor: RegionExtractor) -> None:
    preset = extractor.preset
    images = random_images([(96, 128), (120, 80), (64, 64)])
    out = extractor.extract(images)
    assert len(out) == 3
    for img, r in zip(images, out):
        n = r.num_boxes
        assert 0 < n <= preset.selection.max_boxes
        assert r.boxes.shape == (n, 4) and r.boxes.dtype == np.float32
        assert r.features.shape == (n, preset.feature_dim) and r.features.dtype == np.float32
        assert r.cls_prob.shape == (n, preset.num_classes)
        np.testing.assert_allclose(r.cls_prob.sum(1), 1.0, rtol=1e-5)
        assert (r.objects >= 0).all() and (r.objects < preset.num_classes - 1).all()
        assert np.all(np.diff(r.max_conf) <= 0)  # sorted by max_conf
        h, w = img.shape[:2]
        assert (
            (r.boxes[:, 0] >= 0).all()
            and (r.boxes[:, 2] <= w + 1e-3).all()
            and (r.boxes[:, 3] <= h + 1e-3).all()
        )
        assert set(r.attributes) == {"color", "size"}
        assert r.attributes["color"].shape == (n,) and r.attributes["color"].max() < 3
        assert len(r.labels()) == n and r.labels()[0] in preset.class_names
        assert (r.image_w, r.image_h) == (w, h)


def test_batching_does_not_change_the_selection_count(extractor: RegionExtractor) -> None:
    images = random_images([(96, 128), (96, 128)], seed=3)
    together = extractor.extract(images)
    alone = [extractor(images[0]), extractor(images[1])]
    for a, b in zip(together, alone):  # same-size images: identical padding, identical results
        np.testing.assert_allclose(a.features, b.features, atol=1e-4)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)


def test_gt_box_mode_keeps_all_given_boxes_in_order(extractor: RegionExtractor) -> None:
    images = random_images([(100, 150), (80, 60)])
    given = [
        np.array([[10, 20, 60, 70], [0, 0, 150, 100], [100, 10, 140, 30]], np.float32),
        np.zeros((0, 4), np.float32),
    ]
    out = extractor.extract_at_boxes(images, given)
    np.testing.assert_allclose(out[0].boxes, given[0], atol=1e-4)
    assert out[0].features.shape == (3, extractor.preset.feature_dim)
    assert out[1].num_boxes == 0 and out[1].features.shape == (0, extractor.preset.feature_dim)
    # The same box alone gives the same feature: boxes do not interact.
    single = extractor.extract_at_boxes([images[0]], [given[0][1:2]])
    np.testing.assert_allclose(single[0].features[0], out[0].features[1], atol=1e-5)
    with pytest.raises(ValueError):
        extractor.extract_at_boxes([images[0]], [np.array([[10, 10, 5, 5]])])


def test_one_backbone_pass_for_detections_and_given_boxes(extractor: RegionExtractor) -> None:
    images = random_images([(96, 128), (96, 128), (96, 128)], seed=5)
    sets = [
        [np.array([[10, 20, 60, 70]], np.float32), np.array([[0, 0, 128, 96], [5, 5, 40, 40]], np.float32)],
        [],
        [np.array([[30, 10, 90, 80]], np.float32)],
    ]
    both = extractor.extract_with_boxes(images, sets)
    detected = extractor.extract(images)
    assert [len(at) for _, at in both] == [2, 0, 1]
    for image, (found, at_boxes), alone, given in zip(images, both, detected, sets):
        np.testing.assert_allclose(found.features, alone.features, atol=1e-4)
        np.testing.assert_allclose(found.boxes, alone.boxes, atol=1e-3)
        for regions, boxes in zip(at_boxes, given):
            separately = extractor.extract_at_boxes([image], [boxes])[0]
            np.testing.assert_allclose(regions.boxes, boxes, atol=1e-4)
            np.testing.assert_allclose(regions.features, separately.features, atol=1e-4)
    with pytest.raises(ValueError, match="box-list sets"):
        extractor.extract_with_boxes(images, sets[:2])


def test_model_inputs_global_first(extractor: RegionExtractor) -> None:
    r = extractor(random_images([(90, 120)])[0])
    inp = r.inputs()
    n = r.num_boxes
    assert inp.features.shape == (n + 1, r.features.shape[1]) and inp.locations.shape == (n + 1, 5)
    np.testing.assert_allclose(inp.features[0], r.features.mean(0), rtol=1e-5, atol=1e-6)
    assert inp.locations[0].tolist() == [0, 0, 1, 1, 1]
    x1, y1, x2, y2 = r.boxes[0]
    np.testing.assert_allclose(
        inp.locations[1],
        [x1 / 120, y1 / 90, x2 / 120, y2 / 90, (x2 - x1) * (y2 - y1) / (120 * 90)],
        rtol=1e-5,
    )
    feats, _, mask = inp.padded(n + 5)
    assert mask.tolist() == [1] * (n + 1) + [0] * 4 and feats[n + 1 :].sum() == 0
    assert region_inputs(np.zeros((0, 4)), np.zeros((0, 8)), 10, 10).features.shape == (1, 8)


def test_save_and_load_round_trip(tmp_path, extractor: RegionExtractor) -> None:
    weights, preset_json = save_detector(extractor.detector, tmp_path / "det.safetensors")
    assert weights.exists() and preset_json.exists()
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files
    loaded = load_detector(weights)
    assert loaded.preset == extractor.preset
    img = random_images([(70, 90)])[0]
    a, b = extractor(img), RegionExtractor(loaded)(img)
    np.testing.assert_array_equal(a.features, b.features)
    with pytest.raises(ValueError, match="holds a"):
        load_detector(weights, "vg-x152-fpn")
