"""The machine a run measured: CPU, threads, load, library versions, and the fp32 matmul ceiling.

The ceiling is measured in the same run as everything it is compared with (a loaded machine lowers
both), as the best of PyTorch's and onnxruntime's fp32 GEMM at the thread count the benchmark uses,
on square matrices large enough that the kernel, not the call, is what is timed.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np

from bench.timing import Timing, measure


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")
                return [f for f in wanted if f in flags]
    except OSError:
        pass
    return []


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def describe(threads: int) -> dict:
    import onnxruntime
    import torch

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cpu_flags": cpu_flags(),
        "threads": threads,
        "torch_threads": torch.get_num_threads(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__,
        },
        "load_average_start": load_average(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _onnx_matmul(n: int, path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((n, n)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def matmul_ceiling(threads: int, work: Path, n: int = 2048, repeats: int = 7) -> dict:
    """fp32 GEMM GFLOP/s of PyTorch and onnxruntime at `threads`; the ceiling is the better one."""
    import onnxruntime as ort
    import torch

    flops = 2 * n**3
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch_t = measure(lambda: torch.mm(a, b), repeats=repeats, warmup=2)
    work.mkdir(parents=True, exist_ok=True)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    session = ort.InferenceSession(
        str(_onnx_matmul(n, work / "matmul.onnx")), so, providers=["CPUExecutionProvider"]
    )
    x = np.random.default_rng(1).standard_normal((n, n)).astype(np.float32)
    ort_t = measure(lambda: session.run(None, {"x": x}), repeats=repeats, warmup=2)

    def gflops(t: Timing) -> dict:
        return {"gflops": flops / t.median / 1e9, "gflops_best": flops / t.min / 1e9, **t.as_dict()}

    out = {"n": n, "torch": gflops(torch_t), "onnxruntime": gflops(ort_t)}
    out["ceiling_gflops"] = max(out["torch"]["gflops"], out["onnxruntime"]["gflops"])
    return out
