"""Loader settings: every constant the reference hard-codes, as a field defaulting to its value.

Real data needs no settings file.  A data root may carry `loader_config.json` (the synthetic world
writes one, because its splits are smaller than the reference's fixed tail sizes); its keys
override these defaults field by field, and unknown keys are an error rather than a silent no-op.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

CONFIG_FILE = "loader_config.json"


@dataclass(frozen=True)
class LoaderConfig:
    """Constants the reference hard-codes, as parameters defaulting to its values (real data still loads)."""

    vqa_num_answers: int | None = 3129  # VQA / VG QA answer head width; None: the vocabulary's size
    gqa_num_answers: int | None = 1533  # GQA answer head width
    minval_size: int = 3000  # VQA and GQA: the last N val questions form `minval`, the rest joins trainval
    vg_val_size: int = 5000  # VG QA: the last N questions (by id) are `val`
    # Grounding/pointing: rows of the detection block (global + 100 boxes) before the GT candidates.
    # The reference indexes candidates from row 101; None uses each image's own detection count.
    detection_rows: int | None = 101
    iou_threshold: float = 0.5  # training IoU targets below this are zeroed; metric needs IoU > this
    retrieval_eval_images: int = 1000  # images of a retrieval evaluation set (1K test)
    retrieval_eval_chunk: int = 500  # images scored per evaluation item (the reference's two halves)
    retrieval_options: int = 4  # multiple-choice width of retrieval training
    hard_negative_pool: int = 100  # neighbours per image in the hard-negative pool (self included)
    clean: bool = True  # drop training images listed in *_test_ids.npy (paper Sec. 2.2)
    region_cache_mb: float = (
        256  # processed regions kept per feature store and process (reference: in_memory)
    )
    seed: int = 0

    @classmethod
    def for_data_root(cls, data_root: str | Path | None = None, **overrides: object) -> LoaderConfig:
        """Defaults, then `loader_config.json` (if any), then `overrides`.

        `data_root` may be the data root or its `datasets/` directory: the file is looked for in the
        directory itself, in its `datasets/` child, then in its parent.
        """
        cfg = cls()
        if data_root is not None:
            root = Path(data_root)
            for candidate in (root / CONFIG_FILE, root / "datasets" / CONFIG_FILE, root.parent / CONFIG_FILE):
                if candidate.is_file():
                    cfg = cfg.updated(**json.loads(candidate.read_text()))
                    break
        return cfg.updated(**overrides)

    def updated(self, **values: object) -> LoaderConfig:
        known = {f.name for f in fields(self)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown loader settings {unknown}; known: {sorted(known)}")
        return replace(self, **values)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)
