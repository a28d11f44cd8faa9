"""The end-of-training metrics table: every task's test metric beside its chance level and the
image-blind baselines the data summary lists (`summary.json` written by `training.synthetic`)."""

from __future__ import annotations

import json
from pathlib import Path

from training.datasets import LoaderConfig, RetrievalEvalDataset, build_dataset, split_names
from training.evaluation import NO_LABELS, evaluate_task, skip_reason, split_status
from vilbert.heads import MultiTaskViLBERT
from vilbert.tasks import Readout, Task
from vilbert.tokenizer import load_tokenizer


def _baselines(data_root: Path) -> dict[str, dict]:
    for candidate in (data_root / "summary.json", data_root.parent / "summary.json"):
        if candidate.is_file():
            return {row["task"]: row for row in json.loads(candidate.read_text()).get("tasks", [])}
    return {}


def _labelled(ds, probe: int = 20) -> bool:
    """Whether a split carries targets (VQA's test2015 questions come without answers).

    A probe of the first examples, so an unlabelled test split is never run through the model; it
    reads their region features, so a missing feature file raises here (the caller catches it)."""
    if isinstance(ds, RetrievalEvalDataset) or len(ds) == 0:
        return True
    examples = [ds[i] for i in range(min(probe, len(ds)))]
    return any(float(ex.target.sum()) > 0 or ex.label >= 0 for ex in examples)


def _split_size(ds) -> int:
    return ds.score_shape[0] if isinstance(ds, RetrievalEvalDataset) else len(ds)


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
    """Test metric per task on every example of the split (`max_examples` / `max_captions` cap it;
    None, the default, scores them all).

    A task whose test split is absent (VG QA), unlabelled (VQA test2015), empty or unreadable (a
    file missing) is scored on its val split instead, and `note` says why; a task neither split can
    score gets `status: skipped` and the `reason` of each.  Missing data never raises: training's
    weights are saved before this runs, and the run still ends with status 0.
    """
    tokenizer = load_tokenizer()
    baselines = _baselines(data_root)
    rows: dict[str, dict] = {}
    for task in tasks:
        row: dict = {"metric": task.metric}
        notes: list[str] = []
        cap = max_captions if task.readout is Readout.RANK_IMAGES else max_examples
        for which in ("test", "val"):
            split = split_names(task)[which]
            if not split:
                notes.append(f"no {which} split")
                continue
            try:
                ds = build_dataset(task, data_root, split, config=loader_cfg, tokenizer=tokenizer)
                if which == "test" and not _labelled(ds):
                    notes.append(f"{split}: {NO_LABELS}")
                    continue
                result = evaluate_task(model, task, ds, batch_size, cap, token_map=token_map)
            except (OSError, KeyError, ValueError) as exc:
                notes.append(f"{split}: {skip_reason(exc)}")
                continue
            status = split_status(result)
            if status is not None:
                notes.append(f"{split}: {status}")
                continue
            row.update(split=split, status="scored", **result)
            row["capped"] = _split_size(ds) > result["examples"]
            if task.readout is Readout.RANK_IMAGES and which == "test":
                row["chance"] = 100.0 / max(1, ds.score_shape[1])
            break
        if "score" not in row:
            row.update(status="skipped", reason="; ".join(notes))
        elif notes:
            row["note"] = "; ".join(notes)
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
        "| task | split | metric | score | examples | chance | majority | text-only prior |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for slug, r in rows.items():
        if "score" not in r:
            reason = r.get("reason", "n/a")
            lines.append(f"| {slug} | – | {r['metric']} | skipped: {reason} | – | | | |")
            continue
        examples = f"{int(r['examples'])}{' (capped)' if r.get('capped') else ''}"
        lines.append(
            f"| {slug} | {r['split']} | {r['metric']} | {num(r['score'])} | {examples} "
            f"| {num(r.get('chance'))} | {num(r.get('majority'))} | {num(r.get('text_prior'))} |"
        )
        if r.get("note"):
            notes.append(f"- {slug}: scored on {r['split']} ({r['note']})")
    lines.append("")
    lines.append(
        "Baselines (chance, majority answer, text-only prior) come from the data summary and are "
        "measured on each task's validation split without the image; retrieval's chance is "
        "R@1 of a random ranking of the test images."
    )
    if notes:
        lines += ["", "Tasks scored on another split than test:", "", *notes]
    return "\n".join(lines) + "\n"


def loss_trend(losses: dict[str, list[tuple[int, float]]], window: float = 0.1) -> dict[str, dict]:
    """Per task: mean training loss over the first and the last `window` of its batches (at least 3
    batches each), and whether it fell.  A task's loss is noisy batch to batch; window means are not."""
    trend = {}
    for slug, points in sorted(losses.items()):
        values = [v for _, v in points]
        n = max(3, int(len(values) * window))
        if len(values) < 2 * n:
            trend[slug] = {"batches": len(values), "first": None, "last": None, "fell": None}
            continue
        first, last = sum(values[:n]) / n, sum(values[-n:]) / n
        trend[slug] = {"batches": len(values), "first": first, "last": last, "fell": last < first}
    return trend


def trend_markdown(trend: dict[str, dict]) -> str:
    lines = ["| task | batches | loss, first 10 % | loss, last 10 % | fell |", "|---|---:|---:|---:|---|"]
    for slug, t in trend.items():
        if t["first"] is None:
            lines.append(f"| {slug} | {t['batches']} | – | – | too few batches |")
        else:
            fell = "yes" if t["fell"] else "**no**"
            lines.append(f"| {slug} | {t['batches']} | {t['first']:.4f} | {t['last']:.4f} | {fell} |")
    return "\n".join(lines) + "\n"
