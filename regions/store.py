"""LMDB region-feature store in the 12-in-1 reference layout.

One LMDB environment holds one record per image:

* key ``b"keys"`` -> pickled ``list[bytes]`` of every image key;
* key ``str(image_id).encode()`` -> pickled ``dict`` with ``image_id``, ``image_h``, ``image_w``,
  ``num_boxes``, ``boxes`` (float32 ``(N, 4)``, x1,y1,x2,y2 in original image pixels) and
  ``features`` (float32 ``(N, D)``), as numpy arrays (reference ``script/convert_to_lmdb.py``).

The reader also accepts the legacy bottom-up-attention layout, where the pickled value is a TSV row
whose ``boxes`` / ``features`` / ``cls_prob`` are base64 strings of float32 buffers
(reference ``script/convert_h5_refcoco.py``), so a user's reference LMDBs load unchanged whichever they hold.

Nothing here adds the global region or computes 5-d locations: records are the raw detections;
the training loaders and the serving path do that processing.
"""

from __future__ import annotations

import base64
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import lmdb
import numpy as np

KEYS_KEY = b"keys"
# Fields of a record that are part of the reference layout; anything else lives in `extra`.
CORE_FIELDS = ("image_id", "image_h", "image_w", "num_boxes", "boxes", "features")
# Fields that the legacy TSV layout stores as base64 float32 buffers.
_BASE64_ARRAY_FIELDS = ("boxes", "features", "cls_prob")
# Protocol 4 is readable by every Python 3 the reference ran on (3.6+), and handles > 4 GiB values.
PICKLE_PROTOCOL = 4
DEFAULT_MAP_SIZE = 1 << 40  # 1 TiB of address space, as the reference; the file grows only as written


@dataclass
class RegionRecord:
    """One image's detections, in the reference layout."""

    image_id: str
    image_h: int
    image_w: int
    boxes: np.ndarray  # (N, 4) float32, x1,y1,x2,y2 in original image pixels
    features: np.ndarray  # (N, D) float32
    num_boxes: int  # N
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. "cls_prob", "objects"; stored if present

    def __post_init__(self) -> None:
        self.image_id = str(self.image_id)
        self.image_h, self.image_w = int(self.image_h), int(self.image_w)
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        n = self.boxes.shape[0]
        # The reference reader reshapes features by their row count, never trusting num_boxes.
        self.features = _rows(np.asarray(self.features, dtype=np.float32), n)
        if int(self.num_boxes) != n:
            raise ValueError(f"record {self.image_id!r}: num_boxes={self.num_boxes} but boxes has {n} rows")
        self.num_boxes = n

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[1])

    def to_dict(self) -> dict[str, Any]:
        """The pickled value in the reference layout (plain numpy arrays, readable by `pickle.loads`)."""
        out: dict[str, Any] = {
            "image_id": self.image_id,
            "image_h": self.image_h,
            "image_w": self.image_w,
            "num_boxes": self.num_boxes,
            "boxes": self.boxes,
            "features": self.features,
        }
        for k, v in self.extra.items():
            if k in CORE_FIELDS:
                raise ValueError(f"extra field {k!r} clashes with a core field of the layout")
            out[k] = v
        return out


def _rows(array: np.ndarray, n: int) -> np.ndarray:
    """`array` as n rows (flat buffers from the legacy layout included); keeps D when n == 0."""
    if array.ndim == 2 and array.shape[0] == n:
        return array
    if n:
        return array.reshape(n, -1)
    return array.reshape(0, array.shape[-1] if array.ndim == 2 else 0)


def _decode_b64_array(value: str | bytes) -> np.ndarray:
    raw = value.encode("ascii") if isinstance(value, str) else value
    return np.frombuffer(base64.b64decode(raw), dtype=np.float32)


def record_from_value(key: str, value: dict[str, Any]) -> RegionRecord:
    """Build a record from either layout's unpickled value."""
    item = dict(value)
    for name in _BASE64_ARRAY_FIELDS:
        if isinstance(item.get(name), str | bytes):
            item[name] = _decode_b64_array(item[name])
    boxes = np.asarray(item["boxes"], dtype=np.float32).reshape(-1, 4)
    n = boxes.shape[0]
    features = _rows(np.asarray(item["features"], dtype=np.float32), n)
    extra = {k: v for k, v in item.items() if k not in CORE_FIELDS}
    if isinstance(extra.get("cls_prob"), np.ndarray) and n:
        extra["cls_prob"] = extra["cls_prob"].reshape(n, -1)
    return RegionRecord(
        image_id=str(item.get("image_id", key)),
        image_h=int(item["image_h"]),
        image_w=int(item["image_w"]),
        boxes=boxes,
        features=features,
        num_boxes=n,
        extra=extra,
    )


def _open_env(path: Path, *, readonly: bool, map_size: int = DEFAULT_MAP_SIZE) -> lmdb.Environment:
    # A directory holds data.mdb (the reference layout); a plain file is an LMDB opened with subdir=False.
    subdir = not path.is_file()
    if readonly:
        return lmdb.open(
            str(path),
            subdir=subdir,
            readonly=True,
            lock=False,
            readahead=False,
            meminit=False,
            max_readers=256,
        )
    return lmdb.open(str(path), subdir=subdir, map_size=map_size, readahead=False, meminit=False)


# py-lmdb refuses to open one environment twice in a process, yet several tasks read the same LMDB
# (the COCO features serve VQA, retrieval, RefCOCO and GuessWhat): readers share one handle per
# (path, process), counted so the last `close()` really closes it.
_READ_ENVS: dict[tuple[str, int], list[Any]] = {}


def _drop_inherited_readers() -> None:
    """After a fork, close the handles inherited from the parent (py-lmdb would refuse to reopen
    their paths, and LMDB handles must not be used across a fork).  Readers are opened without the
    lock file, so closing the child's copy leaves the parent's handle untouched."""
    pid = os.getpid()
    for key in [k for k in _READ_ENVS if k[1] != pid]:
        env, _ = _READ_ENVS.pop(key)
        env.close()


def _acquire_reader(path: Path) -> lmdb.Environment:
    _drop_inherited_readers()
    key = (str(path.resolve()), os.getpid())
    entry = _READ_ENVS.get(key)
    if entry is None:
        entry = _READ_ENVS[key] = [_open_env(path, readonly=True), 0]
    entry[1] += 1
    return entry[0]


def _release_reader(path: Path) -> None:
    key = (str(path.resolve()), os.getpid())
    entry = _READ_ENVS.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] <= 0:
        entry[0].close()
        del _READ_ENVS[key]


class FeatureStore:
    """Read-only view of one region-feature LMDB.

    The environment is opened lazily and reopened after a fork, so one store object can be handed
    to DataLoader workers (LMDB handles must not cross a fork).  Stores on the same path share one
    handle within a process.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"region-feature LMDB not found: {self.path}")
        if self.path.is_dir() and not (self.path / "data.mdb").exists():
            raise FileNotFoundError(f"region-feature LMDB not found: {self.path} has no data.mdb")
        self._env: lmdb.Environment | None = None
        self._pid = -1
        self._keys: list[str] | None = None

    def _environment(self) -> lmdb.Environment:
        if self._env is None or self._pid != os.getpid():
            self._env = _acquire_reader(self.path)
            self._pid = os.getpid()
        return self._env

    def keys(self) -> list[str]:
        """All image keys, from the `keys` list (or a scan when an LMDB lacks one)."""
        if self._keys is None:
            with self._environment().begin() as txn:
                raw = txn.get(KEYS_KEY)
                if raw is not None:
                    keys = pickle.loads(raw)
                else:
                    keys = [k for k, _ in txn.cursor() if k != KEYS_KEY]
            self._keys = [k.decode() if isinstance(k, bytes) else str(k) for k in keys]
        return self._keys

    def __len__(self) -> int:
        return len(self.keys())

    def __contains__(self, image_id: object) -> bool:
        with self._environment().begin() as txn:
            return txn.get(str(image_id).encode()) is not None

    def __iter__(self):
        return iter(self.keys())

    def get(self, image_id: str | int) -> RegionRecord:
        key = str(image_id)
        with self._environment().begin() as txn:
            raw = txn.get(key.encode())
        if raw is None:
            raise KeyError(f"image id {key!r} not in region-feature LMDB {self.path}")
        return record_from_value(key, pickle.loads(raw))

    __getitem__ = get

    def close(self) -> None:
        if self._env is not None:
            if self._pid == os.getpid():
                _release_reader(self.path)
            self._env = None

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # Pickled into worker processes without the open handle.
        state = self.__dict__.copy()
        state["_env"] = None
        state["_pid"] = -1
        return state


class FeatureStoreWriter:
    """Writes records in the reference layout; resumable.

    Opening an existing LMDB keeps its records: `image_id in writer` says whether an image is already
    stored, so an interrupted extraction can skip it, and `close()` writes a `keys` list that merges
    the keys already present with the new ones.
    """

    def __init__(
        self,
        path: str | Path,
        feature_dim: int | None = None,
        *,
        map_size: int = DEFAULT_MAP_SIZE,
        commit_every: int = 256,
    ) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.feature_dim = feature_dim
        self.commit_every = commit_every
        if (str(self.path.resolve()), os.getpid()) in _READ_ENVS:
            raise RuntimeError(
                f"{self.path} is open for reading in this process; close its FeatureStore first"
            )
        self._env = _open_env(self.path, readonly=False, map_size=map_size)
        with self._env.begin() as txn:
            raw = txn.get(KEYS_KEY)
            existing = pickle.loads(raw) if raw is not None else []
            # Records committed before a crash may be missing from the keys list: scan for them too.
            scanned = [k for k, _ in txn.cursor() if k != KEYS_KEY]
        self._keys: list[bytes] = []
        self._key_set: set[bytes] = set()
        for k in [*existing, *scanned]:
            kb = k if isinstance(k, bytes) else str(k).encode()
            if kb not in self._key_set:
                self._key_set.add(kb)
                self._keys.append(kb)
        self._txn: lmdb.Transaction | None = None
        self._pending = 0

    def __contains__(self, image_id: object) -> bool:
        return str(image_id).encode() in self._key_set

    def __len__(self) -> int:
        return len(self._keys)

    def put(self, record: RegionRecord) -> None:
        if self._env is None:
            raise RuntimeError(f"writer for {self.path} is closed")
        if self.feature_dim is not None and record.num_boxes and record.feature_dim != self.feature_dim:
            raise ValueError(
                f"record {record.image_id!r} has {record.feature_dim}-d features; "
                f"this store holds {self.feature_dim}-d"
            )
        key = record.image_id.encode()
        if self._txn is None:
            self._txn = self._env.begin(write=True)
        self._txn.put(key, pickle.dumps(record.to_dict(), protocol=PICKLE_PROTOCOL))
        if key not in self._key_set:
            self._key_set.add(key)
            self._keys.append(key)
        self._pending += 1
        if self._pending >= self.commit_every:
            self.flush()

    def flush(self) -> None:
        if self._txn is not None:
            self._txn.commit()
            self._txn = None
            self._pending = 0

    def close(self) -> None:
        if self._env is None:
            return
        if self._txn is None:
            self._txn = self._env.begin(write=True)
        self._txn.put(KEYS_KEY, pickle.dumps(list(self._keys), protocol=PICKLE_PROTOCOL))
        self.flush()
        self._env.sync()
        self._env.close()
        self._env = None

    def __enter__(self) -> FeatureStoreWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Even on error the committed part and its keys are kept, so extraction can resume.
        self.close()
