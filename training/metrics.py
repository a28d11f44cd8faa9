"""Evaluation metrics of the twelve tasks, as the reference's evaluation computes them.

Logit conventions (what the heads hand in, per example): QA (B, A) answer logits; retrieval
multiple choice (B, P) one logit per option; grounding (B, R) one logit per region; pointing
(B, K) logits of the candidates (`gather_candidates` takes them from per-region logits);
NLVR2 / SNLI-VE (B, C) class logits.  Each function returns a `MetricSum` so values can be summed
over batches before dividing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from training.datasets.example import Batch
from vilbert.tasks import Readout, Task

MASKED = -1e9  # stands in for the reference's -10000 on masked positions; far below any real logit


@dataclass
class MetricSum:
    """A running metric: sum of per-example scores and the number of examples."""

    score: float = 0.0
    count: int = 0

    def __add__(self, other: MetricSum) -> MetricSum:
        return MetricSum(self.score + other.score, self.count + other.count)

    @property
    def value(self) -> float:
        return self.score / self.count if self.count else 0.0


def vqa_soft_accuracy(logits: torch.Tensor, target: torch.Tensor) -> MetricSum:
    """Soft score of the argmax answer (VQA accuracy proxy; exact match for one-answer GQA / VG QA)."""
    pred = logits.argmax(dim=-1, keepdim=True)
    return MetricSum(float(target.gather(-1, pred).sum()), int(logits.shape[0]))


def vqa_exact_accuracy(logits: torch.Tensor, target: torch.Tensor) -> MetricSum:
    """Exact accuracy: the argmax answer is the ground truth's most frequent answer.

    "Most frequent" is the answer with the highest soft score in the target (VQA: given by the most
    annotators; answers tied for the most all count); GQA and VG QA have one answer of score 1.0, so
    this is plain exact match there.  A target with no answer in the vocabulary (all zero) counts wrong.
    """
    best = target.amax(dim=-1)
    got = target.gather(-1, logits.argmax(dim=-1, keepdim=True)).squeeze(-1)
    return MetricSum(float(((got == best) & (best > 0)).sum()), int(logits.shape[0]))


def labelled_rows(batch: Batch) -> int:
    """Examples of a batch that carry a ground truth: a non-zero target or a class label >= 0.

    A split where no example does has no labels (VQA test2015's questions come without answers).
    """
    has_target = batch.target.reshape(batch.batch_size, -1).abs().sum(dim=-1) > 0
    return int((has_target | (batch.labels >= 0)).sum())


def classification_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> MetricSum:
    """Argmax equals the label (NLVR2, SNLI-VE, retrieval 4-way); label -1 ("-") always counts wrong."""
    return MetricSum(float((logits.argmax(dim=-1) == labels).sum()), int(logits.shape[0]))


def grounding_accuracy(
    logits: torch.Tensor, region_mask: torch.Tensor, iou: torch.Tensor, threshold: float = 0.5
) -> MetricSum:
    """The highest-scoring real region is correct when its IoU with the referent is strictly > 0.5."""
    masked = logits.masked_fill(region_mask == 0, MASKED)
    best = masked.argmax(dim=-1, keepdim=True)
    return MetricSum(float((iou.gather(-1, best) > threshold).sum()), int(logits.shape[0]))


def gather_candidates(region_logits: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """(B, K) candidate logits from (B, R) per-region logits."""
    return region_logits.gather(-1, candidates)


def pointing_accuracy(logits: torch.Tensor, target: torch.Tensor, candidate_mask: torch.Tensor) -> MetricSum:
    """Argmax over the real candidates equals the argmax of the IoU target."""
    pred = logits.masked_fill(~candidate_mask, MASKED).argmax(dim=-1)
    gold = target.masked_fill(~candidate_mask, -1.0).argmax(dim=-1)
    return MetricSum(float((pred == gold).sum()), int(logits.shape[0]))


def recall_at_k(
    scores: np.ndarray | torch.Tensor, gt_image: np.ndarray | torch.Tensor, ks: tuple[int, ...] = (1, 5, 10)
) -> dict[str, float]:
    """Caption -> image retrieval over a (captions, images) score matrix (reference `eval_retrieval.py`).

    Rank = 0-based position of the ground-truth image in the descending sort of its row;
    R@K = 100 x fraction of captions with rank < K; median rank = floor(median + 1); mean rank = mean + 1.
    """
    s = torch.as_tensor(np.asarray(scores), dtype=torch.float64)
    gt = torch.as_tensor(np.asarray(gt_image), dtype=torch.int64)
    gt_score = s.gather(1, gt[:, None])
    # Rank counts the images scoring strictly higher (ties favour the ground truth, as a stable sort).
    ranks = (s > gt_score).sum(dim=1).numpy()
    out = {f"R@{k}": 100.0 * float((ranks < k).mean()) for k in ks}
    out["median_rank"] = float(np.floor(np.median(ranks) + 1))
    out["mean_rank"] = float(ranks.mean() + 1)
    return out


def two_stage_recall(
    scores: np.ndarray, prefilter: np.ndarray, gt_image: np.ndarray, k: int, ks: tuple[int, ...] = (1, 5, 10)
) -> dict[str, float]:
    """`recall_at_k` of two-stage search: per caption the pre-filter's top `k` images, re-ranked by
    their cross-encoder `scores`, then the remaining images in pre-filter order.

    The re-ranking scores are the exhaustive matrix's own entries (the cross-encoder is deterministic
    per pair), so no second model pass is needed; `k` >= the number of images gives `recall_at_k(scores)`.
    """
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-np.asarray(prefilter, dtype=np.float64), axis=1, kind="stable")
    composed = np.empty_like(s)
    for i in range(s.shape[0]):
        top, rest = order[i, :k], order[i, k:]
        composed[i, top] = s[i, top]
        composed[i, rest] = s[i, top].min() - 1.0 - np.arange(len(rest))  # below every re-ranked image
    return recall_at_k(composed, gt_image, ks)


class RetrievalScoreMatrix:
    """Collects the per-item logits of a `RetrievalEvalDataset` into its (captions, images) matrix."""

    def __init__(self, num_captions: int, num_images: int) -> None:
        self.scores = np.full((num_captions, num_images), np.nan, dtype=np.float64)

    def add(self, batch: Batch, logits: torch.Tensor) -> None:
        """`logits`: (B, P) match logits, one row per evaluation item of the batch."""
        values = logits.detach().float().cpu().numpy()
        for row, meta in enumerate(batch.meta):
            images = list(meta["image_indices"])  # type: ignore[arg-type]
            self.scores[int(meta["caption_index"]), images] = values[row, : len(images)]  # type: ignore[arg-type]

    def result(self, gt_image: np.ndarray) -> dict[str, float]:
        if np.isnan(self.scores).any():
            raise ValueError("score matrix is incomplete: some caption/image pairs were never scored")
        return recall_at_k(self.scores, gt_image)


def task_metric(task: Task, logits: torch.Tensor, batch: Batch, iou_threshold: float = 0.5) -> MetricSum:
    """The task's validation metric on one batch (`logits` in the conventions above)."""
    match task.readout:
        case Readout.ANSWER_VOCAB:
            return vqa_soft_accuracy(logits, batch.target)
        case Readout.RANK_IMAGES | Readout.LABEL:
            return classification_accuracy(logits, batch.labels)
        case Readout.BEST_REGION:
            assert batch.iou is not None
            mask = batch.region_mask.view(batch.batch_size, -1)
            return grounding_accuracy(logits, mask, batch.iou, iou_threshold)
        case Readout.BEST_CANDIDATE:
            assert batch.candidate_mask is not None
            return pointing_accuracy(logits, batch.target, batch.candidate_mask)
    raise ValueError(f"no metric for readout {task.readout}")
