"""Task loaders for the twelve datasets in their official formats, sharing one example format.

`build_dataset(task, data_root, split)` picks the family loader from the task table; every loader
yields `Example`s and `collate` batches them for the trunk.  Layouts (which file is where) are in
`layout.py`, reference constants in `config.py`.
"""

from __future__ import annotations

from pathlib import Path

from training.datasets.base import TaskDataset
from training.datasets.config import LoaderConfig
from training.datasets.example import Batch, Example, collate
from training.datasets.grounding import GroundingDataset
from training.datasets.layout import LAYOUTS, TaskLayout, datasets_dir, get_layout
from training.datasets.qa import QADataset
from training.datasets.retrieval import RetrievalDataset, RetrievalEvalDataset
from training.datasets.verification import VerificationDataset
from vilbert.tasks import Family, Task, get_task
from vilbert.tokenizer import WordPieceTokenizer

__all__ = [
    "LAYOUTS",
    "Batch",
    "Example",
    "GroundingDataset",
    "LoaderConfig",
    "QADataset",
    "RetrievalDataset",
    "RetrievalEvalDataset",
    "TaskDataset",
    "TaskLayout",
    "VerificationDataset",
    "build_dataset",
    "collate",
    "datasets_dir",
    "get_layout",
    "split_names",
]


def split_names(task: Task | str | int) -> dict[str, str]:
    """The reference train / val / test split names of a task (e.g. VQA: trainval / minval / test)."""
    layout = get_layout(task)
    return {"train": layout.train_split, "val": layout.val_split, "test": layout.test_split}


def build_dataset(
    task: Task | str | int,
    data_root: str | Path,
    split: str,
    *,
    config: LoaderConfig | None = None,
    tokenizer: WordPieceTokenizer | None = None,
) -> TaskDataset:
    """The loader of `task` on `split`.  Retrieval `test` is the caption x image evaluation set."""
    task = task if isinstance(task, Task) else get_task(task)
    kwargs = {"config": config, "tokenizer": tokenizer}
    match task.family:
        case Family.QA:
            return QADataset(task, data_root, split, **kwargs)
        case Family.RETRIEVAL:
            cls = RetrievalEvalDataset if split == "test" else RetrievalDataset
            return cls(task, data_root, split, **kwargs)
        case Family.GROUNDING:
            return GroundingDataset(task, data_root, split, **kwargs)
        case Family.VERIFICATION:
            return VerificationDataset(task, data_root, split, **kwargs)
    raise ValueError(f"no loader for family {task.family}")
