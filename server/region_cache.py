"""Region features by image content: a memory LRU in front of an LMDB on disk, keyed by sha256.
Features depend on the detector as much as on the image: the disk cache of one detector lives in a
folder of its own, ``<cache_dir>/<detector key>/`` (`regions.weights.detector_key`: a digest of the
detector's weights and preset), so a new detector never serves the old one's features.

A second question about the same image skips the detector.  Disk records use the reference feature
layout (`regions.store.RegionRecord`), so ``regions.store.FeatureStore`` can read the cache offline.
A record that fails to unpickle or to parse (a torn write, a disk error) is treated as a miss and
recomputed rather than served.  A few decoded images are kept too: pointing with candidate boxes by
`image_id` needs pixels, not only features.
"""

from __future__ import annotations

import pickle
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import lmdb
import numpy as np

from regions.store import PICKLE_PROTOCOL, RegionRecord, record_from_value

DISK_MAP_SIZE = 1 << 36  # 64 GiB of address space; the file grows only as written


@dataclass(frozen=True)
class CachedRegions:
    """What the service needs of one image: its size and its detections."""

    image_id: str  # sha256 of the encoded bytes
    width: int
    height: int
    boxes: np.ndarray  # (N, 4) float32 x1y1x2y2 in original pixels
    features: np.ndarray  # (N, D) float32
    objects: np.ndarray  # (N,) int64 detector class index (-1 unknown)
    object_scores: np.ndarray  # (N,) float32

    def to_record(self) -> RegionRecord:
        return RegionRecord(
            image_id=self.image_id,
            image_h=self.height,
            image_w=self.width,
            boxes=self.boxes,
            features=self.features,
            num_boxes=int(self.boxes.shape[0]),
            extra={"objects": self.objects, "object_scores": self.object_scores},
        )

    @classmethod
    def from_record(cls, record: RegionRecord) -> CachedRegions:
        n = record.num_boxes
        objects = np.asarray(record.extra.get("objects", np.full(n, -1)), dtype=np.int64).reshape(n)
        scores = np.asarray(record.extra.get("object_scores", np.zeros(n)), dtype=np.float32).reshape(n)
        return cls(
            record.image_id, record.image_w, record.image_h, record.boxes, record.features, objects, scores
        )


class LRU:
    """A thread-safe bounded mapping that forgets the least recently used entry."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str):
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: str, value: object) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class RegionCache:
    """Memory LRU + optional LMDB.  `get` returns (regions, level) with level "memory"/"disk"/None."""

    def __init__(
        self,
        capacity: int,
        disk_dir: str | Path | None = None,
        pixel_capacity: int = 16,
        detector: str = "",
    ) -> None:
        self.memory = LRU(capacity)
        self.pixels = LRU(pixel_capacity)
        self.detector = detector  # the detector key; "" keeps the LMDB at disk_dir itself
        root = Path(disk_dir) if disk_dir is not None else None
        self.disk_dir = root / detector if root is not None and detector else root
        self._env: lmdb.Environment | None = None
        self._disk_lock = threading.Lock()
        if self.disk_dir is not None:
            self.disk_dir.mkdir(parents=True, exist_ok=True)
            self._env = lmdb.open(str(self.disk_dir), map_size=DISK_MAP_SIZE, subdir=True, lock=True)

    def get(self, image_id: str) -> tuple[CachedRegions | None, str | None]:
        hit = self.memory.get(image_id)
        if hit is not None:
            return hit, "memory"  # type: ignore[return-value]
        key = image_id.encode()
        if self._env is None or not 0 < len(key) <= self._env.max_key_size():
            return None, None  # no disk cache, or a key LMDB cannot hold (ids are sha256 hex)
        with self._disk_lock, self._env.begin() as txn:
            raw = txn.get(key)
        if raw is None:
            return None, None
        try:
            regions = CachedRegions.from_record(record_from_value(image_id, pickle.loads(raw)))
        except Exception:  # corrupted entry: recompute instead of serving garbage
            return None, None
        self.memory.put(image_id, regions)
        return regions, "disk"

    def stored(self, image_id: str) -> bool:
        """Whether the disk cache holds the image's features (False without a disk cache): what a
        gallery relies on to find them after a restart (server/galleries.py)."""
        key = image_id.encode()
        if self._env is None or not 0 < len(key) <= self._env.max_key_size():
            return False
        with self._disk_lock, self._env.begin() as txn, txn.cursor() as cursor:
            return bool(cursor.set_key(key))

    def put(self, regions: CachedRegions) -> None:
        self.memory.put(regions.image_id, regions)
        if self._env is None:
            return
        value = pickle.dumps(regions.to_record().to_dict(), protocol=PICKLE_PROTOCOL)
        try:
            with self._disk_lock, self._env.begin(write=True) as txn:
                txn.put(regions.image_id.encode(), value)
        except lmdb.Error:  # disk full or map full: keep serving from memory
            pass

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None
