"""The gallery store (server/gallery_store.py) under the registry (server/galleries.py), model-free:
commits, reloads, garbage, quota, compaction, and a writer killed with SIGKILL mid-append."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from server import galleries as g
from server.errors import InsufficientStorageError, NotFoundError
from server.gallery_store import MANIFEST, GalleryStore, StoreLockedError
from server.region_cache import CachedRegions, RegionCache
from server.settings import Settings
from server.vector_index import IndexParams, VectorIndex

ROOT = Path(__file__).resolve().parents[2]
SPACE = "unversioned"
BUDGET = 101
DIM = 8
BATCH = 5


def fake_regions(image_id: str) -> CachedRegions:
    rng = np.random.default_rng(int(hashlib.sha256(image_id.encode()).hexdigest()[:8], 16))
    n = 3
    return CachedRegions(
        image_id,
        64,
        48,
        (rng.random((n, 4)) * 40).astype(np.float32),
        rng.standard_normal((n, 16)).astype(np.float32),
        np.arange(n, dtype=np.int64),
        rng.random(n).astype(np.float32),
    )


def vector(image_id: str) -> np.ndarray:
    _, i, j = image_id.split("-")
    v = np.random.default_rng(int(i) * 1000 + int(j)).standard_normal(DIM)
    return (v / np.linalg.norm(v)).astype(np.float32)


def batch(i: int) -> tuple[list[CachedRegions], dict[int, np.ndarray]]:
    """Batch i of the appends: BATCH images and their embeddings, a function of i alone."""
    ids = [f"img-{i}-{j}" for j in range(BATCH)]
    return [fake_regions(x) for x in ids], {BUDGET: np.stack([vector(x) for x in ids])}


def registry(data: Path | None, cache: RegionCache | None = None, **settings) -> g.GalleryRegistry:
    return g.GalleryRegistry(Settings(data_dir=data, **settings), cache or RegionCache(16, None))


def test_commit_reload_and_garbage(tmp_path):
    reg = registry(tmp_path / "data")
    for i in range(3):
        regions, vectors = batch(i)
        _, added, present = reg.put("g", regions, SPACE, vectors)
        assert len(added) == BATCH and present == []
    regions, vectors = batch(1)
    _, added, present = reg.put("g", regions[:2], SPACE, {BUDGET: vectors[BUDGET][:2]})
    assert added == [] and present == [r.image_id for r in regions[:2]]
    assert reg.get("g").stored.size == 3 * BATCH
    folder = reg.store.dir / "g"
    (folder / "seg-000099.npz").write_bytes(b"half a segment")  # what a crash before the commit leaves
    (folder / ".manifest.json.abcd.tmp").write_bytes(b"{")
    (reg.store.dir / "orphan").mkdir()  # a first PUT that never committed
    reg.close()

    again = registry(tmp_path / "data")
    stored = again.get("g").stored
    assert stored.image_ids == tuple(f"img-{i}-{j}" for i in range(3) for j in range(BATCH))
    np.testing.assert_array_equal(
        stored.vectors(SPACE, BUDGET), np.stack([vector(x) for x in stored.image_ids])
    )
    assert not (folder / "seg-000099.npz").exists() and not (folder / ".manifest.json.abcd.tmp").exists()
    assert not (again.store.dir / "orphan").exists()
    # No region cache on disk: the features are kept by the store and found after the reload.
    assert again.features(stored, "img-2-3") is not None and again.missing("g") == set()
    np.testing.assert_array_equal(
        again.features(stored, "img-2-3").features, fake_regions("img-2-3").features
    )
    assert again.nbytes == sum(p.stat().st_size for p in folder.iterdir() if p.name != MANIFEST)
    again.close()


def test_one_process_owns_a_store(tmp_path):
    reg = registry(tmp_path / "data")
    with pytest.raises(StoreLockedError, match="in use by another gateway"):
        registry(tmp_path / "data")
    reg.close()
    registry(tmp_path / "data").close()


def test_features_in_the_region_cache_are_not_copied_and_missing_ones_are_reported(tmp_path):
    cache = RegionCache(4, tmp_path / "cache")
    regions, vectors = batch(0)
    for r in regions:
        cache.put(r)
    reg = registry(tmp_path / "data", cache)
    reg.put("g", regions, SPACE, vectors)
    assert reg.get("g").stored.pinned == {}  # the region cache's LMDB holds them
    reg.close()
    cache.close()
    empty = RegionCache(4, tmp_path / "other-cache")  # the cache was wiped
    again = registry(tmp_path / "data", empty)
    assert again.missing("g") == {r.image_id for r in regions}
    again.close()


def test_remove_drop_and_quota(tmp_path):
    reg = registry(tmp_path / "data")
    regions, vectors = batch(0)
    reg.put("g", regions, SPACE, vectors)
    used = reg.nbytes
    reg.close()
    reg = registry(tmp_path / "data", gallery_quota_bytes=used + 100)
    before = reg.get("g").stored
    regions1, vectors1 = batch(1)
    with pytest.raises(InsufficientStorageError, match="quota"):
        reg.put("g", regions1, SPACE, vectors1)
    assert reg.get("g").stored is before and reg.nbytes == used
    assert sorted(p.name for p in (reg.store.dir / "g").iterdir()) == sorted(
        [MANIFEST, "seg-000000.npz", "seg-000000.regions.pkl", "seg-000000.unversioned.npz"]
    )
    reg.remove("g", "img-0-1")
    with pytest.raises(NotFoundError):
        reg.remove("g", "img-0-1")
    assert reg.get("g").stored.size == BATCH - 1 and "img-0-1" not in reg.get("g").stored.where
    reg.drop("g")
    assert reg.get("g") is None and reg.nbytes == 0 and not (reg.store.dir / "g").exists()
    reg.close()
    assert registry(tmp_path / "data").names() == []


def test_a_failed_commit_leaves_the_gallery_as_it_was(tmp_path, monkeypatch):
    reg = registry(tmp_path / "data")
    regions, vectors = batch(0)
    reg.put("g", regions, SPACE, vectors)
    before = reg.get("g")

    def crash(_gallery):
        raise OSError("power cut before the manifest was renamed")

    monkeypatch.setattr(reg.store, "commit", crash)
    with pytest.raises(OSError, match="power cut"):
        reg.put("g", *batch(1)[:1], SPACE, batch(1)[1])
    assert reg.get("g") is before
    monkeypatch.undo()
    reg.close()
    assert registry(tmp_path / "data").get("g").stored.image_ids == before.stored.image_ids


def test_compaction_renumbers_and_frees(tmp_path, monkeypatch):
    monkeypatch.setattr(g, "COMPACT_MIN", BATCH)  # compacted once the whole first batch is deleted
    reg = registry(tmp_path / "data")
    reg.serve(SPACE, lambda images: {BUDGET: np.stack([vector(r.image_id) for r in images])})
    for i in range(2):
        reg.put("g", *batch(i)[:1], SPACE, batch(i)[1])
    assert SPACE in reg.get("g").indexes
    used = reg.nbytes
    for j in range(BATCH):  # the whole of batch 0
        reg.remove("g", f"img-0-{j}")
    assert reg.wait_idle(30)
    stored = reg.get("g").stored
    assert stored.removed == frozenset() and len(stored.segments) == 1 and stored.epoch == 1
    assert stored.image_ids == tuple(f"img-1-{j}" for j in range(BATCH)) and reg.nbytes < used
    index = reg.get("g").indexes[SPACE][BUDGET]
    _, positions = index.search(vector("img-1-3"), 1)
    assert stored.image_ids[int(positions[0])] == "img-1-3"
    reg.close()


def test_many_appends_are_merged_into_one_segment(tmp_path, monkeypatch):
    monkeypatch.setattr(g, "MAX_SEGMENTS", 2)
    reg = registry(tmp_path / "data")
    reg.serve(SPACE, lambda images: {BUDGET: np.stack([vector(r.image_id) for r in images])})
    for i in range(4):
        reg.put("g", *batch(i)[:1], SPACE, batch(i)[1])
    assert reg.wait_idle(30)
    snap = reg.get("g")
    assert len(snap.stored.segments) <= 2 and snap.stored.size == 4 * BATCH
    assert snap.stored.image_ids == tuple(f"img-{i}-{j}" for i in range(4) for j in range(BATCH))
    _, positions = snap.indexes[SPACE][BUDGET].search(vector("img-3-1"), 1)
    assert snap.stored.image_ids[int(positions[0])] == "img-3-1"
    reg.close()
    again = registry(tmp_path / "data")
    assert again.get("g").stored.image_ids == snap.stored.image_ids
    assert len(list(again.store.dir.joinpath("g").glob("seg-*.npz"))) == 2 * len(snap.stored.segments)
    again.close()


def test_vector_index_filters_deleted_and_later_rows():
    rows = np.stack([vector(f"img-9-{j}") for j in range(6)])
    for kind in ("flat", "hnsw"):
        index = VectorIndex.build(rows, IndexParams(flat_max=100), kind)
        _, best = index.search(rows[2], 3)
        assert best[0] == 2 and index.kind == kind
        _, best = index.search(rows[2], 3, size=6, removed={2})
        assert 2 not in best and len(best) == 3
        _, best = index.search(rows[5], 6, size=4)  # rows appended after the snapshot are not seen
        assert set(best.tolist()) <= {0, 1, 2, 3} and len(best) == 4


WRITER = """
import sys
sys.path.insert(0, {root!r})
from pathlib import Path
from server.region_cache import RegionCache
from tests.server.test_galleries_store import SPACE, batch, registry

reg = registry(Path({data!r}))
stored = reg.get("g")
i = 0 if stored is None else stored.stored.size // {batch_size}
print("ready", i, flush=True)
while True:
    regions, vectors = batch(i)
    reg.put("g", regions, SPACE, vectors)
    i += 1
"""


@pytest.mark.slow
def test_a_writer_killed_mid_append_leaves_a_whole_gallery(tmp_path):
    """SIGKILL an appending process at random moments: every reload holds whole batches in order,
    their embeddings and features intact (the gallery as before an append or after it)."""
    data = tmp_path / "data"
    script = WRITER.format(root=str(ROOT), data=str(data), batch_size=BATCH)
    rng = np.random.default_rng(0)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    seen = 0
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env, cwd=ROOT)
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line.startswith("ready"), line
        time.sleep(float(rng.uniform(0.2, 0.8)))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        reg = registry(data)
        stored = reg.get("g").stored
        n = stored.size // BATCH
        assert stored.size == n * BATCH and n >= seen
        assert stored.image_ids == tuple(f"img-{i}-{j}" for i in range(n) for j in range(BATCH))
        assert all(seg.has(SPACE) for seg in stored.segments)
        np.testing.assert_array_equal(
            stored.vectors(SPACE, BUDGET), np.stack([vector(x) for x in stored.image_ids])
        )
        assert set(stored.pinned) == set(stored.image_ids)
        named = {MANIFEST} | {f for seg in stored.segments for f in _files(seg)}
        assert {p.name for p in (reg.store.dir / "g").iterdir()} == named  # garbage removed
        seen = n
        reg.close()
    assert seen > 0


def _files(seg) -> list[str]:
    from server.gallery_store import segment_file

    return [segment_file(seg.id, part) for part in seg.parts()]


def test_store_without_data_dir_is_memory_only(tmp_path):
    store = GalleryStore(None)
    assert not store.persistent and store.load() == {}
    reg = registry(None)
    reg.put("g", *batch(0)[:1], SPACE, batch(0)[1])
    assert reg.nbytes > 0 and reg.get("g").stored.size == BATCH
