"""One task's forward pass and loss on a collated `Batch`.

Logit conventions (shared with training/metrics.py): QA (B, A); retrieval (B, P) one logit per
option/image; grounding (B, R); pointing (B, K) candidate logits; NLVR2 (B, 2); SNLI-VE (B, 3).
Losses follow the reference's scaling (datasets-and-training.md §1.6); the loop multiplies them by
the task's loss scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from training.datasets.example import Batch
from training.metrics import gather_candidates
from vilbert.heads import MultiTaskViLBERT
from vilbert.tasks import Head, Loss, Readout, Task


def remap_task_ids(batch: Batch, token_map: dict[int, int] | None) -> Batch:
    """Point each row's task token at another row of the embedding (the per-head token ablation)."""
    if token_map:
        batch.task_ids = batch.task_ids.apply_(lambda t: token_map.get(t, t))
    return batch


def task_logits(model: MultiTaskViLBERT, task: Task, batch: Batch) -> Tensor:
    """Trunk over the N = B x P rows of the batch, then only this task's head."""
    out = model.trunk(**batch.trunk_inputs())
    b, p = batch.batch_size, batch.pairs_per_example
    match task.head:
        case Head.REGION:
            logits = model.heads.region_logits(out.region_states, batch.region_mask)  # (N, R)
            if task.readout is Readout.BEST_CANDIDATE:
                assert batch.candidates is not None
                return gather_candidates(logits, batch.candidates)  # (B, K)
            return logits
        case Head.PAIR:
            return model.heads.pair_logits(out.fused.view(b, p, -1))  # (B, 2)
        case Head.MATCH:
            return model.heads.fused_logits(Head.MATCH, out.fused).view(b, p)  # (B, P)
        case _:
            return model.heads.fused_logits(task.head, out.fused)  # (B, C)


def task_loss(task: Task, logits: Tensor, batch: Batch) -> Tensor:
    """The reference loss of `task` (before the loop's loss scaling)."""
    target = batch.target.to(logits.dtype)
    match task.loss:
        case Loss.BCE_SOFT_SCORES:
            # BCE mean x num_answers = per-example sum over answers, mean over the batch
            return F.binary_cross_entropy_with_logits(logits, target) * logits.shape[1]
        case Loss.BCE_REGIONS | Loss.BCE_CANDIDATES:
            mask = batch.target_mask.to(logits.dtype)
            r = min(logits.shape[1], target.shape[1])
            per = F.binary_cross_entropy_with_logits(logits[:, :r], target[:, :r], reduction="none")
            return (per * mask[:, :r]).sum() / logits.shape[0]
        case Loss.BCE_MEAN:
            return F.binary_cross_entropy_with_logits(logits, target)
        case Loss.CE_MULTIPLE_CHOICE:
            return F.cross_entropy(logits, batch.labels)
    raise ValueError(f"no loss for {task.loss}")


def forward_loss(model: MultiTaskViLBERT, task: Task, batch: Batch) -> tuple[Tensor, Tensor]:
    logits = task_logits(model, task, batch)
    return task_loss(task, logits, batch), logits


@torch.no_grad()
def predict(model: MultiTaskViLBERT, task: Task, batch: Batch) -> Tensor:
    return task_logits(model, task, batch)
