"""Faults with the real bundled tritonserver behind the gateway (bench/triton_faults.py).

SIGKILL Triton under load: 503 + Retry-After within a second, /readyz not ready, nothing lost, and
the gateway answers 200 again by itself once Triton is back.  SIGKILL one python-backend stub:
Triton still calls that model ready, so the gateway's per-model readiness must say it is not.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("pytriton")
pytestmark = pytest.mark.slow


def test_triton_and_stub_sigkill_under_load(tiny_export):
    from bench.triton_faults import run_faults
    from regions.detector import build_detector
    from regions.extractor import RegionExtractor
    from testkit.tiny_gateway import tiny_detector_preset

    torch.manual_seed(0)
    extractor = RegionExtractor(build_detector(tiny_detector_preset()), batch_size=1)
    reports = run_faults(
        tiny_export.repository, tiny_export.inputs.checkpoint, extractor, warm_s=1.0, down_s=1.0, after_s=1.0
    )
    for r in reports:
        assert r.lost == 0 and r.other_5xx == 0, r
        assert set(r.statuses) <= {"200", "503", "504"}, r
        assert r.statuses.get("200", 0) > 0 and r.statuses.get("503", 0) > 0, r
        assert r.rejected_without_retry_after == 0, r
        assert r.restart_to_first_200_s is not None, r  # recovered without a gateway restart
    kill, stub = reports
    assert kill.to_first_503_s is not None and kill.to_first_503_s < 1.0, kill
    assert kill.to_not_ready_s is not None and kill.to_not_ready_s < 1.0, kill
    assert stub.model_marked_not_ready, stub
    assert stub.to_first_503_s is not None and stub.to_first_503_s < 3.0, stub
