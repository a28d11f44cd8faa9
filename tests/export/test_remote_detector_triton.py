"""Region extraction through the REAL bundled tritonserver: a tiny detector's `detector_backbone` and
`detector_box_head` graphs exported into a repository of their own, served by Triton's python
backend, called by the gateway's `TritonBackend` from `server.remote_detector.TritonDetectorCompute`;
the regions must be those of in-process extraction (the RPN head runs in `detector_backbone`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.remote_detector import export_detector_repository
from export.triton_server import TritonServer
from regions.detector import build_detector
from regions.extractor import RegionExtractor
from server.remote_detector import Mode, TritonDetectorCompute
from tests.regions.conftest import tiny_synthetic_preset
from tests.regions.scenes import render_scene

pytest.importorskip("tritonclient.http")
pytest.importorskip("pytriton")

FEATURE_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    torch.manual_seed(0)
    detector = build_detector(tiny_synthetic_preset()).eval()
    repository = export_detector_repository(detector, tmp_path_factory.mktemp("remote-detector"))
    with TritonServer(repository, startup_timeout=180) as server:
        yield detector, server


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt, rb = np.maximum(a[:, :2], b[:, :2]), np.minimum(a[:, 2:], b[:, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def test_regions_through_triton_match_in_process(served):
    from server.triton_backend import TritonBackend

    detector, server = served
    rng = np.random.default_rng(7)
    images = [np.asarray(render_scene(rng, w, h, 3)[0]) for w, h in ((200, 160), (128, 176))]
    backend = TritonBackend(server.http_url)
    rpn_head_calls = []
    hook = detector.rpn.head.register_forward_hook(lambda *_: rpn_head_calls.append(1))
    try:
        compute = TritonDetectorCompute(backend, detector)
        remote = RegionExtractor(detector, batch_size=1, compute=compute)
        got = remote.extract(images)
        given = [r.boxes[:3] for r in got]
        got_at = remote.extract_at_boxes(images, given)
    finally:
        backend.close()
        hook.remove()
    assert compute.mode is Mode.REMOTE
    assert len(rpn_head_calls) == 1  # the probe's in-process reference only: Triton ran the RPN head
    assert compute.remote_calls == 2 + 4 * len(images)  # probe, then backbone + box head per call
    local = RegionExtractor(detector, batch_size=1)
    want, want_at = local.extract(images), local.extract_at_boxes(images, given)
    for g, w in zip(got + got_at, want + want_at):
        assert g.num_boxes == w.num_boxes > 0
        assert float(_iou(g.boxes, w.boxes).min()) > 0.999
        assert float(np.abs(g.features - w.features).max()) <= FEATURE_TOLERANCE
        assert float(np.abs(g.cls_prob - w.cls_prob).max()) <= FEATURE_TOLERANCE
        np.testing.assert_array_equal(g.objects, w.objects)
