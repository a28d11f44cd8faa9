"""Where each task's files live: the reference `datasets/` tree, declared once per task.

Paths follow the reference release (`vilbert_tasks.yml` and its dataset loaders), including its
spellings (`cocoRetreival`, `Flikr30kID`), so a user's reference tree loads unchanged.  A data root
may be the `datasets/` directory itself or a directory containing it
(the synthetic world writes `D/datasets/...` next to `D/images/`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

from vilbert.tasks import Task, get_task


class Source(enum.StrEnum):
    """Annotation format a task's files are in (one reader per format)."""

    VQA_V2 = "vqa_v2"
    GQA = "gqa"
    VG_QA = "vg_qa"
    RETRIEVAL = "retrieval"
    REFER = "refer"
    VISUAL7W = "visual7w"
    GUESSWHAT = "guesswhat"
    NLVR2 = "nlvr2"
    SNLI_VE = "snli_ve"


class IdSpace(enum.StrEnum):
    """Image id namespaces of the clean split (`{space}_test_ids.npy`)."""

    COCO = "coco"
    GENOME = "genome"
    FLICKR = "flickr"


COCO_LMDB = "coco/features_100/COCO_trainval_resnext152_faster_rcnn_genome.lmdb"
COCO_TEST_LMDB = "coco/features_100/COCO_test_resnext152_faster_rcnn_genome.lmdb"
FLICKR_LMDB = "flickr30k/flickr30k_resnext152_faster_rcnn_genome.lmdb"


@dataclass(frozen=True)
class TaskLayout:
    """Files of one task, relative to the `datasets/` directory."""

    slug: str
    source: Source
    dataroot: str  # the task's directory (holds `cache/`)
    features: str  # detection LMDB
    gt_features: str = ""  # GT-box LMDB (grounding/pointing), merged after the detections
    test_features: str = ""  # a separate LMDB for the test split (VQA test2015)
    id_space: IdSpace | None = None  # which *_test_ids.npy cleans this task (None: not cleaned)
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"  # "" where a dataset has no test split
    refer_name: str = ""  # RefCOCO family: refcoco | refcoco+ | refcocog
    refer_split_by: str = ""  # unc | umd
    clean_all_splits: bool = False  # VG QA cleans val too; the others clean splits named "train..."
    retrieval_id_field: str = "id"  # retrieval jsonlines: COCO reads `id`, Flickr the stem of `img_path`

    def dir(self, datasets_dir: Path) -> Path:
        return datasets_dir / self.dataroot

    def cache(self, datasets_dir: Path) -> Path:
        return datasets_dir / self.dataroot / "cache"

    def cleans(self, split: str) -> bool:
        """Whether the clean split filters this split: splits named "train..." (VG QA: every split)."""
        return self.id_space is not None and (self.clean_all_splits or "train" in split)

    def test_ids_file(self, datasets_dir: Path) -> Path | None:
        if self.id_space is None:
            return None
        return self.cache(datasets_dir) / f"{self.id_space}_test_ids.npy"


def _refer(slug: str, name: str, split_by: str) -> TaskLayout:
    sub = f"refcoco/{name}_{split_by}"
    return TaskLayout(
        slug,
        Source.REFER,
        "refcoco",
        features=f"{sub}/{name}_resnext152_faster_rcnn_genome.lmdb",
        gt_features=f"{sub}/{name}_gt_resnext152_faster_rcnn_genome.lmdb",
        id_space=IdSpace.COCO,
        refer_name=name,
        refer_split_by=split_by,
    )


LAYOUTS: dict[str, TaskLayout] = {
    layout.slug: layout
    for layout in (
        TaskLayout(
            "vqa",
            Source.VQA_V2,
            "VQA",
            COCO_LMDB,
            test_features=COCO_TEST_LMDB,
            id_space=IdSpace.COCO,
            train_split="trainval",
            val_split="minval",
        ),
        TaskLayout(
            "vg_qa",
            Source.VG_QA,
            "visual_genome",
            "visual_genome/vg_resnext152_faster_rcnn_genome.lmdb",
            id_space=IdSpace.GENOME,
            clean_all_splits=True,
            test_split="",
        ),  # VG QA reports on (cleaned) val
        TaskLayout(
            "gqa",
            Source.GQA,
            "gqa",
            "gqa/gqa_resnext152_faster_rcnn_genome.lmdb",
            id_space=IdSpace.GENOME,
            train_split="trainval",
            val_split="minval",
        ),
        TaskLayout("retrieval_coco", Source.RETRIEVAL, "cocoRetreival", COCO_LMDB, id_space=IdSpace.COCO),
        TaskLayout(
            "retrieval_flickr30k",
            Source.RETRIEVAL,
            "flickr30k",
            FLICKR_LMDB,
            id_space=IdSpace.FLICKR,
            retrieval_id_field="img_path",
        ),
        _refer("refcoco", "refcoco", "unc"),
        _refer("refcoco_plus", "refcoco+", "unc"),
        _refer("refcocog", "refcocog", "umd"),
        TaskLayout(
            "visual7w",
            Source.VISUAL7W,
            "visual7w",
            "visual7w/visual7w_resnext152_faster_rcnn_genome.lmdb",
            gt_features="visual7w/visual7w_gt_resnext152_faster_rcnn_genome.lmdb",
            id_space=IdSpace.GENOME,
        ),
        TaskLayout(
            "guesswhat",
            Source.GUESSWHAT,
            "guesswhat",
            COCO_LMDB,
            gt_features="guesswhat/guesswhat_gt_resnext152_faster_rcnn_genome.lmdb",
            id_space=IdSpace.COCO,
            val_split="valid",
        ),
        TaskLayout(
            "nlvr2", Source.NLVR2, "nlvr2", "nlvr2/nlvr2_resnext152_faster_rcnn_genome.lmdb", val_split="dev"
        ),
        TaskLayout(
            "snli_ve",
            Source.SNLI_VE,
            "visual_entailment",
            FLICKR_LMDB,
            id_space=IdSpace.FLICKR,
            val_split="dev",
        ),
    )
}


def get_layout(task: Task | str | int) -> TaskLayout:
    slug = task.slug if isinstance(task, Task) else get_task(task).slug
    return LAYOUTS[slug]


def datasets_dir(data_root: str | Path) -> Path:
    """The reference `datasets/` directory under `data_root` (or `data_root` itself)."""
    root = Path(data_root)
    if (root / "datasets").is_dir():
        return root / "datasets"
    if not root.is_dir():
        raise FileNotFoundError(f"data root not found: {root}")
    return root


# Official Visual Genome image metadata; maps VG ids to COCO / Flickr ids (used by the clean split).
VG_IMAGE_DATA = "visual_genome/image_data.json"
