"""Task metrics of exported graphs next to PyTorch's, on the synthetic test splits (demo model).

Computed by exactly the code the export gate uses (`export.parity.metric_dataset` / `task_metric` /
`OnnxModel`), for PyTorch and for each set of graphs given, on the same examples.  Resolution: with
N examples one flipped answer moves an accuracy by 100/N points, so the full run uses every example
of each test split (123-750); retrieval ranks each caption against the whole test gallery, so its
captions are capped separately (`retrieval_captions`), and only `retrieval_variants` are evaluated on
it: one caption costs a trunk call per gallery image (150 at the synthetic test split).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from vilbert.tasks import TASKS, Head


def metric_table(
    checkpoint: Path,
    variants: Mapping[str, Mapping[str, Path]],
    data_root: Path,
    *,
    max_examples: int,
    retrieval_captions: int,
    threads: int,
    retrieval_variants: tuple[str, ...] | None = None,
    served_variants: tuple[str, ...] = (),
    split: str | None = None,
    log=print,
) -> dict:
    """{"tasks": [{task, metric, split, examples, pytorch, <variant>: score, ...}], "max_abs_delta": ...}.

    Each variant is evaluated in batches of 32 padded to the task maximum (as the export gate runs);
    those named in `served_variants` also as the gateway calls them (`<variant>_served`: one example
    per call, padded only as far as it needs, `export.parity.ServedShapesModel`)."""
    import torch

    from export.parity import OnnxModel, ServedShapesModel, metric_dataset, task_metric
    from export.runtime import OnnxGraphs
    from vilbert.checkpoint import load_checkpoint
    from vilbert.contract import build_spec

    torch.set_num_threads(threads)
    model = load_checkpoint(checkpoint).model.eval()
    spec = build_spec(model.config)
    graphs = {label: OnnxModel(OnnxGraphs(spec, files, threads)) for label, files in variants.items()}
    for label in served_variants:
        graphs[f"{label}_served"] = ServedShapesModel(graphs[label].graphs)
    rows = []
    started = time.perf_counter()
    for task in TASKS:
        n = retrieval_captions if task.head is Head.MATCH else max_examples
        if n == 0:
            continue
        data = metric_dataset(task, data_root, n, model.config, split)
        t0 = time.perf_counter()
        ref = task_metric(model, task, data, n)
        row = {
            "task": task.slug,
            "metric": task.metric,
            "split": data.split,
            "examples": int(ref["examples"]),
            "pytorch": ref["score"],
        }
        for label, onnx_model in graphs.items():
            skip = (
                task.head is Head.MATCH and retrieval_variants is not None and label not in retrieval_variants
            )
            batch = onnx_model.batch_size
            row[label] = None if skip else task_metric(onnx_model, task, data, n, batch_size=batch)["score"]
        rows.append(row)
        log(
            f"  {task.slug:<20} {row['examples']:>4} ex  pytorch {row['pytorch']:6.2f}  "
            + "  ".join(f"{k} {row[k]:6.2f}" for k in graphs if row[k] is not None)
            + f"  ({time.perf_counter() - t0:.0f} s)"
        )
    deltas = {
        label: max(abs(r[label] - r["pytorch"]) for r in rows if r[label] is not None) for label in graphs
    }
    return {
        "checkpoint": str(checkpoint),
        "data_root": str(data_root),
        "max_examples": max_examples,
        "retrieval_captions": retrieval_captions,
        "variants": list(graphs),
        "tasks": rows,
        "max_abs_delta": deltas,
        "seconds": round(time.perf_counter() - started, 1),
    }
