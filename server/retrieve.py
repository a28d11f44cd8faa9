"""`/retrieve`: rank images (sent with the request, or a registered gallery) by a caption.

Exhaustive: the trunk scores every image.  Two-stage (the default with a pre-filter): pre-filter
embeddings rank every image, the trunk re-ranks the top `rerank_k`.  Model calls in
server/inference.py (`match_scores`, `text_prefix`, `image_embeddings`).
"""

from __future__ import annotations

from collections.abc import Mapping

from server import schemas as s
from server.errors import InvalidInputError, NotFoundError
from server.galleries import Galleries
from server.images import Images
from server.inference import Inference, best_first, clamp_top_k
from server.region_cache import CachedRegions
from server.settings import Settings
from vilbert.contract import CAPTION_EMBEDDING, PREFILTER_TEXT
from vilbert.tasks import Endpoint, task_for_dataset


class Retrieve:
    def __init__(
        self, settings: Settings, images: Images, inference: Inference, galleries: Galleries
    ) -> None:
        self.settings = settings
        self.images = images
        self.inference = inference
        self.galleries = galleries

    def __call__(
        self, req: s.RetrieveRequest, uploads: Mapping[str, bytes], rid: str | None = None
    ) -> s.RetrieveResponse:
        """Rank images by a caption: exhaustively (the trunk scores every image), or in two stages
        (pre-filter embeddings rank every image, the trunk re-ranks the top K)."""
        task = task_for_dataset(Endpoint.RETRIEVE, req.dataset)
        model = self.inference
        caption = model.text(req.caption, "caption")
        mode = self.mode(req.mode)
        embeddings = None
        images: list[CachedRegions]
        if req.gallery is not None:
            gallery = self.galleries.find(req.gallery)
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
            images = self.images.resolve_distinct(refs, uploads)  # duplicates are ranked once
        k = clamp_top_k(min(req.top_k, self.settings.max_top_k), len(images), self.settings.max_top_k)
        ids, mask = model.tokens(caption, task)
        if mode is s.RetrieveMode.EXHAUSTIVE:
            scores = model.match_scores(task, caption, images, rid)
            order = best_first(scores, k)
            ranked = [(int(i), float(scores[i])) for i in order]
            scored = len(images)
        else:
            prefix = model.text_prefix(task, ids, mask, rid)
            if embeddings is None:  # images sent with the request (or a gallery registered without)
                embeddings = model.image_embeddings(task, images)
            with model.metrics.time_stage("prefilter"):
                query = model.infer(PREFILTER_TEXT, prefix, rid)[CAPTION_EMBEDDING][0]
                coarse = embeddings @ query  # cosine similarities (unit vectors)
            rerank = max(req.rerank_k or self.settings.retrieve_rerank_k, k)
            candidates = best_first(coarse, rerank)
            scores = model.match_scores(task, caption, [images[i] for i in candidates], rid, prefix)
            order = best_first(scores, k)
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

    def mode(self, asked: s.RetrieveMode | None) -> s.RetrieveMode:
        """The search to run: two-stage by default when the model has a pre-filter."""
        has_prefilter = self.inference.has_prefilter
        if asked is None:
            return s.RetrieveMode.TWO_STAGE if has_prefilter else s.RetrieveMode.EXHAUSTIVE
        if asked is s.RetrieveMode.TWO_STAGE and not has_prefilter:
            raise InvalidInputError(
                "mode: two_stage needs the retrieval pre-filter, and this model has none (its checkpoint "
                "was trained without `prefilter`, or its export predates it); use mode=exhaustive",
                "mode",
            )
        return asked
