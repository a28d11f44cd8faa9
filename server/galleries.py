"""Named galleries for `/retrieve` (`PUT` / `GET /galleries/{name}`).

A gallery's images are resolved (and cached) once; with a retrieval pre-filter their embeddings are
stored too, one set per distinct region budget of the retrieval tasks, for two-stage search.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from server import schemas as s
from server.errors import InvalidInputError, NotFoundError
from server.images import Images
from server.inference import Inference
from server.region_cache import CachedRegions
from server.settings import Settings
from vilbert.tasks import Endpoint, tasks_for_endpoint


@dataclass(frozen=True)
class Gallery:
    """A registered gallery: its images and, with a pre-filter, their embeddings per region budget."""

    images: list[CachedRegions]
    embeddings: dict[int, np.ndarray]  # max_regions of a retrieval task -> (N, D) unit vectors

    def info(self, name: str) -> s.GalleryInfo:
        ids = [g.image_id for g in self.images]
        return s.GalleryInfo(name=name, size=len(ids), image_ids=ids, prefilter=bool(self.embeddings))


class Galleries:
    """The registered galleries, by name (thread-safe)."""

    def __init__(self, settings: Settings, images: Images, inference: Inference) -> None:
        self.settings = settings
        self.images = images
        self.inference = inference
        self._galleries: dict[str, Gallery] = {}
        self._lock = threading.Lock()

    def rebuilt(self, inference: Inference) -> Galleries:
        """The same galleries for another model version: same images, pre-filter embeddings computed
        by `inference` (none when that version has no pre-filter)."""
        new = Galleries(self.settings, self.images, inference)
        with self._lock:
            held = dict(self._galleries)
        for name, gallery in held.items():
            new._galleries[name] = Gallery(gallery.images, new._embeddings(gallery.images))
        return new

    def _embeddings(self, images: list[CachedRegions]) -> dict[int, np.ndarray]:
        """Pre-filter embeddings of `images`, one set per distinct region budget of the retrieval tasks."""
        embeddings: dict[int, np.ndarray] = {}
        if self.inference.has_prefilter:
            for task in tasks_for_endpoint(Endpoint.RETRIEVE):
                if task.max_regions not in embeddings:
                    embeddings[task.max_regions] = self.inference.image_embeddings(task, images)
        return embeddings

    def find(self, name: str) -> Gallery | None:
        with self._lock:
            return self._galleries.get(name)

    def register(self, name: str, req: s.GalleryRequest, uploads: Mapping[str, bytes]) -> s.GalleryInfo:
        """Resolve (and cache) every image; with a pre-filter, store their embeddings for two-stage
        /retrieve, one set per distinct region budget of the retrieval tasks."""
        if len(req.images) > self.settings.max_gallery_images:
            raise InvalidInputError(
                f"images: a gallery holds at most {self.settings.max_gallery_images} images", "images"
            )
        with self._lock:
            if name not in self._galleries and len(self._galleries) >= self.settings.max_galleries:
                raise InvalidInputError(
                    f"name: at most {self.settings.max_galleries} galleries; replace an existing one", "name"
                )
        images = self.images.resolve_distinct(req.images, uploads)
        gallery = Gallery(images, self._embeddings(images))  # pinned: gallery features never leave the LRU
        with self._lock:
            self._galleries[name] = gallery
        return gallery.info(name)

    def info(self, name: str) -> s.GalleryInfo:
        gallery = self.find(name)
        if gallery is None:
            raise NotFoundError(f"name: no gallery named {name!r}", "name")
        return gallery.info(name)
