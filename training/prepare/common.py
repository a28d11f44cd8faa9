"""What every dataset format shares when `training.prepare` turns it into a data root.

Image files are matched to the dataset's image ids (the keys the loaders look features up by),
region features are extracted with `regions.extract`'s functions into the exact LMDB a loader
reads, the held-out images are chosen, and the root's `loader_config.json` and manifest are
written atomically (`vilbert.io`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from regions.extract import ID_MODES, extract_directory, image_id_for, list_images, read_id_map
from regions.extractor import RegionExtractor
from regions.store import FeatureStore
from training.datasets.config import CONFIG_FILE
from vilbert.cli import UserError
from vilbert.io import atomic_write_bytes, atomic_write_text, make_dirs

T = TypeVar("T")
MANIFEST = "prepare.json"  # what `training.prepare` wrote into a data root, per task
AUTO_IDS = "auto"
DEFAULT_HELD_OUT_FRACTION = 0.1  # of the images, when no held-out split is given
ID_MODE_WORDS = {
    "number": "the trailing number of the file name",
    "stem": "the file name without its extension",
    "relpath": "the path under --images without its extension",
    "map": "the --id-map file",
}


def singular(what: str) -> str:
    """`questions` -> `question`, `hypotheses` -> `hypothesis`."""
    return what.removesuffix("es") + "is" if what.endswith("ses") else what.removesuffix("s")


def count(n: int, what: str) -> str:
    """`1,234 questions`, `1 question`: thousands separated, `what` (a plural) singular for one."""
    return f"{n:,} {singular(what) if n == 1 else what}"


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Image files -> dataset image ids
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainDevSources:
    """A format of a train file and an optional dev file (NLVR2, SNLI-VE jsonl), images in a folder."""

    train: Path
    images: Path
    dev: Path | None = None
    held_out_split: str | None = None  # "dev": the --dev file is the held-out set
    held_out: int | float | None = None  # pairs (NLVR2) or images (SNLI-VE) held out: a count or a share
    seed: int = 0
    ids: str = "auto"
    id_map: Path | None = None


@dataclass
class ImageIndex:
    """Which file holds each image id the dataset uses, and how the ids were derived."""

    files: dict[str, Path]  # image id -> file, for the ids the dataset uses that were found
    mode: str  # one of ID_MODES, or "map" for --id-map
    missing: list[str] = field(default_factory=list)  # ids the dataset uses without a file

    def describe(self, root: Path | None = None) -> str:
        """`image id = the trailing number of the file name (--ids number), e.g. 7/COCO_...07.jpg -> 7`"""
        flag = f"--ids {self.mode}" if self.mode in ID_MODES else "--id-map"
        text = f"image id = {ID_MODE_WORDS[self.mode]} ({flag})"
        if self.files:
            image_id, path = next(iter(self.files.items()))
            shown = path.relative_to(root).as_posix() if root is not None else path.name
            text += f", e.g. {shown} -> {image_id}"
        return text


def _ids_by_mode(files: Sequence[Path], root: Path, mode: str) -> dict[str, list[Path]]:
    """id -> files under `root` by one of ID_MODES (files without such an id are left out)."""
    out: dict[str, list[Path]] = {}
    for path in files:
        try:
            image_id = image_id_for(path, root, mode)
        except ValueError:
            continue
        out.setdefault(image_id, []).append(path)
    return out


COCO_NAMING = "name files by their id (COCO_train2014_000000000042.jpg or 42.jpg for id 42)"


def index_images(
    images_dir: Path,
    wanted: Iterable[str],
    ids: str = AUTO_IDS,
    id_map: Path | None = None,
    naming: str = COCO_NAMING,
) -> ImageIndex:
    """Match the dataset's image ids (`wanted`) to the files under `images_dir`.

    `ids`: one of ID_MODES, or "auto" (the mode that finds the most wanted ids; `number` on a tie,
    as COCO names files).  `id_map`: a JSON {relative path: id} or a COCO-style `images` list.
    Two files with one wanted id is an error naming both; a wanted id without a file is listed in
    `missing` (and none found at all is an error that says how files must be named: `naming`).
    """
    if not images_dir.is_dir():
        raise UserError(f"--images {images_dir}: no such directory")
    wanted = sorted(set(wanted))
    files = list_images(images_dir)
    if not files:
        raise UserError(f"--images {images_dir}: no image files (.jpg .png .webp .bmp .gif) under it")
    if id_map is not None:
        candidates: dict[str, dict[str, list[Path]]] = {"map": {}}
        for rel, image_id in read_id_map(id_map).items():
            candidates["map"].setdefault(image_id, []).append(images_dir / rel)
    else:
        modes = ID_MODES if ids == AUTO_IDS else (ids,)
        candidates = {m: _ids_by_mode(files, images_dir, m) for m in modes}
    # The mode that finds the most wanted ids; on a tie `number` (the COCO convention), then by name.
    order = sorted(candidates, key=lambda m: (-sum(i in candidates[m] for i in wanted), m != "number"))
    mode = order[0]
    found = candidates[mode]
    index = ImageIndex({}, mode)
    for image_id in wanted:
        paths = found.get(image_id, [])
        if len(paths) > 1:
            raise UserError(
                f"image id {image_id} matches {paths[0]} and {paths[1]} ({index.describe()}); "
                "keep one, or pass --ids relpath / --id-map"
            )
        if paths:
            index.files[image_id] = paths[0]
        else:
            index.missing.append(image_id)
    if not index.files:
        example = files[0].relative_to(images_dir).as_posix()
        read = next((i for i, paths in found.items() if files[0] in paths), None)
        as_id = (
            f", which {'--id-map' if mode == 'map' else f'--ids {mode}'} reads as {read!r}" if read else ""
        )
        raise UserError(
            f"none of the {count(len(wanted), 'image ids')} in the annotation files (e.g. "
            f"{', '.join(sorted_ids(wanted)[:3])}) names a file under {images_dir} (e.g. {example}{as_id}); "
            f"{naming}, or pass --ids / --id-map FILE"
        )
    return index


# ---------------------------------------------------------------------------------------------
# Held-out images
# ---------------------------------------------------------------------------------------------


def parse_held_out(text: str, flag: str = "--held-out-images") -> int | float:
    """`--held-out-images` (`--held-out-pairs`): a count (`500`) or a share of them (`10%`)."""
    text = text.strip()
    try:
        if text.endswith("%"):
            share = float(text[:-1]) / 100
            if not 0 < share < 1:
                raise ValueError
            return share
        n = int(text)
        if n < 1:
            raise ValueError
        return n
    except ValueError:
        raise UserError(f"{flag} {text!r}: give a count (500) or a share (10%)") from None


def choose_held_out(
    image_ids: Iterable[str],
    amount: int | float,
    seed: int,
    unit: str = "images",
    flag: str = "--held-out-images",
) -> set[str]:
    """`amount` images (a count, or a share of them), drawn reproducibly from `seed`.

    `unit` / `flag` name what is drawn in the error (NLVR2 draws image pairs: `pairs`, `--held-out-pairs`).
    """
    pool = sorted(set(image_ids), key=_id_order)
    n = amount if isinstance(amount, int) else max(1, round(amount * len(pool)))
    if n >= len(pool):
        shown = f"{100 * amount:g}%" if isinstance(amount, float) else str(amount)
        raise UserError(
            f"{flag} {shown}: holds out {count(n, unit)} of {len(pool):,}; nothing would be left to train on"
        )
    picked = np.random.default_rng(seed).choice(len(pool), size=n, replace=False)
    return {pool[i] for i in picked}


def _id_order(image_id: str) -> tuple[int, int | str]:
    return (0, int(image_id)) if image_id.isdigit() else (1, image_id)


def sorted_ids(ids: Iterable[str]) -> list[str]:
    """Image ids in numeric order where they are numbers."""
    return sorted(ids, key=_id_order)


@dataclass
class ItemSplit(Generic[T]):
    """Which items (expressions, statements, hypotheses) train and which are held out, never both:
    an item belongs to one group (an image, an NLVR2 image pair), and no group is on both sides."""

    train: list[T]
    held_out: list[T]
    group: Callable[[T], str]  # the image / pair an item is about
    policy: str  # how the held-out items were chosen, in words
    unit: str = "images"  # what a group is, plural
    items: str = "examples"  # what an item is, plural
    size: Callable[[T], int] = lambda item: 1  # examples an item makes (a ref: its sentences)
    left_out: dict[str, int] = field(default_factory=dict)  # reason -> items dropped

    def groups(self, which: str) -> set[str]:
        return {self.group(item) for item in getattr(self, which)}

    def examples(self, which: str) -> int:
        return sum(self.size(item) for item in getattr(self, which))

    def summary(self) -> str:
        """`train: 12 images / 36 expressions; held out for evaluation: 4 images / 12 expressions`"""
        return (
            f"train: {count(len(self.groups('train')), self.unit)} / "
            f"{count(self.examples('train'), self.items)}; held out for evaluation: "
            f"{count(len(self.groups('held_out')), self.unit)} / "
            f"{count(self.examples('held_out'), self.items)}"
        )

    def keep(self, wanted: Callable[[T], bool], reason: str) -> None:
        """Leave out the items `wanted` refuses (their examples counted under `reason`)."""
        before = self.examples("train") + self.examples("held_out")
        self.train = [item for item in self.train if wanted(item)]
        self.held_out = [item for item in self.held_out if wanted(item)]
        dropped = before - self.examples("train") - self.examples("held_out")
        if dropped:
            self.left_out[reason] = self.left_out.get(reason, 0) + dropped

    def require_both_sides(self) -> None:
        if not self.train or not self.held_out:
            raise UserError(
                f"nothing left to {'train on' if not self.train else 'evaluate'}: {self.summary()}"
            )


def split_items(
    train: Sequence[T],
    held_out: Sequence[T] | None,
    amount: int | float | None,
    seed: int,
    group: Callable[[T], str],
    *,
    given: str,
    unit: str = "images",
    items: str = "examples",
    size: Callable[[T], int] = lambda item: 1,
    flag: str = "--held-out-images",
) -> ItemSplit[T]:
    """The held-out items: `held_out` as given (the dataset's own held-out split, described by
    `given`), or `amount` groups drawn with `seed` from every item (default 10 %, also when
    `held_out` is None) with all their items.  A training item of a held-out group is left out
    of training, so no group is on both sides."""
    if held_out is not None and amount is None:
        held, pool, policy = list(held_out), list(train), given
    else:
        pool = list(train) + list(held_out or [])
        share = amount if amount is not None else DEFAULT_HELD_OUT_FRACTION
        chosen = choose_held_out((group(item) for item in pool), share, seed, unit, flag)
        held = [item for item in pool if group(item) in chosen]
        pool = [item for item in pool if group(item) not in chosen]
        policy = (
            f"{count(len(chosen), unit)} drawn with seed {seed}, every {singular(items)} on them ({flag})"
        )
    held_groups = {group(item) for item in held}
    kept = [item for item in pool if group(item) not in held_groups]
    split = ItemSplit(kept, held, group, policy, unit, items, size)
    dropped = sum(size(item) for item in pool) - sum(size(item) for item in kept)
    if dropped:
        split.left_out[f"training {items} on held-out {unit}"] = dropped
    return split


def log_split(split: ItemSplit[Any], log: Callable[[str], None]) -> None:
    """The split in numbers (printed before any feature is extracted)."""
    log(split.summary())
    split.require_both_sides()
    log(f"  held out: {split.policy}; no {singular(split.items)} and no {singular(split.unit)} is in both")
    for reason, n in split.left_out.items():
        log(f"  left out: {reason}: {n:,}")


# ---------------------------------------------------------------------------------------------
# Reading the user's files
# ---------------------------------------------------------------------------------------------


def read_json_file(path: Path, flag: str) -> Any:
    if not path.is_file():
        raise UserError(f"{flag} {path}: no such file")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{flag} {path}: not JSON ({exc})") from None


def read_jsonl_file(path: Path, flag: str, what: str) -> list[dict[str, Any]]:
    """A JSON-lines file (one object per line; `what` names the format in errors)."""
    if not path.is_file():
        raise UserError(f"{flag} {path}: no such file")
    lines: list[dict[str, Any]] = []
    try:
        text = path.read_text()
    except UnicodeDecodeError as exc:
        raise UserError(f"{flag} {path}: not text ({exc})") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(
                f"{flag} {path}: line {number} is not JSON ({exc.msg}); {what} is one JSON object per line"
            ) from None
        if not isinstance(item, dict):
            raise UserError(f"{flag} {path}: line {number} is not a JSON object ({what})")
        lines.append(item)
    if not lines:
        raise UserError(f"{flag} {path}: no records ({what})")
    return lines


def require_keys(item: Mapping[str, Any], keys: Sequence[str], where: str, fmt: str) -> None:
    missing = [k for k in keys if k not in item]
    if missing:
        raise UserError(
            f"{where}: an entry lacks {', '.join(missing)} ({fmt} format): {json.dumps(item)[:120]}"
        )


def warn_missing_images(index: ImageIndex, dropped: int, items: str) -> None:
    if index.missing:
        warn(
            f"{count(len(index.missing), 'images')} of the annotation files have no file under --images "
            f"(e.g. {', '.join(sorted_ids(index.missing)[:5])}): their {count(dropped, items)} are left out"
        )


# ---------------------------------------------------------------------------------------------
# Region features
# ---------------------------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def extract_features(
    extractor: RegionExtractor,
    index: ImageIndex,
    images_dir: Path,
    lmdb: Path,
    fingerprint: Mapping[str, object],
    *,
    batch_size: int = 2,
    progress: bool = True,
    boxes: Mapping[str, np.ndarray] | None = None,
) -> set[str]:
    """Region features of every indexed image into `lmdb`, keyed by its dataset image id.

    `boxes` (image id -> (G, 4) x1,y1,x2,y2 pixels): a GT-box LMDB instead, the features at exactly
    those boxes in that order (the reference's `extract_features_from_gt.py`); the boxes are part
    of the fingerprint, so changed annotations re-extract.
    Resumable: records already there are kept when `fingerprint` (the detector) is the one they
    were extracted with (`lmdb/../<name>.prepare.json`), otherwise the LMDB starts afresh.
    Returns the ids that have a record afterwards (an undecodable image has none).
    """
    if boxes is not None:
        digest = hashlib.sha256()
        for image_id in sorted(index.files):
            digest.update(image_id.encode() + b"\0")
            digest.update(np.ascontiguousarray(boxes[image_id], dtype=np.float32).tobytes())
        fingerprint = {**fingerprint, "gt_boxes_sha256": digest.hexdigest()}
    stamp = lmdb.with_name(lmdb.name + ".prepare.json")
    previous = json.loads(stamp.read_text()) if stamp.is_file() else None
    if lmdb.exists() and previous != dict(fingerprint):
        shutil.rmtree(lmdb)  # another detector's features must not mix with these
    make_dirs(lmdb.parent)
    atomic_write_text(stamp, json.dumps(dict(fingerprint), indent=2) + "\n")
    id_map = {path.relative_to(images_dir).as_posix(): image_id for image_id, path in index.files.items()}
    stats = extract_directory(
        extractor,
        images_dir,
        lmdb,
        id_map=id_map,
        boxes=None if boxes is None else {i: boxes[i] for i in index.files},
        batch_size=batch_size,
        progress=progress,
    )
    for line in stats.failed[:10]:
        warn(f"undecodable image left out: {line}")
    with FeatureStore(lmdb) as store:
        return {image_id for image_id in index.files if image_id in store}


# ---------------------------------------------------------------------------------------------
# Files of the data root
# ---------------------------------------------------------------------------------------------


def write_json(path: Path, obj: object) -> None:
    atomic_write_text(path, json.dumps(obj) + "\n")


def write_pickle(path: Path, obj: object) -> None:
    """A reference cache pickle (protocol 4, plain lists/dicts/numbers: the restricted unpickler reads it)."""
    import pickle

    atomic_write_bytes(path, pickle.dumps(obj, protocol=4))


def write_test_ids(path: Path, image_ids: Iterable[str]) -> None:
    """A clean-split id list (`*_test_ids.npy`): the integer ids among `image_ids`."""
    import io

    ints = sorted({int(i) for i in image_ids if i.isdigit()})
    buffer = io.BytesIO()
    np.save(buffer, np.array(ints, dtype=np.int64))
    atomic_write_bytes(path, buffer.getvalue())


def update_loader_config(root: Path, values: Mapping[str, object]) -> dict[str, object]:
    """Merge `values` into `root/loader_config.json` (other tasks' settings are kept)."""
    path = root / CONFIG_FILE
    current = json.loads(path.read_text()) if path.is_file() else {}
    current.update(values)
    atomic_write_text(path, json.dumps(current, indent=2) + "\n")
    return current


def write_jsonl(path: Path, lines: Iterable[Mapping[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(line) + "\n" for line in lines))


def verify_loaders(root: Path, task: str, log: Callable[[str], None] = print) -> dict[str, int]:
    """Load the prepared training and held-out splits with the task's own loader, as `training.fit`
    will: both load, share no image, and every image key they read (GT boxes too, where training
    reads them) is in the LMDB.  Returns examples per split."""
    from training.datasets import build_dataset, split_names

    names = split_names(task)
    loaded = {side: build_dataset(task, root, names[side]) for side in ("train", "val")}
    train_images, held_images = (set(loaded[s].image_ids()) for s in ("train", "val"))
    if train_images & held_images:
        raise RuntimeError(f"{task}: images in both splits: {sorted(train_images & held_images)[:3]}")
    for side, ds in loaded.items():
        sources = [ds.features]
        if ds.layout.gt_features and side == "train":
            sources.append(ds.gt_features)
        for source in sources:
            absent = [key for key in ds.image_ids() if key not in source]
            if absent:
                raise RuntimeError(
                    f"{task} {ds.split}: {len(absent)} image keys not in {source.path}: {absent[:3]}"
                )
        for source in ds._sources.values():
            source.store.close()
    counts = {loaded[s].split: len(loaded[s]) for s in ("train", "val")}
    log(
        f"loader check: {task} reads {', '.join(f'{split} {n:,} examples' for split, n in counts.items())}; "
        "no image in both"
    )
    return counts


def update_manifest(root: Path, task: str, record: Mapping[str, object]) -> None:
    """`root/prepare.json`: per task, what was prepared from which files, and the split."""
    path = root / MANIFEST
    current = json.loads(path.read_text()) if path.is_file() else {}
    current[task] = dict(record)
    atomic_write_text(path, json.dumps(current, indent=2) + "\n")
