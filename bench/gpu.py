"""Section 6 of `python -m bench`: the exported trunk on a CUDA device, fp16, vs eager PyTorch on it.

Engines, timed round-robin in one run (bench/timing.py) at batch 1 and 8, on the `--preset` trunk
(random weights) at the issue's shape (23 text tokens, 101 regions; bench/model_speed.py):

* ``eager_pytorch_fp32``: the exporter's own `vilbert.graphs.TrunkGraph` on CUDA, fp32 (the baseline);
* ``eager_pytorch_fp16``: the same module under ``torch.autocast("cuda", torch.float16)``;
* ``onnxruntime_cuda_fp16``: the exported trunk (provider-independent "basic" graph) converted to
  fp16 compute with fp32 inputs/outputs (`export.graphs.convert_fp16`), on onnxruntime's
  ``CUDAExecutionProvider``;
* ``onnxruntime_tensorrt_fp16``: the fp32 exported trunk on onnxruntime's ``TensorrtExecutionProvider``
  with ``trt_fp16_enable`` (one optimisation profile spanning the measured batches; the engine is
  built during warm-up and cached under the work folder).

Every call starts from host (numpy) inputs and ends with both trunk outputs (``fused``,
``region_states``) on the host, for every engine alike.  Each row also gives max |fused - eager fp32|.
An engine that cannot run here (its provider missing from this onnxruntime build, or the provider
failing to load, e.g. no TensorRT libraries) is reported ``n/a`` with the reason, not dropped.
Without a CUDA device the whole section is ``{"n/a": "n/a: no CUDA device (...)"}``.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

NO_CUDA = "n/a: no CUDA device"
WHAT = (
    "On a CUDA device this section times the trunk (bench/gpu.py) in eager PyTorch fp32 and fp16 "
    "(autocast) vs onnxruntime's CUDAExecutionProvider (fp16 graph) vs its TensorrtExecutionProvider "
    "(fp16 engine) at batch 1 and 8, side by side in one run."
)
BASELINE = "eager_pytorch_fp32"


def unavailable() -> str | None:
    """Why this section cannot run on this machine, or None when a CUDA device is usable."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return f"{NO_CUDA} (CUDA_VISIBLE_DEVICES is empty)"
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency of the project
        return f"{NO_CUDA} (torch is not installed)"
    if not torch.cuda.is_available():
        return f"{NO_CUDA} (torch.cuda.is_available() is False)"
    return None


def run(
    preset: str = "base",
    quick: bool = False,
    batches: tuple[int, ...] = (1, 8),
    work: Path = Path("artifacts") / "bench" / "gpu",  # relative to the working directory (the checkout)
    log: Callable[[str], None] = print,
    graphs=None,
) -> dict:
    """{"n/a": reason} without CUDA; otherwise every engine's timings per batch (see the module doc).

    `graphs` is a `bench.artifacts.BenchGraphs` (default: `bench_graphs(preset)`, exported once)."""
    reason = unavailable()
    if reason is not None:
        return {"n/a": reason}
    import torch

    from bench.artifacts import bench_graphs
    from bench.model_speed import REGIONS, TEXT_TOKENS
    from vilbert.checkpoint import load_checkpoint

    graphs = graphs if graphs is not None else bench_graphs(preset, log=log)
    work.mkdir(parents=True, exist_ok=True)
    trunk_onnx = graphs.basic["trunk"]
    model = load_checkpoint(graphs.checkpoint).model.eval()
    cfg = model.config
    repeats = 5 if quick else 20
    out: dict = {
        "preset": preset,
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "text_tokens": TEXT_TOKENS,
        "regions": REGIONS,
        "repeats": repeats,
        "baseline": BASELINE,
        "engines": {},
        "batches": {},
    }
    try:
        import onnxruntime as ort

        out["onnxruntime"] = ort.__version__
        out["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        ort = None
        out["onnxruntime"] = None
    engines: dict[str, Callable[[dict], np.ndarray]] = {}
    engines.update(_eager_engines(model))
    for name, build in (
        ("onnxruntime_cuda_fp16", lambda: _cuda_fp16_engine(trunk_onnx, work)),
        ("onnxruntime_tensorrt_fp16", lambda: _tensorrt_fp16_engine(trunk_onnx, work, cfg, max(batches))),
    ):
        if ort is None:
            out["engines"][name] = {"n/a": "onnxruntime is not installed"}
            continue
        try:
            engine, providers = build()
        except _NotAvailableError as exc:
            out["engines"][name] = {"n/a": str(exc)}
            log(f"  {name}: {exc}")
            continue
        except Exception as exc:  # a provider failing to build is a result, not a crash of the bench
            out["engines"][name] = {"n/a": f"{type(exc).__name__}: {exc}"}
            log(f"  {name}: {type(exc).__name__}: {exc}")
            continue
        engines[name] = engine
        out["engines"][name] = {"providers": providers}
    for name in engines:
        out["engines"].setdefault(name, {})
    out["batches"] = measure(cfg, engines, batches, repeats, log)
    del engines, model
    gc.collect()
    torch.cuda.empty_cache()
    return out


def measure(cfg, engines: dict[str, Callable[[dict], np.ndarray]], batches, repeats: int, log=print) -> dict:
    """{batch: {engine: timing + pairs/s + x vs eager fp32 + max |fused diff|}}, engines interleaved."""
    from bench.model_speed import trunk_feeds
    from bench.timing import interleaved

    table = {}
    for batch in batches:
        feeds = trunk_feeds(cfg, batch)
        ref = engines[BASELINE](feeds)
        times = interleaved({k: (lambda f=f, x=feeds: f(x)) for k, f in engines.items()}, repeats=repeats)
        base = times[BASELINE].median
        row = {}
        for name, t in times.items():
            fused = engines[name](feeds)
            row[name] = t.as_dict() | {
                "pairs_per_s": batch / t.median,
                "speedup_vs_eager_fp32": base / t.median,
                "max_abs_diff_fused_vs_eager_fp32": float(np.abs(fused.astype(np.float32) - ref).max()),
            }
        table[str(batch)] = row
        log(
            f"  gpu batch {batch}: "
            + "  ".join(
                f"{k} {v['median_s'] * 1e3:.2f} ms ({v['speedup_vs_eager_fp32']:.2f}x)"
                for k, v in row.items()
            )
        )
    return table


class _NotAvailableError(RuntimeError):
    """An engine that this machine cannot run (the message says why)."""


def _eager_engines(model) -> dict[str, Callable[[dict], np.ndarray]]:
    import torch

    from vilbert.contract import TRUNK_INPUTS
    from vilbert.graphs import TrunkGraph

    device = torch.device("cuda")
    module = TrunkGraph(model).to(device).eval()

    def forward(fp16: bool) -> Callable[[dict], np.ndarray]:
        def run(feeds: dict) -> np.ndarray:
            with torch.inference_mode(), torch.autocast("cuda", torch.float16, enabled=fp16):
                inputs = [torch.from_numpy(feeds[n]).to(device) for n in TRUNK_INPUTS]
                fused, regions = module(*inputs)
                regions.cpu()
                return fused.float().cpu().numpy()

        return run

    return {BASELINE: forward(False), "eager_pytorch_fp16": forward(True)}


def _session_engine(session) -> Callable[[dict], np.ndarray]:
    from vilbert.contract import FUSED, REGION_STATES

    def run(feeds: dict) -> np.ndarray:
        return session.run([FUSED, REGION_STATES], feeds)[0]

    return run


def _options():
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return so


def _cuda_fp16_engine(trunk: Path, work: Path):
    import onnxruntime as ort

    from export.graphs import convert_fp16

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise _NotAvailableError(
            "n/a: this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
        )
    dst = work / "fp16" / "trunk.onnx"
    if not dst.is_file() or dst.stat().st_mtime < trunk.stat().st_mtime:
        dst.parent.mkdir(parents=True, exist_ok=True)
        convert_fp16(trunk, dst)
    session = ort.InferenceSession(
        str(dst), _options(), providers=[("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    )
    providers = session.get_providers()
    if providers[0] != "CUDAExecutionProvider":
        raise _NotAvailableError(f"n/a: CUDAExecutionProvider did not load (session providers: {providers})")
    return _session_engine(session), providers


def _tensorrt_fp16_engine(trunk: Path, work: Path, cfg, max_batch: int):
    import onnxruntime as ort

    from bench.model_speed import trunk_feeds

    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        raise _NotAvailableError("n/a: this onnxruntime has no TensorrtExecutionProvider")

    def profile(batch: int) -> str:  # "name:1x23,..." for every trunk input at the measured shape
        return ",".join(f"{k}:{'x'.join(map(str, v.shape))}" for k, v in trunk_feeds(cfg, batch).items())

    cache = work / "trt-cache"
    cache.mkdir(parents=True, exist_ok=True)
    options = {
        "device_id": 0,
        "trt_fp16_enable": True,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_profile_min_shapes": profile(1),
        "trt_profile_opt_shapes": profile(max_batch),
        "trt_profile_max_shapes": profile(max_batch),
    }
    session = ort.InferenceSession(
        str(trunk),
        _options(),
        providers=[("TensorrtExecutionProvider", options), ("CUDAExecutionProvider", {"device_id": 0})],
    )
    providers = session.get_providers()
    if providers[0] != "TensorrtExecutionProvider":
        raise _NotAvailableError(
            f"n/a: TensorrtExecutionProvider did not load (TensorRT libraries missing?); "
            f"session providers: {providers}"
        )
    return _session_engine(session), providers


def markdown(section: dict | None) -> list[str]:
    """The GPU section of docs/performance.md."""
    if section is None:
        return ["not run"]
    if "n/a" in section or "skipped" in section:  # "skipped": results written before bench/gpu.py
        return [section.get("n/a", section.get("skipped")), "", WHAT]
    lines = [
        f"{section['device']}, `{section['preset']}` trunk ({section['text_tokens']} text tokens, "
        f"{section['regions']} regions), torch {section['torch']}, onnxruntime {section.get('onnxruntime')}; "
        f"{section['repeats']} repetitions, engines interleaved; host inputs to host outputs.",
        "",
        "| batch | engine | median ms | pairs/s | x eager fp32 | max abs diff (fused) |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for batch, row in section["batches"].items():
        for name, v in row.items():
            lines.append(
                f"| {batch} | {name} | {v['median_s'] * 1e3:.2f} | {v['pairs_per_s']:.1f} | "
                f"{v['speedup_vs_eager_fp32']:.2f}x | {v['max_abs_diff_fused_vs_eager_fp32']:.2e} |"
            )
    missing = {k: v["n/a"] for k, v in section["engines"].items() if "n/a" in v}
    lines += ["", *(f"- {k}: {why}" for k, why in missing.items())] if missing else []
    return lines


def summary(section: dict | None) -> str:
    """One line for the checks table."""
    if section is None:
        return "not run"
    if "n/a" in section or "skipped" in section:
        return section.get("n/a", section.get("skipped"))
    best = section["batches"].get("8") or next(iter(section["batches"].values()))
    parts = [f"{k} {v['speedup_vs_eager_fp32']:.2f}x" for k, v in best.items() if k != BASELINE]
    return f"batch 8 vs eager fp32 on {section['device']}: " + ", ".join(parts)
