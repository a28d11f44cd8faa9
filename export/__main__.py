"""`python -m export --checkpoint DIR --out model_repository/ [--precision fp32|int8|fp16]
[--backend python|onnxruntime|tensorrt]`

Exports the trunk, the six heads and (with --detector) the detector's backbone and box head as ONNX,
runs the parity gate (fails the export if it fails), writes the Triton repository and the parity
report next to it (`<out>.parity.json`, `<out>.parity.md`).  `--check` / `--check --fix` compare the
generated configs with the committed goldens instead (export/check.py).

Exit status: 0 written; 1 parity gate failed; 2 bad arguments or inputs; 3 skipped (needs CUDA).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from export.quantize import DEFAULT_EXCLUDE, GROUPS, QuantizeOptions
from export.triton_config import Backend, Deployment
from vilbert.cli import ArgumentParser, run


def _version(text: str) -> int | str:
    if text == "next" or (text.isdigit() and int(text) >= 1):
        return text if text == "next" else int(text)
    raise argparse.ArgumentTypeError(f"{text!r}: a version number >= 1, or 'next'")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m export", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, help="a checkpoint directory (python -m training.fit)")
    p.add_argument("--out", type=Path, default=Path("model_repository"), help="repository to (re)write")
    p.add_argument("--precision", choices=["fp32", "int8", "fp16"], default="fp32")
    p.add_argument("--backend", choices=[b.value for b in Backend], default="python")
    p.add_argument(
        "--version",
        type=_version,
        help="add the graphs as this version ('next': one past the highest) beside the versions --out "
        "holds, leaving the served one alone (activate it with python -m server.models); without it "
        "--out is replaced by a repository holding version 1",
    )
    p.add_argument("--detector", type=Path, help="detector weights (.safetensors with its preset JSON)")
    p.add_argument(
        "--data", type=Path, help="synthetic world for the metric gate (default: the training root)"
    )
    p.add_argument("--skip-metric", action="store_true", help="gate on generated inputs only")
    p.add_argument(
        "--max-examples",
        type=int,
        default=None,
        help="examples per task for the metric gate (default: 64 for fp32, 1000 for int8)",
    )
    p.add_argument(
        "--max-captions",
        type=int,
        default=None,
        help="retrieval captions for the metric gate, each ranked against the whole test gallery "
        "(default: 64, or --max-examples when smaller; 16 takes a quarter of the time)",
    )
    p.add_argument(
        "--int8-points", type=float, default=1.0, help="int8 gate: metric within this many points of PyTorch"
    )
    p.add_argument(
        "--int8-exclude",
        default=",".join(DEFAULT_EXCLUDE),
        help="int8: module groups kept fp32 (" + ", ".join(GROUPS) + "; or fnmatch patterns of module "
        "paths), comma-separated; 'none' quantizes every trunk matmul",
    )
    p.add_argument("--int8-heads", action="store_true", help="int8: quantize the head graphs too")
    p.add_argument("--int8-per-channel", action="store_true", help="int8: per-channel weight scales")
    p.add_argument(
        "--int8-reduce-range", action="store_true", help="int8: 7-bit weights (for CPUs without VNNI)"
    )
    p.add_argument("--no-int8-report", action="store_true", help="fp32 exports: do not measure int8")
    p.add_argument(
        "--threads", type=int, default=0, help="torch/onnxruntime threads for the gate (0: torch's)"
    )
    d = Deployment()
    p.add_argument("--max-batch-size", type=int, default=d.max_batch_size)
    p.add_argument("--queue-delay-us", type=int, default=d.queue_delay_us)
    p.add_argument("--trunk-instances", type=int, default=d.trunk_instances)
    p.add_argument("--trunk-threads", type=int, default=d.trunk_threads)
    p.add_argument("--keep-work", action="store_true", help="keep the intermediate ONNX files")
    p.add_argument("--check", action="store_true", help="compare generated configs with the goldens")
    p.add_argument("--fix", action="store_true", help="with --check: rewrite the goldens")
    return p


def _resolve_version(out: Path, version: int | str | None) -> int:
    from export.versions import next_version

    if version is None:
        return 1
    return next_version(out) if version == "next" else int(version)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.check:
        from export.check import main as check_main

        return check_main(["--fix"] if args.fix else [])
    if args.checkpoint is None:
        print("error: --checkpoint is required (or --check)", file=sys.stderr)
        return 2

    import torch

    from export.pipeline import ExportOptions, ExportSkippedError, ParityGateError, Precision, run_export

    if args.threads:
        torch.set_num_threads(args.threads)
    options = ExportOptions(
        checkpoint=args.checkpoint,
        out=args.out,
        precision=Precision(args.precision),
        deployment=Deployment(
            backend=Backend(args.backend),
            max_batch_size=args.max_batch_size,
            queue_delay_us=args.queue_delay_us,
            trunk_instances=args.trunk_instances,
            trunk_threads=args.trunk_threads,
        ),
        version=_resolve_version(args.out, args.version),
        add_version=args.version is not None,
        detector=args.detector,
        data_root=args.data,
        skip_metric=args.skip_metric,
        max_examples=args.max_examples,
        max_captions=args.max_captions,
        int8_points=args.int8_points,
        measure_int8=not args.no_int8_report,
        quantize=QuantizeOptions(
            exclude=tuple(x for x in args.int8_exclude.split(",") if x and x != "none"),
            quantize_heads=args.int8_heads,
            per_channel=args.int8_per_channel,
            reduce_range=args.int8_reduce_range,
        ),
        keep_work=args.keep_work,
    )
    try:
        outcome = run_export(options)
    except ExportSkippedError as exc:
        print(str(exc), file=sys.stderr)
        return 3
    except ParityGateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {outcome.repository}\nparity report: {outcome.report_md} (+ .json)")
    if options.add_version:
        print(
            f"version {options.version} is ready beside the served one; serve it with\n"
            f"  python -m server.models activate {options.version}"
        )
    return 0


if __name__ == "__main__":
    run(main)
