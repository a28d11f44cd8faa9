"""Seconds per new image: region extraction in-process vs through Triton's detector graphs.

`python -m bench.remote_detector [--preset synthetic] [--images 12] [--threads 1]` exports the
preset's (random-weight) `detector_backbone` / `detector_box_head` into a scratch repository, starts
the bundled CPU tritonserver on it, and times `RegionExtractor.extract` on one synthetic scene at a
time both ways (gateway-side steps on `--threads` torch threads; Triton's detector instances on
`Deployment.detector_threads`), after a warm-up image each.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vilbert.cli import ArgumentParser, run


def export_detector_repository(detector, root: Path, threads: int = 1) -> Path:
    """A repository of only the two detector graphs, fp32, python backend (what `python -m export`
    writes for them)."""
    import dataclasses

    from export.graphs import detector_dims, export_onnx, graph_module
    from export.repository import write_repository
    from export.triton_config import Deployment
    from vilbert.config import tiny
    from vilbert.contract import GraphKind, build_spec

    spec = build_spec(tiny(), detector_dims(detector))
    spec = dataclasses.replace(spec, graphs=tuple(g for g in spec.graphs if g.kind is GraphKind.DETECTOR))
    files = {}
    for graph in spec.graphs:
        module = graph_module(graph, None, detector)
        files[graph.name] = export_onnx(module, graph, root / "onnx" / f"{graph.name}.onnx", max_text=8)
    return write_repository(root / "model_repository", spec, Deployment(detector_threads=threads), files)


def _time(extractors: dict[str, object], images: list[np.ndarray]) -> dict[str, list[float]]:
    """Seconds per image of each extractor, taking turns image by image (load hits both alike)."""
    seconds: dict[str, list[float]] = {name: [] for name in extractors}
    for extractor in extractors.values():
        extractor.extract(images[:1])  # warm-up
    for image in images:
        for name, extractor in extractors.items():
            t0 = time.perf_counter()
            extractor.extract([image])
            seconds[name].append(time.perf_counter() - t0)
    return seconds


def main(argv: list[str] | None = None) -> int:
    from export.triton_server import TritonServer
    from regions.detector import build_detector
    from regions.extractor import RegionExtractor
    from regions.presets import AttributeGroup, get_preset
    from server.remote_detector import Mode, TritonDetectorCompute
    from server.triton_backend import TritonBackend
    from training.synthetic.scene import COLOURS, SHAPES, SceneSampler, render

    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="synthetic")
    p.add_argument("--images", type=int, default=12)
    p.add_argument("--threads", type=int, default=1, help="gateway torch threads")
    p.add_argument("--triton-threads", type=int, default=2, help="intra-op threads per detector model")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    preset = get_preset(args.preset)
    if preset.num_classes == 0:  # the untrained synthetic preset: the synthetic world's vocabularies
        colours = AttributeGroup("colour", len(COLOURS), tuple(COLOURS))
        preset = preset.for_dataset(tuple(SHAPES), (colours,))
    detector = build_detector(preset).eval()
    sampler = SceneSampler(np.random.default_rng(0))
    images = [np.asarray(render(sampler.sample(f"s{i}")).convert("RGB")) for i in range(args.images)]
    out: dict[str, object] = {
        "preset": preset.name,
        "image_sizes": sorted({f"{i.shape[1]}x{i.shape[0]}" for i in images}),
    }
    with tempfile.TemporaryDirectory() as tmp:
        repository = export_detector_repository(detector, Path(tmp), args.triton_threads)
        with TritonServer(repository, startup_timeout=300) as server:
            backend = TritonBackend(server.http_url)
            compute = TritonDetectorCompute(backend, detector)
            extractors = {
                "in_process_s": RegionExtractor(detector, batch_size=1),
                "triton_s": RegionExtractor(detector, batch_size=1, compute=compute),
            }
            out.update(_time(extractors, images))
            assert compute.mode is Mode.REMOTE
            backend.close()
    for key in ("in_process_s", "triton_s"):
        out[key.replace("_s", "_median_s")] = round(statistics.median(out[key]), 4)  # type: ignore[arg-type]
    print(json.dumps({k: v for k, v in out.items() if not k.endswith("_s") or "median" in k}, indent=2))
    return 0


if __name__ == "__main__":
    run(main)
