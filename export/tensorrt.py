"""TensorRT engines from the gated ONNX graphs (GPU hosts with the `tensorrt` package only).

Not exercised on the CPU machines this project is developed on: `python -m export --backend
tensorrt` stops there with a clear message before it gets here (export.pipeline.check_supported).
Each engine gets one optimisation profile spanning the table's axis ranges (spec.axis_ranges):
min / typical / max text length, region count and batch.
"""

from __future__ import annotations

from pathlib import Path

from vilbert.contract import BATCH, BOXES, HEIGHT, WIDTH, ExportSpec, GraphSpec

# Detector axes are not in the task table: a batch of up to 4 images up to 1344 px, up to 1000 boxes.
DETECTOR_PROFILE = {BATCH: (1, 1, 4), HEIGHT: (32, 608, 1344), WIDTH: (32, 800, 1344), BOXES: (1, 100, 1000)}


def profile_shapes(graph: GraphSpec, spec: ExportSpec) -> dict[str, tuple[tuple[int, ...], ...]]:
    """Input name -> (min, opt, max) shapes."""
    ranges = {name: (a.min, a.opt, a.max) for name, a in spec.axes.items()} | {
        k: v for k, v in DETECTOR_PROFILE.items() if k not in spec.axes
    }
    shapes = {}
    for t in graph.inputs:
        picks = []
        for i in range(3):
            picks.append(tuple(ranges[d][i] if isinstance(d, str) else int(d) for d in t.shape))
        shapes[t.name] = tuple(picks)
    return shapes


def build_engines(spec: ExportSpec, onnx_files: dict[str, Path], out: Path, fp16: bool) -> dict[str, Path]:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    out.mkdir(parents=True, exist_ok=True)
    plans = {}
    for graph in spec.graphs:
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_files[graph.name])):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT cannot parse {graph.name}: {errors}")
        config = builder.create_builder_config()
        if fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profile_shapes(graph, spec).items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
        engine = builder.build_serialized_network(network, config)
        if engine is None:
            raise RuntimeError(f"TensorRT failed to build {graph.name}")
        plans[graph.name] = out / f"{graph.name}.plan"
        plans[graph.name].write_bytes(bytes(engine))
    return plans
