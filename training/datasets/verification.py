"""Verification loaders: NLVR2 (a statement about two images) and SNLI-VE (a hypothesis about one
image), in their official formats.

NLVR2 examples hold both images explicitly as two (statement, image) pairs — left then right — so
nothing depends on batch parity or on every image having exactly 101 regions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.datasets.base import TaskDataset, pairs_text, read_jsonl, single_pair_text
from training.datasets.example import Example
from training.datasets.layout import Source
from training.datasets.regions import plain_rows, stack_pairs


@dataclass
class VerificationEntry:
    example_id: str  # NLVR2 identifier / SNLI-VE running index
    image_ids: tuple[str, ...]  # feature keys: (left, right) for NLVR2, (flickr id,) for SNLI-VE
    text: str
    label: int  # index into task.labels; -1 for SNLI-VE's "-" (kept, all-zero target)


def nlvr2_image_keys(identifier: str) -> tuple[str, str]:
    """`dev-850-0-0` -> (`dev-850-0-img0`, `dev-850-0-img1`): drop the sentence field, add the side."""
    pair = identifier.rsplit("-", 1)[0]
    return f"{pair}-img0", f"{pair}-img1"


class VerificationDataset(TaskDataset[VerificationEntry]):
    """NLVR2 and SNLI-VE: a statement, one or two images, a label from the task's label set."""

    def read_entries(self) -> list[VerificationEntry]:
        labels = {name: i for i, name in enumerate(self.task.labels)}
        match self.layout.source:
            case Source.NLVR2:
                lines = read_jsonl(self.dataroot / f"{self.split}.json")  # JSON lines despite the name
                return [
                    VerificationEntry(
                        line["identifier"],
                        nlvr2_image_keys(line["identifier"]),
                        line["sentence"],
                        labels[str(line["label"])],
                    )
                    for line in lines
                ]
            case Source.SNLI_VE:
                lines = read_jsonl(self.dataroot / f"snli_ve_{self.split}.jsonl")
                return [
                    VerificationEntry(
                        str(k),
                        (str(int(Path(line["Flikr30kID"]).stem)),),
                        line["sentence2"],
                        labels.get(line["gold_label"], -1),
                    )
                    for k, line in enumerate(lines)
                ]
            case other:
                raise ValueError(f"VerificationDataset cannot read {other}")

    def entry_text(self, entry: VerificationEntry) -> str:
        return entry.text

    def entry_image_ids(self, entry: VerificationEntry) -> tuple[str, ...]:
        return entry.image_ids

    def make_example(self, index: int, entry: VerificationEntry) -> Example:
        rows = [plain_rows(self.features.get(i), self.task.max_regions) for i in entry.image_ids]
        feats, locs, boxes, mask = stack_pairs(rows)
        tokens = self.tokens(index)
        # Each image is a pair of its own with the same statement (NLVR2: left, then right).
        ids, attn = pairs_text([tokens] * len(rows)) if len(rows) > 1 else single_pair_text(tokens)
        target = np.zeros(len(self.task.labels), np.float32)
        if entry.label >= 0:
            target[entry.label] = 1.0
        return Example(
            task_id=self.task.task_id,
            example_id=entry.example_id,
            image_ids=entry.image_ids,
            input_ids=ids,
            attention_mask=attn,
            region_features=feats,
            region_locations=locs,
            region_mask=mask,
            region_boxes=boxes,
            target=target,
            label=entry.label,
            text=entry.text,
        )
