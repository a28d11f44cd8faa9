"""Per-task routing on CPU: an ensemble per task vs the client calling trunk and head in turn.

`python -m tests.export.measure_routing --repository DIR [--tasks vqa refcoco] [--iterations 40]`

Copies the repository, adds `task_<slug>` ensembles (export.triton_config.render_ensemble), starts
the bundled Triton on it and times both routes over gRPC, interleaved, batch 1 at each task's table
shape.  Prints a Markdown table (median / p90 ms) — the numbers model_repository/README.md quotes.
A measurement, not a test: it asserts nothing and is not collected by pytest.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from export.parity import task_inputs
from export.runtime import OnnxGraphs
from export.triton_config import Deployment, ensemble_name, render_ensemble
from export.triton_server import TritonServer, repository_models
from tests.export.triton_calls import request, task_logits
from vilbert.contract import LOGITS
from vilbert.tasks import get_task


def main(argv: list[str] | None = None) -> int:
    import torch
    import tritonclient.grpc as grpc_module

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--tasks", nargs="+", default=["vqa", "refcoco"])
    parser.add_argument("--iterations", type=int, default=40)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    graphs = OnnxGraphs.from_repository(args.repository)
    spec = graphs.spec
    tasks = [get_task(t) for t in args.tasks]
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repository"
        shutil.copytree(args.repository, repo)
        for task in tasks:
            route = spec.route_for(task)
            folder = repo / ensemble_name(route)
            (folder / "1").mkdir(parents=True)
            (folder / "config.pbtxt").write_text(render_ensemble(route, spec, Deployment()))
        rows = []
        ensembles = [ensemble_name(spec.route_for(task)) for task in tasks]
        with TritonServer(repo, startup_timeout=300, models=[*repository_models(repo), *ensembles]) as server:
            client = grpc_module.InferenceServerClient(server.grpc_url)
            for task in tasks:
                feeds = task_inputs(spec, task, np.random.default_rng(0), batch=1)
                feeds["task_ids"] = np.full(len(feeds["input_ids"]), task.task_id, dtype=np.int64)
                inputs, _ = request(grpc_module, spec.trunk, feeds)
                head = spec.graph(spec.route_for(task).head_model)
                outputs = [grpc_module.InferRequestedOutput(LOGITS)]

                def sequential(task=task, feeds=feeds):
                    return task_logits(client, grpc_module, spec, task, feeds)

                def ensemble(task=task, inputs=inputs, outputs=outputs):
                    return client.infer(
                        ensemble_name(spec.route_for(task)), inputs, outputs=outputs
                    ).as_numpy(LOGITS)

                a, b = sequential(), ensemble()  # warm both paths, and check they agree
                b = b[:, 0] if b.ndim == 2 and a.ndim == 1 else b
                assert np.abs(a - b).max() <= 1e-4, task.slug
                times: dict[str, list[float]] = {"sequential": [], "ensemble": []}
                for _ in range(args.iterations):
                    for name, call in (("sequential", sequential), ("ensemble", ensemble)):
                        t0 = time.perf_counter()
                        call()
                        times[name].append(1000 * (time.perf_counter() - t0))
                rows.append((task.slug, head.name, times))
    print(
        f"| task | head | sequential median / p90 ms | ensemble median / p90 ms "
        f"| ({args.iterations} calls each)"
    )
    print("|---|---|---:|---:|")
    for slug, head, times in rows:
        cells = []
        for name in ("sequential", "ensemble"):
            values = sorted(times[name])
            cells.append(f"{statistics.median(values):.2f} / {values[int(0.9 * (len(values) - 1))]:.2f}")
        print(f"| {slug} | {head} | {cells[0]} | {cells[1]} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
