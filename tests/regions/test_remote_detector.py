"""The extractor's pluggable detector compute (regions.extractor.DetectorCompute) without Triton.

A fake compute wrapping the torch modules, and `server.remote_detector.TritonDetectorCompute` over
fake backends that answer by the contract's graph and tensor names: in-process numbers, weights
that differ (the probe refuses them), and a backend that fails (steps fall back in-process).
The same compute through the real tritonserver: tests/export/test_remote_detector_triton.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from regions.detector import build_detector
from regions.extractor import (
    BackboneOutputs,
    ImageRegions,
    LocalDetectorCompute,
    RegionExtractor,
    box_inputs,
)
from regions.roi_heads import BoxHeadOutputs
from regions.rpn import rpn_proposals
from regions.transform import preprocess
from server.backend import BackendError
from server.remote_detector import Mode, TritonDetectorCompute, remote_detector_compute
from tests.regions.conftest import tiny_synthetic_preset
from tests.regions.scenes import render_scene
from vilbert.contract import (
    BOX_INPUTS,
    BOX_REGRESSION,
    CLASS_LOGITS,
    DETECTOR_BACKBONE,
    DETECTOR_BOX_HEAD,
    DETECTOR_IMAGES,
    FC7,
    REGION_FEATURES,
    detector_dims_from_preset,
    fpn_output,
    rpn_deltas_output,
    rpn_logits_output,
)


def _detector(seed: int = 0):
    torch.manual_seed(seed)
    return build_detector(tiny_synthetic_preset()).eval()


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [np.asarray(render_scene(rng, w, h, 3)[0]) for w, h in ((160, 128), (96, 140))]


def _same(a: list[ImageRegions], b: list[ImageRegions]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.num_boxes == y.num_boxes > 0
        np.testing.assert_array_equal(x.boxes, y.boxes)
        np.testing.assert_array_equal(x.features, y.features)
        np.testing.assert_array_equal(x.objects, y.objects)
        np.testing.assert_array_equal(x.cls_prob, y.cls_prob)
        for g in x.attributes:
            np.testing.assert_array_equal(x.attributes[g], y.attributes[g])


class CountingCompute:
    """A DetectorCompute that wraps the torch modules (structural typing: no base class)."""

    def __init__(self, detector) -> None:
        self.inner = LocalDetectorCompute(detector)
        self.calls = {"backbone": 0, "box_head": 0}

    def backbone(self, images):
        self.calls["backbone"] += 1
        return self.inner.backbone(images)

    def box_head(self, inputs):
        self.calls["box_head"] += 1
        return self.inner.box_head(inputs)


class ModuleBackend:
    """A backend serving the detector graphs from a detector's torch modules, by contract names."""

    def __init__(self, detector, fail: bool = False, with_rpn: bool = True) -> None:
        self.compute = LocalDetectorCompute(detector)
        levels = detector_dims_from_preset(detector.preset).fpn_levels
        self.levels = [fpn_output(lv) for lv in levels]
        self.rpn_names = ([rpn_logits_output(lv) for lv in levels], [rpn_deltas_output(lv) for lv in levels])
        self.with_rpn = with_rpn  # False: a backbone graph of an export before the RPN head moved in
        self.fail = fail
        self.calls: list[str] = []

    def has_graph(self, model: str) -> bool:
        return model in (DETECTOR_BACKBONE, DETECTOR_BOX_HEAD)

    @torch.inference_mode()
    def infer(self, model, inputs, request_id=None):
        self.calls.append(model)
        if self.fail:
            raise BackendError(f"triton {model}: connection refused")
        if model == DETECTOR_BACKBONE:
            bb = self.compute.backbone(torch.from_numpy(inputs[DETECTOR_IMAGES]))
            # Read-only arrays, as tritonclient's responses can be.
            out = {n: v.numpy().copy() for n, v in zip(self.levels, bb.features.values())}
            if self.with_rpn:
                for names, values in zip(self.rpn_names, (bb.rpn_logits, bb.rpn_deltas)):
                    out.update({n: v.numpy().copy() for n, v in zip(names, values)})
        else:
            o = self.compute.box_head(torch.from_numpy(inputs[BOX_INPUTS]))
            out = {
                REGION_FEATURES: o.features.numpy().copy(),
                FC7: o.fc7.numpy().copy(),
                CLASS_LOGITS: o.class_logits.numpy().copy(),
                BOX_REGRESSION: o.box_regression.numpy().copy(),
            }
        for a in out.values():
            a.setflags(write=False)
        return out


def test_default_compute_is_the_detectors_own_arithmetic():
    det = _detector()
    image_list, _ = preprocess(_images(), det.preset.preprocessing)
    with torch.inference_mode():
        feats = LocalDetectorCompute(det).backbone(image_list.tensors).features
        proposals, _ = det.rpn(image_list, feats)
        want = det.box_head_outputs(feats, proposals, image_list.image_sizes)
        got = LocalDetectorCompute(det).box_head(box_inputs(det, feats, proposals, image_list.image_sizes))
    for name in ("features", "fc7", "class_logits", "box_regression"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    assert got.features.shape[1] == det.preset.feature_dim


def test_proposals_from_the_head_outputs_are_the_rpns_own():
    """`rpn_proposals` with the RPN head's outputs given (as the backbone graph returns them), or
    run here, gives exactly `rpn(images, features)`'s proposals."""
    det = _detector()
    image_list, _ = preprocess(_images(), det.preset.preprocessing)
    with torch.inference_mode():
        bb = LocalDetectorCompute(det).backbone(image_list.tensors)
        want, _ = det.rpn(image_list, bb.features)
        given = rpn_proposals(det.rpn, image_list, bb.features, bb.rpn_logits, bb.rpn_deltas)
        here = rpn_proposals(det.rpn, image_list, bb.features)
    anchors = det.preset.rpn.num_anchors_per_location
    assert [t.shape[1] for t in bb.rpn_logits] == [anchors] * len(bb.features)
    assert [t.shape[1] for t in bb.rpn_deltas] == [4 * anchors] * len(bb.features)
    assert [t.shape[-2:] for t in bb.rpn_logits] == [f.shape[-2:] for f in bb.features.values()]
    assert len(want) == 2 and all(len(w) for w in want)
    for w, g, h in zip(want, given, here):
        assert torch.equal(w, g) and torch.equal(w, h)


class FeaturesOnlyCompute(CountingCompute):
    """A compute that leaves the RPN head to the extractor."""

    def backbone(self, images):
        self.calls["backbone"] += 1
        return BackboneOutputs(dict(self.inner.detector.backbone(images)))


def _count_rpn_head_calls(det) -> dict[str, int]:
    calls = {"rpn_head": 0}
    det.rpn.head.register_forward_hook(lambda *_: calls.__setitem__("rpn_head", calls["rpn_head"] + 1))
    return calls


def test_the_extractor_runs_the_rpn_head_only_when_the_compute_did_not():
    det = _detector()
    images = _images()
    want = RegionExtractor(det, batch_size=2).extract(images)
    calls = _count_rpn_head_calls(det)
    _same(RegionExtractor(det, batch_size=2, compute=FeaturesOnlyCompute(det)).extract(images), want)
    assert calls["rpn_head"] == 1  # run by the extractor
    compute = TritonDetectorCompute(ModuleBackend(_detector()), det)  # same weights (seed 0)
    extractor = RegionExtractor(det, batch_size=2, compute=compute)
    extractor.extract(images[:1])  # the probe runs the local head once
    assert compute.mode is Mode.REMOTE
    before = calls["rpn_head"]
    _same(extractor.extract(images), want)
    assert calls["rpn_head"] == before  # the remote backbone supplied the RPN head's outputs


def test_backbone_graphs_without_rpn_outputs_are_refused(caplog):
    det = _detector()
    backend = ModuleBackend(det, with_rpn=False)
    compute = TritonDetectorCompute(backend, det)
    images = _images()
    with caplog.at_level("ERROR", logger="server"):
        got = RegionExtractor(det, batch_size=2, compute=compute).extract(images)
    assert compute.mode is Mode.LOCAL
    assert rpn_logits_output("p2") in caplog.text
    _same(got, RegionExtractor(det, batch_size=2).extract(images))


def test_a_given_compute_runs_both_steps_with_identical_regions():
    det = _detector()
    images = _images()
    compute = CountingCompute(det)
    plugged = RegionExtractor(det, batch_size=2, compute=compute)
    _same(plugged.extract(images), RegionExtractor(det, batch_size=2).extract(images))
    assert compute.calls == {"backbone": 1, "box_head": 1}
    boxes = [np.array([[4, 4, 60, 50], [10, 20, 90, 100]], np.float32), np.zeros((0, 4), np.float32)]
    got = plugged.extract_at_boxes(images, boxes)
    want = RegionExtractor(det, batch_size=2).extract_at_boxes(images, boxes)
    assert [g.num_boxes for g in got] == [2, 0]
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.features, w.features)
    assert compute.calls["backbone"] == 2


def test_remote_compute_gives_the_in_process_regions():
    det = _detector()
    images = _images()
    backend = ModuleBackend(det)
    compute = TritonDetectorCompute(backend, det)
    got = RegionExtractor(det, batch_size=1, compute=compute).extract(images)
    assert compute.mode is Mode.REMOTE
    assert compute.remote_calls == 2 + 2 * len(images)  # the probe's two, then two per image
    _same(got, RegionExtractor(det, batch_size=1).extract(images))


def test_graphs_of_other_weights_are_refused_by_the_probe(caplog):
    det = _detector(0)
    backend = ModuleBackend(_detector(1))  # same shapes, other weights
    compute = TritonDetectorCompute(backend, det)
    images = _images()
    with caplog.at_level("ERROR", logger="server"):
        got = RegionExtractor(det, batch_size=2, compute=compute).extract(images)
    assert compute.mode is Mode.LOCAL
    assert "differ from the gateway's detector weights" in caplog.text
    probe_calls = len(backend.calls)
    assert probe_calls == 2
    _same(got, RegionExtractor(det, batch_size=2).extract(images))
    RegionExtractor(det, compute=compute).extract(images[:1])
    assert len(backend.calls) == probe_calls  # never asked again


def test_a_failing_backend_falls_back_in_process_and_is_asked_again_later():
    det = _detector()
    backend = ModuleBackend(det)
    compute = TritonDetectorCompute(backend, det, retry_s=3600)
    extractor = RegionExtractor(det, batch_size=1, compute=compute)
    images = _images()
    want = RegionExtractor(det, batch_size=1).extract(images)
    _same(extractor.extract(images[:1]), want[:1])
    assert compute.mode is Mode.REMOTE
    backend.fail = True
    _same(extractor.extract(images[1:]), want[1:])  # Triton gone: same regions, in-process
    assert compute.mode is Mode.UNCHECKED
    calls = len(backend.calls)
    extractor.extract(images[:1])
    assert len(backend.calls) == calls  # not before retry_s
    backend.fail = False
    compute._retry_at = 0.0
    _same(extractor.extract(images), want)
    assert compute.mode is Mode.REMOTE


def test_an_empty_box_list_needs_no_round_trip():
    det = _detector()
    compute = TritonDetectorCompute(ModuleBackend(det), det)
    compute.mode = Mode.REMOTE
    out = compute.box_head(torch.zeros((0, det.preset.fc6_in_features)))
    assert isinstance(out, BoxHeadOutputs) and out.features.shape == (0, det.preset.feature_dim)
    assert compute.remote_calls == 0


@pytest.mark.parametrize(
    ("manifest", "chosen"),
    [
        (None, True),  # no repository: the backend is asked on first use
        ({"models": {}, "detector": None}, False),
        ({"models": {DETECTOR_BACKBONE: {}, DETECTOR_BOX_HEAD: {}}, "detector": "same"}, True),
        ({"models": {DETECTOR_BACKBONE: {}, DETECTOR_BOX_HEAD: {}}, "detector": "other"}, False),
    ],
)
def test_the_repository_manifest_decides_whether_to_try(tmp_path, manifest, chosen):
    import dataclasses

    det = _detector()
    repository = None
    if manifest is not None:
        dims = dataclasses.asdict(detector_dims_from_preset(det.preset))
        if manifest["detector"] == "other":
            dims["feature_dim"] += 1
        if manifest["detector"] is not None:
            manifest["detector"] = dims
        (tmp_path / "export.json").write_text(json.dumps(manifest))
        repository = tmp_path
    got = remote_detector_compute(ModuleBackend(det), det, repository)
    assert (got is not None) is chosen


@pytest.mark.parametrize(("backend", "graphs", "remote"), [("triton", True, True), ("triton", False, False)])
def test_the_gateway_extracts_through_triton_only_with_the_detector_graphs(tmp_path, backend, graphs, remote):
    import dataclasses

    from regions.weights import save_detector
    from server.loading import load_components
    from server.settings import BackendKind, Settings

    det = _detector()
    weights, _ = save_detector(det, tmp_path / "detector" / "d.safetensors")
    models = {DETECTOR_BACKBONE: {}, DETECTOR_BOX_HEAD: {}} if graphs else {}
    dims = dataclasses.asdict(detector_dims_from_preset(det.preset))
    manifest = {"models": models, "detector": dims, "answer_vocabularies": []}
    (tmp_path / "export.json").write_text(json.dumps(manifest))
    settings = Settings(
        backend=BackendKind(backend),
        model_repository=tmp_path,
        detector_weights=weights,
        triton_url="127.0.0.1:9",  # never reached: construction asks Triton nothing
        cache_dir=tmp_path / "cache",
    )
    components = load_components(settings)
    try:
        compute = components.extractor.compute
        assert isinstance(compute, TritonDetectorCompute) is remote
        assert isinstance(compute, LocalDetectorCompute) is not remote
    finally:
        components.backend.close()
