"""The end-of-training metrics table: every task's test metric beside its chance level and the
image-blind baselines the data summary lists (`summary.json` written by `training.synthetic`)."""

from __future__ import annotations

import json
from pathlib import Path

from training.datasets import LoaderConfig, RetrievalEvalDataset, build_dataset, split_names
from training.evaluation import evaluate_task
from vilbert.heads import MultiTaskViLBERT
from vilbert.tasks import Readout, Task
from vilbert.tokenizer import load_tokenizer


def _baselines(data_root: Path) -> dict[str, dict]:
    for candidate in (data_root / "summary.json", data_root.parent / "summary.json"):
        if candidate.is_file():
            return {row["task"]: row for row in json.loads(candidate.read_text()).get("tasks", [])}
    return {}


def _labelled(ds, probe: int = 20) -> bool:
    """Whether a split carries targets (VQA's test2015 questions come without answers)."""
    if isinstance(ds, RetrievalEvalDataset) or len(ds) == 0:
        return True
    examples = [ds[i] for i in range(min(probe, len(ds)))]
    return any(float(ex.target.sum()) > 0 or ex.label >= 0 for ex in examples)


def final_metrics(
    model: MultiTaskViLBERT,
    tasks: list[Task],
    data_root: Path,
    loader_cfg: LoaderConfig,
    batch_size: int = 64,
    token_map: dict[int, int] | None = None,
    max_examples: int | None = None,
    max_captions: int | None = None,
) -> dict[str, dict]:
    """Test metric per task (val where a dataset has no test split, e.g. VG QA)."""
    tokenizer = load_tokenizer()
    baselines = _baselines(data_root)
    rows: dict[str, dict] = {}
    for task in tasks:
        row: dict = {"metric": task.metric}
        for which in ("test", "val"):
            split = split_names(task)[which]
            try:
                ds = build_dataset(task, data_root, split, config=loader_cfg, tokenizer=tokenizer)
            except (FileNotFoundError, KeyError, ValueError) as exc:
                row["error"] = f"{split}: {exc}"
                continue
            if which == "test" and not _labelled(ds):
                row["error"] = f"{split}: no answers in this split (e.g. VQA test2015)"
                continue
            row.pop("error", None)
            row.update(
                split=split,
                **evaluate_task(
                    model,
                    task,
                    ds,
                    batch_size,
                    max_captions if task.readout is Readout.RANK_IMAGES else max_examples,
                    token_map=token_map,
                ),
            )
            if task.readout is Readout.RANK_IMAGES and which == "test":
                row["chance"] = 100.0 / max(1, ds.score_shape[1])
            break
        base = baselines.get(task.slug, {})
        row.setdefault("chance", base.get("chance"))
        row["majority"] = base.get("majority") if task.readout is not Readout.RANK_IMAGES else None
        row["text_prior"] = base.get("text_prior") if task.readout is not Readout.RANK_IMAGES else None
        rows[task.slug] = row
    return rows


def metrics_markdown(rows: dict[str, dict]) -> str:
    def num(v: object) -> str:
        return "–" if v is None else f"{float(v):.1f}"

    lines = [
        "| task | split | metric | score | chance | majority | text-only prior |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for slug, r in rows.items():
        if "score" not in r:
            lines.append(f"| {slug} | – | {r['metric']} | {r.get('error', 'n/a')} | | | |")
            continue
        lines.append(
            f"| {slug} | {r['split']} | {r['metric']} | {num(r['score'])} | {num(r.get('chance'))} "
            f"| {num(r.get('majority'))} | {num(r.get('text_prior'))} |"
        )
    lines.append("")
    lines.append(
        "Baselines (chance, majority answer, text-only prior) come from the data summary and are "
        "measured on each task's validation split without the image; retrieval's chance is "
        "R@1 of a random ranking of the test images."
    )
    return "\n".join(lines) + "\n"
