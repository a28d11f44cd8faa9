"""The one example format every task loader yields, and the collate function that batches it.

An example holds P (text, image) *pairs*, each run through the trunk on its own:
P = 1 for most tasks, 2 for NLVR2 (the statement with its left and right image, held explicitly,
never inferred from batch parity), 4 for retrieval training (the multiple-choice options), and the
chunk size for retrieval evaluation.  The collated batch flattens pairs into the trunk's batch axis
(N = B·P rows) while targets stay per example (B rows); heads that combine pairs (NLVR2's
concatenation, retrieval's 4-way softmax) reshape the N trunk outputs to (B, P, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class Example:
    """One training/evaluation example (numpy arrays; P pairs, T tokens, R regions, D features)."""

    task_id: int  # official numeric task id (indexes the task token)
    example_id: str  # question_id / sent_id / dialog id / NLVR2 identifier / caption index
    image_ids: tuple[str, ...]  # P feature-store keys, one per pair
    input_ids: np.ndarray  # (P, T) int64, [CLS] ... [SEP], no padding
    attention_mask: np.ndarray  # (P, T) int64
    region_features: np.ndarray  # (P, R, D) float32; row 0 = global mean feature
    region_locations: np.ndarray  # (P, R, 5) float32: x1/W, y1/H, x2/W, y2/H, area fraction
    region_mask: np.ndarray  # (P, R) int64, 1 for real regions (global included)
    region_boxes: np.ndarray  # (P, R, 4) float32, x1,y1,x2,y2 in image pixels (for IoU and serving)
    # Per-family target: QA (A,) soft scores; retrieval (P,) one-hot of option 0; grounding (R,) IoU;
    # pointing (K,) IoU of the candidates; NLVR2 (2,) / SNLI-VE (3,) one-hot (all zero for "-").
    target: np.ndarray
    label: int = -1  # class index where one exists (retrieval 0, NLVR2, SNLI-VE); -1 when none
    iou: np.ndarray | None = None  # grounding: (R,) raw IoU with the referent, for the > 0.5 metric
    candidates: np.ndarray | None = None  # pointing: (K,) int64 region indices of the candidates
    ref_box: np.ndarray | None = None  # grounding/pointing: (4,) referent x1,y1,x2,y2 in pixels
    text: str = ""  # the raw text (question, caption, expression, dialog, statement)
    meta: dict[str, object] = field(default_factory=dict)  # e.g. retrieval eval: caption/image indices

    @property
    def num_pairs(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass
class Batch:
    """A collated batch of one task: trunk inputs flattened over pairs, targets per example."""

    task_id: int
    pairs_per_example: int  # P; trunk rows N = B * P
    input_ids: torch.Tensor  # (N, T) int64, T = longest text in the batch
    attention_mask: torch.Tensor  # (N, T) int64
    task_ids: torch.Tensor  # (N,) int64
    region_features: torch.Tensor  # (N, R, D) float32, R = most regions in the batch
    region_locations: torch.Tensor  # (N, R, 5) float32
    region_mask: torch.Tensor  # (N, R) int64
    region_boxes: torch.Tensor  # (N, R, 4) float32
    target: torch.Tensor  # (B, ...) float32, zero-padded along its last axis
    target_mask: torch.Tensor  # (B, C) bool: which target positions are real (regions/candidates)
    labels: torch.Tensor  # (B,) int64
    iou: torch.Tensor | None  # (B, R) float32
    candidates: torch.Tensor | None  # (B, K) int64 (padding points at region 0 and is masked)
    candidate_mask: torch.Tensor | None  # (B, K) bool
    ref_boxes: torch.Tensor | None  # (B, 4) float32
    example_ids: list[str]
    image_ids: list[tuple[str, ...]]
    meta: list[dict[str, object]]

    @property
    def batch_size(self) -> int:
        return int(self.labels.shape[0])

    def trunk_inputs(self) -> dict[str, torch.Tensor]:
        """The tensors the trunk takes, by name."""
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "task_ids": self.task_ids,
            "region_features": self.region_features,
            "region_locations": self.region_locations,
            "region_mask": self.region_mask,
        }

    def to(self, device: torch.device | str) -> Batch:
        moved = {}
        for name, value in vars(self).items():
            moved[name] = value.to(device) if isinstance(value, torch.Tensor) else value
        return Batch(**moved)


def _pad_stack(arrays: Sequence[np.ndarray], axis_sizes: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Zero-pad each array to `axis_sizes` (its leading axes) and stack them."""
    out = np.zeros((len(arrays), *axis_sizes), dtype=dtype)
    for i, a in enumerate(arrays):
        out[(i, *tuple(slice(0, s) for s in a.shape))] = a
    return out


def collate(examples: Sequence[Example], pad_regions_to: int | None = None) -> Batch:
    """Batch examples of one task: text padded to the longest in the batch, regions to the batch max.

    `pad_regions_to` pads regions to a fixed count instead (the reference's fixed 101-row tensors).
    """
    if not examples:
        raise ValueError("cannot collate an empty list of examples")
    task_id = examples[0].task_id
    P = examples[0].num_pairs
    for ex in examples:
        if ex.task_id != task_id:
            raise ValueError(f"a batch mixes tasks {task_id} and {ex.task_id}; batch one task at a time")
        if ex.num_pairs != P:
            raise ValueError(f"a batch mixes {P} and {ex.num_pairs} pairs per example")
    B = len(examples)
    T = max(ex.input_ids.shape[1] for ex in examples)
    R = max(ex.region_features.shape[1] for ex in examples)
    if pad_regions_to is not None:
        if pad_regions_to < R:
            raise ValueError(f"pad_regions_to={pad_regions_to} is below the {R} regions of this batch")
        R = pad_regions_to
    D = examples[0].region_features.shape[2]

    def flat(name: str, tail: tuple[int, ...], dtype: np.dtype) -> torch.Tensor:
        stacked = _pad_stack([getattr(ex, name) for ex in examples], (P, *tail), dtype)
        return torch.from_numpy(stacked.reshape(B * P, *tail))

    target_len = max(ex.target.shape[-1] for ex in examples)
    target = _pad_stack([ex.target for ex in examples], (target_len,), np.float32)
    target_mask = _pad_stack([np.ones(ex.target.shape[-1], bool) for ex in examples], (target_len,), bool)

    iou = candidates = candidate_mask = ref_boxes = None
    if examples[0].iou is not None:
        iou = torch.from_numpy(_pad_stack([ex.iou for ex in examples], (R,), np.float32))
    if examples[0].candidates is not None:
        K = max(len(ex.candidates) for ex in examples)
        candidates = torch.from_numpy(_pad_stack([ex.candidates for ex in examples], (K,), np.int64))
        candidate_mask = torch.from_numpy(
            _pad_stack([np.ones(len(ex.candidates), bool) for ex in examples], (K,), bool)
        )
    if examples[0].ref_box is not None:
        ref_boxes = torch.from_numpy(np.stack([ex.ref_box for ex in examples]).astype(np.float32))

    return Batch(
        task_id=task_id,
        pairs_per_example=P,
        input_ids=flat("input_ids", (T,), np.int64),
        attention_mask=flat("attention_mask", (T,), np.int64),
        task_ids=torch.full((B * P,), task_id, dtype=torch.int64),
        region_features=flat("region_features", (R, D), np.float32),
        region_locations=flat("region_locations", (R, 5), np.float32),
        region_mask=flat("region_mask", (R,), np.int64),
        region_boxes=flat("region_boxes", (R, 4), np.float32),
        target=torch.from_numpy(target),
        target_mask=torch.from_numpy(target_mask),
        labels=torch.tensor([ex.label for ex in examples], dtype=torch.int64),
        iou=iou,
        candidates=candidates,
        candidate_mask=candidate_mask,
        ref_boxes=ref_boxes,
        example_ids=[ex.example_id for ex in examples],
        image_ids=[ex.image_ids for ex in examples],
        meta=[ex.meta for ex in examples],
    )
