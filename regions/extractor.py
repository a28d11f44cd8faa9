"""Region extraction: batched `torch.inference_mode()` runs of a detector, one `ImageRegions` per image.

`RegionExtractor.extract` gives the detected regions (boxes in original pixels, fc6 features, classes,
attributes) by the reference selection rule (`regions.roi_heads.select_regions`);
`extract_at_boxes` feeds given boxes as the proposals and keeps all of them in order (the reference
`extract_features_from_gt.py`); `extract_with_boxes` does both from one backbone pass.

The heavy steps, the backbone (+ FPN + the RPN head's convolutions) and the box head's MLP, go
through a `DetectorCompute`: `LocalDetectorCompute` (the default) runs the detector's own torch
modules; a remote one (the gateway's `server.remote_detector.TritonDetectorCompute`) runs the
exported `detector_backbone` / `detector_box_head` graphs elsewhere.  Preprocessing, the rest of the
RPN (anchors, decoding, proposal selection: `regions.rpn.rpn_proposals`), RoIAlign pooling, the
attribute head and box selection always run here, so both give the same regions.  A compute whose
`backbone` returns no RPN head outputs gets the head run here.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision.models.detection.image_list import ImageList

from regions.backbone import inference_copy
from regions.decode import DecodedImage
from regions.detector import RegionDetector, build_detector
from regions.inputs import RegionInputs, region_inputs
from regions.presets import DetectorPreset, NormKind
from regions.roi_heads import BoxHeadOutputs, box_geometry, box_head_mlp, select_regions
from regions.rpn import rpn_proposals
from regions.store import RegionRecord
from regions.transform import as_rgb_array, preprocess
from regions.weights import load_detector

# Whether the optimised local compute runs the backbone and RPN head channels-last.  Off: on the
# 2-core AVX-512 development machine it did not pay (body 10.2 s channels-last vs 9.6 s NCHW, both
# folded, one thread), and RoIAlign then needs the pyramid back in NCHW (0.27 s);
# `python -m bench --only detector` times it beside the default.
CHANNELS_LAST = False
# Fewer boxes than this are pooled on one thread (the threads would cost more than they save).
MIN_PARALLEL_BOXES = 64


@dataclass
class ImageRegions:
    """One image's regions: what `/images` returns and what the feature store records."""

    image_w: int
    image_h: int
    boxes: np.ndarray  # (N, 4) float32, x1y1x2y2 in original image pixels
    features: np.ndarray  # (N, D) float32, fc6
    objects: np.ndarray  # (N,) int64, argmax foreground class (0-based, background excluded)
    object_scores: np.ndarray  # (N,) float32, probability of that class
    max_conf: np.ndarray  # (N,) float32, selection confidence (GT-box mode: best foreground probability)
    cls_prob: np.ndarray  # (N, C) float32 class posteriors, background first
    class_names: tuple[str, ...] = ()
    attributes: dict[str, np.ndarray] = field(default_factory=dict)  # group -> (N,) int64 argmax
    attribute_scores: dict[str, np.ndarray] = field(default_factory=dict)  # group -> (N,) float32
    attribute_names: dict[str, tuple[str, ...]] = field(default_factory=dict)
    num_confident: int = 0  # boxes with max_conf != 0 (the reference's unused "num_boxes")

    @property
    def num_boxes(self) -> int:
        return int(self.boxes.shape[0])

    def labels(self) -> list[str]:
        names = self.class_names
        return [names[i] if 0 <= i < len(names) else f"class_{i}" for i in self.objects.tolist()]

    def attribute_labels(self, group: str) -> list[str]:
        names = self.attribute_names.get(group, ())
        return [names[i] if 0 <= i < len(names) else f"{group}_{i}" for i in self.attributes[group].tolist()]

    def inputs(self, max_regions: int | None = None) -> RegionInputs:
        """Global-first features and 5-d locations: the model's image input for this image."""
        return region_inputs(self.boxes, self.features, self.image_w, self.image_h, max_regions)

    def to_record(self, image_id: str, *, with_cls_prob: bool = False) -> RegionRecord:
        """A feature-store record (reference LMDB layout, plus the detector's labels as extras)."""
        extra: dict[str, Any] = {
            "objects": self.objects,
            "object_scores": self.object_scores,
            "max_conf": self.max_conf,
        }
        for group, values in self.attributes.items():
            extra[f"attr_{group}"] = values
        if with_cls_prob:
            extra["cls_prob"] = self.cls_prob
        return RegionRecord(
            image_id=image_id,
            image_h=self.image_h,
            image_w=self.image_w,
            boxes=self.boxes,
            features=self.features,
            num_boxes=self.num_boxes,
            extra=extra,
        )


def _clipped_boxes(boxes: np.ndarray, image: np.ndarray) -> np.ndarray:
    """A copy of x1y1x2y2 pixel boxes clipped to the image; non-finite or inverted boxes are refused."""
    b = np.array(boxes, dtype=np.float32, copy=True).reshape(-1, 4)
    h, w = image.shape[:2]
    if b.size and (not np.isfinite(b).all() or (b[:, 2] < b[:, 0]).any() or (b[:, 3] < b[:, 1]).any()):
        raise ValueError("boxes must be finite x1,y1,x2,y2 with x2 >= x1 and y2 >= y1")
    np.clip(b[:, 0::2], 0, w, out=b[:, 0::2])
    np.clip(b[:, 1::2], 0, h, out=b[:, 1::2])
    return b


@dataclass
class BackboneOutputs:
    """What `DetectorCompute.backbone` gives: the pyramid and, when the compute ran it, the RPN head's
    per-level outputs (None: the extractor runs the head itself)."""

    features: dict[str, Tensor]  # FPN levels by the backbone's names, finest first
    rpn_logits: list[Tensor] | None = None  # per level (N, A, H_l, W_l), objectness logits
    rpn_deltas: list[Tensor] | None = None  # per level (N, 4A, H_l, W_l), anchor box deltas


class DetectorCompute(Protocol):
    """Where the detector's heavy steps run (the exported `detector_backbone` / `detector_box_head`)."""

    def backbone(self, images: Tensor) -> BackboneOutputs:
        """Normalised padded images (N, 3, H, W) -> the FPN levels [+ the RPN head's outputs]."""
        ...

    def box_head(self, box_inputs: Tensor) -> BoxHeadOutputs:
        """RoI-pooled box inputs (K, C*r*r [+6]) -> region features, fc7, class logits, box deltas."""
        ...


def optimised_by_default(detector: RegionDetector) -> bool:
    """Frozen-norm detectors (the imported 12-in-1 kind, whose weights never change here) extract through
    the optimised path by default; detectors trained here (batch norms) do not."""
    return detector.preset.backbone.norm is NormKind.FROZEN_BN


def _weights_signature(*modules: torch.nn.Module) -> tuple[tuple[int, int], ...]:
    """Where every parameter and buffer lives and its in-place version counter: it changes when the
    weights are loaded, trained or replaced."""
    return tuple(
        (t.data_ptr(), t._version) for m in modules for t in itertools.chain(m.parameters(), m.buffers())
    )


class LocalDetectorCompute:
    """The detector's own torch modules, in this process (the arithmetic of `RegionDetector`).

    `optimise` (default: on for detectors with frozen batch norms, the imported 12-in-1 kind, whose
    weights never change here; off for those trained here) runs the backbone and the RPN head as
    inference copies (`regions.backbone.inference_copy`): each norm folded into its convolution
    (channels-last too when `CHANNELS_LAST`).  The same arithmetic up to float rounding
    (tests/regions/test_fold_bn.py).  The copies are made on first use and remade whenever the
    detector's weights change; they hold a second copy of the backbone's and RPN head's weights
    (about 0.4 GB for vg-x152-fpn).
    """

    def __init__(self, detector: RegionDetector, *, optimise: bool | None = None) -> None:
        self.detector = detector
        self.optimise = optimised_by_default(detector) if optimise is None else bool(optimise)
        self._copies: tuple[tuple, torch.nn.Module, torch.nn.Module] | None = None

    def _inference_modules(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        det = self.detector
        signature = _weights_signature(det.backbone, det.rpn.head)
        if self._copies is None or self._copies[0] != signature:
            self._copies = None  # the old copies go before the new ones are made
            backbone = inference_copy(det.backbone, channels_last=CHANNELS_LAST)
            head = inference_copy(det.rpn.head, fold_bn=False, channels_last=CHANNELS_LAST)
            self._copies = (signature, backbone, head)
        return self._copies[1], self._copies[2]

    def backbone(self, images: Tensor) -> BackboneOutputs:
        if not self.optimise:
            features = dict(self.detector.backbone(images))
            logits, deltas = self.detector.rpn.head(list(features.values()))
            return BackboneOutputs(features, list(logits), list(deltas))
        backbone, head = self._inference_modules()
        if not CHANNELS_LAST:
            features = dict(backbone(images))
            logits, deltas = head(list(features.values()))
            return BackboneOutputs(features, list(logits), list(deltas))
        features = dict(backbone(images.contiguous(memory_format=torch.channels_last)))
        logits, deltas = head(list(features.values()))
        # Back to the default layout: RoIAlign and the RPN's flattening read it (as from any compute).
        return BackboneOutputs(
            {k: v.contiguous() for k, v in features.items()},
            [x.contiguous() for x in logits],
            [x.contiguous() for x in deltas],
        )

    def box_head(self, box_inputs: Tensor) -> BoxHeadOutputs:
        det = self.detector
        return box_head_mlp(
            det.roi_heads.box_head, det.roi_heads.box_predictor, det.preset.box_head.fc6_relu, box_inputs
        )


def box_inputs(
    detector: RegionDetector,
    features: dict[str, Tensor],
    boxes: list[Tensor],
    image_sizes: list[tuple[int, int]],
    *,
    workers: int = 1,
) -> Tensor:
    """What the box head reads: each box RoIAlign-pooled from the pyramid, flattened, [+ its geometry].

    torchvision's CPU RoIAlign runs on one thread; `workers` > 1 pools that many slices of each
    image's boxes at once, in threads (the op releases the GIL).  Each pooled row depends on its own
    box only (its pyramid level included), so the result is the same to the bit.
    """
    pool = detector.roi_heads.box_roi_pool
    if workers > 1 and sum(len(b) for b in boxes) >= MIN_PARALLEL_BOXES:
        grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
        none = [b.new_zeros((0, 4)) for b in boxes]

        def pooled_slice(task: tuple[int, Tensor]) -> Tensor:
            i, piece = task  # only image i's slice; the others get no boxes (same batch indices, scales)
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                return pool(features, [*none[:i], piece, *none[i + 1 :]], image_sizes)

        tasks = [(i, piece) for i, b in enumerate(boxes) for piece in b.chunk(workers) if len(piece)]
        with ThreadPoolExecutor(max_workers=workers) as threads:
            pooled = torch.cat(list(threads.map(pooled_slice, tasks)))
    else:
        pooled = pool(features, boxes, image_sizes)  # (K, C_fpn, r, r)
    x = pooled.flatten(1)
    if detector.preset.box_head.geometry_features:
        x = torch.cat([x, box_geometry(boxes, image_sizes)], dim=1)  # (K, C_fpn*r*r + 6)
    return x


class RegionExtractor:
    """Batched, inference-only region extraction for one detector.

    `compute` runs the backbone (+ RPN head) and the box head (default:
    `LocalDetectorCompute(detector, optimise=optimise)`); the rest of the detector (proposals,
    pooling, attribute head, selection) always runs here.  `optimise` (default: detectors with frozen
    norms) folds the norms into the convolutions (`LocalDetectorCompute`) and pools RoIAlign on
    `torch.get_num_threads()` threads (`box_inputs`); the same regions up to float rounding.
    """

    def __init__(
        self,
        detector: RegionDetector,
        *,
        batch_size: int = 2,
        compute: DetectorCompute | None = None,
        optimise: bool | None = None,
    ) -> None:
        self.detector = detector.eval()
        self.preset = detector.preset
        self.batch_size = max(1, int(batch_size))
        self.optimise = optimised_by_default(detector) if optimise is None else bool(optimise)
        self.compute: DetectorCompute = compute or LocalDetectorCompute(self.detector, optimise=self.optimise)

    @classmethod
    def from_preset(
        cls, preset: DetectorPreset | str, weights: str | Path | None = None, **kwargs: Any
    ) -> RegionExtractor:
        if weights is None:
            detector = build_detector(preset)
        else:
            detector = load_detector(weights, preset)
        return cls(detector, **kwargs)

    def __call__(self, image: np.ndarray | DecodedImage | Image.Image) -> ImageRegions:
        return self.extract([image])[0]

    def extract(self, images: Sequence[np.ndarray | DecodedImage | Image.Image]) -> list[ImageRegions]:
        """Detected regions per image, by the reference selection rule."""
        arrays = [as_rgb_array(im) for im in images]
        out: list[ImageRegions] = []
        for i in range(0, len(arrays), self.batch_size):
            out.extend(self._run(arrays[i : i + self.batch_size], None))
        return out

    def extract_at_boxes(
        self, images: Sequence[np.ndarray | DecodedImage | Image.Image], boxes: Sequence[np.ndarray]
    ) -> list[ImageRegions]:
        """Features for given x1y1x2y2 pixel boxes: fed as proposals, all kept, in the given order."""
        if len(images) != len(boxes):
            raise ValueError(f"{len(images)} images but {len(boxes)} box lists")
        arrays = [as_rgb_array(im) for im in images]
        given = [_clipped_boxes(b, arr) for arr, b in zip(arrays, boxes)]
        out: list[ImageRegions] = []
        for i in range(0, len(arrays), self.batch_size):
            out.extend(self._run(arrays[i : i + self.batch_size], given[i : i + self.batch_size]))
        return out

    def extract_with_boxes(
        self,
        images: Sequence[np.ndarray | DecodedImage | Image.Image],
        box_sets: Sequence[Sequence[np.ndarray]],
    ) -> list[tuple[ImageRegions, list[ImageRegions]]]:
        """Per image: its detected regions and the features at each of its given box lists, from one
        backbone pass (the same numbers as `extract` and `extract_at_boxes` called separately)."""
        if len(images) != len(box_sets):
            raise ValueError(f"{len(images)} images but {len(box_sets)} box-list sets")
        arrays = [as_rgb_array(im) for im in images]
        sets = [[_clipped_boxes(b, arr) for b in bs] for arr, bs in zip(arrays, box_sets)]
        out: list[tuple[ImageRegions, list[ImageRegions]]] = []
        for i in range(0, len(arrays), self.batch_size):
            out.extend(self._run_with_boxes(arrays[i : i + self.batch_size], sets[i : i + self.batch_size]))
        return out

    @torch.inference_mode()
    def _run(self, images: list[np.ndarray], given: list[np.ndarray] | None) -> list[ImageRegions]:
        image_list, scales = preprocess(images, self.preset.preprocessing)
        computed = self.compute.backbone(image_list.tensors)
        return self._regions(images, image_list, scales, computed.features, given, computed)

    @torch.inference_mode()
    def _run_with_boxes(
        self, images: list[np.ndarray], sets: list[list[np.ndarray]]
    ) -> list[tuple[ImageRegions, list[ImageRegions]]]:
        image_list, scales = preprocess(images, self.preset.preprocessing)
        computed = self.compute.backbone(image_list.tensors)
        features = computed.features
        detected = self._regions(images, image_list, scales, features, None, computed)
        at_boxes: list[list[ImageRegions]] = [[] for _ in images]
        for r in range(max((len(s) for s in sets), default=0)):  # round r: each image's r-th box list
            idx = [i for i, s in enumerate(sets) if len(s) > r]
            sub = ImageList(image_list.tensors[idx], [image_list.image_sizes[i] for i in idx])
            feats = {k: v[idx] for k, v in features.items()}
            regions = self._regions(
                [images[i] for i in idx], sub, [scales[i] for i in idx], feats, [sets[i][r] for i in idx]
            )
            for i, reg in zip(idx, regions):
                at_boxes[i].append(reg)
        return list(zip(detected, at_boxes))

    def _regions(
        self,
        images: list[np.ndarray],
        image_list: ImageList,
        scales: list[float],
        features: dict[str, Tensor],
        given: list[np.ndarray] | None,
        computed: BackboneOutputs | None = None,
    ) -> list[ImageRegions]:
        det, preset = self.detector, self.preset
        if given is None:
            logits = computed.rpn_logits if computed is not None else None
            deltas = computed.rpn_deltas if computed is not None else None
            proposals = rpn_proposals(det.rpn, image_list, features, logits, deltas)
        else:
            proposals = [torch.from_numpy(b) * s for b, s in zip(given, scales)]
        workers = torch.get_num_threads() if self.optimise else 1
        pooled = box_inputs(det, features, proposals, image_list.image_sizes, workers=workers)
        out = self.compute.box_head(pooled)
        probs = F.softmax(out.class_logits, dim=-1)
        counts = [len(p) for p in proposals]
        start = 0 if preset.selection.include_background else 1
        results = []
        for i, (img, props, scale, p, f, f7) in enumerate(
            zip(
                images,
                proposals,
                scales,
                probs.split(counts),
                out.features.split(counts),
                out.fc7.split(counts),
            )
        ):
            if given is None:
                boxes = props / scale  # original-image pixels, as the reference divides by im_scale
            else:
                boxes = torch.from_numpy(given[i])  # exactly as given (after clipping to the image)
            if given is None:
                keep, max_conf, n_conf = select_regions(
                    boxes, p, preset.selection, preset.rpn.legacy_plus_one
                )
            else:
                keep = torch.arange(len(props))
                max_conf = p[:, start:].max(dim=1).values if len(props) else torch.zeros(0)
                n_conf = int((max_conf != 0).sum())
            kp = p[keep]
            fg_scores, objects = (
                kp[:, start:].max(dim=1) if len(keep) else (torch.zeros(0), torch.zeros(0).long())
            )
            attributes, attribute_scores, attribute_names = self._attributes(f7[keep], objects + start)
            results.append(
                ImageRegions(
                    image_w=int(img.shape[1]),
                    image_h=int(img.shape[0]),
                    boxes=boxes[keep].numpy().astype(np.float32),
                    features=f[keep].numpy().astype(np.float32),
                    objects=objects.numpy().astype(np.int64),
                    object_scores=fg_scores.numpy().astype(np.float32),
                    max_conf=max_conf.numpy().astype(np.float32),
                    cls_prob=kp.numpy().astype(np.float32),
                    class_names=preset.class_names,
                    attributes=attributes,
                    attribute_scores=attribute_scores,
                    attribute_names=attribute_names,
                    num_confident=n_conf,
                )
            )
        return results

    def _attributes(
        self, fc7: Tensor, class_ids: Tensor
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, tuple[str, ...]]]:
        spec = self.preset.attributes
        logits = self.detector.attribute_logits(fc7, class_ids) if len(fc7) else None
        if spec is None or not spec.groups or self.detector.attribute_head is None:
            return {}, {}, {}
        values, scores, names = {}, {}, {}
        start = 0
        for group in spec.groups:
            if logits is None:
                values[group.name] = np.zeros(0, dtype=np.int64)
                scores[group.name] = np.zeros(0, dtype=np.float32)
            else:
                prob = F.softmax(logits[:, start : start + group.num_values], dim=-1)
                s, v = prob.max(dim=1)
                values[group.name], scores[group.name] = (
                    v.numpy().astype(np.int64),
                    s.numpy().astype(np.float32),
                )
            names[group.name] = group.value_names
            start += group.num_values
        return values, scores, names
