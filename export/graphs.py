"""The ONNX steps applied to the exported graphs' PyTorch modules, and the detector graphs' modules.

The ViLBERT graphs' modules live in vilbert/graphs.py (the gateway's torch backend runs them too);
the detector's are here.  Each takes and returns tensors in the order of its `GraphSpec`
(vilbert/contract.py), so ONNX input/output names come from the contract.  Steps, in order:

1. `export_onnx`: torch.onnx's dynamo exporter (torch.export) with the spec's symbolic axes;
   the TorchScript exporter is not used: it mistranslates the text embeddings of this model.
2. `optimize_onnx`: onnxruntime graph optimisation saved offline — `BASIC` (constant folding,
   redundant nodes; provider-independent, safe for the GPU renderings) or `EXTENDED` (CPU fusions:
   LayerNorm, GELU, attention; what the CPU python-backend serves).
3. `quantize_int8`: onnxruntime dynamic quantization (int8 weights, activations quantized per call).
4. `convert_fp16` (CUDA hosts only): fp16 weights and compute, fp32 inputs/outputs kept.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from regions.roi_heads import box_head_mlp
from vilbert.contract import (
    ATTENTION_MASK,
    BATCH,
    BOXES,
    DETECTOR_BACKBONE,
    HEIGHT,
    INPUT_IDS,
    MIN_TEXT_TOKENS,
    REGION_LOCATIONS,
    REGION_MASK,
    REGIONS,
    TASK_IDS,
    TEXT,
    TEXT_MASK,
    TOKENS,
    WIDTH,
    DetectorDims,
    DType,
    GraphKind,
    GraphSpec,
    detector_dims_from_preset,
)
from vilbert.graphs import vilbert_graph_module
from vilbert.heads import MultiTaskViLBERT

OPSET = 18
# Above this many bytes a graph's weights go to an external-data file beside it (protobuf's 2 GiB
# limit); the base trunk (~1.1 GB fp32) still fits in one file.
EXTERNAL_DATA_BYTES = 1_800_000_000

# ---------------------------------------------------------------------------------------------
# Graph modules (the ViLBERT graphs': vilbert/graphs.py)
# ---------------------------------------------------------------------------------------------


class BackboneGraph(nn.Module):
    """detector_backbone: normalised padded images (N, 3, H, W) -> FPN levels, finest first, then
    the RPN head's objectness logits per level, then its box deltas per level (the RPN head's 3x3
    conv over every level is the heaviest step after the backbone; anchors and proposal selection
    stay with the caller: `regions.rpn.rpn_proposals`)."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.backbone = detector.backbone
        self.rpn_head = detector.rpn.head

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        levels = list(self.backbone(images).values())
        logits, deltas = self.rpn_head(levels)
        return (*levels, *logits, *deltas)


class BoxHeadGraph(nn.Module):
    """detector_box_head: RoI-pooled box inputs (K, C*r*r [+6]) -> features, fc7, class logits, deltas.

    `regions.roi_heads.box_head_mlp`, the step `RegionDetector.box_head_outputs` runs after pooling
    (the parity gate checks the two agree on pooled real boxes).
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.box_head = detector.roi_heads.box_head
        self.predictor = detector.roi_heads.box_predictor
        self.fc6_relu = bool(detector.preset.box_head.fc6_relu)

    def forward(self, box_inputs: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        out = box_head_mlp(self.box_head, self.predictor, self.fc6_relu, box_inputs)
        return out.features, out.fc7, out.class_logits, out.box_regression


def graph_module(graph: GraphSpec, model: MultiTaskViLBERT | None, detector: nn.Module | None) -> nn.Module:
    """The eval-mode module computing `graph` (ViLBERT graphs: `vilbert.graphs`)."""
    if graph.kind is not GraphKind.DETECTOR:
        assert model is not None
        return vilbert_graph_module(graph, model)
    assert detector is not None
    module = BackboneGraph(detector) if graph.name == DETECTOR_BACKBONE else BoxHeadGraph(detector)
    return module.eval()


def detector_dims(detector: nn.Module) -> DetectorDims:
    """The detector graph shapes of a `regions.detector.RegionDetector`."""
    dims = detector_dims_from_preset(detector.preset)
    levels = len(detector.backbone.fpn.layer_blocks) + 1  # + the max-pooled P6
    if levels != len(dims.fpn_levels):
        raise ValueError(f"detector has {levels} pyramid levels, its preset says {len(dims.fpn_levels)}")
    anchors = int(detector.rpn.head.cls_logits.out_channels)
    if anchors != dims.rpn_anchors:
        raise ValueError(
            f"detector's RPN has {anchors} anchors per location, its preset says {dims.rpn_anchors}"
        )
    return dims


# ---------------------------------------------------------------------------------------------
# Generated inputs
# ---------------------------------------------------------------------------------------------


def sample_inputs(
    graph: GraphSpec, sizes: dict[str, int], rng: np.random.Generator, vocab_size: int = 1000
) -> dict[str, np.ndarray]:
    """Random inputs for `graph` at the given axis sizes, with realistic masks.

    Token ids avoid 0 ([PAD]); the first row's text and regions are half padding so masking is
    exercised; region row 0 keeps the global location [0, 0, 1, 1, 1].
    """
    out: dict[str, np.ndarray] = {}
    for t in graph.inputs:
        shape = tuple(sizes[d] if isinstance(d, str) else d for d in t.shape)
        if t.name == INPUT_IDS:
            out[t.name] = rng.integers(1, vocab_size, size=shape, dtype=np.int64)
        elif t.name in (ATTENTION_MASK, REGION_MASK, TEXT_MASK):
            mask = np.ones(shape, dtype=t.dtype.numpy)
            keep = max(1, shape[1] // 2) if t.name == REGION_MASK else max(2, shape[1] // 2)
            mask[0, keep:] = 0
            out[t.name] = mask
        elif t.name == TASK_IDS:
            out[t.name] = np.ones(shape, dtype=np.int64)
        elif t.name == REGION_LOCATIONS:
            xy = np.sort(rng.uniform(0, 1, size=(*shape[:-1], 2, 2)), axis=-1)  # x1<x2, y1<y2
            loc = np.stack([xy[..., 0, 0], xy[..., 1, 0], xy[..., 0, 1], xy[..., 1, 1]], axis=-1)
            area = (loc[..., 2] - loc[..., 0]) * (loc[..., 3] - loc[..., 1])
            loc = np.concatenate([loc, area[..., None]], axis=-1).astype(np.float32)
            loc[:, 0] = np.array([0, 0, 1, 1, 1], dtype=np.float32)
            out[t.name] = loc
        elif t.dtype is DType.FP32:
            out[t.name] = rng.standard_normal(size=shape).astype(np.float32)
        else:
            raise ValueError(f"no generator for input {t.name!r} of {graph.name}")
    return out


# Axis sizes of the example the exporter traces with: distinct, and none of them 0 or 1, so
# torch.export can neither specialise an axis to a constant nor mistake two axes for one.
TRACE_SIZES = {BATCH: 2, TEXT: 7, TOKENS: 8, REGIONS: 9, BOXES: 5, HEIGHT: 64, WIDTH: 96}


# ---------------------------------------------------------------------------------------------
# ONNX steps
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torch.onnx prints progress lines and warnings per graph; the export CLI reports its own."""
    # The root logger too: onnxruntime's quantizer advises "pre-processing" there on every call.
    names = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", None)
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _torch_dims(graph: GraphSpec, max_text: int) -> dict[str, object]:
    bounds = {
        TEXT: (MIN_TEXT_TOKENS, max_text),
        TOKENS: (MIN_TEXT_TOKENS, max_text + 1),
        HEIGHT: (32, 4096),
        WIDTH: (32, 4096),
    }
    dims: dict[str, object] = {}
    for t in graph.inputs:
        for name in t.dynamic_axes.values():
            if name not in dims:
                lo, hi = bounds.get(name, (1, 1 << 16))
                dims[name] = torch.export.Dim(name, min=lo, max=hi)
    return dims


def export_onnx(module: nn.Module, graph: GraphSpec, path: Path, max_text: int) -> Path:
    """Export `module` as `graph` to `path` (symbolic axes as in the spec)."""
    rng = np.random.default_rng(0)
    sample = sample_inputs(graph, TRACE_SIZES, rng)
    args = tuple(torch.from_numpy(sample[t.name]) for t in graph.inputs)
    dims = _torch_dims(graph, max_text)
    dynamic_shapes = tuple({i: dims[name] for i, name in t.dynamic_axes.items()} for t in graph.inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet(), torch.no_grad():
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            input_names=[t.name for t in graph.inputs],
            output_names=[t.name for t in graph.outputs],
            opset_version=OPSET,
            optimize=True,
            verify=False,
        )
    assert program is not None
    program.save(str(path), external_data=_weights_bytes(module) > EXTERNAL_DATA_BYTES)
    _drop_initializer_value_info(path)
    return path


def _drop_initializer_value_info(path: Path) -> None:
    """Remove value_info entries that shadow initializers.

    The exporter's optimiser rewrites some weights (e.g. folds a transpose into Gemm's transB) but
    leaves their old value_info behind; onnx shape inference, which the int8 quantizer runs, then
    rejects the graph ("inferred shape and existing shape differ").
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    keep = [v for v in model.graph.value_info if v.name not in initializers]
    if len(keep) != len(model.graph.value_info):
        del model.graph.value_info[:]
        model.graph.value_info.extend(keep)
        onnx.save(model, str(path))


def _weights_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def _session_options(threads: int = 1) -> object:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # warnings about unused initialisers etc. are not actionable here
    return so


def optimize_onnx(src: Path, dst: Path, level: str) -> Path:
    """Save the onnxruntime-optimised graph (`level`: basic | extended) for the CPU provider."""
    import onnxruntime as ort

    levels = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    }
    so = _session_options()
    so.graph_optimization_level = levels[level]
    so.optimized_model_filepath = str(dst)
    if src.stat().st_size > EXTERNAL_DATA_BYTES:
        so.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", dst.name + ".data"
        )
    dst.parent.mkdir(parents=True, exist_ok=True)
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    return dst


def quantize_int8(src: Path, dst: Path) -> Path:
    """onnxruntime dynamic quantization: int8 weights of MatMul/Gemm, activations quantized at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst.parent.mkdir(parents=True, exist_ok=True)
    with _quiet():
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=QuantType.QInt8,
            use_external_data_format=src.stat().st_size > EXTERNAL_DATA_BYTES,
        )
    return dst


def convert_fp16(src: Path, dst: Path) -> Path:
    """fp16 weights and compute with fp32 graph inputs/outputs (for CUDA hosts; needs `onnx`)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))
    return dst


def file_bytes(path: Path) -> int:
    """Size of a graph including an external-data file beside it."""
    extra = path.with_name(path.name + ".data")
    return path.stat().st_size + (extra.stat().st_size if extra.exists() else 0)


def cuda_available() -> bool:
    """CUDA for fp16/TensorRT steps: a visible device, and the CUDA provider in onnxruntime."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return False
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers()
