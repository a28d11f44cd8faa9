"""Caption-based image retrieval loaders: COCO and Flickr30k (the reference's `retreival_dataset.py`).

Training is a 4-way multiple choice per caption, the positive always option 0:
(I, C), (I, caption of a random other image), (random other image, C), and a hard negative
(I, caption of an image drawn from I's nearest neighbours in the hard-negative pool).  Validation
uses the same 4 options with a random caption in place of the hard one.  Evaluation scores every
caption against every image of the evaluation set (R@1/5/10).

`python -m training.datasets.retrieval --data-root D` (re)builds `hard_negative.pkl` and
`hard_negative_cleaned.pkl` from the stored region features, as the reference's `generate_pool.py`.
"""

from __future__ import annotations

import argparse
import logging
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.datasets.base import TaskDataset, load_test_ids, pairs_text, read_jsonl, read_pickle
from training.datasets.config import LoaderConfig
from training.datasets.example import Example
from training.datasets.layout import LAYOUTS, Source, TaskLayout, datasets_dir
from training.datasets.regions import RegionSource, plain_rows, stack_pairs
from vilbert.tasks import Family, tasks_of_family

log = logging.getLogger(__name__)

TRAIN_FILE = "all_data_final_train_2014.jsonline"
TEST_FILE = "all_data_final_test_set0_2014.jsonline"  # the 1K test fold; the reference validates on it
SPLIT_FILES = {"train": TRAIN_FILE, "val": TEST_FILE, "test": TEST_FILE}


@dataclass
class CaptionEntry:
    image_index: int  # position of the image in `dataset.images`
    caption: str


def image_id_of(line: dict, layout: TaskLayout) -> str:
    """COCO lines are keyed by `id`; Flickr lines by the stem of `img_path` ("1000092795.jpg")."""
    if layout.retrieval_id_field == "img_path":
        return str(int(Path(line["img_path"]).stem))
    return str(int(line[layout.retrieval_id_field]))


def read_retrieval_file(path: Path, layout: TaskLayout) -> list[tuple[str, list[str]]]:
    return [(image_id_of(line, layout), list(line["sentences"])) for line in read_jsonl(path)]


class _RetrievalBase(TaskDataset[CaptionEntry]):
    cleans_in_reader = True

    def read_entries(self) -> list[CaptionEntry]:
        if self.split not in SPLIT_FILES:
            raise ValueError(f"{self.task.slug} has no split {self.split!r} ({', '.join(SPLIT_FILES)})")
        lines = read_retrieval_file(self.dataroot / SPLIT_FILES[self.split], self.layout)
        self.num_before_cleaning = sum(len(s) for _, s in lines)
        if self.config.clean and self.layout.cleans(self.split):
            # Cleaning drops whole images here, so `images` and the pool's image list stay aligned.
            test_ids = load_test_ids(self.layout.test_ids_file(self.root))  # type: ignore[arg-type]
            self.removed_images = {int(i) for i, _ in lines if int(i) in test_ids}
            lines = [(i, s) for i, s in lines if int(i) not in test_ids]
        self.images: list[str] = [i for i, _ in lines]
        self.captions_of: list[list[int]] = []
        entries: list[CaptionEntry] = []
        for idx, (_, sentences) in enumerate(lines):
            self.captions_of.append(list(range(len(entries), len(entries) + len(sentences))))
            entries.extend(CaptionEntry(idx, s) for s in sentences)
        return entries

    def entry_text(self, entry: CaptionEntry) -> str:
        return entry.caption

    def entry_image_ids(self, entry: CaptionEntry) -> list[str]:
        return [self.images[entry.image_index]]

    def _rows(self, image_index: int):
        return plain_rows(self.features.get(self.images[image_index]), self.task.max_regions)


class RetrievalDataset(_RetrievalBase):
    """4-way multiple choice per caption (train: hard negatives; val: random negatives)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.config.retrieval_options != 4:
            raise ValueError("retrieval training is defined for 4 options (positive + 3 kinds of negative)")
        if len(self.images) < 2:
            raise ValueError(f"{self.task.slug}/{self.split}: retrieval needs at least 2 images")
        self._pool: np.ndarray | None = None  # loaded on first use: counting entries needs no features
        self.epoch = 0

    @property
    def pool(self) -> np.ndarray | None:
        """Hard-negative neighbours per image position (train only; validation uses random negatives)."""
        if self.split == "train" and self._pool is None:
            self._pool = self._load_pool()
        return self._pool

    def _load_pool(self) -> np.ndarray:
        name = "hard_negative_cleaned.pkl" if self.config.clean else "hard_negative.pkl"
        path = self.dataroot / name
        if not path.is_file():
            raise FileNotFoundError(
                f"hard-negative pool not found: {path}; build it with "
                f"`python -m training.datasets.retrieval --data-root {self.data_root}`"
            )
        pool = read_pickle(path, numpy=True)  # the reference pool holds numpy arrays
        listed = [str(int(i)) for i in pool["train_image_list"]]
        row_of = {img: r for r, img in enumerate(listed)}
        missing = [i for i in self.images if i not in row_of]
        if missing:
            raise ValueError(
                f"{path}: {len(missing)} training images are not in the pool (e.g. {missing[0]})"
            )
        table = np.asarray(pool["train_hard_pool"], dtype=np.int64)
        # Re-index the pool onto this dataset's image positions (identity when the lists match).
        position = {img: k for k, img in enumerate(self.images)}
        lookup = np.array([position.get(img, -1) for img in listed], dtype=np.int64)
        return lookup[table[[row_of[i] for i in self.images]]]

    def _rng(self, index: int) -> np.random.Generator:
        if self.split != "train":
            # Validation negatives are fixed per item so validation accuracy (the DSG signal) is stable.
            return np.random.default_rng([self.config.seed, index])
        # Training: fresh negatives every epoch, but a pure function of (seed, epoch, item), so a
        # resumed run draws exactly the negatives the uninterrupted run drew (no hidden RNG state).
        return np.random.default_rng([self.config.seed, self.epoch, index])

    def set_epoch(self, epoch: int) -> None:
        """Called by the training stream at each task epoch (new negatives per epoch)."""
        self.epoch = epoch

    def _other_image(self, rng: np.random.Generator, image_index: int) -> int:
        other = int(rng.integers(len(self.images) - 1))
        return other + 1 if other >= image_index else other

    def _caption_of(self, rng: np.random.Generator, image_index: int) -> int:
        caps = self.captions_of[image_index]
        return caps[int(rng.integers(len(caps)))]

    def _hard_image(self, rng: np.random.Generator, image_index: int) -> int:
        pool = self.pool
        assert pool is not None
        row = pool[image_index]
        candidates = row[(row >= 0) & (row != image_index)]
        if len(candidates) == 0:
            return self._other_image(rng, image_index)
        # Column 0 is the image itself; j is uniform over the other neighbours, as the reference.
        return int(candidates[int(rng.integers(len(candidates)))])

    def make_example(self, index: int, entry: CaptionEntry) -> Example:
        rng = self._rng(index)
        img = entry.image_index
        random_caption = self._caption_of(rng, self._other_image(rng, img))
        random_image = self._other_image(rng, img)
        hard = self._hard_image(rng, img) if self.pool is not None else self._other_image(rng, img)
        options = [
            (img, index),
            (img, random_caption),
            (random_image, index),
            (img, self._caption_of(rng, hard)),
        ]
        ids, attn = pairs_text([self.tokens(c) for _, c in options])
        feats, locs, boxes, mask = stack_pairs([self._rows(i) for i, _ in options])
        target = np.zeros(len(options), np.float32)
        target[0] = 1.0
        return Example(
            task_id=self.task.task_id,
            example_id=str(index),
            image_ids=tuple(self.images[i] for i, _ in options),
            input_ids=ids,
            attention_mask=attn,
            region_features=feats,
            region_locations=locs,
            region_mask=mask,
            region_boxes=boxes,
            target=target,
            label=0,
            text=entry.caption,
            meta={"options": [(self.images[i], c) for i, c in options]},
        )


class RetrievalEvalDataset(_RetrievalBase):
    """Caption -> image evaluation: item k scores caption k // chunks against image chunk k % chunks.

    Each item holds one caption paired with up to `retrieval_eval_chunk` images (P pairs), so the
    whole score matrix (captions x images) is filled by running every item once; `meta` says where.

    Captions are listed round-robin over the images (the first caption of every image, then the
    second of every image, ...), so a capped evaluation (`max_examples` / `final_eval_max_captions`
    scores the first N captions) spreads over N images instead of taking all five captions of the
    first N / 5 images.  The full score matrix's recall does not depend on the order.
    """

    def read_entries(self) -> list[CaptionEntry]:
        entries = super().read_entries()
        rounds = max((len(c) for c in self.captions_of), default=0)
        order = [c[j] for j in range(rounds) for c in self.captions_of if j < len(c)]
        position = {old: new for new, old in enumerate(order)}
        self.captions_of = [[position[k] for k in c] for c in self.captions_of]
        return [entries[k] for k in order]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        limit = self.config.retrieval_eval_images
        if len(self.images) > limit:
            raise ValueError(
                f"{self.task.slug}/{self.split}: {len(self.images)} images but the evaluation set is "
                f"{limit} (retrieval_eval_images)"
            )
        chunk = self.config.retrieval_eval_chunk
        n = len(self.images)
        self.chunks = [list(range(s, min(s + chunk, n))) for s in range(0, n, chunk)]
        self.gt_image = np.array([e.image_index for e in self.entries], np.int64)

    def __len__(self) -> int:
        return len(self.entries) * len(self.chunks)

    def __getitem__(self, index: int) -> Example:
        caption, chunk = divmod(index, len(self.chunks))
        image_indices = self.chunks[chunk]
        tokens = self.tokens(caption)
        ids, attn = pairs_text([tokens] * len(image_indices))
        feats, locs, boxes, mask = stack_pairs([self._rows(i) for i in image_indices])
        target = (np.array(image_indices) == self.entries[caption].image_index).astype(np.float32)
        return Example(
            task_id=self.task.task_id,
            example_id=f"{caption}:{chunk}",
            image_ids=tuple(self.images[i] for i in image_indices),
            input_ids=ids,
            attention_mask=attn,
            region_features=feats,
            region_locations=locs,
            region_mask=mask,
            region_boxes=boxes,
            target=target,
            label=int(np.argmax(target)) if target.any() else -1,
            text=self.entries[caption].caption,
            meta={"caption_index": caption, "image_indices": image_indices},
        )

    @property
    def score_shape(self) -> tuple[int, int]:
        return len(self.entries), len(self.images)


# -- hard-negative pool -------------------------------------------------------------------------------


def build_hard_negative_pool(source: RegionSource, image_ids: Sequence[str], k: int = 100) -> dict:
    """Nearest images by Euclidean distance of mean region features (sklearn BallTree), self first.

    Returns the reference pickle's dict: `train_image_list` (ids, in order) and `train_hard_pool`
    (num_images x min(k, num_images) indices into that list).
    """
    from sklearn.neighbors import BallTree

    descriptors = np.stack([source.mean_feature(i) for i in image_ids]).astype(np.float64)
    k = min(k, len(image_ids))
    _, neighbours = BallTree(descriptors).query(descriptors, k=k)
    neighbours = neighbours.astype(np.int64)
    for row, own in enumerate(range(len(image_ids))):
        # Duplicate descriptors can put a twin before the image itself; the reference puts self first.
        hits = np.flatnonzero(neighbours[row] == own)
        if hits.size == 0:
            neighbours[row] = np.concatenate([[own], neighbours[row][:-1]])
        elif hits[0] != 0:
            r = neighbours[row]
            neighbours[row] = np.concatenate([[own], np.delete(r, hits[0])])
    ids = [int(i) for i in image_ids]
    return {"train_image_list": ids, "train_hard_pool": neighbours}


def retrieval_slugs() -> tuple[str, ...]:
    """The retrieval tasks of the task table (the ones with hard-negative pools)."""
    return tuple(t.slug for t in tasks_of_family(Family.RETRIEVAL))


def write_pools(
    data_root: str | Path,
    slugs: Sequence[str] | None = None,
    k: int | None = None,
) -> dict[str, tuple[int, int]]:
    """Write `hard_negative.pkl` (all training images) and, when the clean-split ids exist,
    `hard_negative_cleaned.pkl` (the cleaned list) for each retrieval task (default: all of them).
    Returns image counts."""
    slugs = retrieval_slugs() if slugs is None else slugs
    root = datasets_dir(data_root)
    cfg = LoaderConfig.for_data_root(data_root)
    k = cfg.hard_negative_pool if k is None else k
    counts = {}
    for slug in slugs:
        layout = LAYOUTS[slug]
        assert layout.source == Source.RETRIEVAL
        lines = read_retrieval_file(layout.dir(root) / TRAIN_FILE, layout)
        images = [i for i, _ in lines]
        source = RegionSource(root / layout.features, cache_mb=0)
        pool = build_hard_negative_pool(source, images, k)
        with (layout.dir(root) / "hard_negative.pkl").open("wb") as f:
            pickle.dump(pool, f, protocol=4)
        cleaned_count = -1
        ids_file = layout.test_ids_file(root)
        if ids_file is not None and ids_file.is_file():
            test_ids = load_test_ids(ids_file)
            cleaned = [i for i in images if int(i) not in test_ids]
            with (layout.dir(root) / "hard_negative_cleaned.pkl").open("wb") as f:
                pickle.dump(build_hard_negative_pool(source, cleaned, k), f, protocol=4)
            cleaned_count = len(cleaned)
        source.store.close()
        counts[slug] = (len(images), cleaned_count)
    return counts


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the retrieval hard-negative pools from features.")
    parser.add_argument("--data-root", required=True, type=Path)
    parser.add_argument("--task", action="append", choices=retrieval_slugs())
    parser.add_argument("--k", type=int, default=None, help="neighbours per image (reference 100)")
    args = parser.parse_args(argv)
    counts = write_pools(args.data_root, args.task, args.k)
    for slug, (n, cleaned) in counts.items():
        extra = f", cleaned pool on {cleaned}" if cleaned >= 0 else " (no clean-split ids yet)"
        print(f"{slug}: pool on {n} training images{extra}")


if __name__ == "__main__":
    main()
