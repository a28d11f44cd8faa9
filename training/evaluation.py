"""Evaluate a model on one task's split with the task's official metric."""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from training.datasets import RetrievalEvalDataset, collate
from training.datasets.example import Batch
from training.metrics import (
    MetricSum,
    RetrievalScoreMatrix,
    labelled_rows,
    recall_at_k,
    task_metric,
    two_stage_recall,
    vqa_exact_accuracy,
)
from training.step import remap_task_ids, task_logits
from vilbert.heads import MultiTaskViLBERT
from vilbert.tasks import Readout, Task

NO_EXAMPLES, NO_LABELS = "no examples", "no labels"


@torch.no_grad()
def evaluate_task(
    model: MultiTaskViLBERT,
    task: Task,
    dataset,
    batch_size: int = 64,
    max_examples: int | None = None,
    progress: bool = False,
    token_map: dict[int, int] | None = None,
    rerank_ks: tuple[int, ...] = (10, 20, 50, 100),
    predictions: list[tuple[str, int]] | None = None,
) -> dict[str, float]:
    """Returns {"score": main metric in [0, 100], "examples": n, "labelled": n with a ground truth};
    answer-vocabulary tasks (VQA, VG QA, GQA) add "exact" (`training.metrics.vqa_exact_accuracy`,
    in [0, 100]) beside the soft score; retrieval test adds R@1/5/10.

    "score" is 0 where nothing could be scored: `split_status` says whether the split had no
    examples or no labels (e.g. VQA test2015), which callers report instead of a number.
    `predictions`, when given, receives (example id, argmax answer index) per evaluated example of
    an answer-vocabulary task (the evaluation servers' result files are built from them).

    Retrieval with a model that has the pre-filter adds `prefilter_R@k` (the dual encoder alone)
    and `two_stage_k{K}_R@k` for each K of `rerank_ks` below the image count (pre-filter top K,
    re-ranked by the trunk: see `training.metrics.two_stage_recall`).
    """
    was_training = model.training
    n = len(dataset) if max_examples is None else min(len(dataset), max_examples)
    if isinstance(dataset, RetrievalEvalDataset):
        # Items are (caption, chunk of images); `max_examples` caps the captions, never the images.
        captions, images = dataset.score_shape
        captions = captions if max_examples is None else min(captions, max_examples)
        batch_size, n = 1, captions * len(dataset.chunks)  # each item already holds a chunk of images
        matrix = RetrievalScoreMatrix(captions, images)
        dual = _DualEmbeddings(model, captions, images) if getattr(model, "prefilter", None) else None
    if n == 0:
        return {"score": 0.0, "examples": 0.0, "labelled": 0.0}
    model.eval()
    vocab = task.readout is Readout.ANSWER_VOCAB
    total, exact, labelled = MetricSum(), MetricSum(), 0
    steps = range(0, n, batch_size)
    try:  # a missing feature file surfaces here, on the first read; the model leaves eval mode anyway
        for start in tqdm(steps, desc=f"eval {task.slug}", disable=not progress, leave=False):
            batch = collate([dataset[i] for i in range(start, min(n, start + batch_size))])
            batch = remap_task_ids(batch, token_map)
            logits = task_logits(model, task, batch)
            if isinstance(dataset, RetrievalEvalDataset):
                matrix.add(batch, logits)
                if dual is not None:
                    dual.add(batch)
                continue
            total = total + task_metric(task, logits, batch)
            labelled += labelled_rows(batch)
            if vocab:
                exact = exact + vqa_exact_accuracy(logits, batch.target)
            if vocab and predictions is not None:
                predictions.extend(zip(batch.example_ids, logits.argmax(dim=-1).tolist(), strict=True))
    finally:
        model.train(was_training)
    if isinstance(dataset, RetrievalEvalDataset):
        gt = dataset.gt_image[:captions]
        recall = matrix.result(gt)
        out = {"score": recall["R@1"], **recall, "examples": float(captions), "labelled": float(captions)}
        if dual is not None:
            prefilter = dual.scores()
            out |= {f"prefilter_{k}": v for k, v in recall_at_k(prefilter, gt).items() if k.startswith("R@")}
            for k in (k for k in rerank_ks if k < images):
                two = two_stage_recall(matrix.scores, prefilter, gt, k)
                out |= {f"two_stage_k{k}_{name}": v for name, v in two.items() if name.startswith("R@")}
        return out
    out = {"score": 100.0 * total.value, "examples": float(total.count), "labelled": float(labelled)}
    return out | ({"exact": 100.0 * exact.value} if vocab else {})


def skip_reason(exc: BaseException) -> str:
    """One line saying why a task could not be evaluated (missing file, unknown split, missing image)."""
    from vilbert.cli import describe, one_line

    return one_line(exc.args[0] if isinstance(exc, KeyError) and exc.args else describe(exc))


def split_status(result: dict[str, float]) -> str | None:
    """Why an `evaluate_task` result has no score (`NO_EXAMPLES`, `NO_LABELS`), or None when it has one."""
    if not result.get("examples"):
        return NO_EXAMPLES
    if not result.get("labelled", result["examples"]):
        return NO_LABELS
    return None


class _DualEmbeddings:
    """Pre-filter embeddings of a retrieval evaluation: one per caption and one per image."""

    def __init__(self, model: MultiTaskViLBERT, captions: int, images: int) -> None:
        self.model = model
        dim = model.config.prefilter_dim
        self.captions = np.full((captions, dim), np.nan, np.float32)
        self.images = np.full((images, dim), np.nan, np.float32)

    def add(self, batch: Batch) -> None:
        head, trunk = self.model.require_prefilter(), self.model.trunk
        for row, meta in enumerate(batch.meta):
            caption, images = int(meta["caption_index"]), list(meta["image_indices"])  # type: ignore[arg-type]
            first = row * batch.pairs_per_example  # every pair of an item shares its caption
            if np.isnan(self.captions[caption, 0]):
                sl = slice(first, first + 1)
                prefix = trunk.encode_text_prefix(
                    batch.input_ids[sl], batch.attention_mask[sl], batch.task_ids[sl]
                )
                self.captions[caption] = (
                    head.caption_embedding(prefix.states, prefix.mask)[0].float().cpu().numpy()
                )
            if np.isnan(self.images[images, 0]).any():
                rows = slice(first, first + len(images))
                emb = head.image_embedding(
                    batch.region_features[rows], batch.region_locations[rows], batch.region_mask[rows]
                )
                self.images[images] = emb.float().cpu().numpy()

    def scores(self) -> np.ndarray:
        """(captions, images) cosine similarities."""
        return self.captions @ self.images.T
