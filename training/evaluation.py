"""Evaluate a model on one task's split with the task's official metric."""

from __future__ import annotations

import torch
from tqdm import tqdm

from training.datasets import RetrievalEvalDataset, collate
from training.metrics import MetricSum, RetrievalScoreMatrix, task_metric
from training.step import remap_task_ids, task_logits
from vilbert.heads import MultiTaskViLBERT
from vilbert.tasks import Task


@torch.no_grad()
def evaluate_task(
    model: MultiTaskViLBERT,
    task: Task,
    dataset,
    batch_size: int = 64,
    max_examples: int | None = None,
    progress: bool = False,
    token_map: dict[int, int] | None = None,
) -> dict[str, float]:
    """Returns {"score": main metric in [0, 100], ...}; retrieval test adds R@1/5/10."""
    was_training = model.training
    model.eval()
    n = len(dataset) if max_examples is None else min(len(dataset), max_examples)
    if isinstance(dataset, RetrievalEvalDataset):
        # Items are (caption, chunk of images); `max_examples` caps the captions, never the images.
        captions, images = dataset.score_shape
        captions = captions if max_examples is None else min(captions, max_examples)
        batch_size, n = 1, captions * len(dataset.chunks)  # each item already holds a chunk of images
        matrix = RetrievalScoreMatrix(captions, images)
    total = MetricSum()
    steps = range(0, n, batch_size)
    for start in tqdm(steps, desc=f"eval {task.slug}", disable=not progress, leave=False):
        batch = collate([dataset[i] for i in range(start, min(n, start + batch_size))])
        batch = remap_task_ids(batch, token_map)
        logits = task_logits(model, task, batch)
        if isinstance(dataset, RetrievalEvalDataset):
            matrix.add(batch, logits)
        else:
            total = total + task_metric(task, logits, batch)
    model.train(was_training)
    if isinstance(dataset, RetrievalEvalDataset):
        recall = matrix.result(dataset.gt_image[:captions])
        return {"score": recall["R@1"], **recall, "examples": float(captions)}
    return {"score": 100.0 * total.value, "examples": float(total.count)}
