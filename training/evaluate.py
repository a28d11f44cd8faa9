"""`python -m training.evaluate --checkpoint DIR [--tasks ...] [--split val|test] [--data ROOT]`

Every selected task's metric on a split, printed as a table and written as JSON
(`DIR/eval_<split>.json`, or `--out`).  The data root defaults to the one the checkpoint was
trained on.  Retrieval tasks of a checkpoint with the pre-filter also get R@1/5/10 of the
pre-filter alone and of two-stage search (pre-filter top K re-ranked by the trunk) for each
`--rerank-k` K, beside the exhaustive ones.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from training.datasets import LoaderConfig, build_dataset, split_names
from training.evaluation import evaluate_task
from vilbert.checkpoint import load_checkpoint
from vilbert.cli import ArgumentParser, run
from vilbert.tasks import TASKS, get_task
from vilbert.tokenizer import load_tokenizer


def evaluate_checkpoint(
    checkpoint: str | Path,
    tasks: list[str] | None = None,
    split: str = "test",
    data_root: str | Path | None = None,
    batch_size: int = 64,
    max_examples: int | None = None,
    progress: bool = True,
    rerank_ks: tuple[int, ...] = (10, 20, 50, 100),
) -> dict[str, dict]:
    ck = load_checkpoint(checkpoint)
    fit_cfg = ck.meta.get("fit_config", {})
    root = Path(data_root or fit_cfg.get("data", {}).get("root", ""))
    if not root.is_dir():
        raise FileNotFoundError(f"data root not found: {root} (pass --data)")
    selected = [get_task(t) for t in (tasks or fit_cfg.get("tasks") or [t.slug for t in TASKS])]
    loader_cfg = LoaderConfig.for_data_root(root)
    tokenizer = load_tokenizer()
    results = {}
    for task in selected:
        ds = build_dataset(task, root, split_names(task)[split], config=loader_cfg, tokenizer=tokenizer)
        results[task.slug] = {
            "metric": task.metric,
            "split": split_names(task)[split],
            **evaluate_task(ck.model, task, ds, batch_size, max_examples, progress, rerank_ks=rerank_ks),
        }
    return results


def format_table(results: dict[str, dict]) -> str:
    lines = ["| task | split | metric | score | examples |", "|---|---|---|---:|---:|"]
    for slug, r in results.items():
        extra = "" if "R@5" not in r else f" (R@5 {r['R@5']:.1f}, R@10 {r['R@10']:.1f})"
        lines.append(
            f"| {slug} | {r['split']} | {r['metric']} | {r['score']:.2f}{extra} | {int(r['examples'])} |"
        )
    return "\n".join(lines)


def two_stage_table(results: dict[str, dict]) -> str:
    """Exhaustive vs pre-filter vs two-stage recall of the retrieval tasks (empty without a pre-filter)."""
    lines = []
    for slug, r in results.items():
        if "prefilter_R@1" not in r:
            continue
        ks = sorted({int(k.split("_")[2][1:]) for k in r if k.startswith("two_stage_k")})
        rows = [("exhaustive", "", "R@"), ("pre-filter only", "", "prefilter_R@")]
        rows += [("two-stage", str(k), f"two_stage_k{k}_R@") for k in ks]
        if not lines:
            lines = ["| task | search | K | R@1 | R@5 | R@10 |", "|---|---|---:|---:|---:|---:|"]
        for name, k, prefix in rows:
            values = " | ".join(f"{r[f'{prefix}{n}']:.1f}" for n in (1, 5, 10))
            lines.append(f"| {slug} | {name} | {k} | {values} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m training.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--tasks", nargs="*", help="task slugs (default: the tasks it was trained on)")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--data", type=Path, help="data root (default: the training data root)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-examples", type=int)
    parser.add_argument("--out", type=Path, help="JSON output (default: CHECKPOINT/eval_<split>.json)")
    parser.add_argument(
        "--rerank-k",
        type=int,
        nargs="+",
        default=[10, 20, 50, 100],
        help="two-stage retrieval: pre-filter candidates re-ranked by the trunk (needs a pre-filter)",
    )
    args = parser.parse_args(argv)
    try:
        results = evaluate_checkpoint(
            args.checkpoint,
            args.tasks,
            args.split,
            args.data,
            args.batch_size,
            args.max_examples,
            rerank_ks=tuple(args.rerank_k),
        )
    except (FileNotFoundError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(results))
    two_stage = two_stage_table(results)
    if two_stage:
        print("\n" + two_stage)
    out = args.out or args.checkpoint / f"eval_{args.split}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    run(main)
