"""`python -m training.evaluate --checkpoint DIR [--tasks ...] [--split val|test] [--predictions OUT]`

Every selected task's metric on a split, printed as a table and written as JSON
(`DIR/eval_<split>.json`, or `--out`).  The data root (`--data ROOT`) defaults to the one the
checkpoint was trained on.  Answer-vocabulary tasks (VQA, VG QA, GQA) report the exact accuracy
beside the soft score (`training.metrics.vqa_exact_accuracy`).

Each task's row has a `status`: `scored`; `no labels` (a split whose questions come without
answers, e.g. VQA test2015) or `no examples` (an empty split), which have no score; or `skipped`
with the `reason` (a split the dataset does not have, e.g. VG QA's test, or a file of it missing),
while the other tasks are still evaluated.  The exit status is 0 when at least one task was
evaluated (scored, or run on a split without labels), 2 when every task was skipped.

`--predictions OUT` also writes the evaluation servers' result files for the split, labelled or
not, with the datasets' own question ids: VQA v2 `OUT/vqa_<split>_results.json`
(`[{"question_id": int, "answer": str}]`) and GQA `OUT/gqa_<split>_predictions.json`
(`[{"questionId": str, "prediction": str}]`).

Retrieval tasks of a checkpoint with the pre-filter also get R@1/5/10 of the pre-filter alone and
of two-stage search (pre-filter top K re-ranked by the trunk) for each `--rerank-k` K, beside the
exhaustive ones.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from training.datasets import LoaderConfig, build_dataset, split_names
from training.evaluation import evaluate_task, skip_reason, split_status
from vilbert.checkpoint import Checkpoint, load_checkpoint
from vilbert.cli import ArgumentParser, fail, run
from vilbert.config import answer_widths
from vilbert.io import atomic_write_text, make_dirs
from vilbert.tasks import TASKS, Task, get_task
from vilbert.tokenizer import WordPieceTokenizer, load_tokenizer

SCORED, SKIPPED = "scored", "skipped"


@dataclass(frozen=True)
class ServerFormat:
    """One evaluation server's result file: its name and each entry's id key, id type and answer key."""

    filename: str  # `{split}` is the --split value
    id_key: str
    id_type: Callable[[str], int | str]
    answer_key: str


SERVER_FORMATS: dict[str, ServerFormat] = {
    "vqa": ServerFormat("vqa_{split}_results.json", "question_id", int, "answer"),  # VQA v2 (EvalAI)
    "gqa": ServerFormat("gqa_{split}_predictions.json", "questionId", str, "prediction"),  # GQA
}


def server_results(fmt: ServerFormat, predictions: list[tuple[str, int]], answers: list[str]) -> list[dict]:
    """Result entries from (question id, answer index) pairs; an index past the vocabulary is
    written `answer_<i>`, as the server names answers of a checkpoint without its answer list."""
    return [
        {fmt.id_key: fmt.id_type(qid), fmt.answer_key: answers[i] if i < len(answers) else f"answer_{i}"}
        for qid, i in predictions
    ]


@dataclass
class _Run:
    """What every task's evaluation shares."""

    ck: Checkpoint
    root: Path
    loader_cfg: LoaderConfig
    tokenizer: WordPieceTokenizer
    split: str
    batch_size: int
    max_examples: int | None
    progress: bool
    rerank_ks: tuple[int, ...]
    predictions_dir: Path | None


def evaluate_checkpoint(
    checkpoint: str | Path,
    tasks: list[str] | None = None,
    split: str = "test",
    data_root: str | Path | None = None,
    batch_size: int = 64,
    max_examples: int | None = None,
    progress: bool = True,
    rerank_ks: tuple[int, ...] = (10, 20, 50, 100),
    predictions_dir: str | Path | None = None,
) -> dict[str, dict]:
    """One row per task (see the module docstring for its `status`); raises only when nothing can
    run at all (checkpoint or data root missing, unknown task)."""
    ck = load_checkpoint(checkpoint)
    fit_cfg = ck.meta.get("fit_config", {})
    root = Path(data_root or fit_cfg.get("data", {}).get("root", ""))
    if not root.is_dir():
        raise FileNotFoundError(f"data root not found: {root} (pass --data)")
    selected = [get_task(t) for t in (tasks or fit_cfg.get("tasks") or [t.slug for t in TASKS])]
    ctx = _Run(
        ck,
        root,
        LoaderConfig.for_data_root(root),
        load_tokenizer(),
        split,
        batch_size,
        max_examples,
        progress,
        rerank_ks,
        None if predictions_dir is None else Path(predictions_dir),
    )
    return {task.slug: _evaluate_one(ctx, task) for task in selected}


def vocabulary_mismatch(ck: Checkpoint, task: Task, ds: object) -> str | None:
    """Why the model's answers cannot be scored against this dataset's labels (another answer list, or
    another width), or None.  A model's answer index i means its own list's i-th answer."""
    data = list(getattr(ds, "label2ans", None) or [])
    if not task.answer_vocab or not data:
        return None
    ours = ck.answers.get(task.answer_vocab)
    width = answer_widths(ck.model.config).get(task.answer_vocab)
    if (ours is not None and list(ours) != data) or (ours is None and width != len(data)):
        have = len(ours) if ours is not None else width
        return (
            f"{task.slug}: the model answers from its own {task.answer_vocab} list ({have} answers), "
            f"not this data's ({len(data)}): evaluate a model trained on this data, or prepare the data "
            "with the model's list (training.prepare --answers-from-checkpoint)"
        )
    return None


def _evaluate_one(ctx: _Run, task: Task) -> dict:
    name = split_names(task)[ctx.split]
    row: dict = {"metric": task.metric, "split": name}
    if not name:
        hint = " (evaluate it with --split val)" if ctx.split != "val" else ""
        return row | {"status": SKIPPED, "reason": f"{task.slug} has no {ctx.split} split{hint}"}
    fmt = SERVER_FORMATS.get(task.slug) if ctx.predictions_dir is not None else None
    predictions: list[tuple[str, int]] | None = [] if fmt is not None else None
    try:
        ds = build_dataset(task, ctx.root, name, config=ctx.loader_cfg, tokenizer=ctx.tokenizer)
        mismatch = vocabulary_mismatch(ctx.ck, task, ds)
        if mismatch is not None:
            return row | {"status": SKIPPED, "reason": mismatch}
        result = evaluate_task(
            ctx.ck.model,
            task,
            ds,
            ctx.batch_size,
            ctx.max_examples,
            ctx.progress,
            rerank_ks=ctx.rerank_ks,
            predictions=predictions,
        )
    except (OSError, KeyError, ValueError) as exc:
        return row | {"status": SKIPPED, "reason": skip_reason(exc)}
    status = split_status(result)
    if status is not None:  # nothing to score: no number rather than a 0.00
        result = {k: v for k, v in result.items() if k not in ("score", "exact")}
    row |= {"status": status or SCORED, **result}
    if fmt is not None and predictions is not None and ctx.predictions_dir is not None:
        answers = ctx.ck.answers.get(task.answer_vocab) or list(getattr(ds, "label2ans", []))
        path = make_dirs(ctx.predictions_dir) / fmt.filename.format(split=ctx.split)
        atomic_write_text(path, json.dumps(server_results(fmt, predictions, answers)))
        row["predictions"] = str(path)
    return row


def _cell(r: dict, key: str, digits: int = 2) -> str:
    return f"{r[key]:.{digits}f}" if key in r else "–"


def format_table(results: dict[str, dict]) -> str:
    lines = ["| task | split | metric | score | exact | examples |", "|---|---|---|---:|---:|---:|"]
    for slug, r in results.items():
        status = r.get("status", SCORED)
        if status == SCORED:
            extra = "" if "R@5" not in r else f" (R@5 {r['R@5']:.1f}, R@10 {r['R@10']:.1f})"
            score = f"{r['score']:.2f}{extra}"
        else:
            score = status if status != SKIPPED else f"skipped: {r['reason']}"
        examples = str(int(r["examples"])) if "examples" in r else "–"
        lines.append(
            f"| {slug} | {r['split'] or '–'} | {r['metric']} | {score} | {_cell(r, 'exact')} | {examples} |"
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
    parser.add_argument("--max-examples", type=int, help="cap per task (default: every example)")
    parser.add_argument("--out", type=Path, help="JSON output (default: CHECKPOINT/eval_<split>.json)")
    parser.add_argument(
        "--predictions",
        type=Path,
        metavar="DIR",
        help="also write the VQA / GQA evaluation servers' result files into DIR",
    )
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
            predictions_dir=args.predictions,
        )
    except (FileNotFoundError, KeyError, ValueError) as exc:
        return fail(skip_reason(exc))
    print(format_table(results))
    if all(r["status"] == SKIPPED for r in results.values()):
        return fail(f"no task could be evaluated on --split {args.split} (the table gives each reason)")
    two_stage = two_stage_table(results)
    if two_stage:
        print("\n" + two_stage)
    for r in results.values():
        if "predictions" in r:
            print(f"wrote {r['predictions']}")
    out = args.out or args.checkpoint / f"eval_{args.split}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    run(main)
