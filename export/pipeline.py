"""`run_export`: checkpoint -> ONNX graphs -> parity gate -> Triton repository + parity report.

Order matters: the gate runs on the graphs exactly as they will be served, and the repository is
only written (atomically, replacing the old one) when the gate passes.  The report is written
either way, next to the repository, so a failed export says why.
"""

from __future__ import annotations

import enum
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from export.graphs import (
    cuda_available,
    detector_dims,
    export_onnx,
    file_bytes,
    graph_module,
    optimize_onnx,
)
from export.parity import FP32_TOLERANCE, INT8_METRIC_POINTS, run_gate
from export.quantize import QuantizeOptions, quantize_graph
from export.report import write_report
from export.repository import add_version, checkpoint_digest, exporter_digest, sha256, write_repository
from export.runtime import OnnxGraphs
from export.triton_config import Backend, Deployment
from vilbert.checkpoint import load_checkpoint
from vilbert.contract import ExportSpec, GraphKind, build_spec
from vilbert.heads import MultiTaskViLBERT


class Precision(enum.StrEnum):
    FP32 = "fp32"
    INT8 = "int8"  # onnxruntime dynamic quantization (CPU)
    FP16 = "fp16"  # CUDA hosts only


# Examples per task for the metric half of the gate.  fp32 must leave the metric unchanged, which any
# count shows; int8 must stay within 1 point, and one flipped answer in 64 examples is 1.6 points, so
# int8 gates on (up to) 1000 examples: every example of the synthetic test splits (123-750 each).
# Retrieval captions stay at 64 (each is ranked against the whole test gallery: 150 trunk rows).
FP32_GATE_EXAMPLES = 64
INT8_GATE_EXAMPLES = 1000


def gate_examples(precision: Precision) -> int:
    return INT8_GATE_EXAMPLES if precision is Precision.INT8 else FP32_GATE_EXAMPLES


class ExportSkippedError(RuntimeError):
    """The requested rendering needs hardware or software this machine does not have."""


class ParityGateError(RuntimeError):
    """The parity gate failed; no repository was written."""


@dataclass
class ExportOptions:
    checkpoint: Path
    out: Path
    precision: Precision = Precision.FP32
    deployment: Deployment = field(default_factory=Deployment)
    version: int = 1
    add_version: bool = False  # add `version` beside the repository's versions instead of replacing it
    detector: Path | None = None  # detector weights (safetensors + preset JSON), optional
    data_root: Path | None = None  # synthetic world for the metric half of the gate
    skip_metric: bool = False  # gate on generated inputs only (the report says so)
    max_examples: int | None = None  # per task for the metric gate; None: gate_examples(precision)
    max_captions: int | None = None  # retrieval captions for the metric gate; None: FP32_GATE_EXAMPLES
    tolerance: float = FP32_TOLERANCE
    int8_points: float = INT8_METRIC_POINTS
    measure_int8: bool = True  # quantize and measure int8 even for fp32 exports (report only)
    quantize: QuantizeOptions = field(default_factory=QuantizeOptions)  # what int8 keeps in fp32
    keep_work: bool = False


@dataclass
class ExportOutcome:
    repository: Path | None
    report_json: Path
    report_md: Path
    report: dict


def check_supported(precision: Precision, backend: Backend) -> None:
    """Refuse early, with the reason, what this machine cannot produce."""
    if precision is Precision.INT8 and backend is Backend.TENSORRT:
        raise ValueError("int8 here means onnxruntime dynamic quantization; TensorRT takes fp32 or fp16")
    needs_cuda = precision is Precision.FP16 or backend is Backend.TENSORRT
    if needs_cuda and not cuda_available():
        what = "fp16" if precision is Precision.FP16 else "TensorRT engines"
        raise ExportSkippedError(
            f"skipped: {what} need a CUDA device (torch.cuda.is_available() is False or onnxruntime has "
            "no CUDAExecutionProvider). Export fp32/int8 here, or run this on a GPU host."
        )
    if backend is Backend.TENSORRT:
        try:
            import tensorrt  # noqa: F401
        except ImportError as exc:
            raise ExportSkippedError("skipped: TensorRT engines need the `tensorrt` Python package") from exc


def _data_root(opts: ExportOptions, meta: dict) -> Path | None:
    if opts.skip_metric:
        return None
    root = opts.data_root or Path(meta.get("fit_config", {}).get("data", {}).get("root", "") or "")
    if not root or not Path(root).is_dir():
        raise FileNotFoundError(
            f"data root for the metric gate not found ({root or 'none recorded in the checkpoint'}): pass "
            "--data (datasets in the reference layout, or a synthetic world: python -m training.synthetic; "
            "the gate measures every dataset present there and names the ones it skips), or --skip-metric"
        )
    return Path(root)


@dataclass
class ExportedGraphs:
    """The ONNX files of one export, before the gate: what is served in fp32 and in int8."""

    spec: ExportSpec
    work: Path
    basic: dict[str, Path]  # provider-independent fp32 (GPU renderings, int8 and fp16 sources)
    fp32: dict[str, Path]  # the fp32 graphs as served by the chosen backend
    int8: dict[str, Path] | None
    stats: dict[str, dict]
    seconds: float


@dataclass
class Loaded:
    """A checkpoint (and optional detector) ready to export."""

    model: MultiTaskViLBERT
    answers: dict[str, list[str]]
    meta: dict
    detector: torch.nn.Module | None
    spec: ExportSpec


def load_inputs(checkpoint: Path, detector_weights: Path | None = None) -> Loaded:
    ck = load_checkpoint(checkpoint)
    detector = None
    if detector_weights is not None:
        from regions.weights import load_detector

        detector = load_detector(detector_weights).eval()
    spec = build_spec(ck.model.config, detector_dims(detector) if detector is not None else None)
    return Loaded(ck.model.eval(), ck.answers, ck.meta, detector, spec)


def export_graphs(
    loaded: Loaded,
    work: Path,
    backend: Backend,
    int8: bool,
    log: Callable[[str], None] = print,
    quantize: QuantizeOptions | None = None,
) -> ExportedGraphs:
    """Every graph of the spec to ONNX, optimised for `backend`, and (if `int8`) quantized."""
    started = time.perf_counter()
    spec, cfg = loaded.spec, loaded.model.config
    shutil.rmtree(work, ignore_errors=True)
    served_fp32: dict[str, Path] = {}
    served_int8: dict[str, Path] = {}
    basic: dict[str, Path] = {}
    stats: dict[str, dict] = {}
    log(f"exporting {len(spec.graphs)} graphs of the {cfg.preset} model to ONNX ...")
    for graph in spec.graphs:
        t0 = time.perf_counter()
        module = graph_module(graph, loaded.model, loaded.detector)
        raw = export_onnx(
            module, graph, work / "exported" / f"{graph.name}.onnx", cfg.max_position_embeddings
        )
        basic[graph.name] = optimize_onnx(raw, work / "basic" / f"{graph.name}.onnx", "basic")
        if backend is Backend.PYTHON:  # CPU-only rendering: keep the CPU fusions offline
            served_fp32[graph.name] = optimize_onnx(raw, work / "cpu" / f"{graph.name}.onnx", "extended")
        else:  # GPU renderings: provider-independent graph; the server optimises for its device
            served_fp32[graph.name] = basic[graph.name]
        # The detector stays fp32 in int8 repositories: dynamic quantization targets matmuls, and
        # the convolutional backbone is where region features come from.
        if int8 and graph.kind is not GraphKind.DETECTOR:
            served_int8[graph.name] = quantize_graph(
                basic[graph.name],
                work / "int8" / f"{graph.name}.onnx",
                quantize,
                raw=raw,
                head=graph.kind is GraphKind.HEAD,
            )
        elif int8:
            served_int8[graph.name] = served_fp32[graph.name]
        weights, nodes = _graph_size(served_fp32[graph.name])
        row = stats[graph.name] = {
            "parameters": weights,
            "nodes": nodes,
            "bytes_exported": file_bytes(raw),
            "bytes_fp32": file_bytes(served_fp32[graph.name]),
            "bytes_int8": file_bytes(served_int8[graph.name]) if int8 else None,
            "export_seconds": round(time.perf_counter() - t0, 2),
        }
        log(
            f"  {graph.name:<18} {row['parameters']:>12,} weights  fp32 {row['bytes_fp32'] / 1e6:8.2f} MB"
            + (f"  int8 {row['bytes_int8'] / 1e6:8.2f} MB" if int8 else "")
            + f"  ({row['export_seconds']:.1f} s)"
        )
    return ExportedGraphs(
        spec, work, basic, served_fp32, served_int8 if int8 else None, stats, time.perf_counter() - started
    )


def run_export(opts: ExportOptions, log: Callable[[str], None] = print) -> ExportOutcome:
    """The whole export: load, export graphs, gate, write repository and report."""
    backend = opts.deployment.backend
    check_supported(opts.precision, backend)
    if opts.add_version:
        from export.versions import check_can_add, read_manifest, versions

        check_can_add(opts.out, opts.version)
        if opts.detector is None and versions(opts.out) and read_manifest(opts.out).get("detector"):
            print(
                f"warning: {opts.out}'s served version has detector graphs and this one will not "
                "(no --detector): pass the detector's weights to keep them",
                file=sys.stderr,
            )
    loaded = load_inputs(opts.checkpoint, opts.detector)
    data_root = _data_root(opts, loaded.meta)
    out = Path(opts.out)
    want_int8 = opts.precision is Precision.INT8 or (opts.measure_int8 and backend is not Backend.TENSORRT)
    exported = export_graphs(
        loaded, out.with_name(f".{out.name}.work"), backend, want_int8, log, opts.quantize
    )
    return finish_export(opts, loaded, exported, data_root, log)


def finish_export(
    opts: ExportOptions,
    loaded: Loaded,
    exported: ExportedGraphs,
    data_root: Path | None,
    log: Callable[[str], None] = print,
) -> ExportOutcome:
    """Gate the exported graphs; write the repository only if the gate passes; always the report."""
    started = time.perf_counter()
    backend = opts.deployment.backend
    spec, cfg, out = exported.spec, loaded.model.config, Path(opts.out)
    log("parity gate ...")
    threads = max(1, torch.get_num_threads())
    gate = run_gate(
        loaded.model,
        OnnxGraphs(spec, exported.fp32, threads),
        OnnxGraphs(spec, exported.int8, threads) if exported.int8 is not None else None,
        gate_int8=opts.precision is Precision.INT8,
        data_root=data_root,
        max_examples=opts.max_examples or gate_examples(opts.precision),
        max_captions=opts.max_captions or min(opts.max_examples or FP32_GATE_EXAMPLES, FP32_GATE_EXAMPLES),
        tolerance=opts.tolerance,
        int8_points=opts.int8_points,
        detector=loaded.detector,
        log=log,
    )
    if opts.precision is Precision.INT8:
        assert exported.int8 is not None
        files = exported.int8
    else:
        files = exported.fp32
    notes: list[str] = []
    if gate.passed and opts.precision is Precision.FP16:
        from export.graphs import convert_fp16

        files = {
            name: path
            if spec.graph(name).kind is GraphKind.DETECTOR
            else convert_fp16(path, exported.work / "fp16" / path.name)
            for name, path in exported.basic.items()
        }
        notes.append("fp16 graphs are converted after the fp32 gate; their parity is not gated here.")
    if gate.passed and backend is Backend.TENSORRT:
        from export.tensorrt import build_engines

        files = build_engines(spec, files, exported.work / "plans", fp16=opts.precision is Precision.FP16)
        notes.append(
            "TensorRT engines are built from the gated ONNX graphs; engine parity is not gated here."
        )

    stats = exported.stats
    has_int8 = exported.int8 is not None
    totals = {
        "parameters": sum(s["parameters"] for s in stats.values()),
        "bytes_exported": sum(s["bytes_exported"] for s in stats.values()),
        "bytes_fp32": sum(s["bytes_fp32"] for s in stats.values()),
        "bytes_int8": sum(s["bytes_int8"] for s in stats.values()) if has_int8 else None,
    }
    report = {
        "preset": cfg.preset,
        "checkpoint": str(opts.checkpoint),
        "repository": str(out),
        "backend": backend.value,
        "precision": opts.precision.value,
        "version": opts.version,
        "tolerance": opts.tolerance,
        "int8_points": opts.int8_points,
        "int8_quantization": opts.quantize.label() if exported.int8 is not None else None,
        "data_root": str(data_root) if data_root else None,
        "seconds": {"export": round(exported.seconds, 2)},
        "gate": gate.as_dict() | {"failures": gate.failures()},
        "graphs": stats,
        "totals": totals,
        "versions": _versions(),
        "notes": notes,
    }
    repository = None
    if gate.passed:
        manifest = {
            "precision": opts.precision.value,
            "preset": cfg.preset,
            "checkpoint": str(opts.checkpoint),
            "parity": {"passed": True, "report": f"{out.name}.parity.json"},
            "versions": report["versions"],
            "exporter": exporter_digest(),
            "checkpoint_sha256": checkpoint_digest(opts.checkpoint),
            # The detector's weights file: a version switch refuses a version of another detector.
            "detector_sha256": sha256(opts.detector) if opts.detector is not None else None,
        }
        write = add_version if opts.add_version else write_repository
        repository = write(
            out, spec, opts.deployment, files, version=opts.version, answers=loaded.answers, manifest=manifest
        )
    report["seconds"]["gate_and_write"] = round(time.perf_counter() - started, 2)
    json_path, md_path = write_report(out, report)
    if not opts.keep_work and gate.passed:
        shutil.rmtree(exported.work, ignore_errors=True)
    if not gate.passed:
        raise ParityGateError(
            f"parity gate failed ({len(gate.failures())} checks); repository not written; see {md_path}\n  "
            + "\n  ".join(gate.failures()[:12])
        )
    return ExportOutcome(repository, json_path, md_path, report)


def _graph_size(path: Path) -> tuple[int, int]:
    """(weight elements, nodes) of a graph: what it holds, not what the PyTorch module around it holds."""
    import math

    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return sum(math.prod(t.dims) for t in graph.initializer), len(graph.node)


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
