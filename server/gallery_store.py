"""Galleries on disk: ``<data_dir>/<detector key>/<name>/``, a small manifest naming immutable files.

One gallery's folder::

    manifest.json              its segments in order, deleted positions, epoch (the only file rewritten)
    seg-000007.npz             a segment's image ids (sha256 of the image bytes, as the region cache
                               keys them), in position order
    seg-000007.v3.npz          their pre-filter embeddings for model version 3 (`space_of`), one
                               (n, D) float32 array per region budget (``r101``); ``.unversioned.npz``
                               for a backend without versions
    seg-000007.regions.pkl     region features the region cache could not keep on disk (a gateway
                               without ``--cache-dir``), in the region cache's record layout

A gallery is its segments' images in order: position i is the i-th image of the concatenation.
Deleting an image marks its position (``removed``) until a compaction rewrites the gallery as one
segment (a new ``epoch``: positions renumbered).

Writes never change a file a manifest names.  An append writes its segment's files (each atomically:
`vilbert.io.atomic_write`, temporary sibling, fsync, rename), then replaces ``manifest.json`` the
same way: a crash before that rename leaves the old manifest, and the new files are unreferenced
garbage removed at the next load; after it, the whole append is there.  Files a commit stops naming
(a replaced gallery, a compaction, a model version no longer kept) are removed after the commit.
Deleting a gallery renames its folder to a hidden name first.  Galleries live per detector key, as
the region cache does (`server/region_cache.py`): a gateway started with another detector does not
see the galleries whose features it cannot read.  One process owns a store at a time (an exclusive
lock on ``<data_dir>/.lock``).  With no data_dir the same objects live in memory only (sizes are
then the arrays' bytes, for the quota).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import io
import json
import logging
import os
import pickle
import re
import shutil
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from regions.store import PICKLE_PROTOCOL, record_from_value
from server.region_cache import CachedRegions
from server.schemas import GALLERY_NAME
from vilbert.io import atomic_write_bytes, atomic_write_text, fsync_dir, make_dirs

log = logging.getLogger("server")
FORMAT = 1
MANIFEST = "manifest.json"
IDS = "ids"
REGIONS = "regions"
UNVERSIONED = "unversioned"
_NAME = re.compile(GALLERY_NAME)
_SPACE = re.compile(r"^(v[0-9]+|unversioned)$")


class StoreLockedError(RuntimeError):
    """Another process serves this gallery store."""


def space_of(version: int | None) -> str:
    """The key of a model version's embedding space: ``v3``, or ``unversioned``."""
    return UNVERSIONED if version is None else f"v{version}"


def version_of(space: str) -> int | None:
    return None if space == UNVERSIONED else int(space[1:])


def segment_file(segment_id: int, part: str) -> str:
    """The file of one part of a segment: its ids, its pinned regions, or one space's embeddings."""
    stem = f"seg-{segment_id:06d}"
    if part == IDS:
        return f"{stem}.npz"
    if part == REGIONS:
        return f"{stem}.regions.pkl"
    return f"{stem}.{part}.npz"


def regions_nbytes(regions: CachedRegions) -> int:
    arrays = (regions.boxes, regions.features, regions.objects, regions.object_scores)
    return sum(int(a.nbytes) for a in arrays) + 128


@dataclass(frozen=True, eq=False)
class Segment:
    """Images added together (one PUT / POST, or a compaction), with what is stored about them."""

    id: int
    image_ids: tuple[str, ...]
    # model space (`space_of`) -> region budget -> (n, D) float32 unit vectors, row i = image_ids[i]
    embeddings: Mapping[str, Mapping[int, np.ndarray]] = field(default_factory=dict)
    # region features kept by the store (the region cache has no disk copy of them)
    pinned: Mapping[str, CachedRegions] = field(default_factory=dict)
    sizes: Mapping[str, int] = field(default_factory=dict)  # part (IDS, REGIONS, a space) -> bytes

    @property
    def count(self) -> int:
        return len(self.image_ids)

    @property
    def nbytes(self) -> int:
        return sum(self.sizes.values())

    def has(self, space: str) -> bool:
        return space in self.embeddings

    def with_space(self, space: str, arrays: Mapping[int, np.ndarray]) -> Segment:
        return dataclasses.replace(self, embeddings={**self.embeddings, space: dict(arrays)})

    def keeping(self, spaces: Collection[str]) -> Segment:
        """This segment without the embeddings of spaces not in `spaces`."""
        if all(s in spaces for s in self.embeddings):
            return self
        return dataclasses.replace(
            self,
            embeddings={s: a for s, a in self.embeddings.items() if s in spaces},
            sizes={p: n for p, n in self.sizes.items() if p in (IDS, REGIONS) or p in spaces},
        )

    def parts(self) -> list[str]:
        return [IDS, *([REGIONS] if self.pinned else []), *self.embeddings]


@dataclass(frozen=True, eq=False)
class StoredGallery:
    """One gallery as committed: segments in position order, deleted positions, epoch."""

    name: str
    segments: tuple[Segment, ...] = ()
    removed: frozenset[int] = frozenset()
    epoch: int = 0  # bumped whenever positions are renumbered (a replace, a compaction)
    next_segment: int = 0  # segment ids are never reused within a gallery folder

    @cached_property
    def image_ids(self) -> tuple[str, ...]:
        """The image id at every position (deleted ones included)."""
        return tuple(i for seg in self.segments for i in seg.image_ids)

    @property
    def positions(self) -> int:
        return len(self.image_ids)

    @cached_property
    def where(self) -> dict[str, int]:
        """Image id -> its position, for the images not deleted."""
        return {image_id: p for p, image_id in enumerate(self.image_ids) if p not in self.removed}

    @cached_property
    def alive(self) -> np.ndarray:
        """The positions not deleted, in order."""
        return np.asarray([p for p in range(self.positions) if p not in self.removed], dtype=np.int64)

    @property
    def size(self) -> int:
        return self.positions - len(self.removed)

    @property
    def nbytes(self) -> int:
        return sum(seg.nbytes for seg in self.segments)

    @cached_property
    def pinned(self) -> dict[str, CachedRegions]:
        return {k: v for seg in self.segments for k, v in seg.pinned.items()}

    def complete(self, space: str) -> bool:
        """Every position has an embedding in `space`."""
        return all(seg.has(space) for seg in self.segments)

    def embedded(self, space: str) -> int:
        """Images (not deleted) with embeddings in `space`."""
        start, n = 0, 0
        for seg in self.segments:
            if seg.has(space):
                n += seg.count - sum(1 for p in self.removed if start <= p < start + seg.count)
            start += seg.count
        return n

    def budgets(self, space: str) -> list[int]:
        for seg in self.segments:
            if seg.has(space):
                return sorted(seg.embeddings[space])
        return []

    def vectors(self, space: str, budget: int) -> np.ndarray:
        """The (positions, D) embeddings of every position in `space` (the space must be complete)."""
        parts = [seg.embeddings[space][budget] for seg in self.segments]
        return np.concatenate(parts).astype(np.float32, copy=False) if parts else np.zeros((0, 0), np.float32)

    def spaces(self) -> set[str]:
        return {s for seg in self.segments for s in seg.embeddings}

    def manifest(self) -> dict:
        return {
            "format": FORMAT,
            "name": self.name,
            "epoch": self.epoch,
            "next_segment": self.next_segment,
            "removed": sorted(self.removed),
            "segments": [
                {
                    "id": seg.id,
                    "count": seg.count,
                    "pinned": len(seg.pinned),
                    "spaces": {s: sorted(a) for s, a in seg.embeddings.items()},
                    "sizes": dict(seg.sizes),
                }
                for seg in self.segments
            ],
        }


class GalleryStore:
    """The galleries' files (or nothing, with no data_dir): load, stage, write, commit, drop."""

    def __init__(self, root: str | Path | None, detector: str = "") -> None:
        self.root = Path(root) if root is not None else None
        self.dir = self.root / (detector or "default") if self.root is not None else None
        self._lock_fd: int | None = None
        if self.dir is not None:
            make_dirs(self.dir)
            self._acquire()

    @property
    def persistent(self) -> bool:
        return self.dir is not None

    def _acquire(self) -> None:
        assert self.root is not None
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StoreLockedError(
                f"gallery store {self.root} is in use by another gateway process; give each its own "
                "--data-dir"
            ) from None
        self._lock_fd = fd

    def reopen(self) -> None:
        """Own the store again after `close`."""
        if self.dir is not None and self._lock_fd is None:
            self._acquire()

    def close(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
            self._lock_fd = None

    # ------------------------------------------------------------------------------------------ load

    def load(self) -> dict[str, StoredGallery]:
        """Every committed gallery; garbage from interrupted writes is removed on the way."""
        if self.dir is None:
            return {}
        galleries: dict[str, StoredGallery] = {}
        for entry in sorted(self.dir.iterdir()):
            if entry.name.startswith("."):  # a deletion or a write interrupted by a crash
                _remove(entry)
                continue
            if not entry.is_dir() or not _NAME.match(entry.name):
                continue
            if not (entry / MANIFEST).is_file():  # a first write that never committed
                _remove(entry)
                continue
            try:
                gallery = self._read(entry.name)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("gallery %r in %s cannot be read (%s); it is not served", entry.name, entry, exc)
                continue
            self.collect(gallery)
            galleries[gallery.name] = gallery
        return galleries

    def _read(self, name: str) -> StoredGallery:
        assert self.dir is not None
        folder = self.dir / name
        manifest = json.loads((folder / MANIFEST).read_text())
        if manifest.get("format") != FORMAT:
            raise ValueError(f"manifest format {manifest.get('format')!r}, not {FORMAT}")
        segments = []
        for row in manifest["segments"]:
            seg_id, count = int(row["id"]), int(row["count"])
            with np.load(folder / segment_file(seg_id, IDS), allow_pickle=False) as z:
                ids = tuple(str(i) for i in z["ids"])
            if len(ids) != count:
                raise ValueError(f"segment {seg_id}: {len(ids)} image ids, the manifest says {count}")
            sizes = {IDS: (folder / segment_file(seg_id, IDS)).stat().st_size}
            pinned: dict[str, CachedRegions] = {}
            if int(row.get("pinned", 0)):
                path = folder / segment_file(seg_id, REGIONS)
                with open(path, "rb") as f:
                    values = pickle.load(f)
                for value in values:
                    regions = CachedRegions.from_record(record_from_value(str(value["image_id"]), value))
                    pinned[regions.image_id] = regions
                sizes[REGIONS] = path.stat().st_size
            embeddings: dict[str, dict[int, np.ndarray]] = {}
            for space, budgets in row.get("spaces", {}).items():
                path = folder / segment_file(seg_id, space)
                try:
                    with np.load(path, allow_pickle=False) as z:
                        arrays = {int(b): np.asarray(z[f"r{int(b)}"], dtype=np.float32) for b in budgets}
                    if any(a.ndim != 2 or a.shape[0] != count for a in arrays.values()):
                        raise ValueError("wrong shape")
                except (OSError, ValueError, KeyError) as exc:  # recomputable: drop it, keep the gallery
                    log.warning("gallery %r: %s unreadable (%s); recomputing it", name, path.name, exc)
                    continue
                embeddings[space] = arrays
                sizes[space] = path.stat().st_size
            segments.append(Segment(seg_id, ids, embeddings, pinned, sizes))
        return StoredGallery(
            name=name,
            segments=tuple(segments),
            removed=frozenset(int(p) for p in manifest.get("removed", [])),
            epoch=int(manifest.get("epoch", 0)),
            next_segment=int(manifest.get("next_segment", 0)),
        )

    # ------------------------------------------------------------------------------------------ write

    def stage(
        self, segment: Segment, parts: Collection[str] | None = None
    ) -> tuple[Segment, dict[str, bytes]]:
        """The segment with the sizes of `parts` (default: all) set, and those parts' file contents by
        file name (none without a data_dir: the sizes are then the arrays' bytes)."""
        files: dict[str, bytes] = {}
        sizes = dict(segment.sizes)
        for part in parts if parts is not None else segment.parts():
            if self.dir is None:
                sizes[part] = _memory_size(segment, part)
                continue
            data = _encode(segment, part)
            files[segment_file(segment.id, part)] = data
            sizes[part] = len(data)
        return dataclasses.replace(segment, sizes=sizes), files

    def write(self, name: str, files: Mapping[str, bytes]) -> None:
        """Write staged files (each atomically) into the gallery's folder; nothing names them yet."""
        if self.dir is None:
            return
        folder = self.dir / name
        for file_name, data in files.items():
            atomic_write_bytes(folder / file_name, data)

    def discard(self, name: str, files: Collection[str]) -> None:
        """Remove staged files a failed write left (garbage the next load would remove anyway)."""
        if self.dir is None:
            return
        for file_name in files:
            with contextlib.suppress(OSError):
                (self.dir / name / file_name).unlink()

    def commit(self, gallery: StoredGallery) -> None:
        """Make `gallery` the committed one (its manifest replaced atomically), then remove the files
        it no longer names."""
        if self.dir is None:
            return
        atomic_write_text(self.dir / gallery.name / MANIFEST, json.dumps(gallery.manifest()))
        self.collect(gallery)

    def collect(self, gallery: StoredGallery) -> None:
        """Remove every file of the gallery's folder that its manifest does not name."""
        if self.dir is None:
            return
        named = {MANIFEST} | {segment_file(seg.id, p) for seg in gallery.segments for p in seg.parts()}
        for path in (self.dir / gallery.name).iterdir():
            if path.name not in named:
                _remove(path)

    def drop(self, name: str) -> None:
        """Delete a gallery's folder: renamed to a hidden name (atomic), then removed."""
        if self.dir is None:
            return
        folder = self.dir / name
        if not folder.exists():
            return
        hidden = self.dir / f".{name}.deleted-{uuid.uuid4().hex[:8]}"
        os.replace(folder, hidden)
        fsync_dir(self.dir)
        _remove(hidden)


def is_disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()


def _encode(segment: Segment, part: str) -> bytes:
    buf = io.BytesIO()
    if part == IDS:
        np.savez(buf, ids=np.asarray(segment.image_ids, dtype=str))
    elif part == REGIONS:
        values = [r.to_record().to_dict() for r in segment.pinned.values()]
        pickle.dump(values, buf, protocol=PICKLE_PROTOCOL)
    else:
        if not _SPACE.match(part):
            raise ValueError(f"not a model space: {part!r}")
        arrays = segment.embeddings[part]
        np.savez(buf, **{f"r{b}": np.asarray(a, dtype=np.float32) for b, a in arrays.items()})
    return buf.getvalue()


def _memory_size(segment: Segment, part: str) -> int:
    if part == IDS:
        return sum(len(i) + 1 for i in segment.image_ids)
    if part == REGIONS:
        return sum(regions_nbytes(r) for r in segment.pinned.values())
    return sum(int(a.nbytes) for a in segment.embeddings[part].values())
