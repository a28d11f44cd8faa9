"""The LMDB feature store reads and writes the reference layout (and reads the legacy base64 one)."""

from __future__ import annotations

import base64
import pickle

import lmdb
import numpy as np
import pytest

from regions.store import FeatureStore, FeatureStoreWriter, RegionRecord


def _record(image_id: str, n: int, dim: int = 8, seed: int = 0) -> RegionRecord:
    rng = np.random.default_rng(seed)
    x1y1 = rng.uniform(0, 100, size=(n, 2))
    boxes = np.concatenate([x1y1, x1y1 + rng.uniform(5, 50, size=(n, 2))], axis=1)
    return RegionRecord(image_id, 480, 640, boxes, rng.normal(size=(n, dim)), n)


def test_round_trip_in_reference_layout(tmp_path):
    path = tmp_path / "coco.lmdb"
    recs = [_record("9", 100), _record("25", 3, seed=1)]
    recs[1].extra["cls_prob"] = np.ones((3, 5), dtype=np.float32)
    with FeatureStoreWriter(path, feature_dim=8) as w:
        for r in recs:
            w.put(r)
    store = FeatureStore(path)
    assert store.keys() == ["9", "25"] and len(store) == 2 and "25" in store and 25 in store
    got = store.get(25)
    np.testing.assert_array_equal(got.boxes, recs[1].boxes)
    assert got.features.dtype == np.float32 and got.features.shape == (3, 8)
    assert got.extra["cls_prob"].shape == (3, 5)
    # Several readers of one LMDB (VQA, RefCOCO, ... all read the COCO features) share a handle.
    other = FeatureStore(path)
    assert other.get("9").num_boxes == 100
    other.close()
    assert store.get("9").num_boxes == 100
    store.close()
    # The raw layout is exactly the reference one: a keys list of bytes plus plain pickled dicts.
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        assert pickle.loads(txn.get(b"keys")) == [b"9", b"25"]
        item = pickle.loads(txn.get(b"9"))
    env.close()
    assert {"image_id", "image_h", "image_w", "num_boxes", "boxes", "features"} <= set(item)
    assert item["num_boxes"] == 100 and item["features"].shape == (100, 8)


def test_missing_path_and_key_errors_name_them(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.lmdb"):
        FeatureStore(tmp_path / "nowhere.lmdb")
    with FeatureStoreWriter(tmp_path / "a.lmdb") as w:
        w.put(_record("1", 2))
    with pytest.raises(KeyError, match="'77'"):
        FeatureStore(tmp_path / "a.lmdb").get(77)


def test_writer_rejects_wrong_dim(tmp_path):
    with FeatureStoreWriter(tmp_path / "a.lmdb", feature_dim=4) as w, pytest.raises(ValueError, match="8-d"):
        w.put(_record("1", 2, dim=8))


def test_resume_merges_keys(tmp_path):
    path = tmp_path / "r.lmdb"
    with FeatureStoreWriter(path) as w:
        w.put(_record("a", 2))
    with FeatureStoreWriter(path) as w:
        assert "a" in w and "b" not in w
        w.put(_record("b", 2))
    assert FeatureStore(path).keys() == ["a", "b"]


def test_reads_legacy_base64_layout(tmp_path):
    path = tmp_path / "legacy.lmdb"
    boxes = np.array([[0, 0, 10, 10], [5, 5, 20, 30]], dtype=np.float32)
    feats = np.arange(2 * 6, dtype=np.float32).reshape(2, 6)
    row = {
        "image_id": "v7w_12",
        "image_w": "640",
        "image_h": "480",
        "num_boxes": "2",
        "boxes": base64.b64encode(boxes.tobytes()).decode(),
        "features": base64.b64encode(feats.tobytes()),  # bytes variant
    }
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b"v7w_12", pickle.dumps(row))
        txn.put(b"keys", pickle.dumps([b"v7w_12"]))
    env.close()
    rec = FeatureStore(path).get("v7w_12")
    assert (rec.image_w, rec.image_h, rec.num_boxes) == (640, 480, 2)
    np.testing.assert_array_equal(rec.boxes, boxes)
    np.testing.assert_array_equal(rec.features, feats)


def test_num_boxes_mismatch_is_an_error():
    with pytest.raises(ValueError, match="num_boxes"):
        RegionRecord("1", 10, 10, np.zeros((2, 4)), np.zeros((2, 3)), 3)


def _read_in_child(store: FeatureStore) -> int:
    return store.get("9").num_boxes


def test_store_opened_in_parent_reads_in_forked_worker(tmp_path):
    import multiprocessing

    with FeatureStoreWriter(tmp_path / "f.lmdb") as w:
        w.put(_record("9", 5))
    store = FeatureStore(tmp_path / "f.lmdb")
    assert store.get("9").num_boxes == 5  # the parent holds an open handle (DataLoader workers fork it)
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply(_read_in_child, (store,)) == 5
    assert store.get("9").num_boxes == 5
    store.close()
