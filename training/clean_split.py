"""The clean multi-task split (paper Sec. 2.2; the reference's `--clean_train_sets`).

`python -m training.clean_split --data-root D` collects the test images of every task, maps them
across the COCO, Visual Genome and Flickr id spaces (through the official VG `image_data.json`,
which gives each VG image's `coco_id` / `flickr_id`), writes `cache/{coco,genome,flickr}_test_ids.npy`
into every task directory that reads one, rebuilds the cleaned retrieval hard-negative pools when
region features exist, and prints how much each training set shrank.  The loaders then drop those
images from training (and from VG QA's val, as the reference does).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.datasets import build_dataset, split_names
from training.datasets.config import LoaderConfig
from training.datasets.layout import LAYOUTS, VG_IMAGE_DATA, IdSpace, datasets_dir
from vilbert.tasks import TASKS
from vilbert.tokenizer import load_tokenizer

log = logging.getLogger(__name__)


def test_splits() -> dict[str, str]:
    """Task -> its split whose images are "test" images, derived from the layouts: every task with
    a test split that lives in a cleaned id space (VG QA has no test split and reports on its
    cleaned val; NLVR2 lives in its own image space)."""
    return {
        t.slug: LAYOUTS[t.slug].test_split
        for t in TASKS
        if LAYOUTS[t.slug].id_space is not None and LAYOUTS[t.slug].test_split
    }


@dataclass
class Shrink:
    """How one training split changed under the clean split."""

    task: str
    split: str
    examples_before: int
    examples_after: int
    images_before: int
    images_after: int

    @property
    def removed_fraction(self) -> float:
        return 1 - self.examples_after / self.examples_before if self.examples_before else 0.0


def _id_maps(root: Path) -> tuple[dict[int, int], dict[int, int]]:
    """VG id -> COCO id and VG id -> Flickr id, from `visual_genome/image_data.json` if present."""
    path = root / VG_IMAGE_DATA
    if not path.is_file():
        log.warning("%s not found: test ids are not mapped between the COCO/VG/Flickr id spaces", path)
        return {}, {}
    coco, flickr = {}, {}
    for img in json.loads(path.read_text()):
        if img.get("coco_id") is not None:
            coco[int(img["image_id"])] = int(img["coco_id"])
        if img.get("flickr_id") is not None:
            flickr[int(img["image_id"])] = int(img["flickr_id"])
    return coco, flickr


def collect_test_ids(data_root: str | Path, config: LoaderConfig | None = None) -> dict[IdSpace, set[int]]:
    """Test image ids per id space, after mapping VG <-> COCO and VG <-> Flickr."""
    root = datasets_dir(data_root)
    cfg = (config or LoaderConfig.for_data_root(data_root)).updated(
        clean=False, retrieval_eval_images=1 << 60
    )
    tokenizer = load_tokenizer()
    ids: dict[IdSpace, set[int]] = {space: set() for space in IdSpace}
    for slug, split in test_splits().items():
        space = LAYOUTS[slug].id_space
        assert space is not None
        try:
            ds = build_dataset(slug, data_root, split, config=cfg, tokenizer=tokenizer)
        except FileNotFoundError as exc:
            log.warning("%s/%s skipped: %s", slug, split, exc)
            continue
        for entry in ds.entries:
            ids[space].update(ds.entry_clean_ids(entry))
    vg_to_coco, vg_to_flickr = _id_maps(root)
    coco_to_vg = {c: v for v, c in vg_to_coco.items()}
    flickr_to_vg = {f: v for v, f in vg_to_flickr.items()}
    genome = (
        ids[IdSpace.GENOME]
        | {coco_to_vg[c] for c in ids[IdSpace.COCO] if c in coco_to_vg}
        | {flickr_to_vg[f] for f in ids[IdSpace.FLICKR] if f in flickr_to_vg}
    )
    coco = ids[IdSpace.COCO] | {vg_to_coco[v] for v in ids[IdSpace.GENOME] if v in vg_to_coco}
    flickr = ids[IdSpace.FLICKR] | {vg_to_flickr[v] for v in ids[IdSpace.GENOME] if v in vg_to_flickr}
    return {IdSpace.COCO: coco, IdSpace.GENOME: genome, IdSpace.FLICKR: flickr}


def write_test_ids(data_root: str | Path, ids: dict[IdSpace, set[int]]) -> list[Path]:
    """Write each task directory's `cache/{space}_test_ids.npy`."""
    root = datasets_dir(data_root)
    written = []
    for layout in LAYOUTS.values():
        path = layout.test_ids_file(root)
        if path is None or not layout.dir(root).is_dir() or path in written:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.array(sorted(ids[layout.id_space]), dtype=np.int64))  # type: ignore[index]
        written.append(path)
    return written


def measure_shrink(data_root: str | Path, config: LoaderConfig | None = None) -> list[Shrink]:
    """Examples and images of every cleaned split, before and after cleaning."""
    cfg = (config or LoaderConfig.for_data_root(data_root)).updated(clean=True)
    tokenizer = load_tokenizer()
    out = []
    for task in TASKS:
        layout = LAYOUTS[task.slug]
        splits = [split_names(task)["train"]]
        if layout.clean_all_splits:
            splits.append(split_names(task)["val"])
        for split in splits:
            if not layout.cleans(split):
                continue
            try:
                ds = build_dataset(task, data_root, split, config=cfg, tokenizer=tokenizer)
            except FileNotFoundError as exc:
                log.warning("%s/%s skipped: %s", task.slug, split, exc)
                continue
            after = len(ds.image_ids())
            out.append(
                Shrink(
                    task.slug,
                    split,
                    int(ds.num_before_cleaning or 0),
                    len(ds),
                    after + len(ds.removed_images),
                    after,
                )
            )
    return out


def format_shrink(rows: Sequence[Shrink]) -> str:
    lines = [
        "| task | split | examples before | after | removed | images before | after |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.task} | {r.split} | {r.examples_before} | {r.examples_after} | "
            f"{100 * r.removed_fraction:.1f}% | {r.images_before} | {r.images_after} |"
        )
    total_b = sum(r.examples_before for r in rows)
    total_a = sum(r.examples_after for r in rows)
    mean = np.mean([r.removed_fraction for r in rows]) if rows else 0.0
    lines.append(f"| all | | {total_b} | {total_a} | {100 * mean:.1f}% (mean) | | |")
    return "\n".join(lines)


def run(data_root: str | Path, rebuild_pools: bool = True) -> tuple[dict[IdSpace, set[int]], list[Shrink]]:
    """Compute and write the test-id lists, refresh the cleaned pools, measure the shrink."""
    ids = collect_test_ids(data_root)
    write_test_ids(data_root, ids)
    if rebuild_pools:
        root = datasets_dir(data_root)
        from training.datasets.retrieval import retrieval_slugs, write_pools

        slugs = [s for s in retrieval_slugs() if (root / LAYOUTS[s].features).is_dir()]
        if slugs:
            write_pools(data_root, slugs)
    return ids, measure_shrink(data_root)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Compute the clean multi-task split and report the shrink.")
    parser.add_argument(
        "--data-root",
        required=True,
        type=Path,
        help="the reference `datasets/` directory or a directory containing it",
    )
    parser.add_argument("--no-pools", action="store_true", help="do not rebuild hard_negative_cleaned.pkl")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    ids, rows = run(args.data_root, rebuild_pools=not args.no_pools)
    print("test images per id space: " + ", ".join(f"{space}: {len(v)}" for space, v in ids.items()))
    print(format_shrink(rows))


if __name__ == "__main__":
    main()
