"""`python -m bench [--preset base|demo] [--quick]`: every performance figure, side by side, in one run.

Writes `bench/results/latest.json` and regenerates `docs/performance.md`.  Sections:

1. machine: CPU, threads, load, versions; the fp32 matmul ceiling measured in this run;
2. trunk + head: eager PyTorch vs onnxruntime fp32 vs onnxruntime int8 at batch 1 and 8 (`--preset`,
   random weights: speed does not depend on them), and the fp32 trunk's fraction of the ceiling;
3. int8 accuracy: each task's metric on the synthetic test splits (the trained demo model), PyTorch
   vs fp32 vs the shipped int8 vs every-matmul int8; with `--int8-study`, which exclusions cost what;
4. serving: gateway (local / triton) vs in-process onnxruntime, padding, concurrency, cold vs cached
   image, peak memory (the served demo model);
5. retrieval over galleries of 100 and 1000 images (bench/retrieval.py when present);
6. model swap (bench/swap.py): requests failed and the switch time while the served model is replaced
   under 4 clients (the served demo model published again as the next version);
7. stage 1 of two-stage search at scale (bench/gallery_index.py): faiss exact / HNSW / IVF over 100K
   pre-filter embeddings (and 1M random ones unless `--quick`): build, size, p50/p95, recall@K;
8. the training step (bench/training_step.py): ours (bf16 autocast where native, fused AdamW) vs the
   reference's fp32 forward + loss + backward on the same batch and weights, and the bf16 vs fp32 loss
   curves;
9. fairness under contention (bench/contention.py): extraction, the training step and served answers
   alone and beside a busy neighbour, with passive vs spinning OpenMP threads;
10. on a CUDA device (bench/gpu.py): the trunk in eager PyTorch fp32/fp16 vs onnxruntime CUDA EP fp16 vs
   onnxruntime TensorRT EP fp16 at batch 1 and 8; without one the section reads "n/a: no CUDA device";
11. the detector (bench/detector_speed.py): the 12-in-1 detector's FLOPs per part at the served
   resolution, the FLOP floor at this run's matmul ceiling, and one new image's latency part by part
   and end to end, today's path vs optimised fp32 (frozen norms folded, parallel RoIAlign).

`--quick` runs every section with fewer repetitions and examples (minutes, not tens of minutes).
"""

from __future__ import annotations

import os

# OpenMP's default busy-wait makes PyTorch's threads spin for CPU another process holds: on a shared
# 2-core machine eager PyTorch then runs up to 8x slower than it can.  Passive waiting gives the eager
# baseline its best case (set before torch is imported; onnxruntime sessions disable spinning too).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import gc
import importlib.util
import json
import sys
import time
from pathlib import Path

RESULTS = Path("bench/results/latest.json")
STUDY_RESULTS = Path("bench/results/int8_study.json")
DOC = Path("docs/performance.md")
WORK = Path("artifacts") / "bench" / "work"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=["base", "demo", "tiny"], default="base", help="model for section 2")
    p.add_argument("--quick", action="store_true", help="fewer repetitions and examples")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="intra-op threads everywhere")
    p.add_argument("--checkpoint", type=Path, default=Path("runs/demo/model"), help="trained demo checkpoint")
    p.add_argument("--repository", type=Path, default=Path("model_repository"), help="served repository")
    p.add_argument("--detector", type=Path, default=Path("artifacts/detector/synthetic-detector.safetensors"))
    p.add_argument("--data", type=Path, default=Path("data/synthetic"), help="synthetic world")
    p.add_argument("--int8-study", action="store_true", help="measure each int8 exclusion (slow)")
    p.add_argument("--retrieval-full", action="store_true", help="bench/retrieval.py in its full mode (slow)")
    p.add_argument(
        "--only",
        nargs="*",
        default=None,
        help="sections to run (machine model accuracy serving retrieval swap gallery_index training "
        "contention gpu detector)",
    )
    p.add_argument(
        "--merge",
        action="store_true",
        help="keep the sections of --out that this run does not measure (with --only)",
    )
    p.add_argument(
        "--render-only", action="store_true", help="rewrite --doc from the results in --out; measure nothing"
    )
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--doc", type=Path, default=DOC)
    return p


def log(msg: str) -> None:
    print(msg, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from bench import machine
    from bench.report import checks, render

    if args.render_only:
        result = json.loads(args.out.read_text())
        result["checks"] = checks(result)
        args.doc.write_text(render(result, _retrieval_markdown(result.get("retrieval"))))
        log(f"rendered {args.doc} from {args.out}")
        return 0
    started = time.perf_counter()
    want = set(
        args.only
        or [
            "machine",
            "model",
            "accuracy",
            "serving",
            "retrieval",
            "swap",
            "gallery_index",
            "training",
            "contention",
            "gpu",
            "detector",
        ]
    )
    WORK.mkdir(parents=True, exist_ok=True)
    result: dict = {
        "command": "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "quick": args.quick,
        "preset": args.preset,
        "machine": machine.describe(args.threads),
        "notes": [],
    }
    result["machine"]["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY")
    log(
        f"bench: {result['machine']['cpu']}, {args.threads} threads, load "
        f"{result['machine']['load_average_start']}"
    )
    result["ceiling"] = machine.matmul_ceiling(args.threads, WORK, repeats=5 if args.quick else 9)
    log(f"fp32 matmul ceiling: {result['ceiling']['ceiling_gflops']:.1f} GFLOP/s")

    if "model" in want:
        result["model"] = section_model(args)
        gc.collect()
    demo_ready = args.checkpoint.is_dir() and args.data.is_dir()
    if "accuracy" in want:
        if demo_ready:
            result["accuracy"] = section_accuracy(args)
            if args.int8_study:
                result["int8_study"] = section_int8_study(args)
                STUDY_RESULTS.write_text(json.dumps(result["int8_study"], indent=2) + "\n")
            elif STUDY_RESULTS.is_file():  # the slow study, from its own run (its file says when)
                result["int8_study"] = json.loads(STUDY_RESULTS.read_text()) | {"separate_run": True}
        else:
            result["notes"].append(
                f"accuracy skipped: no trained checkpoint at {args.checkpoint} or data at {args.data}"
            )
    if "serving" in want:
        from bench.serving import ServedModel, run

        served = ServedModel(args.repository, args.checkpoint, args.detector, args.data)
        if served.missing():
            result["notes"].append("serving skipped: missing " + ", ".join(served.missing()))
        else:
            result["serving"] = run(served, WORK, quick=args.quick, threads=args.threads, log=log)
        if args.preset == "base" and args.data.is_dir():
            from bench.artifacts import ROOT, bench_graphs
            from bench.serving import base_overhead

            graphs = bench_graphs("base", log=log)
            result["serving_base"] = base_overhead(
                graphs, ROOT / "base", WORK, args.data, quick=args.quick, threads=args.threads, log=log
            )
    if "retrieval" in want:
        result["retrieval"] = section_retrieval(args)
    if "swap" in want:
        result["swap"] = section_swap(args)
    if "gallery_index" in want:
        result["gallery_index"] = section_gallery_index(args)
    if "training" in want:
        from bench import training_step

        result["training"] = training_step.measure(
            args.preset,
            repeats=3 if args.quick else 5,
            curve_steps=8 if args.quick else 16,
            threads=args.threads,
            log=log,
        )
    if "contention" in want:
        result["contention"] = section_contention(args)
    if "gpu" in want:
        result["gpu"] = section_gpu(args)
    if "detector" in want:
        result["detector"] = section_detector(args)
        gc.collect()
    result["machine"]["load_average_end"] = machine.load_average()
    result["seconds"] = round(time.perf_counter() - started, 1)
    if args.merge and args.out.is_file():
        # the sections measured now replace theirs; the rest (and their machine facts) stay as they were
        previous = json.loads(args.out.read_text())
        measured = {k: result[k] for k in want if k in result}
        previous.setdefault("merged_runs", []).append(
            {"command": result["command"], "sections": sorted(measured), "seconds": result["seconds"]}
        )
        result = previous | measured
    result["checks"] = checks(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    retrieval_md = _retrieval_markdown(result.get("retrieval"))
    args.doc.write_text(render(result, retrieval_md))
    log(f"wrote {args.out} and {args.doc} in {result['seconds']:.0f} s")
    for c in result["checks"]:
        log(
            f"  [{'info' if c.get('info') else {True: 'met', False: 'NOT met', None: 'n/a'}[c['met']]}] "
            f"{c['claim']}: {c['value']}"
        )
    return 0


def section_swap(args) -> dict:
    from bench.swap import measure

    image = next(Path("artifacts/examples").glob("*.png"), None)
    needed = [args.repository / "active.json", args.detector]
    missing = [str(p) for p in needed if not p.exists()] + ([] if image else ["artifacts/examples/*.png"])
    if missing:
        return {"missing": "missing " + ", ".join(missing)}
    return measure(args.repository, args.detector, image, log=log)


def section_detector(args) -> dict:
    """bench/detector_speed.py on the 12-in-1 detector's architecture (random weights)."""
    from bench import detector_speed

    log("detector: FLOP floor and new-image latency, today's path vs optimised fp32 ...")
    try:
        return detector_speed.measure(
            "vg-x152-fpn",
            threads=args.threads,
            repeats=2 if args.quick else 3,
            log=log,
            work=WORK / "detector",
            ceiling_repeats=5 if args.quick else 9,
        )
    except Exception as exc:  # reported, not allowed to lose the other sections
        return {"error": f"{type(exc).__name__}: {exc}"}


def section_contention(args) -> dict:
    from bench import contention

    needed = [args.data, args.detector, args.checkpoint, args.repository]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        return {"missing": "missing " + ", ".join(missing)}
    log("contention: each job alone and beside a busy neighbour, passive vs spinning OpenMP ...")
    try:
        return contention.run(
            args.data,
            args.detector,
            args.checkpoint,
            args.repository,
            WORK / "contention",
            seconds=6.0 if args.quick else 12.0,
            log=log,
        )
    except Exception as exc:  # reported, not allowed to lose the other sections
        return {"error": f"{type(exc).__name__}: {exc}"}


def section_gallery_index(args) -> dict:
    """bench/gallery_index.py: stage 1 (pre-filter ranking) over 100K embeddings, 1M simulated unless
    --quick; its result is also written to bench/results/gallery_index.json."""
    from bench import gallery_index

    log(f"gallery_index: faiss flat / HNSW / IVF (quick={args.quick}) ...")
    try:
        out = gallery_index.run(
            quick=args.quick, checkpoint=args.checkpoint, data_root=args.data, threads=args.threads, log=log
        )
    except Exception as exc:  # reported, not allowed to lose the other sections
        return {"error": f"{type(exc).__name__}: {exc}"}
    gallery_index.RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    return out


def section_model(args) -> dict:
    from bench.artifacts import bench_graphs
    from bench.model_speed import engines_table, threading_table, trunk_throughput
    from vilbert.checkpoint import load_checkpoint

    graphs = bench_graphs(args.preset, log=log)
    model = load_checkpoint(graphs.checkpoint).model.eval()
    repeats = 3 if args.quick else 7
    log(f"trunk + head, {args.preset}: eager vs onnxruntime fp32 vs int8 ({repeats} repetitions) ...")
    out = {"preset": args.preset, "parameters": sum(p.numel() for p in model.parameters())}
    out["engines"] = engines_table(model, graphs.fp32, graphs.int8(), args.threads, (1, 8), repeats)
    for batch, row in out["engines"]["batches"].items():
        log(
            f"  batch {batch}: "
            + "  ".join(f"{k} {v['pairs_per_s']:.2f} pairs/s (±{v['spread']:.0%})" for k, v in row.items())
        )
    del model
    gc.collect()
    batches = (8,) if args.quick else (8, 16)
    out["trunk_fp32"] = trunk_throughput(graphs.config, graphs.fp32, args.threads, batches, repeats, WORK)
    log(
        "  fp32 trunk: "
        + ", ".join(f"b{b} {v['gflops']:.1f} GFLOP/s" for b, v in out["trunk_fp32"]["batches"].items())
    )
    out["threading"] = threading_table(
        graphs.config, graphs.fp32["trunk"], args.threads, 1, 8 if args.quick else 20
    )
    log(f"  threading: {out['threading']}")
    return out


def section_accuracy(args) -> dict:
    from bench.accuracy import metric_table
    from bench.artifacts import bench_graphs
    from export.quantize import QuantizeOptions

    graphs = bench_graphs("demo-trained", args.checkpoint, log=log)
    shipped = QuantizeOptions()
    variants = {
        "onnxruntime_fp32": graphs.fp32,
        "int8": graphs.int8(shipped),
        "int8_every_matmul": graphs.int8(QuantizeOptions.everything()),
    }
    n, captions = (64, 3) if args.quick else (1000, 12)
    log(f"int8 accuracy (demo model, up to {n} examples per task, {captions} retrieval captions) ...")
    out = metric_table(
        graphs.checkpoint,
        variants,
        args.data,
        max_examples=n,
        retrieval_captions=captions,
        threads=args.threads,
        retrieval_variants=("int8", "int8_served"),
        served_variants=("int8",),
        log=log,
    )
    # A second sample of the same question: the validation splits (the int8 choice was not made on them
    # either; with 100-200 examples a task moves 0.5-1 point per flipped answer, so one sample says little).
    log("int8 accuracy on the validation splits (a second sample) ...")
    out["val"] = metric_table(
        graphs.checkpoint,
        {"int8": variants["int8"]},
        args.data,
        max_examples=n,
        retrieval_captions=0,
        threads=args.threads,
        served_variants=("int8",),
        split="val",
        log=log,
    )
    out["int8_choice"] = shipped.label()
    return out


STUDY = {
    # label -> QuantizeOptions kwargs (heads fp32 unless said)
    "every matmul (heads too)": {"exclude": (), "quantize_heads": True},
    "heads fp32": {"exclude": ()},
    "heads + embeddings fp32": {"exclude": ("embeddings",)},
    "heads + embeddings + poolers fp32": {"exclude": ("embeddings", "poolers")},
    "... + per-channel weights": {"exclude": ("embeddings", "poolers"), "per_channel": True},
    "... + reduce_range": {"exclude": ("embeddings", "poolers"), "reduce_range": True},
    "... + FFN down projections fp32 (shipped)": {"exclude": ("embeddings", "poolers", "ffn_down")},
    "... + FFN down fp32 + per-channel": {
        "exclude": ("embeddings", "poolers", "ffn_down"),
        "per_channel": True,
    },
    "... + FFN down + attention outputs fp32 + per-channel": {
        "exclude": ("embeddings", "poolers", "ffn_down", "attention_out"),
        "per_channel": True,
    },
    "... + attention outputs fp32": {"exclude": ("embeddings", "poolers", "attention_out")},
    "... + first layers fp32": {"exclude": ("embeddings", "poolers", "first_layers")},
}


def section_int8_study(args) -> dict:
    """Each exclusion set: `--preset` trunk speed at batch 8 (all variants and fp32 timed round-robin)
    and the demo model's metric deltas (PyTorch computed once, every variant on the same examples)."""
    from bench.accuracy import metric_table
    from bench.artifacts import bench_graphs
    from bench.model_speed import ort_session, trunk_feeds
    from bench.timing import interleaved
    from export.quantize import QuantizeOptions
    from vilbert.contract import FUSED

    options = {label: QuantizeOptions(**kwargs) for label, kwargs in STUDY.items()}
    demo = bench_graphs("demo-trained", args.checkpoint, log=log)
    n, captions = (64, 0) if args.quick else (300, 0)  # retrieval: too slow per variant (see accuracy)
    log(f"int8 study: accuracy of {len(options)} variants ({n} examples per task, {captions} captions) ...")
    acc = metric_table(
        demo.checkpoint,
        {label: demo.int8(o) for label, o in options.items()},
        args.data,
        max_examples=n,
        retrieval_captions=captions,
        threads=args.threads,
        log=log,
    )
    speed_graphs = bench_graphs(args.preset, log=log)
    log(f"int8 study: {args.preset} trunk speed at batch 8 ...")
    feeds = trunk_feeds(speed_graphs.config, 8)
    sessions = {"fp32": ort_session(speed_graphs.fp32["trunk"], args.threads)}
    for label, o in options.items():
        sessions[label] = ort_session(speed_graphs.int8(o)["trunk"], args.threads)
    times = interleaved(
        {k: (lambda s=s: s.run([FUSED], feeds)) for k, s in sessions.items()}, repeats=2 if args.quick else 3
    )
    del sessions
    gc.collect()
    rows = []
    for label, o in options.items():
        deltas = {t["task"]: t[label] - t["pytorch"] for t in acc["tasks"]}
        rows.append(
            {
                "variant": label,
                "options": json.loads(o.to_json()),
                "speedup_vs_fp32_b8": times["fp32"].median / times[label].median,
                "max_abs_delta": max(abs(d) for d in deltas.values()),
                "mean_abs_delta": sum(abs(d) for d in deltas.values()) / len(deltas),
                "deltas": deltas,
            }
        )
        log(f"  {label}: {rows[-1]['speedup_vs_fp32_b8']:.2f}x, max |delta| {rows[-1]['max_abs_delta']:.2f}")
    return {
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python -m bench --only accuracy --int8-study",
        "preset": args.preset,
        "max_examples": n,
        "retrieval_captions": captions,
        "examples": {t["task"]: t["examples"] for t in acc["tasks"]},
        "rows": rows,
    }


def section_retrieval(args) -> dict:
    """bench/retrieval.py (issue #9's two-stage retrieval benchmark, another module's numbers).

    Its full mode ranks 60 captions exhaustively over 1,000 images, tens of minutes on 2 cores, so this
    run asks for its quick mode unless `--retrieval-full`."""
    if importlib.util.find_spec("bench.retrieval") is None:
        return {"missing": "bench/retrieval.py is not there yet (issue #9's two-stage retrieval benchmark)"}
    from bench import retrieval

    quick = args.quick or not args.retrieval_full
    log(f"retrieval: bench.retrieval.run(quick={quick}) ...")
    try:
        return {"quick": quick, "result": retrieval.run(quick=quick, threads=args.threads, log=log)}
    except Exception as exc:  # its failure is reported, not allowed to lose the other sections
        return {"quick": quick, "error": f"{type(exc).__name__}: {exc}"}


def _retrieval_markdown(section: dict | None) -> str:
    if not section or "result" not in section:
        return ""
    from bench import retrieval

    try:
        return retrieval.to_markdown(section["result"])
    except Exception as exc:
        return f"(bench/retrieval.py could not render its result: {exc})\n"


def section_gpu(args) -> dict:
    """bench/gpu.py: the `--preset` trunk on CUDA, eager fp32/fp16 vs onnxruntime CUDA fp16 vs TensorRT fp16
    at batch 1 and 8; `{"n/a": "n/a: no CUDA device (...)"}` without one."""
    from bench import gpu

    reason = gpu.unavailable()
    if reason is not None:
        log(f"gpu: {reason}")
        return {"n/a": reason}
    log(f"gpu: {args.preset} trunk, eager PyTorch vs onnxruntime CUDA fp16 vs TensorRT fp16 ...")
    return gpu.run(args.preset, quick=args.quick, work=WORK / "gpu", log=log)


if __name__ == "__main__":
    sys.exit(main())
