"""CLI of the synthetic world generator (see the package docstring)."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from training.clean_split import Shrink, format_shrink
from training.clean_split import run as run_clean_split
from training.synthetic.summary import TaskSummary, format_summary, summarise, write_summary
from training.synthetic.world import WORLD_SIZES, WorldWriter
from vilbert.cli import ArgumentParser, run


def build(
    out: str | Path,
    size: str = "small",
    seed: int = 0,
    progress: bool = True,
    placeholder_dim: int | None = None,
) -> tuple[list[TaskSummary], list[Shrink]]:
    out = Path(out)
    if size not in WORLD_SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {sorted(WORLD_SIZES)}")
    if (out / "datasets").exists():
        # A stale tree (old caches, old LMDB records) would silently mix with the new world.
        shutil.rmtree(out / "datasets")
    started = time.perf_counter()
    writer = WorldWriter(out, WORLD_SIZES[size], seed=seed, progress=progress)
    writer.write()
    if placeholder_dim is not None:
        from training.synthetic.placeholder_features import write_placeholder_features

        write_placeholder_features(out, placeholder_dim, seed=seed, progress=progress)
    ids, shrink = run_clean_split(out, rebuild_pools=placeholder_dim is not None)
    with tqdm(total=12, desc="summary", unit="task", disable=not progress, leave=False) as bar:
        rows = summarise(out, progress=lambda _: bar.update(1))
    elapsed = time.perf_counter() - started
    preface = (
        f"# Synthetic 12-task world (size {size}, seed {seed})\n\n"
        f"{len(writer.scenes)} scenes, generated in {elapsed:.1f} s. Baselines are on each task's "
        "validation split and use no image.\n\n"
    )
    clean = (
        "\n\n## Clean split\n\n" + ", ".join(f"{k}: {len(v)} test images" for k, v in ids.items()) + "\n\n"
    )
    write_summary(
        out,
        rows,
        extra={"size": size, "seed": seed, "seconds": elapsed, "clean_split": [vars(r) for r in shrink]},
        preface=preface + "## Tasks\n\n",
    )
    with (out / "summary.md").open("a") as f:
        f.write(clean + format_shrink(shrink) + "\n")
    return rows, shrink


def main(argv: Sequence[str] | None = None) -> None:
    parser = ArgumentParser(
        prog="python -m training.synthetic",
        description="Write the synthetic 12-task world in the official formats.",
    )
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--size", default="small", choices=sorted(WORLD_SIZES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--placeholder-features",
        type=int,
        default=None,
        metavar="DIM",
        help="also write placeholder region-feature LMDBs of this dimension",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    started = time.perf_counter()
    rows, shrink = build(args.out, args.size, args.seed, placeholder_dim=args.placeholder_features)
    print(format_summary(rows))
    print()
    print("clean split:")
    print(format_shrink(shrink))
    print(f"\nwrote {args.out} in {time.perf_counter() - started:.1f} s (summary.md, summary.json)")


if __name__ == "__main__":
    run(main)
