"""The service layer: images and text in, readable answers out.

Each task request goes: image bytes -> sha256 -> region cache (or decode -> detector -> cache) ->
global-first region inputs -> tokens with the task's budget -> `trunk` with the dataset's task id ->
the task's `head_<head>` graph -> answer strings / boxes / ranked images / a label.  Everything here is
synchronous (it runs in the gateway's worker threads) and raises only `server.errors` types.
"""

from __future__ import annotations

import base64
import binascii
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from regions.decode import ImageDecodeError, decode_image, sha256_hex
from regions.inputs import box_locations, region_inputs
from server import schemas as s
from server.backend import Backend, BackendError, PrefixScorer, has_graph
from server.errors import (
    BackendUnavailableError,
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
    ServiceError,
)
from server.metrics import Metrics
from server.region_cache import CachedRegions, RegionCache
from server.settings import Settings
from vilbert.contract import (
    ATTENTION_MASK,
    CAPTION_EMBEDDING,
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
from vilbert.tasks import Endpoint, Readout, Task, task_for_dataset, tasks_for_endpoint

WHOLE_IMAGE_LABEL = "whole image"


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x.astype(np.float64), -60, 60)))


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x.astype(np.float64) - x.max()
    e = np.exp(z)
    return e / e.sum()


def dialog_text(turns: Sequence[s.DialogTurn]) -> str:
    """GuessWhat dialog as one sentence, in the format the model was trained on
    (training/datasets/grounding.py `dialog_text`): "start Q answer A stop " per turn."""
    return "".join(f"start {t.question} answer {t.answer} stop " for t in turns)


@dataclass(frozen=True)
class ImageInput:
    """A resolved image: its regions, and its pixels when they were decoded for this request."""

    regions: CachedRegions
    rgb: np.ndarray | None


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


@dataclass(frozen=True)
class Gallery:
    """A registered gallery: its images and, with a pre-filter, their embeddings per region budget."""

    images: list[CachedRegions]
    embeddings: dict[int, np.ndarray]  # max_regions of a retrieval task -> (N, D) unit vectors

    def info(self, name: str) -> s.GalleryInfo:
        ids = [g.image_id for g in self.images]
        return s.GalleryInfo(name=name, size=len(ids), image_ids=ids, prefilter=bool(self.embeddings))


class Service:
    """Pre- and post-processing around a `Backend`, a region extractor and a tokenizer."""

    def __init__(
        self,
        settings: Settings,
        backend: Backend,
        extractor,  # regions.extractor.RegionExtractor (or anything with .extract/.extract_at_boxes)
        tokenizer,  # vilbert.tokenizer.WordPieceTokenizer
        answers: Mapping[str, list[str]],
        metrics: Metrics,
        cache: RegionCache,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.extractor = extractor
        self.tokenizer = tokenizer
        self.answers = dict(answers)
        self.metrics = metrics
        self.cache = cache
        self.galleries: dict[str, Gallery] = {}
        self._gallery_lock = threading.Lock()
        self._class_names: tuple[str, ...] = tuple(
            getattr(getattr(extractor, "preset", None), "class_names", ())
        )

    # ------------------------------------------------------------------------------------------ images

    def image_bytes(self, ref: s.ImageRef, uploads: Mapping[str, bytes], field: str) -> bytes | None:
        """The encoded bytes a reference names (None for an `image_id`)."""
        if ref.base64 is not None:
            text = ref.base64
            if text.startswith("data:") and "," in text:  # a browser's data URL
                text = text.split(",", 1)[1]
            if len(text) * 3 // 4 > self.settings.max_image_bytes:
                raise PayloadTooLargeError(
                    f"{field}.base64: image is over {self.settings.max_image_bytes} bytes", f"{field}.base64"
                )
            try:
                return base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                raise InvalidInputError(f"{field}.base64: not valid base64", f"{field}.base64") from None
        if ref.upload is not None:
            if ref.upload not in uploads:
                names = ", ".join(sorted(uploads)) or "none"
                raise InvalidInputError(
                    f"{field}.upload: no multipart file part named {ref.upload!r} (parts: {names})",
                    f"{field}.upload",
                )
            data = uploads[ref.upload]
            if len(data) > self.settings.max_image_bytes:
                raise PayloadTooLargeError(
                    f"{field}.upload: image is over {self.settings.max_image_bytes} bytes", f"{field}.upload"
                )
            return data
        return None

    def decode(self, data: bytes, field: str) -> np.ndarray:
        with self.metrics.time_stage("decode"):
            try:
                decoded = decode_image(
                    data, max_pixels=self.settings.max_pixels, max_bytes=self.settings.max_image_bytes
                )
            except ImageDecodeError as exc:
                err = ServiceError(f"{field}: {exc.message}", field)
                err.status = exc.code
                raise err from None
        return decoded.rgb

    def resolve(
        self, ref: s.ImageRef, uploads: Mapping[str, bytes], field: str, need_pixels: bool = False
    ) -> ImageInput:
        """Regions of a referenced image: from the cache when its bytes were seen before."""
        data = self.image_bytes(ref, uploads, field)
        if data is None:
            image_id = str(ref.image_id)
            regions, level = self.cache.get(image_id)
            self.metrics.cache.labels(level or "miss").inc()
            if regions is None:
                raise NotFoundError(
                    f"{field}.image_id: unknown image {image_id!r}; upload it with POST /images first",
                    f"{field}.image_id",
                )
            rgb = self.cache.pixels.get(image_id) if need_pixels else None
            if need_pixels and rgb is None:
                raise InvalidInputError(
                    f"{field}.image_id: candidate boxes need the image's pixels, which are no longer cached; "
                    "send the image itself",
                    f"{field}.image_id",
                )
            return ImageInput(regions, rgb)  # type: ignore[arg-type]
        if len(data) == 0:
            raise InvalidInputError(f"{field}: image is empty (0 bytes)", field)
        image_id = sha256_hex(data)
        regions, level = self.cache.get(image_id)
        self.metrics.cache.labels(level or "miss").inc()
        rgb = None
        if regions is None or need_pixels:
            rgb = self.cache.pixels.get(image_id)
            if rgb is None:
                rgb = self.decode(data, field)
                self.cache.pixels.put(image_id, rgb)
        if regions is None:
            with self.metrics.time_stage("detector"):
                found = self.extractor.extract([rgb])[0]
            regions = CachedRegions(
                image_id=image_id,
                width=int(found.image_w),
                height=int(found.image_h),
                boxes=np.asarray(found.boxes, dtype=np.float32).reshape(-1, 4),
                features=np.asarray(found.features, dtype=np.float32),
                objects=np.asarray(found.objects, dtype=np.int64),
                object_scores=np.asarray(found.object_scores, dtype=np.float32),
            )
            self.cache.put(regions)
        return ImageInput(regions, rgb)

    def label(self, regions: CachedRegions, i: int) -> str | None:
        k = int(regions.objects[i]) if i < len(regions.objects) else -1
        if k < 0:
            return None
        return self._class_names[k] if k < len(self._class_names) else f"class_{k}"

    def image_info(self, image: ImageInput, cached: bool) -> s.ImageInfo:
        r = image.regions
        boxes = [
            s.RegionOut(box=_box(r.boxes[i]), score=float(r.object_scores[i]), label=self.label(r, i))
            for i in range(r.boxes.shape[0])
        ]
        return s.ImageInfo(image_id=r.image_id, width=r.width, height=r.height, boxes=boxes, cached=cached)

    def register_image(self, req: s.ImagesRequest, uploads: Mapping[str, bytes]) -> s.ImageInfo:
        data = self.image_bytes(req.image, uploads, "image")
        cached = data is not None and self.cache.memory.get(sha256_hex(data)) is not None
        return self.image_info(self.resolve(req.image, uploads, "image"), cached or data is None)

    # ------------------------------------------------------------------------------------------ text

    def text(self, value: str, field: str) -> str:
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

    # ------------------------------------------------------------------------------------------ model

    def pad_regions(self, per_image: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> PaddedRegions:
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

    def inputs_of(
        self, regions: CachedRegions, max_regions: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ri = region_inputs(regions.boxes, regions.features, regions.width, regions.height, max_regions)
        return ri.features, ri.locations, ri.boxes

    def infer(self, model: str, inputs: Mapping[str, np.ndarray], request_id: str | None) -> dict:
        try:
            return self.backend.infer(model, inputs, request_id)
        except BackendError as exc:
            raise BackendUnavailableError(
                f"model backend unavailable: {exc}", retry_after=self.settings.retry_after_s
            ) from exc

    def trunk(self, task: Task, ids: np.ndarray, mask: np.ndarray, regions: PaddedRegions, rid: str | None):
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

    def _top_k(self, top_k: int, available: int) -> int:
        if top_k > self.settings.max_top_k:
            raise InvalidInputError(f"top_k: {top_k} is over the limit of {self.settings.max_top_k}", "top_k")
        return max(1, min(top_k, available))

    # ------------------------------------------------------------------------------------------ tasks

    def vqa(self, req: s.VQARequest, uploads: Mapping[str, bytes], rid: str | None = None) -> s.VQAResponse:
        task = task_for_dataset(Endpoint.VQA, req.dataset)
        question = self.text(req.question, "question")
        image = self.resolve(req.image, uploads, "image")
        ids, mask = self.tokens(question, task)
        regions = self.pad_regions([self.inputs_of(image.regions, task.max_regions)])
        out = self.trunk(task, ids, mask, regions, rid)
        logits = self.head(task, out, regions.mask, rid)[0]
        vocab = self.answers.get(task.answer_vocab) or [f"answer_{i}" for i in range(len(logits))]
        n = min(len(vocab), len(logits))
        probs = _sigmoid(logits[:n])
        k = self._top_k(req.top_k, n)
        order = np.argsort(-probs, kind="stable")[:k]
        return s.VQAResponse(
            task=task.slug, answers=[s.Answer(answer=vocab[i], score=float(probs[i])) for i in order]
        )

    def ground(
        self, req: s.GroundRequest, uploads: Mapping[str, bytes], rid: str | None = None
    ) -> s.GroundResponse:
        task = task_for_dataset(Endpoint.GROUND, req.dataset)
        if task.dialog:
            if not req.dialog:
                raise InvalidInputError(
                    f"dialog: {req.dataset} needs a dialog of question/answer turns", "dialog"
                )
            for i, turn in enumerate(req.dialog):
                self.text(turn.question, f"dialog.{i}.question")
            text = self.text(dialog_text(req.dialog), "dialog")
        else:
            if req.dialog is not None:
                takers = ", ".join(t.dataset for t in tasks_for_endpoint(Endpoint.GROUND) if t.dialog)
                raise InvalidInputError(f"dialog: only {takers} takes a dialog, not {req.dataset}", "dialog")
            if req.expression is None:
                raise InvalidInputError(f"expression: {req.dataset} needs an expression", "expression")
            text = self.text(req.expression, "expression")
        candidates = self._candidates(req, task)
        image = self.resolve(req.image, uploads, "image", need_pixels=candidates is not None)
        ids, mask = self.tokens(text, task)
        if candidates is None:
            feats, locs, boxes = self.inputs_of(image.regions, task.max_regions)
            # Pointing without candidates (guesswhat) chooses among the detections, never the whole image.
            choices = np.arange(1 if task.readout is Readout.BEST_CANDIDATE else 0, len(feats))
            labels = [WHOLE_IMAGE_LABEL] + [self.label(image.regions, i) for i in range(len(feats) - 1)]
        else:
            feats, locs, boxes, choices = self._with_candidates(image, candidates, task)
            labels = [None] * len(feats)
        if len(choices) == 0:
            return s.GroundResponse(task=task.slug, regions=[], no_match=True)
        regions = self.pad_regions([(feats, locs, boxes)])
        out = self.trunk(task, ids, mask, regions, rid)
        logits = self.head(task, out, regions.mask, rid)[0]
        probs = _sigmoid(logits[choices])
        k = self._top_k(req.top_k, len(choices))
        order = np.argsort(-probs, kind="stable")[:k]
        found = [
            s.RegionOut(box=_box(boxes[choices[i]]), score=float(probs[i]), label=labels[choices[i]])
            for i in order
        ]
        return s.GroundResponse(
            task=task.slug, regions=found, no_match=bool(probs.max() < self.settings.no_match_threshold)
        )

    def _candidates(self, req: s.GroundRequest, task: Task) -> np.ndarray | None:
        if req.candidates is None:
            if task.requires_candidates:
                raise InvalidInputError(
                    f"candidates: {req.dataset} chooses among candidate boxes; give them", "candidates"
                )
            return None
        if task.readout is not Readout.BEST_CANDIDATE:
            raise InvalidInputError(
                f"candidates: {req.dataset} grounds among detections; drop candidates", "candidates"
            )
        limit = min(self.settings.max_candidates, task.max_regions - 1)
        if not 1 <= len(req.candidates) <= limit:
            raise InvalidInputError(
                f"candidates: give 1 to {limit} boxes, not {len(req.candidates)}", "candidates"
            )
        boxes = np.array([[b.xmin, b.ymin, b.xmax, b.ymax] for b in req.candidates], dtype=np.float32)
        for i, b in enumerate(boxes):
            if not np.isfinite(b).all() or b[2] <= b[0] or b[3] <= b[1]:
                raise InvalidInputError(
                    f"candidates.{i}: need finite xmin < xmax and ymin < ymax", f"candidates.{i}"
                )
        return boxes

    def _with_candidates(self, image: ImageInput, candidates: np.ndarray, task: Task):
        """Detections (global first) followed by the candidates' own features, as in the reference."""
        r = image.regions
        clipped = candidates.copy()
        np.clip(clipped[:, 0::2], 0, r.width, out=clipped[:, 0::2])
        np.clip(clipped[:, 1::2], 0, r.height, out=clipped[:, 1::2])
        if ((clipped[:, 2] - clipped[:, 0]) <= 0).any() or ((clipped[:, 3] - clipped[:, 1]) <= 0).any():
            raise InvalidInputError("candidates: a box lies outside the image", "candidates")
        with self.metrics.time_stage("detector"):
            given = self.extractor.extract_at_boxes([image.rgb], [clipped])[0]
        feats, locs, boxes = self.inputs_of(r, task.max_regions - len(clipped))
        cand_feats = np.asarray(given.features, dtype=np.float32)
        cand_locs = box_locations(clipped, r.width, r.height)
        start = len(feats)
        return (
            np.concatenate([feats, cand_feats]),
            np.concatenate([locs, cand_locs]),
            np.concatenate([boxes, clipped]),
            np.arange(start, start + len(clipped)),
        )

    def retrieve(
        self, req: s.RetrieveRequest, uploads: Mapping[str, bytes], rid: str | None = None
    ) -> s.RetrieveResponse:
        """Rank images by a caption: exhaustively (the trunk scores every image), or in two stages
        (pre-filter embeddings rank every image, the trunk re-ranks the top K)."""
        task = task_for_dataset(Endpoint.RETRIEVE, req.dataset)
        caption = self.text(req.caption, "caption")
        mode = self.retrieve_mode(req.mode)
        embeddings = None
        if req.gallery is not None:
            with self._gallery_lock:
                gallery = self.galleries.get(req.gallery)
            if gallery is None:
                raise NotFoundError(
                    f"gallery: no gallery named {req.gallery!r}; PUT /galleries/{{name}} first", "gallery"
                )
            images = gallery.images
            embeddings = gallery.embeddings.get(task.max_regions)
        else:
            refs = req.images or []
            if not 1 <= len(refs) <= self.settings.max_images_per_request:
                raise InvalidInputError(
                    f"images: give 1 to {self.settings.max_images_per_request} images, not {len(refs)}",
                    "images",
                )
            seen: dict[str, CachedRegions] = {}
            for i, ref in enumerate(refs):
                regions = self.resolve(ref, uploads, f"images.{i}").regions
                seen.setdefault(regions.image_id, regions)  # duplicates are ranked once
            images = list(seen.values())
        k = self._top_k(min(req.top_k, self.settings.max_top_k), len(images))
        ids, mask = self.tokens(caption, task)
        if mode is s.RetrieveMode.EXHAUSTIVE:
            scores = self.match_scores(task, caption, images, rid)
            order = np.argsort(-scores, kind="stable")[:k]
            ranked = [(int(i), float(scores[i])) for i in order]
            scored = len(images)
        else:
            prefix = self.text_prefix(task, ids, mask, rid)
            if embeddings is None:  # images sent with the request (or a gallery registered without)
                embeddings = self.image_embeddings(task, images)
            with self.metrics.time_stage("prefilter"):
                query = self.infer(PREFILTER_TEXT, prefix, rid)[CAPTION_EMBEDDING][0]
                coarse = embeddings @ query  # cosine similarities (unit vectors)
            rerank = max(req.rerank_k or self.settings.retrieve_rerank_k, k)
            candidates = np.argsort(-coarse, kind="stable")[:rerank]
            scores = self.match_scores(task, caption, [images[i] for i in candidates], rid, prefix)
            order = np.argsort(-scores, kind="stable")[:k]
            ranked = [(int(candidates[j]), float(scores[j])) for j in order]
            scored = len(candidates)
        return s.RetrieveResponse(
            task=task.slug,
            results=[
                s.RankedImage(image_id=images[i].image_id, score=score, rank=r + 1)
                for r, (i, score) in enumerate(ranked)
            ],
            mode=mode,
            scored=scored,
        )

    @property
    def has_prefilter(self) -> bool:
        return has_graph(self.backend, PREFILTER_TEXT) and has_graph(self.backend, PREFILTER_IMAGE)

    def retrieve_mode(self, asked: s.RetrieveMode | None) -> s.RetrieveMode:
        """The search to run: two-stage by default when the model has a pre-filter."""
        if asked is None:
            return s.RetrieveMode.TWO_STAGE if self.has_prefilter else s.RetrieveMode.EXHAUSTIVE
        if asked is s.RetrieveMode.TWO_STAGE and not self.has_prefilter:
            raise InvalidInputError(
                "mode: two_stage needs the retrieval pre-filter, and this model has none (its checkpoint "
                "was trained without `prefilter`, or its export predates it); use mode=exhaustive",
                "mode",
            )
        return asked

    def text_prefix(self, task: Task, ids: np.ndarray, mask: np.ndarray, rid: str | None) -> dict:
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
                regions = self.pad_regions(
                    [self.inputs_of(r, task.max_regions) for r in images[start : start + step]]
                )
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
        """
        ids, mask = self.tokens(caption, task)
        split = has_graph(self.backend, TEXT_PREFIX) and has_graph(self.backend, JOINT)
        if split and prefix is None and not isinstance(self.backend, PrefixScorer):
            prefix = self.text_prefix(task, ids, mask, rid)
        scores: list[np.ndarray] = []
        step = self.settings.retrieve_batch
        for start in range(0, len(images), step):
            chunk = images[start : start + step]
            rows = len(chunk)
            regions = self.pad_regions([self.inputs_of(r, task.max_regions) for r in chunk])
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

    def register_gallery(
        self, name: str, req: s.GalleryRequest, uploads: Mapping[str, bytes]
    ) -> s.GalleryInfo:
        """Resolve (and cache) every image; with a pre-filter, store their embeddings for two-stage
        /retrieve, one set per distinct region budget of the retrieval tasks."""
        if len(req.images) > self.settings.max_gallery_images:
            raise InvalidInputError(
                f"images: a gallery holds at most {self.settings.max_gallery_images} images", "images"
            )
        with self._gallery_lock:
            if name not in self.galleries and len(self.galleries) >= self.settings.max_galleries:
                raise InvalidInputError(
                    f"name: at most {self.settings.max_galleries} galleries; replace an existing one", "name"
                )
        seen: dict[str, CachedRegions] = {}
        for i, ref in enumerate(req.images):
            regions = self.resolve(ref, uploads, f"images.{i}").regions
            seen.setdefault(regions.image_id, regions)
        images = list(seen.values())
        embeddings: dict[int, np.ndarray] = {}
        if self.has_prefilter:
            for task in tasks_for_endpoint(Endpoint.RETRIEVE):
                if task.max_regions not in embeddings:
                    embeddings[task.max_regions] = self.image_embeddings(task, images)
        gallery = Gallery(images, embeddings)  # pinned: gallery features never leave the LRU
        with self._gallery_lock:
            self.galleries[name] = gallery
        return gallery.info(name)

    def gallery_info(self, name: str) -> s.GalleryInfo:
        with self._gallery_lock:
            gallery = self.galleries.get(name)
        if gallery is None:
            raise NotFoundError(f"name: no gallery named {name!r}", "name")
        return gallery.info(name)

    def verify(
        self, req: s.VerifyRequest, uploads: Mapping[str, bytes], rid: str | None = None
    ) -> s.VerifyResponse:
        task = task_for_dataset(Endpoint.VERIFY, req.dataset)
        statement = self.text(req.statement, "statement")
        if len(req.images) != task.images_per_example:
            raise InvalidInputError(
                f"images: {req.dataset} takes {task.images_per_example} image(s), not {len(req.images)}",
                "images",
            )
        images = [self.resolve(ref, uploads, f"images.{i}").regions for i, ref in enumerate(req.images)]
        rows = len(images)
        ids, mask = self.tokens(statement, task, rows)
        regions = self.pad_regions([self.inputs_of(r, task.max_regions) for r in images])
        out = self.trunk(task, ids, mask, regions, rid)  # rows: (statement, image i)
        logits = self.head(task, out, regions.mask, rid)[0]
        probs = _softmax(logits)
        labels = task.labels or tuple(f"label_{i}" for i in range(len(probs)))
        best = int(np.argmax(probs))
        return s.VerifyResponse(
            task=task.slug, label=labels[best], scores={labels[i]: float(p) for i, p in enumerate(probs)}
        )


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


def _box(b: np.ndarray) -> s.Box:
    return s.Box(xmin=float(b[0]), ymin=float(b[1]), xmax=float(b[2]), ymax=float(b[3]))
