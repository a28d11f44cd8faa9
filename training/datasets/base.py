"""What every task loader shares: paths, text encoding, cleaning, lazily opened feature stores.

A family loader (qa, retrieval, grounding, verification) reads its annotation files into a list of
entries in `__init__` (cheap; no features needed, so the clean split can count them), and turns one
entry into an `Example` in `__getitem__`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
from torch.utils.data import Dataset

from training.datasets.config import LoaderConfig
from training.datasets.example import Example
from training.datasets.layout import TaskLayout, datasets_dir, get_layout
from training.datasets.regions import RegionSource
from vilbert.tasks import Task, get_task
from vilbert.tokenizer import WordPieceTokenizer, load_tokenizer

log = logging.getLogger(__name__)
E = TypeVar("E")


def load_test_ids(path: Path) -> set[int]:
    """Image ids of a `*_test_ids.npy` file."""
    if not path.is_file():
        raise FileNotFoundError(
            f"clean-split id list not found: {path}; run `python -m training.clean_split --data-root D` "
            "or load with clean=False"
        )
    return {int(v) for v in np.load(path, allow_pickle=False).reshape(-1).tolist()}


def as_int_id(image_id: object) -> int | None:
    """The integer form of an image id, or None for ids with no integer form (GQA `n…` ids)."""
    try:
        return int(str(image_id))
    except ValueError:
        return None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    import json

    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]


def read_pickle(path: Path, *, numpy: bool = False) -> Any:
    """A reference cache pickle, read with the restricted unpickler (`vilbert.safe_pickle`): plain
    lists, dicts, strings and numbers only (plus numpy arrays with `numpy=True`); no code runs."""
    from vilbert.safe_pickle import load_pickle

    return load_pickle(path, numpy=numpy)


class TaskDataset(Dataset[Example], Generic[E]):
    """Base of the family loaders: entries of type E, one `Example` per item."""

    cleans_in_reader = False  # True where the reader must drop test images itself (retrieval)

    def __init__(
        self,
        task: Task | str | int,
        data_root: str | Path,
        split: str,
        *,
        config: LoaderConfig | None = None,
        tokenizer: WordPieceTokenizer | None = None,
    ) -> None:
        self.task = task if isinstance(task, Task) else get_task(task)
        self.layout: TaskLayout = get_layout(self.task)
        self.data_root = Path(data_root)
        self.root = datasets_dir(data_root)
        self.split = split
        self.config = config if config is not None else LoaderConfig.for_data_root(data_root)
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer()
        self._sources: dict[str, RegionSource] = {}
        self.removed_images: set[int] = set()  # test images the clean split dropped from this split
        self.num_before_cleaning: int | None = None
        entries = self.read_entries()
        if self.num_before_cleaning is None:
            self.num_before_cleaning = len(entries)
        if self.config.clean and self.layout.cleans(split) and not self.cleans_in_reader:
            entries = self._clean(entries)
        self.entries: list[E] = entries
        self._pieces = self.tokenizer.wordpieces_batch([self.entry_text(e) for e in self.entries])

    # -- what a family defines -------------------------------------------------------------------
    def read_entries(self) -> list[E]:
        raise NotImplementedError

    def entry_text(self, entry: E) -> str:
        raise NotImplementedError

    def entry_image_ids(self, entry: E) -> Sequence[str]:
        """Feature keys of the images an entry uses (cleaning compares their integer form)."""
        raise NotImplementedError

    def make_example(self, index: int, entry: E) -> Example:
        raise NotImplementedError

    def entry_clean_ids(self, entry: E) -> list[int]:
        """Integer image ids the clean split compares (ids without an integer form never match)."""
        return [i for i in (as_int_id(k) for k in self.entry_image_ids(entry)) if i is not None]

    # -- shared machinery ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> Example:
        return self.make_example(index, self.entries[index])

    def path(self, relative: str) -> Path:
        return self.root / relative

    @property
    def dataroot(self) -> Path:
        return self.layout.dir(self.root)

    @property
    def cache_dir(self) -> Path:
        return self.layout.cache(self.root)

    def source(self, relative: str) -> RegionSource:
        """A region source, opened on first use (so entries can be counted without features)."""
        src = self._sources.get(relative)
        if src is None:
            src = self._sources[relative] = RegionSource(self.path(relative), self.config.region_cache_mb)
        return src

    @property
    def features(self) -> RegionSource:
        return self.source(self.layout.features)

    @property
    def gt_features(self) -> RegionSource:
        return self.source(self.layout.gt_features)

    def tokens(self, index: int) -> np.ndarray:
        """`[CLS] pieces [SEP]` of entry `index`, cut to the task's text budget, as (T,) int64."""
        return np.asarray(self.tokenizer.wrap(self._pieces[index], self.task.max_text_tokens), np.int64)

    def image_ids(self) -> list[str]:
        """Distinct image keys used by the (cleaned) entries, in first-use order."""
        seen: dict[str, None] = {}
        for e in self.entries:
            for i in self.entry_image_ids(e):
                seen.setdefault(i, None)
        return list(seen)

    def _clean(self, entries: list[E]) -> list[E]:
        ids_file = self.layout.test_ids_file(self.root)
        assert ids_file is not None
        test_ids = load_test_ids(ids_file)
        kept = []
        for e in entries:
            hits = [i for i in self.entry_clean_ids(e) if i in test_ids]
            if hits:
                self.removed_images.update(hits)
            else:
                kept.append(e)
        log.info(
            "%s/%s: clean split removed %d of %d entries (%d images)",
            self.task.slug,
            self.split,
            len(entries) - len(kept),
            len(entries),
            len(self.removed_images),
        )
        return kept


def single_pair_text(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(1, T) ids and mask for a one-pair example."""
    ids = tokens[None, :]
    return ids, np.ones_like(ids)


def pairs_text(token_rows: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(P, T) ids and mask, each row right-padded with 0 to the longest of the P rows."""
    T = max(len(t) for t in token_rows)
    ids = np.zeros((len(token_rows), T), np.int64)
    mask = np.zeros((len(token_rows), T), np.int64)
    for i, t in enumerate(token_rows):
        ids[i, : len(t)] = t
        mask[i, : len(t)] = 1
    return ids, mask


LoaderFactory = Callable[..., TaskDataset[Any]]
