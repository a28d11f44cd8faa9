"""How fast each task loader produces examples: `python -m training.datasets.throughput --data D`.

For every task's training split: the time to build the dataset (read annotations, tokenise),
then examples/s for `__getitem__` + `collate` over a random sample, first cold (LMDB reads and
region processing) and then warm (the per-process region cache hit), in one process, no workers.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.datasets import build_dataset, collate, split_names
from vilbert.tasks import TASKS, get_task
from vilbert.tokenizer import load_tokenizer


@dataclass
class Throughput:
    task: str
    split: str
    size: int
    build_s: float
    cold_per_s: float
    warm_per_s: float


def measure(
    data_root: str | Path,
    tasks: Sequence[str] | None = None,
    examples: int = 256,
    batch_size: int = 32,
    seed: int = 0,
) -> list[Throughput]:
    tokenizer = load_tokenizer()
    rng = np.random.default_rng(seed)
    out = []
    for task in [get_task(t) for t in tasks] if tasks else TASKS:
        split = split_names(task)["train"]
        t0 = time.perf_counter()
        ds = build_dataset(task, data_root, split, tokenizer=tokenizer)
        build = time.perf_counter() - t0
        order = rng.integers(len(ds), size=examples)
        rates = []
        for _ in range(2):  # cold, then warm
            t0 = time.perf_counter()
            for start in range(0, examples, batch_size):
                collate([ds[int(i)] for i in order[start : start + batch_size]])
            rates.append(examples / (time.perf_counter() - t0))
        out.append(Throughput(task.slug, split, len(ds), build, rates[0], rates[1]))
    return out


def format_throughput(rows: Sequence[Throughput]) -> str:
    lines = ["| task | split | examples | build s | cold ex/s | warm ex/s |", "|---|---|---|---|---|---|"]
    lines += [
        f"| {r.task} | {r.split} | {r.size} | {r.build_s:.2f} | {r.cold_per_s:.0f} | {r.warm_per_s:.0f} |"
        for r in rows
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--task", action="append", help="task slug (repeatable); default: all twelve")
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    print(format_throughput(measure(args.data, args.task, args.examples, args.batch_size)))


if __name__ == "__main__":
    main()
