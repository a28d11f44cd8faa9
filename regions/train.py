"""Train the `synthetic` detector preset on the synthetic world (CPU, minutes).

    python -m regions.train --data D [--out DIR] [--iterations N | --max-minutes M | --epochs N]

Reads ``D/detector/instances_{train,val}.json`` (COCO instances style, plus per-annotation
``attributes`` such as ``{"color": "red", "size": "large"}`` and a top-level ``attribute_names``
listing every attribute vocabulary) and trains, as the bottom-up-attention detector was trained on
Visual Genome, object classes plus attribute classes: the RPN and Fast R-CNN losses of torchvision,
and one cross-entropy per attribute group on the foreground proposals (class embedding fed the true
class).  Then it measures on the validation images what the issue asks for: recall of ground-truth
objects at IoU >= 0.5 within the box budget, class and attribute accuracy on the found ones, and
draws the boxes on a few images.  A quality gate (recall, shape, colour and size accuracy; `--min-*`)
decides whether the weights are written: a missed gate writes metrics.json, no weights, and exits 3.

Writes, each atomically (temp file + rename): ``DIR/synthetic-detector.safetensors``, the preset
JSON beside it (class and attribute names included), ``DIR/metrics.json`` and ``DIR/val_boxes.png``.
"""

from __future__ import annotations

import io
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torchvision.ops import box_iou, nms
from tqdm import tqdm

from regions.decode import decode_file
from regions.detector import RegionDetector, build_detector
from regions.extractor import ImageRegions, RegionExtractor
from regions.presets import SYNTHETIC, AttributeGroup, DetectorPreset
from regions.transform import preprocess
from regions.weights import save_detector
from vilbert.cli import ArgumentParser, UserError, run
from vilbert.io import atomic_write_bytes, atomic_write_text

WEIGHTS_NAME = "synthetic-detector.safetensors"
DEFAULT_OUT = Path("artifacts/detector")


@dataclass(frozen=True)
class DetectionExample:
    image_id: int
    path: Path
    boxes: np.ndarray  # (G, 4) float32 x1y1x2y2 pixels
    labels: np.ndarray  # (G,) int64 in 1..K (0 is background)
    attributes: np.ndarray  # (G, n_groups) int64 value index, -1 when unknown


@dataclass(frozen=True)
class DetectionSet:
    class_names: tuple[str, ...]  # foreground, label i+1 -> class_names[i]
    attribute_groups: tuple[AttributeGroup, ...]
    examples: list[DetectionExample]


def read_instances(
    path: Path,
    root: Path,
    class_names: tuple[str, ...] | None = None,
    attribute_groups: tuple[AttributeGroup, ...] | None = None,
) -> DetectionSet:
    """A COCO-instances file with attributes; pass the training vocabularies when reading val."""
    data = json.loads(path.read_text())
    categories = sorted(data["categories"], key=lambda c: c["id"])
    if class_names is None:
        class_names = tuple(c["name"] for c in categories)
    name_to_label = {n: i + 1 for i, n in enumerate(class_names)}
    cat_to_label = {}
    for c in categories:
        if c["name"] not in name_to_label:
            raise ValueError(f"{path}: category {c['name']!r} is not in the training vocabulary")
        cat_to_label[c["id"]] = name_to_label[c["name"]]
    if attribute_groups is None:
        attribute_groups = tuple(
            AttributeGroup(name, len(values), tuple(values))
            for name, values in data.get("attribute_names", {}).items()
        )
    value_index = [{v: i for i, v in enumerate(g.value_names)} for g in attribute_groups]
    per_image: dict[int, list[dict]] = {}
    for ann in sorted(data["annotations"], key=lambda a: a["id"]):
        per_image.setdefault(ann["image_id"], []).append(ann)
    examples = []
    for img in data["images"]:
        anns = per_image.get(img["id"], [])
        boxes = np.array(
            [
                [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                for a in anns
            ],
            dtype=np.float32,
        ).reshape(-1, 4)
        labels = np.array([cat_to_label[a["category_id"]] for a in anns], dtype=np.int64)
        attrs = np.full((len(anns), len(attribute_groups)), -1, dtype=np.int64)
        for r, a in enumerate(anns):
            for g, group in enumerate(attribute_groups):
                value = (a.get("attributes") or {}).get(group.name)
                attrs[r, g] = value_index[g].get(value, -1)
        examples.append(DetectionExample(img["id"], root / img["file_name"], boxes, labels, attrs))
    return DetectionSet(tuple(class_names), tuple(attribute_groups), examples)


@dataclass(frozen=True)
class TrainConfig:
    data: Path
    out: Path = DEFAULT_OUT
    epochs: int = 8
    batch_size: int = 4
    lr: float = 2e-3  # AdamW; from-scratch BN network, so no SGD warm-start tricks needed
    weight_decay: float = 1e-4
    warmup_iters: int = 100
    seed: int = 0
    # A fixed number of iterations (the schedule runs over exactly these): the same model on a busy or a
    # quiet machine.  None: `epochs` of the training images.
    iterations: int | None = None
    # Time budget for the training loop (None: none): the cosine schedule follows whichever of the
    # iterations or time is further along, so a budget-cut run still ends annealed.  How far a budget
    # gets depends on the machine's load; `iterations` does not.
    max_minutes: float | None = None
    threads: int | None = None  # torch intra-op threads; None keeps torch's default
    eval_images: int | None = None  # cap on validation images (None: all)
    flip: bool = True  # horizontal-flip augmentation (no attribute depends on left/right)
    gate: QualityGate | None = None  # None: no gate (the weights are written whatever was measured)


@dataclass(frozen=True)
class QualityGate:
    """What the detector must reach on the validation images before its weights are written.

    The class is the object's shape in the synthetic world; the attribute groups its colour and size.
    A region feature that misses one of them leaves the questions about it undecidable for ViLBERT.
    """

    min_recall: float = 0.95  # ground-truth objects with a kept box at IoU >= 0.5
    min_class_accuracy: float = 0.85  # shape
    min_attribute_accuracy: float = 0.85  # every attribute group (colour, size)

    def failures(self, m: DetectorMetrics) -> list[str]:
        checks = [("recall@IoU0.5", m.recall_at_iou50, self.min_recall)]
        checks.append(("class (shape) accuracy", m.class_accuracy, self.min_class_accuracy))
        checks += [(f"{g} accuracy", a, self.min_attribute_accuracy) for g, a in m.attribute_accuracy.items()]
        return [f"{name} {value:.3f} < {floor:.2f}" for name, value, floor in checks if value < floor]


@dataclass
class DetectorMetrics:
    images: int = 0
    gt_objects: int = 0
    recall_at_iou50: float = 0.0  # GT objects with a kept box at IoU >= 0.5, over all GT objects
    class_accuracy: float = 0.0  # on the found objects: predicted class of the best-IoU box
    attribute_accuracy: dict[str, float] = field(default_factory=dict)  # same, per attribute group
    boxes_per_image: float = 0.0
    seconds_per_image: float = 0.0


@dataclass
class TrainResult:
    weights: str
    preset: str
    iterations: int
    epochs_completed: float
    train_seconds: float
    initial_loss: float  # mean total loss over the first tenth of the iterations
    final_loss: float  # mean total loss over the last tenth
    val: DetectorMetrics
    gate_failures: list[str] | None = None  # None: no gate; []: passed; else what missed (no weights)


def _flip(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    w = image.shape[1]
    flipped = boxes.copy()
    flipped[:, 0], flipped[:, 2] = w - boxes[:, 2], w - boxes[:, 0]
    return np.ascontiguousarray(image[:, ::-1]), flipped


def _targets(batch: list[DetectionExample], boxes: list[np.ndarray], scales: list[float]) -> list[dict]:
    return [
        {
            "boxes": torch.from_numpy(b * s),
            "labels": torch.from_numpy(ex.labels),
            "attributes": torch.from_numpy(ex.attributes),
        }
        for ex, b, s in zip(batch, boxes, scales)
    ]


def evaluate(
    extractor: RegionExtractor, examples: list[DetectionExample], images: list[np.ndarray]
) -> tuple[DetectorMetrics, list[ImageRegions]]:
    """Recall at IoU 0.5 within the box budget, and class/attribute accuracy on the found objects."""
    t0 = time.perf_counter()
    regions = extractor.extract(images)
    seconds = time.perf_counter() - t0
    groups = extractor.preset.attributes.groups if extractor.preset.attributes else ()
    n_gt = n_found = n_cls = 0
    n_attr = [0] * len(groups)
    n_attr_known = [0] * len(groups)
    for ex, r in zip(examples, regions):
        if len(ex.boxes) == 0:
            continue
        n_gt += len(ex.boxes)
        if r.num_boxes == 0:
            continue
        iou = box_iou(torch.from_numpy(ex.boxes), torch.from_numpy(r.boxes))  # (G, N)
        best_iou, best = iou.max(dim=1)
        for g_idx in (best_iou >= 0.5).nonzero().flatten().tolist():
            k = int(best[g_idx])
            n_found += 1
            n_cls += int(r.objects[k] == ex.labels[g_idx] - 1)
            for a, group in enumerate(groups):
                target = int(ex.attributes[g_idx, a])
                if target >= 0:
                    n_attr_known[a] += 1
                    n_attr[a] += int(r.attributes[group.name][k] == target)
    metrics = DetectorMetrics(
        images=len(examples),
        gt_objects=n_gt,
        recall_at_iou50=n_found / max(1, n_gt),
        class_accuracy=n_cls / max(1, n_found),
        attribute_accuracy={g.name: n_attr[a] / max(1, n_attr_known[a]) for a, g in enumerate(groups)},
        boxes_per_image=float(np.mean([r.num_boxes for r in regions])) if regions else 0.0,
        seconds_per_image=seconds / max(1, len(examples)),
    )
    return metrics, regions


def draw_regions(
    images: list[np.ndarray], regions: list[ImageRegions], min_conf: float = 0.3, columns: int = 3
) -> Image.Image:
    """A grid of images with their confident boxes labelled "size colour class score".

    The kept regions overlap by design (per-class NMS, 36 per image); for a readable picture only
    boxes with max_conf >= min_conf are drawn, de-duplicated by a class-agnostic NMS at IoU 0.3.
    """
    tiles = []
    for img, r in zip(images, regions):
        tile = Image.fromarray(img).convert("RGB")
        draw = ImageDraw.Draw(tile)
        labels = r.labels()
        confident = np.flatnonzero(r.max_conf >= min_conf)
        if len(confident):
            shown = nms(torch.from_numpy(r.boxes[confident]), torch.from_numpy(r.max_conf[confident]), 0.3)
            confident = confident[shown.numpy()]
        for k in confident:
            words = [r.attribute_labels(g)[k] for g in ("size", "color", "colour") if g in r.attributes]
            text = " ".join([*words, labels[k]]) + f" {r.max_conf[k]:.2f}"
            x1, y1, x2, y2 = (float(v) for v in r.boxes[k])
            draw.rectangle([x1, y1, x2, y2], outline=(255, 255, 0), width=2)
            draw.text((x1 + 2, max(0.0, y1 - 11)), text, fill=(255, 255, 255))
        tiles.append(tile)
    cell_w = max(t.width for t in tiles)
    cell_h = max(t.height for t in tiles)
    rows = math.ceil(len(tiles) / columns)
    sheet = Image.new("RGB", (cell_w * min(columns, len(tiles)), cell_h * rows), (0, 0, 0))
    for i, t in enumerate(tiles):
        sheet.paste(t, ((i % columns) * cell_w, (i // columns) * cell_h))
    return sheet


def train(config: TrainConfig, *, progress: bool = True) -> TrainResult:
    """Train, evaluate on the validation split and save; returns what was measured."""
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    det_dir = Path(config.data) / "detector"
    train_set = read_instances(det_dir / "instances_train.json", Path(config.data))
    val_path = det_dir / "instances_val.json"
    if val_path.exists():
        val_examples = read_instances(
            val_path, Path(config.data), train_set.class_names, train_set.attribute_groups
        ).examples
        train_examples = train_set.examples
    else:  # hold out a tenth of the training images
        shuffled = train_set.examples[:]
        rng.shuffle(shuffled)
        cut = max(1, len(shuffled) // 10)
        val_examples, train_examples = shuffled[:cut], shuffled[cut:]
    if config.eval_images is not None:
        val_examples = val_examples[: config.eval_images]
    preset: DetectorPreset = SYNTHETIC.for_dataset(train_set.class_names, train_set.attribute_groups)
    detector: RegionDetector = build_detector(preset)

    # Decoded once through the safe decoder (every caller goes through it); the scenes are small.
    train_images = [decode_file(str(ex.path)).rgb for ex in train_examples]
    val_images = [decode_file(str(ex.path)).rgb for ex in val_examples]

    iters_per_epoch = math.ceil(len(train_examples) / config.batch_size)
    total_iters = max(1, config.iterations or iters_per_epoch * config.epochs)
    epochs = math.ceil(total_iters / iters_per_epoch)
    optimizer = torch.optim.AdamW(
        [p for p in detector.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay
    )
    warmup = min(config.warmup_iters, max(1, total_iters // 5))
    budget_s = 60.0 * config.max_minutes if config.max_minutes is not None else None

    def lr_at(it: int, elapsed: float) -> float:
        """Linear warm-up, then cosine decay over the run; with a time budget, progress is whichever
        of iterations or time is further along, so a budget-cut run still ends annealed."""
        if it < warmup:
            return config.lr * (it + 1) / warmup
        progress = (it - warmup) / max(1, total_iters - warmup)
        if budget_s is not None:
            progress = max(progress, elapsed / budget_s)
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    for group in optimizer.param_groups:
        group["lr"] = lr_at(0, 0.0)
    detector.train()
    t_start = time.perf_counter()
    step_losses: list[float] = []
    it = 0
    stop = False
    bar = tqdm(
        total=total_iters, desc="train synthetic detector", unit="it", disable=not progress, file=sys.stderr
    )
    for _epoch in range(epochs):
        order = list(range(len(train_examples)))
        rng.shuffle(order)
        for b in range(0, len(order), config.batch_size):
            idx = order[b : b + config.batch_size]
            batch = [train_examples[i] for i in idx]
            imgs, boxes = [], []
            for i in idx:
                img, bx = train_images[i], train_examples[i].boxes
                if config.flip and rng.random() < 0.5:
                    img, bx = _flip(img, bx)
                imgs.append(img)
                boxes.append(bx)
            image_list, scales = preprocess(imgs, preset.preprocessing)
            losses = detector(image_list, _targets(batch, boxes, scales))
            loss = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(detector.parameters(), 10.0)
            optimizer.step()
            it += 1
            for group in optimizer.param_groups:
                group["lr"] = lr_at(it, time.perf_counter() - t_start)
            step_losses.append(loss.item())
            elapsed = time.perf_counter() - t_start
            if budget_s is not None:  # show the iterations the time budget will allow, not the epochs'
                bar.total = min(total_iters, max(it, round(it * budget_s / max(elapsed, 1e-6))))
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(step_losses[-50:]):.3f}")
            if (budget_s is not None and elapsed > budget_s) or it >= total_iters:
                stop = True
                break
        if stop:
            break
    bar.close()
    train_seconds = time.perf_counter() - t_start

    detector.eval()
    extractor = RegionExtractor(detector, batch_size=4)
    metrics, regions = evaluate(extractor, val_examples, val_images)

    out = Path(config.out)
    failures = config.gate.failures(metrics) if config.gate is not None else None
    if failures:  # no weights file: a later run (or `make serve`'s skip-if-present) cannot pick it up
        weights, preset_json = out / WEIGHTS_NAME, out / "(not written)"
    else:
        weights, preset_json = save_detector(detector, out / WEIGHTS_NAME)
    tenth = max(1, len(step_losses) // 10)
    result = TrainResult(
        weights=str(weights),
        preset=str(preset_json),
        iterations=it,
        epochs_completed=it / iters_per_epoch,
        train_seconds=train_seconds,
        initial_loss=float(np.mean(step_losses[:tenth])) if step_losses else float("nan"),
        final_loss=float(np.mean(step_losses[-tenth:])) if step_losses else float("nan"),
        val=metrics,
        gate_failures=failures,
    )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.json", json.dumps(asdict(result), indent=2))
    if val_images:
        buf = io.BytesIO()
        draw_regions(val_images[:6], regions[:6]).save(buf, format="PNG")
        atomic_write_bytes(out / "val_boxes.png", buf.getvalue())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m regions.train", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="synthetic world root (has detector/)")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})"
    )
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    length = parser.add_mutually_exclusive_group()
    length.add_argument(
        "--iterations",
        type=int,
        help="train exactly this many iterations (the same model on a busy or a quiet machine)",
    )
    length.add_argument(
        "--max-minutes",
        type=float,
        help="time budget for the training loop instead (how far it gets depends on the machine's load)",
    )
    gate = QualityGate()
    parser.add_argument(
        "--min-recall", type=float, default=gate.min_recall, help="quality gate: recall@IoU0.5 (%(default)s)"
    )
    parser.add_argument(
        "--min-class-accuracy",
        type=float,
        default=gate.min_class_accuracy,
        help="quality gate: class (shape) accuracy on the found objects (%(default)s)",
    )
    parser.add_argument(
        "--min-attribute-accuracy",
        type=float,
        default=gate.min_attribute_accuracy,
        help="quality gate: every attribute group's accuracy (colour, size) (%(default)s)",
    )
    parser.add_argument("--no-gate", action="store_true", help="write the weights whatever was measured")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--eval-images", type=int, default=None, help="cap on validation images")
    parser.add_argument("--no-flip", action="store_true", help="disable horizontal-flip augmentation")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if not (args.data / "detector" / "instances_train.json").is_file():
        raise UserError(
            f"--data {args.data}: no detector/instances_train.json there; give a synthetic world "
            "(python -m training.synthetic --out DIR writes one)"
        )
    config = TrainConfig(
        data=args.data,
        out=args.out,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        iterations=args.iterations,
        max_minutes=args.max_minutes or None,
        threads=args.threads,
        eval_images=args.eval_images,
        flip=not args.no_flip,
        gate=None
        if args.no_gate
        else QualityGate(args.min_recall, args.min_class_accuracy, args.min_attribute_accuracy),
    )
    result = train(config, progress=not args.quiet)
    v = result.val
    print(
        f"trained {result.iterations} iterations ({result.epochs_completed:.1f} epochs) in "
        f"{result.train_seconds:.0f} s; loss {result.initial_loss:.3f} -> {result.final_loss:.3f}\n"
        f"val: {v.images} images, {v.gt_objects} objects, recall@IoU0.5 {v.recall_at_iou50:.3f} "
        f"within {v.boxes_per_image:.1f} boxes/image, class accuracy {v.class_accuracy:.3f}, "
        + ", ".join(f"{k} accuracy {a:.3f}" for k, a in v.attribute_accuracy.items())
        + f"; {1.0 / max(v.seconds_per_image, 1e-9):.1f} images/s"
    )
    if result.gate_failures:
        print(
            f"error: quality gate missed ({'; '.join(result.gate_failures)}); no weights written "
            f"(metrics in {args.out / 'metrics.json'}). Train longer (--iterations) or lower the gate "
            "(--min-*, --no-gate).",
            file=sys.stderr,
        )
        return 3
    gate_note = "" if result.gate_failures is None else "quality gate passed; "
    print(f"{gate_note}wrote {result.weights} and {result.preset}")
    return 0


if __name__ == "__main__":
    run(main)
