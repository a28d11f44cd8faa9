"""bench/gallery_index.py on tiny galleries: exact search is exact, the result has its shape, the table
renders, and the real-embedding path reads a pre-filter checkpoint's embeddings."""

from __future__ import annotations

import json

import numpy as np
import torch

from bench import gallery_index as gi


def test_tiny_galleries_measure_every_index(tmp_path):
    result = gi.run(
        quick=True,
        checkpoint=tmp_path / "none",  # no model: the random fallback, said so
        data_root=tmp_path / "none",
        sizes=[2000],
        simulated=[1000],
        n_queries=20,
        dim=32,
        log=lambda _line: None,
    )
    assert result["source"]["kind"] == "random" and "no checkpoint" in result["source"]["why"]
    assert [g["kind"] for g in result["galleries"]] == ["random", "simulated"]
    for g in result["galleries"]:
        assert g["dim"] == 32 and g["queries"] == 20 and g["ks"] == [10, 100]
        names = [(r["index"], r["setting"]) for r in g["rows"]]
        assert [n for n, _ in names] == ["numpy", "flat", "hnsw", "hnsw", "ivf", "ivf"]
        for r in g["rows"]:
            assert r["build_s"] >= 0 and r["index_bytes"] > 0 and r["rss_delta_bytes"] >= 0
            for k in ("10", "100"):
                cell = r["k"][k]
                assert 0 < cell["p50_ms"] <= cell["p95_ms"] and 0.0 <= cell["recall"] <= 1.0
            if r["index"] in ("numpy", "flat"):  # exact search finds exactly the exact top K
                assert all(r["k"][k]["recall"] == 1.0 for k in ("10", "100")), r
        flat = next(r for r in g["rows"] if r["index"] == "flat")
        assert flat["index_bytes"] >= g["size"] * g["dim"] * 4  # the vectors themselves
    assert result["goal"]["met"] is None  # no 100K gallery in this run
    json.dumps(result)  # what bench/results/gallery_index.json holds
    text = "\n".join(gi.markdown(result))
    assert "random vectors, not a model's embeddings" in text
    assert "**2,000 images**" in text and "**1,000 images**" in text and "| hnsw | efSearch=64 |" in text
    assert gi.markdown(None)[0].startswith("not measured")


def test_goal_picks_the_fastest_index_with_enough_recall():
    def row(index, p50, recall):
        return {"index": index, "setting": "", "k": {"100": {"p50_ms": p50, "p95_ms": p50, "recall": recall}}}

    gallery = {
        "size": 100_000,
        "ks": [10, 100],
        "rows": [row("flat", 30.0, 1.0), row("hnsw", 1.0, 0.99), row("ivf", 0.5, 0.8)],
    }
    g = gi.goal({"galleries": [gallery]})
    assert g["met"] and g["best"]["index"] == "hnsw" and g["exact_flat_p50_ms"] == 30.0
    gallery["rows"][1]["k"]["100"]["p50_ms"] = 25.0
    g = gi.goal({"galleries": [gallery]})
    assert g["met"] is False and g["best"]["index"] == "hnsw" and g["best"]["p50_ms"] == 25.0


def test_grow_keeps_unit_vectors_near_their_base():
    rng = np.random.default_rng(0)
    base = gi.random_unit(10, 64, rng)
    grown = gi.grow(base, 1000, rng)
    assert grown.shape == (1000, 64) and np.allclose(np.linalg.norm(grown, axis=1), 1.0, atol=1e-5)
    cos = np.sum(grown * base[np.arange(1000) % 10], axis=1)
    assert 0.8 < cos.mean() < 0.95  # noise of norm 0.5: cosine ~0.89 to the base vector
    assert np.array_equal(gi.grow(base, 5, rng), base[:5])


def test_real_embeddings_come_from_the_checkpoints_prefilter(tmp_path):
    from testkit.reference_datasets import DIM, FIXTURE_CONFIG, build_reference_fixture
    from vilbert.checkpoint import save_checkpoint
    from vilbert.config import preset
    from vilbert.heads import MultiTaskViLBERT

    root = build_reference_fixture(tmp_path / "world")
    (root / "datasets" / "loader_config.json").write_text(json.dumps(FIXTURE_CONFIG))
    torch.manual_seed(0)
    checkpoint = save_checkpoint(
        tmp_path / "model", MultiTaskViLBERT(preset("tiny", v_feature_size=DIM, prefilter_dim=8))
    )
    out = gi.model_embeddings(checkpoint, root, max_captions=5)
    assert not isinstance(out, str), out
    images, captions, detail = out
    assert images.shape[1] == captions.shape[1] == 8 and len(captions) == 5 and len(images) >= 4
    assert np.allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)
    assert "retrieval_coco/train" in detail
    no_prefilter = save_checkpoint(tmp_path / "old", MultiTaskViLBERT(preset("tiny", v_feature_size=DIM)))
    assert "no retrieval pre-filter" in gi.model_embeddings(no_prefilter, root)
