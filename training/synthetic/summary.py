"""Summary of a data tree: examples per split, chance and text-only baselines per task.

Works on any tree in the reference layout (the synthetic world or real data): counts come from
the task loaders, baselines from the loaders' entries plus the official annotation files.
The baselines show what can be had without looking at the image: the majority answer (label)
of the training split, and a text-only prior (the training majority for the exact question or
statement, falling back to its first three words, then to the overall majority).  For grounding,
"prior" picks the largest object, which needs boxes but no language.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.datasets import build_dataset, split_names
from training.datasets.base import TaskDataset, read_jsonl
from training.datasets.config import LoaderConfig
from training.datasets.layout import Source
from vilbert.tasks import TASKS, Family, Task
from vilbert.tokenizer import load_tokenizer


@dataclass
class TaskSummary:
    task: str
    examples: dict[str, int] = field(default_factory=dict)  # per split name (train split cleaned)
    eval_split: str = ""
    chance: float | None = None  # %
    majority: float | None = None  # % (majority answer / label, or the largest-object prior)
    text_prior: float | None = None  # % (text-only prior)
    note: str = ""


def _text_key(text: str) -> tuple[str, str]:
    t = text.lower().strip()
    return t, " ".join(t.split()[:3])


def _prior_accuracy(
    train: Sequence[tuple[str, int, dict[int, float]]], evaluation: Sequence[tuple[str, dict[int, float]]]
) -> tuple[float, float]:
    """(majority, text prior) scores; items are (text, best label, {label: score})."""
    total: Counter[int] = Counter()
    by_text: dict[str, Counter[int]] = defaultdict(Counter)
    by_type: dict[str, Counter[int]] = defaultdict(Counter)
    for text, _, scores in train:
        exact, kind = _text_key(text)
        for label, score in scores.items():
            total[label] += score
            by_text[exact][label] += score
            by_type[kind][label] += score
    if not total or not evaluation:
        return 0.0, 0.0
    majority = total.most_common(1)[0][0]
    maj_score = prior_score = 0.0
    for text, scores in evaluation:
        exact, kind = _text_key(text)
        maj_score += scores.get(majority, 0.0)
        table = by_text.get(exact) or by_type.get(kind) or total
        prior_score += scores.get(table.most_common(1)[0][0], 0.0)
    n = len(evaluation)
    return 100 * maj_score / n, 100 * prior_score / n


def _qa_items(ds: TaskDataset) -> list[tuple[str, int, dict[int, float]]]:
    return [(e.question, -1, dict(zip(e.labels, e.scores, strict=True))) for e in ds.entries]


def _label_items(ds: TaskDataset) -> list[tuple[str, int, dict[int, float]]]:
    return [(e.text, e.label, {e.label: 1.0} if e.label >= 0 else {}) for e in ds.entries]


def _largest_prior_refer(ds: TaskDataset) -> tuple[float, float]:
    folder = ds.dataroot / ds.layout.refer_name
    instances = json.loads((folder / "instances.json").read_text())
    per_image: dict[int, list[dict]] = defaultdict(list)
    for a in instances["annotations"]:
        per_image[a["image_id"]].append(a)
    chance = prior = 0.0
    for e in ds.entries:
        anns = per_image[int(e.image_id)]
        chance += 1 / len(anns)
        largest = max(anns, key=lambda a: a["bbox"][2] * a["bbox"][3])
        prior += largest["id"] == e.ref_id
    return 100 * chance / len(ds), 100 * prior / len(ds)


def _largest_prior_pointing(ds: TaskDataset) -> tuple[float, float]:
    area: dict[int, float] = {}
    match ds.layout.source:
        case Source.VISUAL7W:
            data = json.loads((ds.dataroot / "dataset_v7w_pointing.json").read_text())
            area = {b["box_id"]: b["width"] * b["height"] for b in data["boxes"]}
            candidates = {
                str(qa["qa_id"]): [qa["answer"], *qa["multiple_choices"]]
                for img in data["images"]
                for qa in img["qa_pairs"]
            }
        case _:
            candidates = {}
            for game in read_jsonl(ds.dataroot / f"guesswhat.{ds.split}.jsonl"):
                candidates[str(game["id"])] = [o["id"] for o in game["objects"]]
                area.update({o["id"]: o["bbox"][2] * o["bbox"][3] for o in game["objects"]})
    chance = prior = 0.0
    for e in ds.entries:
        cands = candidates[e.example_id]
        chance += 1 / len(cands)
        prior += max(cands, key=lambda c: area[c]) == e.ref_id
    return 100 * chance / len(ds), 100 * prior / len(ds)


def summarise(
    data_root: str | Path, config: LoaderConfig | None = None, progress: Callable[[str], None] | None = None
) -> list[TaskSummary]:
    cfg = config or LoaderConfig.for_data_root(data_root)
    tokenizer = load_tokenizer()
    out = []
    for task in TASKS:
        if progress:
            progress(task.slug)
        names = split_names(task)
        loaded: dict[str, TaskDataset] = {}
        summary = TaskSummary(task.slug, eval_split=names["val"])
        for role, split in names.items():
            if not split:
                continue
            try:
                loaded[role] = build_dataset(task, data_root, split, config=cfg, tokenizer=tokenizer)
                # Retrieval evaluation items are (caption, chunk) pairs; count captions.
                summary.examples[split] = len(loaded[role].entries)
            except (FileNotFoundError, ValueError) as exc:
                summary.note += f"{split}: {exc}; "
        if "train" in loaded and "val" in loaded:
            _baselines(task, loaded["train"], loaded["val"], summary)
        out.append(summary)
    return out


def _baselines(task: Task, train: TaskDataset, val: TaskDataset, s: TaskSummary) -> None:
    match task.family:
        case Family.QA:
            vocab = len(getattr(train, "ans2label", {})) or 1
            evaluation = [(t, sc) for t, _, sc in _qa_items(val)]
            s.chance = (
                100 * float(np.mean([sum(sc.values()) / vocab for _, sc in evaluation])) if evaluation else 0
            )
            s.majority, s.text_prior = _prior_accuracy(_qa_items(train), evaluation)
        case Family.RETRIEVAL:
            n_images = len(getattr(val, "images", [])) or 1
            s.chance, s.majority, s.text_prior = 25.0, 25.0, 25.0
            s.note += f"4-way choice; chance R@1 on the {n_images}-image test set: {100 / n_images:.1f}%"
        case Family.GROUNDING:
            if task.num_candidates:
                s.chance, s.majority = _largest_prior_pointing(val)
            else:
                s.chance, s.majority = _largest_prior_refer(val)
            s.note += "majority = always pick the largest object"
        case Family.VERIFICATION:
            items = _label_items(train)
            evaluation = [(t, sc) for t, _, sc in _label_items(val)]
            s.chance = 100 / len(task.labels)
            s.majority, s.text_prior = _prior_accuracy(items, evaluation)


def format_summary(rows: Sequence[TaskSummary]) -> str:
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    lines = [
        "| task | examples per split | eval split | chance % | majority % | text-only prior % | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        splits = ", ".join(f"{k} {v}" for k, v in r.examples.items())
        lines.append(
            f"| {r.task} | {splits} | {r.eval_split} | {pct(r.chance)} | {pct(r.majority)} | "
            f"{pct(r.text_prior)} | {r.note.strip('; ')} |"
        )
    return "\n".join(lines)


def write_summary(
    out: Path, rows: Sequence[TaskSummary], extra: dict[str, Any] | None = None, preface: str = ""
) -> None:
    (out / "summary.md").write_text(preface + format_summary(rows) + "\n")
    (out / "summary.json").write_text(
        json.dumps({"tasks": [asdict(r) for r in rows], **(extra or {})}, indent=1)
    )
