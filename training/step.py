"""One task's forward pass and loss on a collated `Batch`.

Logit conventions (shared with training/metrics.py): QA (B, A); retrieval (B, P) one logit per
option/image; grounding (B, R); pointing (B, K) candidate logits; NLVR2 (B, 2); SNLI-VE (B, 3).
Losses follow the reference's scaling (mean BCE x answers / regions / candidates, plain mean BCE for
NLVR2 and SNLI-VE, cross-entropy over the retrieval options); the loop multiplies them by the task's
loss scale (task lr / base lr).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from training.datasets.example import Batch
from training.metrics import gather_candidates
from vilbert.contract import HEAD_IO
from vilbert.heads import MultiTaskViLBERT
from vilbert.modeling import TextPrefix
from vilbert.tasks import Head, Loss, Readout, Task


@dataclass(frozen=True)
class PrefilterObjective:
    """The retrieval pre-filter's extra loss, added to the match task's loss (see `prefilter_loss`)."""

    weight: float = 1.0
    temperature: float = 0.05
    detach_text: bool = False  # True: the loss trains the pre-filter head only, not the text prefix
    only: bool = False  # True: skip the match task's own loss (and its trunk pass): pre-filter only


def remap_task_ids(batch: Batch, token_map: dict[int, int] | None) -> Batch:
    """Point each row's task token at another row of the embedding (the per-head token ablation)."""
    if token_map:
        batch.task_ids = batch.task_ids.apply_(lambda t: token_map.get(t, t))
    return batch


def task_logits(
    model: MultiTaskViLBERT, task: Task, batch: Batch, prefix: TextPrefix | None = None
) -> Tensor:
    """Trunk over the N = B x P rows of the batch, then only this task's head.

    `prefix`: the rows' text-prefix states when the caller already computed them (the pre-filter
    objective reads them too).
    """
    if prefix is None:
        out = model.trunk(**batch.trunk_inputs())
    else:
        out = model.trunk.encode_joint(
            prefix, batch.region_features, batch.region_locations, batch.region_mask
        )
    b, p = batch.batch_size, batch.pairs_per_example
    # Rows per example are its images (pair: regrouped into (B, 2) logits) or its options (match).
    logits = model.head_logits(task.head, out, batch.region_mask, p)
    if HEAD_IO[task.head].scalar:
        return logits.view(b, p)  # one score per (text, image) row: (B, P)
    if task.readout is Readout.BEST_CANDIDATE:  # (N, R) region logits -> (B, K) candidates
        assert batch.candidates is not None
        return gather_candidates(logits, batch.candidates)
    return logits  # (B, C), or (N, R) region logits


def task_loss(task: Task, logits: Tensor, batch: Batch) -> Tensor:
    """The reference loss of `task` (before the loop's loss scaling), in fp32 whatever the forward's
    precision (under bf16 autocast the logits arrive in bf16)."""
    logits = logits.float()
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


def prefilter_loss(
    model: MultiTaskViLBERT, batch: Batch, captions: TextPrefix, objective: PrefilterObjective
) -> tuple[Tensor, Tensor]:
    """In-batch InfoNCE of the pre-filter, both directions, on a retrieval training batch.

    Captions: each example's own caption (`captions`: the text-prefix states of rows b*P, option 0
    being the positive pair).  Images: every distinct image of the batch's rows (positives and the
    options' negatives).  A caption's positive is its example's image; other captions of that same
    image are masked out of the image->text softmax rather than counted as negatives.
    Returns (loss, caption->image similarity logits (B, U)).
    """
    head = model.require_prefilter()
    b, p = batch.batch_size, batch.pairs_per_example
    rows = torch.arange(b, device=batch.input_ids.device) * p
    states = captions.states.detach() if objective.detach_text else captions.states
    text = head.caption_embedding(states, captions.mask)  # (B, D)
    row_ids = [ids[i] for ids in batch.image_ids for i in range(p)]  # image id of trunk row r
    first_row: dict[str, int] = {}
    for r, image_id in enumerate(row_ids):
        first_row.setdefault(image_id, r)
    unique = list(first_row)
    pick = torch.tensor(list(first_row.values()), device=rows.device)
    images = head.image_embedding(
        batch.region_features[pick], batch.region_locations[pick], batch.region_mask[pick]
    )  # (U, D)
    positive = [batch.image_ids[i][0] for i in range(b)]
    target = torch.tensor([unique.index(i) for i in positive], device=rows.device)
    text, images = text.float(), images.float()
    logits = text @ images.T / objective.temperature
    text_to_image = F.cross_entropy(logits, target)
    same = torch.tensor([[a == c for c in positive] for a in positive], device=rows.device)
    same &= ~torch.eye(b, dtype=torch.bool, device=rows.device)
    image_logits = (images[target] @ text.T / objective.temperature).masked_fill(same, float("-inf"))
    image_to_text = F.cross_entropy(image_logits, torch.arange(b, device=rows.device))
    return (text_to_image + image_to_text) / 2, logits


def forward_loss(
    model: MultiTaskViLBERT, task: Task, batch: Batch, prefilter: PrefilterObjective | None = None
) -> tuple[Tensor, Tensor]:
    """The task's loss (plus, for match tasks with `prefilter`, the pre-filter's weighted loss).

    `prefilter.only`: the pre-filter's loss alone, from the captions' text prefix (B rows, not the
    B x P trunk rows) and the images' region features; logits are then its caption->image similarities.
    """
    if prefilter is None or task.head is not Head.MATCH:
        logits = task_logits(model, task, batch)
        return task_loss(task, logits, batch), logits
    rows = torch.arange(batch.batch_size, device=batch.input_ids.device) * batch.pairs_per_example
    if prefilter.only:
        captions = model.trunk.encode_text_prefix(
            batch.input_ids[rows], batch.attention_mask[rows], batch.task_ids[rows]
        )
        loss, similarities = prefilter_loss(model, batch, captions, prefilter)
        return prefilter.weight * loss, similarities
    prefix = model.trunk.encode_text_prefix(batch.input_ids, batch.attention_mask, batch.task_ids)
    logits = task_logits(model, task, batch, prefix)
    extra, _ = prefilter_loss(model, batch, TextPrefix(prefix.states[rows], prefix.mask[rows]), prefilter)
    return task_loss(task, logits, batch) + prefilter.weight * extra, logits


@torch.no_grad()
def predict(model: MultiTaskViLBERT, task: Task, batch: Batch) -> Tensor:
    return task_logits(model, task, batch)
