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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from regions.extract import ID_MODES, extract_directory, image_id_for, list_images, read_id_map
from regions.extractor import RegionExtractor
from regions.store import FeatureStore
from training.datasets.config import CONFIG_FILE
from vilbert.cli import UserError
from vilbert.io import atomic_write_bytes, atomic_write_text, make_dirs

MANIFEST = "prepare.json"  # what `training.prepare` wrote into a data root, per task
AUTO_IDS = "auto"
DEFAULT_HELD_OUT_FRACTION = 0.1  # of the images, when no held-out split is given
ID_MODE_WORDS = {
    "number": "the trailing number of the file name",
    "stem": "the file name without its extension",
    "relpath": "the path under --images without its extension",
    "map": "the --id-map file",
}


def count(n: int, what: str) -> str:
    """`1,234 questions`, `1 question`: thousands separated, `what` (a plural in -s) singular for one."""
    return f"{n:,} {what.removesuffix('s') if n == 1 else what}"


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Image files -> dataset image ids
# ---------------------------------------------------------------------------------------------


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


def index_images(
    images_dir: Path, wanted: Iterable[str], ids: str = AUTO_IDS, id_map: Path | None = None
) -> ImageIndex:
    """Match the dataset's image ids (`wanted`) to the files under `images_dir`.

    `ids`: one of ID_MODES, or "auto" (the mode that finds the most wanted ids; `number` on a tie,
    as COCO names files).  `id_map`: a JSON {relative path: id} or a COCO-style `images` list.
    Two files with one wanted id is an error naming both; a wanted id without a file is listed in
    `missing` (and none found at all is an error that says how files must be named).
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
            "name files by their id (COCO_train2014_000000000042.jpg or 42.jpg for id 42), "
            "or pass --ids / --id-map FILE"
        )
    return index


# ---------------------------------------------------------------------------------------------
# Held-out images
# ---------------------------------------------------------------------------------------------


def parse_held_out(text: str) -> int | float:
    """`--held-out-images`: a count (`500`) or a share of the images (`10%`)."""
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
        raise UserError(f"--held-out-images {text!r}: give a count (500) or a share (10%)") from None


def choose_held_out(image_ids: Iterable[str], amount: int | float, seed: int) -> set[str]:
    """`amount` images (a count, or a share of them), drawn reproducibly from `seed`."""
    pool = sorted(set(image_ids), key=_id_order)
    n = amount if isinstance(amount, int) else max(1, round(amount * len(pool)))
    if n >= len(pool):
        raise UserError(
            f"--held-out-images {amount}: holds out {count(n, 'images')} of {len(pool):,}; "
            "nothing would be left to train on"
        )
    picked = np.random.default_rng(seed).choice(len(pool), size=n, replace=False)
    return {pool[i] for i in picked}


def _id_order(image_id: str) -> tuple[int, int | str]:
    return (0, int(image_id)) if image_id.isdigit() else (1, image_id)


def sorted_ids(ids: Iterable[str]) -> list[str]:
    """Image ids in numeric order where they are numbers."""
    return sorted(ids, key=_id_order)


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
) -> set[str]:
    """Region features of every indexed image into `lmdb`, keyed by its dataset image id.

    Resumable: records already there are kept when `fingerprint` (the detector) is the one they
    were extracted with (`lmdb/../<name>.prepare.json`), otherwise the LMDB starts afresh.
    Returns the ids that have a record afterwards (an undecodable image has none).
    """
    stamp = lmdb.with_name(lmdb.name + ".prepare.json")
    previous = json.loads(stamp.read_text()) if stamp.is_file() else None
    if lmdb.exists() and previous != dict(fingerprint):
        shutil.rmtree(lmdb)  # another detector's features must not mix with these
    make_dirs(lmdb.parent)
    atomic_write_text(stamp, json.dumps(dict(fingerprint), indent=2) + "\n")
    id_map = {path.relative_to(images_dir).as_posix(): image_id for image_id, path in index.files.items()}
    stats = extract_directory(
        extractor, images_dir, lmdb, id_map=id_map, batch_size=batch_size, progress=progress
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


def update_manifest(root: Path, task: str, record: Mapping[str, object]) -> None:
    """`root/prepare.json`: per task, what was prepared from which files, and the split."""
    path = root / MANIFEST
    current = json.loads(path.read_text()) if path.is_file() else {}
    current[task] = dict(record)
    atomic_write_text(path, json.dumps(current, indent=2) + "\n")
