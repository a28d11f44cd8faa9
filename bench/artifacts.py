"""Cached inputs of the benchmark: exported graphs of a checkpoint, and their int8 variants.

Speed does not depend on the weights' values, so `base` is measured with random (BERT-initialised)
weights; accuracy needs the trained demo checkpoint.  Exports take minutes at `base`, so graphs are
cached under ``artifacts/bench/<name>/`` (gitignored) and rebuilt only when the checkpoint changes;
each int8 variant is cached in its own folder, keyed by its `QuantizeOptions`.
`python -m bench.artifacts --preset base` builds them ahead of a run.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from export.quantize import QuantizeOptions

ROOT = Path("artifacts/bench")


@dataclass(frozen=True)
class BenchGraphs:
    """One checkpoint's exported graphs: `fp32` as the CPU repository serves them (offline "extended"
    optimisation), `basic` and `raw` as the int8 quantizer reads them."""

    checkpoint: Path
    work: Path
    fp32: dict[str, Path]
    basic: dict[str, Path]

    @property
    def config(self):
        from vilbert.config import ViLBERTConfig

        return ViLBERTConfig.load(self.checkpoint / "config.json")

    def int8(self, options: QuantizeOptions | None = None) -> dict[str, Path]:
        """The graphs quantized as `options` say (the shipped choice by default), cached."""
        from export.quantize import quantize_graph

        options = options or QuantizeOptions()
        key = hashlib.sha1(options.to_json().encode()).hexdigest()[:10]
        folder = self.work / f"int8-{key}"
        stamp = folder / "options.json"
        if not stamp.is_file():
            shutil.rmtree(folder, ignore_errors=True)
            for name, src in self.basic.items():
                quantize_graph(src, folder / f"{name}.onnx", options, head=name.startswith("head_"))
            stamp.write_text(options.to_json())
        return {name: folder / f"{name}.onnx" for name in self.basic}


def random_checkpoint(preset: str, path: Path) -> Path:
    import torch

    from vilbert.checkpoint import save_checkpoint
    from vilbert.config import preset as make_preset
    from vilbert.heads import MultiTaskViLBERT

    if (path / "config.json").is_file():
        return path
    torch.manual_seed(0)
    return save_checkpoint(path, MultiTaskViLBERT(make_preset(preset)).eval())


def _files(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.glob("*.onnx"))}


def _fingerprint(checkpoint: Path) -> str:
    weights = checkpoint / "model.safetensors"
    files = [weights] if weights.is_file() else sorted(checkpoint.glob("*.safetensors"))
    parts = [str(checkpoint.resolve())] + [
        f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files
    ]
    return hashlib.sha1("|".join(parts).encode()).hexdigest()


def bench_graphs(name: str, checkpoint: Path | None = None, root: Path = ROOT, log=print) -> BenchGraphs:
    """Graphs of `checkpoint` (default: a random-weight checkpoint of preset `name`), built once.

    Only the ViLBERT graphs (trunk and heads) are exported: the detector is timed by the gateway.
    """
    from export.pipeline import export_graphs, load_inputs
    from export.triton_config import Backend

    base = root / name
    if checkpoint is None:
        checkpoint = random_checkpoint(name, base / "checkpoint")
    work = base / "graphs"
    done = work / "done"
    fingerprint = _fingerprint(checkpoint)
    if not done.is_file() or done.read_text().split()[0] != fingerprint:
        started = time.perf_counter()
        log(f"exporting {checkpoint} to {work} (cached for later runs) ...")
        export_graphs(load_inputs(checkpoint), work, Backend.PYTHON, int8=False, log=log)
        done.write_text(f"{fingerprint} {time.perf_counter() - started:.1f}\n")
    return BenchGraphs(checkpoint, work, _files(work / "cpu"), _files(work / "basic"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.artifacts", description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="base", choices=["base", "demo", "tiny"])
    p.add_argument("--checkpoint", type=Path, help="a trained checkpoint instead of random weights")
    args = p.parse_args(argv)
    name = f"{args.preset}-trained" if args.checkpoint else args.preset
    graphs = bench_graphs(name, args.checkpoint)
    graphs.int8()
    print(f"checkpoint {graphs.checkpoint}\n" + "\n".join(f"  {k}: {v}" for k, v in graphs.fp32.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
