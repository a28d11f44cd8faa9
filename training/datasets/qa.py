"""Vocabulary-based QA loaders: VQA v2, GQA and Visual Genome QA, in the reference's formats.

All three yield one question on one image with a soft-score target over the answer vocabulary;
only the files and split rules differ, so one dataset class serves them with a reader per format.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.datasets.base import TaskDataset, read_pickle, single_pair_text
from training.datasets.example import Example
from training.datasets.layout import Source
from training.datasets.regions import plain_rows, stack_pairs


@dataclass
class QAEntry:
    question_id: int
    image_id: str
    question: str
    labels: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    source_id: str = ""  # the id as the dataset writes it (GQA's keep leading zeros); "": str(question_id)


def _sorted_targets(path: Path) -> list[dict]:
    return sorted(read_pickle(path), key=lambda t: int(t["question_id"]))


def _raw_sorted_targets(path: Path) -> list[dict]:
    """Targets sorted by their raw `question_id` values, as the reference's GQA loader sorts them:
    GQA's ids are strings, so "10" comes before "9" and the `minval` tail is the last ids in text order."""
    return sorted(read_pickle(path), key=lambda t: t["question_id"])


def _tail_split(items: list, split: str, tail: int, head_name: str, tail_name: str) -> list:
    """The reference's `trainval`/`minval` style split: the last `tail` items vs the rest."""
    cut = max(len(items) - tail, 0)
    if split == head_name:
        return items[:cut]
    if split == tail_name:
        return items[cut:]
    raise ValueError(f"split {split!r} is not {head_name!r} or {tail_name!r}")


class QADataset(TaskDataset[QAEntry]):
    """VQA v2 / GQA / VG QA: question + one image -> soft scores over the answer vocabulary."""

    def read_entries(self) -> list[QAEntry]:
        self.ans2label: dict[str, int] = read_pickle(self.cache_dir / "trainval_ans2label.pkl")
        self.label2ans: list[str] = read_pickle(self.cache_dir / "trainval_label2ans.pkl")
        configured = (
            self.config.gqa_num_answers if self.layout.source == Source.GQA else self.config.vqa_num_answers
        )
        self.num_answers = len(self.ans2label) if configured is None else configured
        if len(self.ans2label) > self.num_answers:
            raise ValueError(
                f"{self.task.slug}: vocabulary has {len(self.ans2label)} answers but the head has "
                f"{self.num_answers}; set vqa_num_answers/gqa_num_answers"
            )
        match self.layout.source:
            case Source.VQA_V2:
                return self._read_vqa()
            case Source.GQA:
                return self._read_gqa()
            case Source.VG_QA:
                return self._read_vg_qa()
            case other:
                raise ValueError(f"QADataset cannot read {other}")

    def _read_vqa(self) -> list[QAEntry]:
        def questions(name: str) -> list[dict]:
            path = self.dataroot / f"v2_OpenEnded_mscoco_{name}_questions.json"
            if not path.is_file():
                raise FileNotFoundError(f"VQA questions not found: {path}")
            return sorted(json.loads(path.read_text())["questions"], key=lambda q: q["question_id"])

        def with_targets(split: str) -> list[QAEntry]:
            qs = questions(f"{split}2014")
            targets = _sorted_targets(self.cache_dir / f"{split}_target.pkl")
            if len(qs) != len(targets):
                raise ValueError(f"VQA {split}: {len(qs)} questions but {len(targets)} targets")
            out = []
            for q, t in zip(qs, targets, strict=True):
                if q["question_id"] != t["question_id"]:
                    raise ValueError(f"VQA {split}: question {q['question_id']} vs target {t['question_id']}")
                out.append(
                    QAEntry(
                        q["question_id"],
                        str(q["image_id"]),
                        q["question"],
                        list(t["labels"]),
                        list(t["scores"]),
                    )
                )
            return out

        match self.split:
            case "train" | "val":
                return with_targets(self.split)
            case "trainval" | "minval":
                val = with_targets("val")
                tail = _tail_split(val, self.split, self.config.minval_size, "trainval", "minval")
                return with_targets("train") + tail if self.split == "trainval" else tail
            case "test":
                return [
                    QAEntry(q["question_id"], str(q["image_id"]), q["question"])
                    for q in questions("test2015")
                ]
            case _:
                raise ValueError(f"VQA has no split {self.split!r} (train, val, trainval, minval, test)")

    def _entries_from_targets(self, targets: list[dict]) -> list[QAEntry]:
        return [
            QAEntry(
                int(t["question_id"]),
                str(t["image_id"]),
                t["question"],
                list(t["labels"]),
                list(t["scores"]),
                source_id=str(t["question_id"]),
            )
            for t in targets
        ]

    def _read_gqa(self) -> list[QAEntry]:
        match self.split:
            case "trainval" | "minval":
                targets = _raw_sorted_targets(self.cache_dir / "trainval_target.pkl")
                return self._entries_from_targets(
                    _tail_split(targets, self.split, self.config.minval_size, "trainval", "minval")
                )
            case "train" | "val":
                targets = _raw_sorted_targets(self.cache_dir / f"{self.split}_target.pkl")
                return self._entries_from_targets(targets)
            case "test" | "testdev":
                path = self.dataroot / "testdev_balanced_questions.json"
                if not path.is_file():
                    raise FileNotFoundError(f"GQA test-dev questions not found: {path}")
                out = []
                for qid, q in json.loads(path.read_text()).items():
                    label = self.ans2label.get(q.get("answer", ""))
                    out.append(
                        QAEntry(
                            int(qid),
                            str(q["imageId"]),
                            q["question"],
                            [] if label is None else [label],
                            [] if label is None else [1.0],
                            source_id=qid,
                        )
                    )
                return sorted(out, key=lambda e: e.question_id)
            case _:
                raise ValueError(f"GQA has no split {self.split!r} (trainval, minval, train, val, test)")

    def _read_vg_qa(self) -> list[QAEntry]:
        targets = _sorted_targets(self.cache_dir / "trainval_target.pkl")
        match self.split:
            case "train" | "val":
                return self._entries_from_targets(
                    _tail_split(targets, self.split, self.config.vg_val_size, "train", "val")
                )
            case _:
                raise ValueError(f"VG QA has no split {self.split!r} (train, val)")

    def entry_text(self, entry: QAEntry) -> str:
        return entry.question

    def entry_image_ids(self, entry: QAEntry) -> list[str]:
        return [entry.image_id]

    def make_example(self, index: int, entry: QAEntry) -> Example:
        # VQA test2015 images live in their own LMDB (the reference edits the yml for it).
        use_test = self.split == "test" and bool(self.layout.test_features)
        features = self.source(self.layout.test_features) if use_test else self.features
        rows = plain_rows(features.get(entry.image_id), self.task.max_regions)
        feats, locs, boxes, mask = stack_pairs([rows])
        target = np.zeros(self.num_answers, np.float32)
        target[entry.labels] = entry.scores
        ids, attn = single_pair_text(self.tokens(index))
        return Example(
            task_id=self.task.task_id,
            example_id=entry.source_id or str(entry.question_id),
            image_ids=(entry.image_id,),
            input_ids=ids,
            attention_mask=attn,
            region_features=feats,
            region_locations=locs,
            region_mask=mask,
            region_boxes=boxes,
            target=target,
            label=int(np.argmax(target)) if entry.labels else -1,
            text=entry.question,
        )

    def answer(self, label: int) -> str:
        return self.label2ans[label]
