"""Extract region features for a directory of images into an LMDB feature store.

    python -m regions.extract --preset P [--weights W] --images DIR --out store.lmdb

Writes the reference LMDB layout through `regions.store` (one pickled record per image plus the
``keys`` list, as reference ``convert_to_lmdb.py`` writes it).  Batched, with a progress bar, and
resumable: ids already in the store are skipped, records are committed every few batches, and an
interrupted run keeps what it committed.

Image ids are explicit, because the loaders look records up by dataset id, not by file name
(COCO ``COCO_train2014_000000000009.jpg`` is image 9; the reference's own extractor used base names
and its released LMDBs must have been built otherwise):

* ``--ids stem`` (default): the file name without its extension;
* ``--ids number``: the trailing integer of the stem, without leading zeros (COCO / Flickr30k / VG);
* ``--ids relpath``: the path relative to DIR without the extension;
* ``--id-map FILE``: a JSON ``{relative path: id}``, or a COCO-style file whose ``images`` list has
  ``file_name`` (relative to DIR) and ``id``; files not in the map are left out (and counted).

GT-box mode (``--boxes FILE``, as the reference ``extract_features_from_gt.py``): the given boxes are
fed as the proposals and all of them are kept, in the given order.  FILE is a JSON
``{image id: [[x1, y1, x2, y2], ...]}`` (``--box-format xywh`` for ``[x, y, w, h]``), or a COCO
instances file (boxes ``[x, y, w, h]``, grouped by ``image_id`` and ordered by annotation id).

Synthetic world (``--jobs D``): fills every LMDB listed in ``D/synthetic/feature_jobs.json`` (written
by ``python -m training.synthetic``) under ``D/datasets/``, with exactly the keys the loaders query:
each image runs the backbone once however many detection and GT-box LMDBs share it; GT-box
LMDBs get features at the listed boxes in the listed order.  Resumable as above; a different detector or a
regenerated world (fingerprint in ``D/synthetic/region_features.json``) starts the LMDBs afresh, so
placeholder or stale records never survive.  Afterwards rebuild the retrieval hard-negative pools
(``python -m training.datasets.retrieval --data-root D``), which depend on the features.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from regions.decode import ImageDecodeError, decode_file
from regions.detector import build_detector
from regions.extractor import ImageRegions, RegionExtractor
from regions.presets import get_preset
from regions.store import FeatureStoreWriter
from regions.weights import load_detector
from vilbert.cli import ArgumentParser, UserError, run

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
ID_MODES = ("stem", "number", "relpath")


@dataclass
class ExtractionStats:
    images_found: int = 0
    extracted: int = 0
    skipped_existing: int = 0
    skipped_unmapped: int = 0  # no id in --id-map, or no boxes in --boxes
    failed: list[str] = field(default_factory=list)  # "path: reason" for undecodable files
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.extracted / self.seconds if self.seconds > 0 else 0.0


def _image_bar(total: int, desc: str, progress: bool) -> tqdm:
    """The progress bar of an extraction run, on stderr (stdout carries the summary)."""
    return tqdm(total=total, desc=desc, unit="img", disable=not progress, file=sys.stderr)


def list_images(root: Path) -> list[Path]:
    """Image files under `root` (recursively), in a stable order."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def image_id_for(path: Path, root: Path, mode: str) -> str:
    """The image id of a file under `root`, by one of ID_MODES."""
    match mode:
        case "stem":
            return path.stem
        case "relpath":
            return path.relative_to(root).with_suffix("").as_posix()
        case "number":
            m = re.search(r"(\d+)$", path.stem)
            if m is None:
                raise ValueError(f"--ids number: {path.name} has no trailing number")
            return str(int(m.group(1)))
    raise ValueError(f"unknown id mode {mode!r}; one of {ID_MODES}")


def read_id_map(path: Path) -> dict[str, str]:
    """relative path -> id, from a plain JSON mapping or a COCO-style ``images`` list."""
    data = json.loads(path.read_text())
    if isinstance(data, dict) and "images" in data:
        return {Path(im["file_name"]).as_posix(): str(im["id"]) for im in data["images"]}
    if isinstance(data, dict):
        return {Path(k).as_posix(): str(v) for k, v in data.items()}
    raise ValueError(f"{path}: expected a JSON object (path -> id) or a COCO-style file with 'images'")


def read_boxes(path: Path, box_format: str = "xyxy") -> dict[str, np.ndarray]:
    """image id -> (G, 4) x1y1x2y2 float32 boxes, in the order the file gives them."""
    data = json.loads(path.read_text())
    out: dict[str, list[list[float]]] = {}
    if isinstance(data, dict) and "annotations" in data:
        for ann in sorted(data["annotations"], key=lambda a: a["id"]):
            x, y, w, h = ann["bbox"]
            out.setdefault(str(ann["image_id"]), []).append([x, y, x + w, y + h])
    elif isinstance(data, dict):
        for image_id, boxes in data.items():
            rows = [list(map(float, b)) for b in boxes]
            if box_format == "xywh":
                rows = [[x, y, x + w, y + h] for x, y, w, h in rows]
            elif box_format != "xyxy":
                raise ValueError(f"unknown box format {box_format!r}")
            out[str(image_id)] = rows
    else:
        raise ValueError(f"{path}: expected a JSON object (id -> boxes) or a COCO instances file")
    return {k: np.asarray(v, dtype=np.float32).reshape(-1, 4) for k, v in out.items()}


def resolve_detector(preset: str | None, weights: Path | None) -> tuple[RegionExtractor, bool]:
    """(extractor, random_weights) for the CLI's --preset / --weights."""
    if weights is not None:
        if not weights.is_file():
            raise UserError(f"--weights {weights}: no such file (python -m regions.train writes one)")
        # safetensors weights carry their preset JSON; a .pth defaults to vg-x152-fpn.
        return RegionExtractor(load_detector(weights, preset)), False
    if preset is None:
        raise UserError("pass --weights (a trained or imported detector) or --preset NAME")
    try:
        chosen = get_preset(preset)
    except KeyError as exc:
        raise UserError(f"--preset: {exc.args[0]}") from None
    if chosen.num_classes < 2:  # a trainable preset: its classes come from the data it is trained on
        raise UserError(
            f"preset {chosen.name!r} has no classes until trained: pass --weights with the detector "
            "python -m regions.train wrote (e.g. artifacts/detector/synthetic-detector.safetensors)"
        )
    return RegionExtractor(build_detector(chosen)), True


def extract_directory(
    extractor: RegionExtractor,
    images_dir: Path,
    out: Path,
    *,
    ids: str = "stem",
    id_map: dict[str, str] | None = None,
    boxes: dict[str, np.ndarray] | None = None,
    batch_size: int = 2,
    limit: int | None = None,
    with_cls_prob: bool = False,
    strict: bool = False,
    progress: bool = True,
) -> ExtractionStats:
    """Extract every image under `images_dir` into the store at `out`, skipping ids already there."""
    stats = ExtractionStats()
    files = list_images(images_dir)
    stats.images_found = len(files)
    todo: list[tuple[str, Path]] = []
    seen: dict[str, Path] = {}
    for path in files:
        rel = path.relative_to(images_dir).as_posix()
        if id_map is not None:
            image_id = id_map.get(rel)
            if image_id is None:
                stats.skipped_unmapped += 1
                continue
        else:
            image_id = image_id_for(path, images_dir, ids)
        if image_id in seen:
            raise ValueError(
                f"image id {image_id!r} for both {seen[image_id]} and {path}; choose another --ids"
            )
        seen[image_id] = path
        if boxes is not None and image_id not in boxes:
            stats.skipped_unmapped += 1
            continue
        todo.append((image_id, path))
    if limit is not None:
        todo = todo[:limit]

    extractor.batch_size = batch_size
    t0 = time.perf_counter()
    with FeatureStoreWriter(
        out, feature_dim=extractor.preset.feature_dim, commit_every=4 * batch_size
    ) as writer:
        pending = [(i, p) for i, p in todo if i not in writer]
        stats.skipped_existing = len(todo) - len(pending)
        bar = _image_bar(len(pending), f"extract {extractor.preset.name}", progress)
        for start in range(0, len(pending), batch_size):
            chunk = pending[start : start + batch_size]
            decoded, kept = [], []
            for image_id, path in chunk:
                try:
                    decoded.append(decode_file(str(path)))
                    kept.append(image_id)
                except (ImageDecodeError, OSError) as e:
                    if strict:
                        raise
                    stats.failed.append(f"{path}: {e}")
            if decoded:
                if boxes is None:
                    regions = extractor.extract(decoded)
                else:
                    regions = extractor.extract_at_boxes(decoded, [boxes[i] for i in kept])
                for image_id, r in zip(kept, regions):
                    writer.put(r.to_record(image_id, with_cls_prob=with_cls_prob))
                    stats.extracted += 1
            bar.update(len(chunk))
        bar.close()
    stats.seconds = time.perf_counter() - t0
    return stats


@dataclass
class JobStats:
    records: dict[str, int] = field(default_factory=dict)  # LMDB (relative to D/datasets) -> records
    images_run: int = 0  # images through the detector backbone (each unique image once)
    fresh: bool = False  # the LMDBs were started afresh (new detector or new world)
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _decode_all(data: Path, rels: list[str], failed: list[str]) -> tuple[list, list[int]]:
    """Decoded images and the positions that decoded; failures are recorded, not raised."""
    decoded, ok = [], []
    for i, rel in enumerate(rels):
        try:
            decoded.append(decode_file(str(data / rel)))
            ok.append(i)
        except (ImageDecodeError, OSError) as e:
            failed.append(f"{rel}: {e}")
    return decoded, ok


def _gt_boxes(item: dict) -> np.ndarray:
    return np.asarray(item["gt_boxes"], dtype=np.float32).reshape(-1, 4)


def extract_feature_jobs(
    extractor: RegionExtractor,
    data: Path,
    *,
    detector_id: str,
    batch_size: int = 4,
    with_cls_prob: bool = False,
    progress: bool = True,
) -> JobStats:
    """Fill the synthetic world's feature LMDBs (see the module docstring)."""
    jobs_path = data / "synthetic" / "feature_jobs.json"
    jobs = json.loads(jobs_path.read_text())
    datasets = data / "datasets"
    stats = JobStats()
    fingerprint = {
        "detector": detector_id,
        "preset": extractor.preset.name,
        "feature_dim": extractor.preset.feature_dim,
        "feature_jobs_sha256": _file_sha256(jobs_path),
    }
    meta_path = data / "synthetic" / "region_features.json"
    previous = json.loads(meta_path.read_text()) if meta_path.exists() else None
    if previous != fingerprint:
        # Placeholder features, another detector's or an older world's: none may survive.
        for job in jobs:
            shutil.rmtree(datasets / job["lmdb"], ignore_errors=True)
        stats.fresh = True
    meta_path.write_text(json.dumps(fingerprint, indent=2))  # first, so an interrupted run resumes

    extractor.batch_size = batch_size
    dim = extractor.preset.feature_dim
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        writers = {
            job["lmdb"]: stack.enter_context(FeatureStoreWriter(datasets / job["lmdb"], feature_dim=dim))
            for job in jobs
        }

        def put(lmdb_name: str, key: str, regions: ImageRegions) -> None:
            writers[lmdb_name].put(regions.to_record(key, with_cls_prob=with_cls_prob))
            stats.records[lmdb_name] = stats.records.get(lmdb_name, 0) + 1

        # Per image: the (LMDB, key) records of its detections still missing, and its GT-box records
        # still missing.  An image needing both runs the backbone once (`extract_with_boxes`).
        wanted: dict[str, list[tuple[str, str]]] = {}
        gt_wanted: dict[str, list[tuple[str, dict]]] = {}
        for job in jobs:
            for item in job["items"]:
                if item["key"] in writers[job["lmdb"]]:
                    continue
                if job["kind"] == "gt_boxes":
                    gt_wanted.setdefault(item["image"], []).append((job["lmdb"], item))
                else:
                    wanted.setdefault(item["image"], []).append((job["lmdb"], item["key"]))
        images = list(wanted) + [im for im in gt_wanted if im not in wanted]
        bar = _image_bar(len(images), f"world features ({extractor.preset.name})", progress)
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            decoded, ok = _decode_all(data, chunk, stats.failed)
            names = [chunk[i] for i in ok]
            sets = [[_gt_boxes(item) for _, item in gt_wanted.get(n, [])] for n in names]
            for name, (found, at_boxes) in zip(
                names, extractor.extract_with_boxes(decoded, sets) if decoded else []
            ):
                for lmdb_name, key in wanted.get(name, []):
                    put(lmdb_name, key, found)
                for (lmdb_name, item), regions in zip(gt_wanted.get(name, []), at_boxes):
                    put(lmdb_name, item["key"], regions)
            stats.images_run += len(ok)
            bar.update(len(chunk))
        bar.close()
    stats.seconds = time.perf_counter() - t0
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python -m regions.extract",
        description=__doc__.splitlines()[0],
        epilog="The loaders look a record up by the image_id of the dataset's annotation files, so the "
        "keys must be those ids: for COCO-named files (VQA v2, RefCOCO, GuessWhat) use --ids number. "
        "To turn a dataset in its official format into a data root (features in the LMDB path the "
        "loaders read, answer vocabulary, held-out split) use python -m training.prepare instead "
        "(docs/your-own-data.md).",
    )
    parser.add_argument("--preset", help="preset name (vg-x152-fpn, synthetic) or preset JSON")
    parser.add_argument("--weights", type=Path, help=".safetensors (ours) or maskrcnn-benchmark .pth")
    parser.add_argument("--images", type=Path, help="directory of images (searched recursively)")
    parser.add_argument("--out", type=Path, help="LMDB feature store (created or resumed)")
    parser.add_argument("--jobs", type=Path, metavar="D", help="fill the synthetic world D's feature LMDBs")
    parser.add_argument(
        "--ids",
        choices=ID_MODES,
        default="stem",
        help="how a file's LMDB key (its image id) comes from its name: stem = the name without extension "
        "(default; 42.jpg -> 42), number = the trailing number without leading zeros "
        "(COCO_val2014_000000000042.jpg -> 42, what VQA v2 / COCO image_ids need), relpath = the path "
        "under --images without extension",
    )
    parser.add_argument("--id-map", type=Path, help="JSON path->id, or COCO-style images list")
    parser.add_argument("--boxes", type=Path, help="GT-box mode: JSON id->boxes, or COCO instances file")
    parser.add_argument("--box-format", choices=("xyxy", "xywh"), default="xyxy")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--limit", type=int, help="extract at most this many images")
    parser.add_argument("--with-cls-prob", action="store_true", help="also store the (N, C) class posteriors")
    parser.add_argument("--strict", action="store_true", help="stop at the first undecodable image")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.jobs is None and (args.images is None or args.out is None):
        parser.error("give --images DIR --out STORE, or --jobs D")
    extractor, random_weights = resolve_detector(args.preset, args.weights)
    if random_weights:
        print(
            f"warning: no --weights: {extractor.preset.name} runs with RANDOM weights (shapes/speed only)",
            file=sys.stderr,
        )
    if args.jobs is not None:
        return _main_jobs(args, extractor)
    stats = extract_directory(
        extractor,
        args.images,
        args.out,
        ids=args.ids,
        id_map=read_id_map(args.id_map) if args.id_map else None,
        boxes=read_boxes(args.boxes, args.box_format) if args.boxes else None,
        batch_size=args.batch_size,
        limit=args.limit,
        with_cls_prob=args.with_cls_prob,
        strict=args.strict,
        progress=not args.quiet,
    )
    print(
        f"{args.out}: extracted {stats.extracted} images in {stats.seconds:.1f} s "
        f"({stats.images_per_second:.2f} images/s, preset {extractor.preset.name}, "
        f"threads {torch.get_num_threads()}); {stats.skipped_existing} already there, "
        f"{stats.skipped_unmapped} without id/boxes, {len(stats.failed)} undecodable"
    )
    for line in stats.failed[:20]:
        print(f"  failed: {line}", file=sys.stderr)
    return 1 if stats.failed and args.strict else 0


def _main_jobs(args: argparse.Namespace, extractor: RegionExtractor) -> int:
    detector_id = _file_sha256(args.weights) if args.weights else "random-weights"
    stats = extract_feature_jobs(
        extractor,
        args.jobs,
        detector_id=detector_id,
        batch_size=args.batch_size,
        with_cls_prob=args.with_cls_prob,
        progress=not args.quiet,
    )
    for name, n in sorted(stats.records.items()):
        print(f"{n:7d}  {name}")
    rate = stats.images_run / stats.seconds if stats.seconds else 0.0
    print(
        f"{'started afresh' if stats.fresh else 'resumed'}: {stats.images_run} images through the detector "
        f"in {stats.seconds:.1f} s ({rate:.2f} images/s); {len(stats.failed)} undecodable"
    )
    print(
        f"next: python -m training.datasets.retrieval --data-root {args.jobs}  (rebuild hard-negative pools)"
    )
    for line in stats.failed[:20]:
        print(f"  failed: {line}", file=sys.stderr)
    return 1 if stats.failed and args.strict else 0


if __name__ == "__main__":
    run(main)
