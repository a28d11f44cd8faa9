"""Named galleries for `/retrieve`: kept across restarts, grown and pruned image by image, searched
through a faiss index per gallery and model version.

Layers, bottom up:

* `GalleryStore` (server/gallery_store.py): the files under ``data_dir`` (none: memory only), each
  write committed by a small manifest replaced last, so an interrupted append leaves the gallery as
  it was before it.
* `GalleryRegistry` (here): every gallery's committed `Snapshot` (shared by all the model versions
  served), the quota (`gallery_quota_bytes`: 507 past it), and one background builder thread.
  Model-free: embeddings come in as arrays, or through the `Embed` function of the version served.
* `Galleries` (here): what one `Service` (one model version) calls: `register` (PUT: replace),
  `append` (POST .../images), `remove` (one image), `drop`, `listing`, `info`, and `require` /
  `index_for`, the view `/retrieve` searches (server/retrieve.py).

Region features stay in the region cache (its LMDB, keyed by image sha256 under the detector's
folder: the galleries are kept per detector too); the store keeps the features the cache has no disk
copy of (a gateway without ``--cache-dir``, or a failed cache write).  An image whose features are
found nowhere after a restart is reported (`missing`) and skipped by searches until it is added again.

Model versions.  Embeddings are stored per model version (`space_of`: ``v3``; ``unversioned`` for a
backend without versions); the served version's and the previous one's are kept, so a rollback
recomputes nothing.  An append embeds its images with the version of the service it runs on.  When
another version is activated (server/models.py -> `Service.derive` -> `Galleries.rebuilt`), the
embeddings already stored for it are checked against the model (one image per gallery re-embedded:
stale ones are dropped) and the missing ones are computed **in the background**.  Until a gallery's
embeddings and index for the served version are complete, two-stage `/retrieve` on it answers 503
with Retry-After and a message naming the rebuild and its progress (`mode=exhaustive` still works).
The builder also upgrades an index from exact to HNSW when a gallery grows past `gallery_flat_max`,
and compacts a gallery (drops its deleted positions, frees their bytes) once a tenth of it is deleted,
or merges its segments (one per append) once there are more than `MAX_SEGMENTS`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from server import schemas as s
from server.errors import InsufficientStorageError, InvalidInputError, NotFoundError, RebuildingError
from server.gallery_store import GalleryStore, Segment, StoredGallery, is_disk_full, space_of
from server.images import Images
from server.inference import Inference
from server.region_cache import CachedRegions, RegionCache
from server.settings import Settings
from server.vector_index import IndexParams, VectorIndex
from vilbert.tasks import Endpoint, tasks_for_endpoint

log = logging.getLogger("server")

Embed = Callable[[Sequence[CachedRegions]], dict[int, np.ndarray]]  # images -> region budget -> (N, D)
KEEP_SPACES = 2  # embedding spaces kept per gallery: the served version's and the previous one's
COMPACT_MIN = 32  # deleted positions before a compaction is worth it (and at least a tenth)
MAX_SEGMENTS = 64  # appends (segments) a gallery is made of before the builder merges them
BUILD_CHUNK = 256  # images embedded per builder step (progress granularity)
SAME_EMBEDDING = 0.999  # cosine above which a stored embedding still matches the model
ASSUMED_BUILD_RATE = 50.0  # images/s the builder embeds, until measured (for Retry-After)


class _SupersededError(Exception):
    """The builder's step in hand no longer matters (another version is served, or it is stopping)."""


@dataclass(frozen=True, eq=False)
class Snapshot:
    """A gallery as committed, with the search indexes built over it (each covers every position)."""

    stored: StoredGallery
    # model space -> region budget -> index
    indexes: Mapping[str, Mapping[int, VectorIndex]] = field(default_factory=dict)


class GalleryRegistry:
    """Every gallery's snapshot, shared by the model versions served; writes one at a time."""

    def __init__(self, settings: Settings, cache: RegionCache) -> None:
        self.settings = settings
        self.cache = cache
        self.params = IndexParams(
            settings.gallery_flat_max, settings.hnsw_m, settings.hnsw_ef_search, settings.threads
        )
        self.store = GalleryStore(settings.data_dir, cache.detector)
        self._snapshots = {name: Snapshot(g) for name, g in self.store.load().items()}
        self._missing = {name: self._find_missing(snap.stored) for name, snap in self._snapshots.items()}
        self._bytes = sum(snap.stored.nbytes for snap in self._snapshots.values())
        self._write = threading.RLock()  # commits (requests and the builder), one at a time
        self._served: str | None = None
        self._embed: Embed | None = None
        self._previous: str | None = None
        # The builder: galleries to look at (an ordered set), the one in hand, its progress.
        self._work = threading.Condition()
        self._dirty: dict[str, None] = {}
        self._busy = False
        self._stop = False
        self._thread: threading.Thread | None = None
        self._progress: dict[str, int] = {}
        self._stuck: set[tuple[str, int, str]] = set()  # (gallery, segment, space) with no features at all
        self._rate = ASSUMED_BUILD_RATE
        if self._snapshots:
            missing = sum(len(m) for m in self._missing.values())
            log.info(
                "galleries: %d loaded from %s (%d bytes)%s",
                len(self._snapshots),
                self.store.dir,
                self._bytes,
                f"; {missing} images have no region features (add them again)" if missing else "",
            )

    # ------------------------------------------------------------------------------------------ reads

    def get(self, name: str) -> Snapshot | None:
        return self._snapshots.get(name)

    def names(self) -> list[str]:
        return sorted(self._snapshots)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def missing(self, name: str) -> set[str]:
        return self._missing.get(name, set())

    def features(self, stored: StoredGallery, image_id: str) -> CachedRegions | None:
        """An image's region features: kept by the store, else from the region cache (memory, disk)."""
        pinned = stored.pinned.get(image_id)
        return pinned if pinned is not None else self.cache.get(image_id)[0]

    def pinned(self, image_id: str) -> CachedRegions | None:
        """Features the store keeps for an image of any gallery (None: ask the region cache)."""
        for snap in list(self._snapshots.values()):
            found = snap.stored.pinned.get(image_id)
            if found is not None:
                return found
        return None

    def embedded(self, name: str, space: str) -> int:
        """Images of the gallery with embeddings in `space`, counting the builder's work in hand."""
        snap = self._snapshots.get(name)
        if snap is None:
            return 0
        return min(snap.stored.size, snap.stored.embedded(space) + self._progress.get(name, 0))

    def eta(self, name: str, space: str) -> int:
        """Seconds until the builder should have embedded the gallery in `space` (for Retry-After)."""
        snap = self._snapshots.get(name)
        left = 0 if snap is None else snap.stored.size - self.embedded(name, space)
        return math.ceil(left / max(self._rate, 1e-3))

    def _find_missing(self, stored: StoredGallery) -> set[str]:
        return {i for i in stored.where if i not in stored.pinned and not self.cache.stored(i)}

    # ------------------------------------------------------------------------------------------ versions

    def serve(self, space: str, embed: Embed | None) -> None:
        """The model version served from now on (`embed`: its pre-filter, None without one).  Stored
        embeddings of `space` are checked against it; the rest is the builder's work."""
        with self._write:
            if self._served is not None and space != self._served:
                self._previous = self._served
            self._served, self._embed = space, embed
            names = list(self._snapshots)
            if embed is not None:
                for name in names:
                    self._verify(name, space, embed)
                    self._index_if_cheap(name, space)
        self.wake(*names)

    def _verify(self, name: str, space: str, embed: Embed) -> None:
        """Drop the gallery's `space` embeddings when the model no longer computes them (one image
        re-embedded: a backend without versions may serve another checkpoint after a restart)."""
        snap = self._snapshots[name]
        stored = snap.stored
        for seg in stored.segments:
            if not seg.has(space):
                continue
            for row, image_id in enumerate(seg.image_ids):
                regions = self.features(stored, image_id)
                if regions is None:
                    continue
                try:
                    fresh = embed([regions])
                except Exception as exc:  # the backend is down: keep them, the builder retries later
                    log.warning("gallery %r: embeddings not checked (%s)", name, exc)
                    return
                kept = seg.embeddings[space]
                same = set(fresh) == set(kept) and all(
                    kept[b].shape[1] == fresh[b].shape[1]
                    and float(kept[b][row] @ fresh[b][0]) >= SAME_EMBEDDING
                    for b in fresh
                )
                if not same:
                    log.warning(
                        "gallery %r: stored %s embeddings do not match the model; recomputing", name, space
                    )
                    new = dataclasses.replace(
                        stored, segments=tuple(g.keeping(stored.spaces() - {space}) for g in stored.segments)
                    )
                    indexes = {k: v for k, v in snap.indexes.items() if k != space}
                    self._commit(snap, new, {}, indexes)
                return

    def _index_if_cheap(self, name: str, space: str) -> None:
        """Build the gallery's exact index for `space` now when it is complete and small."""
        snap = self._snapshots[name]
        stored = snap.stored
        if space in snap.indexes or not stored.segments or not stored.complete(space):
            return
        if self.params.kind_for(stored.positions) != "flat":
            return
        built = {b: VectorIndex.build(stored.vectors(space, b), self.params) for b in stored.budgets(space)}
        self._snapshots[name] = Snapshot(stored, {**snap.indexes, space: built})

    # ------------------------------------------------------------------------------------------ writes

    def put(
        self,
        name: str,
        regions: Sequence[CachedRegions],
        space: str | None,
        vectors: Mapping[int, np.ndarray] | None,
        replace: bool = False,
    ) -> tuple[Snapshot, list[str], list[str]]:
        """Add images (their embeddings in `space`: row i of each array for regions[i]) to gallery
        `name`, created if missing; `replace`: instead of what it held.  Returns the new snapshot,
        the ids added and those already in the gallery.  507 past the quota or on a full disk."""
        with self._write:
            old = self._snapshots.get(name)
            if replace or old is None:
                base = StoredGallery(
                    name,
                    epoch=old.stored.epoch + 1 if old is not None else 0,
                    next_segment=old.stored.next_segment if old is not None else 0,
                )
            else:
                base = old.stored
            keep = [i for i, r in enumerate(regions) if r.image_id not in base.where]
            present = [r.image_id for r in regions if r.image_id in base.where]
            if old is not None and not replace and not keep:
                self.refresh_missing(name, present)
                return old, [], present
            fresh = [regions[i] for i in keep]
            pinned = {r.image_id: r for r in fresh if not self.cache.stored(r.image_id)}
            embeddings = {}
            if space is not None and vectors:
                embeddings[space] = {
                    b: np.ascontiguousarray(v[keep], dtype=np.float32) for b, v in vectors.items()
                }
            ids = tuple(r.image_id for r in fresh)
            segment, files = self.store.stage(Segment(base.next_segment, ids, embeddings, pinned))
            new = self._keep_spaces(
                dataclasses.replace(
                    base, segments=(*base.segments, segment), next_segment=base.next_segment + 1
                )
            )
            delta = new.nbytes - (old.stored.nbytes if old is not None else 0)
            quota = self.settings.gallery_quota_bytes
            if delta > 0 and self._bytes + delta > quota:
                raise InsufficientStorageError(
                    f"images: adding them to gallery {name!r} needs {delta} more bytes, and the gallery "
                    f"store holds {self._bytes} of its {quota}-byte quota (TWELVE_GALLERY_QUOTA_BYTES); "
                    "delete images or galleries first, or raise the quota",
                    "images",
                )
            self._persist(new, files)
            self._publish(old, new, self._indexes_after(old, new, segment, space, replace))
            if replace or old is None:
                self._missing[name] = set()
            self.refresh_missing(name, present)
            snap = self._snapshots[name]
        self.wake(name)
        return snap, list(ids), present

    def _indexes_after(
        self, old: Snapshot | None, new: StoredGallery, segment: Segment, space: str | None, replace: bool
    ) -> dict[str, Mapping[int, VectorIndex]]:
        """The indexes of the gallery after adding `segment`: the served index extended in place (a
        request holding the older snapshot ignores the rows past it), or a new one for a small
        complete gallery; the builder builds the others."""
        if space is None or not segment.has(space):
            return {}
        index = old.indexes.get(space) if old is not None and not replace else None
        if index and all(len(ix) == old.stored.positions for ix in index.values()):  # type: ignore[union-attr]
            for budget, rows in segment.embeddings[space].items():
                index[budget].add(rows)
            return {space: index}
        if new.complete(space) and (replace or self.params.kind_for(new.positions) == "flat"):
            return {
                space: {b: VectorIndex.build(new.vectors(space, b), self.params) for b in new.budgets(space)}
            }
        return {}

    def remove(self, name: str, image_id: str) -> Snapshot:
        """Delete one image from a gallery (its position is marked; a compaction frees it later)."""
        with self._write:
            snap = self._require(name)
            position = snap.stored.where.get(image_id)
            if position is None:
                raise NotFoundError(f"image_id: gallery {name!r} has no image {image_id!r}", "image_id")
            new = dataclasses.replace(snap.stored, removed=snap.stored.removed | {position})
            self._commit(snap, new, {}, snap.indexes)
            self._missing.get(name, set()).discard(image_id)
            snap = self._snapshots[name]
        if self._compactable(snap.stored):
            self.wake(name)
        return snap

    def drop(self, name: str) -> StoredGallery:
        """Delete a gallery and its files."""
        with self._write:
            snap = self._require(name)
            self.store.drop(name)
            del self._snapshots[name]
            self._missing.pop(name, None)
            self._bytes -= snap.stored.nbytes
        return snap.stored

    def _require(self, name: str) -> Snapshot:
        snap = self._snapshots.get(name)
        if snap is None:
            raise NotFoundError(f"name: no gallery named {name!r}", "name")
        return snap

    def refresh_missing(self, name: str, sent: Collection[str]) -> None:
        """Images sent again whose features are found now are no longer missing."""
        missing = self._missing.get(name)
        found = {
            i for i in sent if missing and i in missing and (self.cache.stored(i) or self.cache.memory.get(i))
        }
        if found:
            missing.difference_update(found)  # type: ignore[union-attr]
            self._stuck = {k for k in self._stuck if k[0] != name}  # their segments can be embedded now
            self.wake(name)

    def _keep_spaces(self, gallery: StoredGallery) -> StoredGallery:
        keep = {sp for sp in (self._served, self._previous) if sp is not None}
        if len(gallery.spaces()) <= KEEP_SPACES or gallery.spaces() <= keep:
            return gallery
        return dataclasses.replace(gallery, segments=tuple(g.keeping(keep) for g in gallery.segments))

    def _commit(
        self,
        old: Snapshot | None,
        new: StoredGallery,
        files: Mapping[str, bytes],
        indexes: Mapping[str, Mapping[int, VectorIndex]],
    ) -> None:
        """Write `files`, commit `new` (its manifest last) and publish it.  Under `_write`."""
        self._persist(new, files)
        self._publish(old, new, indexes)

    def _persist(self, new: StoredGallery, files: Mapping[str, bytes]) -> None:
        """Write `files`, then commit `new` (its manifest last); a full disk is a 507."""
        try:
            self.store.write(new.name, files)
            self.store.commit(new)
        except OSError as exc:
            self.store.discard(new.name, list(files))
            if is_disk_full(exc):
                raise InsufficientStorageError(
                    f"gallery store: the disk is full ({exc.strerror}); delete images or galleries", "images"
                ) from None
            raise

    def _publish(
        self, old: Snapshot | None, new: StoredGallery, indexes: Mapping[str, Mapping[int, VectorIndex]]
    ) -> None:
        self._bytes += new.nbytes - (old.stored.nbytes if old is not None else 0)
        self._snapshots[new.name] = Snapshot(new, indexes)

    # ------------------------------------------------------------------------------------------ builder

    def wake(self, *names: str) -> None:
        """Have the builder look at these galleries (started on first use, and again after `close`)."""
        if not names:
            return
        with self._work:
            for name in names:
                self._dirty[name] = None
            if self._thread is None or not self._thread.is_alive():
                self._stop = False
                self._thread = threading.Thread(target=self._run, name="twelve-galleries", daemon=True)
                self._thread.start()
            self._work.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until the builder has nothing left to do (tests, benchmarks); False on timeout."""
        with self._work:
            return self._work.wait_for(lambda: not self._dirty and not self._busy, timeout)

    def _run(self) -> None:
        failures = 0
        while True:
            with self._work:
                while not self._dirty and not self._stop:
                    self._busy = False
                    self._work.notify_all()
                    self._work.wait()
                if self._stop:
                    self._busy = False
                    self._work.notify_all()
                    return
                name = next(iter(self._dirty))
                del self._dirty[name]
                self._busy = True
            try:
                self._settle(name)
                failures = 0
            except Exception as exc:
                failures += 1
                delay = min(60.0, 2.0**failures)
                log.warning("gallery %r: background build failed (%s); retrying in %.0f s", name, exc, delay)
                with self._work:
                    self._work.wait(delay)
                    if not self._stop:
                        self._dirty.setdefault(name, None)
            finally:
                self._progress.pop(name, None)

    def _settle(self, name: str) -> None:
        """Bring one gallery up to date for the served version: embeddings, index, compaction.  Model
        work runs outside the write lock; each result is committed only if the gallery did not change
        underneath it in a way that invalidates it (else the step is redone)."""
        while not self._stop:
            snap = self._snapshots.get(name)
            space, embed = self._served, self._embed
            if snap is None:
                return
            stored = snap.stored
            if space is not None and embed is not None:
                todo = next(
                    (
                        g
                        for g in stored.segments
                        if not g.has(space) and (name, g.id, space) not in self._stuck
                    ),
                    None,
                )
                if todo is not None:
                    try:
                        arrays = self._embed_segment(name, stored, todo, space, embed)
                    except _SupersededError:
                        continue
                    if arrays is None:
                        self._stuck.add((name, todo.id, space))
                        continue
                    with self._write:
                        cur = self._snapshots.get(name)
                        if cur is None or self._served != space:
                            continue
                        segments = list(cur.stored.segments)
                        at = next((k for k, g in enumerate(segments) if g.id == todo.id), None)
                        if at is None or segments[at].image_ids != todo.image_ids or segments[at].has(space):
                            continue  # gone, or a gallery made again under this name meanwhile
                        segments[at], files = self.store.stage(
                            segments[at].with_space(space, arrays), [space]
                        )
                        new = self._keep_spaces(dataclasses.replace(cur.stored, segments=tuple(segments)))
                        self._commit(cur, new, files, cur.indexes)
                    continue
                want = self.params.kind_for(stored.positions)
                have = snap.indexes.get(space)
                if (
                    stored.segments
                    and stored.complete(space)
                    and (have is None or any(index.kind != want for index in have.values()))
                ):
                    built = {
                        b: VectorIndex.build(stored.vectors(space, b), self.params, want)
                        for b in stored.budgets(space)
                    }
                    with self._write:
                        cur = self._snapshots.get(name)
                        if (
                            cur is None
                            or self._served != space
                            or cur.stored.epoch != stored.epoch
                            or cur.stored.image_ids[: stored.positions] != stored.image_ids
                        ):
                            continue
                        extra = cur.stored.segments[len(stored.segments) :]
                        if not all(g.has(space) for g in extra):
                            continue
                        for g in extra:
                            for b, index in built.items():
                                index.add(g.embeddings[space][b])
                        self._snapshots[name] = Snapshot(cur.stored, {space: built})
                    continue
            if self._compactable(stored):
                new, files, indexes = self._compacted(snap, space)
                with self._write:
                    if self._snapshots.get(name) is not snap:
                        continue
                    self._commit(snap, new, files, indexes)
                continue
            return

    def _embed_segment(
        self, name: str, stored: StoredGallery, segment: Segment, space: str, embed: Embed
    ) -> dict[int, np.ndarray] | None:
        """A segment's embeddings (zero rows for images whose features are missing); None when no
        image of it has features and no other segment tells the embeddings' shape."""
        found: list[tuple[list[int], dict[int, np.ndarray]]] = []
        started = time.perf_counter()
        for start in range(0, segment.count, BUILD_CHUNK):
            rows, images = [], []
            for j, image_id in enumerate(segment.image_ids[start : start + BUILD_CHUNK]):
                regions = self.features(stored, image_id)
                if regions is not None:
                    rows.append(start + j)
                    images.append(regions)
            if images:
                found.append((rows, embed(images)))
            self._progress[name] = start + BUILD_CHUNK
            if self._stop or self._served != space:
                raise _SupersededError
        elapsed = time.perf_counter() - started
        if elapsed > 0 and segment.count >= 16:
            self._rate = segment.count / elapsed
        shapes = {b: a.shape[1] for b, a in found[0][1].items()} if found else None
        if shapes is None:
            other = next((g for g in stored.segments if g.has(space)), None)
            if other is None:
                return None
            shapes = {b: a.shape[1] for b, a in other.embeddings[space].items()}
        arrays = {b: np.zeros((segment.count, d), np.float32) for b, d in shapes.items()}
        for rows, vectors in found:
            for b, a in vectors.items():
                arrays[b][rows] = a
        return arrays

    def _compactable(self, stored: StoredGallery) -> bool:
        """A tenth of the gallery deleted (at least COMPACT_MIN images, or all of it), or many segments."""
        removed = len(stored.removed)
        many = removed >= max(COMPACT_MIN, stored.positions // 10)
        return (removed > 0 and (stored.size == 0 or many)) or len(stored.segments) > MAX_SEGMENTS

    def _compacted(
        self, snap: Snapshot, space: str | None
    ) -> tuple[StoredGallery, dict[str, bytes], dict[str, Mapping[int, VectorIndex]]]:
        """The gallery rewritten as one segment of its remaining images (positions renumbered when
        some were deleted; else its indexes stay valid).  Spaces not complete are dropped."""
        stored = snap.stored
        if not stored.removed:  # segments merged, positions unchanged
            ids = stored.image_ids
            embeddings = {
                sp: {b: stored.vectors(sp, b) for b in stored.budgets(sp)}
                for sp in stored.spaces()
                if stored.complete(sp)
            }
            segment, files = self.store.stage(Segment(stored.next_segment, ids, embeddings, stored.pinned))
            merged = StoredGallery(
                stored.name, (segment,), frozenset(), stored.epoch, stored.next_segment + 1
            )
            return merged, files, {sp: ix for sp, ix in snap.indexes.items() if sp in embeddings}
        alive = stored.alive
        ids = tuple(stored.image_ids[p] for p in alive)
        embeddings = {
            sp: {b: stored.vectors(sp, b)[alive] for b in stored.budgets(sp)}
            for sp in stored.spaces()
            if stored.complete(sp)
        }
        pinned = {i: stored.pinned[i] for i in ids if i in stored.pinned}
        segments: tuple[Segment, ...] = ()
        files: dict[str, bytes] = {}
        if ids:
            segment, files = self.store.stage(Segment(stored.next_segment, ids, embeddings, pinned))
            segments = (segment,)
        new = StoredGallery(stored.name, segments, frozenset(), stored.epoch + 1, stored.next_segment + 1)
        indexes: dict[str, Mapping[int, VectorIndex]] = {}
        if ids and space in embeddings:
            indexes[space] = {b: VectorIndex.build(a, self.params) for b, a in embeddings[space].items()}
        return new, files, indexes

    # ------------------------------------------------------------------------------------------ life

    def open(self) -> None:
        """Own the store again after `close` (an app started after a shutdown, as test clients do)."""
        self.store.reopen()

    def close(self) -> None:
        """Stop the builder (its step in hand is abandoned; the next start redoes it), free the store."""
        with self._work:
            self._stop = True
            self._work.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=30)
        self.store.close()


@dataclass(frozen=True, eq=False)
class Gallery:
    """A gallery as one request sees it: one committed snapshot, read in one model version's space."""

    name: str
    snapshot: Snapshot
    space: str
    registry: GalleryRegistry

    @property
    def stored(self) -> StoredGallery:
        return self.snapshot.stored

    @property
    def size(self) -> int:
        return self.stored.size

    @property
    def image_ids(self) -> list[str]:
        return [self.stored.image_ids[p] for p in self.stored.alive]

    @property
    def embeddings(self) -> dict[int, np.ndarray]:
        """Region budget -> (size, D) embeddings of the images, in order ({} until complete)."""
        stored = self.stored
        if not stored.segments or not stored.complete(self.space):
            return {}
        return {b: stored.vectors(self.space, b)[stored.alive] for b in stored.budgets(self.space)}

    def index(self, budget: int) -> VectorIndex | None:
        return self.snapshot.indexes.get(self.space, {}).get(budget)

    def search(self, index: VectorIndex, query: np.ndarray, k: int) -> list[int]:
        """Positions of the `k` images nearest to `query` (best first)."""
        _, positions = index.search(query, k, self.stored.positions, self.stored.removed)
        return [int(p) for p in positions]

    def regions(self, positions: Sequence[int]) -> list[CachedRegions]:
        """Region features of the images at `positions`, in order; images without any are skipped."""
        stored = self.stored
        out = []
        for p in positions:
            regions = self.registry.features(stored, stored.image_ids[p])
            if regions is not None:
                out.append(regions)
        return out


class Galleries:
    """The galleries through one model version: what the routes and `/retrieve` call."""

    def __init__(
        self,
        settings: Settings,
        images: Images,
        inference: Inference,
        registry: GalleryRegistry | None = None,
        version: int | None = None,
    ) -> None:
        self.settings = settings
        self.images = images
        self.inference = inference
        self.version = version
        self.space = space_of(version)
        self.registry = registry if registry is not None else GalleryRegistry(settings, images.cache)
        self.registry.serve(self.space, self._embeddings if inference.has_prefilter else None)

    def rebuilt(self, inference: Inference, version: int | None = None) -> Galleries:
        """The same galleries served by another model version: its stored embeddings checked, the
        missing ones computed in the background (see the module docstring)."""
        return Galleries(self.settings, self.images, inference, self.registry, version)

    def _embeddings(self, images: Sequence[CachedRegions]) -> dict[int, np.ndarray]:
        """Pre-filter embeddings of `images`, one set per distinct region budget of the retrieval tasks."""
        embeddings: dict[int, np.ndarray] = {}
        for task in tasks_for_endpoint(Endpoint.RETRIEVE):
            if task.max_regions not in embeddings:
                embeddings[task.max_regions] = self.inference.image_embeddings(task, images)
        return embeddings

    # ------------------------------------------------------------------------------------------ reads

    def find(self, name: str) -> Gallery | None:
        snap = self.registry.get(name)
        return None if snap is None else Gallery(name, snap, self.space, self.registry)

    def require(self, name: str, field: str = "gallery") -> Gallery:
        gallery = self.find(name)
        if gallery is None:
            raise NotFoundError(f"{field}: no gallery named {name!r}; PUT /galleries/{{name}} first", field)
        return gallery

    def index_for(self, gallery: Gallery, budget: int) -> VectorIndex:
        """The gallery's stage-1 index for this model version; 503 + Retry-After while it is built."""
        index = gallery.index(budget)
        if index is not None:
            return index
        self.registry.wake(gallery.name)
        model = f"model version {self.version}" if self.version is not None else "this model"
        done, size = self.registry.embedded(gallery.name, self.space), gallery.size
        wait = max(self.settings.retry_after_s, min(300, self.registry.eta(gallery.name, self.space)))
        what = (
            f"its pre-filter embeddings for {model} are being rebuilt ({done}/{size} images)"
            if done < size
            else f"its search index for {model} is being built"
        )
        missing = len(self.registry.missing(gallery.name))
        note = f"; {missing} of its images have no region features: add them again" if missing else ""
        raise RebuildingError(
            f"gallery {gallery.name!r}: {what}; retry in {wait} s, or search it with mode=exhaustive{note}",
            "gallery",
            retry_after=wait,
        )

    def summary(self, name: str, snap: Snapshot) -> s.GallerySummary:
        stored = snap.stored
        has = self.inference.has_prefilter
        indexes = snap.indexes.get(self.space) if has else None
        return s.GallerySummary(
            name=name,
            size=stored.size,
            prefilter=bool(indexes),
            model_version=self.version,
            embedded=self.registry.embedded(name, self.space) if has else 0,
            index=next(iter(indexes.values())).kind if indexes else None,
            missing=len(self.registry.missing(name)),
            stored_bytes=stored.nbytes,
        )

    def info(self, name: str, offset: int = 0, limit: int | None = None) -> s.GalleryInfo:
        gallery = self.require(name, "name")
        ids = gallery.image_ids
        window = ids[offset : None if limit is None else offset + limit]
        return s.GalleryInfo(
            **self.summary(name, gallery.snapshot).model_dump(), image_ids=window, offset=offset
        )

    def listing(self) -> s.GalleryList:
        rows = []
        for name in self.registry.names():
            snap = self.registry.get(name)
            if snap is not None:
                rows.append(self.summary(name, snap))
        return s.GalleryList(
            galleries=rows,
            stored_bytes=self.registry.nbytes,
            quota_bytes=self.settings.gallery_quota_bytes,
            persistent=self.registry.store.persistent,
        )

    # ------------------------------------------------------------------------------------------ writes

    def register(self, name: str, req: s.GalleryRequest, uploads: Mapping[str, bytes]) -> s.GalleryInfo:
        """`PUT`: the gallery is these images (replacing what it held).  Each is resolved (and cached);
        with a pre-filter their embeddings and the search index are stored for two-stage /retrieve."""
        snap, _, _ = self._add(name, req, uploads, replace=True)
        return s.GalleryInfo(**self.summary(name, snap).model_dump(), image_ids=list(snap.stored.image_ids))

    def append(self, name: str, req: s.GalleryRequest, uploads: Mapping[str, bytes]) -> s.GalleryAppended:
        """`POST .../images`: add images (those already in it are left as they are); creates the gallery."""
        snap, added, present = self._add(name, req, uploads, replace=False)
        return s.GalleryAppended(**self.summary(name, snap).model_dump(), added=added, present=present)

    def remove(self, name: str, image_id: str) -> s.GallerySummary:
        self.require(name, "name")
        return self.summary(name, self.registry.remove(name, image_id))

    def drop(self, name: str) -> s.GalleryDeleted:
        stored = self.registry.drop(name)
        return s.GalleryDeleted(name=name, deleted=True, size=stored.size)

    def _add(
        self, name: str, req: s.GalleryRequest, uploads: Mapping[str, bytes], replace: bool
    ) -> tuple[Snapshot, list[str], list[str]]:
        cap = self.settings.max_gallery_images
        if len(req.images) > cap:
            raise InvalidInputError(
                f"images: at most {cap} images per request (TWELVE_MAX_GALLERY_IMAGES); a gallery grows "
                f"past it with POST /galleries/{name}/images",
                "images",
            )
        images = self._resolve(req.images, uploads)
        snap = None if replace else self.registry.get(name)
        held = snap.stored.where if snap is not None else {}
        fresh = [r for r in images if r.image_id not in held]
        present = [r.image_id for r in images if r.image_id in held]
        vectors = self._embeddings(fresh) if fresh and self.inference.has_prefilter else None
        snap, added, also = self.registry.put(name, fresh, self.space if vectors else None, vectors, replace)
        if present:
            self.registry.refresh_missing(name, present)
        return snap, added, present + also

    def _resolve(self, refs: Sequence[s.ImageRef], uploads: Mapping[str, bytes]) -> list[CachedRegions]:
        """Regions of `images.<i>`, each distinct image once; an `image_id` the store keeps the
        features of is found there too (after a restart without a disk region cache)."""
        seen: dict[str, CachedRegions] = {}
        for i, ref in enumerate(refs):
            regions = self.registry.pinned(ref.image_id) if ref.image_id is not None else None
            if regions is None:
                regions = self.images.resolve(ref, uploads, f"images.{i}").regions
            seen.setdefault(regions.image_id, regions)
        return list(seen.values())

    # ------------------------------------------------------------------------------------------ life

    def wait_idle(self, timeout: float | None = None) -> bool:
        return self.registry.wait_idle(timeout)

    def open(self) -> None:
        self.registry.open()

    def close(self) -> None:
        self.registry.close()
