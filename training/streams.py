"""Deterministic, resumable per-task batch streams.

Each task draws batches from a permutation fixed by (seed, task, task-epoch); its state is just
(epoch, position), so a resumed run draws exactly the batches the uninterrupted run would have,
without pickling data-loader iterators.  Under DDP every rank takes its own stride of the
permutation.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from training.datasets.example import Batch, Example, collate


class TaskStream:
    def __init__(
        self,
        dataset,
        batch_size: int,
        seed: int,
        task_id: int,
        rank: int = 0,
        world: int = 1,
        workers: int = 0,
    ) -> None:
        if len(dataset) == 0:
            raise ValueError(f"task {task_id}: the training set is empty")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed, self.task_id, self.rank, self.world = seed, task_id, rank, world
        self.epoch = 0
        self.position = 0
        self._pool = ThreadPoolExecutor(workers) if workers > 0 else None

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(math.ceil(len(self.dataset) / self.world) / self.batch_size)

    def _order(self) -> np.ndarray:
        perm = np.random.default_rng([self.seed, self.task_id, self.epoch]).permutation(len(self.dataset))
        pad = (-len(perm)) % self.world  # like DistributedSampler: repeat a few so every rank has as many
        perm = np.concatenate([perm, np.resize(perm, pad)]) if pad else perm
        return perm[self.rank :: self.world]

    def next_batch(self) -> Batch:
        order = self._order()
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        idx = order[self.position * self.batch_size : (self.position + 1) * self.batch_size]
        self.position += 1
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        fetch = self.dataset.__getitem__
        examples: list[Example] = list(self._pool.map(fetch, idx) if self._pool else map(fetch, idx))
        return collate(examples)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
