"""`/retrieve`: rank images (sent with the request, or a registered gallery) by a caption.

Exhaustive: the trunk scores every image.  Two-stage (the default with a pre-filter): pre-filter
embeddings rank every image, the trunk re-ranks the top `rerank_k`.  Model calls in
server/inference.py (`match_scores`, `text_prefix`, `image_embeddings`).

On a gallery, stage 1 is the gallery's faiss index for the served model version
(server/vector_index.py; 503 + Retry-After while it is rebuilt, server/galleries.py), and an
exhaustive search that cannot finish within the deadline (the gallery's size over the trunk's
measured pairs per second, `Inference.pace`) is refused up front with a 422 instead of a 504.
"""

from __future__ import annotations

from collections.abc import Mapping

from server import schemas as s
from server.errors import InvalidInputError
from server.galleries import Galleries, Gallery
from server.images import Images
from server.inference import Inference, best_first, clamp_top_k
from server.region_cache import CachedRegions
from server.settings import Settings
from vilbert.contract import CAPTION_EMBEDDING, PREFILTER_TEXT
from vilbert.tasks import Endpoint, Task, task_for_dataset


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
        if req.gallery is not None:
            return self.gallery(req, self.galleries.require(req.gallery), task, caption, mode, rid)
        refs = req.images or []
        if not 1 <= len(refs) <= self.settings.max_images_per_request:
            raise InvalidInputError(
                f"images: give 1 to {self.settings.max_images_per_request} images, not {len(refs)}",
                "images",
            )
        images: list[CachedRegions] = self.images.resolve_distinct(refs, uploads)  # duplicates ranked once
        k = clamp_top_k(min(req.top_k, self.settings.max_top_k), len(images), self.settings.max_top_k)
        ids, mask = model.tokens(caption, task)
        if mode is s.RetrieveMode.EXHAUSTIVE:
            scores = model.match_scores(task, caption, images, rid)
            order = best_first(scores, k)
            ranked = [(int(i), float(scores[i])) for i in order]
            scored = len(images)
        else:
            prefix = model.text_prefix(task, ids, mask, rid)
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

    def gallery(
        self,
        req: s.RetrieveRequest,
        gallery: Gallery,
        task: Task,
        caption: str,
        mode: s.RetrieveMode,
        rid: str | None,
    ) -> s.RetrieveResponse:
        """Rank a registered gallery: stage 1 through its index, or every image by the trunk."""
        model = self.inference
        if gallery.size == 0:
            return s.RetrieveResponse(task=task.slug, results=[], mode=mode, scored=0)
        k = clamp_top_k(min(req.top_k, self.settings.max_top_k), gallery.size, self.settings.max_top_k)
        if mode is s.RetrieveMode.EXHAUSTIVE:
            self.check_deadline(gallery)
            images = gallery.regions(gallery.stored.alive)
            prefix = None
        else:
            index = self.galleries.index_for(gallery, task.max_regions)
            ids, mask = model.tokens(caption, task)
            prefix = model.text_prefix(task, ids, mask, rid)
            rerank = max(req.rerank_k or self.settings.retrieve_rerank_k, k)
            with model.metrics.time_stage("prefilter"):
                query = model.infer(PREFILTER_TEXT, prefix, rid)[CAPTION_EMBEDDING][0]
                candidates = gallery.search(index, query, rerank)
            images = gallery.regions(candidates)
        scores = model.match_scores(task, caption, images, rid, prefix)
        order = best_first(scores, k)
        return s.RetrieveResponse(
            task=task.slug,
            results=[
                s.RankedImage(image_id=images[i].image_id, score=float(scores[i]), rank=r + 1)
                for r, i in enumerate(order)
            ],
            mode=mode,
            scored=len(images),
        )

    def check_deadline(self, gallery: Gallery) -> None:
        """422 when an exhaustive search of `gallery` would not finish within the request deadline."""
        rate, measured = self.inference.pace.rate()
        seconds = gallery.size / rate
        deadline = self.settings.deadline_s
        if seconds <= deadline:
            return
        how = "measured on this server's recent searches" if measured else "assumed until measured"
        if self.inference.has_prefilter:
            instead = "search it with mode=two_stage (the pre-filter ranks it, the trunk re-ranks the top K)"
        else:
            instead = (
                "this model has no retrieval pre-filter: train one (prefilter: {enabled: true} in the fit "
                "config) to search large galleries in two stages, or search a smaller gallery"
            )
        raise InvalidInputError(
            f"mode: an exhaustive search of gallery {gallery.name!r} ({gallery.size} images) would take "
            f"about {seconds:.0f} s at {rate:.1f} image-caption pairs/s ({how}), past the {deadline:g} s "
            f"deadline; {instead}",
            "mode",
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
