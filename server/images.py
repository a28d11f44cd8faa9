"""Images: a request's image reference -> the image's regions.

base64 / upload bytes -> sha256 -> region cache (memory, then LMDB), or decode -> detector -> cache;
an `image_id` is looked up in the cache only.  Also `POST /images` (`Images.register`).  Synchronous
(it runs in the gateway's worker threads); raises only `server.errors` types.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from regions.decode import ImageDecodeError, decode_image, sha256_hex
from server import schemas as s
from server.errors import InvalidInputError, NotFoundError, PayloadTooLargeError, ServiceError
from server.metrics import Metrics
from server.protocols import Extractor
from server.region_cache import CachedRegions, RegionCache
from server.settings import Settings


@dataclass(frozen=True)
class ImageInput:
    """A resolved image: its regions, and its pixels when they were decoded for this request."""

    regions: CachedRegions
    rgb: np.ndarray | None


class Images:
    """Image references -> cached regions, through the region extractor on a cache miss."""

    def __init__(
        self, settings: Settings, metrics: Metrics, cache: RegionCache, extractor: Extractor
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.cache = cache
        self.extractor = extractor
        self._class_names: tuple[str, ...] = tuple(
            getattr(getattr(extractor, "preset", None), "class_names", ())
        )

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

    def resolve_distinct(
        self, refs: Sequence[s.ImageRef], uploads: Mapping[str, bytes]
    ) -> list[CachedRegions]:
        """Regions of `images.<i>`, in order, each distinct image once (duplicates are ranked once)."""
        seen: dict[str, CachedRegions] = {}
        for i, ref in enumerate(refs):
            regions = self.resolve(ref, uploads, f"images.{i}").regions
            seen.setdefault(regions.image_id, regions)
        return list(seen.values())

    def features_at(self, rgb: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Region features (len(boxes), D) of an image's pixels at given x1y1x2y2 boxes."""
        with self.metrics.time_stage("detector"):
            given = self.extractor.extract_at_boxes([rgb], [boxes])[0]
        return np.asarray(given.features, dtype=np.float32)

    def label(self, regions: CachedRegions, i: int) -> str | None:
        """The detector's class name of region `i` (None when it has none)."""
        k = int(regions.objects[i]) if i < len(regions.objects) else -1
        if k < 0:
            return None
        return self._class_names[k] if k < len(self._class_names) else f"class_{k}"

    def info(self, image: ImageInput, cached: bool) -> s.ImageInfo:
        r = image.regions
        boxes = [
            s.RegionOut(box=box_out(r.boxes[i]), score=float(r.object_scores[i]), label=self.label(r, i))
            for i in range(r.boxes.shape[0])
        ]
        return s.ImageInfo(image_id=r.image_id, width=r.width, height=r.height, boxes=boxes, cached=cached)

    def register(self, req: s.ImagesRequest, uploads: Mapping[str, bytes]) -> s.ImageInfo:
        """`POST /images`: run region extraction on an image (unless cached) and describe it."""
        data = self.image_bytes(req.image, uploads, "image")
        cached = data is not None and self.cache.memory.get(sha256_hex(data)) is not None
        return self.info(self.resolve(req.image, uploads, "image"), cached or data is None)


def box_out(b: np.ndarray) -> s.Box:
    return s.Box(xmin=float(b[0]), ymin=float(b[1]), xmax=float(b[2]), ymax=float(b[3]))
