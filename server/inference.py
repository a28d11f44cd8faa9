"""Model inputs and model calls: checked text -> tokens, cached regions -> padded region inputs, and
the graphs the backend runs on them (`trunk`, the task's `head_<head>` fed as the contract's
`head_feeds` says, `text_prefix` + `joint` or a `PrefixScorer`, the retrieval pre-filter).

Backend failures become `BackendUnavailableError` (503 + Retry-After) here and nowhere else.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from regions.inputs import region_inputs
from server.backend import Arrays, Backend, BackendError, PrefixScorer, has_graph
from server.errors import BackendUnavailableError, InvalidInputError
from server.metrics import Metrics
from server.protocols import Tokenizer
from server.region_cache import CachedRegions
from server.settings import Settings
from vilbert.contract import (
    ATTENTION_MASK,
    IMAGE_EMBEDDING,
    INPUT_IDS,
    JOINT,
    LOGITS,
    MIN_TEXT_TOKENS,
    PREFILTER_IMAGE,
    PREFILTER_TEXT,
    REGION_FEATURES,
    REGION_INPUTS,
    REGION_LOCATIONS,
    REGION_MASK,
    REGION_STATES,
    TASK_IDS,
    TEXT_MASK,
    TEXT_PREFIX,
    TEXT_STATES,
    TRUNK,
    head_feeds,
    head_graph_name,
)
from vilbert.tasks import Task

RegionInputs = tuple[np.ndarray, np.ndarray, np.ndarray]  # features (R, F), locations (R, 5), boxes (R, 4)


@dataclass(frozen=True)
class PaddedRegions:
    """A batch of images' trunk inputs, zero-padded to one region count."""

    features: np.ndarray  # (N, R, F)
    locations: np.ndarray  # (N, R, 5)
    mask: np.ndarray  # (N, R) int64
    boxes: list[np.ndarray]  # per image (R_i, 4) pixel boxes, row 0 the whole image

    def feeds(self) -> dict[str, np.ndarray]:
        """The three region inputs of a graph, by the contract's tensor names."""
        return {REGION_FEATURES: self.features, REGION_LOCATIONS: self.locations, REGION_MASK: self.mask}


def inputs_of(regions: CachedRegions, max_regions: int) -> RegionInputs:
    """One image's region inputs, global region first, at most `max_regions` rows."""
    ri = region_inputs(regions.boxes, regions.features, regions.width, regions.height, max_regions)
    return ri.features, ri.locations, ri.boxes


def pad_regions(per_image: Sequence[RegionInputs]) -> PaddedRegions:
    """[(features (R_i, F), locations (R_i, 5), boxes (R_i, 4))] -> one zero-padded batch."""
    r = max(f.shape[0] for f, _, _ in per_image)
    dim = per_image[0][0].shape[1]
    n = len(per_image)
    feats = np.zeros((n, r, dim), np.float32)
    locs = np.zeros((n, r, 5), np.float32)
    mask = np.zeros((n, r), np.int64)
    for i, (f, loc, _) in enumerate(per_image):
        feats[i, : len(f)], locs[i, : len(f)], mask[i, : len(f)] = f, loc, 1
    return PaddedRegions(feats, locs, mask, [b for _, _, b in per_image])


def batch_of(images: Sequence[CachedRegions], max_regions: int) -> PaddedRegions:
    """Images' region inputs at one region budget, padded into one batch."""
    return pad_regions([inputs_of(r, max_regions) for r in images])


def pad_to_task_max(inputs: Mapping[str, np.ndarray], task: Task) -> dict[str, np.ndarray]:
    """Trunk inputs zero-padded (masked) to the task's `max_text_tokens` and `max_regions`, as the
    reference code pads every example.  The service pads only as far as each request needs; this is
    the comparison setting (`Settings.pad_to_task_max`, bench/serving.py)."""
    out = dict(inputs)
    for names, width in (
        ((INPUT_IDS, ATTENTION_MASK), task.max_text_tokens),
        (REGION_INPUTS, task.max_regions),
    ):
        have = out[names[0]].shape[1]
        if have < width:
            for name in names:
                a = out[name]
                out[name] = np.pad(a, [(0, 0), (0, width - have)] + [(0, 0)] * (a.ndim - 2))
    return out


# ------------------------------------------------------------------------------------------ logits -> scores


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x.astype(np.float64), -60, 60)))


def softmax(x: np.ndarray) -> np.ndarray:
    z = x.astype(np.float64) - x.max()
    e = np.exp(z)
    return e / e.sum()


def clamp_top_k(top_k: int, available: int, limit: int) -> int:
    """How many results to return: `top_k` (422 over `limit`), at least 1, at most `available`."""
    if top_k > limit:
        raise InvalidInputError(f"top_k: {top_k} is over the limit of {limit}", "top_k")
    return max(1, min(top_k, available))


def best_first(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the `k` highest scores, highest first (ties keep their input order)."""
    return np.argsort(-scores, kind="stable")[:k]


class Pace:
    """The trunk's recent throughput in image-caption pairs per second, from the last `window`
    `match_scores` calls (what an exhaustive search of N images will take: N / rate)."""

    def __init__(self, assumed: float, window: int = 32) -> None:
        self.assumed = assumed  # the rate until one is measured
        self._calls: deque[tuple[int, float]] = deque(maxlen=window)
        self._lock = threading.Lock()

    def record(self, pairs: int, seconds: float) -> None:
        if pairs > 0 and seconds > 0:
            with self._lock:
                self._calls.append((pairs, seconds))

    def rate(self) -> tuple[float, bool]:
        """(pairs per second, whether it was measured)."""
        with self._lock:
            pairs = sum(p for p, _ in self._calls)
            seconds = sum(t for _, t in self._calls)
        return (pairs / seconds, True) if pairs and seconds > 0 else (self.assumed, False)


class Inference:
    """Text and regions in, graph outputs out, through a `Backend`."""

    def __init__(
        self,
        settings: Settings,
        backend: Backend,
        tokenizer: Tokenizer,
        metrics: Metrics,
        pace: Pace | None = None,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.tokenizer = tokenizer
        self.metrics = metrics
        self.pace = pace or Pace(settings.exhaustive_pairs_per_s)

    # ------------------------------------------------------------------------------------------ text

    def text(self, value: str, field: str) -> str:
        """`value` checked as a request's text field: within the length limit, not blank, valid Unicode."""
        if len(value) > self.settings.max_text_chars:
            raise InvalidInputError(
                f"{field}: {len(value)} characters; the limit is {self.settings.max_text_chars}", field
            )
        if not value.strip():
            raise InvalidInputError(f"{field}: must not be empty", field)
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate ("\ud800") is valid JSON but not text
                raise InvalidInputError(f"{field}: not valid Unicode text (lone surrogate)", field) from None
        return value

    def tokens(self, text: str, task: Task, rows: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(rows, T) ids and mask, truncated to the task's budget; T >= MIN_TEXT_TOKENS for the graphs."""
        enc = self.tokenizer.encode_batch([text], task.max_text_tokens)
        ids, mask = enc.input_ids, enc.attention_mask
        if ids.shape[1] < MIN_TEXT_TOKENS:  # pad with masked [PAD]s: the exported trunk needs T >= 3
            pad = MIN_TEXT_TOKENS - ids.shape[1]
            ids = np.pad(ids, ((0, 0), (0, pad)))
            mask = np.pad(mask, ((0, 0), (0, pad)))
        return np.repeat(ids, rows, axis=0), np.repeat(mask, rows, axis=0)

    # ------------------------------------------------------------------------------------------ graphs

    def infer(self, model: str, inputs: Mapping[str, np.ndarray], request_id: str | None) -> Arrays:
        """One graph call; a backend failure is a 503."""
        try:
            return self.backend.infer(model, inputs, request_id)
        except BackendError as exc:
            raise BackendUnavailableError(
                f"model backend unavailable: {exc}", retry_after=self.settings.retry_after_s
            ) from exc

    def trunk(
        self, task: Task, ids: np.ndarray, mask: np.ndarray, regions: PaddedRegions, rid: str | None
    ) -> Arrays:
        """The `trunk` graph with the dataset's task id: one row per (text, image) pair."""
        inputs = {
            INPUT_IDS: ids,
            ATTENTION_MASK: mask,
            TASK_IDS: np.full((ids.shape[0],), task.task_id, np.int64),
            **regions.feeds(),
        }
        if self.settings.pad_to_task_max:
            inputs = pad_to_task_max(inputs, task)
        with self.metrics.time_stage(TRUNK):
            out = self.infer(TRUNK, inputs, rid)
        if out[REGION_STATES].shape[1] != regions.mask.shape[1]:  # padded: heads see the real regions
            out = {**out, REGION_STATES: out[REGION_STATES][:, : regions.mask.shape[1]]}
        return out

    def head(
        self, task: Task, trunk_out: Mapping[str, np.ndarray], region_mask: np.ndarray, rid: str | None
    ) -> np.ndarray:
        """The task's head graph on the trunk's outputs (fed as the contract's `head_feeds` says):
        logits as the graph returns them, one row per example."""
        feeds = head_feeds(task.head, trunk_out, region_mask, task.images_per_example)
        with self.metrics.time_stage("head"):
            return self.infer(head_graph_name(task.head), feeds, rid)[LOGITS]

    def example_logits(
        self, task: Task, ids: np.ndarray, mask: np.ndarray, regions: PaddedRegions, rid: str | None
    ) -> np.ndarray:
        """`trunk` then the task's head for one example (its trunk rows: one per (text, image) pair)."""
        out = self.trunk(task, ids, mask, regions, rid)
        return self.head(task, out, regions.mask, rid)[0]

    # ------------------------------------------------------------------------------------------ retrieval

    @property
    def has_prefilter(self) -> bool:
        return has_graph(self.backend, PREFILTER_TEXT) and has_graph(self.backend, PREFILTER_IMAGE)

    def text_prefix(self, task: Task, ids: np.ndarray, mask: np.ndarray, rid: str | None) -> Arrays:
        """One caption's text-prefix states (`text_prefix` graph): computed once per query."""
        inputs = {INPUT_IDS: ids, ATTENTION_MASK: mask, TASK_IDS: np.full((1,), task.task_id, np.int64)}
        with self.metrics.time_stage(TRUNK):
            return self.infer(TEXT_PREFIX, inputs, rid)

    def image_embeddings(self, task: Task, images: Sequence[CachedRegions]) -> np.ndarray:
        """Pre-filter embeddings (N, D) of images at `task`'s region budget, `retrieve_batch` per call."""
        out: list[np.ndarray] = []
        step = self.settings.retrieve_batch
        with self.metrics.time_stage("prefilter"):
            for start in range(0, len(images), step):
                regions = batch_of(images[start : start + step], task.max_regions)
                out.append(self.infer(PREFILTER_IMAGE, regions.feeds(), None)[IMAGE_EMBEDDING])
        return np.concatenate(out).astype(np.float32)

    def match_scores(
        self,
        task: Task,
        caption: str,
        images: Sequence[CachedRegions],
        rid: str | None,
        prefix: Mapping[str, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Match logits of one caption against every image, `retrieve_batch` images per call.

        The caption's image-free prefix layers run once per call, not once per image, where the
        backend can (`PrefixScorer`, or the `text_prefix` + `joint` graphs); `prefix`: that
        `text_prefix` output when the caller has it already.  Otherwise `trunk` runs per image.
        The call's pairs per second feed `pace`.
        """
        started = time.perf_counter()
        scores = self._match_scores(task, caption, images, rid, prefix)
        self.pace.record(len(images), time.perf_counter() - started)
        return scores

    def _match_scores(
        self,
        task: Task,
        caption: str,
        images: Sequence[CachedRegions],
        rid: str | None,
        prefix: Mapping[str, np.ndarray] | None,
    ) -> np.ndarray:
        ids, mask = self.tokens(caption, task)
        split = has_graph(self.backend, TEXT_PREFIX) and has_graph(self.backend, JOINT)
        if split and prefix is None and not isinstance(self.backend, PrefixScorer):
            prefix = self.text_prefix(task, ids, mask, rid)
        scores: list[np.ndarray] = []
        step = self.settings.retrieve_batch
        for start in range(0, len(images), step):
            chunk = images[start : start + step]
            rows = len(chunk)
            regions = batch_of(chunk, task.max_regions)
            if isinstance(self.backend, PrefixScorer):
                # Text prefix computed once per call; the joint layers run over the image batch.
                with self.metrics.time_stage(TRUNK):
                    try:
                        scores.append(
                            self.backend.match_scores(
                                task.task_id, ids, mask, regions.features, regions.locations, regions.mask
                            )
                        )
                    except BackendError as exc:
                        raise BackendUnavailableError(
                            str(exc), retry_after=self.settings.retry_after_s
                        ) from exc
                continue
            if split:
                assert prefix is not None
                inputs = {
                    TEXT_STATES: np.repeat(prefix[TEXT_STATES], rows, 0),
                    TEXT_MASK: np.repeat(prefix[TEXT_MASK], rows, 0),
                    **regions.feeds(),
                }
                with self.metrics.time_stage(TRUNK):
                    out = self.infer(JOINT, inputs, rid)
            else:
                out = self.trunk(task, np.repeat(ids, rows, 0), np.repeat(mask, rows, 0), regions, rid)
            scores.append(self.head(task, out, regions.mask, rid).reshape(rows))
        return np.concatenate(scores) if scores else np.zeros(0, np.float32)
