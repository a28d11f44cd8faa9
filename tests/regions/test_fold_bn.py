"""Folding batch norms into convolutions (regions.backbone.fold_frozen_bn) and the optimised local
compute the extractor uses: the same numbers as the modules they copy, which stay untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from regions import extractor as extractor_module
from regions.backbone import fold_frozen_bn, inference_copy
from regions.detector import RegionDetector, build_detector
from regions.extractor import LocalDetectorCompute, RegionExtractor, box_inputs
from tests.regions.conftest import tiny_bottleneck_preset, tiny_synthetic_preset
from tests.regions.scenes import render_scene


def _norms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, FrozenBatchNorm2d | nn.BatchNorm2d)]


def randomise_norms(module: nn.Module, seed: int = 0) -> None:
    """Give every batch norm non-trivial statistics and affine terms (a fresh one is the identity,
    which any folding, right or wrong, would reproduce)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in _norms(module):
            n = bn.running_var.numel()
            bn.weight.copy_(torch.rand(n, generator=g) + 0.5)
            bn.bias.copy_(torch.randn(n, generator=g) * 0.2)
            bn.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
            bn.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)


def _detector(preset, seed: int = 0) -> RegionDetector:
    torch.manual_seed(seed)
    det = build_detector(preset)
    randomise_norms(det, seed)
    return det.eval()


PRESETS = {"synthetic": tiny_synthetic_preset, "bottleneck": tiny_bottleneck_preset}


@pytest.mark.parametrize("kind", sorted(PRESETS))
def test_folded_backbone_computes_the_same_and_leaves_the_original_alone(kind: str) -> None:
    det = _detector(PRESETS[kind]())
    before = {k: v.clone() for k, v in det.state_dict().items()}
    folded = fold_frozen_bn(det.backbone)
    assert len(_norms(det.backbone)) > 0 and _norms(folded) == []  # every norm follows a conv
    assert det.state_dict().keys() == before.keys()
    assert all(torch.equal(det.state_dict()[k], v) for k, v in before.items())
    x = torch.randn(2, 3, 96, 128)
    with torch.inference_mode():
        want, got = det.backbone(x), folded(x)
        assert list(got) == list(want)
        for name in want:
            scale = float(want[name].abs().max())
            assert scale > 0.1  # a signal worth comparing
            torch.testing.assert_close(got[name], want[name], atol=1e-4 * max(1.0, scale), rtol=1e-4)
        fast = inference_copy(det.backbone, channels_last=True)
        got_cl = fast(x.contiguous(memory_format=torch.channels_last))
        for name in want:
            torch.testing.assert_close(got_cl[name], want[name], atol=1e-4 * max(1.0, scale), rtol=1e-4)


def test_a_wrong_fold_would_be_caught() -> None:
    """The comparison above can fail: dropping one norm's shift changes the outputs."""
    det = _detector(tiny_bottleneck_preset())
    folded = fold_frozen_bn(det.backbone)
    with torch.no_grad():
        folded.body.layer1[0].conv2.bias.zero_()
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        assert not torch.allclose(folded(x)["0"], det.backbone(x)["0"], atol=1e-3)


def test_training_mode_norms_are_refused() -> None:
    det = build_detector(tiny_synthetic_preset())  # nn.BatchNorm2d, in training mode when built
    with pytest.raises(ValueError, match="training mode"):
        fold_frozen_bn(det.backbone)


def test_only_frozen_norm_detectors_are_optimised_by_default() -> None:
    assert LocalDetectorCompute(_detector(tiny_bottleneck_preset())).optimise is True
    assert LocalDetectorCompute(_detector(tiny_synthetic_preset())).optimise is False  # trained here
    assert LocalDetectorCompute(_detector(tiny_synthetic_preset()), optimise=True).optimise is True


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [np.asarray(render_scene(rng, w, h, 3)[0]) for w, h in ((160, 120), (100, 140))]


def _close(got, want) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.num_boxes == w.num_boxes > 0
        np.testing.assert_allclose(g.boxes, w.boxes, atol=1e-3)
        np.testing.assert_allclose(g.features, w.features, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(g.cls_prob, w.cls_prob, atol=1e-5)
        np.testing.assert_array_equal(g.objects, w.objects)


@pytest.mark.parametrize("kind", sorted(PRESETS))
def test_extraction_through_the_optimised_compute_equals_the_modules(kind: str) -> None:
    det = _detector(PRESETS[kind]())
    images = _images()
    plain = RegionExtractor(det, optimise=False)
    fast = RegionExtractor(det, optimise=True)
    _close(fast.extract(images), plain.extract(images))
    boxes = [np.array([[5, 5, 60, 50], [20, 10, 90, 100]], dtype=np.float32)] * 2
    _close(fast.extract_at_boxes(images, boxes), plain.extract_at_boxes(images, boxes))


def test_the_optimised_compute_follows_new_weights() -> None:
    det = _detector(tiny_bottleneck_preset())
    fast = RegionExtractor(det)  # optimised by default: frozen norms
    images = _images()[:1]
    fast.extract(images)
    det.load_state_dict(_detector(tiny_bottleneck_preset(), seed=1).state_dict())  # in place
    _close(fast.extract(images), RegionExtractor(det, optimise=False).extract(images))


def test_parallel_roi_align_is_the_same_to_the_bit() -> None:
    det = _detector(tiny_bottleneck_preset())
    g = torch.Generator().manual_seed(0)
    features = {
        name: torch.randn(2, 16, 24 // 2**i, 32 // 2**i, generator=g) for i, name in enumerate("0123")
    }
    sizes = [(96, 128), (80, 120)]

    def boxes(n: int) -> torch.Tensor:
        xy = torch.rand(n, 2, generator=g) * 60
        return torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 60 + 1], dim=1)

    proposals = [boxes(70), boxes(45)]  # 115 boxes: pooled in slices, on 3 threads
    with torch.inference_mode():
        want = box_inputs(det, features, proposals, sizes)
        got = box_inputs(det, features, proposals, sizes, workers=3)
    assert torch.equal(got, want)


def test_the_channels_last_variant_computes_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(extractor_module, "CHANNELS_LAST", True)
    det = _detector(tiny_bottleneck_preset())
    images = _images()
    _close(RegionExtractor(det).extract(images), RegionExtractor(det, optimise=False).extract(images))
