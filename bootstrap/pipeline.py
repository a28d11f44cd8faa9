"""`python -m bootstrap`: what `make serve` runs.  Build the demo model if missing, then serve.

Steps (each skipped when its output exists, so a second start goes straight to serving; where each
output goes: `bootstrap.layout`, which is also where `python -m server` looks by default):

0. web page examples          python -m training.synthetic.examples --out artifacts/examples
1. synthetic world            python -m training.synthetic --out data/synthetic --size demo
2. detector                   python -m regions.train --data data/synthetic --out artifacts/detector
3. region features            python -m regions.extract --weights <detector> --jobs data/synthetic
4. retrieval negative pools   python -m training.datasets.retrieval --data-root data/synthetic
5. all-task demo training     python -m training.fit --config training/configs/demo.yaml [--resume]
6. export                     python -m export --checkpoint runs/demo/model --out model_repository
7. serve                      Triton on the repository (``--backend triton``, the default) + the gateway,
                              or the gateway alone with onnxruntime in-process (``--backend local``).

Every step streams its own progress; a failed step stops here with its exit status and the command
to rerun by hand.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bootstrap.layout import ROOT, Paths, show
from vilbert.cli import ArgumentParser
from vilbert.threads import build_step_env

STAMPS = ROOT / "artifacts" / ".serve"
# Detector training length, in iterations (the same detector on a busy or a quiet machine): 792
# iterations (4 minutes on a quiet 2-core machine) gave recall@IoU0.5 0.999, shape (class) accuracy
# 0.888, colour 1.000, size 0.926 on the demo world's validation images; regions.train's quality gate
# (recall 0.95, shape/colour/size 0.85) fails this step when a detector misses it.
DETECTOR_ITERATIONS = 800


@dataclass(frozen=True)
class Step:
    title: str
    command: list[str]
    done: Path  # exists when the step's output is complete
    stamp: bool = False  # the step has no single output file: write `done` after success
    stale: Callable[[], str | None] | None = None  # why an existing output must be rebuilt, if it must
    always: bool = False  # run even when `done` exists (the command skips its own current work)


def steps(p: Paths) -> list[Step]:
    py = sys.executable
    examples = [py, "-m", "training.synthetic.examples", "--out", str(p.examples)]
    world = [py, "-m", "training.synthetic", "--out", str(p.world), "--size", "demo"]
    detector = [
        py,
        "-m",
        "regions.train",
        "--data",
        str(p.world),
        "--out",
        str(p.detector.parent),
        "--iterations",
        str(DETECTOR_ITERATIONS),
    ]
    features = [py, "-m", "regions.extract", "--weights", str(p.detector), "--jobs", str(p.world)]
    pools = [py, "-m", "training.datasets.retrieval", "--data-root", str(p.world)]
    fit = [py, "-m", "training.fit", "--config", "training/configs/demo.yaml"]
    if (p.checkpoint.parent / "checkpoints").is_dir():
        fit.append("--resume")  # an interrupted training run continues instead of starting over
    export = [py, "-m", "export", "--checkpoint", str(p.checkpoint), "--out", str(p.repository)]
    export += ["--detector", str(p.detector), "--no-int8-report"]  # serving needs fp32 only
    # Retrieval's metric gate ranks every caption against the whole test gallery in PyTorch and in
    # onnxruntime: 16 captions instead of 64 saves ~110 s of a cold start; the max|diff| checks are unchanged.
    export += ["--max-captions", "16"]
    return [
        Step("example images for the web page", examples, p.examples / "examples.json"),
        Step("synthetic world (all 12 datasets)", world, p.world / "summary.md"),
        Step(f"detector ({DETECTOR_ITERATIONS} iterations, about 4 minutes)", detector, p.detector),
        Step("region features of the synthetic world", features, STAMPS / "features.done", stamp=True),
        Step(
            "hard-negative pools of the retrieval tasks (from the region features)",
            pools,
            p.world / "datasets" / "cocoRetreival" / "hard_negative_cleaned.pkl",
        ),
        Step("all-task demo training (about 8 minutes)", fit, p.checkpoint / "model.safetensors"),
        Step(
            "export (ONNX graphs + Triton repository)",
            export,
            p.repository / "active.json",
            stale=lambda: _stale_export(p),
        ),
    ]


def _stale_export(p: Paths) -> str | None:
    from export.repository import stale_reason

    return stale_reason(p.repository, p.checkpoint)


def build(p: Paths, plan: list[Step] | None = None) -> None:
    plan = steps(p) if plan is None else plan
    for i, step in enumerate(plan, 1):
        head = f"[{i}/{len(plan) + 1}] {step.title}"
        if step.done.exists() and not step.always:
            reason = step.stale() if step.stale is not None else None
            if reason is None:
                print(f"{head}: ready ({show(step.done)})", flush=True)
                continue
            print(f"{head}: out of date ({reason}); rebuilding", flush=True)
        print(f"{head}: running\n    $ {' '.join(step.command)}", flush=True)
        start = time.monotonic()
        # Build steps run one at a time: a short OpenMP spin, not the passive default (vilbert/threads.py).
        code = subprocess.call(step.command, cwd=ROOT, env=build_step_env())
        if code != 0:
            print(f"{head}: failed with exit status {code}; rerun the command above to see why", flush=True)
            raise SystemExit(code)
        if step.stamp:
            step.done.parent.mkdir(parents=True, exist_ok=True)
            step.done.write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))
        seconds = time.monotonic() - start
        print(f"{head}: done in {seconds:.0f} s", flush=True)
        _record_timing(step.title, seconds, p.examples.parent / ".serve" / "timings.json")


def _record_timing(title: str, seconds: float, path: Path = STAMPS / "timings.json") -> None:
    """Append the step's wall time to artifacts/.serve/timings.json (what the README's numbers cite)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = json.loads(path.read_text()) if path.is_file() else []
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ")
    rows.append({"step": title, "seconds": round(seconds, 1), "finished": stamp})
    path.write_text(json.dumps(rows, indent=2))


def concurrency_flags(backend: str, environ: Mapping[str, str] = os.environ) -> list[str]:
    """How many requests run model code at once, and with how many threads each, for the demo model.

    Measured on this 2-core machine (4 clients, closed loop, /vqa with cached images): the local
    gateway answered 158 answers/s with 1 thread x 2 workers against 107 with the 1 x 1 defaults and
    116 with 2 threads x 1 worker, at the same single-request latency (11.6 ms); the Triton gateway
    115 answers/s with 4 workers against 76 with 1 (Triton's model instances do the computing, and
    only concurrent calls let its dynamic batcher combine them).  TWELVE_WORKERS / TWELVE_THREADS
    in the environment win."""
    workers = 4 if backend == "triton" else max(1, os.cpu_count() or 1)
    flags = [] if "TWELVE_WORKERS" in environ else ["--workers", str(workers)]
    if backend != "triton" and "TWELVE_THREADS" not in environ:
        flags += ["--threads", "1"]
    return flags


def serve(p: Paths, backend: str, host: str, port: int, n: int | None = None) -> None:
    from server.__main__ import main as gateway

    args = ["--host", host, "--port", str(port), "--checkpoint", str(p.checkpoint)]
    args += ["--detector-weights", str(p.detector), "--cache-dir", str(p.cache)]
    args += ["--data-dir", str(p.galleries)]
    args += ["--model-repository", str(p.repository), "--examples-dir", str(p.examples)]
    args += concurrency_flags(backend)
    n = n or len(steps(p)) + 1
    print(f"[{n}/{n}] serving with the {backend} backend", flush=True)

    # uvicorn drains on SIGTERM/SIGINT and then re-raises the signal with the handler it found;
    # the default one would kill this process before the ExitStack stops Triton, leaving it orphaned.
    def exit_cleanly(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, exit_cleanly)
    with contextlib.ExitStack() as stack:
        if backend == "triton":
            from export.triton_server import TritonServer

            triton = stack.enter_context(TritonServer(p.repository, startup_timeout=300))
            print(f"    Triton ready at http://{triton.http_url} ({len(triton.models)} models)", flush=True)
            args += ["--backend", "triton", "--triton-url", triton.http_url]
        else:
            args += ["--backend", "local"]
        gateway(args)


def main(argv: Sequence[str] | None = None) -> None:
    ap = ArgumentParser(prog="python -m bootstrap", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--backend", choices=["triton", "local"], default=os.environ.get("TWELVE_BACKEND", "triton")
    )
    ap.add_argument("--host", default=os.environ.get("TWELVE_HOST", "127.0.0.1"))
    ap.add_argument("--port", type=int, default=os.environ.get("TWELVE_PORT", "8000"))  # parsed by type
    ap.add_argument("--build-only", action="store_true", help="build the model, do not serve")
    ap.add_argument(
        "--official",
        type=Path,
        default=os.environ.get("OFFICIAL") or None,
        help="serve the 12-in-1 release files in this directory instead of the demo model "
        "(multi_task_model.bin, detectron_model.pth, the answer pickles; see docs/official-model.md)",
    )
    ap.add_argument(
        "--precision", choices=["fp32", "int8"], default="fp32", help="--official: export precision"
    )
    ap.add_argument(
        "--data", type=Path, help="--official: datasets (official formats) for the export's metric gate"
    )
    ap.add_argument(
        "--outputs",
        type=Path,
        default=ROOT,
        help="--official: where runs/official, artifacts/ and model_repository/ go (default: the checkout)",
    )
    args = ap.parse_args(argv)
    start = time.monotonic()
    if args.official is None:
        paths = Paths()
        build(paths)
        print(f"demo model ready after {time.monotonic() - start:.0f} s", flush=True)
        plan_size = len(steps(paths)) + 1
    else:
        from bootstrap.official import OfficialBuild, check_release, official_steps

        official = OfficialBuild(args.official.resolve(), args.precision, args.data, args.outputs.resolve())
        paths = official.paths(check_release(official.release))
        plan = official_steps(official, paths)
        build(paths, plan)
        print(f"official model ready after {time.monotonic() - start:.0f} s", flush=True)
        plan_size = len(plan) + 1
    if not args.build_only:
        serve(paths, args.backend, args.host, args.port, plan_size)
