"""Region extraction's heavy steps through the model backend: the exported detector graphs in Triton.

`TritonDetectorCompute` is a `regions.extractor.DetectorCompute` that runs `detector_backbone`
(images -> FPN levels + the RPN head's objectness logits and box deltas per level) and
`detector_box_head` (pooled box inputs -> features, fc7, logits, deltas) through a backend's `infer`
(the gateway's `TritonBackend`, so a GPU Triton runs them); the extractor keeps preprocessing, the
RPN's anchors and proposal selection, RoIAlign pooling, the attribute head and box selection.

Before its first remote call it checks that the backend serves both graphs and that they compute
what the gateway's own detector weights compute (a small probe through both, compared within
`PROBE_TOLERANCE`): graphs exported from other weights would otherwise mix silently with the
gateway's RPN and attribute head.  When the graphs are missing or differ it extracts in-process
(and says so once in the log); when a remote call fails (Triton down, a stub dead) that step runs
in-process and the graphs are asked again after `retry_s`.  Region extraction therefore never
fails because of Triton, and gives the same regions either way.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from export.versions import read_manifest, versions
from regions.backbone import FPN_LEVELS
from regions.detector import RegionDetector
from regions.extractor import BackboneOutputs, LocalDetectorCompute
from regions.roi_heads import BoxHeadOutputs
from server.backend import BackendError
from vilbert.contract import (
    BOX_INPUTS,
    BOX_REGRESSION,
    CLASS_LOGITS,
    DETECTOR_BACKBONE,
    DETECTOR_BOX_HEAD,
    DETECTOR_IMAGES,
    FC7,
    REGION_FEATURES,
    detector_dims_from_preset,
    fpn_output,
    rpn_deltas_output,
    rpn_logits_output,
)

log = logging.getLogger("server")

# fp32 ONNX vs torch differ by ~1e-5 here; other weights differ by orders of magnitude more.
PROBE_TOLERANCE = 1e-3
PROBE_SIZE = (64, 96)  # probe image (H, W): a multiple of every size divisibility in use
PROBE_BOXES = 4


class InferBackend(Protocol):
    def infer(
        self, model: str, inputs: Mapping[str, np.ndarray], request_id: str | None = None
    ) -> dict[str, np.ndarray]: ...

    def has_graph(self, model: str) -> bool: ...


class Mode(enum.StrEnum):
    UNCHECKED = "unchecked"  # not asked yet, or asked again after a failure
    REMOTE = "remote"  # graphs served and verified: the backend runs them
    LOCAL = "local"  # graphs differ from the gateway's detector: in-process for good


class MissingOutputsError(BackendError):
    """A graph answered without outputs the contract declares (graphs of an older export)."""


def _tensor(array: np.ndarray) -> Tensor:
    # Arrays from tritonclient can be read-only views of the response buffer.
    return torch.from_numpy(np.require(array, dtype=np.float32, requirements=["C", "W"]))


class TritonDetectorCompute:
    """`DetectorCompute` through a backend serving the exported detector graphs (module docstring)."""

    def __init__(self, backend: InferBackend, detector: RegionDetector, *, retry_s: float = 30.0) -> None:
        self.backend = backend
        self.local = LocalDetectorCompute(detector)
        self.retry_s = retry_s
        dims = detector_dims_from_preset(detector.preset)
        keys = (*FPN_LEVELS, "pool")  # BackboneWithFPN's level names, finest first (P2..P6)
        if len(keys) != len(dims.fpn_levels):
            raise ValueError(f"{len(keys)} pyramid levels, the preset says {len(dims.fpn_levels)}")
        self.levels = tuple(zip(keys, (fpn_output(level) for level in dims.fpn_levels)))
        self.rpn_logits = tuple(rpn_logits_output(level) for level in dims.fpn_levels)
        self.rpn_deltas = tuple(rpn_deltas_output(level) for level in dims.fpn_levels)
        self.fc6_in_features = dims.fc6_in_features
        self.mode = Mode.UNCHECKED
        self.remote_calls = 0  # graph calls answered by the backend (tests, logs)
        self._retry_at = 0.0
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ DetectorCompute
    def backbone(self, images: Tensor) -> BackboneOutputs:
        if self._use_remote():
            try:
                return self._remote_backbone(images)
            except BackendError as exc:
                self._failed(exc)
        return self.local.backbone(images)

    def box_head(self, box_inputs: Tensor) -> BoxHeadOutputs:
        if len(box_inputs) and self._use_remote():  # no boxes: nothing worth a round trip
            try:
                return self._remote_box_head(box_inputs)
            except BackendError as exc:
                self._failed(exc)
        return self.local.box_head(box_inputs)

    # ------------------------------------------------------------------ remote calls
    def _remote_backbone(self, images: Tensor) -> BackboneOutputs:
        out = self.backend.infer(DETECTOR_BACKBONE, {DETECTOR_IMAGES: images.numpy()})
        self.remote_calls += 1
        wanted = (*(name for _, name in self.levels), *self.rpn_logits, *self.rpn_deltas)
        missing = [name for name in wanted if name not in out]
        if missing:  # e.g. a graph exported before the RPN head moved into it
            raise MissingOutputsError(f"{DETECTOR_BACKBONE} answered without {', '.join(missing)}")
        return BackboneOutputs(
            features={key: _tensor(out[name]) for key, name in self.levels},
            rpn_logits=[_tensor(out[name]) for name in self.rpn_logits],
            rpn_deltas=[_tensor(out[name]) for name in self.rpn_deltas],
        )

    def _remote_box_head(self, box_inputs: Tensor) -> BoxHeadOutputs:
        out = self.backend.infer(DETECTOR_BOX_HEAD, {BOX_INPUTS: box_inputs.numpy()})
        self.remote_calls += 1
        return BoxHeadOutputs(
            features=_tensor(out[REGION_FEATURES]),
            fc7=_tensor(out[FC7]),
            class_logits=_tensor(out[CLASS_LOGITS]),
            box_regression=_tensor(out[BOX_REGRESSION]),
        )

    # ------------------------------------------------------------------ choosing
    def _use_remote(self) -> bool:
        if self.mode is Mode.REMOTE:
            return True
        if self.mode is Mode.LOCAL or time.monotonic() < self._retry_at:
            return False
        with self._lock:
            if self.mode is Mode.UNCHECKED and time.monotonic() >= self._retry_at:
                self._check()
        return self.mode is Mode.REMOTE

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            if self.mode is Mode.REMOTE:
                log.warning("detector graphs unavailable (%s); in-process for %.0f s", exc, self.retry_s)
                self.mode = Mode.UNCHECKED
            self._retry_at = time.monotonic() + self.retry_s

    def _check(self) -> None:
        """Served and the same weights: REMOTE; served but different: LOCAL; else ask again later."""
        try:
            if not all(self.backend.has_graph(g) for g in (DETECTOR_BACKBONE, DETECTOR_BOX_HEAD)):
                self._retry_at = time.monotonic() + self.retry_s
                log.info("backend serves no detector graphs (yet); extracting regions in-process")
                return
            diff = self._probe()
        except BackendError as exc:
            self._retry_at = time.monotonic() + self.retry_s
            log.warning("detector graphs could not be checked (%s); extracting in-process for now", exc)
            return
        if diff > PROBE_TOLERANCE:
            self.mode = Mode.LOCAL
            log.error(
                "the backend's detector graphs differ from the gateway's detector weights (max |diff| %.3g): "
                "extracting regions in-process; export the repository with the served detector",
                diff,
            )
            return
        self.mode = Mode.REMOTE
        log.info("region extraction runs the detector graphs through the backend (probe |diff| %.2g)", diff)

    @torch.inference_mode()
    def _probe(self) -> float:
        """Largest relative difference between remote and in-process results on fixed random inputs."""
        gen = torch.Generator().manual_seed(0)
        images = torch.randn((1, 3, *PROBE_SIZE), generator=gen)
        boxes = torch.randn((PROBE_BOXES, self.fc6_in_features), generator=gen)
        try:
            remote_bb = self._remote_backbone(images)
        except MissingOutputsError as exc:
            log.error("%s", exc)
            return float("inf")
        local_bb = self.local.backbone(images)
        pairs = list(zip(remote_bb.features.values(), local_bb.features.values()))
        pairs += list(zip(remote_bb.rpn_logits or [], local_bb.rpn_logits or []))
        pairs += list(zip(remote_bb.rpn_deltas or [], local_bb.rpn_deltas or []))
        remote, local = self._remote_box_head(boxes), self.local.box_head(boxes)
        for f in dataclasses.fields(BoxHeadOutputs):
            pairs.append((getattr(remote, f.name), getattr(local, f.name)))
        worst = 0.0
        for got, want in pairs:
            if got.shape != want.shape:
                return float("inf")
            scale = max(1.0, float(want.abs().max()) if want.numel() else 1.0)
            worst = max(worst, float((got - want).abs().max()) / scale if want.numel() else 0.0)
        return worst


def remote_detector_compute(
    backend: InferBackend, detector: RegionDetector, repository: Path | None
) -> TritonDetectorCompute | None:
    """The remote compute for the gateway's extractor, or None where the repository says it has no
    detector graphs, or graphs of another detector shape (no repository given: asked of the backend)."""
    if repository is not None and versions(repository):
        manifest = read_manifest(repository)
        models = manifest.get("models", {})
        if DETECTOR_BACKBONE not in models or DETECTOR_BOX_HEAD not in models:
            log.info("%s has no detector graphs: regions are extracted in-process", repository)
            return None
        # Through JSON, as the manifest has them (tuples become lists).
        dims = json.loads(json.dumps(dataclasses.asdict(detector_dims_from_preset(detector.preset))))
        exported = manifest.get("detector") or {}
        if {k: exported.get(k) for k in dims} != dims:
            log.warning(
                "%s holds the graphs of another detector (%s, not %s): regions are extracted in-process",
                repository,
                exported.get("preset"),
                dims["preset"],
            )
            return None
    return TritonDetectorCompute(backend, detector)
