"""bench/gpu.py: without CUDA the section says n/a and why; with CUDA it times every engine side by side."""

from __future__ import annotations

import pytest
import torch

from bench import gpu
from bench.report import checks


def test_without_cuda_the_section_is_na_with_the_reason(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    section = gpu.run("tiny", quick=True)  # returns before any export or model load
    assert section == {"n/a": "n/a: no CUDA device (torch.cuda.is_available() is False)"}
    assert "not implemented" not in str(section)
    result = {"preset": "tiny", "ceiling": {"ceiling_gflops": 1.0}, "gpu": section}
    row = checks(result)[-1]
    assert row["claim"].startswith("TensorRT") and row["value"] == section["n/a"] and row["met"] is None
    assert gpu.markdown(section)[0] == section["n/a"]


def test_hidden_devices_are_na_too(monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpu.unavailable() == "n/a: no CUDA device (CUDA_VISIBLE_DEVICES is empty)"


def test_bench_main_section_reports_na_without_cuda(monkeypatch) -> None:
    from bench.__main__ import build_parser, section_gpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert section_gpu(build_parser().parse_args(["--preset", "tiny"]))["n/a"].startswith(
        "n/a: no CUDA device"
    )


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU bench needs a CUDA device")
def test_gpu_path_measures_every_engine_side_by_side(tmp_path) -> None:
    import onnxruntime as ort

    from bench.artifacts import bench_graphs

    graphs = bench_graphs("tiny", root=tmp_path / "graphs", log=lambda _: None)
    section = gpu.run("tiny", quick=True, batches=(1, 8), work=tmp_path / "work", graphs=graphs, log=print)
    assert set(section["batches"]) == {"1", "8"}
    providers = ort.get_available_providers()
    for batch, row in section["batches"].items():
        assert {gpu.BASELINE, "eager_pytorch_fp16"} <= set(row), batch
        assert row[gpu.BASELINE]["speedup_vs_eager_fp32"] == pytest.approx(1.0)
        for name, v in row.items():
            assert v["median_s"] > 0 and v["pairs_per_s"] > 0, name
            assert v["max_abs_diff_fused_vs_eager_fp32"] < 0.1, name  # fp16 vs fp32 on the tiny trunk
    for name in ("onnxruntime_cuda_fp16", "onnxruntime_tensorrt_fp16"):
        engine = section["engines"][name]
        measured = name in section["batches"]["1"]
        # each onnxruntime engine is measured or says why not; never silently missing
        assert measured or engine["n/a"].startswith("n/a"), (name, engine)
    if "CUDAExecutionProvider" in providers:
        assert "onnxruntime_cuda_fp16" in section["batches"]["8"], section["engines"]
    assert "| 8 | eager_pytorch_fp32 |" in "\n".join(gpu.markdown(section))
